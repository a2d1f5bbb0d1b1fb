//! Webhook endpoints and the outbox in SQLite: the writer-side operations (run inside a batch
//! transaction, see `writer`) and the reads the API and the delivery loop make.

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::writer::WriteCtx;
use crate::domain::{Page, SessionId, WebhookId};
use crate::events::{Event, EventKind};
use crate::storage::StorageResult;
use crate::webhooks::breaker::Breaker;
use crate::webhooks::model::{
    Delivery, DeliveryCounts, DeliveryStatus, Endpoint, EndpointPatch, NewEndpoint, Subscription,
    WebhookUrl, events_from_text, events_to_text,
};
use crate::webhooks::store::{AttemptRecord, Due, OutboxStats, disabled, not_found, too_many};

/// Most deliveries one replay queues.
pub const REPLAY_MAX: i64 = 10_000;

const ENDPOINT_COLUMNS: &str = "id, url, events, session_id, directory, description, ordered, \
     enabled, disabled_reason, secret, previous_secret, previous_until, circuit, failing_since, \
     created_at, updated_at, circuit_seq";

fn endpoint(row: &Row<'_>) -> rusqlite::Result<Endpoint> {
    let url: String = row.get(1)?;
    let events: Option<String> = row.get(2)?;
    let previous: Option<String> = row.get(10)?;
    let previous_until: Option<i64> = row.get(11)?;
    let circuit: String = row.get(12)?;
    Ok(Endpoint {
        id: row.get(0)?,
        // Stored URLs were parsed on the way in; a URL that no longer parses (a future
        // tightening) is kept verbatim with no host, and fails at delivery.
        url: WebhookUrl::parse(&url).unwrap_or_else(|_| WebhookUrl::unparsed(url)),
        events: events_from_text(events.as_deref()),
        session_id: row.get(3)?,
        directory: row.get(4)?,
        description: row.get(5)?,
        ordered: row.get(6)?,
        enabled: row.get(7)?,
        disabled_reason: row.get(8)?,
        secret: row.get(9)?,
        previous_secret: previous.zip(previous_until),
        breaker: serde_json::from_str::<Breaker>(&circuit).unwrap_or_default(),
        failing_since: row.get(13)?,
        created_at: row.get(14)?,
        updated_at: row.get(15)?,
        circuit_seq: row.get(16)?,
    })
}

fn load(conn: &Connection, id: &str) -> StorageResult<Endpoint> {
    conn.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ?1"
    ))
    .context("preparing a webhook lookup")?
    .query_row([id], endpoint)
    .optional()
    .context("loading a webhook")?
    .ok_or_else(|| not_found(id))
}

/// The enabled endpoints' subscriptions (what the writer matches events against).
pub fn enabled_subscriptions(conn: &Connection) -> anyhow::Result<Vec<Subscription>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE enabled = 1 ORDER BY id"
    ))?;
    let rows = statement.query_map([], endpoint)?;
    let mut subscriptions = Vec::new();
    for row in rows {
        subscriptions.push(row?.subscription());
    }
    Ok(subscriptions)
}

fn circuit_json(breaker: &Breaker) -> anyhow::Result<String> {
    serde_json::to_string(breaker).context("encoding a circuit")
}

pub fn create(ctx: &mut WriteCtx<'_>, new: NewEndpoint, max: usize) -> StorageResult<Endpoint> {
    let count: i64 = ctx
        .conn
        .prepare_cached("SELECT count(*) FROM webhook_endpoints")
        .context("preparing a webhook count")?
        .query_row([], |row| row.get(0))
        .context("counting webhooks")?;
    if count >= max as i64 {
        return Err(too_many(max));
    }
    let (now, value) = ctx.next_id();
    let endpoint = Endpoint::new(WebhookId::from_value(value).into_string(), new, now);
    ctx.conn
        .prepare_cached(
            "INSERT INTO webhook_endpoints (id, url, events, session_id, directory, description, \
             ordered, enabled, secret, circuit, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?9, ?10, ?10)",
        )
        .context("preparing a webhook insert")?
        .execute(params![
            endpoint.id,
            endpoint.url.as_str(),
            events_to_text(&endpoint.events),
            endpoint.session_id,
            endpoint.directory,
            endpoint.description,
            endpoint.ordered,
            endpoint.secret,
            circuit_json(&endpoint.breaker)?,
            now,
        ])
        .context("inserting a webhook")?;
    ctx.reload_outbox()?;
    Ok(endpoint)
}

