//! Search pages over the index, the same on every backend: which hits a page holds, in which
//! order, and the cursor after it. Backends only read the log heads and render the page's rows.
//!
//! A first page ranks the best [`RANKING_KEPT`] hits (or `limit`, when more) and keeps that
//! ranking (in this
//! instance's memory), so later pages are exact slices of one order whatever is written
//! meanwhile. Past it, or once it expired (or on another instance), pages continue by rank
//! among the messages that existed when paging started (`cap`), ranked under today's
//! statistics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Heads, IndexError, Request, SearchIndex, Source};
use crate::domain::{MessageId, Role, SearchCursor, SearchHit, SearchTerms, SessionId};
use crate::storage::{SearchQuery, StorageError};

/// Ranked hits kept for paging: `(seq, rank)` best first, `rank` being the negated score.
pub type Ranking = Vec<(i64, f64)>;

/// How many hits a first page ranks and keeps at least (more when its `limit` is larger):
/// later pages within them are exact slices; beyond them a page continues by rank, which scores
/// every match. Top-k pruning gets weaker as `k` grows (on the 1M-message seed, uncached: top-2001
/// first pages served 3.3× fewer searches/s than top-201; top-101 served 1.28× more than top-201
/// and top-51 1.52×, BENCHMARKS.md), so this is two pages of the default size (50) or five of
/// 20, not every page anyone might read.
pub const RANKING_KEPT: usize = 100;

/// A first page's ranking, kept for the pages after it, and whether more hits ranked below
/// its last one.
struct Kept {
    hits: Ranking,
    more: bool,
}

/// First-page search rankings kept for later pages (10 minutes, 32 MiB at most).
pub struct Rankings(moka::sync::Cache<u64, Arc<Kept>>);

impl Default for Rankings {
    fn default() -> Rankings {
        Rankings(
            moka::sync::Cache::builder()
                .max_capacity(32 << 20)
                .weigher(|_, kept: &Arc<Kept>| {
                    u32::try_from(kept.hits.len() * 16 + 64).unwrap_or(u32::MAX)
                })
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
        )
    }
}

impl Rankings {
    fn keep(&self, kept: Kept) -> u64 {
        let token = fastrand::u64(1..);
        self.0.insert(token, Arc::new(kept));
        token
    }

    fn find(&self, token: u64) -> Option<Arc<Kept>> {
        self.0.get(&token)
    }
}

/// One page of a search before rendering: its `(seq, rank)`s in order and the next cursor.
pub struct Ranked {
    pub page: Ranking,
    pub next: Option<SearchCursor>,
}

impl From<IndexError> for StorageError {
    fn from(error: IndexError) -> StorageError {
        match error {
            IndexError::Building { .. } => StorageError::Overloaded {
                reason: "the search index is being built; retry shortly (GET /ready shows its \
                         progress)",
                retry_after_secs: 5,
            },
            IndexError::Internal(cause) => StorageError::Internal(cause),
        }
    }
}

