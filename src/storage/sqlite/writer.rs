//! The single writer: one thread owns the only read-write connection and commits writes in
//! groups.
//!
//! Writes arrive as jobs on a bounded channel. The thread takes every job waiting (up to a batch
//! limit), runs them all in one `BEGIN IMMEDIATE` transaction, commits once (`synchronous=FULL`:
//! the WAL is fsynced before `COMMIT` returns) and only then answers each caller. While one batch
//! is being synced the next one queues up, so 32 concurrent clients cost a handful of fsyncs,
//! not 32. The writer also assigns ids and timestamps, so they increase in commit order.
//!
//! Jobs get no savepoint of their own: FTS5 flushes its pending index at every savepoint, which
//! measured 1.7x slower on bulk writes. Instead every operation checks its preconditions before
//! it writes, so a refused job (`NotFound`) has written nothing and its batch commits normally;
//! a job that fails after writing (an internal error, a panic) rolls back its whole batch and
//! every caller in it gets an error. Either way nothing unacknowledged is kept and nothing
//! acknowledged is lost.

use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;

use anyhow::Context;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{IdGenerator, SessionId, wall_clock_ms};
use crate::events::{Event, EventKind};
use crate::storage::batch::{JobStatus, dropped, settle};
use crate::storage::{StorageError, StorageResult};
use crate::webhooks::store::Outbox;

/// What a write job sees: the connection inside the batch transaction, the id generator and the
/// events the batch has recorded so far.
pub struct WriteCtx<'a> {
    pub conn: &'a Connection,
    ids: &'a mut IdGenerator,
    events: &'a mut Vec<Event>,
    /// The next event `seq` (the writer is the only one assigning them).
    next_seq: &'a mut i64,
    /// The enabled webhook endpoints: each event gets a delivery row for every match.
    outbox: &'a mut Outbox,
}

impl WriteCtx<'_> {
    /// A timestamp for a change happening now, never below any handed out before.
    pub fn now(&mut self) -> i64 {
        self.ids.now(wall_clock_ms())
    }

    /// The next id value and its timestamp.
    pub fn next_id(&mut self) -> (i64, u128) {
        self.ids.next(wall_clock_ms())
    }

    /// Takes the `seq` of the next event, so the change can record it as its version before
    /// the event itself is written.
    pub fn reserve_seq(&mut self) -> i64 {
        let seq = *self.next_seq;
        *self.next_seq += 1;
        seq
    }

    /// Records `kind` for a session in the event log under `seq` (from [`Self::reserve_seq`]).
    pub fn emit(
        &mut self,
        seq: i64,
        kind: EventKind,
        session_id: &SessionId,
        directory: &str,
        at: i64,
        data: String,
    ) -> anyhow::Result<()> {
        // No RETURNING: it would open a statement transaction, and FTS5 flushes at each one.
        self.conn
            .prepare_cached(
                "INSERT INTO events (seq, type, session_id, directory, at, data) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute((
                seq,
                kind.as_str(),
                session_id.as_str(),
                directory,
                at,
                &data,
            ))
            .context("appending to the event log")?;
        if !self.outbox.is_empty() {
            let mut insert = self.conn.prepare_cached(
                "INSERT INTO webhook_deliveries (endpoint_id, event_seq, event_type, \
                 next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            )?;
            for endpoint in self.outbox.matching(kind, session_id.as_str(), directory) {
                insert
                    .execute((endpoint, seq, kind.as_str(), at))
                    .context("queueing a webhook delivery")?;
            }
        }
        self.events.push(Event {
            seq,
            kind,
            session_id: session_id.clone(),
            directory: directory.to_owned(),
            at,
            data,
        });
        Ok(())
    }

    /// Reloads the endpoints events are matched against (after changing one, inside the same
    /// transaction, so the next event written sees the change).
    pub fn reload_outbox(&mut self) -> anyhow::Result<()> {
        *self.outbox = load_outbox(self.conn)?;
        Ok(())
    }
}

