//! Redis, shared by every instance: cluster-wide rate limits, with the in-process limiter
//! standing in while Redis is unreachable, and a broadcast of cache invalidations and key
//! revocations.
//!
//! Each rate-limit decision is one round trip running a GCRA script (the same algorithm as the
//! local limiter) against Redis's own clock, so every instance draws on one budget per caller.
//! When Redis fails, the instance keeps serving: it decides with its local limiter, reports
//! `degraded` on `/ready`, and a probe once a second finds Redis again and switches back.
//!
//! The broadcast is the fast path for what other instances must forget: each instance
//! publishes the sessions its own commits changed and the keys it revoked, and drops what the
//! others publish. On PostgreSQL the same news also arrives through the database (the event
//! feed and `NOTIFY`, see [`crate::storage::postgres`]), so either path alone is enough, and
//! both are idempotent.

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

/// The pub/sub channel of [`Broadcast`]s.
const CHANNEL: &str = "sessiond:broadcast";

/// What one instance tells the others to forget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broadcast {
    /// A session changed (or was deleted) at `version`: cached responses about it are stale.
    Invalidate {
        session: String,
        version: i64,
        deleted: bool,
    },
    /// An API key was revoked.
    Revoke { key: String },
}

impl Broadcast {
    /// `i|VERSION|DELETED|SESSION` or `r|KEY`, after the sender's instance id and `|`.
    fn encode(&self, sender: &str) -> String {
        match self {
            Broadcast::Invalidate {
                session,
                version,
                deleted,
            } => format!("{sender}|i|{version}|{}|{session}", u8::from(*deleted)),
            Broadcast::Revoke { key } => format!("{sender}|r|{key}"),
        }
    }

    /// The sender and the message; `None` for anything malformed.
    fn decode(payload: &str) -> Option<(&str, Broadcast)> {
        let (sender, rest) = payload.split_once('|')?;
        let message = match rest.split_once('|')? {
            ("i", rest) => {
                let (version, rest) = rest.split_once('|')?;
                let (deleted, session) = rest.split_once('|')?;
                Broadcast::Invalidate {
                    session: session.to_owned(),
                    version: version.parse().ok()?,
                    deleted: deleted == "1",
                }
            }
            ("r", key) => Broadcast::Revoke {
                key: key.to_owned(),
            },
            _ => return None,
        };
        Some((sender, message))
    }
}

/// Broadcasts waiting to be published; beyond this they are dropped (the database path and
/// the caches' own invalidation still cover them) rather than held without bound.
const OUTBOX: usize = 65_536;

/// A connection to Redis and whether it answers.
pub struct Redis {
    client: redis::Client,
    connection: ConnectionManager,
    healthy: AtomicBool,
    /// This process, so it ignores its own broadcasts.
    instance: String,
    outbox: tokio::sync::mpsc::Sender<Broadcast>,
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
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .context("setting up the Redis connection")?;
        let (outbox, pending) = tokio::sync::mpsc::channel(OUTBOX);
        let redis = Arc::new(Redis {
            client,
            connection,
            healthy: AtomicBool::new(false),
            instance: crate::domain::random_token(),
            outbox,
        });
        tokio::spawn(probe(Arc::downgrade(&redis)));
        tokio::spawn(publish(Arc::downgrade(&redis), pending));
        Ok(redis)
    }

    /// Queues `message` for the other instances (never waits).
    pub fn broadcast(&self, message: Broadcast) {
        if self.outbox.try_send(message).is_err() {
            metrics::counter!("sessiond_broadcasts_dropped_total").increment(1);
        }
    }

    /// Hands every other instance's broadcast to `handler` until the returned task is
    /// aborted, resubscribing (after a pause) whenever the connection is lost.
    pub fn listen(
        self: &Arc<Self>,
        handler: impl Fn(Broadcast) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let redis = self.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            loop {
                match redis.client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if let Err(error) = pubsub.subscribe(CHANNEL).await {
                            tracing::warn!(%error, "subscribing to Redis broadcasts failed");
                        } else {
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                let Ok(payload) = message.get_payload::<String>() else {
                                    continue;
                                };
                                match Broadcast::decode(&payload) {
                                    Some((sender, _)) if sender == redis.instance => {}
                                    Some((_, message)) => handler(message),
                                    None => tracing::warn!(payload, "a malformed broadcast"),
                                }
                            }
                            tracing::warn!("the Redis broadcast connection closed");
                        }
                    }
                    Err(error) => tracing::debug!(%error, "no Redis for broadcasts"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
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

/// Publishes queued broadcasts, a pipeline of everything waiting at a time.
async fn publish(
    redis: std::sync::Weak<Redis>,
    mut pending: tokio::sync::mpsc::Receiver<Broadcast>,
) {
    let mut batch = Vec::new();
    while pending.recv_many(&mut batch, 256).await > 0 {
        let Some(link) = redis.upgrade() else {
            return;
        };
        let mut pipeline = redis::pipe();
        for message in batch.drain(..) {
            pipeline
                .cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(message.encode(&link.instance))
                .ignore();
        }
        let mut connection = link.connection.clone();
        if let Err(error) = pipeline.query_async::<()>(&mut connection).await {
            // Lost, not retried: the database's own path still tells the others.
            link.failed(&error);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_survive_encoding_and_nonsense_is_refused() {
        for message in [
            Broadcast::Invalidate {
                session: "ses_01abc".to_owned(),
                version: 42,
                deleted: true,
            },
            Broadcast::Revoke {
                key: "key_x|y".to_owned(),
            },
        ] {
            let encoded = message.encode("me");
            assert_eq!(Broadcast::decode(&encoded), Some(("me", message)));
        }
        for bad in ["", "me", "me|x|1", "me|i|notanumber|0|s", "me|i|1"] {
            assert_eq!(Broadcast::decode(bad), None, "{bad}");
        }
    }
}
