//! Operations endpoints: liveness, readiness, the OpenAPI document and the offline docs page.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use utoipa::{PartialSchema, ToSchema};

use super::SharedState;
use super::response::json;
use crate::error::{ApiError, ApiResult};
use crate::telemetry::live::Sample;

/// How long `/ready` waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: answers without touching any dependency.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn health() -> Response {
    let mut response = Response::new(axum::body::Body::from(r#"{"status":"ok"}"#));
    // Room for what the layers outside add, so the map is allocated once.
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    *response.headers_mut() = headers;
    response
}

#[derive(Serialize, ToSchema)]
pub struct Check {
    /// `ok` or `down`.
    status: &'static str,
    latency_ms: f64,
    /// Why the check failed (never internals).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, `degraded` (optional dependencies failing) or `down`.
    status: &'static str,
    checks: BTreeMap<&'static str, Check>,
    /// The embedded search index: `building` with its `progress` (0..=1) while it is built
    /// from the database (searches answer 503 meanwhile), the log positions of its last
    /// commit, its `lag` in messages and its segment count.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    search_index: Option<crate::search::Status>,
}

/// Readiness: checks every dependency at once, each with a short timeout.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready (status `ok` or `degraded`)", body = Readiness),
        (status = 503, description = "Not ready (status `down`)", body = Readiness),
    ))]
pub async fn ready(State(state): State<SharedState>) -> ApiResult<Response> {
    // Every dependency at once: a hanging one costs one timeout, not one each.
    let database = probe(
        "database",
        state.storage.check(),
        "the database check failed",
        "the database check timed out",
    );
    let redis = async {
        match &state.redis {
            // Optional: without it limits are per instance, but everything is served.
            Some(redis) => Some(
                probe(
                    "Redis",
                    redis.ping(),
                    "Redis does not answer; rate limits are per instance",
                    "the Redis check timed out; rate limits are per instance",
                )
                .await,
            ),
            None => None,
        }
    };
    let (database, redis) = tokio::join!(database, redis);
    let up = database.status == "ok";
    let mut checks = BTreeMap::from([("database", database)]);
    let mut degraded = false;
    if let Some(check) = redis {
        degraded = check.status != "ok";
        checks.insert("redis", check);
    }
    let search_index = state.storage.search_status();
    // Everything but search is served while the index is built.
    degraded |= search_index.is_some_and(|s| s.building);
    let body = Readiness {
        status: match (up, degraded) {
            (false, _) => "down",
            (true, true) => "degraded",
            (true, false) => "ok",
        },
        checks,
        search_index,
    };
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

/// Runs one dependency's check with the readiness timeout; the cause of a failure goes to the
/// log, the client sees `failed` or `timed_out`.
async fn probe<E: std::fmt::Display>(
    name: &str,
    check: impl std::future::Future<Output = Result<(), E>>,
    failed: &'static str,
    timed_out: &'static str,
) -> Check {
    let started = Instant::now();
    let outcome = tokio::time::timeout(READY_TIMEOUT, check).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: {name} check failed");
            Some(failed)
        }
        Err(_) => Some(timed_out),
    };
    Check {
        status: if error.is_none() { "ok" } else { "down" },
        latency_ms,
        error,
    }
}

/// The OpenAPI 3.1 document of this API, as this server is configured.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json(document: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document,
    )
        .into_response()
}

const DOCS_HTML: &str = include_str!("../../assets/docs.html");
const DOCS_INIT: &str = include_str!("../../assets/docs-init.js");
const SWAGGER_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

/// Interactive API docs (Swagger UI, served from the binary: works offline).
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "The docs page", content_type = "text/html")))]
pub async fn docs() -> Response {
    asset("text/html; charset=utf-8", DOCS_HTML.as_bytes())
}

pub async fn docs_asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    match name.as_str() {
        "swagger-ui-bundle.js" => Ok(asset("text/javascript; charset=utf-8", SWAGGER_JS)),
        "swagger-ui.css" => Ok(asset("text/css; charset=utf-8", SWAGGER_CSS)),
        "init.js" => Ok(asset(
            "text/javascript; charset=utf-8",
            DOCS_INIT.as_bytes(),
        )),
        _ => Err(ApiError::NotFound("no such resource".to_owned())),
    }
}

