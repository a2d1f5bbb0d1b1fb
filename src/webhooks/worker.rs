//! The delivery loop: one tokio task per server that turns outbox rows into HTTP requests.
//!
//! It wakes when a commit is published (a [`Notify`] signalled from the commit hook), when an
//! attempt ends, when the next pending delivery falls due, and on a poll interval in case a
//! wake-up was lost. Each round it claims the due deliveries (at most the per-endpoint cap for
//! each endpoint, one for an ordered endpoint), asks each endpoint's circuit breaker, and sends
//! the allowed ones concurrently through the pooled [`Client`]. Every outcome is settled here,
//! in one place: the breaker is advanced (its state is written with the delivery's, so it
//! survives a restart), a failure is rescheduled on the retry schedule with ±20% jitter
//! (`Retry-After` on 429/503 honoured within the schedule's bounds) or marked `failed` past its
//! end, a 410 disables the endpoint, and so does failing continuously for twice the schedule.
//! A delivery stays `pending` in the database until its outcome is committed, so a crash at any
//! point means a redelivery, never a loss.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};

use super::breaker::{OpenTimes, Permit, State};
use super::client::{Answer, Client, SendError};
use super::guard::Guard;
use super::model::{DeliveryStatus, Endpoint};
use super::signing::signature_header;
use super::store::{AttemptRecord, Due, EndpointState, WebhookStore};
use super::{Schedule, Settings};
use crate::domain::wall_clock_ms;
use crate::events::Frame;
use crate::storage::Storage;
use crate::telemetry::metrics as m;

/// Due deliveries claimed per round.
const ROUND: u32 = 1024;
/// How often the outbox gauges are refreshed and delivered rows pruned.
const STATS_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Lease beyond the attempt timeout (backends shared by several instances).
const LEASE_MARGIN_MS: i64 = 30_000;

/// What an attempt came back with.
enum Sent {
    Answer(Answer),
    Error(SendError),
    /// The event is no longer in the log (it cannot be delivered any more).
    Missing,
    /// The storage could not be read; try again soon, no attempt spent.
    Unreadable,
}

struct Outcome {
    due: Due,
    probe: bool,
    sent: Sent,
    elapsed: Duration,
}

/// An endpoint as the loop tracks it: its row, with the circuit held here authoritatively.
struct Tracked {
    endpoint: Endpoint,
    in_flight: u32,
    deferring: bool,
}

enum Done {
    Recorded { delivery: i64 },
    Deferred { endpoint: String },
}

/// Starts the loop, or returns `None` when the backend stores no webhooks.
pub fn spawn(
    storage: Arc<dyn Storage>,
    settings: Settings,
    wake: Arc<Notify>,
    stopping: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    storage.webhooks()?;
    let client = Client::new(
        Guard::new(settings.allowed_networks.clone()),
        settings.timeout,
    );
    Some(tokio::spawn(run(storage, settings, client, wake, stopping)))
}

fn store(storage: &Arc<dyn Storage>) -> Option<&dyn WebhookStore> {
    storage.webhooks()
}

fn jitter() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

