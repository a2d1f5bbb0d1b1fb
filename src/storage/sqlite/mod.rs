//! The embedded SQLite backend: the default, needing no set-up.
//!
//! One file in the data dir (`sessiond.db`, WAL mode), one writer thread that group-commits
//! (see [`writer`]), and a pool of read-only connections (see [`pool`]). The data dir is locked
//! for the life of the process so two servers never write one database. Search is a derived
//! index in `search/` beside the database (see [`crate::search`]), fed from the database by
//! `seq`.

mod indexing;
pub mod keys;
pub mod migrations;
mod pool;
mod reads;
mod rows;
mod webhooks;
mod writer;
mod writes;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, bail};
use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};

pub use writer::CommitHook;

use self::pool::ReadPool;
use self::writer::{WriterHandle, WriterOptions};
use super::{
    Counts, EventBounds, ImportMapping, ImportSession, ImportedSession, MessageListQuery,
    MessageWalk, SearchQuery, SessionListQuery, SessionText, Storage, StorageResult,
};
use crate::domain::keys::{ApiKey, NewKey};
use crate::domain::{
    IdGenerator, Message, MessageCursor, MessageId, NewMessage, NewSession, Page, SearchCursor,
    SearchHit, Session, SessionCursor, SessionId, SessionPatch,
};
use crate::events::{Event, EventFilter};
use crate::search::{IndexOptions, SearchIndex, TantivyIndex};
use crate::webhooks::model::{
    Delivery, DeliveryCounts, DeliveryStatus, Endpoint, EndpointPatch, NewEndpoint,
};
use crate::webhooks::store::{AttemptRecord, Due, OutboxStats, WebhookStore};

/// The database file inside the data dir.
pub const DATABASE_FILE: &str = "sessiond.db";
/// The search index's dir inside the data dir.
pub const SEARCH_DIR: &str = "search";
const LOCK_FILE: &str = "sessiond.lock";

/// How to open the SQLite backend.
#[derive(Clone)]
pub struct SqliteOptions {
    pub data_dir: PathBuf,
    /// Read-only connections in the pool, at most (opened as concurrent reads need them).
    pub read_connections: usize,
    /// Read-only connections, at most, of the reads that run under a worker turn (searches,
    /// and the text of a summary), as many as may run at once. A turn is scarce: waiting for a
    /// connection in the queue of the cheap reads would hold it tens of milliseconds longer
    /// under a mixed load, and the turns' pools, not the CPU, would become the bottleneck.
    pub heavy_connections: usize,
    /// Writes that may wait for the writer before callers are made to wait.
    pub writer_queue: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Called with the events of each committed batch.
    pub on_commit: Option<CommitHook>,
    /// A search index rebuilt over at most this many messages is built before `open` returns.
    pub search_index_foreground: u64,
    /// Bytes of the database file each read connection maps (SQLite's `mmap_size`). Pages
    /// read through the map cost no copy, but every page touched counts in the process's
    /// RSS: a command that reads the whole database once (`export`) sets 0, which took the
    /// same time there and a sixth of the memory (BENCHMARKS.md).
    pub read_mmap_bytes: u64,
    /// This process writes in bulk and searches nothing (see [`IndexOptions::bulk`]).
    pub search_index_bulk: bool,
}

impl SqliteOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            data_dir: data_dir.into(),
            read_connections: 8,
            heavy_connections: 5,
            writer_queue: 4096,
            max_batch: 512,
            on_commit: None,
            search_index_foreground: 20_000,
            read_mmap_bytes: 256 << 20,
            search_index_bulk: false,
        }
    }
}

pub struct SqliteStorage {
    path: PathBuf,
    identity: String,
    rankings: Arc<crate::search::paging::Rankings>,
    index: Arc<TantivyIndex>,
    writer: WriterHandle,
    readers: ReadPool,
    /// See [`SqliteOptions::heavy_connections`].
    heavy: ReadPool,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    /// Held (locked) until the storage is dropped.
    _lock: File,
}

