//! Who is calling, and may they: the browser guard, API-key authentication, scopes, and rate
//! limiting, as one layer ([`Guard`]) around every route.
//!
//! - [`browser_refusal`]: what a web page on another site could make the user's browser send
//!   (see [`super::origin`]) gets 403 first.
//! - [`authorize`]: reads `Authorization: Bearer <key>`, finds the key (through a cache:
//!   60 s for known keys, 5 s for unknown ones, and revocations on this instance take effect
//!   at once), and checks the route's scope. Missing or unusable keys get 401, insufficient
//!   scope 403. With `auth = off` every caller is anonymous and allowed.
//! - [`rate_limit`]: charges the caller (its key, else its address) to the route's tier and
//!   answers 429 with `Retry-After` past the budget; every limited response carries the
//!   `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers-10).
//!
//! `/health` is never authenticated or limited; `/ready`, `/openapi.json` and `/docs` are
//! public too. Keys never reach the logs: only their ids do.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either, Ready, ready};
use tower::Service;

use super::SharedState;
use super::origin::origin_allowed;
use crate::domain::clip;
use crate::domain::keys::{self, ApiKey, Scope};
use crate::domain::wall_clock_ms;
use crate::error::ApiError;
use crate::ratelimit::{Decision, Limiter, Tier};
use crate::server::Connection;
use crate::storage::Storage;

/// Whether callers must present a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    Off,
}

/// Who made a request, in request extensions.
#[derive(Clone, Debug)]
pub enum Caller {
    Key { id: String, scope: Scope },
    Anonymous,
}

/// Key lookups by hash, cached.
pub struct KeyCache {
    known: moka::sync::Cache<String, ApiKey>,
    unknown: moka::sync::Cache<String, ()>,
    /// Moves at every revocation: a lookup that started before one does not cache its
    /// (possibly stale) answer.
    generation: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            known: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .support_invalidation_closures()
                .build(),
            // Short: a key created on another instance must not stay unknown here for long,
            // but a flood of made-up keys must not reach the database every time either.
            unknown: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(5))
                .build(),
            generation: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

impl KeyCache {
    pub async fn find(
        &self,
        storage: &dyn Storage,
        secret: &str,
    ) -> Result<Option<ApiKey>, ApiError> {
        let hash = keys::hash(secret);
        if let Some(key) = self.known.get(&hash) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(key));
        }
        if self.unknown.contains_key(&hash) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        let found = storage.find_key(&hash).await?;
        if self.generation.load(Ordering::Acquire) == generation {
            match &found {
                Some(key) => self.known.insert(hash, key.clone()),
                None => self.unknown.insert(hash, ()),
            }
        }
        Ok(found)
    }

    /// Forgets a key at once (it was revoked).
    pub fn forget(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let id = id.to_owned();
        let _ = self.known.invalidate_entries_if(move |_, key| key.id == id);
    }

    /// Forgets every key (revocations may have been missed).
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.known.invalidate_all();
    }
}

/// The scope a request needs, or `None` for public routes.
pub(crate) fn required_scope(method: &Method, route: Option<&str>) -> Option<Scope> {
    match route {
        Some("/health" | "/ready" | "/openapi.json" | "/docs" | "/docs/{asset}") => None,
        Some(route) if route.starts_with("/v1/admin/") || route.starts_with("/v1/webhooks") => {
            Some(Scope::Admin)
        }
        // A summary reads: it is a POST only because it is computed on demand.
        Some("/v1/sessions/{id}/summarize") => Some(Scope::Read),
        _ if matches!(*method, Method::GET | Method::HEAD) => Some(Scope::Read),
        _ => Some(Scope::Write),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(detail: String) -> Response {
    let mut response = ApiError::Unauthorized(detail).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sessiond\""),
    );
    response
}

/// The layer every route (and the unknown-path fallback) sits behind: the browser guard
/// ([`browser_refusal`]), then authentication, then rate limits. Its responses carry the
/// template of the route for the access log and metrics outside the router, also when the
/// handler panics. With auth off and no rate limits (the loopback default) there is nothing to
/// wait for, and an allowed request goes straight through.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    state: SharedState,
}

impl<S> Guard<S> {
    pub fn new(inner: S, state: SharedState) -> Guard<S> {
        Guard { inner, state }
    }
}

type Checked = BoxFuture<'static, Result<Response, Infallible>>;

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        WithRoute<Either<Ready<Result<Response, Infallible>>, Either<S::Future, Checked>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let response = if let Some(refused) = browser_refusal(&self.state, &request) {
            Either::Left(ready(Ok(refused.into_response())))
        } else if self.state.settings.auth == AuthMode::Off && self.state.limiter.is_none() {
            Either::Right(Either::Left(self.inner.call(request)))
        } else {
            // The service polled ready serves this request once the checks are done; a clone
            // takes its place.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            Either::Right(Either::Right(
                Box::pin(guarded(self.state.clone(), request, inner)) as Checked,
            ))
        };
        WithRoute { response, route }
    }
}

