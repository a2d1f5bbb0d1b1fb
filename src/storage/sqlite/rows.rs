//! Mapping between rows and domain types, shared by reads and writes.

use rusqlite::Row;
use rusqlite::types::Type;
use serde_json::value::RawValue;

use crate::domain::{Message, MessageId, Role, Session, SessionId};

pub const SESSION_COLUMNS: &str = "id, directory, title, parent_id, created_at, updated_at, \
     archived_at, message_count, version, metadata";

pub fn session(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: SessionId::from_trusted(row.get(0)?),
        directory: row.get(1)?,
        title: row.get(2)?,
        parent_id: row
            .get::<_, Option<String>>(3)?
            .map(SessionId::from_trusted),
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
        archived_at: row.get(6)?,
        message_count: row.get(7)?,
        version: row.get(8)?,
        metadata: raw_json(row, 9)?,
    })
}

pub const MESSAGE_COLUMNS: &str = "id, session_id, role, parts, metadata, created_at";

pub fn message(row: &Row<'_>) -> rusqlite::Result<Message> {
    let role: String = row.get(2)?;
    Ok(Message {
        id: MessageId::from_trusted(row.get(0)?),
        session_id: SessionId::from_trusted(row.get(1)?),
        role: Role::parse(&role).ok_or_else(|| conversion(2, format!("unknown role {role:?}")))?,
        parts: raw_json(row, 3)?,
        metadata: raw_json(row, 4)?,
        created_at: row.get(5)?,
    })
}

pub fn raw_json(row: &Row<'_>, index: usize) -> rusqlite::Result<Box<RawValue>> {
    RawValue::from_string(row.get(index)?).map_err(|e| conversion(index, e.to_string()))
}

pub fn conversion(index: usize, why: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, Type::Text, why.into())
}
