//! Per-request context: the request id and the access log line.
//!
//! Every response carries `X-Request-Id`: a valid incoming one is echoed (so a proxy's id
//! follows the request through), anything else is replaced by a fresh random id. Each request
//! is logged once with its id, route template (never the raw path: ids stay out of metrics and
//! logs' cardinality), status, latency and size; a 500 is logged with its whole cause chain.

use std::time::Instant;

use axum::body::HttpBody;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::SharedState;
use super::auth::AuthMode;
use super::origin::origin_allowed;
use crate::domain::clip;
use crate::domain::random_token;
use crate::error::{ApiError, InternalCause};
use crate::telemetry::metrics as names;

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

pub async fn request_context(
    State(state): State<SharedState>,
    mut request: Request,
    next: Next,
) -> Response {
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
    state.live.begin();
    let in_flight = metrics::gauge!(names::HTTP_IN_FLIGHT);
    in_flight.increment(1.0);

    let mut response = next.run(request).await;

    let latency = started.elapsed();
    in_flight.decrement(1.0);
    response.headers_mut().insert(X_REQUEST_ID, id.clone());
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let request_id = id.to_str().unwrap_or("-");
    let status = response.status().as_u16();
    state.live.end(latency, status);
    let method_label = names::method_label(&method);
    metrics::counter!(
        names::HTTP_REQUESTS,
        "method" => method_label,
        "route" => route.to_owned(),
        "status" => status_label(status),
    )
    .increment(1);
    metrics::histogram!(names::HTTP_DURATION, "method" => method_label, "route" => route.to_owned())
        .record(latency.as_secs_f64());
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
    let sampled = {
        let share = state.settings.access_log_sample;
        share >= 1.0 || status >= 500 || fastrand::f64() < share
    };
    if sampled {
        tracing::info!(
        target: "sessiond::access",
        request_id,
        method = %method,
        route,
        status,
        latency_us = latency.as_micros() as u64,
        bytes,
        "request"
        );
    }
    count_body(response, names::HTTP_SENT_BYTES)
}

/// Status codes as static labels (a bounded set; anything else is `other`).
fn status_label(status: u16) -> &'static str {
    const KNOWN: &[(u16, &str)] = &[
        (101, "101"),
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (413, "413"),
        (415, "415"),
        (429, "429"),
        (431, "431"),
        (500, "500"),
        (503, "503"),
    ];
    KNOWN
        .iter()
        .find(|(code, _)| *code == status)
        .map_or("other", |(_, label)| label)
}

/// Counts the bytes of a response body into `counter` as they flow (streams included).
fn count_body(response: Response, counter: &'static str) -> Response {
    let counter = metrics::counter!(counter);
    response.map(|body| {
        Body::new(CountingBody {
            inner: body,
            counter,
        })
    })
}

/// Bodies before compression (inside the compression layer), for the compression ratio.
pub fn count_uncompressed<B>(response: axum::http::Response<B>) -> Response
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    count_body(response.map(Body::new), names::HTTP_BODY_BYTES)
}

struct CountingBody {
    inner: Body,
    counter: metrics::Counter,
}

impl HttpBody for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.increment(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Refuses what a web page on another site could make the user's browser send (see
/// [`super::origin`]): with auth off, a request naming a host that is neither a loopback name
/// nor in `allowed_hosts` (DNS rebinding); in every auth mode, a WebSocket upgrade or a write
/// whose `Origin` is foreign. `/health` answers any host.
pub async fn browser_guard(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let settings = &state.settings;
    // An absolute-form target names the host the request is for; otherwise `Host` does.
    let host = match request.uri().authority() {
        Some(authority) => Some(Ok(authority.as_str())),
        None => request.headers().get(header::HOST).map(HeaderValue::to_str),
    };
    if settings.auth == AuthMode::Off && request.uri().path() != "/health" {
        match host {
            // No `Host` at all: an HTTP/1.0 program; browsers always send one.
            None => {}
            Some(Ok(name)) if settings.allowed_hosts.allows(name) => {}
            Some(named) => {
                return ApiError::Forbidden(format!(
                    "this server runs without authentication and answers only localhost names \
                     (and allowed_hosts); this request named host `{}`. Add the name to \
                     allowed_hosts to serve it, or turn auth on",
                    clip(named.unwrap_or("<not text>"))
                ))
                .into_response();
            }
        }
    }
    let method = request.method();
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let writes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if (upgrade || writes)
        && !origin_allowed(
            &settings.cors,
            &settings.allowed_hosts,
            request.headers().get(header::ORIGIN),
            host.and_then(Result::ok),
        )
    {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<not text>");
        return ApiError::Forbidden(format!(
            "{} from a web page at origin `{}` is not allowed: the origin is not among \
             cors_origins",
            if upgrade { "a WebSocket" } else { "a change" },
            clip(origin)
        ))
        .into_response();
    }
    next.run(request).await
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
pub fn encoding_validators<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
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
