//! The write operations, run by the writer inside the transaction of a batch (see `writer`):
//! each checks its preconditions before it writes, so a refused one has written nothing.

use anyhow::Context;
use rusqlite::{OptionalExtension, params};
use serde_json::value::RawValue;

use super::rows::{self, SESSION_COLUMNS};
use super::writer::WriteCtx;
use crate::domain::{
    Message, MessageId, NewMessage, NewSession, ParentRef, Role, Session, SessionId, SessionPatch,
    fold_title,
};
use crate::events::EventKind;
use crate::storage::{ImportMapping, ImportSession, ImportedSession, StorageError, StorageResult};

fn load_session(ctx: &WriteCtx<'_>, id: &SessionId) -> StorageResult<Session> {
    ctx.conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
        ))
        .context("preparing a session lookup")?
        .query_row([id.as_str()], rows::session)
        .optional()
        .context("loading a session")?
        .ok_or_else(|| StorageError::session_not_found(id.as_str()))
}

fn to_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    serde_json::to_string(value).context("encoding an event")
}

fn insert_session(ctx: &WriteCtx<'_>, session: &Session) -> anyhow::Result<()> {
    ctx.conn
        .prepare_cached(
            "INSERT INTO sessions (id, directory, title, title_fold, parent_id, created_at, \
             updated_at, archived_at, message_count, version, metadata) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            session.id.as_str(),
            session.directory,
            session.title,
            fold_title(&session.title),
            session.parent_id.as_ref().map(SessionId::as_str),
            session.created_at,
            session.updated_at,
            session.archived_at,
            session.message_count,
            session.version,
            session.metadata.get(),
        ])
        .context("inserting a session")?;
    Ok(())
}

pub fn create_session(ctx: &mut WriteCtx<'_>, new: NewSession) -> StorageResult<Session> {
    let parent_id = match new.parent_id {
        None => None,
        Some(ParentRef::Unknown(raw)) => return Err(StorageError::session_not_found(raw)),
        Some(ParentRef::Id(id)) => {
            let exists = ctx
                .conn
                .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")
                .context("preparing a parent lookup")?
                .exists([id.as_str()])
                .context("looking up the parent session")?;
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
    insert_session(ctx, &session)?;
    let data = to_json(&session)?;
    ctx.emit(
        seq,
        EventKind::SessionCreated,
        &session.id,
        &session.directory,
        now,
        data,
    )?;
    Ok(session)
}

pub fn update_session(
    ctx: &mut WriteCtx<'_>,
    id: SessionId,
    patch: SessionPatch,
) -> StorageResult<Session> {
    let mut session = load_session(ctx, &id)?;
    let now = ctx.now();
    patch.apply(&mut session, now);
    session.version = ctx.reserve_seq();
    ctx.conn
        .prepare_cached(
            "UPDATE sessions SET title = ?2, title_fold = ?3, updated_at = ?4, archived_at = ?5, \
             version = ?6, metadata = ?7 WHERE id = ?1",
        )
        .context("preparing a session update")?
        .execute(params![
            session.id.as_str(),
            session.title,
            fold_title(&session.title),
            session.updated_at,
            session.archived_at,
            session.version,
            session.metadata.get(),
        ])
        .context("updating a session")?;
    let data = to_json(&session)?;
    ctx.emit(
        session.version,
        EventKind::SessionUpdated,
        &session.id,
        &session.directory,
        now,
        data,
    )?;
    Ok(session)
}

pub fn delete_session(ctx: &mut WriteCtx<'_>, id: SessionId) -> StorageResult<()> {
    let session = load_session(ctx, &id)?;
    let now = ctx.now();
    ctx.conn
        .prepare_cached("DELETE FROM messages WHERE session_id = ?1")
        .context("preparing a message delete")?
        .execute([id.as_str()])
        .context("deleting a session's messages")?;
    let children: Vec<Session> = ctx
        .conn
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE parent_id = ?1"
        ))
        .context("preparing the lookup of children")?
        .query_map([id.as_str()], rows::session)
        .context("finding child sessions")?
        .collect::<Result<_, _>>()
        .context("reading child sessions")?;
    for mut child in children {
        child.parent_id = None;
        child.updated_at = now;
        child.version = ctx.reserve_seq();
        ctx.conn
            .prepare_cached(
                "UPDATE sessions SET parent_id = NULL, updated_at = ?2, version = ?3 WHERE id = ?1",
            )
            .context("preparing the detach of a child")?
            .execute(params![child.id.as_str(), now, child.version])
            .context("detaching a child session")?;
        let data = to_json(&child)?;
        ctx.emit(
            child.version,
            EventKind::SessionUpdated,
            &child.id,
            &child.directory,
            now,
            data,
        )?;
    }
    ctx.conn
        .prepare_cached("DELETE FROM sessions WHERE id = ?1")
        .context("preparing a session delete")?
        .execute([id.as_str()])
        .context("deleting a session")?;
    let data = to_json(&session)?;
    let seq = ctx.reserve_seq();
    ctx.emit(
        seq,
        EventKind::SessionDeleted,
        &session.id,
        &session.directory,
        now,
        data,
    )?;
    Ok(())
}