/// The enabled endpoints' subscriptions, as stored.
fn load_outbox(conn: &Connection) -> anyhow::Result<Outbox> {
    Ok(Outbox::new(
        super::webhooks::enabled_subscriptions(conn).context("loading webhook endpoints")?,
    ))
}

pub use crate::storage::CommitHook;

#[derive(Clone, Debug)]
struct CommitFailed(String);

type Reply = Box<dyn FnOnce(Result<(), CommitFailed>) + Send>;
/// A write: run with a context inside a batch, or with `None` to refuse it unrun (the writer is
/// stopping or could not open a transaction).
type Job = Box<dyn FnOnce(Option<&mut WriteCtx<'_>>) -> (JobStatus, Reply) + Send>;

enum Command {
    Write(Job),
    /// Finish everything queued before this, then stop.
    Close(oneshot::Sender<()>),
}

/// The async side of the writer: cheap to clone, one per storage handle.
#[derive(Clone)]
pub struct WriterHandle {
    sender: mpsc::Sender<Command>,
}

pub struct WriterOptions {
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub on_commit: Option<CommitHook>,
}

/// Starts the writer thread on `conn` (already migrated and configured).
pub fn spawn(
    conn: Connection,
    ids: IdGenerator,
    options: WriterOptions,
) -> anyhow::Result<(WriterHandle, JoinHandle<()>)> {
    let (sender, receiver) = mpsc::channel(options.queue_capacity.max(1));
    let thread = std::thread::Builder::new()
        .name("sessiond-writer".into())
        .spawn(move || run(conn, ids, receiver, options))
        .context("starting the writer thread")?;
    Ok((WriterHandle { sender }, thread))
}

impl WriterHandle {
    /// Runs `op` in the next batch and returns its result once the batch is durable.
    pub async fn write<T, F>(&self, op: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> StorageResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            let result = match ctx {
                Some(ctx) => op(ctx),
                None => Err(StorageError::Unavailable(
                    "the database is not taking writes right now",
                )),
            };
            let status = JobStatus::of(&result);
            let reply: Reply = Box::new(move |commit| {
                let outcome = settle(
                    result,
                    commit.as_ref().map(|_| ()).map_err(|f| f.0.as_str()),
                );
                // The caller may have gone (client disconnected); the write stands regardless.
                let _ = tx.send(outcome);
            });
            (status, reply)
        });
        self.sender
            .send(Command::Write(job))
            .await
            .map_err(|_| StorageError::Unavailable("the writer has stopped"))?;
        rx.await.map_err(|_| dropped())?
    }

    /// Writes queued so far (for metrics and readiness).
    pub fn queue_depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Commits everything queued, then stops the thread. Idempotent.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sender.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The seq the next event gets: one past the highest ever assigned (deleted ones included).
fn next_event_seq(conn: &Connection) -> i64 {
    conn.query_row(
        "SELECT max(coalesce((SELECT max(seq) FROM events), 0), \
                    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)) + 1",
        [],
        |row| row.get(0),
    )
    .unwrap_or_else(|error| {
        // Only reachable if the database is unreadable, in which case no write will commit.
        tracing::error!(%error, "cannot read the event sequence");
        1
    })
}

