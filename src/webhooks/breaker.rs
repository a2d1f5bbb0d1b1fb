//! A per-endpoint circuit breaker as a pure state machine: no clock, no I/O, no framework.
//!
//! The delivery loop asks [`Breaker::allow`] before each attempt and reports each attempt's
//! outcome with [`Breaker::record`]; both take `now` (ms) as an argument, so the machine is
//! deterministic and testable, and its whole state serializes into the endpoint's row, so an
//! open circuit stays open across a restart.
//!
//! Closed: it opens after [`CONSECUTIVE_FAILURES`] failures in a row, or when at least half of
//! the last [`WINDOW`] attempts failed. Open: nothing is attempted until the open time has
//! passed; the open time starts at the first retry wait and doubles each time the circuit opens
//! again without having closed, up to the last retry wait, with jitter supplied by the caller.
//! Half-open: one probe at a time; [`SUCCESSES_TO_CLOSE`] successes close it, a failure opens
//! it again.

use serde::{Deserialize, Serialize};

/// Failures in a row that open a closed circuit.
pub const CONSECUTIVE_FAILURES: u32 = 5;
/// Attempts remembered for the failure-ratio rule.
pub const WINDOW: u32 = 20;
/// Successful probes that close a half-open circuit.
pub const SUCCESSES_TO_CLOSE: u32 = 2;

/// Where the circuit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// May an attempt go now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Closed: go.
    Go,
    /// Half-open: go, as the one probe in flight.
    Probe,
    /// Not now; try again at this time (ms), or when the probe in flight ends (`None`).
    Wait(Option<i64>),
}

/// The open times: the first, and the cap (ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenTimes {
    pub first_ms: i64,
    pub cap_ms: i64,
}

/// The breaker's state; every field but `probing` is persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    pub state: State,
    pub consecutive_failures: u32,
    /// When an open circuit lets a probe through (ms).
    pub open_until: Option<i64>,
    /// The last attempts' outcomes, newest in bit 0 (1 = failure).
    window: u32,
    /// How many outcomes `window` holds (at most [`WINDOW`]).
    window_len: u32,
    /// Times opened since it was last closed (the open time doubles with each).
    opens: u32,
    /// Successful probes since it half-opened.
    probe_successes: u32,
    /// A probe is in flight (not persisted: after a restart the probe is simply retried).
    #[serde(skip)]
    probing: bool,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed,
            consecutive_failures: 0,
            open_until: None,
            window: 0,
            window_len: 0,
            opens: 0,
            probe_successes: 0,
            probing: false,
        }
    }
}

impl Breaker {
    /// Whether an attempt may start at `now`; a half-open permit marks a probe in flight,
    /// which must end with [`Breaker::record`] or [`Breaker::release`].
    pub fn allow(&mut self, now: i64) -> Permit {
        match self.state {
            State::Closed => Permit::Go,
            State::Open => match self.open_until {
                Some(until) if now < until => Permit::Wait(Some(until)),
                _ => {
                    self.state = State::HalfOpen;
                    self.probe_successes = 0;
                    self.probing = true;
                    Permit::Probe
                }
            },
            State::HalfOpen if self.probing => Permit::Wait(None),
            State::HalfOpen => {
                self.probing = true;
                Permit::Probe
            }
        }
    }

    /// Ends a probe that produced no verdict on the endpoint (refused before connecting).
    pub fn release(&mut self) {
        self.probing = false;
    }

    /// Records an attempt's outcome at `now`; `jitter` in -1.0..=1.0 scales the ±20% jitter of
    /// a new open time. Returns the new state when it changed.
    pub fn record(
        &mut self,
        success: bool,
        now: i64,
        times: OpenTimes,
        jitter: f64,
    ) -> Option<State> {
        let before = self.state;
        match self.state {
            State::Closed => {
                self.push(success);
                if success {
                    self.consecutive_failures = 0;
                } else {
                    self.consecutive_failures += 1;
                    let failures = self.window.count_ones();
                    if self.consecutive_failures >= CONSECUTIVE_FAILURES
                        || (self.window_len >= WINDOW && failures * 2 >= WINDOW)
                    {
                        self.open(now, times, jitter);
                    }
                }
            }
            State::HalfOpen => {
                self.probing = false;
                if success {
                    self.probe_successes += 1;
                    if self.probe_successes >= SUCCESSES_TO_CLOSE {
                        *self = Breaker::default();
                    }
                } else {
                    self.consecutive_failures += 1;
                    self.open(now, times, jitter);
                }
            }
            // An attempt that started before the circuit opened: its verdict changes nothing.
            State::Open => {}
        }
        (self.state != before).then_some(self.state)
    }

    fn push(&mut self, success: bool) {
        let mask = (1u32 << WINDOW) - 1;
        self.window = ((self.window << 1) | u32::from(!success)) & mask;
        self.window_len = (self.window_len + 1).min(WINDOW);
    }

