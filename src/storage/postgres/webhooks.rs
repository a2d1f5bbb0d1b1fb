//! Webhook endpoints and the outbox on PostgreSQL. The delivery rows themselves are written by
//! the writer (see `writer::commit`); this module keeps `head.webhooks` (the count of enabled
//! endpoints the writer checks) in step with every change to the endpoints, under the `head`
//! lock, and claims due deliveries for this instance with `FOR UPDATE SKIP LOCKED` and a lease.

use anyhow::Context;
use deadpool_postgres::Object;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::reads::get;
use super::{db, db_write};
use crate::domain::{IdGenerator, Page, SessionId, WebhookId, wall_clock_ms};
use crate::events::{Event, EventKind};
use crate::storage::StorageResult;
use crate::webhooks::breaker::Breaker;
use crate::webhooks::model::{
    Delivery, DeliveryCounts, DeliveryStatus, Endpoint, EndpointPatch, NewEndpoint, WebhookUrl,
    events_from_text, events_to_text,
};
use crate::webhooks::store::{AttemptRecord, Due, OutboxStats, disabled, not_found, too_many};

const REPLAY_MAX: i64 = 10_000;
pub const PRUNE_BATCH: i64 = 10_000;

const ENDPOINT_COLUMNS: &str = "id, url, events, session_id, directory, description, ordered, \
     enabled, disabled_reason, secret, previous_secret, previous_until, circuit, failing_since, \
     created_at, updated_at, circuit_seq";

fn endpoint(row: &Row) -> StorageResult<Endpoint> {
    let url: String = get(row, 1)?;
    let events: Option<String> = get(row, 2)?;
    let previous: Option<String> = get(row, 10)?;
    let previous_until: Option<i64> = get(row, 11)?;
    let circuit: String = get(row, 12)?;
    Ok(Endpoint {
        id: get(row, 0)?,
        url: WebhookUrl::parse(&url).unwrap_or_else(|_| WebhookUrl::unparsed(url)),
        events: events_from_text(events.as_deref()),
        session_id: get(row, 3)?,
        directory: get(row, 4)?,
        description: get(row, 5)?,
        ordered: get(row, 6)?,
        enabled: get(row, 7)?,
        disabled_reason: get(row, 8)?,
        secret: get(row, 9)?,
        previous_secret: previous.zip(previous_until),
        breaker: serde_json::from_str::<Breaker>(&circuit).unwrap_or_default(),
        failing_since: get(row, 13)?,
        created_at: get(row, 14)?,
        updated_at: get(row, 15)?,
        circuit_seq: get(row, 16)?,
    })
}

fn circuit_json(breaker: &Breaker) -> StorageResult<String> {
    Ok(serde_json::to_string(breaker).context("encoding a circuit")?)
}

