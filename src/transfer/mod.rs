//! Moving data in and out: `sessiond export`, `import jsonl`, `import opencode`,
//! `migrate-data` and `seed`, each in a module of its own, and what the imports share: the
//! pipeline that writes one session per transaction, the report every import prints, and the
//! progress bar they show on a terminal.
//!
//! Imports write through [`Storage::import_session`], so every session lands whole (with every
//! message of it that could be read) or not at all, and running instances hear of it through
//! the event log. Several sessions are in flight at once, so the backend's writer can commit
//! them in groups; they are still queued in order, so a parent is always written before the
//! children that follow it.

pub mod export;
pub mod jsonl;
pub mod migrate;
pub mod opencode;
pub mod seed;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use crate::storage::{ImportMapping, ImportSession, ImportedSession, Storage, StorageResult};

/// Sessions handed to the writer before the first of them must be answered.
const IN_FLIGHT: usize = 32;

/// How many records of one kind an import read, wrote, and found already there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub read: u64,
    pub imported: u64,
    pub skipped: u64,
}

/// A record an import could not take, with where it is and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// A file path, `line N`, or a table and row.
    pub location: String,
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct ImportReport {
    pub sessions: Tally,
    pub messages: Tally,
    pub refused: Vec<Refusal>,
    pub elapsed: Duration,
}

impl ImportReport {
    pub fn refuse(&mut self, location: impl Into<String>, reason: impl Into<String>) {
        self.refused.push(Refusal {
            location: location.into(),
            reason: reason.into(),
        });
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, m) = (&self.sessions, &self.messages);
        writeln!(f, "read:     {} sessions, {} messages", s.read, m.read)?;
        writeln!(
            f,
            "imported: {} sessions, {} messages",
            s.imported, m.imported
        )?;
        writeln!(
            f,
            "skipped:  {} sessions, {} messages (already there)",
            s.skipped, m.skipped
        )?;
        writeln!(f, "refused:  {} records", self.refused.len())?;
        for refusal in &self.refused {
            writeln!(f, "  {}: {}", refusal.location, refusal.reason)?;
        }
        let secs = self.elapsed.as_secs_f64();
        write!(
            f,
            "in {secs:.1}s ({:.0} messages/s)",
            m.read as f64 / secs.max(1e-9)
        )
    }
}

/// A session to write, with what the report needs to know about it.
pub struct Pending {
    pub item: ImportSession,
    pub mapping: ImportMapping,
    /// Where the session came from, for a refusal.
    pub location: String,
}

type Write = std::pin::Pin<
    Box<dyn std::future::Future<Output = (String, u64, StorageResult<ImportedSession>)> + Send>,
>;

/// Writes sessions one transaction each, a bounded number in flight, and tallies the answers.
pub struct Pipeline {
    storage: Arc<dyn Storage>,
    in_flight: FuturesOrdered<Write>,
    pub report: ImportReport,
    progress: Progress,
    /// Sessions whose write failed (each is also a refusal).
    failed: u64,
}

impl Pipeline {
    pub fn new(storage: Arc<dyn Storage>) -> Pipeline {
        Pipeline {
            storage,
            in_flight: FuturesOrdered::new(),
            report: ImportReport::default(),
            progress: Progress::new(None),
            failed: 0,
        }
    }

    /// The number of sessions to come, once the source knows it.
    pub fn set_total(&self, sessions: u64) {
        self.progress.set_total(sessions);
    }

    /// Queues `pending`, first waiting for an answer when the window is full.
    pub async fn write(&mut self, pending: Pending) {
        while self.in_flight.len() >= IN_FLIGHT {
            self.settle_one().await;
        }
        let storage = self.storage.clone();
        let messages = pending.item.messages.len() as u64;
        let location = pending.location;
        let (item, mapping) = (pending.item, pending.mapping);
        self.in_flight.push_back(Box::pin(async move {
            let result = storage.import_session(item, mapping).await;
            (location, messages, result)
        }));
    }

    async fn settle_one(&mut self) {
        let Some((location, messages, result)) = self.in_flight.next().await else {
            return;
        };
        match result {
            Ok(written) => {
                if written.created {
                    self.report.sessions.imported += 1;
                } else {
                    self.report.sessions.skipped += 1;
                }
                self.report.messages.imported += written.messages;
                self.report.messages.skipped += messages - written.messages;
            }
            Err(error) => {
                self.failed += 1;
                self.report.refuse(
                    location,
                    format!("the session and its {messages} messages were not written: {error}"),
                )
            }
        }
        self.counted();
    }

    /// Shows the progress, after the report's counts changed.
    pub fn counted(&self) {
        let done = self.report.sessions.imported + self.report.sessions.skipped + self.failed;
        self.progress.show(done, &self.report);
    }

    /// Waits for every queued session and returns the report.
    pub async fn finish(mut self, started: Instant) -> ImportReport {
        while !self.in_flight.is_empty() {
            self.settle_one().await;
        }
        self.progress.done();
        self.report.elapsed = started.elapsed();
        self.report
    }
}

/// Progress on standard error (indicatif, which draws nothing when it is not a terminal): a
/// bar of sessions when their number is known, a spinner with the count when not, and whatever
/// the command adds (messages written, their rate, refusals) after it.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn new(total: Option<u64>) -> Progress {
        let progress = Progress {
            bar: indicatif::ProgressBar::new_spinner(),
        };
        if let Some(total) = total {
            progress.set_total(total);
        } else {
            progress.style("{spinner} {pos} sessions {msg} [{elapsed}]");
        }
        progress
    }

    /// Draws nothing (where standard error shares a terminal with the data written).
    pub fn hidden() -> Progress {
        Progress {
            bar: indicatif::ProgressBar::hidden(),
        }
    }

    /// From here on a bar out of `total` sessions.
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
        self.style("[{bar:30}] {pos}/{len} sessions {msg} [{elapsed}, {eta} left]");
    }

    fn style(&self, template: &str) {
        // The templates are constants; one that did not parse would only lose the layout.
        let style = indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("#>-");
        self.bar.set_style(style);
    }

    /// `done` sessions so far, and what to show after them.
    pub fn set(&self, done: u64, message: impl Into<std::borrow::Cow<'static, str>>) {
        self.bar.set_position(done);
        self.bar.set_message(message);
    }

    /// Clears it: the report that follows says the same, and more.
    pub fn done(&self) {
        self.bar.finish_and_clear();
    }

    /// `done` sessions so far, `messages` written with their rate, then `more`.
    pub fn written(&self, done: u64, messages: u64, more: &str) {
        let secs = self.bar.elapsed().as_secs_f64().max(1e-9);
        self.set(
            done,
            format!(
                "{messages} messages written ({:.0}/s){more}",
                messages as f64 / secs
            ),
        );
    }

    fn show(&self, done: u64, report: &ImportReport) {
        let refused = format!(", {} refused", report.refused.len());
        self.written(done, report.messages.imported, &refused);
    }
}
