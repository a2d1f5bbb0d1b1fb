//! Events: every change is recorded as one [`Event`] with a strictly increasing global `seq`,
//! written to the durable log in the same transaction as the change itself.

use crate::domain::SessionId;

/// What kind of change an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    SessionCreated,
    SessionUpdated,
    SessionDeleted,
    MessageCreated,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SessionCreated => "session.created",
            EventKind::SessionUpdated => "session.updated",
            EventKind::SessionDeleted => "session.deleted",
            EventKind::MessageCreated => "message.created",
        }
    }

    pub fn parse(raw: &str) -> Option<EventKind> {
        match raw {
            "session.created" => Some(EventKind::SessionCreated),
            "session.updated" => Some(EventKind::SessionUpdated),
            "session.deleted" => Some(EventKind::SessionDeleted),
            "message.created" => Some(EventKind::MessageCreated),
            _ => None,
        }
    }
}

/// One committed change.
#[derive(Clone, Debug)]
pub struct Event {
    pub seq: i64,
    pub kind: EventKind,
    pub session_id: SessionId,
    /// The session's directory, kept so subscribers can filter without a lookup.
    pub directory: String,
    /// When the change happened (ms since the epoch).
    pub at: i64,
    /// The JSON object of the changed resource (the session or the message).
    pub data: String,
}