async fn load(client: &impl deadpool_postgres::GenericClient, id: &str) -> StorageResult<Endpoint> {
    let row = client
        .query_opt(
            &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(db("loading a webhook"))?
        .ok_or_else(|| not_found(id))?;
    endpoint(&row)
}

/// Locks `head` (so no write batch is between reading the endpoint count and committing).
async fn lock_head(tx: &deadpool_postgres::Transaction<'_>) -> StorageResult<()> {
    tx.execute("SELECT 1 FROM head WHERE id = 1 FOR UPDATE", &[])
        .await
        .map_err(db("locking the head"))?;
    Ok(())
}

/// Brings `head.webhooks` in line with the enabled endpoints (inside the caller's transaction).
async fn sync_head(tx: &deadpool_postgres::Transaction<'_>) -> StorageResult<()> {
    tx.execute(
        "UPDATE head SET webhooks = (SELECT count(*) FROM webhook_endpoints WHERE enabled) \
         WHERE id = 1",
        &[],
    )
    .await
    .map_err(db_write("counting enabled webhooks"))?;
    Ok(())
}

async fn fail_pending(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    why: &str,
) -> StorageResult<()> {
    tx.execute(
        "UPDATE webhook_deliveries SET status = 2, next_attempt_at = NULL, lease_until = NULL, \
         last_error = coalesce(last_error || '; ', '') || $2 \
         WHERE endpoint_id = $1 AND status = 0",
        &[&id, &why],
    )
    .await
    .map_err(db_write("failing the deliveries of a disabled webhook"))?;
    Ok(())
}

async fn commit(tx: deadpool_postgres::Transaction<'_>) -> StorageResult<()> {
    tx.commit().await.map_err(db("committing a webhook change"))
}

pub async fn create(client: &mut Object, new: NewEndpoint, max: usize) -> StorageResult<Endpoint> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a transaction"))?;
    lock_head(&tx).await?;
    let count: i64 = tx
        .query_one("SELECT count(*) FROM webhook_endpoints", &[])
        .await
        .map_err(db("counting webhooks"))?
        .get(0);
    if count >= max as i64 {
        return Err(too_many(max));
    }
    let (now, value) = IdGenerator::default().next(wall_clock_ms());
    let endpoint = Endpoint::new(WebhookId::from_value(value).into_string(), new, now);
    tx.execute(
        "INSERT INTO webhook_endpoints (id, url, events, session_id, directory, description, \
         ordered, enabled, secret, circuit, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, true, $8, $9, $10, $10)",
        &[
            &endpoint.id,
            &endpoint.url.as_str(),
            &events_to_text(&endpoint.events),
            &endpoint.session_id,
            &endpoint.directory,
            &endpoint.description,
            &endpoint.ordered,
            &endpoint.secret,
            &circuit_json(&endpoint.breaker)?,
            &now,
        ],
    )
    .await
    .map_err(db("inserting a webhook"))?;
    sync_head(&tx).await?;
    commit(tx).await?;
    Ok(endpoint)
}

pub async fn update(
    client: &mut Object,
    id: &str,
    patch: EndpointPatch,
) -> StorageResult<Endpoint> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a transaction"))?;
    lock_head(&tx).await?;
    let mut endpoint = load(&tx, id).await?;
    let now = wall_clock_ms();
    if endpoint.apply(patch, now) {
        fail_pending(&tx, id, "endpoint disabled").await?;
    }
    tx.execute(
        "UPDATE webhook_endpoints SET url = $2, events = $3, session_id = $4, directory = $5, \
         description = $6, ordered = $7, enabled = $8, disabled_reason = $9, circuit = $10, \
         failing_since = $11, updated_at = $12, circuit_seq = $13 WHERE id = $1",
        &[
            &endpoint.id,
            &endpoint.url.as_str(),
            &events_to_text(&endpoint.events),
            &endpoint.session_id,
            &endpoint.directory,
            &endpoint.description,
            &endpoint.ordered,
            &endpoint.enabled,
            &endpoint.disabled_reason,
            &circuit_json(&endpoint.breaker)?,
            &endpoint.failing_since,
            &now,
            &endpoint.circuit_seq,
        ],
    )
    .await
    .map_err(db("updating a webhook"))?;
    sync_head(&tx).await?;
    commit(tx).await?;
    Ok(endpoint)
}

pub async fn delete(client: &mut Object, id: &str) -> StorageResult<()> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a transaction"))?;
    lock_head(&tx).await?;
    load(&tx, id).await?;
    tx.execute(
        "DELETE FROM webhook_deliveries WHERE endpoint_id = $1",
        &[&id],
    )
    .await
    .map_err(db("deleting a webhook's deliveries"))?;
    tx.execute("DELETE FROM webhook_endpoints WHERE id = $1", &[&id])
        .await
        .map_err(db("deleting a webhook"))?;
    sync_head(&tx).await?;
    commit(tx).await
}

pub async fn rotate(
    client: &Object,
    id: &str,
    secret: String,
    previous_until: i64,
) -> StorageResult<Endpoint> {
    let now = wall_clock_ms();
    let updated = client
        .execute(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $3, \
             secret = $2, updated_at = $4 WHERE id = $1",
            &[&id, &secret, &previous_until, &now],
        )
        .await
        .map_err(db("rotating a webhook secret"))?;
    if updated == 0 {
        return Err(not_found(id));
    }
    load(client, id).await
}