async fn run(
    storage: Arc<dyn Storage>,
    settings: Settings,
    client: Client,
    wake: Arc<Notify>,
    mut stopping: watch::Receiver<bool>,
) {
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel::<Outcome>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<Done>();
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let mut in_flight: HashSet<i64> = HashSet::new();
    let mut last_stats = Instant::now() - STATS_EVERY;
    let mut last_prune = Instant::now();
    let times = OpenTimes {
        first_ms: ms(settings.retry_schedule.first()),
        cap_ms: ms(settings.retry_schedule.last()),
    };
    loop {
        let Some(webhooks) = store(&storage) else {
            return;
        };
        refresh(webhooks, &mut tracked).await;
        let now = wall_clock_ms();
        // Long enough for an attempt and its record; a dead instance's claims expire with it.
        let lease_until = now + ms(settings.timeout) + LEASE_MARGIN_MS;
        let due = match webhooks
            .due(now, lease_until, settings.concurrency.max(1), ROUND)
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the webhook outbox failed"
                );
                Vec::new()
            }
        };
        // Claimed but not attempted (circuit, cap): given back at the end of the round.
        let mut skipped = Vec::new();
        for item in due {
            if in_flight.contains(&item.id) {
                continue;
            }
            let Some(t) = tracked.get_mut(&item.endpoint_id) else {
                skipped.push(item.id);
                continue;
            };
            let cap = if t.endpoint.ordered {
                1
            } else {
                settings.concurrency.max(1)
            };
            if !t.endpoint.enabled || t.in_flight >= cap {
                skipped.push(item.id);
                continue;
            }
            let before = t.endpoint.breaker.state;
            let probe = match t.endpoint.breaker.allow(now) {
                Permit::Go => false,
                Permit::Probe => true,
                Permit::Wait(until) => {
                    // Rows queued since the circuit opened: park them until it may half-open.
                    if let Some(until) = until
                        && !t.deferring
                    {
                        t.deferring = true;
                        let (storage, done_tx) = (storage.clone(), done_tx.clone());
                        let endpoint = item.endpoint_id.clone();
                        tokio::spawn(async move {
                            if let Some(webhooks) = store(&storage)
                                && let Err(error) = webhooks.defer(&endpoint, until).await
                            {
                                tracing::warn!(error = format!("{error:#}"), "deferring failed");
                            }
                            let _ = done_tx.send(Done::Deferred { endpoint });
                        });
                    }
                    skipped.push(item.id);
                    continue;
                }
            };
            if before != t.endpoint.breaker.state {
                transition(&t.endpoint.id, t.endpoint.breaker.state);
            }
            t.in_flight += 1;
            in_flight.insert(item.id);
            tokio::spawn(attempt(
                storage.clone(),
                client.clone(),
                t.endpoint.clone(),
                item,
                probe,
                outcomes_tx.clone(),
            ));
        }

        if !skipped.is_empty()
            && let Err(error) = webhooks.release(skipped).await
        {
            tracing::warn!(error = format!("{error:#}"), "releasing claims failed");
        }
        if last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            publish_stats(webhooks, &tracked).await;
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            prune(storage.clone(), settings.retention);
        }

        // Sleep until the next due delivery (or the poll interval, whichever is sooner); rows
        // already due but blocked (cap, probe in flight) are retried when an attempt ends.
        let next = webhooks.next_due().await.ok().flatten();
        let now = wall_clock_ms();
        let poll = settings.poll_interval;
        let sleep = match next {
            Some(at) if at > now => Duration::from_millis((at - now) as u64).min(poll),
            _ => poll,
        };
        tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => return,
            Some(outcome) = outcomes.recv() => {
                settle(&storage, &settings.retry_schedule, times, &mut tracked, outcome, &done_tx);
                // Settle everything that is ready before claiming again.
                while let Ok(outcome) = outcomes.try_recv() {
                    settle(&storage, &settings.retry_schedule, times, &mut tracked, outcome, &done_tx);
                }
            }
            Some(finished) = done.recv() => {
                finish(&mut tracked, &mut in_flight, finished);
                while let Ok(finished) = done.try_recv() {
                    finish(&mut tracked, &mut in_flight, finished);
                }
            }
            () = wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
        }
    }
}

fn finish(tracked: &mut HashMap<String, Tracked>, in_flight: &mut HashSet<i64>, done: Done) {
    match done {
        // The endpoint's slot was freed when the attempt was settled; the row stays claimed
        // until its outcome is committed.
        Done::Recorded { delivery } => {
            in_flight.remove(&delivery);
        }
        Done::Deferred { endpoint } => {
            if let Some(t) = tracked.get_mut(&endpoint) {
                t.deferring = false;
            }
        }
    }
}