/// Marks the endpoint's pending deliveries failed (it is being disabled).
fn fail_pending(ctx: &WriteCtx<'_>, id: &str, why: &str) -> anyhow::Result<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET status = 2, next_attempt_at = NULL, \
             last_error = coalesce(last_error || '; ', '') || ?2 \
             WHERE endpoint_id = ?1 AND status = 0",
        )?
        .execute(params![id, why])
        .context("failing the deliveries of a disabled webhook")?;
    Ok(())
}

pub fn update(ctx: &mut WriteCtx<'_>, id: &str, patch: EndpointPatch) -> StorageResult<Endpoint> {
    let mut endpoint = load(ctx.conn, id)?;
    let now = ctx.now();
    if endpoint.apply(patch, now) {
        fail_pending(ctx, id, "endpoint disabled")?;
    }
    ctx.conn
        .prepare_cached(
            "UPDATE webhook_endpoints SET url = ?2, events = ?3, session_id = ?4, directory = ?5, \
             description = ?6, ordered = ?7, enabled = ?8, disabled_reason = ?9, circuit = ?10, \
             failing_since = ?11, updated_at = ?12, circuit_seq = ?13 WHERE id = ?1",
        )
        .context("preparing a webhook update")?
        .execute(params![
            endpoint.id,
            endpoint.url.as_str(),
            events_to_text(&endpoint.events),
            endpoint.session_id,
            endpoint.directory,
            endpoint.description,
            endpoint.ordered,
            endpoint.enabled,
            endpoint.disabled_reason,
            circuit_json(&endpoint.breaker)?,
            endpoint.failing_since,
            now,
            endpoint.circuit_seq,
        ])
        .context("updating a webhook")?;
    ctx.reload_outbox()?;
    Ok(endpoint)
}

pub fn delete(ctx: &mut WriteCtx<'_>, id: &str) -> StorageResult<()> {
    load(ctx.conn, id)?;
    ctx.conn
        .prepare_cached("DELETE FROM webhook_deliveries WHERE endpoint_id = ?1")
        .context("preparing a delivery delete")?
        .execute([id])
        .context("deleting a webhook's deliveries")?;
    ctx.conn
        .prepare_cached("DELETE FROM webhook_endpoints WHERE id = ?1")
        .context("preparing a webhook delete")?
        .execute([id])
        .context("deleting a webhook")?;
    ctx.reload_outbox()?;
    Ok(())
}

pub fn rotate(
    ctx: &mut WriteCtx<'_>,
    id: &str,
    secret: String,
    previous_until: i64,
) -> StorageResult<Endpoint> {
    let mut endpoint = load(ctx.conn, id)?;
    let now = ctx.now();
    endpoint.previous_secret = Some((
        std::mem::replace(&mut endpoint.secret, secret),
        previous_until,
    ));
    endpoint.updated_at = now;
    ctx.conn
        .prepare_cached(
            "UPDATE webhook_endpoints SET secret = ?2, previous_secret = ?3, previous_until = ?4, \
             updated_at = ?5 WHERE id = ?1",
        )
        .context("preparing a secret rotation")?
        .execute(params![
            endpoint.id,
            endpoint.secret,
            endpoint.previous_secret.as_ref().map(|p| p.0.as_str()),
            previous_until,
            now
        ])
        .context("rotating a webhook secret")?;
    Ok(endpoint)
}

