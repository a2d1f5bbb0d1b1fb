//! What webhooks need from a storage backend, kept apart from [`crate::storage::Storage`] so
//! that trait grows by one method only ([`crate::storage::Storage::webhooks`]).
//!
//! The outbox itself is written by the backend's writer: every event it records is matched
//! against the enabled endpoints' subscriptions (held in memory by the writer, reloaded in the
//! same transaction as any endpoint change) and one delivery row per match is inserted in the
//! event's own transaction.

use async_trait::async_trait;

use super::breaker::Breaker;
use super::model::{
    Delivery, DeliveryCounts, DeliveryStatus, Endpoint, EndpointPatch, NewEndpoint, Subscription,
};
use crate::domain::Page;
use crate::events::{Event, EventKind};
use crate::storage::{StorageError, StorageResult};

/// A delivery that is due, as the worker claims it.
#[derive(Clone, Debug)]
pub struct Due {
    pub id: i64,
    pub endpoint_id: String,
    pub event_seq: i64,
    pub attempts: u32,
}

/// What one attempt decided, written in one transaction.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub delivery: i64,
    pub endpoint_id: String,
    pub attempts: u32,
    pub status: DeliveryStatus,
    /// When pending: the next attempt (ms).
    pub next_attempt_at: Option<i64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub at: i64,
    /// The endpoint's circuit and failure run after this attempt (`None`: unchanged).
    pub endpoint: Option<EndpointState>,
}

/// The parts of an endpoint the delivery loop changes.
#[derive(Clone, Debug)]
pub struct EndpointState {
    pub breaker: Breaker,
    /// Version of this state: it is written only over an older one (attempts settle in
    /// order, but their writes may commit out of order).
    pub seq: i64,
    pub failing_since: Option<i64>,
    /// `Some(reason)`: disable the endpoint (its pending deliveries become `failed`).
    pub disable: Option<String>,
    /// Pending deliveries due before this time wait until it (an open circuit).
    pub defer_until: Option<i64>,
}

/// The outbox at a glance, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutboxStats {
    pub pending: u64,
    /// `created_at` of the oldest pending delivery.
    pub oldest_pending: Option<i64>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// `Rejected` when `max` endpoints exist already.
    async fn create_endpoint(&self, new: NewEndpoint, max: usize) -> StorageResult<Endpoint>;
    /// Endpoints in id (creation) order after `after`.
    async fn list_endpoints(
        &self,
        limit: u32,
        after: Option<String>,
    ) -> StorageResult<Page<Endpoint, String>>;
    async fn get_endpoint(&self, id: &str) -> StorageResult<(Endpoint, DeliveryCounts)>;
    async fn update_endpoint(&self, id: &str, patch: EndpointPatch) -> StorageResult<Endpoint>;
    /// Deletes the endpoint and every delivery to it.
    async fn delete_endpoint(&self, id: &str) -> StorageResult<()>;
    /// Installs `secret`; the current one keeps signing until `previous_until` (ms).
    async fn rotate_secret(
        &self,
        id: &str,
        secret: String,
        previous_until: i64,
    ) -> StorageResult<Endpoint>;
    /// Deliveries of an endpoint, newest first, with ids below `before`.
    async fn list_deliveries(
        &self,
        id: &str,
        status: Option<DeliveryStatus>,
        limit: u32,
        before: Option<i64>,
    ) -> StorageResult<Page<Delivery, i64>>;
    /// Queues a new delivery of every retained event after `since` matching the endpoint;
    /// returns how many.
    async fn replay(&self, id: &str, since: i64) -> StorageResult<u64>;

    /// Every endpoint (the delivery loop's view).
    async fn all_endpoints(&self) -> StorageResult<Vec<Endpoint>>;
    /// Pending deliveries of enabled endpoints due at `now`, at most `per_endpoint` of each
    /// (one for an ordered endpoint, and only its oldest pending), at most `limit` in all.
    /// Backends shared by several instances lease them to this one until `lease_until`.
    async fn due(
        &self,
        now: i64,
        lease_until: i64,
        per_endpoint: u32,
        limit: u32,
    ) -> StorageResult<Vec<Due>>;
    /// Gives back claimed deliveries the loop did not attempt (their circuit or cap said
    /// wait), so they are not held until their lease expires.
    async fn release(&self, _ids: Vec<i64>) -> StorageResult<()> {
        Ok(())
    }
    /// When the next pending delivery is due.
    async fn next_due(&self) -> StorageResult<Option<i64>>;
    /// One retained event.
    async fn event(&self, seq: i64) -> StorageResult<Option<Event>>;
    async fn record(&self, record: AttemptRecord) -> StorageResult<()>;
    /// Pending deliveries of the endpoint due before `until` wait until then (open circuit).
    async fn defer(&self, endpoint_id: &str, until: i64) -> StorageResult<()>;
    async fn stats(&self) -> StorageResult<OutboxStats>;
    /// Deletes delivered deliveries older than `before` (ms); returns how many.
    async fn prune(&self, before: i64) -> StorageResult<u64>;
}

/// The enabled endpoints' subscriptions, as the writer matches events against them.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    subscriptions: Vec<Subscription>,
}

impl Outbox {
    pub fn new(subscriptions: Vec<Subscription>) -> Outbox {
        Outbox { subscriptions }
    }

    pub fn is_empty(&self) -> bool {
        self.subscriptions.is_empty()
    }

    /// The endpoints an event goes to.
    pub fn matching<'a>(
        &'a self,
        kind: EventKind,
        session_id: &'a str,
        directory: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.subscriptions
            .iter()
            .filter(move |s| s.matches(kind, session_id, directory))
            .map(|s| s.id.as_str())
    }
}

/// No endpoint `id` (the same answer from every backend).
pub fn not_found(id: &str) -> StorageError {
    StorageError::NotFound {
        what: "webhook",
        id: crate::domain::clip(id),
    }
}

/// Registering one endpoint more than `max`.
pub fn too_many(max: usize) -> StorageError {
    StorageError::Rejected(format!(
        "at most {max} webhook endpoints may exist; delete one first"
    ))
}

/// Replaying to a disabled endpoint.
pub fn disabled(id: &str) -> StorageError {
    StorageError::Conflict(format!(
        "webhook {id} is disabled; enable it (PATCH enabled: true) before replaying"
    ))
}
