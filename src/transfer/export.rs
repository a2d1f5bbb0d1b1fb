//! `sessiond export`: every session and its messages as JSON Lines, streamed.
//!
//! A `{"type":"session",…}` line (the API's representation of the session) is followed by a
//! `{"type":"message",…}` line for each of its messages, oldest first. Sessions go in id order,
//! which is creation order, so a parent always comes before its children and
//! [`super::jsonl`] can restore both. Memory stays constant: one page of sessions and one page
//! of messages are held at a time, whatever the size of the database.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::domain::{Limit, Order};
use crate::storage::{MessageListQuery, Storage};

/// Sessions and messages read per storage call.
const PAGE: u32 = 1000;

#[derive(Debug, Default)]
pub struct ExportReport {
    pub sessions: u64,
    pub messages: u64,
    pub elapsed: Duration,
}

/// Writes `{"type":"<kind>",` and the rest of `record`'s JSON object.
fn line(out: &mut impl Write, kind: &str, record: &impl serde::Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string(record).context("encoding a record")?;
    // Every record is a JSON object: `{` then its fields.
    let fields = json
        .strip_prefix('{')
        .context("a record is not an object")?;
    write!(out, "{{\"type\":\"{kind}\"")?;
    if fields != "}" {
        out.write_all(b",")?;
    }
    out.write_all(fields.as_bytes())?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Streams everything in `storage` to `out`.
pub async fn export(storage: Arc<dyn Storage>, out: impl Write) -> anyhow::Result<ExportReport> {
    let started = Instant::now();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    let limit = Limit::new(PAGE).context("the page size")?;
    let mut report = ExportReport::default();
    let mut after = None;
    loop {
        let sessions = storage
            .sessions_by_id(after.take(), PAGE)
            .await
            .context("reading sessions")?;
        let Some(last) = sessions.last() else { break };
        after = Some(last.id.clone());
        for session in &sessions {
            line(&mut out, "session", session).context("writing the export")?;
            report.sessions += 1;
            let mut cursor = None;
            loop {
                let (page, _) = storage
                    .list_messages(
                        &session.id,
                        MessageListQuery {
                            order: Order::Asc,
                            limit,
                            after: cursor,
                        },
                    )
                    .await
                    .with_context(|| format!("reading the messages of {}", session.id))?;
                for message in &page.items {
                    line(&mut out, "message", message).context("writing the export")?;
                }
                report.messages += page.items.len() as u64;
                cursor = page.next;
                if cursor.is_none() {
                    break;
                }
            }
        }
        if sessions.len() < PAGE as usize {
            break;
        }
    }
    out.flush().context("writing the export")?;
    report.elapsed = started.elapsed();
    Ok(report)
}