pin_project_lite::pin_project! {
    /// A response with the template of the route that served it in its extensions; a handler
    /// that panics answers like any internal error (`middleware::panic_response`), for that
    /// route.
    pub struct WithRoute<F> {
        #[pin]
        response: F,
        route: Option<MatchedPath>,
    }
}

impl<F> Future for WithRoute<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The future is not polled again after a panic: it is answered here.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            this.response.as_mut().poll(cx)
        }));
        let mut response = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => response,
            Err(panic) => super::middleware::panic_response(panic),
        };
        if let Some(route) = this.route.take() {
            response.extensions_mut().insert(route);
        }
        Poll::Ready(Ok(response))
    }
}

async fn guarded<S>(
    state: SharedState,
    request: Request,
    mut inner: S,
) -> Result<Response, Infallible>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    let request = match authorize(&state, request).await {
        Ok(request) => request,
        Err(refused) => return Ok(refused),
    };
    Ok(rate_limit(&state, request, |request| inner.call(request)).await)
}

/// What a web page on another site could make the user's browser send, refused (see
/// [`super::origin`]): with auth off, a request naming a host that is neither a loopback name
/// nor in `allowed_hosts` (DNS rebinding); in every auth mode, a WebSocket upgrade or a write
/// whose `Origin` is foreign. `/health` answers any host.
fn browser_refusal(state: &SharedState, request: &Request) -> Option<ApiError> {
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
                return Some(ApiError::Forbidden(format!(
                    "this server runs without authentication and answers only localhost names \
                     (and allowed_hosts); this request named host `{}`. Add the name to \
                     allowed_hosts to serve it, or turn auth on",
                    clip(named.unwrap_or("<not text>"))
                )));
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
        return Some(ApiError::Forbidden(format!(
            "{} from a web page at origin `{}` is not allowed: the origin is not among \
             cors_origins",
            if upgrade { "a WebSocket" } else { "a change" },
            clip(origin)
        )));
    }
    None
}

/// The request with its [`Caller`] in its extensions, or the refusal to answer with.
async fn authorize(state: &SharedState, mut request: Request) -> Result<Request, Response> {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let needed = required_scope(request.method(), route.as_ref().map(MatchedPath::as_str));
    let caller = match (state.settings.auth, needed) {
        (AuthMode::Off, _) | (_, None) => Caller::Anonymous,
        (AuthMode::Required, Some(needed)) => {
            let Some(secret) = bearer(request.headers()) else {
                return Err(unauthorized(
                    "this endpoint needs an API key: send `Authorization: Bearer <key>`".to_owned(),
                ));
            };
            let key = match state.keys.find(&*state.storage, secret).await {
                Ok(Some(key)) => key,
                Ok(None) => return Err(unauthorized("the API key is not valid".to_owned())),
                Err(error) => return Err(error.into_response()),
            };
            if let Some(why) = key.unusable(wall_clock_ms()) {
                return Err(unauthorized(why));
            }
            if !key.scope.allows(needed) {
                return Err(ApiError::Forbidden(format!(
                    "API key {} has scope `{}`; this needs `{needed}`",
                    key.id, key.scope
                ))
                .into_response());
            }
            Caller::Key {
                id: key.id,
                scope: key.scope,
            }
        }
    };
    request.extensions_mut().insert(caller);
    Ok(request)
}

/// Which budget a request draws on; `None` for requests never limited.
pub(crate) fn tier(method: &Method, route: Option<&str>) -> Option<Tier> {
    match route {
        Some("/health") => None,
        Some("/v1/search" | "/v1/sessions/{id}/summarize") => Some(Tier::Expensive),
        _ if matches!(*method, Method::GET | Method::HEAD) => Some(Tier::Read),
        _ => Some(Tier::Default),
    }
}

/// An address block from `trusted_proxies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    mask: u128,
    v4: bool,
}

