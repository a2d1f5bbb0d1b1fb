//! The layers every request passes through around the router: the request context (id,
//! metrics, access log) and compression for clients that accept it.
//!
//! Every response carries `X-Request-Id`: a valid incoming one is echoed (so a proxy's id
//! follows the request through), anything else is replaced by a fresh random id. Each request
//! is logged once with its id, route template (never the raw path: ids stay out of metrics and
//! logs' cardinality), status, latency and size; a 500 is logged with its whole cause chain.
//!
//! They are plain tower services rather than `axum::middleware::from_fn`: a `from_fn` layer
//! clones and boxes the whole stack below it for every request, and none of these needs to
//! wait for anything before calling the next service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::Either;
use tower::{Layer, Service};
use tower_http::compression::{self, Compression, Predicate};

use super::SharedState;
use crate::domain::random_token_bytes;
use crate::error::{ApiError, InternalCause};
use crate::telemetry::metrics::HttpMetrics;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// An incoming id is kept when it is short and made of URL-safe characters, so it can never
/// inject anything into logs.
fn is_acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

/// A layer whose service reads the shared state: `wrap` makes one around the next service.
#[derive(Clone)]
pub struct StateLayer<F> {
    state: SharedState,
    wrap: F,
}

impl<F> StateLayer<F> {
    pub fn new(state: &SharedState, wrap: F) -> StateLayer<F> {
        StateLayer {
            state: state.clone(),
            wrap,
        }
    }
}

impl<S, F, T> Layer<S> for StateLayer<F>
where
    F: Fn(S, SharedState) -> T,
{
    type Service = T;

    fn layer(&self, inner: S) -> T {
        (self.wrap)(inner, self.state.clone())
    }
}

/// Gives every request its id, and counts and logs it once it has its response.
#[derive(Clone)]
pub struct RequestContext<S> {
    inner: S,
    state: SharedState,
}

impl<S> RequestContext<S> {
    pub fn new(inner: S, state: SharedState) -> RequestContext<S> {
        RequestContext { inner, state }
    }
}

impl<S> Service<Request> for RequestContext<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let id = request
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|v| is_acceptable(v))
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_bytes(&random_token_bytes())
                    .unwrap_or(HeaderValue::from_static("-"))
            });
        let method = request.method().clone();
        // axum drops a HEAD response's body inside the router, before compression would see
        // it; served as a GET and emptied here, a HEAD gets the very headers a GET gets.
        let head = method == Method::HEAD;
        if head {
            *request.method_mut() = Method::GET;
        }
        let state = self.state.clone();
        let metrics = HttpMetrics::get();
        state.live.begin();
        metrics.in_flight.increment(1.0);
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if head {
                *response.body_mut() = Body::empty();
            }
            let latency = started.elapsed();
            metrics.in_flight.decrement(1.0);
            // The router's route layer puts the template of the route that served the request
            // in the response.
            let route = match response.extensions().get::<MatchedPath>() {
                Some(route) => route.as_str(),
                // The CORS layer answers every OPTIONS before routing.
                None if method == Method::OPTIONS => "preflight",
                None => "unmatched",
            };
            let status = response.status().as_u16();
            state.live.end(latency, status);
            metrics.record(&method, route, status, latency.as_secs_f64());
            let request_id = id.to_str().unwrap_or("-");
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
            response.headers_mut().insert(X_REQUEST_ID, id);
            Ok(count_body(response, &metrics.sent_bytes, head))
        })
    }
}

/// Counts the bytes of a response body into `counter`: at once when its size is known (the
/// body is sent whole), as they flow otherwise (streams, compressed bodies). A response to
/// `HEAD` sends no body.
fn count_body(response: Response, counter: &metrics::Counter, head: bool) -> Response {
    if head {
        return response;
    }
    if let Some(size) = response.body().size_hint().exact() {
        counter.increment(size);
        return response;
    }
    let counter = counter.clone();
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
    count_body(
        response.map(Body::new),
        &HttpMetrics::get().body_bytes,
        false,
    )
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

/// tower-http's compression, for requests that name an encoding they accept. A request
/// without `Accept-Encoding` can only be answered as it is, and passes by: the layer would
/// still wrap its body and parse its headers (and `encoding_validators` sets `Vary` either
/// way).
#[derive(Clone)]
pub struct CompressionLayer<P>(pub tower_http::compression::CompressionLayer<P>);

impl<S, P: Predicate> Layer<S> for CompressionLayer<P> {
    type Service = Compress<S, P>;

    fn layer(&self, inner: S) -> Compress<S, P> {
        Compress(self.0.layer(inner))
    }
}

#[derive(Clone)]
pub struct Compress<S, P>(Compression<S, P>);

impl<S, P> Service<Request> for Compress<S, P>
where
    S: Service<Request, Response = Response>,
    P: Predicate,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<IntoBody<compression::ResponseFuture<S::Future, P>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if request.headers().contains_key(header::ACCEPT_ENCODING) {
            Either::Left(IntoBody {
                response: self.0.call(request),
            })
        } else {
            Either::Right(self.0.get_mut().call(request))
        }
    }
}

pin_project_lite::pin_project! {
    /// A response whose body becomes a [`Body`].
    pub struct IntoBody<F> {
        #[pin]
        response: F,
    }
}

impl<F, B, E> Future for IntoBody<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = std::task::ready!(self.project().response.poll(cx))?;
        Poll::Ready(Ok(response.map(Body::new)))
    }
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
pub fn encoding_validators(mut response: Response) -> Response {
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
