//! An in-process cache of encoded responses for hot reads, bounded by bytes.
//!
//! Entries are the JSON bytes a handler would send plus their ETag, so a hit costs neither a
//! query nor serialization. Keys that name data by version (a message page keyed by its
//! session's version, a list keyed by the event log's head) never go stale: a change moves the
//! version and old entries are simply never asked for again.
//!
//! A session (keyed by id) is versioned too: when a change commits, before the writer answers,
//! its slot is replaced by a tombstone carrying the new version, and an insert only lands if
//! its data is at least that new. Both go through the cache's per-key lock, so a read that
//! loaded the session just before a change cannot put the old data back after it: no client
//! reads stale data after its own write on this instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;
use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;

/// What is cached.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// `GET /v1/sessions/{id}`.
    Session(Arc<str>),
    /// `GET /v1/messages/{id}` (messages never change; they go when their session does).
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
    /// The `ETag` header (the value quoted), made once for every response that serves it.
    pub tag: Option<HeaderValue>,
    /// The session the data belongs to (a deleted session's messages are not served).
    pub session: Option<Arc<str>>,
    /// The version of the data (a session's version; 0 for immutable messages).
    pub version: i64,
}

impl Entry {
    pub fn new(body: Bytes, etag: Arc<str>, session: Option<Arc<str>>, version: i64) -> Entry {
        Entry {
            tag: quoted(&etag),
            body,
            etag,
            session,
            version,
        }
    }
}

