//! Events: every change is recorded as one [`Event`] with a strictly increasing global `seq`,
//! written to the durable log in the same transaction as the change itself, then fanned out in
//! process by the [`Hub`] to subscribers, each behind a bounded queue. A [`Feed`] turns a
//! subscription plus the log into the exactly-once, in-order stream that SSE and WebSocket
//! clients see, resuming from any retained `seq`.

mod feed;
mod hub;

pub use feed::{Feed, Item};
pub use hub::{Hub, HubStats, Subscription};

use bytes::Bytes;

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

/// Which events a subscriber wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub session_id: Option<String>,
    pub directory: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, session_id: &str, directory: &str) -> bool {
        self.session_id.as_deref().is_none_or(|s| s == session_id)
            && self.directory.as_deref().is_none_or(|d| d == directory)
    }
}

/// An event encoded once for every subscriber: the JSON object (WebSocket text frames) and
/// the SSE frame that wraps it (`json` is a slice of `sse`, sharing its memory).
#[derive(Clone, Debug)]
pub struct Frame {
    pub seq: i64,
    pub session_id: SessionId,
    pub directory: String,
    pub json: Bytes,
    pub sse: Bytes,
}

impl Frame {
    pub fn new(event: &Event) -> Frame {
        // Every piece is either a number, one of our ids and type names (no characters that
        // need escaping), or JSON text the writer produced with serde_json.
        let json = format!(
            r#"{{"seq":{},"type":"{}","session_id":"{}","at":{},"data":{}}}"#,
            event.seq,
            event.kind.as_str(),
            event.session_id,
            event.at,
            event.data
        );
        let (sse, start) = sse_frame(Some(event.seq), event.kind.as_str(), &json);
        let sse = Bytes::from(sse);
        Frame {
            seq: event.seq,
            session_id: event.session_id.clone(),
            directory: event.directory.clone(),
            json: sse.slice(start..start + json.len()),
            sse,
        }
    }

    /// The encoded size a subscriber's queue is charged for this frame.
    pub fn cost(&self) -> usize {
        self.sse.len()
    }
}

/// `id`/`event`/`data` lines of one SSE frame; returns it with the offset of `data`'s value.
pub fn sse_frame(id: Option<i64>, event: &str, data: &str) -> (String, usize) {
    let mut frame = String::with_capacity(data.len() + event.len() + 32);
    if let Some(id) = id {
        frame.push_str("id: ");
        frame.push_str(&id.to_string());
        frame.push('\n');
    }
    frame.push_str("event: ");
    frame.push_str(event);
    frame.push_str("\ndata: ");
    let start = frame.len();
    frame.push_str(data);
    frame.push_str("\n\n");
    (frame, start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::IdGenerator;

    #[test]
    fn frames_carry_the_contract_shape() {
        let mut ids = IdGenerator::default();
        let (_, value) = ids.next(1);
        let event = Event {
            seq: 42,
            kind: EventKind::MessageCreated,
            session_id: SessionId::from_value(value),
            directory: "/d".into(),
            at: 1_763_800_000_000,
            data: r#"{"id":"msg_x","text":"a\nb"}"#.into(),
        };
        let frame = Frame::new(&event);
        let json: serde_json::Value = serde_json::from_slice(&frame.json).unwrap();
        assert_eq!(json["seq"], 42);
        assert_eq!(json["type"], "message.created");
        assert_eq!(json["session_id"], event.session_id.as_str());
        assert_eq!(json["at"], 1_763_800_000_000i64);
        assert_eq!(json["data"]["text"], "a\nb");
        let sse = std::str::from_utf8(&frame.sse).unwrap();
        assert!(sse.starts_with("id: 42\nevent: message.created\ndata: {"));
        assert!(sse.ends_with("}\n\n"));
        assert_eq!(
            sse.matches('\n').count(),
            4,
            "no raw newline inside the data line"
        );
    }

    #[test]
    fn filters() {
        let all = EventFilter::default();
        assert!(all.matches("s", "d"));
        let session = EventFilter {
            session_id: Some("s".into()),
            directory: None,
        };
        assert!(session.matches("s", "x") && !session.matches("t", "x"));
        let both = EventFilter {
            session_id: Some("s".into()),
            directory: Some("d".into()),
        };
        assert!(both.matches("s", "d") && !both.matches("s", "e"));
    }
}
