//! Delivery of every committed change to this instance's subscribers and caches, once and in
//! `seq` order, whichever instance made it.
//!
//! The [`Feed`] remembers the last `seq` delivered here. This instance's writer hands it each
//! committed batch; a listener connection hears every instance's commits (`NOTIFY` carries the
//! newest `seq`). Whenever what arrives does not follow on from the last delivered event, the
//! gap is read from the event log first, so delivery never skips or reorders. A slow poll of
//! the head covers notifications lost while the listener reconnects.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Mutex;
use tokio_postgres::{AsyncMessage, NoTls};

use super::{EVENTS_CHANNEL, KEYS_CHANNEL, RevokeHook, get_client, reads};
use crate::events::{Event, EventFilter};
use crate::storage::CommitHook;
use crate::storage::StorageResult;

/// Events read from the log per query while catching up.
const CATCH_UP_CHUNK: usize = 1000;
/// How often the head is polled in case a notification was missed.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

pub struct Feed {
    pool: Pool,
    /// The last `seq` delivered here; the lock also orders deliveries.
    head: Mutex<i64>,
    hook: Option<CommitHook>,
}

impl Feed {
    pub fn new(pool: Pool, head: i64, hook: Option<CommitHook>) -> Feed {
        Feed {
            pool,
            head: Mutex::new(head),
            hook,
        }
    }

    fn publish(&self, events: &[Event]) {
        if let Some(hook) = &self.hook
            && !events.is_empty()
        {
            hook(events);
        }
    }

    /// Delivers a batch this instance committed, after any earlier event not yet delivered.
    /// Returns `false` when the events before it could not be read: then nothing is delivered
    /// out of order, and the listener or the poll delivers the batch from the log later.
    pub async fn deliver(&self, events: &[Event]) -> bool {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return true;
        };
        let mut head = self.head.lock().await;
        if last.seq <= *head {
            // The listener already read them from the log.
            return true;
        }
        if first.seq > *head + 1 {
            let mut tries = 0;
            while let Err(error) = self.read_until(&mut head, first.seq - 1).await {
                tries += 1;
                if tries == 3 {
                    tracing::warn!(
                        error = %error,
                        "could not read the events before a committed batch; they follow from the log"
                    );
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let fresh: Vec<Event> = events.iter().filter(|e| e.seq > *head).cloned().collect();
        self.publish(&fresh);
        *head = (*head).max(last.seq);
        true
    }

    /// Delivers every event up to `upto` (or up to the newest, when `None`) not yet delivered.
    pub async fn catch_up(&self, upto: Option<i64>) -> StorageResult<()> {
        let mut head = self.head.lock().await;
        let target = match upto {
            Some(seq) => seq,
            None => {
                let client = get_client(&self.pool).await?;
                reads::event_bounds(&client).await?.newest
            }
        };
        if target <= *head {
            return Ok(());
        }
        self.read_until(&mut head, target).await
    }

    async fn read_until(&self, head: &mut i64, target: i64) -> StorageResult<()> {
        let client = get_client(&self.pool).await?;
        while *head < target {
            let events =
                reads::events_after(&client, *head, &EventFilter::default(), CATCH_UP_CHUNK)
                    .await?;
            let Some(last) = events.last() else {
                // Pruned, or not visible yet: nothing more to deliver now.
                break;
            };
            let last = last.seq;
            self.publish(&events);
            *head = last;
        }
        Ok(())
    }
}

/// Listens for other instances' commits and key revocations until aborted, reconnecting with
/// a growing pause when the connection is lost.
pub async fn listen(url: String, feed: std::sync::Arc<Feed>, on_revoke: Option<RevokeHook>) {
    let mut pause = Duration::from_millis(100);
    loop {
        match listen_once(&url, &feed, on_revoke.as_ref()).await {
            Ok(()) => pause = Duration::from_millis(100),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), retry_in = ?pause, "the PostgreSQL listener stopped");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(url: &str, feed: &Feed, on_revoke: Option<&RevokeHook>) -> anyhow::Result<()> {
    use anyhow::Context;
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting the listener")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection must be polled for the client's queries and the notifications to flow.
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "the PostgreSQL listener connection failed");
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {EVENTS_CHANNEL}; LISTEN {KEYS_CHANNEL}"))
            .await
            .context("subscribing to notifications")?;
        // Whatever was committed while we were not listening; revocations are not in the
        // log, so every cached key is looked up again.
        if let Some(hook) = on_revoke {
            hook(None);
        }
        feed.catch_up(None).await?;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notification = rx.recv() => {
                    let Some(n) = notification else {
                        anyhow::bail!("the listener connection closed");
                    };
                    if n.channel() == KEYS_CHANNEL {
                        if let Some(hook) = on_revoke {
                            hook(Some(n.payload()));
                        }
                    } else if let Ok(seq) = n.payload().parse::<i64>() {
                        feed.catch_up(Some(seq)).await?;
                    }
                }
                _ = poll.tick() => feed.catch_up(None).await?,
            }
        }
    }
    .await;
    driver.abort();
    result
}
