//! The read queries. Each list is a keyset query walking an index in its sort order, so a page
//! costs the rows it returns (plus those its filters skip), never a sort of the whole table; the
//! `query_plans` test holds every variant to that.

use anyhow::Context;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Statement, params_from_iter};

use super::indexing::SqlSource;
use super::rows::{self, MESSAGE_COLUMNS, SESSION_COLUMNS};
use crate::domain::{
    ArchivedFilter, Message, MessageCursor, MessageId, Order, Page, SearchCursor, SearchHit,
    SearchTerms, Session, SessionCursor, SessionId,
};
use crate::events::{Event, EventFilter, EventKind};
use crate::search::paging::{self, HitRow, Rankings};
use crate::search::{SearchIndex, Source};
use crate::storage::{
    EventBounds, MessageListQuery, MessageWalk, SearchQuery, SessionFilter, SessionListQuery,
    SessionText, StorageError, StorageResult,
};

/// Runs `body` in one read transaction, so multi-statement reads see one snapshot.
fn snapshot<T>(
    conn: &Connection,
    body: impl FnOnce(&Connection) -> StorageResult<T>,
) -> StorageResult<T> {
    conn.prepare_cached("BEGIN")
        .and_then(|mut s| s.execute([]))
        .context("starting a read transaction")?;
    let result = body(conn);
    conn.prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .context("ending a read transaction")?;
    result
}

pub fn get_session(conn: &Connection, id: &SessionId) -> StorageResult<Session> {
    conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
    ))
    .context("preparing a session lookup")?
    .query_row([id.as_str()], rows::session)
    .optional()
    .context("loading a session")?
    .ok_or_else(|| StorageError::session_not_found(id.as_str()))
}

pub fn get_message(conn: &Connection, id: &MessageId) -> StorageResult<Message> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"
    ))
    .context("preparing a message lookup")?
    .query_row([id.as_str()], rows::message)
    .optional()
    .context("loading a message")?
    .ok_or_else(|| StorageError::message_not_found(id.as_str()))
}

/// The SQL of a session list page and its parameters, in order.
pub fn session_list_sql(query: &SessionListQuery) -> (String, Vec<Value>) {
    let SessionFilter {
        directory,
        roots_only,
        updated_after,
        title_contains,
        archived,
    } = &query.filter;
    let mut params = Vec::new();
    let mut conditions = String::new();
    if let Some(directory) = directory {
        params.push(Value::Text(directory.clone()));
        conditions.push_str(&format!(" AND directory = ?{}", params.len()));
    }
    if *roots_only {
        conditions.push_str(" AND parent_id IS NULL");
    }
    if let Some(after) = updated_after {
        params.push(Value::Integer(*after));
        conditions.push_str(&format!(" AND updated_at >= ?{}", params.len()));
    }
    if let Some(needle) = title_contains {
        params.push(Value::Text(needle.clone()));
        conditions.push_str(&format!(" AND instr(title_fold, ?{}) > 0", params.len()));
    }
    if let Some(cursor) = &query.after {
        params.push(Value::Integer(cursor.updated_at));
        params.push(Value::Text(cursor.id.as_str().to_owned()));
        conditions.push_str(&format!(
            " AND (updated_at, id) < (?{}, ?{})",
            params.len() - 1,
            params.len()
        ));
    }
    params.push(Value::Integer(i64::from(query.limit.get()) + 1));
    let limit = params.len();
    let arm = |archived: u8| {
        format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE archived = {archived}{conditions}")
    };
    let from = match archived {
        ArchivedFilter::Hide => arm(0),
        ArchivedFilter::Only => arm(1),
        // Two index walks merged in order (SQLite's MERGE of a compound SELECT): cheaper than
        // another pair of indexes that every message append would have to update.
        ArchivedFilter::All => format!("{} UNION ALL {}", arm(0), arm(1)),
    };
    let sql = format!("{from} ORDER BY updated_at DESC, id DESC LIMIT ?{limit}");
    (sql, params)
}

