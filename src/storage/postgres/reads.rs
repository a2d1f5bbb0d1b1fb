//! The read queries: keyset pages over the same indexes as SQLite's, each read a single
//! statement so it sees one snapshot.

use anyhow::Context;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Conn, db};
use crate::domain::keys::{ApiKey, Scope};
use crate::domain::{
    ArchivedFilter, Message, MessageCursor, MessageId, Order, Page, Role, Session, SessionCursor,
    SessionId,
};
use crate::events::{Event, EventFilter, EventKind};
use crate::storage::{
    EventBounds, MessageListQuery, MessageWalk, SessionFilter, SessionListQuery, SessionText,
    StorageError, StorageResult,
};

pub const SESSION_COLUMNS: &str = "id, directory, title, parent_id, created_at, updated_at, \
     archived_at, message_count, version, metadata";

pub fn session(row: &Row) -> StorageResult<Session> {
    Ok(Session {
        id: SessionId::from_trusted(get(row, 0)?),
        directory: get(row, 1)?,
        title: get(row, 2)?,
        parent_id: get::<Option<String>>(row, 3)?.map(SessionId::from_trusted),
        created_at: get(row, 4)?,
        updated_at: get(row, 5)?,
        archived_at: get(row, 6)?,
        message_count: get(row, 7)?,
        version: get(row, 8)?,
        metadata: serde_json::value::RawValue::from_string(get(row, 9)?)
            .context("a stored session holds invalid metadata")?,
    })
}

pub const MESSAGE_COLUMNS: &str = "id, session_id, role, parts, metadata, created_at";

/// A message from `row`, whose columns start at `at` in [`MESSAGE_COLUMNS`] order.
pub fn message_at(row: &Row, at: usize) -> StorageResult<Message> {
    let role: String = get(row, at + 2)?;
    let raw = |index: usize| -> StorageResult<Box<serde_json::value::RawValue>> {
        Ok(serde_json::value::RawValue::from_string(get(row, index)?)
            .context("a stored message holds invalid JSON")?)
    };
    Ok(Message {
        id: MessageId::from_trusted(get(row, at)?),
        session_id: SessionId::from_trusted(get(row, at + 1)?),
        role: Role::parse(&role)
            .with_context(|| format!("a stored message has the unknown role {role:?}"))?,
        parts: raw(at + 3)?,
        metadata: raw(at + 4)?,
        created_at: get(row, at + 5)?,
    })
}

pub async fn get_session(client: &Conn, id: &SessionId) -> StorageResult<Session> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1"
        ))
        .await
        .map_err(db("preparing a session lookup"))?;
    match client
        .query_opt(&statement, &[&id.as_str()])
        .await
        .map_err(db("loading a session"))?
    {
        Some(row) => session(&row),
        None => Err(StorageError::session_not_found(id.as_str())),
    }
}

/// The targets of `originals` in the import map of `source`, in their order.
pub async fn import_targets(
    client: &Conn,
    source: &str,
    originals: &[String],
) -> StorageResult<Vec<Option<String>>> {
    let rows = client
        .query(
            "SELECT original_id, target_id FROM import_map \
             WHERE source = $1 AND original_id = ANY($2)",
            &[&source, &originals],
        )
        .await
        .map_err(db("reading the import map"))?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(get::<String>(row, 0)?, get::<String>(row, 1)?);
    }
    Ok(originals.iter().map(|o| found.remove(o)).collect())
}

/// Sessions in id order after `after`.
pub async fn sessions_by_id(
    client: &Conn,
    after: Option<&SessionId>,
    limit: u32,
) -> StorageResult<Vec<Session>> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .await
        .map_err(db("preparing a session walk"))?;
    let after = after.map_or("", SessionId::as_str);
    client
        .query(&statement, &[&after, &i64::from(limit)])
        .await
        .map_err(db("walking sessions"))?
        .iter()
        .map(session)
        .collect()
}

/// The messages of consecutive sessions (see [`MessageWalk`]).
pub async fn messages_by_session(client: &Conn, walk: &MessageWalk) -> StorageResult<Vec<Message>> {
    let mut params = Params::default();
    let from = params.push(walk.from.as_str().to_owned());
    let through = params.push(walk.through.as_str().to_owned());
    let limit = params.push(i64::from(walk.limit));
    let start = match &walk.after {
        Some((created_at, id)) => format!(
            "(session_id, created_at, id) > ({from}, {}, {})",
            params.push(*created_at),
            params.push(id.as_str().to_owned())
        ),
        None => format!("session_id >= {from}"),
    };
    let statement = client
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE {start} AND session_id <= {through} \
             ORDER BY session_id, created_at, id LIMIT {limit}"
        ))
        .await
        .map_err(db("preparing a message walk"))?;
    client
        .query(&statement, &params.refs())
        .await
        .map_err(db("walking messages"))?
        .iter()
        .map(|row| message_at(row, 0))
        .collect()
}

