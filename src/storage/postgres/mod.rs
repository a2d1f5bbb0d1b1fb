//! The PostgreSQL backend: for deployments that run several sessiond instances on one database.
//!
//! The same contract as the SQLite backend (see [`crate::storage`]), kept across instances:
//! writes go through one batching writer per instance (see [`writer`]) whose transactions all
//! lock the one-row `head` table first, so event `seq` is gapless and in commit order across
//! every instance, and ids and timestamps never go backwards. Each instance hears the others'
//! commits through `LISTEN`/`NOTIFY` and replays them from the event log in order (see
//! [`feed`]), so its subscribers and caches see every change, once and in order, whichever
//! instance made it. Search is a tantivy index of each instance's own (in its
//! `search_index_dir`), fed from the shared log by `seq` (see [`indexing`] and
//! [`crate::search`]); searches read the heads from the database, so what any instance
//! committed before a search started is found, through the index's tail until it is indexed.

mod feed;
mod indexing;
pub mod migrations;
mod reads;
mod webhooks;
mod writer;
mod writes;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use self::feed::Feed;
use self::writer::Writer;
use super::CommitHook;
use super::{
    Counts, EventBounds, ImportMapping, ImportSession, ImportedSession, MessageListQuery,
    MessageWalk, SearchQuery, SessionListQuery, SessionText, Storage, StorageError, StorageResult,
};
use crate::domain::keys::{ApiKey, NewKey};
use crate::domain::{
    Message, MessageCursor, MessageId, NewMessage, NewSession, Page, SearchCursor, SearchHit,
    Session, SessionCursor, SessionId, SessionPatch,
};
use crate::events::{Event, EventFilter};
use crate::search::paging::{self, HitRow, Rankings};
use crate::search::{IndexOptions, SearchIndex, TantivyIndex};
use crate::webhooks::model::{
    Delivery, DeliveryCounts, DeliveryStatus, Endpoint, EndpointPatch, NewEndpoint,
};
use crate::webhooks::store::{AttemptRecord, Due, OutboxStats, WebhookStore};

/// A pooled connection (it caches prepared statements).
type Conn = deadpool_postgres::ClientWrapper;

/// Called with the id of a key revoked on any instance, or `None` when revocations may have
/// been missed (the listener reconnected): then every cached key must be forgotten.
pub type RevokeHook = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// How to open the PostgreSQL backend.
#[derive(Clone)]
pub struct PgOptions {
    /// A `postgres://` URL (or key=value connection string).
    pub url: String,
    /// Connections in the pool (the writer takes one of them per batch; the listener has
    /// its own).
    pub pool_size: usize,
    /// Writes that may wait for the writer before callers are made to wait.
    pub writer_queue: usize,
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Called with the events of every change, this instance's and the others', in order.
    pub on_commit: Option<CommitHook>,
    /// Called when a key is revoked on any instance.
    pub on_revoke: Option<RevokeHook>,
    /// Called with the events of this instance's own commits only (after `on_commit`), e.g.
    /// to tell other instances through another channel.
    pub on_local_commit: Option<CommitHook>,
    /// Called with this instance's committed events when they cannot be delivered in order
    /// yet (the log could not be read): caches must forget them at once; the events follow.
    pub on_stale: Option<CommitHook>,
    /// Where this instance keeps its search index; `None` opens no index (commands that never
    /// search), and searches then fail.
    pub search_index: Option<SearchIndexOptions>,
}

/// This instance's search index.
#[derive(Clone, Debug)]
pub struct SearchIndexOptions {
    /// The index's own dir (one per instance: it is locked while open).
    pub dir: std::path::PathBuf,
    /// An index rebuilt over at most this many messages is built before `open` returns.
    pub foreground: u64,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            pool_size: 16,
            writer_queue: 4096,
            max_batch: 512,
            on_commit: None,
            on_revoke: None,
            on_local_commit: None,
            on_stale: None,
            search_index: None,
        }
    }
}

