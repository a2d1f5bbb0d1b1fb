//! The in-process fan-out of committed events to subscribers.
//!
//! Subscribers are indexed by the filter they asked for (session, directory, or everything), so
//! publishing an event touches only the subscribers that want it: filters apply before anything
//! is queued. Each subscriber has its own queue, bounded by bytes; a subscriber whose queue is
//! full is marked lagged and gets nothing more, so one slow client never slows the others or
//! grows the server's memory beyond its bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::{Event, EventFilter, Frame};

/// One subscriber's queue, shared between the hub (producer) and its [`Subscription`].
struct Queue {
    filter: EventFilter,
    sender: mpsc::UnboundedSender<Arc<Frame>>,
    /// Bytes queued and not yet taken by the subscriber.
    queued: AtomicUsize,
    limit: usize,
    lagged: AtomicBool,
    lag: Notify,
}

impl Queue {
    /// Queues `frame` unless that would pass the byte limit, in which case the subscriber is
    /// marked lagged (once) and woken to tell its client.
    fn offer(&self, frame: &Arc<Frame>, stats: &HubStats) -> bool {
        if self.lagged.load(Ordering::Relaxed) {
            return false;
        }
        let cost = frame.cost();
        let queued = self.queued.fetch_add(cost, Ordering::AcqRel) + cost;
        if queued > self.limit {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            if !self.lagged.swap(true, Ordering::AcqRel) {
                stats.lagged.fetch_add(1, Ordering::Relaxed);
            }
            self.lag.notify_one();
            return false;
        }
        if self.sender.send(frame.clone()).is_err() {
            self.queued.fetch_sub(cost, Ordering::AcqRel);
            return false;
        }
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// Counters for metrics and the status page.
#[derive(Debug, Default)]
pub struct HubStats {
    pub subscribers: AtomicUsize,
    /// Events queued for a subscriber (one per subscriber per event).
    pub delivered: AtomicU64,
    /// Subscribers dropped because their queue filled up.
    pub lagged: AtomicU64,
    /// Events published (once each, whatever the number of subscribers).
    pub published: AtomicU64,
}

#[derive(Default)]
struct Registry {
    everything: HashMap<u64, Arc<Queue>>,
    by_session: HashMap<String, HashMap<u64, Arc<Queue>>>,
    by_directory: HashMap<String, HashMap<u64, Arc<Queue>>>,
}

impl Registry {
    /// The index a filter lives in: by session when it names one (the most selective), else by
    /// directory, else the subscribers of everything.
    fn slot(&mut self, filter: &EventFilter) -> &mut HashMap<u64, Arc<Queue>> {
        match (&filter.session_id, &filter.directory) {
            (Some(session), _) => self.by_session.entry(session.clone()).or_default(),
            (None, Some(directory)) => self.by_directory.entry(directory.clone()).or_default(),
            (None, None) => &mut self.everything,
        }
    }

    fn remove(&mut self, id: u64, filter: &EventFilter) {
        match (&filter.session_id, &filter.directory) {
            (Some(session), _) => remove_from(&mut self.by_session, session, id),
            (None, Some(directory)) => remove_from(&mut self.by_directory, directory, id),
            (None, None) => {
                self.everything.remove(&id);
            }
        }
    }
}

fn remove_from(index: &mut HashMap<String, HashMap<u64, Arc<Queue>>>, key: &str, id: u64) {
    if let Some(queues) = index.get_mut(key) {
        queues.remove(&id);
        if queues.is_empty() {
            index.remove(key);
        }
    }
}

pub struct Hub {
    /// The newest `seq` published: what list ETags are made of.
    head: std::sync::atomic::AtomicI64,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    limit: usize,
    stats: HubStats,
}

/// What a subscriber receives next.
pub enum Received {
    Frame(Arc<Frame>),
    /// The queue overflowed: the client is too slow and must be disconnected.
    Lagged,
    /// The hub is gone (shutdown).
    Closed,
}

/// A live subscription; unsubscribes when dropped.
pub struct Subscription {
    id: u64,
    hub: Arc<Hub>,
    queue: Arc<Queue>,
    receiver: mpsc::UnboundedReceiver<Arc<Frame>>,
}

impl Hub {
    /// A hub whose subscribers may each have up to `queue_limit` bytes queued.
    pub fn new(queue_limit: usize) -> Arc<Hub> {
        Arc::new(Hub {
            head: std::sync::atomic::AtomicI64::new(0),
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            limit: queue_limit.max(1),
            stats: HubStats::default(),
        })
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    /// The newest `seq` published (or set at start-up from the log).
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    /// Starts the head at the log's newest `seq` (before the first publish).
    pub fn set_head(&self, seq: i64) {
        self.head.fetch_max(seq, Ordering::AcqRel);
    }

    /// Starts queueing events that match `filter`.
    pub fn subscribe(self: &Arc<Self>, filter: EventFilter) -> Subscription {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue {
            filter,
            sender,
            queued: AtomicUsize::new(0),
            limit: self.limit,
            lagged: AtomicBool::new(false),
            lag: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.registry()
            .slot(&queue.filter)
            .insert(id, queue.clone());
        self.stats.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            id,
            hub: self.clone(),
            queue,
            receiver,
        }
    }

    /// Fans committed events out, in `seq` order, to the subscribers that want them.
    pub fn publish(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let frames: Vec<Arc<Frame>> = events.iter().map(|e| Arc::new(Frame::new(e))).collect();
        if let Some(last) = events.last() {
            self.head.fetch_max(last.seq, Ordering::AcqRel);
        }
        self.stats
            .published
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        let registry = self.registry();
        for frame in &frames {
            for queue in registry.everything.values() {
                queue.offer(frame, &self.stats);
            }
            if let Some(queues) = registry.by_session.get(frame.session_id.as_str()) {
                for queue in queues.values() {
                    if queue
                        .filter
                        .matches(frame.session_id.as_str(), &frame.directory)
                    {
                        queue.offer(frame, &self.stats);
                    }
                }
            }
            if let Some(queues) = registry.by_directory.get(&frame.directory) {
                for queue in queues.values() {
                    queue.offer(frame, &self.stats);
                }
            }
        }
    }
}

impl Subscription {
    /// The next frame, or why there is none. Cancel-safe.
    pub async fn recv(&mut self) -> Received {
        if self.queue.lagged.load(Ordering::Acquire) {
            return Received::Lagged;
        }
        tokio::select! {
            biased;
            () = self.queue.lag.notified() => Received::Lagged,
            frame = self.receiver.recv() => match frame {
                Some(frame) => {
                    self.queue.queued.fetch_sub(frame.cost(), Ordering::AcqRel);
                    Received::Frame(frame)
                }
                None => Received::Closed,
            },
        }
    }

    /// Completes once this subscriber has lagged (for callers blocked on a slow client).
    pub async fn lagged(&self) {
        if self.queue.lagged.load(Ordering::Acquire) {
            return;
        }
        self.queue.lag.notified().await;
    }

    /// Bytes queued for this subscriber.
    pub fn queued_bytes(&self) -> usize {
        self.queue.queued.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.registry().remove(self.id, &self.queue.filter);
        self.hub.stats.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{IdGenerator, SessionId};
    use crate::events::EventKind;

    fn event(seq: i64, session: &SessionId, directory: &str, size: usize) -> Event {
        Event {
            seq,
            kind: EventKind::MessageCreated,
            session_id: session.clone(),
            directory: directory.into(),
            at: 1,
            data: format!(r#"{{"pad":"{}"}}"#, "x".repeat(size)),
        }
    }

    fn session() -> SessionId {
        let mut ids = IdGenerator::default();
        let (_, value) = ids.next(fastrand::i64(1..1_000_000));
        SessionId::from_value(value)
    }

    async fn next_seq(sub: &mut Subscription) -> Option<i64> {
        match tokio::time::timeout(std::time::Duration::from_millis(50), sub.recv()).await {
            Ok(Received::Frame(frame)) => Some(frame.seq),
            _ => None,
        }
    }

    #[tokio::test]
    async fn filters_route_events_and_dropping_unsubscribes() {
        let hub = Hub::new(1 << 20);
        let (a, b) = (session(), session());
        let mut all = hub.subscribe(EventFilter::default());
        let mut only_a = hub.subscribe(EventFilter {
            session_id: Some(a.to_string()),
            directory: None,
        });
        let mut dir_y = hub.subscribe(EventFilter {
            session_id: None,
            directory: Some("/y".into()),
        });
        hub.publish(&[
            event(1, &a, "/x", 1),
            event(2, &b, "/y", 1),
            event(3, &a, "/y", 1),
        ]);
        assert_eq!(next_seq(&mut all).await, Some(1));
        assert_eq!(next_seq(&mut all).await, Some(2));
        assert_eq!(next_seq(&mut all).await, Some(3));
        assert_eq!(next_seq(&mut only_a).await, Some(1));
        assert_eq!(next_seq(&mut only_a).await, Some(3));
        assert_eq!(next_seq(&mut only_a).await, None);
        assert_eq!(next_seq(&mut dir_y).await, Some(2));
        assert_eq!(next_seq(&mut dir_y).await, Some(3));
        assert_eq!(hub.stats().subscribers.load(Ordering::Relaxed), 3);
        drop(only_a);
        assert_eq!(hub.stats().subscribers.load(Ordering::Relaxed), 2);
        assert!(hub.registry().by_session.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_lags_only_its_subscriber() {
        let hub = Hub::new(10_000);
        let s = session();
        let mut slow = hub.subscribe(EventFilter::default());
        let mut fast = hub.subscribe(EventFilter::default());
        for seq in 1..=30 {
            hub.publish(&[event(seq, &s, "/d", 1000)]);
            assert_eq!(
                next_seq(&mut fast).await,
                Some(seq),
                "the fast one gets everything"
            );
        }
        assert!(
            slow.queued_bytes() <= 10_000,
            "the queue stays within its bound"
        );
        // A lagged subscriber hears about it first: its stale backlog is not worth sending.
        assert!(matches!(slow.recv().await, Received::Lagged));
        assert_eq!(hub.stats().lagged.load(Ordering::Relaxed), 1);
    }
}
