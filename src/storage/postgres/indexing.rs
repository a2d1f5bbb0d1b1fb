//! What this instance's search index reads from PostgreSQL (see [`crate::search::Source`]):
//! the log heads from the `head` row, messages by `seq` and session deletions from the event
//! log, the same rows the SQLite source reads.
//!
//! [`Source`] is synchronous and the client is async, and neither side may block a runtime
//! worker thread. The background indexer (a thread of its own) gets [`IndexerSource`]: a
//! connection driven by a small runtime of its own, so it never depends on (nor outlives
//! into) the server's runtime. A search gets [`SearchSource`], used from `spawn_blocking`:
//! it borrows a pooled connection and waits on the server's runtime for its few reads of
//! the tail.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio::runtime::Handle;
use tokio_postgres::{Client, NoTls};

use crate::search::{Doc, Heads, Source};
use crate::storage::{INDEX_DELETIONS_SQL, INDEX_MESSAGES_SQL, OLDEST_EVENT_SQL};

/// The heads, both committed data: `head.seq` is the newest committed event and
/// `head.messages` the newest committed message (see migration 0004). Never the identity
/// sequence, which may be ahead by a batch still in flight.
pub const HEADS_SQL: &str = "SELECT messages, seq FROM head WHERE id = 1";

type Read<'c, T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'c>>;

async fn heads(client: &Client) -> anyhow::Result<Heads> {
    let row = client
        .query_one(HEADS_SQL, &[])
        .await
        .context("reading the log heads")?;
    Ok(Heads {
        messages: row.try_get(0).context("reading the messages head")?,
        events: row.try_get(1).context("reading the events head")?,
    })
}

async fn messages(
    client: &Client,
    after: i64,
    upto: i64,
    limit: usize,
) -> anyhow::Result<Vec<Doc>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(INDEX_MESSAGES_SQL, &[&after, &upto, &limit])
        .await
        .context("reading the messages to index")?;
    rows.iter()
        .map(|row| {
            Ok(Doc {
                seq: row.try_get(0)?,
                session_id: row.try_get(1)?,
                directory: row.try_get(2)?,
                role: row.try_get(3)?,
                created_at: row.try_get(4)?,
                text: row.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .context("reading a message to index")
}

async fn deletions(client: &Client, after: i64, upto: i64) -> anyhow::Result<Vec<(i64, String)>> {
    let rows = client
        .query(INDEX_DELETIONS_SQL, &[&after, &upto])
        .await
        .context("reading the session deletions")?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .context("reading a session deletion")
}

async fn oldest_event(client: &Client) -> anyhow::Result<Option<i64>> {
    client
        .query_one(OLDEST_EVENT_SQL, &[])
        .await
        .context("reading the oldest event")?
        .try_get(0)
        .context("reading the oldest event")
}

/// Runs one read on a connection and waits for it (the one thing the two sources differ in).
trait Blocking {
    fn block<T>(&self, read: impl for<'c> FnOnce(&'c Client) -> Read<'c, T>) -> anyhow::Result<T>;
}

impl<B: Blocking> Source for B {
    fn heads(&self) -> anyhow::Result<Heads> {
        self.block(|c| Box::pin(heads(c)))
    }

    fn messages(&self, after: i64, upto: i64, limit: usize) -> anyhow::Result<Vec<Doc>> {
        self.block(|c| Box::pin(messages(c, after, upto, limit)))
    }

    fn deletions(&self, after: i64, upto: i64) -> anyhow::Result<Vec<(i64, String)>> {
        self.block(|c| Box::pin(deletions(c, after, upto)))
    }

    fn oldest_event(&self) -> anyhow::Result<Option<i64>> {
        self.block(|c| Box::pin(oldest_event(c)))
    }
}

/// The indexer's source: its own connection on its own single-threaded runtime, driven only
/// while a read runs (reconnecting after the connection was lost).
pub struct IndexerSource {
    config: tokio_postgres::Config,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    client: Mutex<Option<Client>>,
}

impl Drop for IndexerSource {
    /// The search tail's source is dropped with the index, which may happen on a runtime
    /// worker, where a runtime may not be dropped by blocking: its connection task is
    /// abandoned instead (it ends when the client goes).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl IndexerSource {
    pub fn new(config: tokio_postgres::Config) -> anyhow::Result<IndexerSource> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the search indexer's runtime")?;
        Ok(IndexerSource {
            config,
            runtime: Some(runtime),
            client: Mutex::new(None),
        })
    }
}

impl Blocking for IndexerSource {
    fn block<T>(&self, read: impl for<'c> FnOnce(&'c Client) -> Read<'c, T>) -> anyhow::Result<T> {
        let mut client = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let runtime = self
            .runtime
            .as_ref()
            .context("the search indexer's runtime is gone")?;
        runtime.block_on(async {
            if client.as_ref().is_none_or(Client::is_closed) {
                let (connected, connection) = self
                    .config
                    .connect(NoTls)
                    .await
                    .context("connecting the search indexer to PostgreSQL")?;
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::warn!(%error, "the search indexer's connection ended");
                    }
                });
                *client = Some(connected);
            }
            match client.as_ref() {
                Some(client) => read(client).await,
                None => anyhow::bail!("the search indexer has no connection"),
            }
        })
    }
}

/// A search's source: a pooled connection, waited on from a blocking thread (never call it on
/// a runtime worker).
pub struct SearchSource {
    pub pool: Pool,
    pub handle: Handle,
}

impl Blocking for SearchSource {
    fn block<T>(&self, read: impl for<'c> FnOnce(&'c Client) -> Read<'c, T>) -> anyhow::Result<T> {
        self.handle.block_on(async {
            let client = self
                .pool
                .get()
                .await
                .context("no PostgreSQL connection for the search tail")?;
            read(&client).await
        })
    }
}