/// The channel `NOTIFY`ing the newest event `seq` at every commit.
const EVENTS_CHANNEL: &str = "sessiond_events";
/// The channel `NOTIFY`ing the id of every revoked key.
const KEYS_CHANNEL: &str = "sessiond_keys";

pub struct PgStorage {
    pool: Pool,
    identity: String,
    writer: Writer,
    listener: tokio::task::JoinHandle<()>,
    size: Arc<AtomicU64>,
    sizing: tokio::task::JoinHandle<()>,
    search: Option<Search>,
}

/// This instance's search index and what its pages need.
struct Search {
    index: Arc<TantivyIndex>,
    rankings: Arc<Rankings>,
    /// Held (locked) until the storage is dropped.
    _lock: std::fs::File,
}

/// The lock file beside an index dir (not in it: a rebuild empties the dir).
const SEARCH_LOCK_SUFFIX: &str = ".lock";

/// Opens (creating, catching up or rebuilding) this instance's index of the database
/// `database_id` at `url`. Blocking: run it off the runtime's workers.
fn open_search(
    url: &str,
    database_id: String,
    options: &SearchIndexOptions,
) -> anyhow::Result<Search> {
    let dir = options.dir.clone();
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .map(|n| format!("{}{SEARCH_LOCK_SUFFIX}", n.to_string_lossy()))
        .unwrap_or_else(|| format!("search{SEARCH_LOCK_SUFFIX}"));
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("creating the search index's dir {}", parent.display()))?;
    let lock = super::lock_dir(&parent, &name, "the search index's dir").with_context(|| {
        format!(
            "give each instance its own search_index_dir ({})",
            dir.display()
        )
    })?;
    let config: tokio_postgres::Config = url
        .parse()
        .context("parsing the PostgreSQL connection URL (setting `database`)")?;
    let mut index_options = IndexOptions::new(dir, database_id);
    index_options.build_in_foreground = i64::try_from(options.foreground).unwrap_or(i64::MAX);
    let source = indexing::IndexerSource::new(config.clone())?;
    let tail_source = indexing::IndexerSource::new(config)?;
    let index = TantivyIndex::open(index_options, Box::new(source), Box::new(tail_source))?;
    Ok(Search {
        index,
        rankings: Arc::default(),
        _lock: lock,
    })
}

/// A pool of connections to `url`.
pub fn connect_pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .context("parsing the PostgreSQL connection URL (setting `database`)")?;
    if config.get_options().is_none() {
        // A stalled instance must not hold the `head` lock (and so every instance's writes)
        // for long: its transaction is ended after a minute of silence, and a writer waits at
        // most ten seconds for the lock (then its callers get 503 and may retry).
        config.options("-c idle_in_transaction_session_timeout=60000 -c lock_timeout=10000");
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .context("building the PostgreSQL connection pool")
}