/// Brings the tracked endpoints in line with the stored ones. The circuit and failure run
/// stay as tracked here (this loop is their only writer) unless the endpoint was re-enabled
/// or disabled through the API, which resets them in the row.
async fn refresh(webhooks: &dyn WebhookStore, tracked: &mut HashMap<String, Tracked>) {
    let stored = match webhooks.all_endpoints().await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(
                error = format!("{error:#}"),
                "reading webhook endpoints failed"
            );
            return;
        }
    };
    let ids: HashSet<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    tracked.retain(|id, _| ids.contains(id.as_str()));
    for mut endpoint in stored {
        match tracked.get_mut(&endpoint.id) {
            Some(t) => {
                if t.endpoint.enabled == endpoint.enabled {
                    endpoint.breaker = t.endpoint.breaker.clone();
                    endpoint.failing_since = t.endpoint.failing_since;
                    endpoint.circuit_seq = t.endpoint.circuit_seq;
                }
                t.endpoint = endpoint;
            }
            None => {
                tracked.insert(
                    endpoint.id.clone(),
                    Tracked {
                        endpoint,
                        in_flight: 0,
                        deferring: false,
                    },
                );
            }
        }
    }
}

async fn attempt(
    storage: Arc<dyn Storage>,
    client: Client,
    endpoint: Endpoint,
    due: Due,
    probe: bool,
    outcomes: mpsc::UnboundedSender<Outcome>,
) {
    let started = Instant::now();
    let sent = match store(&storage) {
        None => Sent::Unreadable,
        Some(webhooks) => match webhooks.event(due.event_seq).await {
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading an event to deliver failed"
                );
                Sent::Unreadable
            }
            Ok(None) => Sent::Missing,
            Ok(Some(event)) => {
                let body: Bytes = Frame::new(&event).json;
                let id = format!("evt_{}", event.seq);
                let now = wall_clock_ms();
                let timestamp = now.div_euclid(1000);
                let signature =
                    signature_header(&endpoint.signing_secrets(now), &id, timestamp, &body);
                let headers = [
                    ("webhook-id", id),
                    ("webhook-timestamp", timestamp.to_string()),
                    ("webhook-signature", signature),
                ];
                match client.post(endpoint.url.as_str(), &headers, body).await {
                    Ok(answer) => Sent::Answer(answer),
                    Err(error) => Sent::Error(error),
                }
            }
        },
    };
    let _ = outcomes.send(Outcome {
        due,
        probe,
        sent,
        elapsed: started.elapsed(),
    });
}

fn transition(endpoint: &str, to: State) {
    metrics::counter!(m::WEBHOOK_CIRCUIT_TRANSITIONS, "to" => to.as_str()).increment(1);
    tracing::info!(
        endpoint,
        state = to.as_str(),
        "webhook circuit changed state"
    );
}

/// The wait before the next attempt after `attempts` failed ones, or `None` past the schedule.
fn retry_wait(schedule: &Schedule, attempts: u32, answer: Option<&Answer>) -> Option<Duration> {
    let wait = schedule.wait_after(attempts)?;
    let jittered = wait.mul_f64((1.0 + 0.2 * jitter()).max(0.0));
    let asked = answer
        .filter(|a| a.status == 429 || a.status == 503)
        .and_then(|a| a.retry_after)
        .map(Duration::from_secs);
    Some(match asked {
        // Honoured within the schedule: never sooner than planned, never past its last wait.
        Some(asked) => asked.clamp(jittered, schedule.last().max(jittered)),
        None => jittered,
    })
}