pub fn replay(ctx: &mut WriteCtx<'_>, id: &str, since: i64) -> StorageResult<u64> {
    let endpoint = load(ctx.conn, id)?;
    if !endpoint.enabled {
        return Err(disabled(id));
    }
    let now = ctx.now();
    let queued = ctx
        .conn
        .prepare_cached(
            "INSERT INTO webhook_deliveries (endpoint_id, event_seq, event_type, next_attempt_at, \
             created_at) \
             SELECT ?1, seq, type, ?2, ?2 FROM events WHERE seq > ?3 \
               AND (?4 IS NULL OR session_id = ?4) AND (?5 IS NULL OR directory = ?5) \
               AND (?6 IS NULL OR instr(',' || ?6 || ',', ',' || type || ',') > 0) \
             ORDER BY seq LIMIT ?7",
        )
        .context("preparing a replay")?
        .execute(params![
            id,
            now,
            since,
            endpoint.session_id,
            endpoint.directory,
            events_to_text(&endpoint.events),
            REPLAY_MAX,
        ])
        .context("queueing a replay")?;
    Ok(queued as u64)
}

pub fn record(ctx: &mut WriteCtx<'_>, record: AttemptRecord) -> StorageResult<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET status = ?2, attempts = ?3, next_attempt_at = ?4, \
             last_status = ?5, last_error = ?6, \
             delivered_at = CASE WHEN ?2 = 1 THEN ?7 ELSE delivered_at END \
             WHERE id = ?1 AND status = 0",
        )
        .context("preparing a delivery update")?
        .execute(params![
            record.delivery,
            record.status.code(),
            record.attempts,
            record.next_attempt_at,
            record.last_status,
            record.last_error,
            record.at,
        ])
        .context("recording a delivery attempt")?;
    if let Some(state) = &record.endpoint {
        ctx.conn
            .prepare_cached(
                "UPDATE webhook_endpoints SET circuit = ?2, failing_since = ?3, circuit_seq = ?4 \
                 WHERE id = ?1 AND circuit_seq < ?4",
            )
            .context("preparing a circuit update")?
            .execute(params![
                record.endpoint_id,
                circuit_json(&state.breaker)?,
                state.failing_since,
                state.seq
            ])
            .context("recording a circuit")?;
        if let Some(until) = state.defer_until {
            defer(ctx, &record.endpoint_id, until)?;
        }
        if let Some(reason) = &state.disable {
            ctx.conn
                .prepare_cached(
                    "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?2, \
                     updated_at = ?3 WHERE id = ?1",
                )
                .context("preparing a webhook disable")?
                .execute(params![record.endpoint_id, reason, record.at])
                .context("disabling a webhook")?;
            fail_pending(ctx, &record.endpoint_id, "endpoint disabled")?;
            ctx.reload_outbox()?;
        }
    }
    // Disabled (or deleted) while this attempt was in flight: nothing stays pending for it.
    ctx.conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET status = 2, next_attempt_at = NULL, \
             last_error = coalesce(last_error || '; ', '') || 'endpoint disabled' \
             WHERE id = ?1 AND status = 0 AND NOT EXISTS \
             (SELECT 1 FROM webhook_endpoints e WHERE e.id = endpoint_id AND e.enabled = 1)",
        )
        .context("preparing a disabled check")?
        .execute([record.delivery])
        .context("settling a delivery of a disabled webhook")?;
    Ok(())
}

pub fn defer(ctx: &mut WriteCtx<'_>, id: &str, until: i64) -> StorageResult<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET next_attempt_at = ?2 \
             WHERE endpoint_id = ?1 AND status = 0 AND next_attempt_at < ?2",
        )
        .context("preparing a deferral")?
        .execute(params![id, until])
        .context("deferring deliveries behind an open circuit")?;
    Ok(())
}

/// Batch size of [`prune`].
pub const PRUNE_BATCH: i64 = 10_000;

