//! The read queries. Each list is a keyset query walking an index in its sort order, so a page
//! costs the rows it returns (plus those its filters skip), never a sort of the whole table; the
//! `query_plans` test holds every variant to that.

use anyhow::Context;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::fts;
use super::rows::{self, MESSAGE_COLUMNS, SESSION_COLUMNS};
use crate::domain::{
    ArchivedFilter, Message, MessageCursor, MessageId, Order, Page, Role, SearchCursor, SearchHit,
    Session, SessionCursor, SessionId,
};
use crate::storage::{
    MessageListQuery, SearchQuery, SessionFilter, SessionListQuery, SessionText, StorageError,
    StorageResult,
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
) -> StorageResult<Page<Message, MessageCursor>> {
    snapshot(conn, |conn| {
        let exists = conn
            .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1")
            .context("preparing a session check")?
            .exists([session.as_str()])
            .context("checking the session")?;
        if !exists {
            return Err(StorageError::session_not_found(session.as_str()));
        }
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
        Ok(paginate(items, query.limit.get(), |m| MessageCursor {
            order: query.order,
            created_at: m.created_at,
            id: m.id.clone(),
        }))
    })
}

/// The SQL of a search page; parameters: ?1 match, ?2 cap, ?3 limit, then filters and cursor.
pub fn search_sql(query: &SearchQuery) -> String {
    let mut sql = String::from(
        "SELECT m.seq, m.id, m.session_id, m.role, m.created_at, \
         snippet(messages_fts, 0, '<mark>', '</mark>', '…', 24), messages_fts.rank \
         FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid \
         WHERE messages_fts MATCH ?1 AND messages_fts.rowid <= ?2",
    );
    let mut next = 4;
    if query.session_id.is_some() {
        sql.push_str(&format!(" AND m.session_id = ?{next}"));
        next += 1;
    }
    if query.directory.is_some() {
        sql.push_str(&format!(
            " AND m.session_id IN (SELECT id FROM sessions WHERE directory = ?{next})"
        ));
        next += 1;
    }
    if query.after.is_some() {
        sql.push_str(&format!(
            " AND (messages_fts.rank > ?{next} OR (messages_fts.rank = ?{next} \
             AND messages_fts.rowid > ?{}))",
            next + 1
        ));
    }
    sql.push_str(" ORDER BY messages_fts.rank, messages_fts.rowid LIMIT ?3");
    sql
}

pub fn search(
    conn: &Connection,
    query: &SearchQuery,
) -> StorageResult<Page<SearchHit, SearchCursor>> {
    let Some(expression) = fts::match_expression(&query.terms) else {
        return Ok(Page {
            items: Vec::new(),
            next: None,
        });
    };
    snapshot(conn, |conn| {
        let cap = match &query.after {
            Some(cursor) => cursor.cap,
            None => conn
                .prepare_cached("SELECT coalesce(max(seq), 0) FROM messages")
                .context("preparing the search cap")?
                .query_row([], |row| row.get(0))
                .context("reading the search cap")?,
        };
        let mut params: Vec<Value> = vec![
            Value::Text(expression.clone()),
            Value::Integer(cap),
            Value::Integer(i64::from(query.limit.get()) + 1),
        ];
        if let Some(session) = &query.session_id {
            params.push(Value::Text(session.as_str().to_owned()));
        }
        if let Some(directory) = &query.directory {
            params.push(Value::Text(directory.clone()));
        }
        if let Some(cursor) = &query.after {
            // bm25 depends on corpus statistics, which move as messages are written: rank the
            // page boundary under today's statistics, or the next page would be cut at a stale
            // value (repeating or skipping hits near it).
            let rank: Option<f64> = conn
                .prepare_cached(
                    "SELECT rank FROM messages_fts WHERE messages_fts MATCH ?1 AND rowid = ?2",
                )
                .context("preparing the boundary rank")?
                .query_row(params![expression, cursor.seq], |row| row.get(0))
                .optional()
                .context("ranking the page boundary")?;
            params.push(Value::Real(rank.unwrap_or(cursor.rank)));
            params.push(Value::Integer(cursor.seq));
        }
        let rows = conn
            .prepare_cached(&search_sql(query))
            .context("preparing a search")?
            .query_map(params_from_iter(params), |row| {
                let role: String = row.get(3)?;
                let rank: f64 = row.get(6)?;
                let hit = SearchHit {
                    message_id: MessageId::from_trusted(row.get(1)?),
                    session_id: SessionId::from_trusted(row.get(2)?),
                    role: Role::parse(&role)
                        .ok_or_else(|| rows::conversion(3, format!("unknown role {role:?}")))?,
                    created_at: row.get(4)?,
                    snippet: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    score: -rank,
                };
                Ok((row.get::<_, i64>(0)?, rank, hit))
            })
            .context("searching")?
            .collect::<Result<Vec<_>, _>>()
            .context("reading search results")?;
        let page = paginate(rows, query.limit.get(), |(seq, rank, _)| SearchCursor {
            rank: *rank,
            seq: *seq,
            cap,
        });
        Ok(Page {
            items: page.items.into_iter().map(|(_, _, hit)| hit).collect(),
            next: page.next,
        })
    })
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
        let mut rows = statement
            .query([id.as_str()])
            .context("reading the session text")?;
        let mut texts = Vec::new();
        let mut budget = max_bytes;
        while let Some(row) = rows.next().context("reading the session text")? {
            let text: String = row.get(0).context("reading a message text")?;
            if text.len() > budget {
                break;
            }
            budget -= text.len();
            texts.push(text);
        }
        texts.reverse();
        Ok(SessionText {
            message_count,
            texts,
        })
    })
}

pub fn check(conn: &Connection) -> StorageResult<()> {
    conn.prepare_cached("SELECT count(*) FROM (SELECT 1 FROM sessions LIMIT 1)")
        .context("preparing the readiness check")?
        .query_row([], |row| row.get::<_, i64>(0))
        .context("running the readiness check")?;
    Ok(())
}
