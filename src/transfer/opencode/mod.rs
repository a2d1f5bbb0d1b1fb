//! `sessiond import opencode PATH`: the sessions, messages and parts of an opencode (or
//! IronCode) installation, from either of its two storage forms (see
//! `shared/formats/opencode.md`): the JSON files under `…/opencode/storage` (releases before
//! 1.2, [`files`]) or `opencode.db` (1.2 and later, with OpenCode 2's tables where they are:
//! [`database`], [`v2`]).
//!
//! The source is only ever opened for reading; a database is read in one read transaction, so a
//! live opencode writing beside us is seen as of one instant. Every id comes from a file's path
//! or a row's key, never from inside the JSON (old migrations copied files without updating
//! the ids in them). Sessions are written in creation order, messages in `(time.created, id)`
//! order and parts in id order (OpenCode 2's, which have no ids, in their record's order);
//! sessiond ids are made from the original creation times. What the import made of each
//! original id is recorded in the import map in the same transaction as its session, so a
//! second run imports nothing and a later one only what is new.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::{ImportReport, Pending, Pipeline, Refusal};
use crate::domain::{
    IdGenerator, MAX_SESSION_METADATA_BYTES, Message, MessageId, Role, Session, SessionId,
    add_part_text,
};
use crate::storage::{ImportMapping, ImportMessage, ImportSession, Storage};

mod database;
mod files;
mod v2;

use database::Database;
use files::Files;

/// The import map's name for opencode ids (the same in both forms: opencode's own migration
/// keeps them, so moving from files to the database imports nothing twice).
pub const SOURCE: &str = "opencode";

/// A session as read from the source.
struct SourceSession {
    id: String,
    location: String,
    parent: Option<String>,
    directory: String,
    title: String,
    created: i64,
    updated: i64,
    archived: Option<i64>,
    /// What goes under `metadata.opencode`.
    extra: Map<String, Value>,
}

/// A message's or part's record: its fields, each value as the source wrote it (one laid out
/// over several lines made compact). The import looks into a few fields and copies the rest
/// through; parsing every value into a `Value` tree, and writing the tree out again, was most of
/// the reader's work.
type Record = BTreeMap<String, Box<RawValue>>;

/// Why a record could not be read.
enum Unreadable {
    NotAnObject,
    Broken(serde_json::Error),
}

/// The record in `json`.
fn record(json: &str) -> Result<Record, Unreadable> {
    let repaired = well_formed(json);
    let json = repaired.as_deref().unwrap_or(json);
    // From a `str`, not bytes: each value is copied without checking its UTF-8 again.
    let mut record = match serde_json::from_str::<Record>(json) {
        Ok(record) => record,
        // Told apart, and the error worded, as parsing it whole says.
        Err(error) => {
            return Err(match serde_json::from_str::<Value>(json) {
                Ok(Value::Object(_)) => Unreadable::Broken(error),
                Ok(_) => Unreadable::NotAnObject,
                Err(error) => Unreadable::Broken(error),
            });
        }
    };
    for value in record.values_mut() {
        if let Some(compact) = compacted(value.get()) {
            *value = RawValue::from_string(compact).map_err(Unreadable::Broken)?;
        }
    }
    Ok(record)
}

/// `json` with every escaped UTF-16 surrogate that is not half of a pair written as U+FFFD, or
/// `None` when it has none. JavaScript's `substring` can cut an emoji in two, and
/// `JSON.stringify` writes the half it kept as `"\ud83d"`. JSON's grammar allows that, but such
/// a string is not Unicode: no parser that makes Rust strings takes it, and a title or a part's
/// text would be refused with its whole file. U+FFFD is what JavaScript itself writes for it
/// when it encodes the string as UTF-8. The length is unchanged, so a parse error's line and
/// column stay the source's.
fn well_formed(json: &str) -> Option<String> {
    if !json.contains("\\u") {
        return None;
    }
    let bytes = json.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = std::str::from_utf8(bytes.get(at..at + 4)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    };
    let (mut out, mut copied, mut at) = (None::<String>, 0, 0);
    while at < bytes.len() {
        if bytes[at] != b'\\' {
            at += 1;
            continue;
        }
        // `\` and one character, or `\u` and four hex digits (a `\` never starts inside a
        // multi-byte character, so `at` stays on a character boundary).
        if bytes.get(at + 1) != Some(&b'u') {
            at += 2;
            continue;
        }
        let lone = match unit(at + 2) {
            Some(0xD800..=0xDBFF) => {
                let paired = bytes.get(at + 6..at + 8) == Some(b"\\u")
                    && matches!(unit(at + 8), Some(0xDC00..=0xDFFF));
                if paired {
                    at += 12;
                    continue;
                }
                true
            }
            Some(0xDC00..=0xDFFF) => true,
            _ => false,
        };
        if lone {
            let out = out.get_or_insert_with(|| String::with_capacity(json.len()));
            out.push_str(&json[copied..at]);
            out.push_str("\\ufffd");
            copied = at + 6;
        }
        at += 6;
    }
    out.map(|mut out| {
        out.push_str(&json[copied..]);
        out
    })
}

