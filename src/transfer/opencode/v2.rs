//! OpenCode 2.x's history: a `session_message` row per entry of a session's timeline, its `type`
//! in a column and the rest in `data` (`packages/schema/src/session-message.ts` in opencode's
//! sources). A message's content sits inside its record instead of in `part` rows, so each
//! record is turned here into a role and parts, in the record's own order: every text becomes a
//! `text` part (so it is searchable, as 1.x's text parts are), an assistant's content entries
//! stay as 2.x wrote them, and every field not made into a part stays in the message's info.
//! Entries that only mark a change of the session's state (agent, model or place switched; the
//! session went idle) are not messages.

use serde_json::Value;
use serde_json::value::RawValue;

use super::{Record, raw_json};

/// What a `session_message` row is.
pub(super) enum Entry {
    /// A message: its info (with the `role` a 1.x message has) and its parts in order, each
    /// a part or why it cannot be one.
    Message {
        info: Record,
        parts: Vec<Result<Record, String>>,
    },
    /// A change of the session's state, not a message.
    Marker,
}

/// The types of entry that only mark a change of the session's state.
pub(super) const MARKERS: [&str; 4] = [
    "agent-switched",
    "model-switched",
    "location-switched",
    "idle",
];

/// The entry a row of type `kind` with `data` is, or why it is none the import knows.
pub(super) fn entry(kind: &str, mut data: Record) -> Result<Entry, String> {
    let mut parts = Vec::new();
    let role = match kind {
        marker if MARKERS.contains(&marker) => return Ok(Entry::Marker),
        "user" => {
            text_part(&mut data, "text", &[], &mut parts)?;
            for (key, kind) in [("files", "file"), ("agents", "agent"), ("skills", "skill")] {
                listed_parts(&mut data, key, kind, &mut parts)?;
            }
            "user"
        }
        // What 1.x wrote as a user message's synthetic text part.
        "synthetic" => {
            text_part(&mut data, "text", &[("synthetic", "true")], &mut parts)?;
            "user"
        }
        "system" | "skill" => {
            text_part(&mut data, "text", &[], &mut parts)?;
            "system"
        }
        "shell" => {
            let mut part = typed("shell")?;
            for key in ["shellID", "command", "status", "exit", "output"] {
                if let Some(value) = data.remove(key) {
                    part.insert(key.to_owned(), value);
                }
            }
            parts.push(Ok(part));
            "tool"
        }
        "assistant" => {
            if let Some(content) = data.remove("content") {
                match serde_json::from_str::<Vec<Box<RawValue>>>(content.get()) {
                    Ok(entries) => parts.extend(entries.iter().enumerate().map(|(at, entry)| {
                        serde_json::from_str::<Record>(entry.get())
                            .map_err(|_| format!("content[{at}] is not a JSON object"))
                    })),
                    Err(_) => return Err("`content` is not an array".to_owned()),
                }
            }
            "assistant"
        }
        // 1.x's summary message: the compaction's state as a part, its summary as text.
        "compaction" => {
            let mut part = typed("compaction")?;
            for key in ["status", "reason", "recent", "error"] {
                if let Some(value) = data.remove(key) {
                    part.insert(key.to_owned(), value);
                }
            }
            parts.push(Ok(part));
            text_part(&mut data, "summary", &[], &mut parts)?;
            "assistant"
        }
        other => return Err(format!("type {other:?} is not one the import knows")),
    };
    data.insert("role".to_owned(), raw_json(role)?);
    data.insert("type".to_owned(), raw_json(kind)?);
    Ok(Entry::Message { info: data, parts })
}

/// A part of type `kind`, with nothing else yet.
fn typed(kind: &str) -> Result<Record, String> {
    Ok(Record::from([("type".to_owned(), raw_json(kind)?)]))
}

/// Moves `data[key]` into a text part with the fields of `with` (JSON values), unless it is
/// missing or empty. A value that is not a string still makes a text part, which the part rules
/// then refuse, saying why.
fn text_part(
    data: &mut Record,
    key: &str,
    with: &[(&str, &str)],
    parts: &mut Vec<Result<Record, String>>,
) -> Result<(), String> {
    let Some(text) = data.remove(key) else {
        return Ok(());
    };
    if text.get() == "\"\"" {
        return Ok(());
    }
    let mut part = typed("text")?;
    part.insert("text".to_owned(), text);
    for (field, value) in with {
        let value = RawValue::from_string((*value).to_owned()).map_err(|e| e.to_string())?;
        part.insert((*field).to_owned(), value);
    }
    parts.push(Ok(part));
    Ok(())
}