/// Decides what an attempt's outcome means, and writes it.
fn settle(
    storage: &Arc<dyn Storage>,
    schedule: &Schedule,
    times: OpenTimes,
    tracked: &mut HashMap<String, Tracked>,
    outcome: Outcome,
    done_tx: &mpsc::UnboundedSender<Done>,
) {
    let Outcome {
        due,
        probe,
        sent,
        elapsed,
    } = outcome;
    let now = wall_clock_ms();
    let delivery = due.id;
    let endpoint_id = due.endpoint_id.clone();
    let Some(t) = tracked.get_mut(&due.endpoint_id) else {
        // Deleted meanwhile: its rows are gone too.
        let _ = done_tx.send(Done::Recorded { delivery });
        return;
    };
    // The request is over: its slot under the endpoint's cap is free (an ordered endpoint's
    // next delivery still waits, as this one stays pending until its outcome is committed).
    t.in_flight = t.in_flight.saturating_sub(1);
    let endpoint = &mut t.endpoint;
    let attempts = due.attempts + 1;
    let mut record = AttemptRecord {
        delivery,
        endpoint_id: endpoint_id.clone(),
        attempts,
        status: DeliveryStatus::Pending,
        next_attempt_at: None,
        last_status: None,
        last_error: None,
        at: now,
        endpoint: None,
    };
    let mut disable = None;
    // `Some(success)`: a verdict on the endpoint for its breaker.
    let verdict = match &sent {
        Sent::Unreadable => {
            // Nothing was attempted: leave the row as it is, due again shortly.
            if probe {
                endpoint.breaker.release();
            }
            let _ = done_tx.send(Done::Recorded { delivery });
            return;
        }
        Sent::Missing => {
            record.status = DeliveryStatus::Failed;
            record.attempts = due.attempts;
            record.last_error = Some("the event is no longer retained".to_owned());
            metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => "failed").increment(1);
            None
        }
        Sent::Answer(answer) => {
            metrics::histogram!(m::WEBHOOK_ATTEMPT_SECONDS).record(elapsed.as_secs_f64());
            record.last_status = Some(answer.status);
            if (200..300).contains(&answer.status) {
                record.status = DeliveryStatus::Delivered;
                metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => "delivered").increment(1);
                Some(true)
            } else {
                record.last_error = Some(if answer.body.is_empty() {
                    format!("HTTP {}", answer.status)
                } else {
                    format!("HTTP {}: {}", answer.status, answer.body)
                });
                if answer.status == 410 {
                    disable = Some(("gone", "the endpoint answered 410 Gone".to_owned()));
                }
                Some(false)
            }
        }
        Sent::Error(SendError::Refused(why)) => {
            metrics::counter!(m::WEBHOOK_REFUSED, "stage" => "deliver").increment(1);
            record.last_error = Some(SendError::Refused(why.clone()).to_string());
            if probe {
                endpoint.breaker.release();
            }
            None
        }
        Sent::Error(error) => {
            metrics::histogram!(m::WEBHOOK_ATTEMPT_SECONDS).record(elapsed.as_secs_f64());
            record.last_error = Some(error.to_string());
            Some(false)
        }
    };
    if let Some(success) = verdict {
        if let Some(to) = endpoint.breaker.record(success, now, times, jitter()) {
            transition(&endpoint.id, to);
        }
        if success {
            endpoint.failing_since = None;
        } else {
            endpoint.failing_since.get_or_insert(now);
        }
    }
    if record.status == DeliveryStatus::Pending {
        if disable.is_some() {
            record.status = DeliveryStatus::Failed;
        } else {
            let answer = match &sent {
                Sent::Answer(a) => Some(a),
                _ => None,
            };
            match retry_wait(schedule, attempts, answer) {
                Some(wait) => {
                    record.next_attempt_at = Some(now.saturating_add(ms(wait)));
                    metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => "retry").increment(1);
                }
                None => {
                    record.status = DeliveryStatus::Failed;
                    metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => "failed").increment(1);
                    // Twice the schedule: longer than one delivery's retries last (each wait
                    // is at most 20% longer than planned, unless a `Retry-After` stretches
                    // it), so a delivery that merely ran out leaves the endpoint enabled and
                    // can be replayed; an endpoint that kept failing while new deliveries kept
                    // running out is disabled.
                    let failing_for = endpoint.failing_since.map(|since| now - since);
                    if failing_for.is_some_and(|f| f >= ms(schedule.total()).saturating_mul(2)) {
                        disable = Some((
                            "failing",
                            "every attempt failed for twice the retry schedule".to_owned(),
                        ));
                    }
                }
            }
        }
    }
    if let Some((label, reason)) = &disable {
        metrics::counter!(m::WEBHOOK_DISABLED, "reason" => *label).increment(1);
        tracing::warn!(endpoint = endpoint.id, reason, "webhook endpoint disabled");
        endpoint.enabled = false;
        endpoint.disabled_reason = Some(reason.clone());
    }
    // Microseconds-ish of wall clock, never repeating: instances sharing an endpoint order
    // their writes by time.
    endpoint.circuit_seq = (endpoint.circuit_seq + 1).max(now.saturating_mul(1000));
    record.endpoint = Some(EndpointState {
        breaker: endpoint.breaker.clone(),
        seq: endpoint.circuit_seq,
        failing_since: endpoint.failing_since,
        disable: disable.map(|(_, reason)| reason),
        defer_until: (endpoint.breaker.state == State::Open)
            .then_some(endpoint.breaker.open_until)
            .flatten(),
    });
    let (storage, done_tx) = (storage.clone(), done_tx.clone());
    tokio::spawn(async move {
        if let Some(webhooks) = store(&storage)
            && let Err(error) = webhooks.record(record).await
        {
            // The row stays pending: the delivery is simply attempted again.
            tracing::warn!(
                error = format!("{error:#}"),
                "recording a webhook attempt failed"
            );
        }
        let _ = done_tx.send(Done::Recorded { delivery });
    });
}

