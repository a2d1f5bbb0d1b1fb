//! Redis, shared by every instance: cluster-wide rate limits, with the in-process limiter
//! standing in while Redis is unreachable.
//!
//! Each decision is one round trip running a GCRA script (the same algorithm as the local
//! limiter) against Redis's own clock, so every instance draws on one budget per caller. When
//! Redis fails, the instance keeps serving: it decides with its local limiter, reports
//! `degraded` on `/ready`, and a probe once a second finds Redis again and switches back.
//! (Cache invalidation and key revocation need no Redis: on PostgreSQL they travel with each
//! commit through the database's own `NOTIFY`, see [`crate::storage::postgres`].)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::ratelimit::{Decision, Limiter, LocalLimits, Policy, Tier};

/// GCRA: `KEYS[1]` holds the caller's theoretical arrival time (µs, Redis clock); `ARGV[1]` is
/// the emission interval (µs), `ARGV[2]` the burst. Returns `{allowed, remaining, µs}`, where
/// µs is the time until the full burst is back (allowed) or until one more request is
/// (limited).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, 0, allow_at - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), new_tat - now}
";

/// A connection to Redis and whether it answers.
pub struct Redis {
    connection: ConnectionManager,
    healthy: AtomicBool,
}

impl Redis {
    /// Connects lazily (a Redis that is down at start is retried, not fatal) and starts the
    /// probe that tracks its health.
    pub fn connect(url: &str) -> anyhow::Result<Arc<Redis>> {
        let client = redis::Client::open(url).context("parsing the Redis URL (setting `redis`)")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(250)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .context("setting up the Redis connection")?;
        let redis = Arc::new(Redis {
            connection,
            healthy: AtomicBool::new(false),
        });
        tokio::spawn(probe(Arc::downgrade(&redis)));
        Ok(redis)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn failed(&self, error: &redis::RedisError) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, "Redis failed; rate limits are per instance until it is back");
        }
    }

    /// One round trip (for `/ready` and the probe).
    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(|_| ())
    }
}

/// Pings Redis every second (one tiny round trip), switching the health flag both ways: a
/// Redis that comes back is used again within a second.
async fn probe(redis: std::sync::Weak<Redis>) {
    loop {
        let Some(link) = redis.upgrade() else {
            return;
        };
        match link.ping().await {
            Ok(()) => {
                if !link.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis answers; rate limits are cluster-wide");
                }
            }
            Err(error) => link.failed(&error),
        }
        drop(link);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Rate limits kept in Redis, shared by every instance.
pub struct RedisLimits {
    redis: Arc<Redis>,
    script: redis::Script,
    local: LocalLimits,
    policies: [Policy; 3],
}

impl RedisLimits {
    pub fn new(redis: Arc<Redis>, policies: [Policy; 3]) -> RedisLimits {
        RedisLimits {
            redis,
            script: redis::Script::new(GCRA),
            local: LocalLimits::new(policies),
            policies,
        }
    }

    async fn shared(&self, tier: Tier, caller: &str) -> Result<Decision, redis::RedisError> {
        let policy = self.policies[tier.index()];
        let interval_us = (1_000_000.0 / policy.per_second).round().max(1.0) as i64;
        let mut connection = self.redis.connection.clone();
        let (allowed, remaining, micros): (i64, i64, i64) = self
            .script
            .key(format!("sessiond:rl:{}:{caller}", tier.as_str()))
            .arg(interval_us)
            .arg(policy.burst)
            .invoke_async(&mut connection)
            .await?;
        let seconds = (micros.max(0) as f64 / 1e6).ceil() as u64;
        Ok(if allowed == 1 {
            Decision::Allowed {
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                reset_seconds: seconds,
            }
        } else {
            Decision::Limited {
                retry_after_seconds: seconds.max(1),
            }
        })
    }
}

#[async_trait::async_trait]
impl Limiter for RedisLimits {
    async fn check(&self, tier: Tier, caller: &str) -> Decision {
        if self.redis.healthy() {
            match self.shared(tier, caller).await {
                Ok(decision) => return decision,
                Err(error) => self.redis.failed(&error),
            }
        }
        self.local.check_now(tier, caller)
    }

    fn policy(&self, tier: Tier) -> Policy {
        self.policies[tier.index()]
    }

    fn forget_idle(&self) {
        self.local.forget_idle();
    }
}
