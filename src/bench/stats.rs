//! Recording latencies (HDR histograms, microseconds) and the machine-readable result.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::client::Failure;
use super::workload::Op;

/// Highest latency recorded exactly (longer ones saturate): 10 minutes in µs.
const MAX_MICROS: u64 = 600_000_000;

pub fn histogram() -> Histogram<u64> {
    // 3 significant digits over 1 µs ..= 10 min: about 200 KiB, fixed.
    Histogram::new_with_bounds(1, MAX_MICROS, 3)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}"))
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Requests that failed: by HTTP status (non-2xx) and by transport failure.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Errors {
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
    pub by_kind: BTreeMap<String, u64>,
}

/// One second of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TimelinePoint {
    /// Seconds since the start of measurement.
    pub t: f64,
    pub throughput: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub errors: u64,
}

/// Per-operation results.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OperationResult {
    pub requests: u64,
    pub throughput: f64,
    pub latency_ms: Percentiles,
    pub errors: u64,
}

/// Resident memory of the target process over the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RssReport {
    pub pid: u32,
    /// `[seconds, MiB]` samples.
    pub samples: Vec<(f64, f64)>,
    pub start_mb: f64,
    pub end_mb: f64,
    pub max_mb: f64,
    /// Least-squares slope of the samples after the first quarter of the run (warm-up), in
    /// MiB per hour.
    pub growth_mb_per_hour: f64,
    /// `[seconds, MiB]` samples of the anonymous part of the RSS (heap, stacks).
    pub anon_samples: Vec<(f64, f64)>,
    pub anon_start_mb: f64,
    pub anon_end_mb: f64,
    /// Slope of the anonymous part after the warm-up, in MiB per hour: the leak signal.
    pub anon_growth_mb_per_hour: f64,
}

/// One step of a ramp.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RampStep {
    pub rate: f64,
    pub throughput: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
    pub passed: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RampReport {
    pub slo_p99_ms: f64,
    pub steps: Vec<RampStep>,
    /// The highest arrival rate that met the SLO without errors.
    pub knee_rps: Option<f64>,
}

/// Delivery latency of events (publish to receipt), for the fan-out scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FanoutReport {
    pub subscribers: usize,
    pub connected: usize,
    /// Subscription attempts the server refused (load shedding, rate limits) and that were
    /// tried again.
    #[serde(default)]
    pub refused: u64,
    pub published: u64,
    pub delivered: u64,
    pub expected: u64,
    pub delivery_ms: Percentiles,
    pub rss_per_connection_kb: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ThresholdResult {
    pub expr: String,
    pub actual: Option<f64>,
    pub passed: bool,
}

/// Everything `--json` writes; also what `--compare` reads back.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BenchResult {
    pub scenario: String,
    pub target: String,
    /// `open` (constant arrival rate, latency from the intended send time) or `closed`.
    pub model: String,
    pub rate: Option<f64>,
    pub connections: usize,
    pub duration_s: f64,
    pub requests: u64,
    /// Completed requests per second (all statuses).
    pub throughput: f64,
    pub latency_ms: Percentiles,
    pub errors: Errors,
    #[serde(default)]
    pub operations: BTreeMap<String, OperationResult>,
    #[serde(default)]
    pub timeline: Vec<TimelinePoint>,
    /// `[percentile, latency ms]` points of the latency distribution.
    #[serde(default)]
    pub distribution: Vec<(f64, f64)>,
    /// How late the generator sent requests relative to their schedule (open model only).
    #[serde(default)]
    pub send_lag_ms: Option<Percentiles>,
    #[serde(default)]
    pub rss: Option<RssReport>,
    #[serde(default)]
    pub ramp: Option<RampReport>,
    #[serde(default)]
    pub fanout: Option<FanoutReport>,
    #[serde(default)]
    pub webhooks: Option<super::webhooks::WebhookReport>,
    #[serde(default)]
    pub thresholds: Vec<ThresholdResult>,
    #[serde(default)]
    pub started_at_ms: i64,
    #[serde(default)]
    pub version: String,
}

struct Inner {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    lag: Histogram<u64>,
    per_op: BTreeMap<Op, (Histogram<u64>, u64)>,
    interval_errors: u64,
    errors: Errors,
}

/// Shared by every connection task; a lock per record is uncontended in practice (the bench
/// runtime has one or two threads) and far cheaper than a request.
pub struct Recorder {
    inner: Mutex<Inner>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            inner: Mutex::new(Inner {
                total: histogram(),
                interval: histogram(),
                lag: histogram(),
                per_op: BTreeMap::new(),
                interval_errors: 0,
                errors: Errors::default(),
            }),
        }
    }
}

