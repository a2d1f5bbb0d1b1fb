//! The write operations: those that change sessions and messages run in the writer's batch
//! (see [`super::writer`]) and check their preconditions before they write, so a refused one
//! has written nothing; keys, pruning and bulk imports run on a pooled connection of their own.

use anyhow::Context;
use serde_json::value::RawValue;
use tokio_postgres::types::ToSql;

use super::reads::{self, SESSION_COLUMNS};
use super::writer::WriteCtx;
use super::{KEYS_CHANNEL, db_write};
use crate::domain::keys::{ApiKey, NewKey};
use crate::domain::{
    Message, MessageId, NewMessage, NewSession, ParentRef, Session, SessionId, SessionPatch,
    fold_title, random_token, wall_clock_ms,
};
use crate::events::{Event, EventKind};
use crate::storage::{ImportMapping, ImportSession, ImportedSession, StorageError, StorageResult};

/// Refuses text PostgreSQL cannot store (before anything is written).
fn storable(field: &str, value: &str) -> StorageResult<()> {
    if value.contains('\0') {
        return Err(StorageError::Rejected(format!(
            "{field} contains a NUL character (U+0000), which this server's database cannot store"
        )));
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> StorageResult<String> {
    Ok(serde_json::to_string(value).context("encoding an event")?)
}

async fn load_session(ctx: &WriteCtx, id: &SessionId) -> StorageResult<Session> {
    let statement = ctx
        .client
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
        ))
        .await
        .map_err(db_write("preparing a session lookup"))?;
    let row = ctx
        .client
        .query_opt(&statement, &[&id.as_str()])
        .await
        .map_err(db_write("loading a session"))?;
    match row {
        Some(row) => reads::session(&row),
        None => Err(StorageError::session_not_found(id.as_str())),
    }
}

const INSERT_SESSION: &str = "INSERT INTO sessions (id, directory, title, title_fold, parent_id, \
     created_at, updated_at, archived_at, message_count, version, metadata) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

async fn insert_session(ctx: &WriteCtx, session: &Session) -> StorageResult<()> {
    let statement = ctx
        .client
        .prepare_cached(INSERT_SESSION)
        .await
        .map_err(db_write("preparing a session insert"))?;
    ctx.client
        .execute(
            &statement,
            &[
                &session.id.as_str(),
                &session.directory,
                &session.title,
                &fold_title(&session.title),
                &session.parent_id.as_ref().map(SessionId::as_str),
                &session.created_at,
                &session.updated_at,
                &session.archived_at,
                &session.message_count,
                &session.version,
                &session.metadata.get(),
            ],
        )
        .await
        .map_err(db_write("inserting a session"))?;
    Ok(())
}

pub async fn create_session(ctx: &mut WriteCtx, new: NewSession) -> StorageResult<Session> {
    storable("directory", &new.directory)?;
    storable("title", &new.title)?;
    let parent_id = match new.parent_id {
        None => None,
        Some(ParentRef::Unknown(raw)) => return Err(StorageError::session_not_found(raw)),
        Some(ParentRef::Id(id)) => {
            let statement = ctx
                .client
                .prepare_cached("SELECT 1 FROM sessions WHERE id = $1")
                .await
                .map_err(db_write("preparing a parent lookup"))?;
            let exists = ctx
                .client
                .query_opt(&statement, &[&id.as_str()])
                .await
                .map_err(db_write("looking up the parent session"))?
                .is_some();
            if !exists {
                return Err(StorageError::session_not_found(id.into_string()));
            }
            Some(id)
        }
    };
    let (now, value) = ctx.next_id();
    let seq = ctx.reserve_seq();
    let session = Session {
        id: SessionId::from_value(value),
        directory: new.directory,
        title: new.title,
        parent_id,
        created_at: now,
        updated_at: now,
        archived_at: None,
        message_count: 0,
        metadata: new.metadata,
        version: seq,
    };
    insert_session(ctx, &session).await?;
    let data = to_json(&session)?;
    ctx.emit(
        seq,
        EventKind::SessionCreated,
        &session.id,
        &session.directory,
        now,
        data,
    )
    .await?;
    Ok(session)
}

