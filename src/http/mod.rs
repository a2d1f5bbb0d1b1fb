//! The HTTP API: the router, shared state, extractors, middleware and one module per resource.

pub mod auth;
pub mod conditional;
pub mod cors;
pub mod events;
pub mod extract;
mod keys;
mod messages;
pub mod middleware;
pub mod openapi;
mod ops;
pub mod origin;
mod profiling;
pub mod response;
mod search;
mod sessions;
mod webhooks;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use std::convert::Infallible;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::handler::Handler;
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::BoxCloneSyncService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::predicate::{Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};

use self::auth::{AuthMode, Cidr, KeyCache, SharedLimiter};
use self::middleware::StateLayer;
use crate::cache::ResponseCache;
use crate::telemetry::live::LiveStats;

use crate::error::ApiError;
use crate::events::Hub;
use crate::storage::Storage;
use crate::workers::WorkPool;

/// Limits and knobs the handlers need.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Most bytes of session text a summary reads (the most recent messages win).
    pub summarize_max_bytes: usize,
    /// Searches rank the newest this-many matches (0: all of them).
    pub search_window: u32,
    /// Silence after which an SSE stream gets a `: keep-alive` comment.
    pub event_keepalive: Duration,
    /// How long a lagged stream client gets to read its `lagged` notice.
    pub event_lag_grace: Duration,
    /// How often WebSocket clients are pinged (and how long they have to answer).
    pub ws_ping_interval: Duration,
    /// A request that has not produced its response head after this long gets 503 `timeout`.
    pub request_timeout: Duration,
    /// Requests in progress beyond which new ones get 503 `overloaded` at once.
    pub max_concurrency: usize,
    /// Compression: the level (see [`CompressionLevel`]) and the smallest body compressed.
    pub compression_level: CompressionLevel,
    pub compression_min_size: u16,
    /// Origins allowed to call the API from a browser.
    pub cors: CorsOrigins,
    /// Serve `/v1/admin/profile/{cpu,heap}` (needs a build with the `profiling` feature).
    pub profiling: bool,
    /// Whether callers must present an API key.
    pub auth: AuthMode,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Share of requests that get an access-log line (server errors always do).
    pub access_log_sample: f64,
    /// Host names answered besides the loopback ones while auth is off.
    pub allowed_hosts: origin::HostPolicy,
}

/// Which browser origins may call the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `http(s)://localhost`, `127.0.0.1` and `[::1]` on any port (the default).
    Localhost,
    /// Any origin.
    Any,
    /// Exactly these origins.
    List(Vec<HeaderValue>),
}

/// What every handler can reach.
pub struct AppState {
    pub storage: Arc<dyn Storage>,
    /// Redis, when configured (cluster-wide rate limits).
    pub redis: Option<Arc<crate::cluster::Redis>>,
    pub summarizer: WorkPool,
    /// Full-text searches in progress (bm25 ranks every match: CPU-heavy on common words).
    pub searches: WorkPool,
    pub settings: HttpSettings,
    pub started: Instant,
    /// Fans committed events out to SSE and WebSocket clients.
    pub hub: Arc<Hub>,
    /// Encoded responses of hot reads.
    pub cache: Arc<ResponseCache>,
    /// Turns true when the server starts shutting down: streams end politely.
    pub stopping: watch::Receiver<bool>,
    /// Second-by-second figures for the status page.
    pub live: LiveStats,
    /// Connected event-stream clients by transport.
    pub streams: StreamCounts,
    /// API keys by hash, cached.
    pub keys: Arc<KeyCache>,
    /// Rate limits (none when rate limiting is off).
    pub limiter: SharedLimiter,
    /// Which addresses webhook URLs may name.
    pub webhook_guard: crate::webhooks::guard::Guard,
    /// Most webhook endpoints that may be registered.
    pub webhook_max_endpoints: usize,
}

/// Connected event-stream clients, by transport (for metrics).
#[derive(Debug, Default)]
pub struct StreamCounts {
    pub sse: AtomicUsize,
    pub ws: AtomicUsize,
}

/// Counts one connected client for as long as it is held.
pub struct StreamGuard<'a>(&'a AtomicUsize);

impl<'a> StreamGuard<'a> {
    pub fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        StreamGuard(counter)
    }
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub type SharedState = Arc<AppState>;

/// The service every connection is served by: the router behind the layers of every request.
pub type HttpService = BoxCloneSyncService<Request, Response, Infallible>;

/// The whole API as one service.
pub fn router(state: SharedState) -> HttpService {
    router_with(state, Router::new())
}

