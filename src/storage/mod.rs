//! Storage: the [`Storage`] trait every backend implements, and the query types it takes.
//!
//! Handlers only ever see this trait, so a backend (embedded SQLite today, PostgreSQL next) can
//! be swapped by configuration without touching HTTP code. The contract every backend keeps:
//! a write returns only once it is durable; a read started after a write returned sees it; ids
//! and timestamps are assigned by the backend in commit order, so keyset pages never skip or
//! repeat; every change is recorded in the event log in the same transaction.

pub(crate) mod batch;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;

use crate::domain::keys::{ApiKey, NewKey};
use crate::events::{Event, EventFilter};

use crate::domain::{
    ArchivedFilter, Limit, Message, MessageCursor, MessageId, NewMessage, NewSession, Order, Page,
    SearchCursor, SearchHit, SearchTerms, Session, SessionCursor, SessionId, SessionPatch,
};

/// Called with the events of every committed batch, in `seq` order.
pub type CommitHook = std::sync::Arc<dyn Fn(&[Event]) + Send + Sync>;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The named thing does not exist (the message is safe to show to clients).
    #[error("{what} {id} does not exist")]
    NotFound { what: &'static str, id: String },
    /// The backend is closing or its writer is gone; the caller may retry elsewhere.
    #[error("storage is not accepting requests: {0}")]
    Unavailable(&'static str),
    /// Input this backend cannot store or match (the message is safe to show to clients);
    /// refused before anything was written.
    #[error("{0}")]
    Rejected(String),
    /// Well-formed, but the current state forbids it (the message is safe to show to clients
    /// and says what to change first); refused before anything was written.
    #[error("{0}")]
    Conflict(String),
    /// Temporarily unable to answer (the message is safe to show to clients); retry later.
    #[error("{reason}")]
    Overloaded {
        reason: &'static str,
        retry_after_secs: u32,
    },
    /// Anything else; carries context for the logs, never shown to clients.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl StorageError {
    pub fn session_not_found(id: impl Into<String>) -> Self {
        StorageError::NotFound {
            what: "session",
            id: crate::domain::clip(&id.into()),
        }
    }

    pub fn message_not_found(id: impl Into<String>) -> Self {
        StorageError::NotFound {
            what: "message",
            id: crate::domain::clip(&id.into()),
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Filters of `GET /v1/sessions`.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    pub directory: Option<String>,
    /// Only sessions without a parent.
    pub roots_only: bool,
    /// Only sessions with `updated_at >= updated_after`.
    pub updated_after: Option<i64>,
    /// Case-folded (see [`crate::domain::fold_title`]) substring of the title.
    pub title_contains: Option<String>,
    pub archived: ArchivedFilter,
}

#[derive(Clone, Debug, Default)]
pub struct SessionListQuery {
    pub filter: SessionFilter,
    pub limit: Limit,
    pub after: Option<SessionCursor>,
}

#[derive(Clone, Debug, Default)]
pub struct MessageListQuery {
    pub order: Order,
    pub limit: Limit,
    pub after: Option<MessageCursor>,
}

/// A stretch of the messages of consecutive sessions, in (session id, `created_at`, id)
/// order: what `sessiond export` reads, the messages of many sessions per call.
#[derive(Clone, Debug)]
pub struct MessageWalk {
    /// The first session of the stretch.
    pub from: SessionId,
    /// Within `from`, only the messages after this (`created_at`, id): where the last call
    /// stopped.
    pub after: Option<(i64, MessageId)>,
    /// The last session of the stretch.
    pub through: SessionId,
    pub limit: u32,
}

#[derive(Clone, Debug)]
pub struct SearchQuery {
    pub terms: SearchTerms,
    pub session_id: Option<SessionId>,
    pub directory: Option<String>,
    pub limit: Limit,
    pub after: Option<SearchCursor>,
    /// The `search_window` setting: no backend reads it any more (the index prunes instead of
    /// ranking every match); kept so older configurations still start.
    pub window: Option<u32>,
}

/// The text of a session, for summaries.
#[derive(Clone, Debug, Default)]
pub struct SessionText {
    pub message_count: i64,
    /// Text of the messages in chronological order (the most recent ones, within the budget;
    /// the newest alone is cut to its end when it is over the budget).
    pub texts: Vec<String>,
}

impl SessionText {
    /// Takes message texts, newest first, until `max_bytes` are taken (the newest alone, when
    /// over the budget, is cut to its end), and keeps them in chronological order.
    pub fn within_budget<E>(
        message_count: i64,
        newest_first: impl IntoIterator<Item = Result<String, E>>,
        max_bytes: usize,
    ) -> Result<SessionText, E> {
        let mut texts = Vec::new();
        let mut budget = max_bytes;
        for text in newest_first {
            let text = text?;
            if text.len() > budget {
                if texts.is_empty() {
                    let mut start = text.len() - budget;
                    while !text.is_char_boundary(start) {
                        start += 1;
                    }
                    texts.push(text[start..].to_owned());
                }
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
    }
}

/// A complete session with its messages, ids and timestamps already assigned: bulk loads
/// (`sessiond seed`, migrations between backends) write these as they are, without events.
#[derive(Clone, Debug)]
pub struct ImportSession {
    pub session: Session,
    pub messages: Vec<ImportMessage>,
}

#[derive(Clone, Debug)]
pub struct ImportMessage {
    pub message: Message,
    pub text: String,
}

/// Records of another system an import made, written with the session they belong to: each
/// `(source, original id)` names the sessiond id it became.
#[derive(Clone, Debug, Default)]
pub struct ImportMapping {
    pub source: String,
    pub pairs: Vec<(String, String)>,
}

/// What [`Storage::import_session`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportedSession {
    /// The session was new (otherwise it was there and only messages were added, if any).
    pub created: bool,
    /// Messages written; the others were there already.
    pub messages: u64,
}

/// Locks `dir` (through the file `name` in it) for the life of the returned file, so two
/// processes never write one directory; `what` names the directory in the error.
pub fn lock_dir(dir: &std::path::Path, name: &str, what: &str) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    let path = dir.join(name);
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "{what} {} is in use by another sessiond process",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking {what} {}", dir.display()))
        }
    }
}

/// The query of [`Counts`], the same on every backend.
pub const COUNTS_SQL: &str = "SELECT (SELECT count(*) FROM sessions), \
     (SELECT count(*) FROM messages), (SELECT count(*) FROM api_keys)";

/// The messages the search index reads (see [`crate::search::Source::messages`]), the same on
/// every backend (`$n` are positional parameters to SQLite too): `$1 < seq <= $2`, `$3` rows.
pub const INDEX_MESSAGES_SQL: &str = "SELECT m.seq, m.session_id, s.directory, m.role, \
     m.created_at, m.text FROM messages m JOIN sessions s ON s.id = m.session_id \
     WHERE m.seq > $1 AND m.seq <= $2 AND m.text <> '' ORDER BY m.seq LIMIT $3";

/// The session deletions the search index reads (see [`crate::search::Source::deletions`]).
pub const INDEX_DELETIONS_SQL: &str = "SELECT seq, session_id FROM events \
     WHERE seq > $1 AND seq <= $2 AND type = 'session.deleted' ORDER BY seq";

/// The oldest retained event (see [`crate::search::Source::oldest_event`]).
pub const OLDEST_EVENT_SQL: &str = "SELECT min(seq) FROM events";

/// What a database holds, counted (`sessiond migrate-data` compares them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub sessions: u64,
    pub messages: u64,
    pub keys: u64,
}