pub fn append_message(
    ctx: &mut WriteCtx<'_>,
    session_id: SessionId,
    new: NewMessage,
) -> StorageResult<Message> {
    let directory: String = ctx
        .conn
        .prepare_cached("SELECT directory FROM sessions WHERE id = ?1")
        .context("preparing a session lookup")?
        .query_row([session_id.as_str()], |row| row.get(0))
        .optional()
        .context("looking up the session of a new message")?
        .ok_or_else(|| StorageError::session_not_found(session_id.as_str()))?;
    let (now, value) = ctx.next_id();
    let seq = ctx.reserve_seq();
    ctx.conn
        .prepare_cached(
            "UPDATE sessions SET updated_at = ?2, message_count = message_count + 1, version = ?3 \
             WHERE id = ?1",
        )
        .context("preparing a session bump")?
        .execute(params![session_id.as_str(), now, seq])
        .context("bumping the session of a new message")?;
    let id = MessageId::from_value(value);
    insert_message(
        ctx,
        &id,
        &session_id,
        new.role,
        &new.parts,
        &new.metadata,
        &new.text,
        now,
        false,
    )?;
    let message = Message {
        id,
        session_id,
        role: new.role,
        parts: RawValue::from_string(new.parts).context("re-reading validated parts")?,
        metadata: RawValue::from_string(new.metadata).context("re-reading validated metadata")?,
        created_at: now,
    };
    let data = to_json(&message)?;
    ctx.emit(
        seq,
        EventKind::MessageCreated,
        &message.session_id,
        &directory,
        now,
        data,
    )?;
    Ok(message)
}

/// Inserts a message (the search index reads it from the log); with `if_new`, a message whose id is stored already
/// is left as it is. Returns whether it was inserted.
#[allow(clippy::too_many_arguments)]
fn insert_message(
    ctx: &WriteCtx<'_>,
    id: &MessageId,
    session_id: &SessionId,
    role: Role,
    parts: &str,
    metadata: &str,
    text: &str,
    created_at: i64,
    if_new: bool,
) -> anyhow::Result<bool> {
    const INSERT: &str = "INSERT INTO messages (id, session_id, role, parts, metadata, text, \
         created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
    const INSERT_IF_NEW: &str = "INSERT INTO messages (id, session_id, role, parts, metadata, \
         text, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING";
    // No RETURNING (see the writer): the new seq is the last inserted rowid.
    let inserted = ctx
        .conn
        .prepare_cached(if if_new { INSERT_IF_NEW } else { INSERT })?
        .execute(params![
            id.as_str(),
            session_id.as_str(),
            role.as_str(),
            parts,
            metadata,
            text,
            created_at,
        ])
        .context("inserting a message")?;
    Ok(inserted > 0)
}

/// Bulk load: complete sessions and messages as given, without events. Moves the database's
/// generation, so validators handed out before no longer match.
pub fn import(ctx: &mut WriteCtx<'_>, sessions: Vec<ImportSession>) -> StorageResult<()> {
    ctx.conn
        .prepare_cached(
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'",
        )
        .context("preparing the generation bump")?
        .execute([])
        .context("moving the database generation")?;
    for item in sessions {
        insert_session(ctx, &item.session)?;
        for m in item.messages {
            let message = &m.message;
            insert_message(
                ctx,
                &message.id,
                &message.session_id,
                message.role,
                message.parts.get(),
                message.metadata.get(),
                &m.text,
                message.created_at,
                false,
            )?;
        }
    }
    Ok(())
}

