//! `opencode.db`, opencode's SQLite storage since 1.2, read in one read transaction so that a
//! live opencode writing beside the import is seen as of one instant.
//!
//! It holds one history or two. 1.x keeps sessions in `session` and messages in `message` and
//! `part`. OpenCode 2.x keeps them in `session_v2` and `session_message` ([`super::v2`]); on
//! its first start it copies the 1.x history there under the same ids, and leaves the 1.x
//! tables as they were. A session in both is therefore read from `session_v2`, and the 1.x copy
//! is passed over, as OpenCode 2 passes it over (messages a 1.x opencode adds to it later are
//! not read); only when its copy holds no message at all are its messages read from the 1.x
//! tables. A session only in `session` (made by a 1.x opencode after that copy) is read from the
//! 1.x tables. A 1.x release can also write `session_message` beside `message` (an experimental
//! setting): those rows belong to a session of `session`, and its 1.x tables are its history.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Value};

use super::v2::{self, Entry};
use super::{
    Record, Refusal, Source, SourceMessage, SourcePart, SourceSession, Unreadable, clip_title,
    raw_json, record, record_created,
};

/// The 1.x tables.
const V1_TABLES: [&str; 3] = ["session", "message", "part"];
/// OpenCode 2.x's tables.
const V2_TABLES: [&str; 2] = ["session_v2", "session_message"];

/// `opencode.db` (releases 1.2 and later), read in one read transaction.
pub(super) struct Database {
    conn: Connection,
    /// The 1.x tables are there.
    v1: bool,
    /// OpenCode 2.x's tables are there.
    v2: bool,
    /// The columns of the session tables there are (they grow across releases).
    columns: HashMap<&'static str, HashSet<String>>,
    /// The sessions read from `session_v2`: their messages are `session_message` rows.
    v2_sessions: HashSet<String>,
    /// The parts of the session whose messages were read last, by message id: read in one
    /// query when its first message asks for them, rather than one query per message (and not
    /// at all when none does, as in a second run). A part whose data is unreadable is refused
    /// when its message asks for it (none of a refused message's parts are read). An OpenCode 2
    /// session's parts are put here as its messages are read, from their own records.
    parts: HashMap<String, Vec<Result<SourcePart, Refusal>>>,
    /// The session whose parts are still to be read into `parts`.
    parts_unread: Option<String>,
}