fn run(
    conn: Connection,
    mut ids: IdGenerator,
    mut receiver: mpsc::Receiver<Command>,
    options: WriterOptions,
) {
    let mut events = Vec::new();
    let mut next_seq = next_event_seq(&conn);
    let mut outbox = load_outbox(&conn).unwrap_or_else(|error| {
        // Only reachable if the database is unreadable, in which case no write will commit.
        tracing::error!(
            error = format!("{error:#}"),
            "cannot read the webhook endpoints"
        );
        Outbox::default()
    });
    let mut jobs = Vec::with_capacity(options.max_batch);
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = receiver.blocking_recv() else {
            break;
        };
        match first {
            Command::Write(job) => jobs.push(job),
            Command::Close(done) => closing = Some(done),
        }
        while closing.is_none() && jobs.len() < options.max_batch {
            match receiver.try_recv() {
                Ok(Command::Write(job)) => jobs.push(job),
                Ok(Command::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if !jobs.is_empty() {
            run_batch(
                &conn,
                &mut ids,
                &mut events,
                &mut next_seq,
                &mut outbox,
                &mut jobs,
                options.on_commit.as_ref(),
            );
            events.clear();
        }
    }
    receiver.close();
    // Anything that raced in after the close request gets an answer: 503, retry elsewhere.
    while let Ok(command) = receiver.try_recv() {
        match command {
            Command::Write(job) => refuse(job),
            Command::Close(done) => {
                let _ = done.send(());
            }
        }
    }
    // Leave a compact database: fold the WAL back in and refresh planner statistics.
    if let Err(error) = conn.execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(%error, "tidying the database at shutdown failed");
    }
    if let Err((_, error)) = conn.close() {
        tracing::error!(%error, "closing the database failed");
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

fn run_batch(
    conn: &Connection,
    ids: &mut IdGenerator,
    events: &mut Vec<Event>,
    next_seq: &mut i64,
    outbox: &mut Outbox,
    jobs: &mut Vec<Job>,
    on_commit: Option<&CommitHook>,
) {
    if let Err(error) = exec(conn, "BEGIN IMMEDIATE") {
        tracing::error!(%error, jobs = jobs.len(), "could not start a write transaction");
        for job in jobs.drain(..) {
            refuse(job);
        }
        return;
    }
    let mut replies = Vec::with_capacity(jobs.len());
    let mut poisoned = false;
    for job in jobs.drain(..) {
        let mut ctx = WriteCtx {
            conn,
            ids: &mut *ids,
            events: &mut *events,
            next_seq: &mut *next_seq,
            outbox: &mut *outbox,
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| job(Some(&mut ctx)))) {
            Ok((status, reply)) => {
                poisoned |= status == JobStatus::Poisoned;
                replies.push(reply);
            }
            // The job's reply sender was dropped in the unwind: its caller gets an error.
            Err(_) => {
                tracing::error!("a write job panicked; rolling back its batch");
                poisoned = true;
            }
        }
    }
    let committing = std::time::Instant::now();
    let batch_size = replies.len();
    let commit = if poisoned {
        Err(CommitFailed(
            "another write in the same batch failed, so the batch was rolled back".to_owned(),
        ))
    } else {
        exec(conn, "COMMIT").map_err(|error| {
            tracing::error!(%error, "commit failed; rolling back the batch");
            CommitFailed(error.to_string())
        })
    };
    metrics::histogram!(crate::telemetry::metrics::WRITER_COMMIT)
        .record(committing.elapsed().as_secs_f64());
    metrics::histogram!(crate::telemetry::metrics::WRITER_BATCH_SIZE).record(batch_size as f64);
    if commit.is_err() {
        if let Err(error) = exec(conn, "ROLLBACK") {
            tracing::error!(%error, "rolling back a failed batch failed");
        }
        events.clear();
        // Seqs handed out in the rolled-back batch were never written: reuse them.
        *next_seq = next_event_seq(conn);
        // Endpoint changes in the rolled-back batch never happened either.
        match load_outbox(conn) {
            Ok(reloaded) => *outbox = reloaded,
            Err(error) => tracing::error!(error = format!("{error:#}"), "cannot reload webhooks"),
        }
    }
    // Publish before answering: once a writer hears back, caches are invalidated and
    // subscribers have the event, so its next read (or If-None-Match) sees its own write.
    if let Some(hook) = on_commit
        && !events.is_empty()
    {
        hook(events);
    }
    for reply in replies {
        reply(commit.clone());
    }
}

/// Answers a job without running it (its caller gets `Unavailable`, a 503).
fn refuse(job: Job) {
    let (_, reply) = job(None);
    reply(Ok(()));
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}
