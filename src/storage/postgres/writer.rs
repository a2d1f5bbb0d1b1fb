//! The writer of one instance: a task that commits writes in groups, as SQLite's writer does.
//!
//! Jobs arrive on a bounded channel; the task takes every job waiting (up to a batch limit),
//! runs them in one transaction that first locks the `head` row, commits once, hands the
//! batch's events to the [`Feed`] (which delivers them in `seq` order, after any other
//! instance's events before them) and only then answers each caller. Batching keeps the number
//! of commits, and so of WAL flushes and of waits on the `head` lock, far below the number of
//! writes. As with SQLite, a job refused before writing (not found) leaves its batch intact; a
//! job that fails after it may have written rolls its whole batch back, and every caller in it
//! gets an error.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use deadpool_postgres::{Object, Pool};
use tokio::sync::{mpsc, oneshot};

use super::feed::Feed;
use super::{EVENTS_CHANNEL, get_client};
use crate::domain::{IdGenerator, SessionId, wall_clock_ms};
use crate::events::{Event, EventKind};
use crate::storage::CommitHook;
use crate::storage::batch::{JobStatus, dropped, settle};
use crate::storage::{StorageError, StorageResult};

/// What a write job sees: the connection inside the batch transaction, the id generator and the
/// events the batch has recorded so far.
pub struct WriteCtx {
    pub client: Object,
    ids: IdGenerator,
    /// The newest timestamp handed out in this batch.
    last_at: i64,
    next_seq: i64,
    events: Vec<Event>,
    /// Whether anything was written (a batch of refusals needs no commit).
    wrote: bool,
    /// Enabled webhook endpoints (from `head`): when there are any, the batch's events get
    /// their delivery rows before it commits.
    webhooks: i64,
}

impl WriteCtx {
    /// A timestamp for a change happening now, never below any handed out before.
    pub fn now(&mut self) -> i64 {
        let now = self.ids.now(wall_clock_ms());
        self.last_at = self.last_at.max(now);
        self.wrote = true;
        now
    }

    /// The next id value and its timestamp.
    pub fn next_id(&mut self) -> (i64, u128) {
        let (at, value) = self.ids.next(wall_clock_ms());
        self.last_at = self.last_at.max(at);
        self.wrote = true;
        (at, value)
    }

    /// Takes the `seq` of the next event.
    pub fn reserve_seq(&mut self) -> i64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.wrote = true;
        seq
    }

    /// Gives back the `seq` just reserved, for a write refused before it wrote anything (the
    /// log stays gapless).
    pub fn unreserve_seq(&mut self) {
        self.next_seq -= 1;
    }

    /// Records `kind` for a session in the event log under `seq` (from [`Self::reserve_seq`]).
    pub async fn emit(
        &mut self,
        seq: i64,
        kind: EventKind,
        session_id: &SessionId,
        directory: &str,
        at: i64,
        data: String,
    ) -> StorageResult<()> {
        let event = Event {
            seq,
            kind,
            session_id: session_id.clone(),
            directory: directory.to_owned(),
            at,
            data,
        };
        self.log(&event).await?;
        self.logged(event);
        Ok(())
    }

    /// Writes `event` to the log. Takes `&self`, so a job can send it together with its other
    /// statements (one round trip for all, pipelined on the connection); then [`Self::logged`].
    pub async fn log(&self, event: &Event) -> StorageResult<()> {
        let statement = self
            .client
            .prepare_cached(
                "INSERT INTO events (seq, type, session_id, directory, at, data) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await
            .map_err(super::db_write("preparing an event insert"))?;
        self.client
            .execute(
                &statement,
                &[
                    &event.seq,
                    &event.kind.as_str(),
                    &event.session_id.as_str(),
                    &event.directory,
                    &event.at,
                    &event.data,
                ],
            )
            .await
            .map_err(super::db_write("appending to the event log"))?;
        Ok(())
    }

    /// Counts a logged event in the batch (delivered to subscribers after the commit).
    pub fn logged(&mut self, event: Event) {
        self.events.push(event);
    }
}

type JobFuture<'a> = Pin<Box<dyn Future<Output = JobStatus> + Send + 'a>>;
type JobFn = Box<dyn for<'a> FnOnce(&'a mut WriteCtx) -> JobFuture<'a> + Send>;

/// Boxes a job body (the bound is what lets the closure's future borrow the context).
fn boxed<F>(f: F) -> JobFn
where
    F: for<'a> FnOnce(&'a mut WriteCtx) -> JobFuture<'a> + Send + 'static,
{
    Box::new(f)
}

/// What became of a write, which its caller then hears.
enum Fate {
    /// It ran, and its batch committed (`Ok`) or was rolled back (`Err` with why).
    Ran(Result<(), String>),
    /// It never ran.
    NotRun(StorageError),
}