pub async fn replay(client: &Object, id: &str, since: i64) -> StorageResult<u64> {
    let endpoint = load(client, id).await?;
    if !endpoint.enabled {
        return Err(disabled(id));
    }
    let now = wall_clock_ms();
    client
        .execute(
            "INSERT INTO webhook_deliveries (endpoint_id, event_seq, event_type, next_attempt_at, \
             created_at) \
             SELECT $1, seq, type, $2, $2 FROM events WHERE seq > $3 \
               AND ($4::text IS NULL OR session_id = $4) AND ($5::text IS NULL OR directory = $5) \
               AND ($6::text IS NULL OR type = ANY (string_to_array($6, ','))) \
             ORDER BY seq LIMIT $7",
            &[
                &id,
                &now,
                &since,
                &endpoint.session_id,
                &endpoint.directory,
                &events_to_text(&endpoint.events),
                &REPLAY_MAX,
            ],
        )
        .await
        .map_err(db("queueing a replay"))
}

pub async fn record(client: &mut Object, record: AttemptRecord) -> StorageResult<()> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a transaction"))?;
    let disabling = record
        .endpoint
        .as_ref()
        .is_some_and(|s| s.disable.is_some());
    if disabling {
        lock_head(&tx).await?;
    }
    tx.execute(
        "UPDATE webhook_deliveries SET status = $2::bigint, attempts = $3, next_attempt_at = $4, \
         last_status = $5, last_error = $6, lease_until = NULL, \
         delivered_at = CASE WHEN $2::bigint = 1 THEN $7 ELSE delivered_at END \
         WHERE id = $1 AND status = 0",
        &[
            &record.delivery,
            &record.status.code(),
            &i64::from(record.attempts),
            &record.next_attempt_at,
            &record.last_status.map(i64::from),
            &record.last_error,
            &record.at,
        ],
    )
    .await
    .map_err(db("recording a delivery attempt"))?;
    if let Some(state) = &record.endpoint {
        tx.execute(
            "UPDATE webhook_endpoints SET circuit = $2, failing_since = $3, circuit_seq = $4 \
             WHERE id = $1 AND circuit_seq < $4",
            &[
                &record.endpoint_id,
                &circuit_json(&state.breaker)?,
                &state.failing_since,
                &state.seq,
            ],
        )
        .await
        .map_err(db("recording a circuit"))?;
        if let Some(until) = state.defer_until {
            defer_in(&tx, &record.endpoint_id, until).await?;
        }
        if let Some(reason) = &state.disable {
            tx.execute(
                "UPDATE webhook_endpoints SET enabled = false, disabled_reason = $2, \
                 updated_at = $3 WHERE id = $1",
                &[&record.endpoint_id, reason, &record.at],
            )
            .await
            .map_err(db("disabling a webhook"))?;
            fail_pending(&tx, &record.endpoint_id, "endpoint disabled").await?;
            sync_head(&tx).await?;
        }
    }
    tx.execute(
        "UPDATE webhook_deliveries d SET status = 2, next_attempt_at = NULL, lease_until = NULL, \
         last_error = coalesce(last_error || '; ', '') || 'endpoint disabled' \
         WHERE id = $1 AND status = 0 AND NOT EXISTS \
         (SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id AND e.enabled)",
        &[&record.delivery],
    )
    .await
    .map_err(db("settling a delivery of a disabled webhook"))?;
    commit(tx).await
}

async fn defer_in(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
    until: i64,
) -> StorageResult<()> {
    client
        .execute(
            "UPDATE webhook_deliveries SET next_attempt_at = $2 \
             WHERE endpoint_id = $1 AND status = 0 AND next_attempt_at < $2 \
               AND lease_until IS NULL",
            &[&id, &until],
        )
        .await
        .map_err(db("deferring deliveries behind an open circuit"))?;
    Ok(())
}

pub async fn defer(client: &Object, id: &str, until: i64) -> StorageResult<()> {
    defer_in(client, id, until).await
}