pub async fn update_session(
    ctx: &mut WriteCtx,
    id: SessionId,
    patch: SessionPatch,
) -> StorageResult<Session> {
    if let Some(title) = &patch.title {
        storable("title", title)?;
    }
    let mut session = load_session(ctx, &id).await?;
    let now = ctx.now();
    patch.apply(&mut session, now);
    session.version = ctx.reserve_seq();
    let statement = ctx
        .client
        .prepare_cached(
            "UPDATE sessions SET title = $2, title_fold = $3, updated_at = $4, archived_at = $5, \
             version = $6, metadata = $7 WHERE id = $1",
        )
        .await
        .map_err(db_write("preparing a session update"))?;
    ctx.client
        .execute(
            &statement,
            &[
                &session.id.as_str(),
                &session.title,
                &fold_title(&session.title),
                &session.updated_at,
                &session.archived_at,
                &session.version,
                &session.metadata.get(),
            ],
        )
        .await
        .map_err(db_write("updating a session"))?;
    let data = to_json(&session)?;
    ctx.emit(
        session.version,
        EventKind::SessionUpdated,
        &session.id,
        &session.directory,
        now,
        data,
    )
    .await?;
    Ok(session)
}

pub async fn delete_session(ctx: &mut WriteCtx, id: SessionId) -> StorageResult<()> {
    let session = load_session(ctx, &id).await?;
    let now = ctx.now();
    ctx.client
        .execute(
            "DELETE FROM messages WHERE session_id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(db_write("deleting a session's messages"))?;
    let rows = ctx
        .client
        .query(
            &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE parent_id = $1 ORDER BY id"),
            &[&id.as_str()],
        )
        .await
        .map_err(db_write("finding child sessions"))?;
    for row in rows {
        let mut child = reads::session(&row)?;
        child.parent_id = None;
        child.updated_at = now;
        child.version = ctx.reserve_seq();
        ctx.client
            .execute(
                "UPDATE sessions SET parent_id = NULL, updated_at = $2, version = $3 WHERE id = $1",
                &[&child.id.as_str(), &now, &child.version],
            )
            .await
            .map_err(db_write("detaching a child session"))?;
        let data = to_json(&child)?;
        ctx.emit(
            child.version,
            EventKind::SessionUpdated,
            &child.id,
            &child.directory,
            now,
            data,
        )
        .await?;
    }
    ctx.client
        .execute("DELETE FROM sessions WHERE id = $1", &[&id.as_str()])
        .await
        .map_err(db_write("deleting a session"))?;
    let data = to_json(&session)?;
    let seq = ctx.reserve_seq();
    ctx.emit(
        seq,
        EventKind::SessionDeleted,
        &session.id,
        &session.directory,
        now,
        data,
    )
    .await?;
    Ok(())
}

const INSERT_MESSAGE: &str = "INSERT INTO messages (id, session_id, role, parts, metadata, text, \
     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)";

pub async fn append_message(
    ctx: &mut WriteCtx,
    session_id: SessionId,
    new: NewMessage,
) -> StorageResult<Message> {
    let (now, value) = ctx.next_id();
    let seq = ctx.reserve_seq();
    // The bump finds the session and writes its new version in one statement: no row, no
    // session, and nothing was written.
    let bump = ctx
        .client
        .prepare_cached(
            "UPDATE sessions SET updated_at = $2, message_count = message_count + 1, version = $3 \
             WHERE id = $1 RETURNING directory",
        )
        .await
        .map_err(db_write("preparing a session bump"))?;
    let Some(row) = ctx
        .client
        .query_opt(&bump, &[&session_id.as_str(), &now, &seq])
        .await
        .map_err(db_write("bumping the session of a new message"))?
    else {
        ctx.unreserve_seq();
        return Err(StorageError::session_not_found(session_id.as_str()));
    };
    let directory: String = row
        .try_get(0)
        .map_err(db_write("reading the session's directory"))?;
    let message = Message {
        id: MessageId::from_value(value),
        session_id,
        role: new.role,
        parts: RawValue::from_string(new.parts.clone()).context("re-reading validated parts")?,
        metadata: RawValue::from_string(new.metadata.clone())
            .context("re-reading validated metadata")?,
        created_at: now,
    };
    let event = Event {
        seq,
        kind: EventKind::MessageCreated,
        session_id: message.session_id.clone(),
        directory,
        at: now,
        data: to_json(&message)?,
    };
    let insert = ctx
        .client
        .prepare_cached(INSERT_MESSAGE)
        .await
        .map_err(db_write("preparing a message insert"))?;
    // The search document only: the parts keep every character (JSON escapes NUL).
    let text = if new.text.contains('\0') {
        std::borrow::Cow::Owned(new.text.replace('\0', " "))
    } else {
        std::borrow::Cow::Borrowed(new.text.as_str())
    };
    // The message and its event go out together: one round trip, not two.
    let inserting = async {
        ctx.client
            .execute(
                &insert,
                &[
                    &message.id.as_str(),
                    &message.session_id.as_str(),
                    &message.role.as_str(),
                    &new.parts,
                    &new.metadata,
                    &text.as_ref(),
                    &now,
                ],
            )
            .await
            .map_err(db_write("inserting a message"))
    };
    tokio::try_join!(inserting, ctx.log(&event))?;
    ctx.logged(event);
    Ok(message)
}

/// One session beside what is stored (see [`crate::storage::Storage::import_session`]), in
/// the writer's batch so its event reaches every instance.
pub async fn import_session(
    ctx: &mut WriteCtx,
    item: ImportSession,
    mapping: ImportMapping,
) -> StorageResult<ImportedSession> {
    let mut session = item.session;
    storable("directory", &session.directory)?;
    storable("title", &session.title)?;
    let lookup = ctx
        .client
        .prepare_cached("SELECT 1 FROM sessions WHERE id = $1")
        .await
        .map_err(db_write("preparing a session lookup"))?;
    if let Some(parent) = &session.parent_id {
        let found = ctx
            .client
            .query_opt(&lookup, &[&parent.as_str()])
            .await
            .map_err(db_write("looking up a parent session"))?;
        if found.is_none() {
            session.parent_id = None;
        }
    }
    let stored = ctx
        .client
        .query_opt(&lookup, &[&session.id.as_str()])
        .await
        .map_err(db_write("looking up a session"))?
        .is_some();
    if !stored {
        session.message_count = 0;
        insert_session(ctx, &session).await?;
    }
    let mut ids = Vec::with_capacity(item.messages.len());
    let mut roles = Vec::with_capacity(item.messages.len());
    let mut parts = Vec::with_capacity(item.messages.len());
    let mut metadata = Vec::with_capacity(item.messages.len());
    let mut texts = Vec::with_capacity(item.messages.len());
    let mut created = Vec::with_capacity(item.messages.len());
    for m in &item.messages {
        ids.push(m.message.id.as_str());
        roles.push(m.message.role.as_str());
        parts.push(m.message.parts.get());
        metadata.push(m.message.metadata.get());
        texts.push(m.text.replace('\0', " "));
        created.push(m.message.created_at);
    }
    // One statement for all the messages; those already stored are left as they are.
    let rows = ctx
        .client
        .query(
            "INSERT INTO messages (id, session_id, role, parts, metadata, text, created_at) \
             SELECT m.id, $1, m.role, m.parts, m.metadata, m.text, m.created_at \
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
             $7::bigint[]) AS m (id, role, parts, metadata, text, created_at) \
             ON CONFLICT (id) DO NOTHING RETURNING created_at",
            &[
                &session.id.as_str(),
                &ids,
                &roles,
                &parts,
                &metadata,
                &texts,
                &created,
            ],
        )
        .await
        .map_err(db_write("importing messages"))?;
    let added = rows.len() as i64;
    let mut newest = session.updated_at;
    for row in &rows {
        let at: i64 = row
            .try_get(0)
            .map_err(db_write("reading an imported message"))?;
        newest = newest.max(at);
    }
    if !mapping.pairs.is_empty() {
        let (originals, targets): (Vec<&str>, Vec<&str>) = mapping
            .pairs
            .iter()
            .map(|(o, t)| (o.as_str(), t.as_str()))
            .unzip();
        ctx.client
            .execute(
                "INSERT INTO import_map (source, original_id, target_id) \
                 SELECT $1, * FROM unnest($2::text[], $3::text[]) ON CONFLICT DO NOTHING",
                &[&mapping.source, &originals, &targets],
            )
            .await
            .map_err(db_write("recording import mappings"))?;
    }
    if stored && added == 0 {
        return Ok(ImportedSession::default());
    }
    let seq = ctx.reserve_seq();
    ctx.client
        .execute(
            "UPDATE sessions SET message_count = message_count + $2, \
             updated_at = GREATEST(updated_at, $3), version = $4 WHERE id = $1",
            &[&session.id.as_str(), &added, &newest, &seq],
        )
        .await
        .map_err(db_write("counting an imported session's messages"))?;
    let session = load_session(ctx, &session.id).await?;
    let now = ctx.now();
    let kind = if stored {
        EventKind::SessionUpdated
    } else {
        EventKind::SessionCreated
    };
    let data = to_json(&session)?;
    ctx.emit(seq, kind, &session.id, &session.directory, now, data)
        .await?;
    Ok(ImportedSession {
        created: !stored,
        messages: added as u64,
    })
}