impl PgStorage {
    /// Connects, migrates the schema when needed, and starts the writer and the listener.
    pub async fn open(options: PgOptions) -> anyhow::Result<PgStorage> {
        let pool = connect_pool(&options.url, options.pool_size)?;
        let mut client = pool.get().await.with_context(|| {
            format!(
                "connecting to PostgreSQL at {}",
                crate::config::redact_url(&options.url)
            )
        })?;
        migrations::migrate(&mut client).await?;
        let identity: String = client
            .query_one(
                "SELECT (SELECT value FROM meta WHERE key = 'database_id') || 'g' || \
                        (SELECT value FROM meta WHERE key = 'generation')",
                &[],
            )
            .await
            .context("reading the database identity")?
            .get(0);
        let head: i64 = client
            .query_one("SELECT seq FROM head WHERE id = 1", &[])
            .await
            .context("reading the head of the event log")?
            .get(0);
        let size = Arc::new(AtomicU64::new(
            database_size(&client)
                .await
                .context("reading the database size")?,
        ));
        let database_id: String = client
            .query_one("SELECT value FROM meta WHERE key = 'database_id'", &[])
            .await
            .context("reading the database id")?
            .get(0);
        drop(client);
        let search = match &options.search_index {
            Some(search) => {
                let (url, search) = (options.url.clone(), search.clone());
                // A foreground build and file I/O; the indexer's runtime is also made (and,
                // on failure, dropped) here, off the server's runtime.
                Some(
                    tokio::task::spawn_blocking(move || open_search(&url, database_id, &search))
                        .await
                        .context("opening the search index")??,
                )
            }
            None => None,
        };
        let sizing = tokio::spawn(watch_size(pool.clone(), size.clone()));
        let feed = Arc::new(Feed::new(pool.clone(), head, options.on_commit.clone()));
        let listener = tokio::spawn(feed::listen(
            options.url.clone(),
            feed.clone(),
            options.on_revoke.clone(),
        ));
        let writer = Writer::spawn(
            pool.clone(),
            feed.clone(),
            writer::WriterHooks {
                local: options.on_local_commit.clone(),
                stale: options.on_stale.clone(),
            },
            options.writer_queue,
            options.max_batch.max(1),
        );
        Ok(PgStorage {
            pool,
            identity,
            writer,
            listener,
            size,
            sizing,
            search,
        })
    }

    /// A pooled connection for a read (or a write outside the writer), its wait measured as
    /// the read-pool wait is on SQLite.
    async fn client(&self) -> StorageResult<deadpool_postgres::Object> {
        let waited = std::time::Instant::now();
        let client = get_client(&self.pool).await?;
        metrics::histogram!(crate::telemetry::metrics::READ_WAIT)
            .record(waited.elapsed().as_secs_f64());
        Ok(client)
    }
}

/// A pooled connection, or `Unavailable` when the database cannot be reached.
async fn get_client(pool: &Pool) -> StorageResult<deadpool_postgres::Object> {
    pool.get().await.map_err(|error| {
        tracing::warn!(error = %error, "no PostgreSQL connection");
        StorageError::Unavailable("the database cannot be reached")
    })
}

/// The database's size on disk (`pg_database_size` walks its files: read it seldom).
async fn database_size(client: &Conn) -> Result<u64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// Keeps `size` at the database's size on disk, read every five seconds after the first read
/// at open (the status page and `/metrics` read it often).
async fn watch_size(pool: Pool, size: Arc<AtomicU64>) {
    let period = Duration::from_secs(5);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        if let Ok(bytes) = database_size(&client).await {
            size.store(bytes, Ordering::Relaxed);
        }
    }
}