/// Valid JSON `json` without the white space between its tokens (pretty-printed files), or
/// `None` when it has none.
fn compacted(json: &str) -> Option<String> {
    if !json.starts_with(['{', '[']) {
        return None;
    }
    let bytes = json.as_bytes();
    let (mut in_string, mut escaped) = (false, false);
    let mut out: Option<Vec<u8>> = None;
    for (at, &byte) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        } else if byte.is_ascii_whitespace() {
            out.get_or_insert_with(|| bytes[..at].to_vec());
            continue;
        }
        if let Some(out) = &mut out {
            out.push(byte);
        }
    }
    // Only ASCII white space was left out, so what is left is still UTF-8.
    out.and_then(|out| String::from_utf8(out).ok())
}

/// A field of `record` parsed as `T`, when it is there and is one.
fn field<T: serde::de::DeserializeOwned>(record: &Record, key: &str) -> Option<T> {
    serde_json::from_str(record.get(key)?.get()).ok()
}

/// `value` as JSON, straight from it (not parsed again, as `RawValue::from_string` would).
fn raw_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Box<RawValue>, String> {
    serde_json::value::to_raw_value(value).map_err(|e| e.to_string())
}

/// A message's info as read from the source.
struct SourceMessage {
    id: String,
    location: String,
    created: i64,
    /// The source's own order of a session's messages, where it keeps one (OpenCode 2's
    /// `seq`): it orders messages created in the same millisecond, before their ids do.
    order: Option<i64>,
    info: Record,
}

impl SourceMessage {
    /// `created` is the source's own column where it has one; otherwise the record's
    /// `time.created`, and failing both the session's creation time.
    fn new(
        id: String,
        location: String,
        created: Option<i64>,
        info: Record,
        session: &SourceSession,
    ) -> SourceMessage {
        let created = created
            .or_else(|| record_created(&info))
            .unwrap_or(session.created);
        SourceMessage {
            id,
            location,
            created,
            order: None,
            info,
        }
    }
}

/// A record's own `time.created`.
fn record_created(info: &Record) -> Option<i64> {
    int(field::<Value>(info, "time")?.get("created"))
}

/// A part as read from the source.
struct SourcePart {
    /// Its id, by which the parts of a message are ordered; `None` for a part that has none
    /// (OpenCode 2 keeps a message's content in order inside its record).
    id: Option<String>,
    location: String,
    data: Record,
}

