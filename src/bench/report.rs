//! Reading results: thresholds (`p99<50ms`, `errors==0`, `search.p95<300ms`, …), the summary
//! table, the comparison with an earlier run, and the self-contained HTML report.

use std::fmt::Write as _;

use anyhow::{Context, bail};

use super::stats::{BenchResult, Percentiles, ThresholdResult};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

/// A parsed threshold: `[operation.]metric op value[unit]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub expr: String,
    operation: Option<String>,
    metric: String,
    cmp: Cmp,
    value: f64,
}

const METRICS: &[&str] = &[
    "p50",
    "p90",
    "p95",
    "p99",
    "p999",
    "max",
    "mean",
    "throughput",
    "rps",
    "requests",
    "errors",
    "error_rate",
    "rss_growth_mb_per_hour",
    "rss_max_mb",
    "anon_growth_mb_per_hour",
    "knee_rps",
    "delivery_p50",
    "delivery_p99",
    "delivered_ratio",
];

impl Threshold {
    pub fn parse(expr: &str) -> anyhow::Result<Threshold> {
        let compact: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
        let (at, cmp, width) = ["<=", ">=", "==", "<", ">"]
            .iter()
            .filter_map(|op| compact.find(op).map(|at| (at, *op)))
            .min_by_key(|(at, op)| (*at, std::cmp::Reverse(op.len())))
            .map(|(at, op)| {
                let cmp = match op {
                    "<=" => Cmp::Le,
                    ">=" => Cmp::Ge,
                    "==" => Cmp::Eq,
                    "<" => Cmp::Lt,
                    _ => Cmp::Gt,
                };
                (at, cmp, op.len())
            })
            .with_context(|| format!("threshold {expr:?} has no comparison (<, <=, >, >=, ==)"))?;
        let name = &compact[..at];
        let raw_value = &compact[at + width..];
        let (operation, metric) = match name.rsplit_once('.') {
            Some((op, metric)) => (Some(op.to_owned()), metric.to_owned()),
            None => (None, name.to_owned()),
        };
        if !METRICS.contains(&metric.as_str()) {
            bail!(
                "threshold {expr:?}: unknown metric {metric:?}; known: {}",
                METRICS.join(", ")
            );
        }
        let split = raw_value
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(raw_value.len());
        let number: f64 = raw_value[..split]
            .parse()
            .with_context(|| format!("threshold {expr:?}: {raw_value:?} is not a number"))?;
        let value = match &raw_value[split..] {
            "" | "ms" | "/s" | "rps" | "MB" | "MiB" | "%" => number,
            "s" => number * 1000.0,
            "us" | "µs" => number / 1000.0,
            unit => bail!("threshold {expr:?}: unknown unit {unit:?} (use ms, s or us)"),
        };
        let value = if raw_value.ends_with('%') {
            value / 100.0
        } else {
            value
        };
        Ok(Threshold {
            expr: expr.to_owned(),
            operation,
            metric,
            cmp,
            value,
        })
    }

    pub fn evaluate(&self, result: &BenchResult) -> ThresholdResult {
        let actual = metric(result, self.operation.as_deref(), &self.metric);
        let passed = actual.is_some_and(|a| match self.cmp {
            Cmp::Lt => a < self.value,
            Cmp::Le => a <= self.value,
            Cmp::Gt => a > self.value,
            Cmp::Ge => a >= self.value,
            Cmp::Eq => (a - self.value).abs() < 1e-9,
        });
        ThresholdResult {
            expr: self.expr.clone(),
            actual,
            passed,
        }
    }
}

fn percentile(p: &Percentiles, name: &str) -> Option<f64> {
    Some(match name {
        "p50" => p.p50,
        "p90" => p.p90,
        "p95" => p.p95,
        "p99" => p.p99,
        "p999" => p.p999,
        "max" => p.max,
        "mean" => p.mean,
        _ => return None,
    })
}