/// Rows per statement of a bulk import.
const IMPORT_CHUNK: usize = 2000;

/// Bulk load: complete sessions and messages as given, without events, in one transaction.
/// Moves the database's generation (validators handed out before no longer match) and the
/// head's timestamp (ids made later sort after the imported ones).
pub async fn import(
    client: &mut tokio_postgres::Client,
    sessions: Vec<ImportSession>,
) -> StorageResult<()> {
    let tx = client
        .transaction()
        .await
        .map_err(db_write("starting an import"))?;
    // The head first, as every batch does: the messages get `seq`s above every committed one
    // and below every later batch's, so the messages head (set below) never passes one in
    // flight (see migration 0004).
    tx.execute("SELECT 1 FROM head WHERE id = 1 FOR UPDATE", &[])
        .await
        .map_err(db_write("locking the head"))?;
    tx.execute(
        "UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'generation'",
        &[],
    )
    .await
    .map_err(db_write("moving the database generation"))?;
    let mut newest = 0_i64;
    let mut version = 0_i64;
    let mut session_rows: Vec<&Session> = Vec::new();
    let mut message_rows: Vec<(&Message, &str)> = Vec::new();
    for item in &sessions {
        newest = newest.max(item.session.updated_at);
        version = version.max(item.session.version);
        session_rows.push(&item.session);
        for m in &item.messages {
            newest = newest.max(m.message.created_at);
            message_rows.push((&m.message, &m.text));
        }
    }
    for chunk in session_rows.chunks(IMPORT_CHUNK) {
        let mut columns: [Vec<Option<String>>; 6] = Default::default();
        let mut numbers: [Vec<Option<i64>>; 5] = Default::default();
        for s in chunk {
            columns[0].push(Some(s.id.as_str().to_owned()));
            columns[1].push(Some(s.directory.clone()));
            columns[2].push(Some(s.title.clone()));
            columns[3].push(Some(fold_title(&s.title)));
            columns[4].push(s.parent_id.as_ref().map(|p| p.as_str().to_owned()));
            columns[5].push(Some(s.metadata.get().to_owned()));
            numbers[0].push(Some(s.created_at));
            numbers[1].push(Some(s.updated_at));
            numbers[2].push(s.archived_at);
            numbers[3].push(Some(s.message_count));
            numbers[4].push(Some(s.version));
        }
        let params: Vec<&(dyn ToSql + Sync)> = columns
            .iter()
            .map(|c| c as &(dyn ToSql + Sync))
            .chain(numbers.iter().map(|c| c as &(dyn ToSql + Sync)))
            .collect();
        tx.execute(
            "INSERT INTO sessions (id, directory, title, title_fold, parent_id, metadata, \
             created_at, updated_at, archived_at, message_count, version) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])",
            &params,
        )
        .await
        .map_err(db_write("importing sessions"))?;
    }
    for chunk in message_rows.chunks(IMPORT_CHUNK) {
        let mut columns: [Vec<String>; 6] = Default::default();
        let mut created: Vec<i64> = Vec::with_capacity(chunk.len());
        for (m, text) in chunk {
            columns[0].push(m.id.as_str().to_owned());
            columns[1].push(m.session_id.as_str().to_owned());
            columns[2].push(m.role.as_str().to_owned());
            columns[3].push(m.parts.get().to_owned());
            columns[4].push(m.metadata.get().to_owned());
            columns[5].push((*text).to_owned());
            created.push(m.created_at);
        }
        let params: Vec<&(dyn ToSql + Sync)> = columns
            .iter()
            .map(|c| c as &(dyn ToSql + Sync))
            .chain(std::iter::once(&created as &(dyn ToSql + Sync)))
            .collect();
        tx.execute(
            "INSERT INTO messages (id, session_id, role, parts, metadata, text, created_at) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::bigint[])",
            &params,
        )
        .await
        .map_err(db_write("importing messages"))?;
    }
    // Past the imported versions too: a session's version (its ETag) must keep increasing.
    tx.execute(
        "UPDATE head SET at = GREATEST(at, $1), seq = GREATEST(seq, $2), owner = '', \
         messages = GREATEST(messages, coalesce((SELECT max(seq) FROM messages), 0)) WHERE id = 1",
        &[&newest, &version],
    )
    .await
    .map_err(db_write("moving the head past the imported data"))?;
    tx.commit()
        .await
        .map_err(db_write("committing an import"))?;
    Ok(())
}