/// A write: run inside a batch, then answered once with its fate.
struct Job {
    run: JobFn,
    answer: Box<dyn FnOnce(Fate) + Send>,
}

enum Command {
    Write(Job),
    Close(oneshot::Sender<()>),
}

pub struct Writer {
    sender: mpsc::Sender<Command>,
}

/// What the writer tells about its own commits, besides delivering them through the feed.
pub struct WriterHooks {
    /// Every batch's events (e.g. to broadcast them to other instances).
    pub local: Option<CommitHook>,
    /// A batch the feed could not deliver in order yet: caches must forget it now.
    pub stale: Option<CommitHook>,
}

impl Writer {
    pub fn spawn(
        pool: Pool,
        feed: Arc<Feed>,
        hooks: WriterHooks,
        queue: usize,
        max_batch: usize,
    ) -> Writer {
        let (sender, receiver) = mpsc::channel(queue.max(1));
        // This writer's name in `head.owner` (one per storage, even within one process).
        let instance = crate::domain::random_token();
        tokio::spawn(run(pool, feed, hooks, instance, receiver, max_batch));
        Writer { sender }
    }

    /// Runs `op` in the next batch and returns its result once the batch is committed.
    pub async fn write<T, F>(&self, op: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(
                &'a mut WriteCtx,
            )
                -> Pin<Box<dyn Future<Output = StorageResult<T>> + Send + 'a>>
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel::<StorageResult<T>>();
        let result: Arc<std::sync::Mutex<Option<StorageResult<T>>>> = Arc::default();
        let slot = result.clone();
        let run = boxed(move |ctx| {
            Box::pin(async move {
                let outcome = op(ctx).await;
                let status = JobStatus::of(&outcome);
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
                status
            })
        });
        let job = Job {
            run,
            answer: Box::new(move |fate| {
                let outcome = match fate {
                    Fate::NotRun(error) => Err(error),
                    Fate::Ran(commit) => {
                        let outcome = result
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take()
                            .unwrap_or_else(|| {
                                Err(StorageError::Internal(anyhow::anyhow!(
                                    "a write job left no result"
                                )))
                            });
                        settle(outcome, commit.as_ref().map(|_| ()).map_err(String::as_str))
                    }
                };
                // The caller may have gone (client disconnected); the write stands regardless.
                let _ = tx.send(outcome);
            }),
        };
        self.sender
            .send(Command::Write(job))
            .await
            .map_err(|_| StorageError::Unavailable("the writer has stopped"))?;
        rx.await.map_err(|_| dropped())?
    }