/// The value of `metric` (of one operation when given) in `result`.
fn metric(result: &BenchResult, operation: Option<&str>, metric: &str) -> Option<f64> {
    if let Some(op) = operation {
        let op = result.operations.get(op)?;
        return match metric {
            "throughput" | "rps" => Some(op.throughput),
            "requests" => Some(op.requests as f64),
            "errors" => Some(op.errors as f64),
            "error_rate" => Some(op.errors as f64 / (op.requests.max(1)) as f64),
            other => percentile(&op.latency_ms, other),
        };
    }
    match metric {
        "throughput" | "rps" => Some(result.throughput),
        "requests" => Some(result.requests as f64),
        "errors" => Some(result.errors.total as f64),
        "error_rate" => Some(result.errors.total as f64 / result.requests.max(1) as f64),
        "rss_growth_mb_per_hour" => result.rss.as_ref().map(|r| r.growth_mb_per_hour),
        "rss_max_mb" => result.rss.as_ref().map(|r| r.max_mb),
        "anon_growth_mb_per_hour" => result.rss.as_ref().map(|r| r.anon_growth_mb_per_hour),
        "knee_rps" => result.ramp.as_ref().and_then(|r| r.knee_rps),
        "delivery_p50" => result.fanout.as_ref().map(|f| f.delivery_ms.p50),
        "delivery_p99" => result.fanout.as_ref().map(|f| f.delivery_ms.p99),
        "delivered_ratio" => result
            .fanout
            .as_ref()
            .map(|f| f.delivered as f64 / f.expected.max(1) as f64),
        other => percentile(&result.latency_ms, other),
    }
}

/// The summary printed at the end of a run.
pub fn summary(result: &BenchResult) -> String {
    let mut out = String::new();
    let model = match result.rate {
        Some(rate) => format!(
            "open model, {rate:.0} req/s over {} connections",
            result.connections
        ),
        None => format!("closed model, {} connections", result.connections),
    };
    let _ = writeln!(
        out,
        "\nscenario {} against {} ({model}), {:.1} s",
        result.scenario, result.target, result.duration_s
    );
    let _ = writeln!(
        out,
        "{:<20} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "operation",
        "requests",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "mean ms",
        "errors"
    );
    let mut row = |name: &str, requests: u64, rps: f64, p: &Percentiles, errors: u64| {
        let _ = writeln!(
            out,
            "{name:<20} {requests:>9} {rps:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {errors:>7}",
            p.p50, p.p90, p.p99, p.p999, p.max, p.mean
        );
    };
    for (name, op) in &result.operations {
        row(name, op.requests, op.throughput, &op.latency_ms, op.errors);
    }
    row(
        "all",
        result.requests,
        result.throughput,
        &result.latency_ms,
        result.errors.total,
    );
    if result.errors.total > 0 {
        let _ = writeln!(
            out,
            "errors by status: {:?}; by kind: {:?}",
            result.errors.by_status, result.errors.by_kind
        );
    }
    if let Some(lag) = &result.send_lag_ms {
        let _ = writeln!(
            out,
            "generator send lag (included in latencies): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lag.p50, lag.p99, lag.max
        );
    }
    if let Some(rss) = &result.rss {
        let _ = writeln!(
            out,
            "target RSS (pid {}): start {:.1} MiB, end {:.1} MiB, max {:.1} MiB, growth {:.1} MiB/hour",
            rss.pid, rss.start_mb, rss.end_mb, rss.max_mb, rss.growth_mb_per_hour
        );
        let _ = writeln!(
            out,
            "  of which anonymous (heap, stacks): start {:.1} MiB, end {:.1} MiB, growth {:.1} MiB/hour",
            rss.anon_start_mb, rss.anon_end_mb, rss.anon_growth_mb_per_hour
        );
    }
    if let Some(ramp) = &result.ramp {
        let _ = writeln!(out, "ramp (SLO p99 < {} ms):", ramp.slo_p99_ms);
        for step in &ramp.steps {
            let _ = writeln!(
                out,
                "  {:>8.0} req/s offered: {:>8.0} req/s done, p50 {:>8.2} ms, p99 {:>8.2} ms, errors {:>5}  {}",
                step.rate,
                step.throughput,
                step.p50,
                step.p99,
                step.errors,
                if step.passed { "ok" } else { "FAIL" }
            );
        }
        match ramp.knee_rps {
            Some(knee) => {
                let _ = writeln!(out, "knee: {knee:.0} req/s (highest rate meeting the SLO)");
            }
            None => {
                let _ = writeln!(out, "knee: none (even the first step missed the SLO)");
            }
        }
    }
    if let Some(fanout) = &result.fanout {
        let _ = writeln!(
            out,
            "fan-out: {} of {} subscribers connected ({} refusals retried); {} events published, {} of {} deliveries; delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            fanout.connected,
            fanout.subscribers,
            fanout.refused,
            fanout.published,
            fanout.delivered,
            fanout.expected,
            fanout.delivery_ms.p50,
            fanout.delivery_ms.p99,
            fanout.delivery_ms.max,
            fanout
                .rss_per_connection_kb
                .map(|kb| format!("; server memory {kb:.1} KiB per connection"))
                .unwrap_or_default()
        );
    }
    if let Some(webhooks) = &result.webhooks {
        for step in &webhooks.steps {
            let _ = writeln!(
                out,
                "webhooks: {:>3} endpoint(s): {} messages, {} of {} deliveries, {:.0} deliveries/s; \
                 delivery p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                step.endpoints,
                step.published,
                step.delivered,
                step.expected,
                step.deliveries_per_s,
                step.delivery_ms.p50,
                step.delivery_ms.p99,
                step.delivery_ms.max,
            );
        }
    }
    for threshold in &result.thresholds {
        let _ = writeln!(
            out,
            "threshold {:<28} {:>12}  {}",
            threshold.expr,
            threshold
                .actual
                .map_or("n/a".to_owned(), |a| format!("{a:.3}")),
            if threshold.passed { "pass" } else { "FAIL" }
        );
    }
    out
}