fn asset(content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<SharedState>) -> Response {
    use crate::telemetry::metrics::WRITER_QUEUE;
    // What this server owns is written here, from its own state; what is recorded as it
    // happens (requests, batches, waits) comes from the process-wide recorder below.
    let recorder = crate::telemetry::metrics::handle();
    let cache = state.cache.stats();
    let hub = state.hub.stats();
    let mut text = String::with_capacity(8192);
    let mut metric = |name: &str, kind: &str, help: &str, series: &[(&str, f64)]| {
        use std::fmt::Write as _;
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in series {
            let _ = writeln!(text, "{name}{labels} {value}");
        }
    };
    let responses = r#"{cache="responses"}"#;
    metric(
        "sessiond_cache_hits_total",
        "counter",
        "Response cache hits.",
        &[(responses, cache.hits as f64)],
    );
    metric(
        "sessiond_cache_misses_total",
        "counter",
        "Response cache misses.",
        &[(responses, cache.misses as f64)],
    );
    metric(
        "sessiond_cache_evictions_total",
        "counter",
        "Response cache evictions (size or age).",
        &[(responses, cache.evictions as f64)],
    );
    metric(
        "sessiond_cache_entries",
        "gauge",
        "Entries in the response cache.",
        &[(responses, cache.entries as f64)],
    );
    metric(
        "sessiond_cache_bytes",
        "gauge",
        "Bytes held by the response cache.",
        &[(responses, cache.bytes as f64)],
    );
    if let Some(index) = state.storage.search_status() {
        metric(
            "sessiond_search_index_lag",
            "gauge",
            "Messages written but not yet in a search index commit (by seq).",
            &[("", index.lag as f64)],
        );
        metric(
            "sessiond_search_index_segments",
            "gauge",
            "Segments of the search index.",
            &[("", index.segments as f64)],
        );
        metric(
            "sessiond_search_index_committed_seq",
            "gauge",
            "The newest message seq in the search index's last commit.",
            &[("", index.committed.messages as f64)],
        );
        metric(
            "sessiond_search_index_build_progress",
            "gauge",
            "Progress of a search index build, 0..1 (1 when not building).",
            &[("", index.progress)],
        );
    }
    metric(
        "sessiond_log_lines_dropped_total",
        "counter",
        "Log lines dropped because the log writer's queue was full (a request never waits for the log).",
        &[("", crate::telemetry::log_writer::dropped() as f64)],
    );
    metric(
        "sessiond_event_clients",
        "gauge",
        "Connected event-stream clients.",
        &[
            (
                r#"{transport="sse"}"#,
                state.streams.sse.load(Ordering::Relaxed) as f64,
            ),
            (
                r#"{transport="ws"}"#,
                state.streams.ws.load(Ordering::Relaxed) as f64,
            ),
        ],
    );
    metric(
        "sessiond_events_published_total",
        "counter",
        "Events published to subscribers.",
        &[("", hub.published.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "sessiond_events_delivered_total",
        "counter",
        "Events queued for a subscriber (one per subscriber per event).",
        &[("", hub.delivered.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "sessiond_event_clients_lagged_total",
        "counter",
        "Event-stream clients disconnected for falling behind.",
        &[("", hub.lagged.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "sessiond_event_log_head",
        "gauge",
        "The newest event seq.",
        &[("", state.hub.head() as f64)],
    );
    metric(
        WRITER_QUEUE,
        "gauge",
        "Writes waiting for the writer.",
        &[("", state.storage.writer_queue_depth() as f64)],
    );
    if let Some(bytes) = state.storage.disk_bytes() {
        metric(
            "sessiond_database_bytes",
            "gauge",
            "Bytes of the database on disk (with its WAL).",
            &[("", bytes as f64)],
        );
    }
    metric(
        "sessiond_auth_key_cache_hits_total",
        "counter",
        "API key lookups answered by the cache.",
        &[("", state.keys.hits.load(Ordering::Relaxed) as f64)],
    );
    metric(
        "sessiond_auth_key_cache_misses_total",
        "counter",
        "API key lookups that read the database.",
        &[("", state.keys.misses.load(Ordering::Relaxed) as f64)],
    );
    let process = crate::telemetry::process::read();
    let mut optional = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            metric(name, kind, help, &[("", value)]);
        }
    };
    optional(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory.",
        process.resident_bytes.map(|v| v as f64),
    );
    optional(
        "process_cpu_seconds_total",
        "counter",
        "CPU time used, user and system.",
        process.cpu_seconds,
    );
    optional(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        process.open_fds.map(|v| v as f64),
    );
    optional(
        "process_threads",
        "gauge",
        "Threads.",
        process.threads.map(|v| v as f64),
    );
    optional(
        "process_start_time_seconds",
        "gauge",
        "Start time, seconds since the epoch.",
        process.start_time_seconds,
    );
    metric(
        "sessiond_build_info",
        "gauge",
        "The running version.",
        &[(
            &format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0,
        )],
    );
    text.push_str(&recorder.render());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

const STATUS_HTML: &str = include_str!("../../assets/status.html");

/// The live status page (all assets inside; charts fed by `/v1/stats`).
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The status page", content_type = "text/html")))]
pub async fn status_page() -> Response {
    let mut response = asset("text/html; charset=utf-8", STATUS_HTML.as_bytes());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The `hello` event of `/v1/stats`: the latest sample's fields, and the last five minutes.
#[derive(Serialize, ToSchema)]
pub struct StatsHello {
    #[serde(flatten)]
    latest: Sample,
    /// Up to five minutes of samples, oldest first.
    history: Vec<Sample>,
}

/// The `data` of a `/v1/stats` event: a [`StatsHello`] (`hello`, first) or a [`Sample`]
/// (`stats`).
pub struct StatsEvent;

impl utoipa::PartialSchema for StatsEvent {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::AnyOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("StatsHello"))
            .item(utoipa::openapi::Ref::from_schema_name("Sample"))
            .description(Some(
                "`event: hello` carries a StatsHello, every `event: stats` a Sample",
            ))
            .into()
    }
}

impl ToSchema for StatsEvent {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push(("StatsHello".to_owned(), StatsHello::schema()));
        schemas.push(("Sample".to_owned(), Sample::schema()));
        StatsHello::schemas(schemas);
    }
}

/// The figures of the status page, one `stats` event per second (`hello` first, with the last
/// five minutes).
#[utoipa::path(get, path = "/v1/stats", tag = "operations",
    responses((status = 200, description = "An endless stream of events: `hello` first, then one `stats` per second", content_type = "text/event-stream", body = StatsEvent)))]
pub async fn stats(State(state): State<SharedState>) -> Response {
    let mut samples = state.live.subscribe();
    let mut stopping = state.stopping.clone();
    let history = state.live.history();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let hello = StatsHello {
            latest: history.last().map(|s| (**s).clone()).unwrap_or_default(),
            history: history.iter().map(|s| (**s).clone()).collect(),
        };
        let Ok(hello) = serde_json::to_string(&hello) else {
            return;
        };
        let frame = crate::events::sse_frame(None, "hello", &hello).0;
        if sender.send(Bytes::from(frame)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => return,
                changed = samples.changed() => if changed.is_err() { return },
            }
            let sample = samples.borrow_and_update().clone();
            let Some(sample) = sample else { continue };
            let Ok(json) = serde_json::to_string(&*sample) else {
                continue;
            };
            let frame = crate::events::sse_frame(None, "stats", &json).0;
            // A status page that stops reading falls behind by whole samples, never unbounded.
            if sender.try_send(Bytes::from(frame)).is_err() && sender.is_closed() {
                return;
            }
        }
    });
    let mut response = Response::new(super::events::stream_body(receiver));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
