//! An in-process cache of encoded responses for hot reads, bounded by bytes.
//!
//! Entries are the JSON bytes a handler would send plus their ETag, so a hit costs neither a
//! query nor serialization. Keys that name data by version (a message page keyed by its
//! session's version, a list keyed by the event log's head) never go stale: a change moves the
//! version and old entries are simply never asked for again. Keys that name data by id (a
//! session, a message) are removed by [`ResponseCache::invalidate_session`] when a change
//! commits, before the writer answers, so no client reads stale data after its own write on
//! this instance. A read that raced with such a change does not put its (possibly older)
//! result back: inserts check an epoch that every invalidation moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use moka::notification::RemovalCause;

/// What is cached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// `GET /v1/sessions/{id}`.
    Session(Arc<str>),
    /// `GET /v1/messages/{id}`.
    Message(Arc<str>),
    /// A page of a session's messages at a session version, by query string.
    MessagePage {
        session: Arc<str>,
        version: i64,
        query: Arc<str>,
    },
    /// A list or search page at an event-log head, by path and query string.
    List { head: i64, path: Arc<str> },
}

/// A cached response body.
#[derive(Clone, Debug)]
pub struct Entry {
    pub body: Bytes,
    /// The strong ETag value, without quotes.
    pub etag: Arc<str>,
    /// The session the data belongs to (for invalidating a deleted session's messages).
    pub session: Option<Arc<str>>,
    /// For a session: its version (message pages are keyed by it).
    pub version: i64,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
}

/// A snapshot of the cache's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
}

pub struct ResponseCache {
    entries: Option<moka::sync::Cache<Key, Entry>>,
    epoch: AtomicU64,
    counters: Arc<CacheCounters>,
}

/// Bytes charged per entry beyond its body: key, ETag and bookkeeping.
const OVERHEAD: usize = 160;

impl ResponseCache {
    /// A cache holding at most `max_bytes` of entries; 0 disables caching.
    pub fn new(max_bytes: u64) -> ResponseCache {
        let counters = Arc::new(CacheCounters::default());
        let entries = (max_bytes > 0).then(|| {
            let evictions = counters.clone();
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &Key, entry: &Entry| {
                    let key_len = match key {
                        Key::Session(id) | Key::Message(id) => id.len(),
                        Key::MessagePage { session, query, .. } => session.len() + query.len(),
                        Key::List { path, .. } => path.len(),
                    };
                    u32::try_from(entry.body.len() + entry.etag.len() + key_len + OVERHEAD)
                        .unwrap_or(u32::MAX)
                })
                .eviction_listener(move |_key, _value, cause| {
                    if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                        evictions.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .support_invalidation_closures()
                .build()
        });
        ResponseCache {
            entries,
            epoch: AtomicU64::new(0),
            counters,
        }
    }

    /// Read before loading data whose key names it by id; pass to [`Self::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &Key) -> Option<Entry> {
        let entries = self.entries.as_ref()?;
        let found = entries.get(key);
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches an entry whose key names its data by version (never stale).
    pub fn insert_versioned(&self, key: Key, entry: Entry) {
        if let Some(entries) = &self.entries {
            entries.insert(key, entry);
        }
    }

    /// Caches `entry` unless an invalidation happened since `epoch` was read (the entry might
    /// then describe data older than the change).
    pub fn insert(&self, key: Key, entry: Entry, epoch: u64) {
        if let Some(entries) = &self.entries
            && self.epoch() == epoch
        {
            entries.insert(key, entry);
        }
    }

    /// Drops what names `session` by id; with `deleted`, also its messages.
    pub fn invalidate_session(&self, session: &str, deleted: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let Some(entries) = &self.entries else {
            return;
        };
        entries.invalidate(&Key::Session(Arc::from(session)));
        if deleted {
            let session: Arc<str> = Arc::from(session);
            // Deletes are rare: a predicate scan is fine for them.
            let _ = entries.invalidate_entries_if(move |key, entry| {
                matches!(key, Key::Message(_)) && entry.session.as_deref() == Some(&*session)
            });
        }
    }

    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = self.entries.as_ref().map_or((0, 0), |e| {
            e.run_pending_tasks();
            (e.entry_count(), e.weighted_size())
        });
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            entries,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str, session: Option<&str>) -> Entry {
        Entry {
            body: Bytes::from(body.to_owned()),
            etag: Arc::from("v1"),
            session: session.map(Arc::from),
            version: 1,
        }
    }

    #[test]
    fn hits_misses_and_invalidation() {
        let cache = ResponseCache::new(1 << 20);
        let key = Key::Session(Arc::from("ses_a"));
        assert!(cache.get(&key).is_none());
        cache.insert(key.clone(), entry("{}", Some("ses_a")), cache.epoch());
        assert!(cache.get(&key).is_some());
        cache.invalidate_session("ses_a", false);
        assert!(cache.get(&key).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 2));
    }

    #[test]
    fn a_read_that_raced_with_a_change_is_not_cached() {
        let cache = ResponseCache::new(1 << 20);
        let key = Key::Session(Arc::from("ses_a"));
        let epoch = cache.epoch();
        // …the read is in flight when a change to the session commits…
        cache.invalidate_session("ses_a", false);
        cache.insert(key.clone(), entry("old", Some("ses_a")), epoch);
        assert!(cache.get(&key).is_none());
    }

    #[test]
    fn deleting_a_session_drops_its_messages() {
        let cache = ResponseCache::new(1 << 20);
        let mine = Key::Message(Arc::from("msg_1"));
        let other = Key::Message(Arc::from("msg_2"));
        cache.insert(mine.clone(), entry("m1", Some("ses_a")), cache.epoch());
        cache.insert(other.clone(), entry("m2", Some("ses_b")), cache.epoch());
        cache.invalidate_session("ses_a", true);
        assert!(cache.get(&mine).is_none());
        assert!(cache.get(&other).is_some());
    }

    #[test]
    fn size_is_bounded_in_bytes() {
        let cache = ResponseCache::new(64 * 1024);
        for i in 0..1000 {
            let key = Key::Message(Arc::from(format!("msg_{i}")));
            cache.insert(key, entry(&"x".repeat(1024), None), cache.epoch());
        }
        let stats = cache.stats();
        assert!(stats.bytes <= 64 * 1024, "{stats:?}");
        assert!(stats.entries < 1000);
        assert!(stats.evictions > 0);
    }

    #[test]
    fn a_zero_size_cache_caches_nothing() {
        let cache = ResponseCache::new(0);
        let key = Key::Message(Arc::from("msg_1"));
        cache.insert(key.clone(), entry("m", None), cache.epoch());
        assert!(cache.get(&key).is_none());
    }
}