    fn open(&mut self, now: i64, times: OpenTimes, jitter: f64) {
        let doubled = times
            .first_ms
            .max(1)
            .saturating_mul(1_i64 << self.opens.min(40));
        let base = doubled.min(times.cap_ms.max(times.first_ms));
        let jittered = base as f64 * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
        self.state = State::Open;
        self.open_until = Some(now.saturating_add(jittered.max(1.0) as i64));
        self.opens = self.opens.saturating_add(1);
        self.probe_successes = 0;
        self.probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMES: OpenTimes = OpenTimes {
        first_ms: 1_000,
        cap_ms: 4_000,
    };

    fn fail(b: &mut Breaker, now: i64) -> Option<State> {
        b.record(false, now, TIMES, 0.0)
    }

    #[test]
    fn opens_after_five_consecutive_failures() {
        let mut b = Breaker::default();
        for i in 0..4 {
            assert_eq!(b.allow(i), Permit::Go);
            assert_eq!(fail(&mut b, i), None);
        }
        assert_eq!(fail(&mut b, 10), Some(State::Open));
        assert_eq!(b.open_until, Some(1_010));
        assert_eq!(b.allow(500), Permit::Wait(Some(1_010)));
    }

    #[test]
    fn a_success_resets_the_run_but_the_ratio_still_trips() {
        let mut b = Breaker::default();
        // Alternate: never 5 in a row, but half of 20 failed.
        for i in 0..19 {
            assert_eq!(b.record(i % 2 == 0, i, TIMES, 0.0), None, "attempt {i}");
        }
        assert_eq!(b.state, State::Closed);
        assert_eq!(b.record(false, 19, TIMES, 0.0), Some(State::Open));
    }

    #[test]
    fn few_failures_in_a_full_window_keep_it_closed() {
        let mut b = Breaker::default();
        for i in 0..100 {
            b.record(i % 3 != 0, i, TIMES, 0.0);
            assert_eq!(b.state, State::Closed, "attempt {i}");
        }
    }

    #[test]
    fn half_opens_with_one_probe_at_a_time_and_two_successes_close() {
        let mut b = Breaker::default();
        for i in 0..5 {
            fail(&mut b, i);
        }
        let until = b.open_until.unwrap();
        assert_eq!(b.allow(until), Permit::Probe);
        assert_eq!(b.state, State::HalfOpen);
        assert_eq!(b.allow(until), Permit::Wait(None), "one probe at a time");
        assert_eq!(b.record(true, until + 1, TIMES, 0.0), None);
        assert_eq!(b.allow(until + 2), Permit::Probe);
        assert_eq!(b.record(true, until + 3, TIMES, 0.0), Some(State::Closed));
        assert_eq!(b, Breaker::default());
    }

    #[test]
    fn the_open_time_doubles_up_to_the_cap_and_resets_on_close() {
        let mut b = Breaker::default();
        for i in 0..5 {
            fail(&mut b, i);
        }
        let mut now = 4;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let until = b.open_until.unwrap();
            waits.push(until - now);
            now = until;
            assert_eq!(b.allow(now), Permit::Probe);
            assert_eq!(fail(&mut b, now), Some(State::Open));
        }
        assert_eq!(waits, vec![1_000, 2_000, 4_000, 4_000]);
        let until = b.open_until.unwrap();
        b.allow(until);
        b.record(true, until, TIMES, 0.0);
        b.allow(until);
        b.record(true, until, TIMES, 0.0);
        for i in 0..5 {
            fail(&mut b, until + i);
        }
        assert_eq!(b.open_until, Some(until + 4 + 1_000));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for jitter in [-1.0, -0.5, 0.0, 0.7, 1.0, 5.0] {
            let mut b = Breaker::default();
            for _ in 0..5 {
                b.record(false, 0, TIMES, jitter);
            }
            let wait = b.open_until.unwrap();
            assert!((800..=1_200).contains(&wait), "{jitter}: {wait}");
        }
    }

    #[test]
    fn a_released_probe_lets_the_next_one_go_and_state_round_trips() {
        let mut b = Breaker::default();
        for i in 0..5 {
            fail(&mut b, i);
        }
        assert_eq!(b.allow(i64::MAX), Permit::Probe);
        b.release();
        assert_eq!(b.allow(i64::MAX), Permit::Probe);
        let json = serde_json::to_string(&b).unwrap();
        let back: Breaker = serde_json::from_str(&json).unwrap();
        assert_eq!(back.state, State::HalfOpen);
        assert_eq!(back.consecutive_failures, 5);
    }

    #[test]
    fn a_late_verdict_while_open_changes_nothing() {
        let mut b = Breaker::default();
        for i in 0..5 {
            fail(&mut b, i);
        }
        let before = b.clone();
        assert_eq!(b.record(true, 5, TIMES, 0.0), None);
        assert_eq!(b, before);
    }
}