/// An ETag value as its header: quoted. Tags are made of id and digest characters; should one
/// not be a valid header value, the response goes without a validator.
pub fn quoted(etag: &str) -> Option<HeaderValue> {
    let mut text = Vec::with_capacity(etag.len() + 2);
    text.push(b'"');
    text.extend_from_slice(etag.as_bytes());
    text.push(b'"');
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

/// What a key holds.
#[derive(Clone, Debug)]
enum Slot {
    Fresh(Entry),
    /// The data changed at `version` (or was deleted): only data at least that new may return.
    Gone {
        version: i64,
        deleted: bool,
    },
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
    slots: Option<moka::sync::Cache<Key, Slot>>,
    counters: Arc<CacheCounters>,
}

/// Bytes charged per slot beyond its body: key, ETag and bookkeeping.
const OVERHEAD: usize = 160;

fn weigh(key: &Key, slot: &Slot) -> u32 {
    let key_len = match key {
        Key::Session(id) | Key::Message(id) => id.len(),
        Key::MessagePage { session, query, .. } => session.len() + query.len(),
        Key::List { path, .. } => path.len(),
    };
    let value_len = match slot {
        Slot::Fresh(entry) => entry.body.len() + entry.etag.len(),
        Slot::Gone { .. } => 0,
    };
    u32::try_from(key_len + value_len + OVERHEAD).unwrap_or(u32::MAX)
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of entries; 0 disables caching.
    pub fn new(max_bytes: u64) -> ResponseCache {
        let counters = Arc::new(CacheCounters::default());
        let slots = (max_bytes > 0).then(|| {
            let evictions = counters.clone();
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(weigh)
                .eviction_listener(move |_key, _value, cause| {
                    if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                        evictions.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .support_invalidation_closures()
                .build()
        });
        ResponseCache { slots, counters }
    }

    pub fn get(&self, key: &Key) -> Option<Entry> {
        let slots = self.slots.as_ref()?;
        let found = match slots.get(key) {
            Some(Slot::Fresh(entry)) => match &entry.session {
                // A message of a session deleted meanwhile is not served.
                Some(session) if matches!(key, Key::Message(_)) && self.deleted(session) => None,
                _ => Some(entry),
            },
            _ => None,
        };
        let counter = if found.is_some() {
            &self.counters.hits
        } else {
            &self.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn deleted(&self, session: &Arc<str>) -> bool {
        self.slots.as_ref().is_some_and(|slots| {
            matches!(
                slots.get(&Key::Session(session.clone())),
                Some(Slot::Gone { deleted: true, .. })
            )
        })
    }

    /// Caches `entry` unless the key already holds (or was invalidated at) a newer version.
    pub fn insert(&self, key: Key, entry: Entry) {
        let Some(slots) = &self.slots else {
            return;
        };
        slots.entry(key).and_compute_with(|existing| {
            let newer = match existing.as_ref().map(|e| e.value()) {
                Some(Slot::Fresh(current)) => current.version > entry.version,
                Some(Slot::Gone { version, deleted }) => *deleted || *version > entry.version,
                None => false,
            };
            if newer {
                Op::Nop
            } else {
                Op::Put(Slot::Fresh(entry))
            }
        });
    }

    /// Records that `session` changed at `version` (or was deleted): its cached response goes,
    /// and so, when deleted, do its messages.
    pub fn invalidate_session(&self, session: &str, version: i64, deleted: bool) {
        let Some(slots) = &self.slots else {
            return;
        };
        let session: Arc<str> = Arc::from(session);
        slots
            .entry(Key::Session(session.clone()))
            .and_compute_with(|_| Op::Put(Slot::Gone { version, deleted }));
        if deleted {
            // Deletes are rare: a predicate scan is fine for them.
            let _ = slots.invalidate_entries_if(move |key, slot| {
                matches!(key, Key::Message(_))
                    && matches!(slot, Slot::Fresh(entry) if entry.session.as_deref() == Some(&*session))
            });
        }
    }

    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    pub fn stats(&self) -> CacheStats {
        let (entries, bytes) = self.slots.as_ref().map_or((0, 0), |slots| {
            slots.run_pending_tasks();
            (slots.entry_count(), slots.weighted_size())
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

    fn entry(body: &str, session: Option<&str>, version: i64) -> Entry {
        Entry::new(
            Bytes::from(body.to_owned()),
            Arc::from("v1"),
            session.map(Arc::from),
            version,
        )
    }

    #[test]
    fn hits_misses_and_invalidation() {
        let cache = ResponseCache::new(1 << 20);
        let key = Key::Session(Arc::from("ses_a"));
        assert!(cache.get(&key).is_none());
        cache.insert(key.clone(), entry("{}", Some("ses_a"), 1));
        assert!(cache.get(&key).is_some());
        cache.invalidate_session("ses_a", 2, false);
        assert!(cache.get(&key).is_none());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (1, 2));
    }

    #[test]
    fn a_read_that_raced_with_a_change_cannot_put_old_data_back() {
        let cache = ResponseCache::new(1 << 20);
        let key = Key::Session(Arc::from("ses_a"));
        // A read loads version 4; a change to version 5 commits; the read then inserts.
        cache.invalidate_session("ses_a", 5, false);
        cache.insert(key.clone(), entry("old", Some("ses_a"), 4));
        assert!(cache.get(&key).is_none());
        // Data at least as new as the change is welcome.
        cache.insert(key.clone(), entry("new", Some("ses_a"), 5));
        assert_eq!(cache.get(&key).unwrap().body, "new");
        // And an older read cannot overwrite it.
        cache.insert(key.clone(), entry("old", Some("ses_a"), 4));
        assert_eq!(cache.get(&key).unwrap().body, "new");
    }

    #[test]
    fn deleting_a_session_drops_it_and_its_messages() {
        let cache = ResponseCache::new(1 << 20);
        let mine = Key::Message(Arc::from("msg_1"));
        let other = Key::Message(Arc::from("msg_2"));
        cache.insert(mine.clone(), entry("m1", Some("ses_a"), 0));
        cache.insert(other.clone(), entry("m2", Some("ses_b"), 0));
        cache.invalidate_session("ses_a", 9, true);
        assert!(cache.get(&mine).is_none());
        assert!(cache.get(&other).is_some());
        // A read that raced with the delete cannot bring the message back.
        cache.insert(mine.clone(), entry("m1", Some("ses_a"), 0));
        assert!(cache.get(&mine).is_none());
        cache.insert(
            Key::Session(Arc::from("ses_a")),
            entry("s", Some("ses_a"), 99),
        );
        assert!(cache.get(&Key::Session(Arc::from("ses_a"))).is_none());
    }

    #[test]
    fn size_is_bounded_in_bytes() {
        let cache = ResponseCache::new(64 * 1024);
        for i in 0..1000 {
            let key = Key::Message(Arc::from(format!("msg_{i}")));
            cache.insert(key, entry(&"x".repeat(1024), None, 0));
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
        cache.insert(key.clone(), entry("m", None, 0));
        assert!(cache.get(&key).is_none());
    }
}