pub async fn get_message(client: &Conn, id: &MessageId) -> StorageResult<Message> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
        ))
        .await
        .map_err(db("preparing a message lookup"))?;
    match client
        .query_opt(&statement, &[&id.as_str()])
        .await
        .map_err(db("loading a message"))?
    {
        Some(row) => message_at(&row, 0),
        None => Err(StorageError::message_not_found(id.as_str())),
    }
}

/// A parameter list that numbers its own placeholders.
#[derive(Default)]
pub struct Params {
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Params {
    /// Adds a value; returns its placeholder (`$n`).
    pub fn push(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.values.push(Box::new(value));
        format!("${}", self.values.len())
    }

    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

pub async fn list_sessions(
    client: &Conn,
    query: &SessionListQuery,
) -> StorageResult<Page<Session, SessionCursor>> {
    let SessionFilter {
        directory,
        roots_only,
        updated_after,
        title_contains,
        archived,
    } = &query.filter;
    let mut params = Params::default();
    let mut conditions = String::new();
    if let Some(directory) = directory {
        let p = params.push(directory.clone());
        conditions.push_str(&format!(" AND directory = {p}"));
    }
    if *roots_only {
        conditions.push_str(" AND parent_id IS NULL");
    }
    if let Some(after) = updated_after {
        let p = params.push(*after);
        conditions.push_str(&format!(" AND updated_at >= {p}"));
    }
    if let Some(needle) = title_contains {
        let p = params.push(needle.clone());
        conditions.push_str(&format!(" AND strpos(title_fold, {p}) > 0"));
    }
    if let Some(cursor) = &query.after {
        let a = params.push(cursor.updated_at);
        let b = params.push(cursor.id.as_str().to_owned());
        conditions.push_str(&format!(" AND (updated_at, id) < ({a}, {b})"));
    }
    let limit = params.push(i64::from(query.limit.get()) + 1);
    let arm = |archived: bool| {
        format!(
            "(SELECT {SESSION_COLUMNS} FROM sessions WHERE archived = {archived}{conditions} \
             ORDER BY updated_at DESC, id DESC LIMIT {limit})"
        )
    };
    let sql = match archived {
        ArchivedFilter::Hide => arm(false),
        ArchivedFilter::Only => arm(true),
        // Two index walks merged in order, as with SQLite.
        ArchivedFilter::All => format!(
            "SELECT * FROM ({} UNION ALL {}) s ORDER BY updated_at DESC, id DESC LIMIT {limit}",
            arm(false),
            arm(true)
        ),
    };
    let statement = client
        .prepare_cached(&sql)
        .await
        .map_err(db("preparing a session list"))?;
    let rows = client
        .query(&statement, &params.refs())
        .await
        .map_err(db("listing sessions"))?;
    let items = rows
        .iter()
        .map(session)
        .collect::<StorageResult<Vec<_>>>()?;
    Ok(paginate(items, query.limit.get(), |s| SessionCursor {
        updated_at: s.updated_at,
        id: s.id.clone(),
    }))
}

/// Splits the `limit + 1` rows fetched into a page and the cursor after it.
pub fn paginate<T, C>(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> C) -> Page<T, C> {
    let limit = limit as usize;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next }
}

pub async fn list_messages(
    client: &Conn,
    session: &SessionId,
    query: &MessageListQuery,
) -> StorageResult<(Page<Message, MessageCursor>, i64)> {
    let (cmp, dir) = match query.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    let after = if query.after.is_some() {
        format!(" AND (created_at, id) {cmp} ($3, $4)")
    } else {
        String::new()
    };
    // One statement, one snapshot: the version always describes the page it comes with.
    let sql = format!(
        "SELECT s.version, m.* FROM (SELECT version FROM sessions WHERE id = $1) s \
         LEFT JOIN LATERAL (SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = $1{after} \
         ORDER BY created_at {dir}, id {dir} LIMIT $2) m ON true"
    );
    let statement = client
        .prepare_cached(&sql)
        .await
        .map_err(db("preparing a message list"))?;
    let limit = i64::from(query.limit.get()) + 1;
    let rows = match &query.after {
        Some(cursor) => {
            client
                .query(
                    &statement,
                    &[
                        &session.as_str(),
                        &limit,
                        &cursor.created_at,
                        &cursor.id.as_str(),
                    ],
                )
                .await
        }
        None => client.query(&statement, &[&session.as_str(), &limit]).await,
    }
    .map_err(db("listing messages"))?;
    let Some(first) = rows.first() else {
        return Err(StorageError::session_not_found(session.as_str()));
    };
    let version: i64 = get(first, 0)?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        // The one row of a session without (more) messages has NULL message columns.
        if get::<Option<String>>(row, 1)?.is_some() {
            items.push(message_at(row, 1)?);
        }
    }
    let page = paginate(items, query.limit.get(), |m| MessageCursor {
        order: query.order,
        created_at: m.created_at,
        id: m.id.clone(),
    });
    Ok((page, version))
}