impl Cidr {
    /// `10.0.0.0/8`, `::1/128` or a single address.
    pub fn parse(raw: &str) -> Result<Cidr, String> {
        let (address, bits) = match raw.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (raw, None),
        };
        let ip: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?} is not an IP address or CIDR block"))?;
        let (value, width, v4) = match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32, true),
            IpAddr::V6(v6) => (u128::from(v6), 128, false),
        };
        let bits: u32 = match bits {
            None => width,
            Some(b) => b
                .trim()
                .parse()
                .ok()
                .filter(|b| *b <= width)
                .ok_or_else(|| format!("{raw:?} has an invalid prefix length"))?,
        };
        let mask = if bits == 0 {
            0
        } else {
            (u128::MAX << (width - bits)) & (u128::MAX >> (128 - width))
        };
        Ok(Cidr {
            network: value & mask,
            mask,
            v4,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (ip, self.v4) {
            (IpAddr::V4(v4), true) => u128::from(u32::from(v4)) & self.mask == self.network,
            (IpAddr::V6(v6), false) => u128::from(v6) & self.mask == self.network,
            (IpAddr::V6(v6), true) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| u128::from(u32::from(v4)) & self.mask == self.network),
            (IpAddr::V4(_), false) => false,
        }
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|cidr| cidr.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip))
        .unwrap_or(peer)
}

fn rate_headers(
    headers: &mut HeaderMap,
    tier: Tier,
    limiter: &dyn Limiter,
    remaining: u32,
    reset: u64,
) {
    let policy = limiter.policy(tier);
    let name = tier.as_str();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "\"{name}\";q={};w={}",
        policy.burst,
        policy.window_seconds()
    )) {
        headers.insert("ratelimit-policy", value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("\"{name}\";r={remaining};t={reset}")) {
        headers.insert("ratelimit", value);
    }
}

async fn rate_limit<F>(
    state: &SharedState,
    request: Request,
    next: impl FnOnce(Request) -> F,
) -> Response
where
    F: Future<Output = Result<Response, Infallible>>,
{
    let run = |request| async move {
        let Ok(response) = next(request).await;
        response
    };
    let Some(limiter) = state.limiter.as_deref() else {
        return run(request).await;
    };
    let route = request.extensions().get::<MatchedPath>().cloned();
    let Some(tier) = tier(request.method(), route.as_ref().map(MatchedPath::as_str)) else {
        return run(request).await;
    };
    // Always there behind the server's connection loop; a bare service test has no peer.
    let peer = request
        .extensions()
        .get::<Connection>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |connection| {
            connection.peer().ip()
        });
    let caller = match request.extensions().get::<Caller>() {
        Some(Caller::Key { id, .. }) => format!("key:{id}"),
        _ => format!(
            "ip:{}",
            client_ip(peer, request.headers(), &state.settings.trusted_proxies)
        ),
    };
    match limiter.check(tier, &caller).await {
        Decision::Allowed {
            remaining,
            reset_seconds,
        } => {
            let mut response = run(request).await;
            rate_headers(
                response.headers_mut(),
                tier,
                limiter,
                remaining,
                reset_seconds,
            );
            response
        }
        Decision::Limited {
            retry_after_seconds,
        } => {
            metrics::counter!("sessiond_rate_limited_total", "tier" => tier.as_str()).increment(1);
            let mut response = ApiError::RateLimited {
                tier: tier.as_str(),
                retry_after_secs: retry_after_seconds,
            }
            .into_response();
            rate_headers(
                response.headers_mut(),
                tier,
                limiter,
                0,
                retry_after_seconds,
            );
            response
        }
    }
}

/// A shared limiter (or none when rate limiting is off).
pub type SharedLimiter = Option<Arc<dyn Limiter>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_by_route_and_method() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_scope(&get, Some("/health")), None);
        assert_eq!(
            required_scope(&get, Some("/v1/sessions")),
            Some(Scope::Read)
        );
        assert_eq!(required_scope(&get, Some("/v1/events")), Some(Scope::Read));
        assert_eq!(
            required_scope(&post, Some("/v1/sessions")),
            Some(Scope::Write)
        );
        assert_eq!(
            required_scope(&Method::DELETE, Some("/v1/sessions/{id}")),
            Some(Scope::Write)
        );
        assert_eq!(
            required_scope(&post, Some("/v1/sessions/{id}/summarize")),
            Some(Scope::Read)
        );
        assert_eq!(
            required_scope(&get, Some("/v1/admin/keys")),
            Some(Scope::Admin)
        );
        assert_eq!(
            required_scope(&get, None),
            Some(Scope::Read),
            "unknown routes need a key"
        );
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.0.0.2"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            client_ip(stranger, &headers, &trusted),
            stranger,
            "spoofing ignored"
        );
        assert_eq!(
            client_ip(proxy, &headers, &[]),
            proxy,
            "nothing trusted by default"
        );
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the nearest untrusted hop"
        );
    }

    #[test]
    fn cidr_blocks() {
        let block = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(block.contains("192.168.4.2".parse().unwrap()));
        assert!(!block.contains("192.169.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:192.168.1.1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["x", "10.0.0.0/33", "::/129", "10.0.0.0/-1"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