    pub fn queue_depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Commits everything queued, then stops the task. Idempotent.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sender.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(
    pool: Pool,
    feed: Arc<Feed>,
    hooks: WriterHooks,
    instance: String,
    mut receiver: mpsc::Receiver<Command>,
    max_batch: usize,
) {
    let mut ids = IdGenerator::default();
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut batch = Vec::new();
        match first {
            Command::Write(job) => batch.push(job),
            Command::Close(done) => closing = Some(done),
        }
        while closing.is_none() && batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(Command::Write(job)) => batch.push(job),
                Ok(Command::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            ids = run_batch(&pool, &feed, &hooks, &instance, ids, batch).await;
        }
    }
    receiver.close();
    // Anything that raced the close is refused, not lost silently.
    while let Ok(command) = receiver.try_recv() {
        if let Command::Write(job) = command {
            (job.answer)(Fate::NotRun(StorageError::Unavailable(
                "the server is shutting down",
            )));
        }
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Runs one batch; returns the id generator for the next.
async fn run_batch(
    pool: &Pool,
    feed: &Feed,
    hooks: &WriterHooks,
    instance: &str,
    ids: IdGenerator,
    batch: Vec<Job>,
) -> IdGenerator {
    let client = match get_client(pool).await {
        Ok(client) => client,
        Err(error) => {
            let why = error.to_string();
            for job in batch {
                (job.answer)(Fate::NotRun(StorageError::Unavailable(
                    "the database cannot be reached",
                )));
            }
            tracing::warn!(error = why, "a write batch found no database connection");
            return ids;
        }
    };
    let begun = async {
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| format!("starting the batch: {e}"))?;
        let row = client
            .query_one(
                "SELECT seq, at, owner, webhooks FROM head WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(|e| format!("locking the head: {e}"))?;
        Ok::<_, String>((
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2),
            row.get::<_, i64>(3),
        ))
    }
    .await;
    let (seq, at, owner, webhooks) = match begun {
        Ok(head) => head,
        Err(why) => {
            let _ = client.batch_execute("ROLLBACK").await;
            tracing::error!(error = why, "a write batch could not start");
            for job in batch {
                (job.answer)(Fate::NotRun(StorageError::Unavailable(
                    "the database is not taking writes right now",
                )));
            }
            return ids;
        }
    };
    // Another instance wrote last: continue after its newest timestamp, so ids and times keep
    // increasing across instances.
    let ids = if owner != instance {
        IdGenerator::starting_after(at)
    } else {
        ids
    };
    let mut ctx = WriteCtx {
        client,
        ids,
        last_at: at,
        next_seq: seq + 1,
        events: Vec::new(),
        wrote: false,
        webhooks,
    };
    let mut poisoned = false;
    let mut ran = Vec::with_capacity(batch.len());
    for job in batch {
        if poisoned {
            (job.answer)(Fate::NotRun(StorageError::Internal(anyhow::anyhow!(
                "the write batch was rolled back after another write in it failed"
            ))));
            continue;
        }
        // A panicking write must not take the writer down with it: it poisons its batch only.
        let status = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
            (job.run)(&mut ctx),
        ))
        .await
        .unwrap_or_else(|_| {
            tracing::error!("a write panicked; rolling back its batch");
            JobStatus::Poisoned
        });
        poisoned = status == JobStatus::Poisoned;
        ran.push(job.answer);
    }
    let committing = std::time::Instant::now();
    let outcome = if poisoned {
        Err("a write in the batch failed".to_owned())
    } else if ctx.wrote {
        commit(&ctx, instance).await
    } else {
        Ok(())
    };
    metrics::histogram!(crate::telemetry::metrics::WRITER_COMMIT)
        .record(committing.elapsed().as_secs_f64());
    metrics::histogram!(crate::telemetry::metrics::WRITER_BATCH_SIZE).record(ran.len() as f64);
    if outcome.is_err() || !ctx.wrote {
        let _ = ctx.client.batch_execute("ROLLBACK").await;
    }
    if let Err(why) = &outcome {
        tracing::error!(error = why, "a write batch was rolled back");
    }
    // The connection goes back to the pool now: delivering may need one to read the log.
    let WriteCtx {
        ids,
        events,
        client,
        ..
    } = ctx;
    drop(client);
    if outcome.is_ok() && !events.is_empty() {
        // Subscribers and caches hear of the changes before the writers do, so a writer's next
        // read and next stream see what it wrote.
        if !feed.deliver(&events).await
            && let Some(hook) = hooks.stale.as_ref()
        {
            // Not deliverable in order yet: the caches still forget at once.
            hook(&events);
        }
        if let Some(hook) = hooks.local.as_ref() {
            hook(&events);
        }
    }
    for answer in ran {
        answer(Fate::Ran(outcome.clone()));
    }
    ids
}

/// Moves the head at the end of a batch. `messages` is the newest message `seq` this batch can
/// see: its own and every committed one (all message inserts hold the `head` lock, so none is
/// in flight elsewhere), which the search indexers of every instance read as the messages head.
const HEAD_UPDATE: &str = "UPDATE head SET seq = $1, at = $2, owner = $3, \
     messages = GREATEST(messages, coalesce((SELECT max(seq) FROM messages), 0)) WHERE id = 1";

async fn commit(ctx: &WriteCtx, instance: &str) -> Result<(), String> {
    let last_seq = ctx.next_seq - 1;
    if ctx.webhooks > 0
        && let (Some(first), Some(last)) = (ctx.events.first(), ctx.events.last())
    {
        // The outbox: one delivery per (enabled endpoint, matching event) of this batch, in
        // the batch's own transaction.
        ctx.client
            .execute(
                "INSERT INTO webhook_deliveries (endpoint_id, event_seq, event_type, \
                 next_attempt_at, created_at) \
                 SELECT w.id, e.seq, e.type, e.at, e.at FROM events e \
                 JOIN webhook_endpoints w ON w.enabled \
                  AND (w.events IS NULL OR e.type = ANY (string_to_array(w.events, ','))) \
                  AND (w.session_id IS NULL OR w.session_id = e.session_id) \
                  AND (w.directory IS NULL OR w.directory = e.directory) \
                 WHERE e.seq BETWEEN $1 AND $2 ORDER BY e.seq, w.id",
                &[&first.seq, &last.seq],
            )
            .await
            .map_err(|e| format!("queueing webhook deliveries: {e}"))?;
    }
    ctx.client
        .execute(HEAD_UPDATE, &[&last_seq, &ctx.last_at, &instance])
        .await
        .map_err(|e| format!("moving the head: {e}"))?;
    if !ctx.events.is_empty() {
        ctx.client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&EVENTS_CHANNEL, &last_seq.to_string()],
            )
            .await
            .map_err(|e| format!("notifying other instances: {e}"))?;
    }
    ctx.client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| format!("committing: {e}"))
}