pub async fn prune(client: &Object, before: i64) -> StorageResult<u64> {
    client
        .execute(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE status = 1 AND delivered_at < $1 LIMIT $2)",
            &[&before, &PRUNE_BATCH],
        )
        .await
        .map_err(db("pruning deliveries"))
}

pub async fn list(
    client: &Object,
    limit: u32,
    after: Option<&str>,
) -> StorageResult<Page<Endpoint, String>> {
    let rows = client
        .query(
            &format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id > $1 ORDER BY id \
                 LIMIT $2"
            ),
            &[&after.unwrap_or(""), &(i64::from(limit) + 1)],
        )
        .await
        .map_err(db("listing webhooks"))?;
    let mut items = rows
        .iter()
        .map(endpoint)
        .collect::<StorageResult<Vec<_>>>()?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|e| e.id.clone())
    } else {
        None
    };
    Ok(Page { items, next })
}

pub async fn all(client: &Object) -> StorageResult<Vec<Endpoint>> {
    let rows = client
        .query(
            &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id"),
            &[],
        )
        .await
        .map_err(db("listing webhooks"))?;
    rows.iter().map(endpoint).collect()
}

pub async fn get_one(client: &Object, id: &str) -> StorageResult<(Endpoint, DeliveryCounts)> {
    let endpoint = load(client, id).await?;
    let rows = client
        .query(
            "SELECT status, count(*) FROM webhook_deliveries WHERE endpoint_id = $1 \
             GROUP BY status",
            &[&id],
        )
        .await
        .map_err(db("counting deliveries"))?;
    let mut counts = DeliveryCounts::default();
    for row in rows {
        let status: i64 = get(&row, 0)?;
        let n = get::<i64>(&row, 1)? as u64;
        match DeliveryStatus::from_code(status) {
            DeliveryStatus::Pending => counts.pending = n,
            DeliveryStatus::Delivered => counts.delivered = n,
            DeliveryStatus::Failed => counts.failed = n,
        }
    }
    Ok((endpoint, counts))
}

pub async fn deliveries(
    client: &Object,
    id: &str,
    status: Option<DeliveryStatus>,
    limit: u32,
    before: Option<i64>,
) -> StorageResult<Page<Delivery, i64>> {
    load(client, id).await?;
    let status = status.map(DeliveryStatus::code);
    let params: [&(dyn ToSql + Sync); 4] = [
        &id,
        &before.unwrap_or(i64::MAX),
        &status,
        &(i64::from(limit) + 1),
    ];
    let rows = client
        .query(
            "SELECT id, event_seq, event_type, status, attempts, next_attempt_at, last_status, \
             last_error, created_at, delivered_at FROM webhook_deliveries \
             WHERE endpoint_id = $1 AND id < $2 AND ($3::bigint IS NULL OR status = $3) \
             ORDER BY id DESC LIMIT $4",
            &params,
        )
        .await
        .map_err(db("listing deliveries"))?;
    let mut items = Vec::new();
    let mut last = None;
    for row in &rows {
        if items.len() == limit as usize {
            return Ok(Page { items, next: last });
        }
        let rowid: i64 = get(row, 0)?;
        let status = DeliveryStatus::from_code(get(row, 3)?);
        let last_status: Option<i64> = get(row, 6)?;
        items.push(Delivery {
            id: format!("dlv_{rowid}"),
            event_seq: get(row, 1)?,
            event_type: get(row, 2)?,
            status,
            attempts: u32::try_from(get::<i64>(row, 4)?).unwrap_or(u32::MAX),
            next_attempt_at: if status == DeliveryStatus::Pending {
                get(row, 5)?
            } else {
                None
            },
            last_status: last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: get(row, 7)?,
            created_at: get(row, 8)?,
            delivered_at: get(row, 9)?,
        });
        last = Some(rowid);
    }
    Ok(Page { items, next: None })
}

