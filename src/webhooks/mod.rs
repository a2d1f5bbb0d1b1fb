//! Webhooks: pushing every event to HTTP endpoints that users register, at least once.
//!
//! The pieces, each small and testable on its own: [`model`] (endpoints, deliveries, request
//! bodies and their validation), [`signing`] (Standard Webhooks secrets and signatures),
//! [`guard`] (the SSRF address classifier), [`breaker`] (the per-endpoint circuit breaker, a
//! pure state machine), [`store`] (what a backend provides: the endpoint rows and the outbox,
//! whose delivery rows are written in the same transaction as the event), [`client`] (the one
//! pooled HTTP client, checking addresses inside its resolver) and [`worker`] (the delivery
//! loop that ties them together: claims due deliveries, signs, sends, retries on the schedule,
//! drives the breakers).

pub mod breaker;
pub mod client;
pub mod guard;
pub mod model;
pub mod signing;
pub mod store;
pub mod worker;

use std::time::Duration;

use crate::http::auth::Cidr;

/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The waits between attempts (`--webhook-retry-schedule`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule(Vec<Duration>);

impl Schedule {
    pub const DEFAULT: &'static str = "5s,5m,30m,2h,5h,10h,10h";

    /// `D,D,…` with durations as the other settings take them (`100ms`, `5s`, `2h`).
    pub fn parse(raw: &str) -> Result<Schedule, String> {
        let waits = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(crate::config::parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        if waits.is_empty() {
            return Err("the retry schedule needs at least one wait".to_owned());
        }
        if waits.iter().any(Duration::is_zero) {
            return Err("retry waits must be longer than zero".to_owned());
        }
        Ok(Schedule(waits))
    }

    pub fn waits(&self) -> &[Duration] {
        &self.0
    }

    /// The wait after the `attempt`-th failed attempt (1-based), or `None` past the last.
    pub fn wait_after(&self, attempt: u32) -> Option<Duration> {
        self.0.get(attempt.checked_sub(1)? as usize).copied()
    }

    pub fn first(&self) -> Duration {
        self.0[0]
    }

    pub fn last(&self) -> Duration {
        self.0[self.0.len() - 1]
    }

    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::parse(Schedule::DEFAULT)
            .unwrap_or_else(|e| unreachable!("the default schedule is valid: {e}"))
    }
}

/// The webhook settings (see `sessiond serve --help`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Internal networks webhooks may reach anyway.
    pub allowed_networks: Vec<Cidr>,
    pub retry_schedule: Schedule,
    /// Whole-attempt timeout (connect, send, read the answer).
    pub timeout: Duration,
    /// Delivered rows older than this are pruned.
    pub retention: Duration,
    /// Attempts in flight per (unordered) endpoint.
    pub concurrency: u32,
    /// How often the outbox is polled when no commit woke the worker.
    pub poll_interval: Duration,
    /// Most endpoints one server (one database) holds.
    pub max_endpoints: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allowed_networks: Vec::new(),
            retry_schedule: Schedule::default(),
            timeout: Duration::from_secs(15),
            retention: Duration::from_secs(7 * 24 * 3600),
            concurrency: 8,
            poll_interval: Duration::from_secs(1),
            max_endpoints: model::MAX_ENDPOINTS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse() {
        let s = Schedule::default();
        assert_eq!(s.waits().len(), 7);
        assert_eq!(s.first(), Duration::from_secs(5));
        assert_eq!(s.last(), Duration::from_secs(36_000));
        assert_eq!(s.wait_after(1), Some(Duration::from_secs(5)));
        assert_eq!(s.wait_after(7), Some(Duration::from_secs(36_000)));
        assert_eq!(s.wait_after(8), None);
        assert_eq!(s.wait_after(0), None);
        let short = Schedule::parse("100ms, 200ms").unwrap();
        assert_eq!(short.total(), Duration::from_millis(300));
        for bad in ["", "soon", "0s", "1s,,x"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
