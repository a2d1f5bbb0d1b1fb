//! Rate limiting: GCRA (governor) per caller and tier, in process.
//!
//! Three tiers with their own rate and burst: `read` (GETs and streams), `expensive` (search
//! and summaries) and `default` (everything else: writes). A caller is its API key, or its
//! client address when unauthenticated. [`Limiter`] is the narrow interface the HTTP layer
//! uses, so a cluster-wide implementation (Redis) can replace [`LocalLimits`] without touching
//! handlers.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// Which budget a request draws on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    Default,
    Read,
    Expensive,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Default, Tier::Read, Tier::Expensive];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Default => "default",
            Tier::Read => "read",
            Tier::Expensive => "expensive",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Tier::Default => 0,
            Tier::Read => 1,
            Tier::Expensive => 2,
        }
    }
}

/// A tier's budget: a sustained rate and the burst allowed on top of it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Requests per second, sustained (may be below 1: `30/m` is 0.5).
    pub per_second: f64,
    /// Requests that may be made at once after a quiet period.
    pub burst: u32,
}

impl Policy {
    /// Parses `N/s`, `N/m` or `N/h`, then `,` and the burst: `100/s,200`.
    pub fn parse(raw: &str) -> Result<Policy, String> {
        let (rate, burst) = raw
            .split_once(',')
            .ok_or_else(|| "expected RATE/UNIT,BURST such as 100/s,200".to_owned())?;
        let (count, unit) = rate
            .trim()
            .split_once('/')
            .ok_or_else(|| "expected a rate such as 100/s, 30/m or 1000/h".to_owned())?;
        let count: f64 = count
            .trim()
            .parse()
            .ok()
            .filter(|c: &f64| c.is_finite() && *c > 0.0)
            .ok_or_else(|| "the rate must be a positive number".to_owned())?;
        let seconds = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err("the rate's unit must be s, m or h".to_owned()),
        };
        let burst: u32 = burst
            .trim()
            .parse()
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| "the burst must be a whole number above 0".to_owned())?;
        Ok(Policy {
            per_second: count / seconds,
            burst,
        })
    }

    fn quota(&self) -> Quota {
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }

    /// Seconds to refill the whole burst: the window of the `RateLimit-Policy` header.
    pub fn window_seconds(&self) -> u64 {
        (f64::from(self.burst) / self.per_second).ceil().max(1.0) as u64
    }
}

/// What the limiter decided about one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    Allowed {
        /// Requests still allowed right now.
        remaining: u32,
        /// Seconds until the full burst is available again.
        reset_seconds: u64,
    },
    Limited {
        /// Seconds until one more request is allowed.
        retry_after_seconds: u64,
    },
}

/// Decides whether a caller may make a request in a tier.
#[async_trait::async_trait]
pub trait Limiter: Send + Sync {
    async fn check(&self, tier: Tier, caller: &str) -> Decision;
    fn policy(&self, tier: Tier) -> Policy;
    /// Forgets callers idle long enough to be back at full burst (bounded memory).
    fn forget_idle(&self);
}

type KeyedLimiter<C> =
    RateLimiter<String, DashMapStateStore<String>, C, StateInformationMiddleware>;

/// The in-process limiter: one GCRA state per caller and tier.
pub struct LocalLimits<C: Clock = DefaultClock> {
    policies: [Policy; 3],
    limiters: [KeyedLimiter<C>; 3],
    clock: C,
}