/// The page `query` asks for, among everything up to `heads` (the caller's snapshot of the
/// log, read through `source`). Blocking: it may read the log's tail through `source`.
pub fn rank(
    index: &dyn SearchIndex,
    rankings: &Rankings,
    source: &dyn Source,
    heads: Heads,
    query: &SearchQuery,
) -> Result<Ranked, IndexError> {
    let limit = query.limit.get() as usize;
    if query.terms.is_empty() {
        return Ok(Ranked {
            page: Vec::new(),
            next: None,
        });
    }
    // The first page's kept ranking, while this instance still holds it.
    let kept = query
        .after
        .as_ref()
        .filter(|c| c.token != 0)
        .and_then(|c| rankings.find(c.token));
    // A later page of a kept ranking: the same order as the first page, whatever was written
    // since (no hit skipped or repeated). At its end, with more hits below it, pages continue
    // by rank (below).
    if let Some(cursor) = &query.after
        && let Some(kept) = &kept
        && ((cursor.offset as usize) < kept.hits.len() || !kept.more)
    {
        let usable = kept.hits.len();
        let start = (cursor.offset as usize).min(usable);
        let end = (start + limit).min(usable);
        let page = &kept.hits[start..end];
        // More hits than were kept: the page after the last kept one continues by rank.
        let next = if end < usable || kept.more {
            page.last().map(|&(seq, rank)| SearchCursor {
                token: cursor.token,
                offset: end as u32,
                ..boundary(cursor, seq, rank)
            })
        } else {
            None
        };
        return Ok(Ranked {
            page: page.to_vec(),
            next,
        });
    }

    let request = Request {
        terms: &query.terms,
        session_id: query.session_id.as_ref().map(|s| s.as_str()),
        directory: query.directory.as_deref(),
    };
    let first_page = query.after.is_none();
    let keep = limit.max(RANKING_KEPT);
    let (ranking, cap): (Ranking, i64) = match &query.after {
        None => {
            let hits = index.top(source, heads, &request, keep + 1)?;
            let newest = hits.iter().map(|h| h.seq).max().unwrap_or(0);
            let ranking = hits
                .into_iter()
                .map(|h| (h.seq, -f64::from(h.score)))
                .collect();
            (ranking, heads.messages.max(newest))
        }
        Some(cursor) => {
            // Past the kept ranking, or without it (expired, or kept by another instance):
            // continue by rank among what existed when paging started. Scores depend on
            // corpus statistics, which move as messages are written, so the boundary hit is
            // ranked under today's statistics rather than cut at a stale value.
            //
            // While the kept ranking is here, its hits are left out: it holds the best hits,
            // but of those tied with its last one, whichever the pruned ranking met first, not
            // the lowest `seq`s. So right after it, every tied hit it does not hold comes next;
            // later pages continue after `seq` among the rest, in `seq` order.
            let hits = index.every(source, heads, &request)?;
            let rank = hits
                .iter()
                .find(|h| h.seq == cursor.seq)
                .map_or(cursor.rank, |h| -f64::from(h.score));
            let shown: HashSet<i64> = kept
                .as_ref()
                .map(|k| k.hits.iter().map(|&(seq, _)| seq).collect())
                .unwrap_or_default();
            let after = if kept.is_some() && cursor.offset != SearchCursor::PAST_KEPT {
                i64::MIN
            } else {
                cursor.seq
            };
            let ranking = hits
                .into_iter()
                .map(|h| (h.seq, -f64::from(h.score)))
                .filter(|&(seq, r)| {
                    seq <= cursor.cap
                        && !shown.contains(&seq)
                        && (r > rank || (r == rank && seq > after))
                })
                .take(limit + 1)
                .collect();
            (ranking, cursor.cap)
        }
    };
    let base = SearchCursor {
        rank: 0.0,
        seq: 0,
        cap,
        floor: 0,
        token: 0,
        offset: 0,
    };
    let page_len = limit.min(ranking.len());
    let next = if ranking.len() <= limit {
        None
    } else if first_page {
        let (seq, rank) = ranking[page_len - 1];
        let token = rankings.keep(Kept {
            hits: ranking[..keep.min(ranking.len())].to_vec(),
            more: ranking.len() > keep,
        });
        Some(SearchCursor {
            token,
            offset: page_len as u32,
            ..boundary(&base, seq, rank)
        })
    } else {
        let (seq, rank) = ranking[page_len - 1];
        // Past a kept ranking, the cursor keeps naming it, so later pages still leave it out.
        let past = query.after.as_ref().filter(|_| kept.is_some());
        Some(SearchCursor {
            token: past.map_or(0, |c| c.token),
            offset: past.map_or(0, |_| SearchCursor::PAST_KEPT),
            ..boundary(&base, seq, rank)
        })
    };
    let mut page = ranking;
    page.truncate(page_len);
    Ok(Ranked { page, next })
}

/// A cursor continuing by rank after `(seq, rank)`.
fn boundary(base: &SearchCursor, seq: i64, rank: f64) -> SearchCursor {
    SearchCursor {
        rank,
        seq,
        cap: base.cap,
        floor: base.floor,
        token: 0,
        offset: 0,
    }
}

/// A stored message a page shows, as a backend reads it.
pub struct HitRow {
    pub seq: i64,
    pub message_id: String,
    pub session_id: String,
    pub role: String,
    pub created_at: i64,
    pub text: String,
}

/// The hits of one page in ranking order, with snippets. A message deleted since it was
/// ranked has no row and is skipped (it no longer exists, nothing to show).
pub fn hits(
    terms: &SearchTerms,
    page: &[(i64, f64)],
    rows: Vec<HitRow>,
) -> anyhow::Result<Vec<SearchHit>> {
    let mut found: HashMap<i64, HitRow> = rows.into_iter().map(|r| (r.seq, r)).collect();
    let mut out = Vec::with_capacity(page.len());
    for (seq, rank) in page {
        let Some(row) = found.remove(seq) else {
            continue;
        };
        let role = Role::parse(&row.role).ok_or_else(|| {
            anyhow::anyhow!("a stored message has the unknown role {:?}", row.role)
        })?;
        out.push(SearchHit {
            message_id: MessageId::from_trusted(row.message_id),
            session_id: SessionId::from_trusted(row.session_id),
            role,
            created_at: row.created_at,
            snippet: super::snippet(&row.text, terms),
            score: -rank,
        });
    }
    Ok(out)
}