impl Database {
    pub(super) fn open(path: &Path) -> anyhow::Result<Database> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} read-only", path.display()))?;
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")
            .context("configuring the source connection")?;
        // Every later read sees the database as of this one (a live opencode may be writing).
        conn.execute_batch("BEGIN")
            .context("starting the read transaction")?;
        let tables = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
            .and_then(|mut statement| {
                statement
                    .query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<HashSet<_>, _>>()
            })
            .with_context(|| format!("{} is not a readable SQLite database", path.display()))?;
        let v1 = V1_TABLES.iter().all(|t| tables.contains(*t));
        let v2 = V2_TABLES.iter().all(|t| tables.contains(*t));
        if !v1 && !v2 {
            anyhow::bail!(
                "{} is not an opencode database (no session, message and part tables, nor \
                 OpenCode 2's session_v2 and session_message)",
                path.display()
            );
        }
        let mut columns = HashMap::new();
        for (table, there) in [("session", v1), ("session_v2", v2)] {
            if there {
                let names = conn
                    .prepare("SELECT name FROM pragma_table_info(?1)")?
                    .query_map([table], |row| row.get::<_, String>(0))?
                    .collect::<Result<HashSet<_>, _>>()
                    .with_context(|| format!("reading the {table} table's columns"))?;
                columns.insert(table, names);
            }
        }
        Ok(Database {
            conn,
            v1,
            v2,
            columns,
            v2_sessions: HashSet::new(),
            parts: HashMap::new(),
            parts_unread: None,
        })
    }

    /// Reads the parts of `session`'s messages into `parts`.
    fn read_parts(&mut self, session: &str) -> anyhow::Result<()> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT message_id, id, data FROM part \
                 WHERE message_id IN (SELECT id FROM message WHERE session_id = ?1)",
            )
            .context("reading parts")?;
        let mut rows = statement.query([session]).context("reading parts")?;
        while let Some(row) = rows.next().context("reading parts")? {
            let message: String = row.get(0)?;
            let id: String = row.get(1)?;
            let location = format!("part row {id}");
            let part = match data_object(row.get(2)) {
                Ok(data) => Ok(SourcePart {
                    id: Some(id),
                    location,
                    data,
                }),
                Err(reason) => Err(Refusal { location, reason }),
            };
            self.parts.entry(message).or_default().push(part);
        }
        Ok(())
    }

    /// `column` when `table` has it, else NULL.
    fn column(&self, table: &str, column: &str) -> String {
        if self.columns.get(table).is_some_and(|c| c.contains(column)) {
            format!("\"{column}\"")
        } else {
            "NULL".to_owned()
        }
    }

    /// The sessions in `table` (`session` or `session_v2`).
    fn session_rows(&self, table: &str) -> anyhow::Result<Vec<SourceSession>> {
        let names = [
            "id",
            "project_id",
            "parent_id",
            "slug",
            "directory",
            "title",
            "version",
            "share_url",
            "summary_additions",
            "summary_deletions",
            "summary_files",
            "revert",
            "permission",
            "time_created",
            "time_updated",
            "time_compacting",
            "time_archived",
            "workspace_id",
            "path",
            // Later 1.x releases: the session's totals, agent, model and goal.
            "cost",
            "tokens_input",
            "tokens_output",
            "tokens_reasoning",
            "tokens_cache_read",
            "tokens_cache_write",
            "agent",
            "model",
            "goal",
            // Later still (and OpenCode 2's `session_v2`): metadata, and where a fork came from.
            "metadata",
            "fork_session_id",
            "fork_boundary",
        ];
        let select = names
            .iter()
            .map(|c| self.column(table, c))
            .collect::<Vec<_>>()
            .join(", ");
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {select} FROM {table}"))
            .context("reading sessions")?;
        let rows = statement
            .query_map([], |row| {
                let text = |i: usize| row.get::<_, Option<String>>(i);
                let number = |i: usize| row.get::<_, Option<i64>>(i);
                let id: String = row.get(0)?;
                let mut extra = Map::new();
                extra.insert("id".into(), Value::String(id.clone()));
                for (key, index) in [
                    ("projectID", 1),
                    ("parentID", 2),
                    ("slug", 3),
                    ("version", 6),
                    ("workspaceID", 17),
                    ("path", 18),
                ] {
                    if let Some(value) = text(index)? {
                        extra.insert(key.into(), Value::String(value));
                    }
                }
                if let Some(url) = text(7)? {
                    extra.insert("share".into(), serde_json::json!({ "url": url }));
                }
                let (additions, deletions, files) = (number(8)?, number(9)?, number(10)?);
                if additions.is_some() || deletions.is_some() || files.is_some() {
                    extra.insert(
                        "summary".into(),
                        serde_json::json!({"additions": additions, "deletions": deletions, "files": files}),
                    );
                }
                if let Some(cost) = row
                    .get::<_, Option<f64>>(19)?
                    .and_then(serde_json::Number::from_f64)
                {
                    extra.insert("cost".into(), Value::Number(cost));
                }
                let tokens = [number(20)?, number(21)?, number(22)?, number(23)?, number(24)?];
                if tokens.iter().any(Option::is_some) {
                    let [input, output, reasoning, read, write] = tokens;
                    extra.insert(
                        "tokens".into(),
                        serde_json::json!({"input": input, "output": output, "reasoning": reasoning,
                            "cache": {"read": read, "write": write}}),
                    );
                }
                if let Some(agent) = text(25)? {
                    extra.insert("agent".into(), Value::String(agent));
                }
                if let Some(fork) = text(29)? {
                    extra.insert("forkSessionID".into(), Value::String(fork));
                }
                for (key, index) in [
                    ("revert", 11),
                    ("permission", 12),
                    ("model", 26),
                    ("goal", 27),
                    ("metadata", 28),
                    ("forkBoundary", 30),
                ] {
                    if let Some(value) = json_column(text(index)?) {
                        extra.insert(key.into(), value);
                    }
                }
                let created = number(13)?.unwrap_or(0);
                let updated = number(14)?.unwrap_or(created);
                let compacting = number(15)?;
                let archived = number(16)?;
                let mut time = Map::new();
                time.insert("created".into(), created.into());
                time.insert("updated".into(), updated.into());
                if let Some(at) = compacting {
                    time.insert("compacting".into(), at.into());
                }
                if let Some(at) = archived {
                    time.insert("archived".into(), at.into());
                }
                extra.insert("time".into(), Value::Object(time));
                Ok(SourceSession {
                    location: format!("{table} row {id}"),
                    parent: text(2)?,
                    directory: text(4)?
                        .filter(|d| !d.is_empty())
                        .unwrap_or_else(|| "/".to_owned()),
                    title: clip_title(text(5)?.unwrap_or_default()),
                    id,
                    created,
                    updated,
                    archived,
                    extra,
                })
            })
            .context("reading sessions")?;
        rows.collect::<Result<Vec<_>, _>>()
            .context("reading sessions")
    }

    /// The messages of a session of `session_v2`, their parts kept in `parts`;
    /// `None` when it has no rows but markers (none of its messages were copied there).
    fn v2_messages(
        &mut self,
        session: &SourceSession,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<Option<Vec<SourceMessage>>> {
        self.parts.clear();
        self.parts_unread = None;
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, type, seq, time_created, data FROM session_message \
                 WHERE session_id = ?1",
            )
            .context("reading messages")?;
        let mut rows = statement.query([&session.id]).context("reading messages")?;
        let (mut any, mut messages) = (false, Vec::new());
        while let Some(row) = rows.next().context("reading messages")? {
            let id: String = row.get(0)?;
            let location = format!("session_message row {id}");
            let kind = match row.get::<_, Option<String>>(1) {
                Ok(Some(kind)) => Ok(kind),
                Ok(None) => Err("no type".to_owned()),
                Err(e) => Err(format!("type cannot be read as text: {e}")),
            };
            let seq = match row.get::<_, Option<i64>>(2) {
                Ok(Some(seq)) => Ok(seq),
                _ => Err("seq is not an integer".to_owned()),
            };
            let column: Option<i64> = row.get(3).unwrap_or(None);
            let entry = kind.and_then(|kind| {
                let data = data_object(row.get(4))?;
                Ok((v2::entry(&kind, data)?, seq?))
            });
            any |= !matches!(entry, Ok((Entry::Marker, _)));
            let (mut info, parts, seq) = match entry {
                Ok((Entry::Marker, _)) => continue,
                Ok((Entry::Message { info, parts }, seq)) => (info, parts, seq),
                Err(reason) => {
                    refused.push(Refusal { location, reason });
                    continue;
                }
            };
            // Its place in the session's timeline, kept with the rest of the row.
            if let Ok(seq) = raw_json(&seq) {
                info.insert("seq".to_owned(), seq);
            }
            let parts = parts
                .into_iter()
                .enumerate()
                .map(|(at, part)| {
                    let location = format!("{location}, part {at}");
                    match part {
                        Ok(data) => Ok(SourcePart {
                            id: None,
                            location,
                            data,
                        }),
                        Err(reason) => Err(Refusal { location, reason }),
                    }
                })
                .collect();
            self.parts.insert(id.clone(), parts);
            // The record's own time: a copy's row may have been made when it was copied.
            let created = record_created(&info).or(column);
            let mut message = SourceMessage::new(id, location, created, info, session);
            message.order = Some(seq);
            messages.push(message);
        }
        Ok(any.then_some(messages))
    }
}

