//! `sessiond migrate-data`: copies a whole database (sessions, messages, API keys) from one
//! backend to another through the [`Storage`] trait, then verifies the counts.
//!
//! The target must be empty, so a run never merges into or duplicates existing data; ids,
//! timestamps and versions are kept as they are, so cursors' order and the clients' ids stay
//! valid. The event log is not copied: streams resume against the new database from its head.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::domain::{ArchivedFilter, Limit, Order, search_text};
use crate::storage::{
    Counts, ImportMessage, ImportSession, MessageListQuery, SessionFilter, SessionListQuery,
    Storage,
};

/// Messages written per import call.
const CHUNK_MESSAGES: usize = 20_000;

#[derive(Debug)]
pub struct MigrateReport {
    pub counts: Counts,
    pub elapsed: Duration,
}

/// Copies everything in `from` into the empty `to`; `progress` hears the sessions copied.
pub async fn migrate_data(
    from: Arc<dyn Storage>,
    to: Arc<dyn Storage>,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<MigrateReport> {
    let started = Instant::now();
    let existing = to.counts().await.context("counting the target")?;
    if existing != Counts::default() {
        bail!(
            "the target is not empty ({} sessions, {} messages, {} keys); migrate into an empty \
             database",
            existing.sessions,
            existing.messages,
            existing.keys
        );
    }
    let source = from.counts().await.context("counting the source")?;
    let limit = Limit::new(Limit::MAX).context("the page size")?;
    let mut query = SessionListQuery {
        filter: SessionFilter {
            archived: ArchivedFilter::All,
            ..SessionFilter::default()
        },
        limit,
        after: None,
    };
    let mut pending: Vec<ImportSession> = Vec::new();
    let mut pending_messages = 0;
    let mut copied = 0_u64;
    loop {
        let page = from
            .list_sessions(query.clone())
            .await
            .context("reading sessions")?;
        for session in page.items {
            let mut messages = Vec::with_capacity(session.message_count.max(0) as usize);
            let mut after = None;
            loop {
                let (page, _) = from
                    .list_messages(
                        &session.id,
                        MessageListQuery {
                            order: Order::Asc,
                            limit,
                            after,
                        },
                    )
                    .await
                    .with_context(|| format!("reading the messages of {}", session.id))?;
                for message in page.items {
                    let text = search_text(message.parts.get()).map_err(|e| {
                        anyhow::anyhow!("message {} has invalid parts: {e}", message.id)
                    })?;
                    messages.push(ImportMessage { message, text });
                }
                after = page.next;
                if after.is_none() {
                    break;
                }
            }
            pending_messages += messages.len();
            pending.push(ImportSession { session, messages });
            if pending_messages >= CHUNK_MESSAGES {
                copied += pending.len() as u64;
                pending_messages = 0;
                to.import(std::mem::take(&mut pending))
                    .await
                    .context("writing to the target")?;
                progress(copied);
            }
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    if !pending.is_empty() {
        copied += pending.len() as u64;
        to.import(pending).await.context("writing to the target")?;
        progress(copied);
    }
    let keys = from.export_keys().await.context("reading keys")?;
    to.import_keys(keys).await.context("writing keys")?;
    let copied = to.counts().await.context("counting the target")?;
    if copied != source {
        bail!(
            "the counts differ after the copy: source {source:?}, target {copied:?} (was the \
             source written to during the copy?)"
        );
    }
    Ok(MigrateReport {
        counts: copied,
        elapsed: started.elapsed(),
    })
}