/// Context for a failed read or stand-alone statement: a lost or refused connection is
/// `Unavailable` (503, retry), a NUL character in a parameter (which PostgreSQL's text cannot
/// hold, so it can match nothing) is `Rejected` (400), anything else `Internal`.
fn db(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StorageError {
    move |error| {
        if let Some(unavailable) = unavailable(&error) {
            return unavailable;
        }
        if error.code() == Some(&tokio_postgres::error::SqlState::CHARACTER_NOT_IN_REPERTOIRE) {
            return StorageError::Rejected(
                "text with a NUL character (U+0000) cannot be stored or searched on this server"
                    .to_owned(),
            );
        }
        StorageError::Internal(anyhow::Error::new(error).context(what))
    }
}

/// Context for a failed statement inside the writer's batch: always `Internal`, which rolls
/// the batch back (PostgreSQL aborts the whole transaction after any error, so no later write
/// of the batch could succeed). Writes check what PostgreSQL would refuse before they write.
fn db_write(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StorageError {
    move |error| StorageError::Internal(anyhow::Error::new(error).context(what))
}

/// `Unavailable` for errors that mean the database cannot serve right now.
fn unavailable(error: &tokio_postgres::Error) -> Option<StorageError> {
    let class = error.code().map(|code| &code.code()[..2]);
    if error.is_closed() || matches!(class, Some("08" | "53" | "57")) {
        tracing::warn!(%error, "PostgreSQL is not serving");
        return Some(StorageError::Unavailable(
            "the database is not serving right now",
        ));
    }
    None
}

#[async_trait]
impl Storage for PgStorage {
    async fn create_session(&self, new: NewSession) -> StorageResult<Session> {
        self.writer
            .write(|ctx| Box::pin(writes::create_session(ctx, new)))
            .await
    }

    async fn get_session(&self, id: &SessionId) -> StorageResult<Session> {
        reads::get_session(&*self.client().await?, id).await
    }

    async fn list_sessions(
        &self,
        query: SessionListQuery,
    ) -> StorageResult<Page<Session, SessionCursor>> {
        reads::list_sessions(&*self.client().await?, &query).await
    }

    async fn update_session(&self, id: SessionId, patch: SessionPatch) -> StorageResult<Session> {
        self.writer
            .write(|ctx| Box::pin(writes::update_session(ctx, id, patch)))
            .await
    }

    async fn delete_session(&self, id: SessionId) -> StorageResult<()> {
        self.writer
            .write(|ctx| Box::pin(writes::delete_session(ctx, id)))
            .await
    }

    async fn append_message(&self, session: SessionId, new: NewMessage) -> StorageResult<Message> {
        self.writer
            .write(|ctx| Box::pin(writes::append_message(ctx, session, new)))
            .await
    }

    async fn get_message(&self, id: &MessageId) -> StorageResult<Message> {
        reads::get_message(&*self.client().await?, id).await
    }

    async fn list_messages(
        &self,
        session: &SessionId,
        query: MessageListQuery,
    ) -> StorageResult<(Page<Message, MessageCursor>, i64)> {
        reads::list_messages(&*self.client().await?, session, &query).await
    }

    async fn search(&self, query: SearchQuery) -> StorageResult<Page<SearchHit, SearchCursor>> {
        let Some(search) = &self.search else {
            return Err(StorageError::Internal(anyhow::anyhow!(
                "this process opened the database without a search index"
            )));
        };
        if query.terms.is_empty() {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
        // Committed data only, read after every write acknowledged before this search began
        // (on any instance): the index's tail covers whatever it has not indexed yet.
        let heads = {
            let client = self.client().await?;
            let row = client
                .query_one(indexing::HEADS_SQL, &[])
                .await
                .map_err(db("reading the log heads"))?;
            crate::search::Heads {
                messages: reads::get(&row, 0)?,
                events: reads::get(&row, 1)?,
            }
        };
        let index = search.index.clone();
        let rankings = search.rankings.clone();
        let source = indexing::SearchSource {
            pool: self.pool.clone(),
            handle: tokio::runtime::Handle::current(),
        };
        let terms = query.terms.clone();
        // Ranking is CPU work and the tail is read blocking: off the runtime's workers.
        let ranked = tokio::task::spawn_blocking(move || {
            paging::rank(&*index, &rankings, &source, heads, &query)
        })
        .await
        .context("a search task failed")??;
        let items = render(&*self.client().await?, &terms, &ranked.page).await?;
        Ok(Page {
            items,
            next: ranked.next,
        })
    }

    async fn session_text(&self, id: &SessionId, max_bytes: usize) -> StorageResult<SessionText> {
        reads::session_text(&*self.client().await?, id, max_bytes).await
    }

    async fn event_bounds(&self) -> StorageResult<EventBounds> {
        reads::event_bounds(&*self.client().await?).await
    }

    async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> StorageResult<Vec<Event>> {
        reads::events_after(&*self.client().await?, after, filter, limit).await
    }

    async fn prune_events(&self, older_than: i64, keep: u64) -> StorageResult<u64> {
        let client = self.client().await?;
        let mut total = 0;
        loop {
            let deleted = writes::prune_events(&client, older_than, keep).await?;
            total += deleted;
            if deleted < writes::PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn create_key(&self, new: NewKey, hash: String, hint: String) -> StorageResult<ApiKey> {
        writes::create_key(&*self.client().await?, &new, &hash, &hint).await
    }

    async fn list_keys(&self) -> StorageResult<Vec<ApiKey>> {
        reads::list_keys(&*self.client().await?).await
    }

    async fn revoke_key(&self, id: &str) -> StorageResult<ApiKey> {
        writes::revoke_key(&mut *self.client().await?, id).await
    }

    async fn find_key(&self, hash: &str) -> StorageResult<Option<ApiKey>> {
        reads::find_key(&*self.client().await?, hash).await
    }

    async fn import(&self, sessions: Vec<ImportSession>) -> StorageResult<()> {
        writes::import(&mut *self.client().await?, sessions).await
    }

    async fn import_session(
        &self,
        item: ImportSession,
        mapping: ImportMapping,
    ) -> StorageResult<ImportedSession> {
        self.writer
            .write(|ctx| Box::pin(writes::import_session(ctx, item, mapping)))
            .await
    }

    async fn import_targets(
        &self,
        source: &str,
        originals: Vec<String>,
    ) -> StorageResult<Vec<Option<String>>> {
        reads::import_targets(&*self.client().await?, source, &originals).await
    }

    async fn sessions_by_id(
        &self,
        after: Option<SessionId>,
        limit: u32,
    ) -> StorageResult<Vec<Session>> {
        reads::sessions_by_id(&*self.client().await?, after.as_ref(), limit).await
    }

    async fn messages_by_session(&self, walk: MessageWalk) -> StorageResult<Vec<Message>> {
        reads::messages_by_session(&*self.client().await?, &walk).await
    }

    async fn export_keys(&self) -> StorageResult<Vec<(ApiKey, String)>> {
        reads::export_keys(&*self.client().await?).await
    }

    async fn import_keys(&self, keys: Vec<(ApiKey, String)>) -> StorageResult<()> {
        writes::import_keys(&*self.client().await?, &keys).await
    }

    async fn counts(&self) -> StorageResult<Counts> {
        let client = self.client().await?;
        let row = client
            .query_one(super::COUNTS_SQL, &[])
            .await
            .map_err(db("counting"))?;
        let count = |i: usize| row.get::<_, i64>(i) as u64;
        Ok(Counts {
            sessions: count(0),
            messages: count(1),
            keys: count(2),
        })
    }

    fn identity(&self) -> &str {
        &self.identity
    }

    fn writer_queue_depth(&self) -> usize {
        self.writer.queue_depth()
    }

    fn disk_bytes(&self) -> Option<u64> {
        Some(self.size.load(Ordering::Relaxed))
    }

    fn search_status(&self) -> Option<crate::search::Status> {
        self.search.as_ref().map(|s| s.index.status())
    }

    fn webhooks(&self) -> Option<&dyn WebhookStore> {
        Some(self)
    }

    async fn check(&self) -> StorageResult<()> {
        let client = self.client().await?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(db("running the readiness check"))?;
        Ok(())
    }

    async fn close(&self) {
        self.writer.close().await;
        self.listener.abort();
        self.sizing.abort();
        self.pool.close();
        // Commits what the indexer was fed, so a restart has nothing to catch up.
        if let Some(search) = &self.search {
            let index = search.index.clone();
            let _ = tokio::task::spawn_blocking(move || index.close()).await;
        }
    }
}

/// The SQL rendering the hits of one page (`$1`, their `seq`s).
const SEARCH_ROWS_SQL: &str =
    "SELECT seq, id, session_id, role, created_at, text FROM messages WHERE seq = ANY($1)";

/// The hits of one page, in ranking order, with snippets.
async fn render(
    client: &Conn,
    terms: &crate::domain::SearchTerms,
    page: &[(i64, f64)],
) -> StorageResult<Vec<SearchHit>> {
    if page.is_empty() {
        return Ok(Vec::new());
    }
    let seqs: Vec<i64> = page.iter().map(|(seq, _)| *seq).collect();
    let statement = client
        .prepare_cached(SEARCH_ROWS_SQL)
        .await
        .map_err(db("preparing the search rows"))?;
    let rows = client
        .query(&statement, &[&seqs])
        .await
        .map_err(db("rendering hits"))?;
    let rows = rows
        .iter()
        .map(|row| {
            Ok(HitRow {
                seq: reads::get(row, 0)?,
                message_id: reads::get(row, 1)?,
                session_id: reads::get(row, 2)?,
                role: reads::get(row, 3)?,
                created_at: reads::get(row, 4)?,
                text: reads::get(row, 5)?,
            })
        })
        .collect::<StorageResult<Vec<_>>>()?;
    Ok(paging::hits(terms, page, rows)?)
}

impl Drop for PgStorage {
    fn drop(&mut self) {
        // Closed or not, nothing of this storage outlives it.
        self.listener.abort();
        self.sizing.abort();
    }
}

#[async_trait]
impl WebhookStore for PgStorage {
    async fn create_endpoint(&self, new: NewEndpoint, max: usize) -> StorageResult<Endpoint> {
        webhooks::create(&mut self.client().await?, new, max).await
    }

    async fn list_endpoints(
        &self,
        limit: u32,
        after: Option<String>,
    ) -> StorageResult<Page<Endpoint, String>> {
        webhooks::list(&self.client().await?, limit, after.as_deref()).await
    }

    async fn get_endpoint(&self, id: &str) -> StorageResult<(Endpoint, DeliveryCounts)> {
        webhooks::get_one(&self.client().await?, id).await
    }

    async fn update_endpoint(&self, id: &str, patch: EndpointPatch) -> StorageResult<Endpoint> {
        webhooks::update(&mut self.client().await?, id, patch).await
    }

    async fn delete_endpoint(&self, id: &str) -> StorageResult<()> {
        webhooks::delete(&mut self.client().await?, id).await
    }

    async fn rotate_secret(
        &self,
        id: &str,
        secret: String,
        previous_until: i64,
    ) -> StorageResult<Endpoint> {
        webhooks::rotate(&self.client().await?, id, secret, previous_until).await
    }

    async fn list_deliveries(
        &self,
        id: &str,
        status: Option<DeliveryStatus>,
        limit: u32,
        before: Option<i64>,
    ) -> StorageResult<Page<Delivery, i64>> {
        webhooks::deliveries(&self.client().await?, id, status, limit, before).await
    }

    async fn replay(&self, id: &str, since: i64) -> StorageResult<u64> {
        webhooks::replay(&self.client().await?, id, since).await
    }

    async fn all_endpoints(&self) -> StorageResult<Vec<Endpoint>> {
        webhooks::all(&self.client().await?).await
    }

    async fn due(
        &self,
        now: i64,
        lease_until: i64,
        per_endpoint: u32,
        limit: u32,
    ) -> StorageResult<Vec<Due>> {
        webhooks::claim(&self.client().await?, now, lease_until, per_endpoint, limit).await
    }

    async fn release(&self, ids: Vec<i64>) -> StorageResult<()> {
        webhooks::release(&self.client().await?, &ids).await
    }

    async fn next_due(&self) -> StorageResult<Option<i64>> {
        webhooks::next_due(&self.client().await?).await
    }

    async fn event(&self, seq: i64) -> StorageResult<Option<Event>> {
        webhooks::event(&self.client().await?, seq).await
    }

    async fn record(&self, record: AttemptRecord) -> StorageResult<()> {
        webhooks::record(&mut self.client().await?, record).await
    }

    async fn defer(&self, endpoint_id: &str, until: i64) -> StorageResult<()> {
        webhooks::defer(&self.client().await?, endpoint_id, until).await
    }

    async fn stats(&self) -> StorageResult<OutboxStats> {
        webhooks::stats(&self.client().await?).await
    }

    async fn prune(&self, before: i64) -> StorageResult<u64> {
        let client = self.client().await?;
        let mut total = 0;
        loop {
            let deleted = webhooks::prune(&client, before).await?;
            total += deleted;
            if deleted < webhooks::PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