/// The range of the retained event log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBounds {
    /// The oldest retained event (`None` when none is retained).
    pub oldest: Option<i64>,
    /// The newest `seq` ever assigned (0 before the first event), retained or not.
    pub newest: i64,
}

/// A storage backend.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Creates a session; `NotFound` when the parent does not exist.
    async fn create_session(&self, new: NewSession) -> StorageResult<Session>;
    async fn get_session(&self, id: &SessionId) -> StorageResult<Session>;
    async fn list_sessions(
        &self,
        query: SessionListQuery,
    ) -> StorageResult<Page<Session, SessionCursor>>;
    async fn update_session(&self, id: SessionId, patch: SessionPatch) -> StorageResult<Session>;
    /// Deletes a session and its messages; its children lose their parent.
    async fn delete_session(&self, id: SessionId) -> StorageResult<()>;

    /// Appends a message, bumping the session's `updated_at` and `message_count`.
    async fn append_message(&self, session: SessionId, new: NewMessage) -> StorageResult<Message>;
    async fn get_message(&self, id: &MessageId) -> StorageResult<Message>;
    /// A page of a session's messages and the session's version, read together; `NotFound`
    /// when the session does not exist.
    async fn list_messages(
        &self,
        session: &SessionId,
        query: MessageListQuery,
    ) -> StorageResult<(Page<Message, MessageCursor>, i64)>;

    async fn search(&self, query: SearchQuery) -> StorageResult<Page<SearchHit, SearchCursor>>;

    /// The session's text, at most `max_bytes` of it (most recent messages first to go in).
    async fn session_text(&self, id: &SessionId, max_bytes: usize) -> StorageResult<SessionText>;

    /// The retained range of the event log.
    async fn event_bounds(&self) -> StorageResult<EventBounds>;

    /// Up to `limit` retained events with `seq > after` that match `filter`, in order.
    async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> StorageResult<Vec<Event>>;

    /// Deletes events older than `older_than` (ms) and all but the newest `keep`; returns how
    /// many were deleted. Deletes in small batches so writes are never held up for long.
    async fn prune_events(&self, older_than: i64, keep: u64) -> StorageResult<u64>;

    /// Stores a new API key (its secret's hash and hint).
    async fn create_key(&self, new: NewKey, hash: String, hint: String) -> StorageResult<ApiKey>;
    async fn list_keys(&self) -> StorageResult<Vec<ApiKey>>;
    /// `NotFound` for an unknown id; revoking twice keeps the first time.
    async fn revoke_key(&self, id: &str) -> StorageResult<ApiKey>;
    /// The key whose secret hashes to `hash`.
    async fn find_key(&self, hash: &str) -> StorageResult<Option<ApiKey>>;

    /// Writes complete sessions in bulk (seeding, copying between backends).
    async fn import(&self, sessions: Vec<ImportSession>) -> StorageResult<()>;

    /// Writes one session with its ids and times, in one transaction, beside whatever is
    /// stored: a session already there is kept (only its missing messages are added, bumping
    /// `message_count` and `updated_at`), messages already there are skipped, a parent that
    /// does not exist becomes `null`. One event tells running instances (`session.created`,
    /// or `session.updated` when messages were added to a stored session); nothing new, no
    /// event. `mapping` is written in the same transaction.
    async fn import_session(
        &self,
        item: ImportSession,
        mapping: ImportMapping,
    ) -> StorageResult<ImportedSession>;

    /// The sessiond ids the `originals` of `source` became, in their order (`None`: not
    /// imported yet).
    async fn import_targets(
        &self,
        source: &str,
        originals: Vec<String>,
    ) -> StorageResult<Vec<Option<String>>>;

    /// Up to `limit` sessions with ids after `after`, in id (creation) order, archived ones
    /// included: what `sessiond export` walks, so parents come before their children.
    async fn sessions_by_id(
        &self,
        after: Option<SessionId>,
        limit: u32,
    ) -> StorageResult<Vec<Session>>;

    /// Up to `walk.limit` messages of the sessions from `walk.from` through `walk.through`
    /// (in id order, both included), ordered by session id, then as a session lists them.
    async fn messages_by_session(&self, walk: MessageWalk) -> StorageResult<Vec<Message>>;

    /// Every key with the hash of its secret (copying between backends).
    async fn export_keys(&self) -> StorageResult<Vec<(ApiKey, String)>>;

    /// Stores keys as exported by [`Storage::export_keys`].
    async fn import_keys(&self, keys: Vec<(ApiKey, String)>) -> StorageResult<()>;

    /// How many sessions, messages and keys are stored.
    async fn counts(&self) -> StorageResult<Counts>;

    /// Names this database and its bulk-import generation: part of every validator, so data
    /// that changed without events (another database, a bulk load) never matches an old ETag.
    fn identity(&self) -> &str;

    /// Writes waiting for the writer (for metrics).
    fn writer_queue_depth(&self) -> usize {
        0
    }

    /// Bytes the database occupies on disk, when it is on this machine's disk.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }

    /// The embedded search index's state, when this backend searches through one.
    fn search_status(&self) -> Option<crate::search::Status> {
        None
    }

    /// Webhook endpoints and their outbox, when this backend stores them (`None`: the
    /// webhook API answers 501).
    fn webhooks(&self) -> Option<&dyn crate::webhooks::store::WebhookStore> {
        None
    }

    /// A cheap round trip proving the backend can serve reads.
    async fn check(&self) -> StorageResult<()>;

    /// Stops taking writes, commits everything already accepted, and releases the backend.
    async fn close(&self);
}