async fn publish_stats(webhooks: &dyn WebhookStore, tracked: &HashMap<String, Tracked>) {
    if let Ok(stats) = webhooks.stats().await {
        metrics::gauge!(m::WEBHOOK_PENDING).set(stats.pending as f64);
        let age = stats
            .oldest_pending
            .map_or(0.0, |at| (wall_clock_ms() - at).max(0) as f64 / 1000.0);
        metrics::gauge!(m::WEBHOOK_OLDEST_PENDING).set(age);
    }
    for state in [State::Closed, State::Open, State::HalfOpen] {
        let n = tracked
            .values()
            .filter(|t| t.endpoint.breaker.state == state)
            .count();
        metrics::gauge!(m::WEBHOOK_CIRCUITS, "state" => state.as_str()).set(n as f64);
    }
}

fn prune(storage: Arc<dyn Storage>, retention: Duration) {
    tokio::spawn(async move {
        let before = wall_clock_ms() - ms(retention);
        if let Some(webhooks) = store(&storage) {
            match webhooks.prune(before).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "pruned delivered webhook deliveries"),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "pruning deliveries failed")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_within_the_schedule() {
        let schedule = Schedule::parse("10s,20s,40s").unwrap();
        let answer = |status, retry_after| Answer {
            status,
            retry_after,
            body: String::new(),
        };
        for _ in 0..50 {
            let w = retry_wait(&schedule, 1, None).unwrap();
            assert!(
                w >= Duration::from_secs(8) && w <= Duration::from_secs(12),
                "{w:?}"
            );
            let asked = retry_wait(&schedule, 1, Some(&answer(429, Some(30)))).unwrap();
            assert_eq!(asked, Duration::from_secs(30));
            let capped = retry_wait(&schedule, 1, Some(&answer(503, Some(3600)))).unwrap();
            assert_eq!(capped, Duration::from_secs(40));
            let floor = retry_wait(&schedule, 2, Some(&answer(429, Some(1)))).unwrap();
            assert!(floor >= Duration::from_secs(16), "{floor:?}");
            let ignored = retry_wait(&schedule, 1, Some(&answer(500, Some(30)))).unwrap();
            assert!(ignored <= Duration::from_secs(12));
        }
        assert_eq!(retry_wait(&schedule, 4, None), None);
    }
}
