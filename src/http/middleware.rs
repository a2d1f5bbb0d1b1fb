//! Per-request context: the request id and the access log line.
//!
//! Every response carries `X-Request-Id`: a valid incoming one is echoed (so a proxy's id
//! follows the request through), anything else is replaced by a fresh random id. Each request
//! is logged once with its id, route template (never the raw path: ids stay out of metrics and
//! logs' cardinality), status, latency and size; a 500 is logged with its whole cause chain.

use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::domain::random_token;
use crate::error::{ApiError, InternalCause};

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

/// Turns the errors of the load-shedding and timeout layers into problem responses.
pub async fn limit_errors(error: tower::BoxError) -> Response {
    if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded {
            reason: "the server is at its concurrency limit; retry shortly",
            retry_after_secs: 1,
        }
        .into_response()
    } else if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::Timeout.into_response()
    } else {
        ApiError::Internal(anyhow::anyhow!("request middleware failed: {error}")).into_response()
    }
}

/// Marks a compressed representation's ETag with its coding (`"v3"` becomes `"v3-zstd"`: a
/// strong validator names one exact byte sequence), and sets `Vary: Accept-Encoding` on every
/// response, 304s included, so shared caches key by encoding.
pub async fn encoding_validators(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let (Some(coding), Some(etag)) = (coding, headers.get(header::ETAG))
        && let Some(inner) = etag
            .to_str()
            .ok()
            .and_then(|t| t.strip_prefix('"'))
            .and_then(|t| t.strip_suffix('"'))
        && let Ok(tagged) = HeaderValue::from_str(&format!("\"{inner}-{coding}\""))
    {
        headers.insert(header::ETAG, tagged);
    }
    let varies = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
    });
    if !varies {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    response
}

/// A handler that panicked answers like any other internal error: problem+json 500, the cause
/// (the panic message) in the log with the request id, nothing of it in the response.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::Internal(anyhow::anyhow!("a handler panicked: {message}")).into_response()
}