/// Claims due deliveries for this instance until `lease_until`.
pub async fn claim(
    client: &Object,
    now: i64,
    lease_until: i64,
    per_endpoint: u32,
    limit: u32,
) -> StorageResult<Vec<Due>> {
    // Rank each endpoint's due rows (those in flight on any instance included, so the cap is
    // shared); take the unleased ones within the cap; lock them, skipping rows another
    // instance is claiming right now; lease them.
    let rows = client
        .query(
            "WITH ranked AS ( \
               SELECT d.id, d.next_attempt_at, d.lease_until, w.ordered, \
                 row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.event_seq, d.id) AS rank \
               FROM webhook_deliveries d JOIN webhook_endpoints w ON w.id = d.endpoint_id \
               WHERE d.status = 0 AND d.next_attempt_at <= $1 AND w.enabled \
                 AND (NOT w.ordered OR NOT EXISTS (SELECT 1 FROM webhook_deliveries p \
                      WHERE p.endpoint_id = d.endpoint_id AND p.status = 0 \
                        AND p.event_seq < d.event_seq))), \
             candidates AS ( \
               SELECT id FROM ranked \
               WHERE rank <= CASE WHEN ordered THEN 1 ELSE $3::bigint END \
                 AND (lease_until IS NULL OR lease_until < $1) \
               ORDER BY next_attempt_at, id LIMIT $4), \
             locked AS ( \
               SELECT d.id FROM webhook_deliveries d WHERE d.id IN (SELECT id FROM candidates) \
                 AND d.status = 0 AND (d.lease_until IS NULL OR d.lease_until < $1) \
               FOR UPDATE SKIP LOCKED) \
             UPDATE webhook_deliveries d SET lease_until = $2 FROM locked WHERE d.id = locked.id \
             RETURNING d.id, d.endpoint_id, d.event_seq, d.attempts",
            &[
                &now,
                &lease_until,
                &i64::from(per_endpoint),
                &i64::from(limit),
            ],
        )
        .await
        .map_err(db("claiming due deliveries"))?;
    rows.iter()
        .map(|row| {
            Ok(Due {
                id: get(row, 0)?,
                endpoint_id: get(row, 1)?,
                event_seq: get(row, 2)?,
                attempts: u32::try_from(get::<i64>(row, 3)?).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

pub async fn release(client: &Object, ids: &[i64]) -> StorageResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    client
        .execute(
            "UPDATE webhook_deliveries SET lease_until = NULL WHERE id = ANY ($1) AND status = 0",
            &[&ids],
        )
        .await
        .map_err(db("releasing claimed deliveries"))?;
    Ok(())
}

pub async fn next_due(client: &Object) -> StorageResult<Option<i64>> {
    let row = client
        .query_one(
            "SELECT min(GREATEST(next_attempt_at, coalesce(lease_until, 0))) \
             FROM webhook_deliveries WHERE status = 0",
            &[],
        )
        .await
        .map_err(db("reading the next due time"))?;
    get(&row, 0)
}

pub async fn event(client: &Object, seq: i64) -> StorageResult<Option<Event>> {
    let Some(row) = client
        .query_opt(
            "SELECT type, session_id, directory, at, data FROM events WHERE seq = $1",
            &[&seq],
        )
        .await
        .map_err(db("loading an event"))?
    else {
        return Ok(None);
    };
    let kind: String = get(&row, 0)?;
    Ok(Some(Event {
        seq,
        kind: EventKind::parse(&kind)
            .with_context(|| format!("the log holds an unknown event type {kind:?}"))?,
        session_id: SessionId::from_trusted(get(&row, 1)?),
        directory: get(&row, 2)?,
        at: get(&row, 3)?,
        data: get(&row, 4)?,
    }))
}

pub async fn stats(client: &Object) -> StorageResult<OutboxStats> {
    let row = client
        .query_one(
            "SELECT count(*), min(created_at) FROM webhook_deliveries WHERE status = 0",
            &[],
        )
        .await
        .map_err(db("reading outbox stats"))?;
    Ok(OutboxStats {
        pending: get::<i64>(&row, 0)? as u64,
        oldest_pending: get(&row, 1)?,
    })
}