/// Events deleted per statement, so pruning never holds locks for long.
pub const PRUNE_BATCH: i64 = 10_000;

/// Deletes one batch of events older than `older_than` or beyond the newest `keep` (see the
/// SQLite version: both rules delete a prefix of the log).
pub async fn prune_events(
    client: &tokio_postgres::Client,
    older_than: i64,
    keep: u64,
) -> StorageResult<u64> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let deleted = client
        .execute(
            "DELETE FROM events WHERE seq < GREATEST(\
                 coalesce((SELECT seq FROM events WHERE at >= $1 ORDER BY seq LIMIT 1), \
                          (SELECT max(seq) FROM events) + 1), \
                 (SELECT max(seq) FROM events) - $2 + 1) \
               AND seq < (SELECT min(seq) FROM events) + $3 \
               AND seq < coalesce((SELECT min(event_seq) FROM webhook_deliveries \
                                   WHERE status = 0), 9223372036854775807)",
            &[&older_than, &keep, &PRUNE_BATCH],
        )
        .await
        .map_err(db_write("pruning events"))?;
    Ok(deleted)
}

pub async fn create_key(
    client: &tokio_postgres::Client,
    new: &NewKey,
    hash: &str,
    hint: &str,
) -> StorageResult<ApiKey> {
    storable("name", &new.name)?;
    let created = ApiKey {
        id: format!("key_{}", random_token()),
        name: new.name.clone(),
        scope: new.scope,
        hint: hint.to_owned(),
        created_at: wall_clock_ms(),
        expires_at: new.expires_at,
        revoked_at: None,
    };
    client
        .execute(
            "INSERT INTO api_keys (id, name, scope, hash, hint, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &created.id,
                &created.name,
                &created.scope.as_str(),
                &hash,
                &created.hint,
                &created.created_at,
                &created.expires_at,
            ],
        )
        .await
        .map_err(db_write("storing a key"))?;
    Ok(created)
}