impl LocalLimits<DefaultClock> {
    pub fn new(policies: [Policy; 3]) -> Self {
        Self::with_clock(policies, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LocalLimits<C> {
    /// `policies` in the order of [`Tier::ALL`].
    pub fn with_clock(policies: [Policy; 3], clock: C) -> Self {
        let limiter = |policy: &Policy| {
            RateLimiter::<String, _, C, governor::middleware::NoOpMiddleware<C::Instant>>::new(
                policy.quota(),
                DashMapStateStore::default(),
                clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>()
        };
        LocalLimits {
            limiters: [
                limiter(&policies[0]),
                limiter(&policies[1]),
                limiter(&policies[2]),
            ],
            policies,
            clock,
        }
    }
}

#[async_trait::async_trait]
impl<C> Limiter for LocalLimits<C>
where
    C: Clock + Send + Sync,
    C::Instant: Reference + Send + Sync,
{
    async fn check(&self, tier: Tier, caller: &str) -> Decision {
        self.check_now(tier, caller)
    }

    fn policy(&self, tier: Tier) -> Policy {
        self.policies[tier.index()]
    }

    fn forget_idle(&self) {
        for limiter in &self.limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

impl<C> LocalLimits<C>
where
    C: Clock + Send + Sync,
    C::Instant: Reference + Send + Sync,
{
    /// The decision, in process.
    pub fn check_now(&self, tier: Tier, caller: &str) -> Decision {
        let policy = self.policies[tier.index()];
        match self.limiters[tier.index()].check_key(&caller.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let missing = policy.burst.saturating_sub(remaining);
                Decision::Allowed {
                    remaining,
                    reset_seconds: (f64::from(missing) / policy.per_second).ceil() as u64,
                }
            }
            Err(not_until) => Decision::Limited {
                retry_after_seconds: not_until
                    .wait_time_from(self.clock.now())
                    .as_secs_f64()
                    .ceil()
                    .max(1.0) as u64,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits(clock: FakeRelativeClock) -> LocalLimits<FakeRelativeClock> {
        let policy = |raw| Policy::parse(raw).unwrap();
        LocalLimits::with_clock([policy("10/s,5"), policy("1/s,3"), policy("30/m,2")], clock)
    }

    #[test]
    fn a_burst_is_allowed_then_limited_with_a_retry_time() {
        let clock = FakeRelativeClock::default();
        let limits = limits(clock.clone());
        for expected in [2, 1, 0] {
            match limits.check_now(Tier::Read, "key_a") {
                Decision::Allowed { remaining, .. } => assert_eq!(remaining, expected),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            limits.check_now(Tier::Read, "key_a"),
            Decision::Limited {
                retry_after_seconds: 1
            }
        );
        // Callers and tiers are independent.
        assert!(matches!(
            limits.check_now(Tier::Read, "key_b"),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            limits.check_now(Tier::Default, "key_a"),
            Decision::Allowed { .. }
        ));
    }

    #[test]
    fn the_budget_refills_over_time() {
        let clock = FakeRelativeClock::default();
        let limits = limits(clock.clone());
        for _ in 0..2 {
            assert!(matches!(
                limits.check_now(Tier::Expensive, "ip"),
                Decision::Allowed { .. }
            ));
        }
        // 30/m: one more every 2 s.
        assert_eq!(
            limits.check_now(Tier::Expensive, "ip"),
            Decision::Limited {
                retry_after_seconds: 2
            }
        );
        clock.advance(Duration::from_millis(1999));
        assert!(matches!(
            limits.check_now(Tier::Expensive, "ip"),
            Decision::Limited { .. }
        ));
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            limits.check_now(Tier::Expensive, "ip"),
            Decision::Allowed {
                remaining: 0,
                reset_seconds: 4
            }
        );
        // A long quiet period gives the whole burst back, never more.
        clock.advance(Duration::from_secs(60));
        assert_eq!(
            limits.check_now(Tier::Expensive, "ip"),
            Decision::Allowed {
                remaining: 1,
                reset_seconds: 2
            }
        );
    }

    #[test]
    fn policies_parse_and_explain_errors() {
        assert_eq!(
            Policy::parse("100/s,200").unwrap(),
            Policy {
                per_second: 100.0,
                burst: 200
            }
        );
        assert_eq!(Policy::parse("30/m,5").unwrap().per_second, 0.5);
        assert_eq!(Policy::parse("30/m,5").unwrap().window_seconds(), 10);
        for bad in ["100/s", "x/s,1", "100/d,1", "100/s,0", "-1/s,2", "0/s,1"] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }
}
