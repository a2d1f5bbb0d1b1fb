//! The stream one client sees: replay from the log, then live events, exactly once and in
//! order.
//!
//! A feed subscribes to the hub *before* it reads the log, so an event is either committed
//! before the first read (and replayed) or published after the subscription (and queued); an
//! event that is both is recognised by its `seq` and sent once. `next` is cancel-safe, so the
//! SSE and WebSocket loops can wait on it next to timers and client input.

use std::collections::VecDeque;
use std::sync::Arc;

use super::hub::Received;
use super::{EventFilter, Frame, Hub, Subscription};
use crate::storage::{Storage, StorageResult};

/// Events replayed per log read.
const REPLAY_CHUNK: usize = 512;

/// What to send the client next.
pub enum Item {
    Event(Arc<Frame>),
    /// The requested `since` is outside the retained log (or ahead of it): the client must
    /// re-fetch its state; the stream continues live from `seq`.
    Reset {
        seq: i64,
        oldest: Option<i64>,
    },
    /// The client fell too far behind and is being disconnected; it can resume from `seq`.
    Lagged {
        seq: i64,
    },
    /// The hub is gone (the server is stopping).
    Closed,
}

pub struct Feed {
    storage: Arc<dyn Storage>,
    subscription: Subscription,
    filter: EventFilter,
    /// The highest `seq` handed out (or skipped as before the client's position).
    last_seq: i64,
    replaying: bool,
    pending: VecDeque<Item>,
}

impl Feed {
    /// A feed of `filter`'s events after `since` (`None`: from now on).
    pub async fn start(
        storage: Arc<dyn Storage>,
        hub: &Arc<Hub>,
        filter: EventFilter,
        since: Option<i64>,
    ) -> StorageResult<Feed> {
        let subscription = hub.subscribe(filter.clone());
        // "From now on" is from the last event this instance has published, not from the
        // log's head: an event committed (here, or on another instance) but not yet published
        // here is still on its way through the hub, and must not be taken as seen.
        let published = hub.head();
        let mut feed = Feed {
            storage,
            subscription,
            filter,
            last_seq: published,
            replaying: false,
            pending: VecDeque::new(),
        };
        if let Some(since) = since {
            // Only a resume needs the log's bounds (a fresh stream costs no database call).
            let bounds = feed.storage.event_bounds().await?;
            let retained =
                since >= bounds.newest || bounds.oldest.is_some_and(|oldest| oldest <= since + 1);
            if since > bounds.newest || !retained {
                feed.pending.push_back(Item::Reset {
                    seq: bounds.newest,
                    oldest: bounds.oldest,
                });
            } else {
                feed.last_seq = since;
                feed.replaying = since < bounds.newest;
            }
        }
        Ok(feed)
    }

    /// The position a client resumes from after the items handed out so far.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// The next item. Cancel-safe: nothing is lost if the future is dropped before it
    /// completes.
    pub async fn next(&mut self) -> StorageResult<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(item);
            }
            if self.replaying {
                let events = self
                    .storage
                    .events_after(self.last_seq, &self.filter, REPLAY_CHUNK)
                    .await?;
                if events.len() < REPLAY_CHUNK {
                    self.replaying = false;
                }
                for event in &events {
                    self.last_seq = event.seq;
                    self.pending
                        .push_back(Item::Event(Arc::new(Frame::new(event))));
                }
                continue;
            }
            return Ok(match self.subscription.recv().await {
                // Replayed already, or before the client's position.
                Received::Frame(frame) if frame.seq <= self.last_seq => continue,
                Received::Frame(frame) => {
                    self.last_seq = frame.seq;
                    Item::Event(frame)
                }
                Received::Lagged => Item::Lagged { seq: self.last_seq },
                Received::Closed => Item::Closed,
            });
        }
    }

    /// Completes when this client has lagged; for senders blocked on a slow client.
    pub async fn lagged(&self) {
        self.subscription.lagged().await;
    }
}
