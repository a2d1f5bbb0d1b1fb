//! `sessiond import jsonl`: reads back what [`super::export`] writes.
//!
//! Ids, timestamps and metadata are kept as they are; each record is validated by the same
//! rules as the API's (a line that breaks one is refused, with its line number). A session and
//! the message lines that follow it are written together, in one transaction; what is stored
//! already is skipped, so a second run imports nothing and export → import → export gives the
//! same bytes.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ImportReport, Pending, Pipeline};
use crate::domain::{
    CreateMessage, CreateSession, Message, MessageId, NewMessage, NewSession, ParentRef, Role,
    Session, SessionId,
};
use crate::storage::{ImportMapping, ImportMessage, ImportSession, Storage};

#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct SessionLine {
    id: String,
    directory: String,
    title: String,
    #[serde(default)]
    parent_id: Option<String>,
    created_at: i64,
    updated_at: i64,
    #[serde(default)]
    archived_at: Option<i64>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct MessageLine {
    id: String,
    session_id: String,
    role: Role,
    parts: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
    created_at: i64,
}

/// The session being gathered: its record and the messages read after it so far.
struct Current {
    item: ImportSession,
    line: u64,
}

/// A session line that could not be taken, so its messages cannot be either.
struct RefusedSession {
    id: String,
    line: u64,
}

fn session(line: SessionLine) -> Result<Session, String> {
    let id =
        SessionId::parse(&line.id).ok_or_else(|| format!("{:?} is not a session id", line.id))?;
    let new = NewSession::try_from(CreateSession {
        directory: line.directory,
        title: Some(line.title),
        parent_id: line.parent_id,
        metadata: line.metadata,
    })
    .map_err(|e| e.0)?;
    if line.updated_at < line.created_at {
        return Err("updated_at is before created_at".to_owned());
    }
    Ok(Session {
        id,
        directory: new.directory,
        title: new.title,
        parent_id: match new.parent_id {
            Some(ParentRef::Id(parent)) => Some(parent),
            _ => None,
        },
        created_at: line.created_at,
        updated_at: line.updated_at,
        archived_at: line.archived_at,
        message_count: 0,
        metadata: new.metadata,
        version: 0,
    })
}

fn message(line: MessageLine, session: &SessionId) -> Result<ImportMessage, String> {
    let id =
        MessageId::parse(&line.id).ok_or_else(|| format!("{:?} is not a message id", line.id))?;
    let new = NewMessage::try_from(CreateMessage {
        role: line.role,
        parts: line.parts,
        metadata: line.metadata,
    })
    .map_err(|e| e.0)?;
    let raw = |json: String| RawValue::from_string(json).map_err(|e| e.to_string());
    Ok(ImportMessage {
        message: Message {
            id,
            session_id: session.clone(),
            role: new.role,
            parts: raw(new.parts)?,
            metadata: raw(new.metadata)?,
            created_at: line.created_at,
        },
        text: new.text,
    })
}

/// Imports the JSON Lines of `input` into `storage`.
pub async fn import(storage: Arc<dyn Storage>, input: impl BufRead) -> ImportReport {
    let started = Instant::now();
    let mut pipeline = Pipeline::new(storage);
    let mut input = input;
    let mut current: Option<Current> = None;
    let mut refused_session: Option<RefusedSession> = None;
    let mut buffer = Vec::new();
    let mut number = 0_u64;
    loop {
        buffer.clear();
        match input.read_until(b'\n', &mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                pipeline.report.refuse(
                    format!("line {}", number + 1),
                    format!("cannot read: {error}"),
                );
                break;
            }
        }
        number += 1;
        let location = format!("line {number}");
        let Ok(text) = std::str::from_utf8(&buffer) else {
            pipeline.report.refuse(location, "not UTF-8");
            continue;
        };
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        let kind = match serde_json::from_str::<Kind>(text) {
            Ok(kind) => kind.kind,
            Err(error) => {
                pipeline
                    .report
                    .refuse(location, format!("not a record with a `type`: {error}"));
                continue;
            }
        };
        match kind.as_str() {
            "session" => {
                pipeline.report.sessions.read += 1;
                if let Some(done) = current.take() {
                    submit(&mut pipeline, done).await;
                }
                refused_session = None;
                match serde_json::from_str::<SessionLine>(text)
                    .map_err(|e| e.to_string())
                    .and_then(session)
                {
                    Ok(session) => {
                        current = Some(Current {
                            item: ImportSession {
                                session,
                                messages: Vec::new(),
                            },
                            line: number,
                        });
                    }
                    Err(reason) => {
                        let id = serde_json::from_str::<serde_json::Value>(text)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        refused_session = Some(RefusedSession { id, line: number });
                        pipeline.report.refuse(location, reason);
                    }
                }
            }
            "message" => {
                pipeline.report.messages.read += 1;
                let parsed = match serde_json::from_str::<MessageLine>(text) {
                    Ok(parsed) => parsed,
                    Err(error) => {
                        pipeline.report.refuse(location, error.to_string());
                        continue;
                    }
                };
                match &mut current {
                    Some(open) if open.item.session.id.as_str() == parsed.session_id => {
                        let session = open.item.session.id.clone();
                        match message(parsed, &session) {
                            Ok(m) => open.item.messages.push(m),
                            Err(reason) => pipeline.report.refuse(location, reason),
                        }
                    }
                    _ => {
                        let reason = match &refused_session {
                            Some(refused) if refused.id == parsed.session_id => {
                                format!("its session (line {}) was refused", refused.line)
                            }
                            _ => format!(
                                "its session {:?} is not the session line before it",
                                crate::domain::clip(&parsed.session_id)
                            ),
                        };
                        pipeline.report.refuse(location, reason);
                    }
                }
            }
            other => pipeline.report.refuse(
                location,
                format!(
                    "unknown record type {:?} (expected session or message)",
                    crate::domain::clip(other)
                ),
            ),
        }
    }
    if let Some(done) = current.take() {
        submit(&mut pipeline, done).await;
    }
    pipeline.finish(started).await
}

async fn submit(pipeline: &mut Pipeline, current: Current) {
    pipeline
        .write(Pending {
            item: current.item,
            mapping: ImportMapping::default(),
            location: format!("line {}", current.line),
        })
        .await;
}