/// The outcome of one request, as recorded.
pub enum Outcome {
    Status(u16),
    Failed(Failure),
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, op: Op, latency: Duration, outcome: Outcome) {
        let micros = (latency.as_micros() as u64).max(1);
        let mut inner = self.lock();
        inner.total.saturating_record(micros);
        inner.interval.saturating_record(micros);
        let failed = match outcome {
            Outcome::Status(status) if (200..300).contains(&status) => false,
            Outcome::Status(status) => {
                *inner
                    .errors
                    .by_status
                    .entry(status.to_string())
                    .or_default() += 1;
                true
            }
            Outcome::Failed(failure) => {
                *inner
                    .errors
                    .by_kind
                    .entry(failure.as_str().to_owned())
                    .or_default() += 1;
                true
            }
        };
        if failed {
            inner.errors.total += 1;
            inner.interval_errors += 1;
        }
        let entry = inner.per_op.entry(op).or_insert_with(|| (histogram(), 0));
        entry.0.saturating_record(micros);
        entry.1 += u64::from(failed);
    }

    pub fn record_lag(&self, lag: Duration) {
        self.lock()
            .lag
            .saturating_record((lag.as_micros() as u64).max(1));
    }

    /// Takes the last interval's numbers and starts a new interval.
    pub fn tick(&self, t: f64, interval: Duration) -> TimelinePoint {
        let mut inner = self.lock();
        let h = &inner.interval;
        let p = Percentiles::of(h);
        let point = TimelinePoint {
            t,
            throughput: h.len() as f64 / interval.as_secs_f64().max(1e-9),
            p50: p.p50,
            p90: p.p90,
            p99: p.p99,
            max: p.max,
            errors: inner.interval_errors,
        };
        inner.interval.reset();
        inner.interval_errors = 0;
        point
    }

    /// Adds everything `other` recorded (ramp steps into the whole ramp).
    pub fn absorb(&self, other: &Recorder) {
        let theirs = other.lock();
        let mut ours = self.lock();
        let _ = ours.total.add(&theirs.total);
        let _ = ours.lag.add(&theirs.lag);
        for (op, (h, errors)) in &theirs.per_op {
            let entry = ours.per_op.entry(*op).or_insert_with(|| (histogram(), 0));
            let _ = entry.0.add(h);
            entry.1 += errors;
        }
        ours.errors.total += theirs.errors.total;
        for (status, n) in &theirs.errors.by_status {
            *ours.errors.by_status.entry(status.clone()).or_default() += n;
        }
        for (kind, n) in &theirs.errors.by_kind {
            *ours.errors.by_kind.entry(kind.clone()).or_default() += n;
        }
    }

    /// Fills the aggregate fields of `result` for a run of `elapsed`.
    pub fn finish(&self, result: &mut BenchResult, elapsed: Duration, open_model: bool) {
        let inner = self.lock();
        let secs = elapsed.as_secs_f64().max(1e-9);
        result.duration_s = secs;
        result.requests = inner.total.len();
        result.throughput = inner.total.len() as f64 / secs;
        result.latency_ms = Percentiles::of(&inner.total);
        result.errors = inner.errors.clone();
        result.operations = inner
            .per_op
            .iter()
            .map(|(op, (h, errors))| {
                (
                    op.name().to_owned(),
                    OperationResult {
                        requests: h.len(),
                        throughput: h.len() as f64 / secs,
                        latency_ms: Percentiles::of(h),
                        errors: *errors,
                    },
                )
            })
            .collect();
        result.distribution = distribution(&inner.total);
        result.send_lag_ms = open_model.then(|| Percentiles::of(&inner.lag));
    }
}

/// Points of the percentile curve, dense towards the tail (0, 50, 75, 87.5, … 99.999, 100).
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut quantile: f64 = 0.0;
    for _ in 0..18 {
        points.push((
            quantile * 100.0,
            h.value_at_quantile(quantile) as f64 / 1000.0,
        ));
        quantile += (1.0 - quantile) / 2.0;
    }
    points.push((100.0, h.max() as f64 / 1000.0));
    points
}

/// Least-squares slope of `(x, y)` samples (y per unit x); 0 with fewer than two samples.
pub fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_x = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let covariance: f64 = samples
        .iter()
        .map(|s| (s.0 - mean_x) * (s.1 - mean_y))
        .sum();
    let variance: f64 = samples.iter().map(|s| (s.0 - mean_x).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

/// Resident set size of a process in MiB, from `/proc/PID/status` (Linux).
pub fn rss_mb(pid: u32) -> Option<f64> {
    memory(pid).map(|m| m.rss_mb)
}

/// Resident memory of a process: all of it, and its anonymous part (heap and stacks). The
/// difference is file-backed pages, above all the memory-mapped database, which the kernel
/// reclaims at will and which grow only until the hot part of the file is mapped: a leak shows
/// in the anonymous part.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Memory {
    pub rss_mb: f64,
    pub anon_mb: f64,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some(Memory {
        rss_mb: field("VmRSS:")?,
        anon_mb: field("RssAnon:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let samples: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 1.0)).collect();
        assert!((slope(&samples) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), 0.0);
    }

    #[test]
    fn recorder_counts_errors_by_status_and_kind() {
        let recorder = Recorder::default();
        recorder.record(Op::Health, Duration::from_millis(2), Outcome::Status(200));
        recorder.record(Op::Health, Duration::from_millis(4), Outcome::Status(503));
        recorder.record(
            Op::Search,
            Duration::from_millis(8),
            Outcome::Failed(Failure::Timeout),
        );
        let mut result = BenchResult::default();
        recorder.finish(&mut result, Duration::from_secs(1), false);
        assert_eq!(result.requests, 3);
        assert_eq!(result.errors.total, 2);
        assert_eq!(result.errors.by_status["503"], 1);
        assert_eq!(result.errors.by_kind["timeout"], 1);
        assert_eq!(result.operations["health"].requests, 2);
        assert_eq!(result.operations["search"].errors, 1);
        assert!((result.latency_ms.max - 8.0).abs() < 0.01);
    }
}