impl SqliteStorage {
    /// Opens (creating and migrating when needed) the database in `options.data_dir`. Blocking.
    pub fn open(options: SqliteOptions) -> anyhow::Result<SqliteStorage> {
        let dir = &options.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data dir {}", dir.display()))?;
        let lock = lock_data_dir(dir)?;
        let path = dir.join(DATABASE_FILE);

        let mut conn = open_writer(&path)?;
        migrations::migrate(&mut conn)
            .with_context(|| format!("migrating the database {}", path.display()))?;
        let ids = IdGenerator::starting_after(newest_timestamp(&conn)?);
        let identity: String = conn
            .query_row(
                "SELECT (SELECT value FROM meta WHERE key = 'database_id') || 'g' || \
                        (SELECT value FROM meta WHERE key = 'generation')",
                [],
                |row| row.get(0),
            )
            .context("reading the database identity")?;

        let database_id: String = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'database_id'",
                [],
                |row| row.get(0),
            )
            .context("reading the database id")?;
        let mmap = options.read_mmap_bytes;
        let mut index_options = IndexOptions::new(dir.join(SEARCH_DIR), database_id);
        index_options.build_in_foreground =
            i64::try_from(options.search_index_foreground).unwrap_or(i64::MAX);
        if options.search_index_bulk {
            index_options = index_options.bulk();
        }
        let index = TantivyIndex::open(
            index_options,
            Box::new(indexing::OwnedSource(open_reader(&path, mmap)?)),
            Box::new(indexing::OwnedSource(open_reader(&path, mmap)?)),
        )?;
        let opener: pool::Opener = {
            let path = path.clone();
            Arc::new(move || open_reader(&path, mmap))
        };
        let readers = ReadPool::open(options.read_connections, opener.clone())?;
        let heavy = ReadPool::open(options.heavy_connections, opener)?;
        let (writer, thread) = writer::spawn(
            conn,
            ids,
            WriterOptions {
                queue_capacity: options.writer_queue,
                max_batch: options.max_batch.max(1),
                on_commit: options.on_commit.clone(),
            },
        )?;
        Ok(SqliteStorage {
            path,
            identity,
            rankings: Arc::default(),
            index,
            writer,
            readers,
            heavy,
            writer_thread: Mutex::new(Some(thread)),
            _lock: lock,
        })
    }
}

fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    super::lock_dir(dir, LOCK_FILE, "the data dir")
}

fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the database {}", path.display()))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .context("switching the database to WAL mode")?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("the database refused WAL mode (it stayed in {mode} mode)");
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss.
    // A 16 MiB page cache, not more: at the end of every transaction SQLite walks the cache's
    // hash table to drop pages past the end of the file, and with 64 MiB that walk took 10% of
    // the writer thread's CPU under 32 appending clients (perf, 1M messages; 2.9% at 16 MiB).
    // The operating system's page cache keeps the rest of the hot pages close anyway.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA busy_timeout = 5000;
         PRAGMA cache_size = -16384;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;",
    )
    .context("configuring the write connection")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn open_reader(path: &Path, mmap_bytes: u64) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening a read connection to {}", path.display()))?;
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000;
         PRAGMA query_only = ON;
         PRAGMA cache_size = -16384;
         PRAGMA temp_store = MEMORY;",
    )
    .context("configuring a read connection")?;
    conn.pragma_update(
        None,
        "mmap_size",
        i64::try_from(mmap_bytes).unwrap_or(i64::MAX),
    )
    .context("configuring a read connection's map")?;
    // Enough for every list, search and filter variant to stay prepared.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// The newest timestamp stored, so ids keep increasing across restarts.
