//! Prometheus metrics: the `metrics` facade everywhere, rendered by its Prometheus exporter.
//!
//! Counters and histograms are recorded where things happen (requests in the HTTP middleware,
//! batches in the writer, waits in the read pool). Values that already live in a component
//! (cache counters, connected clients, queue depths, process figures) are copied into gauges
//! when `/metrics` is scraped, so there is one source of truth for each. Labels are bounded:
//! route templates (never raw paths or ids), a fixed set of methods, status codes.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds, 0.25 ms to 10 s.
const SECONDS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Writes per committed batch.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process-wide recorder (installed once; every app in the process shares it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets(SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(WRITER_BATCH_SIZE.to_owned()), BATCH)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new())
        };
        match builder().install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (an embedding application's): render our own view.
            Err(_) => builder().build_recorder().handle(),
        }
    })
}

pub const HTTP_REQUESTS: &str = "sessiond_http_requests_total";
pub const HTTP_DURATION: &str = "sessiond_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "sessiond_http_requests_in_flight";
pub const HTTP_BODY_BYTES: &str = "sessiond_http_response_body_bytes_total";
pub const HTTP_SENT_BYTES: &str = "sessiond_http_response_sent_bytes_total";
pub const WRITER_BATCH_SIZE: &str = "sessiond_writer_batch_size";
pub const WRITER_COMMIT: &str = "sessiond_writer_commit_seconds";
pub const WRITER_QUEUE: &str = "sessiond_writer_queue_depth";
pub const READ_WAIT: &str = "sessiond_db_read_wait_seconds";
pub const SEARCH_INDEX_COMMIT: &str = "sessiond_search_index_commit_seconds";
/// Index searches by kind of query (`word`, `conjunction`, `phrase`, `prefix`, `mixed`, and
/// `unpruned` for pages continuing past a kept ranking).
pub const SEARCHES: &str = "sessiond_searches_total";
/// Searches that found messages newer than the in-memory tail index, by `outcome`: `fed` (one
/// of them may match, so all were committed to the tail) or `skipped` (none can match).
pub const SEARCH_TAIL_FEEDS: &str = "sessiond_search_tail_feeds_total";
/// Webhook attempts by `outcome`: `delivered`, `retry`, `failed`, `refused`.
pub const WEBHOOK_ATTEMPTS: &str = "sessiond_webhook_attempts_total";
/// Duration of webhook attempts that got an answer or failed to connect.
pub const WEBHOOK_ATTEMPT_SECONDS: &str = "sessiond_webhook_attempt_seconds";
pub const WEBHOOK_PENDING: &str = "sessiond_webhook_pending_deliveries";
pub const WEBHOOK_OLDEST_PENDING: &str = "sessiond_webhook_oldest_pending_seconds";
/// Circuits entering a state, by `to` (`open`, `half_open`, `closed`).
pub const WEBHOOK_CIRCUIT_TRANSITIONS: &str = "sessiond_webhook_circuit_transitions_total";
/// Endpoints by circuit `state`.
pub const WEBHOOK_CIRCUITS: &str = "sessiond_webhook_circuits";
/// Addresses the SSRF guard refused, by `stage` (`register`, `deliver`).
pub const WEBHOOK_REFUSED: &str = "sessiond_webhook_refused_addresses_total";
/// Endpoints the server disabled, by `reason` (`gone`, `failing`).
pub const WEBHOOK_DISABLED: &str = "sessiond_webhook_endpoints_disabled_total";

/// A method label from a bounded set.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "PUT" => "PUT",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}