/// Moves each entry of the array `data[key]` into a part of type `kind`: an object's fields
/// beside the type (or under `kind` when it has a `type` of its own), anything else as its
/// `value`. A `key` that is not an array stays in `data`.
fn listed_parts(
    data: &mut Record,
    key: &str,
    kind: &str,
    parts: &mut Vec<Result<Record, String>>,
) -> Result<(), String> {
    let Some(raw) = data.remove(key) else {
        return Ok(());
    };
    let Ok(entries) = serde_json::from_str::<Vec<Value>>(raw.get()) else {
        data.insert(key.to_owned(), raw);
        return Ok(());
    };
    for entry in entries {
        let mut part = typed(kind)?;
        match entry {
            Value::Object(fields) if !fields.contains_key("type") => {
                for (field, value) in fields {
                    part.insert(field, raw_json(&value)?);
                }
            }
            Value::Object(fields) => {
                part.insert(kind.to_owned(), raw_json(&fields)?);
            }
            other => {
                part.insert("value".to_owned(), raw_json(&other)?);
            }
        }
        parts.push(Ok(part));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        serde_json::from_str(json).unwrap()
    }

    fn message(kind: &str, json: &str) -> (Value, Vec<Result<Value, String>>) {
        match entry(kind, record(json)).unwrap() {
            Entry::Message { info, parts } => (
                serde_json::to_value(&info).unwrap(),
                parts
                    .into_iter()
                    .map(|p| p.map(|p| serde_json::to_value(&p).unwrap()))
                    .collect(),
            ),
            Entry::Marker => panic!("{kind} read as a marker"),
        }
    }

    #[test]
    fn a_user_entry_becomes_text_and_file_parts_and_keeps_the_rest() {
        let (info, parts) = message(
            "user",
            r#"{"text":"Fix it","files":[{"uri":"file:///a.rs","mime":"text/plain"},
               {"type":"inline","data":"eA=="}, "odd"],"time":{"created":5},"metadata":{"k":1}}"#,
        );
        assert_eq!(
            info,
            serde_json::json!({"role": "user", "type": "user", 
                "time": {"created": 5}, "metadata": {"k": 1}})
        );
        let parts: Vec<Value> = parts.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            parts,
            vec![
                serde_json::json!({"type": "text", "text": "Fix it"}),
                serde_json::json!({"type": "file", "uri": "file:///a.rs", "mime": "text/plain"}),
                serde_json::json!({"type": "file", "file": {"type": "inline", "data": "eA=="}}),
                serde_json::json!({"type": "file", "value": "odd"}),
            ]
        );
    }

    #[test]
    fn an_assistant_entry_keeps_its_content_in_order_and_refuses_what_is_no_object() {
        let (info, parts) = message(
            "assistant",
            r#"{"agent":"build","content":[{"type":"reasoning","text":"hmm"},
               {"type":"tool","id":"call_1","name":"bash","state":{"status":"completed"}},
               {"type":"text","text":"Done."}, 3],"cost":0.5}"#,
        );
        assert_eq!(info["agent"], "build");
        assert_eq!(info["cost"], 0.5);
        assert!(info.get("content").is_none());
        assert_eq!(parts[0].as_ref().unwrap()["type"], "reasoning");
        assert_eq!(parts[1].as_ref().unwrap()["id"], "call_1");
        assert_eq!(parts[2].as_ref().unwrap()["text"], "Done.");
        assert_eq!(parts[3], Err("content[3] is not a JSON object".to_owned()));
        assert!(matches!(
            entry("assistant", record(r#"{"content":"Done."}"#)),
            Err(why) if why.contains("not an array")
        ));
    }

    #[test]
    fn other_entries_take_the_role_and_parts_a_1x_message_had() {
        let (info, parts) = message("synthetic", r#"{"text":"job done","sessionID":"ses_1"}"#);
        assert_eq!(info["role"], "user");
        assert_eq!(
            parts[0],
            Ok(serde_json::json!({"type": "text", "text": "job done", "synthetic": true}))
        );
        let (info, parts) = message("shell", r#"{"command":"ls","exit":0,"time":{"created":1}}"#);
        assert_eq!(
            info,
            serde_json::json!({"role": "tool", "type": "shell",  "time": {"created": 1}})
        );
        assert_eq!(
            parts,
            vec![Ok(
                serde_json::json!({"type": "shell", "command": "ls", "exit": 0})
            )]
        );
        let (info, parts) = message(
            "compaction",
            r#"{"status":"completed","reason":"auto","summary":"We fixed it.","recent":"msg_1"}"#,
        );
        assert_eq!(info["role"], "assistant");
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[1],
            Ok(serde_json::json!({"type": "text", "text": "We fixed it."}))
        );
        let (info, parts) = message("system", r#"{"text":"","description":"d"}"#);
        assert_eq!(info["description"], "d");
        assert!(parts.is_empty(), "an empty text makes no part");
    }

    #[test]
    fn markers_are_no_messages_and_unknown_types_are_refused() {
        for kind in MARKERS {
            assert!(matches!(entry(kind, Record::new()), Ok(Entry::Marker)));
        }
        assert!(matches!(
            entry("hologram", Record::new()),
            Err(why) if why.contains("\"hologram\"")
        ));
    }
}