pub async fn session_text(
    client: &Conn,
    id: &SessionId,
    max_bytes: usize,
) -> StorageResult<SessionText> {
    // Newest first, cut where the budget runs out (the running total is computed by the
    // database so only the rows needed travel).
    let rows = client
        .query(
            "SELECT s.message_count, m.text FROM (SELECT message_count FROM sessions WHERE id = $1) s \
             LEFT JOIN LATERAL (SELECT text FROM (SELECT text, created_at, id, \
                   sum(octet_length(text)) OVER (ORDER BY created_at DESC, id DESC) AS total \
                 FROM messages WHERE session_id = $1 AND text <> '') t \
               WHERE t.total - octet_length(t.text) < $2 \
               ORDER BY created_at DESC, id DESC) m ON true",
            &[&id.as_str(), &(max_bytes as i64)],
        )
        .await
        .map_err(db("reading the session text"))?;
    let Some(first) = rows.first() else {
        return Err(StorageError::session_not_found(id.as_str()));
    };
    let message_count: i64 = get(first, 0)?;
    // A session without text has one row, with no text.
    let texts = rows
        .iter()
        .filter_map(|row| get::<Option<String>>(row, 1).transpose());
    SessionText::within_budget(message_count, texts, max_bytes)
}

pub async fn event_bounds(client: &Conn) -> StorageResult<EventBounds> {
    let row = client
        .query_one(
            "SELECT (SELECT min(seq) FROM events), (SELECT seq FROM head WHERE id = 1)",
            &[],
        )
        .await
        .map_err(db("reading the event bounds"))?;
    Ok(EventBounds {
        oldest: get(&row, 0)?,
        newest: get(&row, 1)?,
    })
}

pub async fn events_after(
    client: &Conn,
    after: i64,
    filter: &EventFilter,
    limit: usize,
) -> StorageResult<Vec<Event>> {
    let mut params = Params::default();
    let mut sql = format!(
        "SELECT seq, type, session_id, directory, at, data FROM events WHERE seq > {}",
        params.push(after)
    );
    if let Some(session) = &filter.session_id {
        sql.push_str(&format!(
            " AND session_id = {}",
            params.push(session.clone())
        ));
    }
    if let Some(directory) = &filter.directory {
        sql.push_str(&format!(
            " AND directory = {}",
            params.push(directory.clone())
        ));
    }
    sql.push_str(&format!(
        " ORDER BY seq LIMIT {}",
        params.push(i64::try_from(limit).unwrap_or(i64::MAX))
    ));
    let statement = client
        .prepare_cached(&sql)
        .await
        .map_err(db("preparing an event replay"))?;
    let rows = client
        .query(&statement, &params.refs())
        .await
        .map_err(db("replaying events"))?;
    rows.iter()
        .map(|row| {
            let kind: String = get(row, 1)?;
            Ok(Event {
                seq: get(row, 0)?,
                kind: EventKind::parse(&kind)
                    .with_context(|| format!("the log holds an unknown event type {kind:?}"))?,
                session_id: SessionId::from_trusted(get(row, 2)?),
                directory: get(row, 3)?,
                at: get(row, 4)?,
                data: get(row, 5)?,
            })
        })
        .collect()
}

pub const KEY_COLUMNS: &str = "id, name, scope, hint, created_at, expires_at, revoked_at";

pub fn key(row: &Row) -> StorageResult<ApiKey> {
    let scope: String = get(row, 2)?;
    Ok(ApiKey {
        id: get(row, 0)?,
        name: get(row, 1)?,
        scope: Scope::parse(&scope)
            .map_err(|e| anyhow::anyhow!("a stored key has an invalid scope: {e}"))?,
        hint: get(row, 3)?,
        created_at: get(row, 4)?,
        expires_at: get(row, 5)?,
        revoked_at: get(row, 6)?,
    })
}

/// Column `index` of `row`.
pub fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> StorageResult<T> {
    row.try_get(index).map_err(db("reading a row"))
}

pub async fn list_keys(client: &Conn) -> StorageResult<Vec<ApiKey>> {
    let rows = client
        .query(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"),
            &[],
        )
        .await
        .map_err(db("listing keys"))?;
    rows.iter().map(key).collect()
}

/// Every key with its secret's hash.
pub async fn export_keys(client: &Conn) -> StorageResult<Vec<(ApiKey, String)>> {
    let rows = client
        .query(
            &format!("SELECT {KEY_COLUMNS}, hash FROM api_keys ORDER BY created_at, id"),
            &[],
        )
        .await
        .map_err(db("exporting keys"))?;
    rows.iter()
        .map(|row| Ok((key(row)?, get(row, 7)?)))
        .collect()
}

pub async fn find_key(client: &Conn, hash: &str) -> StorageResult<Option<ApiKey>> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = $1"
        ))
        .await
        .map_err(db("preparing a key lookup"))?;
    client
        .query_opt(&statement, &[&hash])
        .await
        .map_err(db("looking up a key"))?
        .as_ref()
        .map(key)
        .transpose()
}