pub fn list_sessions(
    conn: &Connection,
    query: &SessionListQuery,
) -> StorageResult<Page<Session, SessionCursor>> {
    let (sql, params) = session_list_sql(query);
    let items = conn
        .prepare_cached(&sql)
        .context("preparing a session list")?
        .query_map(params_from_iter(params), rows::session)
        .context("listing sessions")?
        .collect::<Result<Vec<_>, _>>()
        .context("reading sessions")?;
    Ok(paginate(items, query.limit.get(), |s| SessionCursor {
        updated_at: s.updated_at,
        id: s.id.clone(),
    }))
}

/// Splits the `limit + 1` rows fetched into a page and the cursor after it.
fn paginate<T, C>(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> C) -> Page<T, C> {
    let limit = limit as usize;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(cursor)
    } else {
        None
    };
    Page { items, next }
}

pub fn message_list_sql(query: &MessageListQuery) -> String {
    let (cmp, dir) = match query.order {
        Order::Asc => (">", "ASC"),
        Order::Desc => ("<", "DESC"),
    };
    let after = if query.after.is_some() {
        format!(" AND (created_at, id) {cmp} (?3, ?4)")
    } else {
        String::new()
    };
    format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE session_id = ?1{after} \
         ORDER BY created_at {dir}, id {dir} LIMIT ?2"
    )
}

pub fn list_messages(
    conn: &Connection,
    session: &SessionId,
    query: &MessageListQuery,
) -> StorageResult<(Page<Message, MessageCursor>, i64)> {
    snapshot(conn, |conn| {
        let version: i64 = conn
            .prepare_cached("SELECT version FROM sessions WHERE id = ?1")
            .context("preparing a session check")?
            .query_row([session.as_str()], |row| row.get(0))
            .optional()
            .context("checking the session")?
            .ok_or_else(|| StorageError::session_not_found(session.as_str()))?;
        let mut params: Vec<Value> = vec![
            Value::Text(session.as_str().to_owned()),
            Value::Integer(i64::from(query.limit.get()) + 1),
        ];
        if let Some(cursor) = &query.after {
            params.push(Value::Integer(cursor.created_at));
            params.push(Value::Text(cursor.id.as_str().to_owned()));
        }
        let items = conn
            .prepare_cached(&message_list_sql(query))
            .context("preparing a message list")?
            .query_map(params_from_iter(params), rows::message)
            .context("listing messages")?
            .collect::<Result<Vec<_>, _>>()
            .context("reading messages")?;
        let page = paginate(items, query.limit.get(), |m| MessageCursor {
            order: query.order,
            created_at: m.created_at,
            id: m.id.clone(),
        });
        Ok((page, version))
    })
}

/// The SQL rendering the hits of one page (`:seqs`, a JSON array): snippets are cut from the
/// text here, for the page only.
pub const SEARCH_ROWS_SQL: &str = "SELECT seq, id, session_id, role, created_at, text \
     FROM messages WHERE seq IN (SELECT value FROM json_each(:seqs))";

/// Binds the named parameters a statement actually has (the rest are for other variants).
fn bind_named(statement: &mut Statement<'_>, values: &[(&str, Value)]) -> anyhow::Result<()> {
    for (name, value) in values {
        if let Some(index) = statement
            .parameter_index(name)
            .with_context(|| format!("looking up parameter {name}"))?
        {
            statement
                .raw_bind_parameter(index, value)
                .with_context(|| format!("binding parameter {name}"))?;
        }
    }
    Ok(())
}

/// One search page: ranked by the index among everything up to this read's snapshot of the
/// log, rendered from the same snapshot.
pub fn search(
    conn: &Connection,
    query: &SearchQuery,
    rankings: &Rankings,
    index: &dyn SearchIndex,
) -> StorageResult<Page<SearchHit, SearchCursor>> {
    snapshot(conn, |conn| {
        let source = SqlSource(conn);
        let heads = source.heads()?;
        let ranked = paging::rank(index, rankings, &source, heads, query)?;
        let items = render(conn, &query.terms, &ranked.page)?;
        Ok(Page {
            items,
            next: ranked.next,
        })
    })
}