/// Stores exported keys as they are.
pub async fn import_keys(
    client: &tokio_postgres::Client,
    keys: &[(ApiKey, String)],
) -> StorageResult<()> {
    for (key, hash) in keys {
        client
            .execute(
                "INSERT INTO api_keys (id, name, scope, hash, hint, created_at, expires_at, \
                 revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &key.id,
                    &key.name,
                    &key.scope.as_str(),
                    hash,
                    &key.hint,
                    &key.created_at,
                    &key.expires_at,
                    &key.revoked_at,
                ],
            )
            .await
            .map_err(db_write("importing a key"))?;
    }
    Ok(())
}

/// Revokes a key (keeping the first revocation time) and tells every instance; `NotFound` for
/// an unknown id.
pub async fn revoke_key(client: &mut tokio_postgres::Client, id: &str) -> StorageResult<ApiKey> {
    let tx = client
        .transaction()
        .await
        .map_err(db_write("starting a key revocation"))?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 \
                 RETURNING {}",
                reads::KEY_COLUMNS
            ),
            &[&id, &wall_clock_ms()],
        )
        .await
        .map_err(db_write("revoking a key"))?;
    let Some(row) = row else {
        return Err(StorageError::NotFound {
            what: "API key",
            id: crate::domain::clip(id),
        });
    };
    let key = reads::key(&row)?;
    tx.execute("SELECT pg_notify($1, $2)", &[&KEYS_CHANNEL, &id])
        .await
        .map_err(db_write("announcing a key revocation"))?;
    tx.commit()
        .await
        .map_err(db_write("committing a key revocation"))?;
    Ok(key)
}
