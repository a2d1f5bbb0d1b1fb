//! What the search index reads from SQLite: the log heads, messages by `seq` and session
//! deletions from the event log (see [`crate::search::Source`]).

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

use crate::search::{Doc, Heads, Source};

/// The heads from `sqlite_sequence`: the newest `seq` ever assigned, even when its row is
/// gone, so a deletion never moves a head back.
pub const HEADS_SQL: &str = "SELECT \
     coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0), \
     coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)";

pub use crate::storage::{
    INDEX_DELETIONS_SQL as DELETIONS_SQL, INDEX_MESSAGES_SQL as MESSAGES_SQL,
};

/// A [`Source`] over a borrowed connection (a search's own snapshot).
pub struct SqlSource<'a>(pub &'a Connection);

/// A [`Source`] over a connection of its own (the background indexer).
pub struct OwnedSource(pub Connection);

impl Source for SqlSource<'_> {
    fn heads(&self) -> anyhow::Result<Heads> {
        self.0
            .prepare_cached(HEADS_SQL)
            .context("preparing the log heads")?
            .query_row([], |row| {
                Ok(Heads {
                    messages: row.get(0)?,
                    events: row.get(1)?,
                })
            })
            .context("reading the log heads")
    }

    fn messages(&self, after: i64, upto: i64, limit: usize) -> anyhow::Result<Vec<Doc>> {
        let mut statement = self
            .0
            .prepare_cached(MESSAGES_SQL)
            .context("preparing the messages to index")?;
        let rows = statement
            .query_map(params![after, upto, limit as i64], |row| {
                Ok(Doc {
                    seq: row.get(0)?,
                    session_id: row.get(1)?,
                    directory: row.get(2)?,
                    role: row.get(3)?,
                    created_at: row.get(4)?,
                    text: row.get(5)?,
                })
            })
            .context("reading the messages to index")?;
        rows.collect::<Result<Vec<_>, _>>()
            .context("reading a message to index")
    }

    fn deletions(&self, after: i64, upto: i64) -> anyhow::Result<Vec<(i64, String)>> {
        let mut statement = self
            .0
            .prepare_cached(DELETIONS_SQL)
            .context("preparing the session deletions")?;
        let rows = statement
            .query_map(params![after, upto], |row| Ok((row.get(0)?, row.get(1)?)))
            .context("reading the session deletions")?;
        rows.collect::<Result<Vec<_>, _>>()
            .context("reading a session deletion")
    }

    fn oldest_event(&self) -> anyhow::Result<Option<i64>> {
        self.0
            .prepare_cached(crate::storage::OLDEST_EVENT_SQL)
            .context("preparing the oldest event")?
            .query_row([], |row| row.get(0))
            .optional()
            .map(Option::flatten)
            .context("reading the oldest event")
    }
}

impl Source for OwnedSource {
    fn heads(&self) -> anyhow::Result<Heads> {
        SqlSource(&self.0).heads()
    }

    fn messages(&self, after: i64, upto: i64, limit: usize) -> anyhow::Result<Vec<Doc>> {
        SqlSource(&self.0).messages(after, upto, limit)
    }

    fn deletions(&self, after: i64, upto: i64) -> anyhow::Result<Vec<(i64, String)>> {
        SqlSource(&self.0).deletions(after, upto)
    }

    fn oldest_event(&self) -> anyhow::Result<Option<i64>> {
        SqlSource(&self.0).oldest_event()
    }
}