/// The hits of one page, in ranking order, with snippets.
fn render(
    conn: &Connection,
    terms: &SearchTerms,
    page: &[(i64, f64)],
) -> StorageResult<Vec<SearchHit>> {
    if page.is_empty() {
        return Ok(Vec::new());
    }
    let seqs = serde_json::to_string(&page.iter().map(|(seq, _)| seq).collect::<Vec<_>>())
        .context("encoding the page's hits")?;
    let mut statement = conn
        .prepare_cached(SEARCH_ROWS_SQL)
        .context("preparing the search rows")?;
    bind_named(&mut statement, &[(":seqs", Value::Text(seqs))])?;
    let mut rows = statement.raw_query();
    let mut found = Vec::with_capacity(page.len());
    while let Some(row) = rows.next().context("rendering hits")? {
        found.push(HitRow {
            seq: row.get(0).context("reading a hit")?,
            message_id: row.get(1).context("reading a hit")?,
            session_id: row.get(2).context("reading a hit")?,
            role: row.get(3).context("reading a hit")?,
            created_at: row.get(4).context("reading a hit")?,
            text: row.get(5).context("reading a hit")?,
        });
    }
    Ok(paging::hits(terms, page, found)?)
}

pub fn session_text(
    conn: &Connection,
    id: &SessionId,
    max_bytes: usize,
) -> StorageResult<SessionText> {
    snapshot(conn, |conn| {
        let message_count: i64 = conn
            .prepare_cached("SELECT message_count FROM sessions WHERE id = ?1")
            .context("preparing a session lookup")?
            .query_row([id.as_str()], |row| row.get(0))
            .optional()
            .context("loading a session")?
            .ok_or_else(|| StorageError::session_not_found(id.as_str()))?;
        let mut statement = conn
            .prepare_cached(
                "SELECT text FROM messages WHERE session_id = ?1 AND text <> '' \
                 ORDER BY created_at DESC, id DESC",
            )
            .context("preparing the session text")?;
        let rows = statement
            .query_map([id.as_str()], |row| row.get::<_, String>(0))
            .context("reading the session text")?;
        Ok(SessionText::within_budget(message_count, rows, max_bytes)
            .context("reading a message text")?)
    })
}

pub fn event_bounds(conn: &Connection) -> StorageResult<EventBounds> {
    let (oldest, newest) = conn
        .prepare_cached(
            "SELECT (SELECT min(seq) FROM events), \
                    coalesce((SELECT max(seq) FROM events), \
                             (SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
        )
        .context("preparing the event bounds")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .context("reading the event bounds")?;
    Ok(EventBounds { oldest, newest })
}

/// The SQL of a replay chunk: `:after`, `:limit`, and `:session`/`:directory` when filtered.
pub fn events_after_sql(filter: &EventFilter) -> String {
    let mut sql = String::from(
        "SELECT seq, type, session_id, directory, at, data FROM events WHERE seq > :after",
    );
    if filter.session_id.is_some() {
        sql.push_str(" AND session_id = :session");
    }
    if filter.directory.is_some() {
        sql.push_str(" AND directory = :directory");
    }
    sql.push_str(" ORDER BY seq LIMIT :limit");
    sql
}