pub fn prune(ctx: &mut WriteCtx<'_>, before: i64) -> StorageResult<u64> {
    let deleted = ctx
        .conn
        .prepare_cached(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE status = 1 AND delivered_at < ?1 LIMIT ?2)",
        )
        .context("preparing a delivery prune")?
        .execute(params![before, PRUNE_BATCH])
        .context("pruning deliveries")?;
    Ok(deleted as u64)
}

// ----- reads -----

pub fn list(
    conn: &Connection,
    limit: u32,
    after: Option<&str>,
) -> StorageResult<Page<Endpoint, String>> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))
        .context("preparing a webhook list")?;
    let mut items = statement
        .query_map(params![after.unwrap_or(""), i64::from(limit) + 1], endpoint)
        .context("listing webhooks")?
        .collect::<Result<Vec<_>, _>>()
        .context("reading webhooks")?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(Page { items, next })
}

pub fn all(conn: &Connection) -> StorageResult<Vec<Endpoint>> {
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id"
        ))
        .context("preparing a webhook list")?;
    Ok(statement
        .query_map([], endpoint)
        .context("listing webhooks")?
        .collect::<Result<Vec<_>, _>>()
        .context("reading webhooks")?)
}

pub fn get(conn: &Connection, id: &str) -> StorageResult<(Endpoint, DeliveryCounts)> {
    let endpoint = load(conn, id)?;
    let mut counts = DeliveryCounts::default();
    let mut statement = conn
        .prepare_cached(
            "SELECT status, count(*) FROM webhook_deliveries WHERE endpoint_id = ?1 GROUP BY status",
        )
        .context("preparing delivery counts")?;
    let rows = statement
        .query_map([id], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })
        .context("counting deliveries")?;
    for row in rows {
        let (status, n) = row.context("reading delivery counts")?;
        let n = n as u64;
        match DeliveryStatus::from_code(status) {
            DeliveryStatus::Pending => counts.pending = n,
            DeliveryStatus::Delivered => counts.delivered = n,
            DeliveryStatus::Failed => counts.failed = n,
        }
    }
    Ok((endpoint, counts))
}

fn delivery(row: &Row<'_>) -> rusqlite::Result<Delivery> {
    let id: i64 = row.get(0)?;
    let status = DeliveryStatus::from_code(row.get(3)?);
    let last_status: Option<i64> = row.get(6)?;
    Ok(Delivery {
        id: format!("dlv_{id}"),
        event_seq: row.get(1)?,
        event_type: row.get(2)?,
        status,
        attempts: row.get(4)?,
        next_attempt_at: if status == DeliveryStatus::Pending {
            row.get(5)?
        } else {
            None
        },
        last_status: last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: row.get(7)?,
        created_at: row.get(8)?,
        delivered_at: row.get(9)?,
    })
}

pub fn deliveries(
    conn: &Connection,
    id: &str,
    status: Option<DeliveryStatus>,
    limit: u32,
    before: Option<i64>,
) -> StorageResult<Page<Delivery, i64>> {
    load(conn, id)?;
    let mut statement = conn
        .prepare_cached(
            "SELECT id, event_seq, event_type, status, attempts, next_attempt_at, last_status, \
             last_error, created_at, delivered_at FROM webhook_deliveries \
             WHERE endpoint_id = ?1 AND id < ?2 AND (?3 IS NULL OR status = ?3) \
             ORDER BY id DESC LIMIT ?4",
        )
        .context("preparing a delivery list")?;
    let rows = statement
        .query_map(
            params![
                id,
                before.unwrap_or(i64::MAX),
                status.map(DeliveryStatus::code),
                i64::from(limit) + 1
            ],
            |row| Ok((row.get::<_, i64>(0)?, delivery(row)?)),
        )
        .context("listing deliveries")?;
    let mut items = Vec::new();
    let mut last = None;
    for row in rows {
        let (rowid, item) = row.context("reading a delivery")?;
        if items.len() == limit as usize {
            return Ok(Page { items, next: last });
        }
        last = Some(rowid);
        items.push(item);
    }
    Ok(Page { items, next: None })
}

