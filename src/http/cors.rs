//! CORS: which browser origins may call the API, and the headers that say so.
//!
//! tower-http's `Cors` does the work for requests from browsers (those with an `Origin`) and
//! for preflights. Every other response gets the same two headers from it, `Vary` and
//! `Access-Control-Expose-Headers`, which it builds again for each request (a new header map,
//! and the `Vary` list joined into a new string): about a tenth of the instructions of a
//! cached `GET`. [`Cors`] adds those two from values made once instead, and passes the rest to
//! tower-http.

use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, Response, header};
use futures_util::future::Either;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer as Rules};

use super::CorsOrigins;
use super::middleware::X_REQUEST_ID;
use super::origin;

/// Methods a browser may use across origins.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Request headers a browser may send across origins.
const ALLOWED: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::IF_NONE_MATCH,
    HeaderName::from_static("last-event-id"),
    X_REQUEST_ID,
];

/// Response headers a page from another origin may read.
const EXPOSED: [HeaderName; 6] = [
    header::ETAG,
    header::LOCATION,
    header::RETRY_AFTER,
    X_REQUEST_ID,
    HeaderName::from_static("ratelimit"),
    HeaderName::from_static("ratelimit-policy"),
];

/// What responses vary by (tower-http's default list).
const VARY: [HeaderName; 3] = [
    header::ORIGIN,
    header::ACCESS_CONTROL_REQUEST_METHOD,
    header::ACCESS_CONTROL_REQUEST_HEADERS,
];

/// The layer: the rules for `origins`.
#[derive(Clone)]
pub struct CorsLayer {
    rules: Rules,
    /// `Vary` and `Access-Control-Expose-Headers` as tower-http writes them.
    vary: HeaderValue,
    exposed: HeaderValue,
    /// Every origin is allowed: every response names it (`*`), so tower-http answers all.
    any: bool,
}

impl CorsLayer {
    pub fn new(origins: &CorsOrigins) -> CorsLayer {
        let allow_origin = match origins {
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(list) => AllowOrigin::list(list.clone()),
            CorsOrigins::Localhost => {
                AllowOrigin::predicate(|origin, _| origin::is_localhost_origin(origin))
            }
        };
        let rules = Rules::new()
            .allow_origin(allow_origin)
            .allow_methods(METHODS)
            .allow_headers(ALLOWED)
            .expose_headers(EXPOSED)
            .vary(VARY)
            .max_age(Duration::from_secs(600));
        let join = |names: &[HeaderName], separator: &str| {
            let joined = names
                .iter()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>()
                .join(separator);
            HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static(""))
        };
        CorsLayer {
            rules,
            vary: join(&VARY, ", "),
            exposed: join(&EXPOSED, ","),
            any: *origins == CorsOrigins::Any,
        }
    }
}

impl<S> Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            cors: self.rules.layer(inner),
            vary: self.vary.clone(),
            exposed: self.exposed.clone(),
            any: self.any,
        }
    }
}

#[derive(Clone)]
pub struct Cors<S> {
    cors: tower_http::cors::Cors<S>,
    vary: HeaderValue,
    exposed: HeaderValue,
    any: bool,
}

impl<S, B> Service<Request> for Cors<S>
where
    S: Service<Request, Response = Response<B>>,
    B: Default,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Either<tower_http::cors::ResponseFuture<S::Future>, WithHeaders<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // tower-http takes every OPTIONS for a preflight.
        if self.any
            || request.method() == Method::OPTIONS
            || request.headers().contains_key(header::ORIGIN)
        {
            return Either::Left(self.cors.call(request));
        }
        Either::Right(WithHeaders {
            response: self.cors.get_mut().call(request),
            vary: Some(self.vary.clone()),
            exposed: self.exposed.clone(),
        })
    }
}

pin_project_lite::pin_project! {
    /// A response that is given the two headers tower-http would add.
    pub struct WithHeaders<F> {
        #[pin]
        response: F,
        vary: Option<HeaderValue>,
        exposed: HeaderValue,
    }
}

impl<F, B, E> std::future::Future for WithHeaders<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.response.poll(cx))?;
        let headers = response.headers_mut();
        if let Some(vary) = this.vary.take() {
            headers.append(header::VARY, vary);
        }
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, this.exposed.clone());
        Poll::Ready(Ok(response))
    }
}
