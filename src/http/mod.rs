//! The HTTP API: the router, shared state, extractors, middleware and one module per resource.

pub mod events;
pub mod extract;
mod messages;
pub mod middleware;
pub mod openapi;
mod ops;
pub mod response;
mod search;
mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{get, post};

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
    /// How often WebSocket clients are pinged (and how long they have to answer).
    pub ws_ping_interval: Duration,
}

/// What every handler can reach.
pub struct AppState {
    pub storage: Arc<dyn Storage>,
    pub summarizer: WorkPool,
    /// Full-text searches in progress (bm25 ranks every match: CPU-heavy on common words).
    pub searches: WorkPool,
    pub settings: HttpSettings,
    pub started: Instant,
    /// Fans committed events out to SSE and WebSocket clients.
    pub hub: Arc<Hub>,
    /// Turns true when the server starts shutting down: streams end politely.
    pub stopping: watch::Receiver<bool>,
}

pub type SharedState = Arc<AppState>;

/// The whole API as one router.
pub fn router(state: SharedState) -> Router {
    router_with(state, Router::new())
}

/// The API with `extra` routes merged in (tests use this for routes that only they need).
pub fn router_with(state: SharedState, extra: Router<SharedState>) -> Router {
    let body_limit = state.settings.body_limit;
    Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/openapi.json", get(ops::openapi_json))
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
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource".to_owned())
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
