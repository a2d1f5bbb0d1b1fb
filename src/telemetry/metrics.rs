//! Prometheus metrics: the `metrics` facade everywhere, rendered by its Prometheus exporter.
//!
//! Counters and histograms are recorded where things happen (requests in the HTTP middleware,
//! batches in the writer, waits in the read pool). Values that already live in a component
//! (cache counters, connected clients, queue depths, process figures) are copied into gauges
//! when `/metrics` is scraped, so there is one source of truth for each. Labels are bounded:
//! route templates (never raw paths or ids), a fixed set of methods, status codes.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use metrics::{Counter, Gauge, Histogram};

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

/// Method labels: a bounded set, anything else is `other`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS", "other",
];

/// Status labels: a bounded set, anything else is `other` (the slot after the last).
const STATUSES: [(u16, &str); 17] = [
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

fn method_index(method: &axum::http::Method) -> usize {
    let name = method.as_str();
    METHODS
        .iter()
        .position(|known| *known == name)
        .unwrap_or(METHODS.len() - 1)
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|(code, _)| *code == status)
        .unwrap_or(STATUSES.len())
}

/// The handles of the per-request metrics, each registered once, on the first request of its
/// route, method and status.
///
/// Recording through `metrics::counter!` with labels builds the key (the route copied into an
/// owned label), hashes it and searches the registry on every request; here a request finds
/// its route's handles by the template and indexes the rest.
pub struct HttpMetrics {
    pub in_flight: Gauge,
    /// Response bytes before compression, and as sent.
    pub body_bytes: Counter,
    pub sent_bytes: Counter,
    routes: RwLock<HashMap<Box<str>, RouteHandles>>,
}

struct RouteHandles {
    methods: [MethodHandles; METHODS.len()],
}

#[derive(Default)]
struct MethodHandles {
    duration: OnceLock<Histogram>,
    requests: [OnceLock<Counter>; STATUSES.len() + 1],
}

impl HttpMetrics {
    /// The process's handles (the recorder is process-wide, so are they).
    pub fn get() -> &'static HttpMetrics {
        static METRICS: OnceLock<HttpMetrics> = OnceLock::new();
        METRICS.get_or_init(|| {
            // Handles taken before the recorder is installed would record nowhere.
            handle();
            HttpMetrics {
                in_flight: metrics::gauge!(HTTP_IN_FLIGHT),
                body_bytes: metrics::counter!(HTTP_BODY_BYTES),
                sent_bytes: metrics::counter!(HTTP_SENT_BYTES),
                routes: RwLock::default(),
            }
        })
    }

    /// Counts a request of `route` (its template, or `unmatched`) and records its latency.
    pub fn record(&self, method: &axum::http::Method, route: &str, status: u16, seconds: f64) {
        let method = method_index(method);
        let status = status_index(status);
        let record = |handles: &RouteHandles| {
            let handles = &handles.methods[method];
            handles.requests[status]
                .get_or_init(|| {
                    metrics::counter!(
                        HTTP_REQUESTS,
                        "method" => METHODS[method],
                        "route" => route.to_owned(),
                        "status" => STATUSES.get(status).map_or("other", |(_, label)| label),
                    )
                })
                .increment(1);
            handles
                .duration
                .get_or_init(|| {
                    metrics::histogram!(
                        HTTP_DURATION,
                        "method" => METHODS[method],
                        "route" => route.to_owned(),
                    )
                })
                .record(seconds);
        };
        if let Some(handles) = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
        {
            return record(handles);
        }
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let handles = routes.entry(route.into()).or_insert_with(|| RouteHandles {
            methods: Default::default(),
        });
        record(handles);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn labels_are_bounded() {
        let method = |m: &Method| METHODS[method_index(m)];
        let status = |s| {
            STATUSES
                .get(status_index(s))
                .map_or("other", |(_, label)| *label)
        };
        assert_eq!(method(&Method::GET), "GET");
        assert_eq!(method(&Method::OPTIONS), "OPTIONS");
        assert_eq!(method(&Method::TRACE), "other");
        assert_eq!(method(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(status(200), "200");
        assert_eq!(status(503), "503");
        assert_eq!(status(418), "other");
    }

    #[test]
    fn requests_are_counted_by_route_method_and_status() {
        let metrics = HttpMetrics::get();
        let route = "/test/metrics/{id}";
        for _ in 0..3 {
            metrics.record(&Method::GET, route, 200, 0.001);
        }
        metrics.record(&Method::GET, route, 418, 0.001);
        metrics.record(&Method::POST, route, 201, 0.002);
        let text = handle().render();
        let line = |labels: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{HTTP_REQUESTS}{{{labels}}}")))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(
            line(&format!(r#"method="GET",route="{route}",status="200""#)).as_deref(),
            Some("3")
        );
        assert_eq!(
            line(&format!(r#"method="GET",route="{route}",status="other""#)).as_deref(),
            Some("1")
        );
        assert_eq!(
            line(&format!(r#"method="POST",route="{route}",status="201""#)).as_deref(),
            Some("1")
        );
        assert!(text.contains(&format!(
            r#"{HTTP_DURATION}_count{{method="POST",route="{route}"}} 1"#
        )));
    }
}