fn newest_timestamp(conn: &Connection) -> anyhow::Result<i64> {
    conn.query_row(
        "SELECT max(
            coalesce((SELECT max(updated_at) FROM sessions WHERE archived = 0), 0),
            coalesce((SELECT max(updated_at) FROM sessions WHERE archived = 1), 0),
            coalesce((SELECT created_at FROM messages ORDER BY seq DESC LIMIT 1), 0),
            coalesce((SELECT at FROM events ORDER BY seq DESC LIMIT 1), 0))",
        [],
        |row| row.get(0),
    )
    .context("reading the newest stored timestamp")
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn create_session(&self, new: NewSession) -> StorageResult<Session> {
        self.writer
            .write(move |ctx| writes::create_session(ctx, new))
            .await
    }

    async fn get_session(&self, id: &SessionId) -> StorageResult<Session> {
        let id = id.clone();
        self.readers
            .read(move |conn| reads::get_session(conn, &id))
            .await
    }

    async fn list_sessions(
        &self,
        query: SessionListQuery,
    ) -> StorageResult<Page<Session, SessionCursor>> {
        self.readers
            .read(move |conn| reads::list_sessions(conn, &query))
            .await
    }

    async fn update_session(&self, id: SessionId, patch: SessionPatch) -> StorageResult<Session> {
        self.writer
            .write(move |ctx| writes::update_session(ctx, id, patch))
            .await
    }

    async fn delete_session(&self, id: SessionId) -> StorageResult<()> {
        self.writer
            .write(move |ctx| writes::delete_session(ctx, id))
            .await
    }

    async fn append_message(&self, session: SessionId, new: NewMessage) -> StorageResult<Message> {
        self.writer
            .write(move |ctx| writes::append_message(ctx, session, new))
            .await
    }

    async fn get_message(&self, id: &MessageId) -> StorageResult<Message> {
        let id = id.clone();
        self.readers
            .read(move |conn| reads::get_message(conn, &id))
            .await
    }

    async fn list_messages(
        &self,
        session: &SessionId,
        query: MessageListQuery,
    ) -> StorageResult<(Page<Message, MessageCursor>, i64)> {
        let session = session.clone();
        self.readers
            .read(move |conn| reads::list_messages(conn, &session, &query))
            .await
    }

    async fn search(&self, query: SearchQuery) -> StorageResult<Page<SearchHit, SearchCursor>> {
        let rankings = self.rankings.clone();
        let index = self.index.clone();
        self.heavy
            .read(move |conn| reads::search(conn, &query, &rankings, &*index))
            .await
    }

    async fn session_text(&self, id: &SessionId, max_bytes: usize) -> StorageResult<SessionText> {
        let id = id.clone();
        self.heavy
            .read(move |conn| reads::session_text(conn, &id, max_bytes))
            .await
    }

    async fn event_bounds(&self) -> StorageResult<EventBounds> {
        self.readers.read(reads::event_bounds).await
    }

    async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> StorageResult<Vec<Event>> {
        let filter = filter.clone();
        self.readers
            .read(move |conn| reads::events_after(conn, after, &filter, limit))
            .await
    }

    async fn prune_events(&self, older_than: i64, keep: u64) -> StorageResult<u64> {
        let mut total = 0;
        loop {
            let deleted = self
                .writer
                .write(move |ctx| writes::prune_events(ctx, older_than, keep))
                .await?;
            total += deleted;
            if deleted < writes::PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn create_key(&self, new: NewKey, hash: String, hint: String) -> StorageResult<ApiKey> {
        self.writer
            .write(move |ctx| keys::create(ctx.conn, &new, &hash, &hint))
            .await
    }

    async fn list_keys(&self) -> StorageResult<Vec<ApiKey>> {
        self.readers.read(keys::list).await
    }

    async fn revoke_key(&self, id: &str) -> StorageResult<ApiKey> {
        let id = id.to_owned();
        self.writer
            .write(move |ctx| keys::revoke(ctx.conn, &id))
            .await
    }

    async fn find_key(&self, hash: &str) -> StorageResult<Option<ApiKey>> {
        let hash = hash.to_owned();
        self.readers.read(move |conn| keys::find(conn, &hash)).await
    }

    async fn import(&self, sessions: Vec<ImportSession>) -> StorageResult<()> {
        self.writer
            .write(move |ctx| writes::import(ctx, sessions))
            .await
    }

    async fn import_session(
        &self,
        item: ImportSession,
        mapping: ImportMapping,
    ) -> StorageResult<ImportedSession> {
        self.writer
            .write(move |ctx| writes::import_session(ctx, item, mapping))
            .await
    }

    async fn import_targets(
        &self,
        source: &str,
        originals: Vec<String>,
    ) -> StorageResult<Vec<Option<String>>> {
        let source = source.to_owned();
        self.readers
            .read(move |conn| reads::import_targets(conn, &source, &originals))
            .await
    }

    async fn sessions_by_id(
        &self,
        after: Option<SessionId>,
        limit: u32,
    ) -> StorageResult<Vec<Session>> {
        self.readers
            .read(move |conn| reads::sessions_by_id(conn, after.as_ref(), limit))
            .await
    }

    async fn messages_by_session(&self, walk: MessageWalk) -> StorageResult<Vec<Message>> {
        self.readers
            .read(move |conn| reads::messages_by_session(conn, &walk))
            .await
    }

    async fn export_keys(&self) -> StorageResult<Vec<(ApiKey, String)>> {
        self.readers.read(keys::export).await
    }

    async fn import_keys(&self, list: Vec<(ApiKey, String)>) -> StorageResult<()> {
        self.writer
            .write(move |ctx| keys::import(ctx.conn, &list))
            .await
    }

    async fn counts(&self) -> StorageResult<Counts> {
        self.readers.read(reads::counts).await
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn writer_queue_depth(&self) -> usize {
        self.writer.queue_depth()
    }

    fn disk_bytes(&self) -> Option<u64> {
        let size = |suffix: &str| {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            std::fs::metadata(name).map(|m| m.len()).unwrap_or(0)
        };
        Some(size("") + size("-wal") + size("-shm"))
    }

    fn search_status(&self) -> Option<crate::search::Status> {
        Some(self.index.status())
    }

    fn webhooks(&self) -> Option<&dyn WebhookStore> {
        Some(self)
    }

    async fn check(&self) -> StorageResult<()> {
        self.readers.read(reads::check).await
    }

    async fn close(&self) {
        self.writer.close().await;
        self.readers.close();
        self.heavy.close();
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            // The writer has already answered `close`; joining only reaps the thread.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // Commits what the indexer was fed, so a restart has nothing to catch up.
        let index = self.index.clone();
        let _ = tokio::task::spawn_blocking(move || index.close()).await;
    }
}

#[async_trait]
impl WebhookStore for SqliteStorage {
    async fn create_endpoint(&self, new: NewEndpoint, max: usize) -> StorageResult<Endpoint> {
        self.writer
            .write(move |ctx| webhooks::create(ctx, new, max))
            .await
    }

    async fn list_endpoints(
        &self,
        limit: u32,
        after: Option<String>,
    ) -> StorageResult<Page<Endpoint, String>> {
        self.readers
            .read(move |conn| webhooks::list(conn, limit, after.as_deref()))
            .await
    }

    async fn get_endpoint(&self, id: &str) -> StorageResult<(Endpoint, DeliveryCounts)> {
        let id = id.to_owned();
        self.readers
            .read(move |conn| webhooks::get(conn, &id))
            .await
    }

    async fn update_endpoint(&self, id: &str, patch: EndpointPatch) -> StorageResult<Endpoint> {
        let id = id.to_owned();
        self.writer
            .write(move |ctx| webhooks::update(ctx, &id, patch))
            .await
    }

    async fn delete_endpoint(&self, id: &str) -> StorageResult<()> {
        let id = id.to_owned();
        self.writer
            .write(move |ctx| webhooks::delete(ctx, &id))
            .await
    }

    async fn rotate_secret(
        &self,
        id: &str,
        secret: String,
        previous_until: i64,
    ) -> StorageResult<Endpoint> {
        let id = id.to_owned();
        self.writer
            .write(move |ctx| webhooks::rotate(ctx, &id, secret, previous_until))
            .await
    }

    async fn list_deliveries(
        &self,
        id: &str,
        status: Option<DeliveryStatus>,
        limit: u32,
        before: Option<i64>,
    ) -> StorageResult<Page<Delivery, i64>> {
        let id = id.to_owned();
        self.readers
            .read(move |conn| webhooks::deliveries(conn, &id, status, limit, before))
            .await
    }

    async fn replay(&self, id: &str, since: i64) -> StorageResult<u64> {
        let id = id.to_owned();
        self.writer
            .write(move |ctx| webhooks::replay(ctx, &id, since))
            .await
    }

    async fn all_endpoints(&self) -> StorageResult<Vec<Endpoint>> {
        self.readers.read(webhooks::all).await
    }

    /// One instance per database: nothing to lease (the loop tracks what it has in flight).
    async fn due(
        &self,
        now: i64,
        _lease_until: i64,
        per_endpoint: u32,
        limit: u32,
    ) -> StorageResult<Vec<Due>> {
        self.readers
            .read(move |conn| webhooks::due(conn, now, per_endpoint, limit))
            .await
    }

    async fn next_due(&self) -> StorageResult<Option<i64>> {
        self.readers.read(webhooks::next_due).await
    }

    async fn event(&self, seq: i64) -> StorageResult<Option<Event>> {
        self.readers
            .read(move |conn| webhooks::event(conn, seq))
            .await
    }

    async fn record(&self, record: AttemptRecord) -> StorageResult<()> {
        self.writer
            .write(move |ctx| webhooks::record(ctx, record))
            .await
    }

    async fn defer(&self, endpoint_id: &str, until: i64) -> StorageResult<()> {
        let id = endpoint_id.to_owned();
        self.writer
            .write(move |ctx| webhooks::defer(ctx, &id, until))
            .await
    }

    async fn stats(&self) -> StorageResult<OutboxStats> {
        self.readers.read(webhooks::stats).await
    }

    async fn prune(&self, before: i64) -> StorageResult<u64> {
        let mut total = 0;
        loop {
            let deleted = self
                .writer
                .write(move |ctx| webhooks::prune(ctx, before))
                .await?;
            total += deleted;
            if deleted < webhooks::PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod query_plans;