/// One of the two storage forms.
trait Source: Send {
    /// Every session, refusing those that cannot be read.
    fn sessions(&mut self, refused: &mut Vec<Refusal>) -> anyhow::Result<Vec<SourceSession>>;
    /// A session's messages (in any order).
    fn messages(
        &mut self,
        session: &SourceSession,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<Vec<SourceMessage>>;
    /// A message's parts (in any order).
    fn parts(
        &mut self,
        message: &SourceMessage,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<Vec<SourcePart>>;
    /// Messages whose session and parts whose message are not in the source: refused.
    fn orphans(
        &mut self,
        sessions: &HashSet<String>,
        refused: &mut Vec<Refusal>,
    ) -> anyhow::Result<()>;
}

/// Opens `path`: an `opencode.db` (any SQLite file) or a storage directory (or the opencode
/// data directory holding either).
fn open(path: &Path) -> anyhow::Result<Box<dyn Source>> {
    if path.is_dir() {
        if path.join("session").join("info").is_dir() && !path.join("message").is_dir() {
            // `…/project/<dir>/storage`: what storage migration 1 copies into `…/storage` the
            // next time opencode starts. Read as today's layout it would import sessions
            // without messages and refuse nothing.
            anyhow::bail!(
                "{} is opencode's old per-project layout (session/info/, session/message/); \
                 start opencode once so that it moves it into …/opencode/storage, and import \
                 that",
                path.display()
            );
        }
        if path.join("session").is_dir() || path.join("message").is_dir() {
            return Ok(Box::new(Files::new(path.to_owned())));
        }
        if let Some(db) = channel_database(path)? {
            return Ok(Box::new(Database::open(&db)?));
        }
        let storage = path.join("storage");
        if storage.join("session").is_dir() {
            return Ok(Box::new(Files::new(storage)));
        }
        anyhow::bail!(
            "{} is neither an opencode storage directory (with session/ and message/) nor holds \
             an opencode.db",
            path.display()
        );
    }
    if path.is_file() {
        return Ok(Box::new(Database::open(path)?));
    }
    anyhow::bail!("{} does not exist", path.display())
}

/// The database in opencode's data directory `dir`: `opencode.db` (the latest and beta
/// channels), else the one `opencode-<channel>.db` (other channels); several of those and no
/// `opencode.db` is ambiguous, and the user names the file.
fn channel_database(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let db = dir.join("opencode.db");
    if db.is_file() {
        return Ok(Some(db));
    }
    let mut found = entries(dir, |path, kind| {
        let channel = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("opencode-"))
            .and_then(|n| n.strip_suffix(".db"));
        channel.is_some_and(|c| !c.is_empty()) && kind.is_file()
    })?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => anyhow::bail!(
            "{} holds several opencode databases ({}); name the one to import",
            dir.display(),
            found
                .iter()
                .filter_map(|p| p.file_name().and_then(|n| n.to_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The entries directly in `dir` that `keep` accepts, sorted (none when `dir` does not exist).
/// `keep` is given the entry's type as the listing reports it, a symbolic link's target's type:
/// a `stat` per entry was a tenth of a file-per-part import's system time.
fn entries(
    dir: &Path,
    keep: impl Fn(&Path, std::fs::FileType) -> bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut kept = Vec::new();
    for entry in listing {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let mut kind = match entry.file_type() {
            Ok(kind) => kind,
            // Gone since the listing (a live opencode moves files): as if never listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if kind.is_symlink() {
            match std::fs::metadata(&path) {
                Ok(target) => kind = target.file_type(),
                Err(_) => continue,
            }
        }
        if keep(&path, kind) {
            kept.push(path);
        }
    }
    // All in `dir`: their bytes sort as their names do, without comparing every component.
    kept.sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    Ok(kept)
}

/// The bytes of a source file, read without updating its access time where the system allows
/// (Linux's `O_NOATIME`, for the files' owner): the import leaves the files as it found them,
/// and the kernel has one inode update less to make for each of their many small files.
fn read_source(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    #[cfg(target_os = "linux")]
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)
        {
            // Not the files' owner: read them as anyone would.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => std::fs::File::open(path),
            opened => opened,
        }
    };
    #[cfg(not(target_os = "linux"))]
    let file = std::fs::File::open(path);
    let mut file = file?;
    let size = file.metadata().map_or(0, |m| m.len());
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Keeps one record of each session id, the most recently updated; opencode's own migrations
/// and users moving files by hand can leave a session's file in two project folders, and both
/// copies would otherwise import the same messages twice.
fn dedupe_sessions(sessions: &mut Vec<SourceSession>, refused: &mut Vec<Refusal>) {
    let mut newest: HashMap<String, (i64, String)> = HashMap::with_capacity(sessions.len());
    for session in sessions.iter() {
        let candidate = (session.updated, session.location.clone());
        newest
            .entry(session.id.clone())
            .and_modify(|kept| {
                if candidate > *kept {
                    *kept = candidate.clone();
                }
            })
            .or_insert(candidate);
    }
    if newest.len() == sessions.len() {
        return;
    }
    sessions.retain(|session| {
        let Some((_, kept)) = newest.get(&session.id) else {
            return true;
        };
        if *kept == session.location {
            return true;
        }
        refused.push(Refusal {
            location: session.location.clone(),
            reason: format!(
                "another file of session {} was imported instead (the more recently updated \
                 one, {kept})",
                session.id
            ),
        });
        false
    });
}

/// What the reader sends the writer.
enum Item {
    /// How many sessions there are to import.
    Total(u64),
    Session(Box<Pending>),
    Refused(Refusal),
    /// Counts of records read and found already imported.
    Counted {
        sessions_read: u64,
        sessions_skipped: u64,
        messages_read: u64,
        messages_skipped: u64,
    },
}

/// Imports the installation at `path` into `storage`.
pub async fn import(storage: Arc<dyn Storage>, path: &Path) -> anyhow::Result<ImportReport> {
    let started = Instant::now();
    let source = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || open(&path))
            .await
            .context("opening the source")??
    };
    let (tx, mut rx) = mpsc::channel::<Item>(64);
    let runtime = tokio::runtime::Handle::current();
    let reader_storage = storage.clone();
    let reader = tokio::task::spawn_blocking(move || read(source, reader_storage, runtime, tx));
    let mut pipeline = Pipeline::new(storage);
    while let Some(item) = rx.recv().await {
        match item {
            Item::Total(sessions) => pipeline.set_total(sessions),
            Item::Session(pending) => pipeline.write(*pending).await,
            Item::Refused(refusal) => pipeline.report.refused.push(refusal),
            Item::Counted {
                sessions_read,
                sessions_skipped,
                messages_read,
                messages_skipped,
            } => {
                let report = &mut pipeline.report;
                report.sessions.read += sessions_read;
                report.sessions.skipped += sessions_skipped;
                report.messages.read += messages_read;
                report.messages.skipped += messages_skipped;
                pipeline.counted();
            }
        }
    }
    let report = pipeline.finish(started).await;
    reader.await.context("the source reader stopped")??;
    Ok(report)
}

/// Reads everything from `source` and sends it on `tx` (on a blocking thread).
fn read(
    mut source: Box<dyn Source>,
    storage: Arc<dyn Storage>,
    runtime: tokio::runtime::Handle,
    tx: mpsc::Sender<Item>,
) -> anyhow::Result<()> {
    let send = |item: Item| {
        tx.blocking_send(item)
            .map_err(|_| anyhow::anyhow!("the writer stopped"))
    };
    let mut refused = Vec::new();
    let flush = |refused: &mut Vec<Refusal>| -> anyhow::Result<()> {
        for refusal in refused.drain(..) {
            send(Item::Refused(refusal))?;
        }
        Ok(())
    };
    let mut sessions = source.sessions(&mut refused)?;
    dedupe_sessions(&mut sessions, &mut refused);
    flush(&mut refused)?;
    send(Item::Total(sessions.len() as u64))?;
    // Creation order (the hex part of opencode ids wraps, so never the id alone).
    sessions.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let known: HashSet<String> = sessions.iter().map(|s| s.id.clone()).collect();

    // Every session's sessiond id, before any is written: those imported before keep theirs,
    // new ones are made from their creation times.
    let mut targets: HashMap<String, (String, bool)> = HashMap::with_capacity(sessions.len());
    let mut ids = IdGenerator::default();
    for chunk in sessions.chunks(1000) {
        let originals: Vec<String> = chunk.iter().map(|s| s.id.clone()).collect();
        let found = runtime
            .block_on(storage.import_targets(SOURCE, originals))
            .context("reading the import map")?;
        for (session, target) in chunk.iter().zip(found) {
            let entry = match target {
                Some(existing) => (existing, true),
                None => (
                    SessionId::from_value(ids.next(session.created).1).into_string(),
                    false,
                ),
            };
            targets.insert(session.id.clone(), entry);
        }
    }

    for session in &sessions {
        let Some((target, imported_before)) = targets.get(&session.id).cloned() else {
            continue;
        };
        let messages = match source.messages(session, &mut refused) {
            Ok(messages) => messages,
            Err(error) => {
                refused.push(Refusal {
                    location: session.location.clone(),
                    reason: format!("its messages cannot be read: {error:#}"),
                });
                flush(&mut refused)?;
                continue;
            }
        };
        let mut messages = messages;
        messages.sort_by(|a, b| (a.created, a.order, &a.id).cmp(&(b.created, b.order, &b.id)));
        // A session and its messages are mapped in one transaction: none of a session that
        // was never imported can have been (and a fresh import asks nothing per session).
        let found = if imported_before {
            let originals: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
            runtime
                .block_on(storage.import_targets(SOURCE, originals))
                .context("reading the import map")?
        } else {
            vec![None; messages.len()]
        };
        let messages_read = messages.len() as u64;
        let mut messages_skipped = 0;
        let mut written = Vec::new();
        let mut pairs = Vec::new();
        let session_id = SessionId::from_trusted(target.clone());
        let mut message_ids = IdGenerator::default();
        for (message, found) in messages.into_iter().zip(found) {
            if found.is_some() {
                messages_skipped += 1;
                continue;
            }
            let (original, location) = (message.id.clone(), message.location.clone());
            match convert_message(
                &mut source,
                message,
                &session_id,
                &mut message_ids,
                &mut refused,
            ) {
                Ok(converted) => {
                    pairs.push((original, converted.message.id.as_str().to_owned()));
                    written.push(converted);
                }
                Err(reason) => refused.push(Refusal { location, reason }),
            }
        }
        flush(&mut refused)?;
        send(Item::Counted {
            sessions_read: 1,
            sessions_skipped: u64::from(imported_before && written.is_empty()),
            messages_read,
            messages_skipped,
        })?;
        if imported_before && written.is_empty() {
            continue;
        }
        if !imported_before {
            pairs.push((session.id.clone(), target.clone()));
        }
        let parent_id = session
            .parent
            .as_ref()
            .and_then(|parent| targets.get(parent))
            .map(|(id, _)| SessionId::from_trusted(id.clone()));
        let item = ImportSession {
            session: Session {
                id: session_id,
                directory: session.directory.clone(),
                title: session.title.clone(),
                parent_id,
                created_at: session.created,
                updated_at: session.updated.max(session.created),
                archived_at: session.archived,
                message_count: 0,
                metadata: session_metadata(session)?,
                version: 0,
            },
            messages: written,
        };
        send(Item::Session(Box::new(Pending {
            item,
            mapping: ImportMapping {
                source: SOURCE.to_owned(),
                pairs,
            },
            location: session.location.clone(),
        })))?;
    }
    source.orphans(&known, &mut refused)?;
    flush(&mut refused)?;
    Ok(())
}

/// `{"opencode": {…}}` within the size limit: whatever does not fit (large `revert` or
/// `permission` values) is left out, and `truncated` says so.
fn session_metadata(session: &SourceSession) -> anyhow::Result<Box<RawValue>> {
    let full = serde_json::json!({ "opencode": session.extra });
    let mut text = full.to_string();
    if text.len() > MAX_SESSION_METADATA_BYTES {
        let mut kept = Map::new();
        for key in [
            "id",
            "projectID",
            "parentID",
            "slug",
            "version",
            "summary",
            "share",
            "time",
        ] {
            if let Some(value) = session.extra.get(key) {
                kept.insert(key.to_owned(), value.clone());
            }
        }
        kept.insert("truncated".to_owned(), Value::Bool(true));
        text = serde_json::json!({ "opencode": kept }).to_string();
        if text.len() > MAX_SESSION_METADATA_BYTES {
            text =
                serde_json::json!({"opencode": {"id": session.id, "truncated": true}}).to_string();
        }
    }
    RawValue::from_string(text).context("encoding session metadata")
}

/// A message with its parts, as sessiond stores it; `Err` says why it cannot be.
fn convert_message(
    source: &mut Box<dyn Source>,
    message: SourceMessage,
    session: &SessionId,
    ids: &mut IdGenerator,
    refused: &mut Vec<Refusal>,
) -> Result<ImportMessage, String> {
    let role = match field::<String>(&message.info, "role") {
        Some(raw) => Role::parse(&raw).ok_or_else(|| format!("unknown role {raw:?}"))?,
        None => return Err("the message has no role".to_owned()),
    };
    let mut parts = source
        .parts(&message, refused)
        .map_err(|e| format!("its parts cannot be read: {e:#}"))?;
    // Stable: parts without ids stay in the order they came in.
    parts.sort_by(|a, b| a.id.cmp(&b.id));
    let mut kept = Vec::with_capacity(parts.len());
    let mut text = String::new();
    for part in parts {
        let mut data = part.data;
        // The path's ids, never the file's; the session and message ids are opencode's and
        // name nothing here.
        data.remove("sessionID");
        data.remove("messageID");
        if let Some(id) = &part.id {
            data.insert("id".to_owned(), raw_json(id)?);
        }
        // The two fields the part's search text is made of, as the rule for parts reads them.
        let mut looked_at = Map::new();
        let mut broken = None;
        for key in ["type", "text"] {
            if let Some(raw) = data.get(key) {
                match serde_json::from_str::<Value>(raw.get()) {
                    Ok(value) => {
                        looked_at.insert(key.to_owned(), value);
                    }
                    Err(e) => broken = Some(format!("broken JSON in `{key}`: {e}")),
                }
            }
        }
        if let Some(reason) = broken {
            refused.push(Refusal {
                location: part.location,
                reason: format!("the part: {reason}"),
            });
            continue;
        }
        match add_part_text(&looked_at, &mut text) {
            Ok(()) => kept.push(data),
            Err(why) => refused.push(Refusal {
                location: part.location,
                reason: format!("the part: {}", why.0),
            }),
        }
    }
    if kept.is_empty() {
        return Err(
            "the message has no parts that could be read (sessiond messages need at least one)"
                .to_owned(),
        );
    }
    let mut info = message.info;
    info.remove("sessionID");
    info.remove("role");
    info.insert("id".to_owned(), raw_json(&message.id)?);
    let metadata = BTreeMap::from([("opencode", &info)]);
    Ok(ImportMessage {
        message: Message {
            id: MessageId::from_value(ids.next(message.created).1),
            session_id: session.clone(),
            role,
            parts: raw_json(&kept)?,
            metadata: raw_json(&metadata)?,
            created_at: message.created,
        },
        text,
    })
}

fn int(value: Option<&Value>) -> Option<i64> {
    value.and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

/// The file name without `.json`, when it is one.
fn stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".json").map(str::to_owned)
}

/// opencode titles have no limit; sessiond's do.
fn clip_title(title: String) -> String {
    match title.char_indices().nth(crate::domain::MAX_TITLE_CHARS) {
        Some((at, _)) => title[..at].to_owned(),
        None => title,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_values_as_written_and_compacts_laid_out_ones() {
        let pretty = "{\n  \"text\": \"a  b\\n\",\n  \"time\": {\n    \"created\": 1\n  },\n  \
                      \"list\": [ 1, \"x y\" ],\n  \"n\": 1.50,\n  \"é\": \"\\u00e9\"\n}";
        let Ok(record) = record(pretty) else {
            panic!("a valid object was refused");
        };
        let fields: Vec<(&str, &str)> = record.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        assert_eq!(
            fields,
            [
                ("list", "[1,\"x y\"]"),
                ("n", "1.50"),
                ("text", "\"a  b\\n\""),
                ("time", "{\"created\":1}"),
                ("é", "\"\\u00e9\""),
            ]
        );
        assert_eq!(compacted(r#"{"a":"x \" y","b":["{ }"]}"#), None);
        assert_eq!(
            compacted("{\"a\": \"x \\\\\" ,\"b\" :\n[1 ,\t\"é é\"]}").as_deref(),
            Some(r#"{"a":"x \\","b":[1,"é é"]}"#)
        );
    }

    #[test]
    fn a_cut_surrogate_becomes_a_replacement_character_and_pairs_stay() {
        assert_eq!(well_formed(r#"{"a":"x"}"#), None);
        assert_eq!(well_formed(r#"{"a":"\ud83d\ude00 \u00e9 \\ud83d"}"#), None);
        assert_eq!(
            well_formed(r#"{"a":"x \ud83d","b":"\uDC00\ud83d\ud83d\ude00 \ud83d\u0041"}"#)
                .as_deref(),
            Some(r#"{"a":"x \ufffd","b":"\ufffd\ufffd\ud83d\ude00 \ufffd\u0041"}"#)
        );
        // Cut at the end of the text, too.
        assert_eq!(well_formed(r#""\ud83d"#).as_deref(), Some(r#""\ufffd"#));
        assert_eq!(well_formed(r#""\ud8"#), None);
        let Ok(record) = record(r#"{"text":"é \ud83d"}"#) else {
            panic!("a record with a cut surrogate was refused");
        };
        assert_eq!(
            field::<String>(&record, "text").as_deref(),
            Some("é \u{fffd}")
        );
    }

    #[test]
    fn an_unreadable_record_says_why_as_parsing_it_whole_would() {
        // JSON's grammar has no limit on numbers: one beyond a double is kept as written.
        assert!(record("{\"a\": 1e999}").is_ok_and(|r| r["a"].get() == "1e999"));
        assert!(matches!(record("[1, 2]"), Err(Unreadable::NotAnObject)));
        assert!(matches!(record("\"text\""), Err(Unreadable::NotAnObject)));
        for broken in ["{\"a\": ", "{\"a\": 1 2}", "{\"a\": 1} x", "{\"a\": tru}"] {
            let Err(Unreadable::Broken(error)) = record(broken) else {
                panic!("{broken:?} was read");
            };
            let whole = serde_json::from_str::<Value>(broken)
                .err()
                .map(|e| e.to_string());
            assert_eq!(Some(error.to_string()), whole);
        }
    }
}