pub fn events_after(
    conn: &Connection,
    after: i64,
    filter: &EventFilter,
    limit: usize,
) -> StorageResult<Vec<Event>> {
    let mut statement = conn
        .prepare_cached(&events_after_sql(filter))
        .context("preparing an event replay")?;
    let mut values = vec![
        (":after", Value::Integer(after)),
        (":limit", Value::Integer(limit as i64)),
    ];
    if let Some(session) = &filter.session_id {
        values.push((":session", Value::Text(session.clone())));
    }
    if let Some(directory) = &filter.directory {
        values.push((":directory", Value::Text(directory.clone())));
    }
    bind_named(&mut statement, &values)?;
    let mut rows = statement.raw_query();
    let mut events = Vec::new();
    while let Some(row) = rows.next().context("replaying events")? {
        let kind: String = row.get(1).context("reading an event")?;
        events.push(Event {
            seq: row.get(0).context("reading an event")?,
            kind: EventKind::parse(&kind)
                .with_context(|| format!("the log holds an unknown event type {kind:?}"))?,
            session_id: SessionId::from_trusted(row.get(2).context("reading an event")?),
            directory: row.get(3).context("reading an event")?,
            at: row.get(4).context("reading an event")?,
            data: row.get(5).context("reading an event")?,
        });
    }
    Ok(events)
}

/// The targets of `originals` in the import map of `source`.
pub fn import_targets(
    conn: &Connection,
    source: &str,
    originals: &[String],
) -> StorageResult<Vec<Option<String>>> {
    let mut statement = conn
        .prepare_cached("SELECT target_id FROM import_map WHERE source = ?1 AND original_id = ?2")
        .context("preparing an import map lookup")?;
    let mut targets = Vec::with_capacity(originals.len());
    for original in originals {
        targets.push(
            statement
                .query_row([source, original.as_str()], |row| row.get(0))
                .optional()
                .context("reading the import map")?,
        );
    }
    Ok(targets)
}

/// Sessions in id order after `after`.
pub fn sessions_by_id(
    conn: &Connection,
    after: Option<&SessionId>,
    limit: u32,
) -> StorageResult<Vec<Session>> {
    let after = after.map_or("", SessionId::as_str);
    conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))
    .context("preparing a session walk")?
    .query_map(rusqlite::params![after, limit], rows::session)
    .context("walking sessions")?
    .collect::<Result<Vec<_>, _>>()
    .context("reading sessions")
    .map_err(Into::into)
}

/// The SQL of a [`MessageWalk`]: its start (`?1` through `?2`, up to `?3` rows), or where
/// the last call stopped (also `?4`, `?5`: the `created_at` and id of its last message).
pub fn message_walk_sql(continued: bool) -> String {
    let from = if continued {
        "(session_id, created_at, id) > (?1, ?4, ?5)"
    } else {
        "session_id >= ?1"
    };
    format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE {from} AND session_id <= ?2 \
         ORDER BY session_id, created_at, id LIMIT ?3"
    )
}

/// The messages of consecutive sessions (see [`MessageWalk`]).
pub fn messages_by_session(conn: &Connection, walk: &MessageWalk) -> StorageResult<Vec<Message>> {
    let mut params: Vec<Value> = vec![
        Value::Text(walk.from.as_str().to_owned()),
        Value::Text(walk.through.as_str().to_owned()),
        Value::Integer(i64::from(walk.limit)),
    ];
    if let Some((created_at, id)) = &walk.after {
        params.push(Value::Integer(*created_at));
        params.push(Value::Text(id.as_str().to_owned()));
    }
    conn.prepare_cached(&message_walk_sql(walk.after.is_some()))
        .context("preparing a message walk")?
        .query_map(params_from_iter(params), rows::message)
        .context("walking messages")?
        .collect::<Result<Vec<_>, _>>()
        .context("reading messages")
        .map_err(Into::into)
}

pub fn counts(conn: &Connection) -> StorageResult<crate::storage::Counts> {
    let (sessions, messages, keys): (i64, i64, i64) = conn
        .prepare_cached(crate::storage::COUNTS_SQL)
        .context("preparing the counts")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .context("counting")?;
    Ok(crate::storage::Counts {
        sessions: sessions as u64,
        messages: messages as u64,
        keys: keys as u64,
    })
}

pub fn check(conn: &Connection) -> StorageResult<()> {
    conn.prepare_cached("SELECT count(*) FROM (SELECT 1 FROM sessions LIMIT 1)")
        .context("preparing the readiness check")?
        .query_row([], |row| row.get::<_, i64>(0))
        .context("running the readiness check")?;
    Ok(())
}