/// One session beside what is stored (see [`crate::storage::Storage::import_session`]).
pub fn import_session(
    ctx: &mut WriteCtx<'_>,
    item: ImportSession,
    mapping: ImportMapping,
) -> StorageResult<ImportedSession> {
    let exists = |ctx: &WriteCtx<'_>, id: &SessionId| -> anyhow::Result<bool> {
        ctx.conn
            .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")
            .context("preparing a session lookup")?
            .exists([id.as_str()])
            .context("looking up a session")
    };
    let mut session = item.session;
    if let Some(parent) = &session.parent_id
        && !exists(ctx, parent)?
    {
        session.parent_id = None;
    }
    let stored = exists(ctx, &session.id)?;
    if !stored {
        session.message_count = 0;
        insert_session(ctx, &session)?;
    }
    let mut added = 0_u64;
    let mut newest = session.updated_at;
    for m in &item.messages {
        let message = &m.message;
        if insert_message(
            ctx,
            &message.id,
            &session.id,
            message.role,
            message.parts.get(),
            message.metadata.get(),
            &m.text,
            message.created_at,
            true,
        )? {
            added += 1;
            newest = newest.max(message.created_at);
        }
    }
    for (original, target) in &mapping.pairs {
        ctx.conn
            .prepare_cached(
                "INSERT INTO import_map (source, original_id, target_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )
            .context("preparing an import mapping")?
            .execute(params![mapping.source, original, target])
            .context("recording an import mapping")?;
    }
    if stored && added == 0 {
        return Ok(ImportedSession::default());
    }
    let seq = ctx.reserve_seq();
    ctx.conn
        .prepare_cached(
            "UPDATE sessions SET message_count = message_count + ?2, \
             updated_at = max(updated_at, ?3), version = ?4 WHERE id = ?1",
        )
        .context("preparing an imported session's update")?
        .execute(params![session.id.as_str(), added as i64, newest, seq])
        .context("counting an imported session's messages")?;
    let session = load_session(ctx, &session.id)?;
    let now = ctx.now();
    let kind = if stored {
        EventKind::SessionUpdated
    } else {
        EventKind::SessionCreated
    };
    let data = to_json(&session)?;
    ctx.emit(seq, kind, &session.id, &session.directory, now, data)?;
    Ok(ImportedSession {
        created: !stored,
        messages: added,
    })
}

/// Events deleted per writer job, so pruning never holds up writes for long.
pub const PRUNE_BATCH: i64 = 10_000;

/// Deletes one batch of events that are older than `older_than` or beyond the newest `keep`.
pub fn prune_events(ctx: &mut WriteCtx<'_>, older_than: i64, keep: u64) -> StorageResult<u64> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    // Seq order is also time order (`at` never decreases along it), so both rules delete a
    // prefix of the log: everything before the first event that is young enough, or before
    // the newest `keep`. Finding that point walks only the expired events; the delete is a
    // range of the primary key, at most one batch long. Events a pending webhook delivery
    // still needs are kept (pending deliveries only exist for enabled endpoints).
    let deleted = ctx
        .conn
        .prepare_cached(
            "DELETE FROM events WHERE seq < max(\
                 coalesce((SELECT seq FROM events WHERE at >= ?1 ORDER BY seq LIMIT 1), \
                          (SELECT max(seq) FROM events) + 1), \
                 (SELECT max(seq) FROM events) - ?2 + 1) \
               AND seq < (SELECT min(seq) FROM events) + ?3 \
               AND seq < coalesce((SELECT min(event_seq) FROM webhook_deliveries \
                                   WHERE status = 0), 9223372036854775807)",
        )
        .context("preparing the event pruning")?
        .execute(params![older_than, keep, PRUNE_BATCH])
        .context("pruning events")?;
    Ok(deleted as u64)
}
