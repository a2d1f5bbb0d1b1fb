//! Second-by-second figures for the live status page (`/` and its `/v1/stats` stream).
//!
//! The request middleware records each request here (a counter and a latency histogram for
//! the current second); a task turns them, once a second, into a [`Sample`] with the rest of
//! the server's state, keeps the last five minutes, and hands the newest to every status-page
//! client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::ToSchema;

/// Samples kept: five minutes at one a second.
pub const HISTORY: usize = 300;

/// One second of the server, as the status page plots it.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct Sample {
    /// When the sample was taken (ms since the epoch).
    pub at: i64,
    pub uptime_s: f64,
    pub version: &'static str,
    pub requests_per_second: f64,
    /// 5xx responses in the last second.
    pub errors_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub in_flight: i64,
    /// Connected SSE and WebSocket clients.
    pub event_clients: u64,
    /// Cache hits / lookups in the last second; `null` without lookups.
    pub cache_hit_ratio: Option<f64>,
    pub cache_bytes: u64,
    pub database_bytes: u64,
    pub rss_bytes: u64,
    pub events_per_second: f64,
    pub writer_queue: u64,
}

/// Counters the sampler reads from the rest of the server each second.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inputs {
    pub uptime_s: f64,
    pub event_clients: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_bytes: u64,
    pub database_bytes: u64,
    pub rss_bytes: u64,
    pub events_published: u64,
    pub writer_queue: u64,
}

pub struct LiveStats {
    latency: Mutex<Histogram<u64>>,
    requests: AtomicU64,
    server_errors: AtomicU64,
    in_flight: AtomicI64,
    previous: Mutex<Inputs>,
    history: Mutex<VecDeque<Arc<Sample>>>,
    latest: watch::Sender<Option<Arc<Sample>>>,
}

impl Default for LiveStats {
    fn default() -> Self {
        LiveStats {
            // µs, 1 µs ..= 10 min at 3 significant digits, as the bench records them.
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3)
                    .unwrap_or_else(|e| unreachable!("constant bounds are valid: {e}")),
            ),
            requests: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            previous: Mutex::new(Inputs::default()),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            latest: watch::channel(None).0,
        }
    }
}

impl LiveStats {
    /// A request started.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request produced its response head.
    pub fn end(&self, latency: Duration, status: u16) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = (latency.as_micros() as u64).max(1);
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .saturating_record(micros);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Closes the current second (`elapsed` long) into a sample and publishes it.
    pub fn tick(&self, elapsed: Duration, now_ms: i64, inputs: Inputs) -> Arc<Sample> {
        let seconds = elapsed.as_secs_f64().max(1e-3);
        let (p50, p99) = {
            let mut histogram = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            let quantiles = if histogram.is_empty() {
                (0.0, 0.0)
            } else {
                (
                    histogram.value_at_quantile(0.5) as f64 / 1000.0,
                    histogram.value_at_quantile(0.99) as f64 / 1000.0,
                )
            };
            histogram.reset();
            quantiles
        };
        let previous = std::mem::replace(
            &mut *self.previous.lock().unwrap_or_else(|e| e.into_inner()),
            inputs,
        );
        let hits = inputs.cache_hits.saturating_sub(previous.cache_hits);
        let lookups = hits + inputs.cache_misses.saturating_sub(previous.cache_misses);
        let sample = Arc::new(Sample {
            at: now_ms,
            uptime_s: inputs.uptime_s,
            version: env!("CARGO_PKG_VERSION"),
            requests_per_second: self.requests.swap(0, Ordering::Relaxed) as f64 / seconds,
            errors_per_second: self.server_errors.swap(0, Ordering::Relaxed) as f64 / seconds,
            p50_ms: p50,
            p99_ms: p99,
            in_flight: self.in_flight(),
            event_clients: inputs.event_clients,
            cache_hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
            cache_bytes: inputs.cache_bytes,
            database_bytes: inputs.database_bytes,
            rss_bytes: inputs.rss_bytes,
            events_per_second: inputs
                .events_published
                .saturating_sub(previous.events_published) as f64
                / seconds,
            writer_queue: inputs.writer_queue,
        });
        {
            let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(sample.clone());
        }
        self.latest.send_replace(Some(sample.clone()));
        sample
    }

    /// Follows new samples.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Sample>>> {
        self.latest.subscribe()
    }

    /// The samples of the last five minutes, oldest first.
    pub fn history(&self) -> Vec<Arc<Sample>> {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_of_requests_becomes_a_sample() {
        let live = LiveStats::default();
        for i in 0..100 {
            live.begin();
            live.end(
                Duration::from_millis(1 + i % 10),
                if i < 5 { 503 } else { 200 },
            );
        }
        live.begin();
        let first = live.tick(
            Duration::from_secs(1),
            1,
            Inputs {
                cache_hits: 8,
                cache_misses: 2,
                events_published: 30,
                ..Inputs::default()
            },
        );
        assert_eq!(first.requests_per_second, 100.0);
        assert_eq!(first.errors_per_second, 5.0);
        assert_eq!(first.in_flight, 1);
        assert!(
            first.p50_ms >= 5.0 && first.p50_ms <= 6.1,
            "{}",
            first.p50_ms
        );
        assert!(first.p99_ms >= 9.9, "{}", first.p99_ms);
        assert_eq!(first.cache_hit_ratio, Some(0.8));
        assert_eq!(first.events_per_second, 30.0);
        let second = live.tick(
            Duration::from_secs(2),
            2,
            Inputs {
                cache_hits: 8,
                cache_misses: 2,
                events_published: 40,
                ..Inputs::default()
            },
        );
        assert_eq!(second.requests_per_second, 0.0);
        assert_eq!(second.cache_hit_ratio, None, "no lookups this time");
        assert_eq!(second.events_per_second, 5.0);
        assert_eq!(live.history().len(), 2);
    }
}