pub fn due(conn: &Connection, now: i64, per_endpoint: u32, limit: u32) -> StorageResult<Vec<Due>> {
    // Endpoint by endpoint, each an index range (pending rows in seq order), so a claim costs
    // what it returns, not the size of the backlog. An ordered endpoint offers only its oldest
    // pending delivery, and only once it is due. An unordered one offers more than its cap:
    // rows whose attempt is over but whose outcome is not committed yet stay pending (and
    // first in line) for a moment, and must not hold back the rows after them.
    let endpoints: Vec<(String, bool)> = conn
        .prepare_cached("SELECT id, ordered FROM webhook_endpoints WHERE enabled = 1")
        .context("preparing the enabled webhooks")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .context("listing enabled webhooks")?
        .collect::<Result<_, _>>()
        .context("reading enabled webhooks")?;
    let mut ordered_head = conn
        .prepare_cached(
            "SELECT id, event_seq, attempts, next_attempt_at FROM webhook_deliveries \
             WHERE endpoint_id = ?1 AND status = 0 ORDER BY event_seq, id LIMIT 1",
        )
        .context("preparing an ordered head")?;
    let mut unordered = conn
        .prepare_cached(
            "SELECT id, event_seq, attempts, next_attempt_at FROM webhook_deliveries \
             WHERE endpoint_id = ?1 AND status = 0 AND next_attempt_at <= ?2 \
             ORDER BY event_seq, id LIMIT ?3",
        )
        .context("preparing the due deliveries")?;
    let mut due: Vec<(i64, Due)> = Vec::new();
    let take = i64::from(per_endpoint.max(1)) * 4;
    for (endpoint_id, ordered) in endpoints {
        let rows = if ordered {
            ordered_head.query_map(params![endpoint_id], due_row)
        } else {
            unordered.query_map(params![endpoint_id, now, take], due_row)
        }
        .context("finding due deliveries")?;
        for row in rows {
            let (next, mut item) = row.context("reading a due delivery")?;
            if next > now {
                continue;
            }
            item.endpoint_id.clone_from(&endpoint_id);
            due.push((next, item));
        }
    }
    due.sort_by_key(|(next, item)| (*next, item.id));
    due.truncate(limit as usize);
    Ok(due.into_iter().map(|(_, item)| item).collect())
}

fn due_row(row: &Row<'_>) -> rusqlite::Result<(i64, Due)> {
    Ok((
        row.get::<_, Option<i64>>(3)?.unwrap_or(0),
        Due {
            id: row.get(0)?,
            endpoint_id: String::new(),
            event_seq: row.get(1)?,
            attempts: row.get(2)?,
        },
    ))
}

pub fn next_due(conn: &Connection) -> StorageResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT min(next_attempt_at) FROM webhook_deliveries WHERE status = 0")
        .context("preparing the next due time")?
        .query_row([], |row| row.get(0))
        .context("reading the next due time")?)
}

pub fn event(conn: &Connection, seq: i64) -> StorageResult<Option<Event>> {
    let row = conn
        .prepare_cached("SELECT type, session_id, directory, at, data FROM events WHERE seq = ?1")
        .context("preparing an event lookup")?
        .query_row([seq], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
            ))
        })
        .optional()
        .context("loading an event")?;
    let Some((kind, session_id, directory, at, data)) = row else {
        return Ok(None);
    };
    Ok(Some(Event {
        seq,
        kind: EventKind::parse(&kind)
            .with_context(|| format!("the log holds an unknown event type {kind:?}"))?,
        session_id: SessionId::from_trusted(session_id),
        directory,
        at,
        data,
    }))
}

pub fn stats(conn: &Connection) -> StorageResult<OutboxStats> {
    let (pending, oldest): (i64, Option<i64>) = conn
        .prepare_cached("SELECT count(*), min(created_at) FROM webhook_deliveries WHERE status = 0")
        .context("preparing outbox stats")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .context("reading outbox stats")?;
    Ok(OutboxStats {
        pending: pending as u64,
        oldest_pending: oldest,
    })
}
