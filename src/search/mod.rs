//! Full-text search as a derived, embedded index: a tantivy index in the data dir (on
//! PostgreSQL, one per instance, fed from the shared log) that ranks only the best `k` matches
//! (block-max pruning) instead of scoring every match. [`paging`] turns its rankings into the
//! pages and cursors of the API, the same on both backends.
//!
//! The database stays the source of truth. Storage feeds the index through [`Source`] by
//! message `seq` (inserts) and event `seq` (session deletions); the index commits on a
//! time/size policy with both positions in the commit payload and catches up from them on start.
//! Between commits a small in-memory tail index holds what the disk index has not committed
//! yet, and deletions since the last commit are excluded, so a search started after a write's
//! answer sees exactly what the database holds ([`SearchIndex::top`] takes the caller's
//! snapshot of the log heads).

mod analysis;
mod index;
pub mod paging;
mod snippet;
mod waiting;

pub use analysis::analyzer;
pub use index::{IndexOptions, TantivyIndex};
pub use snippet::snippet;

use crate::domain::SearchTerms;

/// How far the durable log goes: the newest message `seq` and the newest event `seq`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heads {
    pub messages: i64,
    pub events: i64,
}

impl Heads {
    fn covers(&self, other: &Heads) -> bool {
        self.messages >= other.messages && self.events >= other.events
    }

    fn max(self, other: Heads) -> Heads {
        Heads {
            messages: self.messages.max(other.messages),
            events: self.events.max(other.events),
        }
    }
}

/// One message as the index sees it.
#[derive(Clone, Debug)]
pub struct Doc {
    pub seq: i64,
    pub session_id: String,
    pub directory: String,
    pub role: String,
    pub created_at: i64,
    pub text: String,
}

/// What the index reads from storage (each backend implements it over its own connection).
pub trait Source {
    /// The log heads, read together.
    fn heads(&self) -> anyhow::Result<Heads>;
    /// Up to `limit` messages with text and `after < seq <= upto`, in `seq` order.
    fn messages(&self, after: i64, upto: i64, limit: usize) -> anyhow::Result<Vec<Doc>>;
    /// `(event seq, session)` of the sessions deleted by the events `after < seq <= upto`.
    fn deletions(&self, after: i64, upto: i64) -> anyhow::Result<Vec<(i64, String)>>;
    /// The oldest retained event, when any is retained.
    fn oldest_event(&self) -> anyhow::Result<Option<i64>>;
}

/// A query: every term required; the filters only narrow, they never score.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub terms: &'a SearchTerms,
    pub session_id: Option<&'a str>,
    pub directory: Option<&'a str>,
}

/// A ranked match.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub seq: i64,
    pub score: f32,
}

/// Best first; equal scores in `seq` order (the order every page and cursor relies on).
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.seq.cmp(&b.seq)));
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Being built from the database; `progress` is 0..=1.
    #[error("the search index is being built ({:.0}% done)", progress * 100.0)]
    Building { progress: f64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What `/ready` and the metrics show about the index.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Status {
    pub building: bool,
    /// Of a build in progress, 0..=1 (1 when not building).
    pub progress: f64,
    /// The log positions of the last commit.
    pub committed: Heads,
    /// Messages written but not yet in a commit (by `seq`).
    pub lag: i64,
    pub segments: usize,
}

/// The narrow surface storage uses; the engine behind it can change without touching storage.
pub trait SearchIndex: Send + Sync {
    /// The best `k` matches among everything up to `heads` (the caller's snapshot), best first.
    fn top(
        &self,
        source: &dyn Source,
        heads: Heads,
        request: &Request<'_>,
        k: usize,
    ) -> Result<Vec<Hit>, IndexError>;

    /// Every match, scored but not pruned, best first (continuing past a kept ranking).
    fn every(
        &self,
        source: &dyn Source,
        heads: Heads,
        request: &Request<'_>,
    ) -> Result<Vec<Hit>, IndexError>;

    fn status(&self) -> Status;

    /// Commits what was fed and stops the indexer.
    fn close(&self);
}
