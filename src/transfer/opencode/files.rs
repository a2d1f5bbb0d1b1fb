//! The JSON files of opencode releases before 1.2 (`…/opencode/storage`): a file per session,
//! message and part, every id taken from the file's path. See `shared/formats/opencode.md`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{
    Record, Refusal, Source, SourceMessage, SourcePart, SourceSession, Unreadable, clip_title,
    entries, int, read_source, record, stem, well_formed,
};

/// The JSON files of storage releases before 1.2.
pub(super) struct Files {
    root: PathBuf,
    /// Message ids seen, to find parts whose message is missing.
    messages: HashSet<String>,
    /// Session files that were refused, by id: their messages are refused for that reason,
    /// not as if their session did not exist.
    refused_sessions: HashMap<String, String>,
}

impl Files {
    pub(super) fn new(root: PathBuf) -> Files {
        Files {
            root,
            messages: HashSet::new(),
            refused_sessions: HashMap::new(),
        }
    }

    /// `*.json` files directly in `dir` (none when it does not exist).
    fn json_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        entries(dir, |path, kind| {
            kind.is_file() && path.extension().is_some_and(|e| e == "json")
        })
    }

    fn subdirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        entries(dir, |_, kind| kind.is_dir())
    }

    /// A file's text, or why not (one that is not UTF-8 worded as the JSON parser words it).
    fn text(path: &Path) -> Result<String, String> {
        let bytes = read_source(path).map_err(|e| format!("cannot read: {e}"))?;
        String::from_utf8(bytes).map_err(|e| {
            let error = serde_json::from_slice::<Value>(e.as_bytes()).err();
            format!(
                "broken JSON: {}",
                error.map_or("not UTF-8".to_owned(), |e| e.to_string())
            )
        })
    }

    /// A file's JSON object, or why not.
    fn object(path: &Path) -> Result<Map<String, Value>, String> {
        let text = Self::text(path)?;
        let repaired = well_formed(&text);
        match serde_json::from_str::<Value>(repaired.as_deref().unwrap_or(&text)) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("not a JSON object".to_owned()),
            Err(e) => Err(format!("broken JSON: {e}")),
        }
    }

    /// A message's or part's file, or why not (worded as [`Files::object`] words it).
    fn record(path: &Path) -> Result<Record, String> {
        record(&Self::text(path)?).map_err(|why| match why {
            Unreadable::NotAnObject => "not a JSON object".to_owned(),
            Unreadable::Broken(e) => format!("broken JSON: {e}"),
        })
    }

    fn location(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

impl Source for Files {
    fn sessions(&mut self, refused: &mut Vec<Refusal>) -> anyhow::Result<Vec<SourceSession>> {
        let mut sessions = Vec::new();
        for project_dir in Self::subdirs(&self.root.join("session"))? {
            let Some(project) = project_dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let project = project.to_owned();
            for path in Self::json_files(&project_dir)? {
                let location = self.location(&path);
                let Some(id) = stem(&path) else { continue };
                match Self::object(&path) {
                    Ok(data) => {
                        sessions.push(session_from_json(id, project.clone(), location, data))
                    }
                    Err(reason) => {
                        self.refused_sessions.insert(id, location.clone());
                        refused.push(Refusal { location, reason });
                    }
                }
            }
        }
        Ok(sessions)
    }

    fn messages(
        &mut self,
        session: &SourceSession,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<Vec<SourceMessage>> {
        let mut messages = Vec::new();
        for path in Self::json_files(&self.root.join("message").join(&session.id))? {
            let location = self.location(&path);
            let Some(id) = stem(&path) else { continue };
            self.messages.insert(id.clone());
            match Self::record(&path) {
                Ok(info) => messages.push(SourceMessage::new(id, location, None, info, session)),
                Err(reason) => refused.push(Refusal { location, reason }),
            }
        }
        Ok(messages)
    }

    fn parts(
        &mut self,
        message: &SourceMessage,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<Vec<SourcePart>> {
        let mut parts = Vec::new();
        for path in Self::json_files(&self.root.join("part").join(&message.id))? {
            let location = self.location(&path);
            let Some(id) = stem(&path) else { continue };
            match Self::record(&path) {
                Ok(data) => parts.push(SourcePart {
                    id: Some(id),
                    location,
                    data,
                }),
                Err(reason) => refused.push(Refusal { location, reason }),
            }
        }
        Ok(parts)
    }

    fn orphans(
        &mut self,
        sessions: &HashSet<String>,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<()> {
        let mut refused_messages: HashMap<String, String> = HashMap::new();
        for dir in Self::subdirs(&self.root.join("message"))? {
            let Some(session) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if sessions.contains(session) {
                continue;
            }
            let reason = match self.refused_sessions.get(session) {
                Some(file) => format!("its session's file {file} was refused"),
                None => format!("its session {session} is not in the storage"),
            };
            for path in Self::json_files(&dir)? {
                let location = self.location(&path);
                // Its parts are refused with it, for the same reason.
                if let Some(id) = stem(&path) {
                    refused_messages.insert(id, location.clone());
                }
                refused.push(Refusal {
                    location,
                    reason: reason.clone(),
                });
            }
        }
        for dir in Self::subdirs(&self.root.join("part"))? {
            let Some(message) = dir.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if self.messages.contains(message) {
                continue;
            }
            let reason = match refused_messages.get(message) {
                Some(file) => format!("its message's file {file} was refused"),
                None => format!("its message {message} is not in the storage"),
            };
            for path in Self::json_files(&dir)? {
                refused.push(Refusal {
                    location: self.location(&path),
                    reason: reason.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A session file's record, its ids taken from the path.
fn session_from_json(
    id: String,
    project: String,
    location: String,
    mut data: Map<String, Value>,
) -> SourceSession {
    let time = data.get("time").cloned().unwrap_or(Value::Null);
    let created = int(time.get("created")).unwrap_or(0);
    let updated = int(time.get("updated")).unwrap_or(created);
    let archived = int(time.get("archived"));
    let parent = data
        .get("parentID")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let directory = data
        .remove("directory")
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let title = data
        .remove("title")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    // Migration 2 moved these out of session files; an old file may still hold them.
    if let Some(Value::Object(summary)) = data.get_mut("summary") {
        summary.remove("diffs");
    }
    data.insert("id".to_owned(), Value::String(id.clone()));
    data.insert("projectID".to_owned(), Value::String(project));
    SourceSession {
        id,
        location,
        parent,
        directory,
        title: clip_title(title),
        created,
        updated,
        archived,
        extra: data,
    }
}
