//! Every list query and every read search makes must be served by an index: this runs `EXPLAIN QUERY PLAN` on
//! each variant the HTTP API can produce and fails on a full scan of sessions or messages, or on
//! a sort of a whole list.

use rusqlite::Connection;

use super::{migrations, reads};
use crate::domain::{
    ArchivedFilter, IdGenerator, Limit, MessageCursor, MessageId, Order, SessionCursor, SessionId,
};
use crate::storage::{MessageListQuery, SessionFilter, SessionListQuery};

/// The plan of `sql`, every parameter bound to 1. `PRINT_PLANS=1` prints it (for debugging).
fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut statement = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    for index in 1..=statement.parameter_count() {
        statement.raw_bind_parameter(index, 1).unwrap();
    }
    let mut rows = statement.raw_query();
    let mut lines = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        lines.push(row.get::<_, String>(3).unwrap());
    }
    if std::env::var_os("PRINT_PLANS").is_some() {
        eprintln!("{sql}\n  {lines:?}");
    }
    lines
}

/// Tables (and the aliases the queries give them) that must never be read whole.
const GUARDED: &[&str] = &["sessions", "messages", "events", "m", "f", "s"];

/// A plan line that reads a whole guarded table (`SCAN t`, with or without walking an index
/// from end to end), or sorts a whole list.
fn violations(lines: &[String], allow_sort: bool) -> Vec<String> {
    lines
        .iter()
        .filter(|line| {
            let scanned = line
                .strip_prefix("SCAN ")
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|table| GUARDED.contains(&table));
            let sort = line.contains("TEMP B-TREE");
            scanned || (sort && !allow_sort)
        })
        .cloned()
        .collect()
}

/// Fails unless `sql`'s plan has no [`violations`] and a line containing `needle` (the index
/// that must serve it); `what` names the variant in the failure.
fn assert_served_by(conn: &Connection, sql: &str, needle: &str, what: &str) {
    let lines = plan(conn, sql);
    let bad = violations(&lines, false);
    assert!(bad.is_empty(), "{what}\n{sql}\n{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains(needle)),
        "{what}\n{sql}\n{lines:#?}"
    );
}

fn database() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    migrations::migrate(&mut conn).unwrap();
    if std::env::var_os("PLANS_WITH_STATS").is_some() || STATS.with(|s| s.get()) {
        populate(&conn);
    }
    conn
}

thread_local! {
    /// Set by the `*_with_statistics` tests: plan against a populated, analysed database.
    static STATS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Realistic data plus `ANALYZE`, as `PRAGMA optimize` would leave a long-running database:
/// the planner must still pick the indexes once it has statistics.
fn populate(conn: &Connection) {
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO sessions (id, directory, title, title_fold, parent_id, created_at,
                               updated_at, archived_at, message_count, version)
         SELECT printf('ses_%026d', i), '/dir/' || (i % 40), 'title ' || i, 'title ' || i,
                CASE WHEN i % 10 = 0 THEN printf('ses_%026d', i - 1) END,
                i, i * 7, CASE WHEN i % 20 = 0 THEN i END, 10, i FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO messages (id, session_id, role, parts, metadata, text, created_at)
         SELECT printf('msg_%026d', i), printf('ses_%026d', 1 + i % 3000), 'user', '[]', '{}',
                'word' || (i % 97) || ' login token', i FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO events (type, session_id, directory, at, data)
         SELECT 'message.created', printf('ses_%026d', 1 + i % 3000), '/dir/' || (i % 40), i, '{}'
         FROM n;
         ANALYZE;",
    )
    .unwrap();
}

#[test]
fn plans_hold_with_statistics() {
    STATS.with(|s| s.set(true));
    every_session_list_variant_uses_an_index();
    every_message_list_variant_uses_an_index();
    search_reads_walk_primary_keys();
    event_replay_and_pruning_walk_the_log_by_seq();
    STATS.with(|s| s.set(false));
}

fn ids() -> (SessionId, MessageId) {
    let mut generator = IdGenerator::default();
    let (_, a) = generator.next(1);
    let (_, b) = generator.next(2);
    (SessionId::from_value(a), MessageId::from_value(b))
}

#[test]
fn every_session_list_variant_uses_an_index() {
    let conn = database();
    let (session_id, _) = ids();
    let mut checked = 0;
    for archived in [
        ArchivedFilter::Hide,
        ArchivedFilter::Only,
        ArchivedFilter::All,
    ] {
        for mask in 0..32u8 {
            let query = SessionListQuery {
                filter: SessionFilter {
                    directory: (mask & 1 != 0).then(|| "/d".to_owned()),
                    roots_only: mask & 2 != 0,
                    updated_after: (mask & 4 != 0).then_some(5),
                    title_contains: (mask & 8 != 0).then(|| "x".to_owned()),
                    archived,
                },
                limit: Limit::DEFAULT,
                after: (mask & 16 != 0).then(|| SessionCursor {
                    updated_at: 9,
                    id: session_id.clone(),
                }),
            };
            let (sql, _) = reads::session_list_sql(&query);
            assert_served_by(&conn, &sql, "USING INDEX sessions_", &format!("{query:?}"));
            checked += 1;
        }
    }
    assert_eq!(checked, 96);
}

#[test]
fn every_message_list_variant_uses_an_index() {
    let conn = database();
    let (_, message_id) = ids();
    // The export's walk across sessions, at its start and where a page stopped.
    for continued in [false, true] {
        let sql = reads::message_walk_sql(continued);
        assert_served_by(
            &conn,
            &sql,
            "USING INDEX messages_session",
            "an export walk",
        );
    }
    for order in [Order::Asc, Order::Desc] {
        for with_cursor in [false, true] {
            let query = MessageListQuery {
                order,
                limit: Limit::DEFAULT,
                after: with_cursor.then(|| MessageCursor {
                    order,
                    created_at: 1,
                    id: message_id.clone(),
                }),
            };
            let sql = reads::message_list_sql(&query);
            assert_served_by(
                &conn,
                &sql,
                "USING INDEX messages_session",
                &format!("{query:?}"),
            );
        }
    }
}

/// What search reads from SQLite (ranking is the index's): the log heads, the page's rows by
/// `seq`, and the ranges of the log the index is fed from, each by primary key.
#[test]
fn search_reads_walk_primary_keys() {
    let conn = database();
    for (sql, needle) in [
        (
            reads::SEARCH_ROWS_SQL,
            "SEARCH messages USING INTEGER PRIMARY KEY (rowid=?)",
        ),
        (
            super::indexing::MESSAGES_SQL,
            "SEARCH m USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
        ),
        (
            super::indexing::DELETIONS_SQL,
            "SEARCH events USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)",
        ),
        (super::indexing::HEADS_SQL, ""),
    ] {
        assert_served_by(&conn, sql, needle, "a search read");
    }
}

#[test]
fn event_replay_and_pruning_walk_the_log_by_seq() {
    let conn = database();
    for (session, directory) in [(false, false), (true, false), (false, true), (true, true)] {
        let filter = crate::events::EventFilter {
            session_id: session.then(|| "ses_x".to_owned()),
            directory: directory.then(|| "/d".to_owned()),
        };
        let sql = reads::events_after_sql(&filter);
        assert_served_by(
            &conn,
            &sql,
            "INTEGER PRIMARY KEY (rowid>?)",
            "an event replay",
        );
    }
}