/// A `data` column's JSON object, or why not (a value that is not text, a BLOB, is refused as
/// its row alone).
fn data_object(data: rusqlite::Result<Option<String>>) -> Result<Record, String> {
    match data {
        Err(e) => Err(format!("data cannot be read as text: {e}")),
        Ok(None) => Err("no data".to_owned()),
        Ok(Some(json)) => record(&json).map_err(|why| match why {
            Unreadable::NotAnObject => "data is not a JSON object".to_owned(),
            Unreadable::Broken(e) => format!("broken JSON in data: {e}"),
        }),
    }
}

/// The text of a JSON column, parsed; text that is not JSON stays a string.
fn json_column(raw: Option<String>) -> Option<Value> {
    raw.map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

impl Source for Database {
    fn sessions(&mut self, _refused: &mut Vec<Refusal>) -> anyhow::Result<Vec<SourceSession>> {
        let mut sessions = Vec::new();
        if self.v2 {
            sessions = self.session_rows("session_v2")?;
            self.v2_sessions = sessions.iter().map(|s| s.id.clone()).collect();
        }
        if self.v1 {
            let v1 = self.session_rows("session")?;
            // A 1.x session that OpenCode 2 copied is read from its copy, which it kept up.
            sessions.extend(v1.into_iter().filter(|s| !self.v2_sessions.contains(&s.id)));
        }
        Ok(sessions)
    }

    fn messages(
        &mut self,
        session: &SourceSession,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<Vec<SourceMessage>> {
        if self.v2_sessions.contains(&session.id) {
            // A copy with no messages at all (none were copied) leaves them where they were.
            if let Some(messages) = self.v2_messages(session, refused)? {
                return Ok(messages);
            }
        }
        if !self.v1 {
            return Ok(Vec::new());
        }
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, time_created, data FROM message WHERE session_id = ?1")
            .context("reading messages")?;
        let mut rows = statement.query([&session.id]).context("reading messages")?;
        let mut messages = Vec::new();
        while let Some(row) = rows.next().context("reading messages")? {
            let id: String = row.get(0)?;
            let location = format!("message row {id}");
            let created: Option<i64> = row.get(1)?;
            match data_object(row.get(2)) {
                Ok(info) => messages.push(SourceMessage::new(id, location, created, info, session)),
                Err(reason) => refused.push(Refusal { location, reason }),
            }
        }
        self.parts.clear();
        self.parts_unread = Some(session.id.clone());
        Ok(messages)
    }

    fn parts(
        &mut self,
        message: &SourceMessage,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<Vec<SourcePart>> {
        if let Some(session) = self.parts_unread.take()
            && let Err(error) = self.read_parts(&session)
        {
            // Tried again for the next message, as a query per message would be.
            self.parts.clear();
            self.parts_unread = Some(session);
            return Err(error);
        }
        let mut parts = Vec::new();
        for part in self.parts.remove(&message.id).unwrap_or_default() {
            match part {
                Ok(part) => parts.push(part),
                Err(refusal) => refused.push(refusal),
            }
        }
        Ok(parts)
    }

    fn orphans(
        &mut self,
        _sessions: &HashSet<String>,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<()> {
        let mut push = |sql: &str, what: &str, owner: &str| -> anyhow::Result<()> {
            let mut statement = self.conn.prepare(sql).context("finding orphans")?;
            let mut rows = statement.query([]).context("finding orphans")?;
            while let Some(row) = rows.next().context("finding orphans")? {
                let id: String = row.get(0)?;
                let owner_id: Option<String> = row.get(1)?;
                refused.push(Refusal {
                    location: format!("{what} row {id}"),
                    reason: format!(
                        "its {owner} {} is not in the database",
                        owner_id.unwrap_or_default()
                    ),
                });
            }
            Ok(())
        };
        if self.v1 {
            // (the rows, their owner's column, the owner's table, what it is)
            for (rows, column, owners, owner) in [
                ("message", "session_id", "session", "session"),
                ("part", "message_id", "message", "message"),
            ] {
                push(
                    &format!(
                        "SELECT r.id, r.{column} FROM {rows} r WHERE NOT EXISTS \
                         (SELECT 1 FROM {owners} o WHERE o.id = r.{column}) ORDER BY r.id"
                    ),
                    rows,
                    owner,
                )?;
            }
        }
        if self.v2 {
            // Rows a 1.x opencode wrote beside its own tables (an experimental setting) belong
            // to a session of `session`; markers would not have been messages.
            let of_v1 = if self.v1 {
                " AND NOT EXISTS (SELECT 1 FROM session o WHERE o.id = r.session_id)"
            } else {
                ""
            };
            let markers = v2::MARKERS.map(|m| format!("'{m}'")).join(", ");
            push(
                &format!(
                    "SELECT r.id, r.session_id FROM session_message r WHERE NOT EXISTS \
                     (SELECT 1 FROM session_v2 o WHERE o.id = r.session_id){of_v1} \
                     AND r.type NOT IN ({markers}) ORDER BY r.id"
                ),
                "session_message",
                "session",
            )?;
        }
        Ok(())
    }
}