/// Compares `new` with `old`, one line per headline metric.
pub fn compare(old: &BenchResult, new: &BenchResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nchange against the earlier run ({} on {}):",
        old.scenario, old.target
    );
    let _ = writeln!(
        out,
        "{:<14} {:>12} {:>12} {:>9}",
        "metric", "before", "after", "change"
    );
    let lines: [(&str, f64, f64, bool); 8] = [
        ("throughput", old.throughput, new.throughput, true),
        ("p50 ms", old.latency_ms.p50, new.latency_ms.p50, false),
        ("p90 ms", old.latency_ms.p90, new.latency_ms.p90, false),
        ("p99 ms", old.latency_ms.p99, new.latency_ms.p99, false),
        ("p99.9 ms", old.latency_ms.p999, new.latency_ms.p999, false),
        ("max ms", old.latency_ms.max, new.latency_ms.max, false),
        (
            "errors",
            old.errors.total as f64,
            new.errors.total as f64,
            false,
        ),
        (
            "error rate",
            old.errors.total as f64 / old.requests.max(1) as f64,
            new.errors.total as f64 / new.requests.max(1) as f64,
            false,
        ),
    ];
    for (name, before, after, higher_is_better) in lines {
        let change = if before == 0.0 {
            if after == 0.0 { 0.0 } else { f64::INFINITY }
        } else {
            (after - before) / before * 100.0
        };
        let better = if higher_is_better {
            after >= before
        } else {
            after <= before
        };
        let mark = if change.abs() < 3.0 {
            "  ="
        } else if better {
            "  better"
        } else {
            "  WORSE"
        };
        let _ = writeln!(
            out,
            "{name:<14} {before:>12.2} {after:>12.2} {:>8.1}%{mark}",
            change
        );
    }
    out
}

const TEMPLATE: &str = include_str!("../../assets/bench-report.html");

/// The self-contained HTML report (charts drawn by inline script from the embedded result).
pub fn html(result: &BenchResult, baseline: Option<&BenchResult>) -> anyhow::Result<String> {
    let data = serde_json::to_string(&serde_json::json!({
        "result": result,
        "baseline": baseline,
    }))
    .context("encoding the report data")?
    // Keep the JSON from closing the script element it lives in.
    .replace("</", "<\\/");
    Ok(TEMPLATE.replace("/*BENCH_DATA*/null", &data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_evaluate() {
        let mut result = BenchResult {
            requests: 100,
            throughput: 990.0,
            ..BenchResult::default()
        };
        result.latency_ms.p99 = 12.0;
        result.errors.total = 1;
        let check = |expr: &str| Threshold::parse(expr).unwrap().evaluate(&result).passed;
        assert!(check("p99<50ms"));
        assert!(check("p99 < 0.05s"));
        assert!(!check("p99<12ms"));
        assert!(check("p99<=12ms"));
        assert!(check("throughput>=950"));
        assert!(!check("errors==0"));
        assert!(check("error_rate<2%"));
        assert!(!check("search.p95<300ms"), "a missing operation fails");
        for bad in ["p99", "p42<1ms", "p99<fast", "p99<5parsecs"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
    }
}
