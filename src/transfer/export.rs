//! `sessiond export`: every session and its messages as JSON Lines, streamed.
//!
//! A `{"type":"session",…}` line (the API's representation of the session) is followed by a
//! `{"type":"message",…}` line for each of its messages, oldest first. Sessions go in id order,
//! which is creation order, so a parent always comes before its children and
//! [`super::jsonl`] can restore both. Memory stays constant: one page of sessions and one page
//! of messages are held at a time, whatever the size of the database. The messages of a page
//! of sessions are read together, a page at a time across sessions: one storage call per
//! session cost more than the export's own work.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::domain::{Message, SessionId};
use crate::storage::{MessageWalk, Storage};

#[derive(Debug, Default)]
pub struct ExportReport {
    pub sessions: u64,
    pub messages: u64,
    pub elapsed: Duration,
}

/// Writes `{"type":"<kind>",` and the rest of `record`'s JSON object, encoded in `buf`.
fn line(
    out: &mut impl Write,
    buf: &mut Vec<u8>,
    kind: &str,
    record: &impl serde::Serialize,
) -> anyhow::Result<()> {
    buf.clear();
    serde_json::to_writer(&mut *buf, record).context("encoding a record")?;
    // Every record is a JSON object: `{` then its fields.
    let fields = buf
        .strip_prefix(b"{")
        .context("a record is not an object")?;
    write!(out, "{{\"type\":\"{kind}\"")?;
    if fields != b"}" {
        out.write_all(b",")?;
    }
    out.write_all(fields)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// The messages of one page of sessions, read a page at a time and handed out session by
/// session, in the sessions' order.
struct Messages<'a> {
    storage: &'a dyn Storage,
    walk: MessageWalk,
    page: VecDeque<Message>,
    done: bool,
}

impl<'a> Messages<'a> {
    fn new(storage: &'a dyn Storage, from: SessionId, through: SessionId, limit: u32) -> Self {
        Messages {
            storage,
            walk: MessageWalk {
                from,
                after: None,
                through,
                limit,
            },
            page: VecDeque::new(),
            done: false,
        }
    }

    /// The next message of `session`; `None` once it has no more. Sessions must be asked for
    /// in id order. Messages of a session the page of sessions did not hold (one created
    /// since, with an id inside the page's range) are passed over, like the session itself.
    async fn next_of(&mut self, session: &SessionId) -> anyhow::Result<Option<Message>> {
        loop {
            let Some(head) = self.page.front() else {
                if self.done {
                    return Ok(None);
                }
                self.fill().await?;
                continue;
            };
            match head.session_id.cmp(session) {
                Ordering::Less => {
                    self.page.pop_front();
                }
                Ordering::Equal => return Ok(self.page.pop_front()),
                Ordering::Greater => return Ok(None),
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let page = self
            .storage
            .messages_by_session(self.walk.clone())
            .await
            .with_context(|| {
                format!(
                    "reading the messages of the sessions from {}",
                    self.walk.from
                )
            })?;
        self.done = page.len() < self.walk.limit as usize;
        if let Some(last) = page.last() {
            self.walk.from = last.session_id.clone();
            self.walk.after = Some((last.created_at, last.id.clone()));
        }
        self.page = page.into();
        Ok(())
    }
}

/// Streams everything in `storage` to `out`, reading `page` sessions, or messages, per
/// storage call; `progress` sees the counts so far after each page of sessions.
pub async fn export(
    storage: Arc<dyn Storage>,
    out: impl Write,
    page: u32,
    mut progress: impl FnMut(&ExportReport),
) -> anyhow::Result<ExportReport> {
    let started = Instant::now();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let mut buf = Vec::with_capacity(1 << 12);
    let mut report = ExportReport::default();
    let mut after = None;
    loop {
        let sessions = storage
            .sessions_by_id(after.take(), page)
            .await
            .context("reading sessions")?;
        let (Some(first), Some(last)) = (sessions.first(), sessions.last()) else {
            break;
        };
        let mut messages = Messages::new(storage.as_ref(), first.id.clone(), last.id.clone(), page);
        for session in &sessions {
            line(&mut out, &mut buf, "session", session).context("writing the export")?;
            report.sessions += 1;
            while let Some(message) = messages.next_of(&session.id).await? {
                line(&mut out, &mut buf, "message", &message).context("writing the export")?;
                report.messages += 1;
            }
        }
        after = Some(last.id.clone());
        progress(&report);
        if sessions.len() < page as usize {
            break;
        }
    }
    out.flush().context("writing the export")?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Exports to the file at `path`. A regular file (or a new one) is written beside it under a
/// temporary name and renamed into place once complete and synced, so an export that fails
/// half-way leaves the previous backup as it was, never a truncated one. A new file is
/// readable by its owner only (it holds every session); one replaced keeps its permissions.
/// A symbolic link to a regular file has its target replaced that way; anything else (a pipe,
/// a device, a link to nothing) is written to directly, as `File::create` would.
pub async fn export_to_file(
    storage: Arc<dyn Storage>,
    path: &Path,
    page: u32,
    progress: impl FnMut(&ExportReport),
) -> anyhow::Result<ExportReport> {
    let direct =
        || std::fs::File::create(path).with_context(|| format!("opening {}", path.display()));
    let (target, existing) = match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => {
            let target = std::fs::canonicalize(path)
                .with_context(|| format!("resolving {}", path.display()))?;
            (target, Some(metadata))
        }
        Ok(_) => return export(storage, direct()?, page, progress).await,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                return export(storage, direct()?, page, progress).await;
            }
            (path.to_owned(), None)
        }
        Err(error) => {
            return Err(error).with_context(|| format!("looking at {}", path.display()));
        }
    };
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".sessiond-export-")
        .suffix(".partial")
        .tempfile_in(dir)
        .with_context(|| format!("creating {}", path.display()))?;
    if let Some(metadata) = &existing {
        temp.as_file()
            .set_permissions(metadata.permissions())
            .with_context(|| format!("keeping the permissions of {}", path.display()))?;
    }
    // Dropping `temp` on an error removes it.
    let report = export(storage, temp.as_file(), page, progress).await?;
    temp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    temp.persist(&target)
        .with_context(|| format!("moving the export into place at {}", path.display()))?;
    Ok(report)
}
