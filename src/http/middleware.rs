//! Per-request context: the request id and the access log line.
//!
//! Every response carries `X-Request-Id`: a valid incoming one is echoed (so a proxy's id
//! follows the request through), anything else is replaced by a fresh random id. Each request
//! is logged once with its id, route template (never the raw path: ids stay out of metrics and
//! logs' cardinality), status, latency and size; a 500 is logged with its whole cause chain.

use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use crate::domain::random_token;
use crate::error::InternalCause;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, in request extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

/// An incoming id is kept when it is short and made of URL-safe characters, so it can never
/// inject anything into logs.
fn is_acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

pub async fn request_context(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| is_acceptable(v))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&random_token()).unwrap_or(HeaderValue::from_static("-"))
        });
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();

    let mut response = next.run(request).await;

    response.headers_mut().insert(X_REQUEST_ID, id.clone());
    let route = route.as_ref().map_or("-", MatchedPath::as_str);
    let request_id = id.to_str().unwrap_or("-");
    let status = response.status().as_u16();
    let latency_us = started.elapsed().as_micros() as u64;
    if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>() {
        tracing::error!(
            request_id,
            method = %method,
            route,
            status,
            error = format!("{cause:#}"),
            "request failed"
        );
    }
    let bytes = response.body().size_hint().exact();
    tracing::info!(
        target: "sessiond::access",
        request_id,
        method = %method,
        route,
        status,
        latency_us,
        bytes,
        "request"
    );
    response
}