/// The API with `extra` routes merged in (tests use this for routes that only they need).
///
/// Layers around the router, outermost first: request id, metrics and access log; CORS (so
/// 304s and errors carry it); ETag coding suffixes and `Vary`; compression; panics as 500s.
/// They wrap the router itself, so a request passes through one stack of them. Inside the
/// router, every route (and the unknown-path fallback) sits behind `auth::Guard` (the browser
/// guard, authentication and rate limits), and everything but `/health` and `/metrics` behind
/// load shedding past the concurrency limit and the request timeout. The body limit is applied
/// where bodies are read (`extract::JsonBody`).
pub fn router_with(state: SharedState, extra: Router<SharedState>) -> HttpService {
    let settings = state.settings.clone();
    // Made on first request: building it allocates some megabytes for a moment, which would
    // otherwise stay in the heap of every server that never serves it.
    let document = Arc::new(std::sync::OnceLock::new());
    let (auth, rate_limited) = (settings.auth, state.limiter.is_some());
    let api = Router::new()
        .route("/", get(ops::status_page))
        .route("/v1/stats", get(ops::stats))
        .route("/ready", get(ops::ready))
        .route(
            "/openapi.json",
            get(move || {
                let document = document.get_or_init(|| openapi::document(auth, rate_limited));
                ops::openapi_json(document.clone())
            }),
        )
        .route("/docs", get(ops::docs))
        .route("/docs/{asset}", get(ops::docs_asset))
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get)
                .patch(sessions::update)
                .delete(sessions::delete),
        )
        .route(
            "/v1/sessions/{id}/messages",
            post(messages::create).get(messages::list),
        )
        .route("/v1/sessions/{id}/summarize", post(sessions::summarize))
        .route("/v1/messages/{id}", get(messages::get))
        .route("/v1/search", get(search::search))
        .route("/v1/events", get(events::sse))
        .route("/v1/ws", get(events::ws))
        .route("/v1/admin/keys", get(keys::list).post(keys::create))
        .route("/v1/admin/keys/{id}", axum::routing::delete(keys::revoke))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/rotate-secret", post(webhooks::rotate))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/replay", post(webhooks::replay))
        .merge(extra)
        .merge(if settings.profiling {
            Router::new()
                .route("/v1/admin/profile/cpu", get(profiling::cpu))
                .route("/v1/admin/profile/heap", get(profiling::heap))
        } else {
            Router::new()
        })
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(middleware::limit_errors))
                // One budget shared by every route (a per-route limit would multiply it).
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(settings.max_concurrency))
                .timeout(settings.request_timeout),
        );
    // Unknown paths need a key and are rate limited like any route, so a caller without one
    // learns nothing from probing them.
    let unknown = auth::Guard::new(not_found.with_state(state.clone()), state.clone());
    let routes = Router::new()
        // Liveness and metrics are never shed: an orchestrator must not kill a busy instance
        // as dead, and an overload is exactly when operators need to see inside.
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .merge(api)
        // Before the route layer, which then covers the 405s too.
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(StateLayer::new(&state, auth::Guard::new))
        .fallback_service(unknown)
        .with_state(state.clone());
    // One statically composed stack, outermost first, around the router: as a `Router::layer`
    // it would wrap every route, and the router clones a route's whole stack per request.
    let service = ServiceBuilder::new()
        .layer(StateLayer::new(&state, middleware::RequestContext::new))
        .layer(cors::CorsLayer::new(&settings.cors))
        .map_response(middleware::encoding_validators)
        .layer(middleware::CompressionLayer(compression(&settings)))
        .map_response(middleware::count_uncompressed)
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .service(routes);
    BoxCloneSyncService::new(service)
}

/// zstd, br and gzip, negotiated from `Accept-Encoding` (q-values honoured), for JSON and
/// text bodies of at least the minimum size; never for event streams.
fn compression(settings: &HttpSettings) -> CompressionLayer<impl Predicate + use<>> {
    let compressible = |_: StatusCode, _: Version, headers: &HeaderMap, _: &Extensions| {
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|content_type| {
                let essence = content_type.split(';').next().unwrap_or("").trim();
                essence == "application/json"
                    || essence == "application/problem+json"
                    || essence == "text/javascript"
                    || (essence.starts_with("text/") && essence != "text/event-stream")
            })
    };
    CompressionLayer::new()
        .no_deflate()
        .quality(settings.compression_level)
        .compress_when(SizeAbove::new(settings.compression_min_size).and(compressible))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".to_owned())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
