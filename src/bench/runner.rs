//! Driving load: the closed model (N connections, each sending as soon as its last response
//! arrived) and the open model (a constant arrival rate, each request due at a fixed time and
//! its latency measured from that time, as wrk2 does, so a stalled server cannot hide behind
//! requests that were never sent).
//!
//! In the open model a pacer thread (plain `std::thread::sleep`, ~0.1 ms precise, unlike the
//! async timer's 1 ms ticks) puts due times on one queue that every connection takes from when
//! it is free, so one slow response delays nothing else; when all connections are busy, due
//! requests wait in the queue and their latency keeps counting.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::client::{Connection, Failure, Target};
use super::stats::{Memory, Outcome, Recorder, TimelinePoint, memory};
use super::workload::{Dataset, Mix, Op, User};

#[derive(Clone, Copy, Debug)]
pub enum Model {
    Closed { connections: usize },
    Open { rate: f64, connections: usize },
}

impl Model {
    pub fn connections(&self) -> usize {
        match self {
            Model::Closed { connections } | Model::Open { connections, .. } => *connections,
        }
    }
}

pub struct RunSpec {
    pub target: Target,
    pub model: Model,
    pub duration: Duration,
    pub mix: Mix,
    pub data: Arc<Dataset>,
    pub timeout: Duration,
    /// Shown at the start of the progress line.
    pub label: String,
    /// Samples this process's RSS every `rss_every`.
    pub rss_pid: Option<u32>,
    pub rss_every: Duration,
    /// Seeds the simulated users, so runs are repeatable.
    pub seed: u64,
}

pub struct RunOutput {
    pub elapsed: Duration,
    pub timeline: Vec<TimelinePoint>,
    pub rss_samples: Vec<(f64, Memory)>,
}

/// How long requests still running (or queued, in the open model) at the end of the run may
/// take before they are cut off and counted as failed.
const GRACE: Duration = Duration::from_secs(5);

/// One simulated user on one connection.
struct Worker {
    conn: Connection,
    user: User,
    mix: Mix,
    data: Arc<Dataset>,
    recorder: Arc<Recorder>,
}

impl Worker {
    /// Sends the user's next request; latency counts from `due` (open model) or from now.
    async fn exchange(&mut self, due: Option<Instant>) {
        let planned = self.user.next(&self.mix, &self.data);
        let sent = Instant::now();
        if let Some(due) = due {
            self.recorder
                .record_lag(sent.saturating_duration_since(due));
        }
        let result = self
            .conn
            .send(planned.method.clone(), &planned.path, planned.body.clone())
            .await;
        let latency = due.unwrap_or(sent).elapsed();
        match result {
            Ok(reply) => {
                self.recorder
                    .record(planned.op, latency, Outcome::Status(reply.status));
                self.user.observe(&planned, reply.status, &reply.body);
            }
            Err(failure) => {
                self.recorder
                    .record(planned.op, latency, Outcome::Failed(failure));
                // A refused connection would otherwise spin: back off briefly.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Due times shared by the open model's connections.
type DueQueue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>;

/// Starts the pacer thread; returns the queue of due times it fills until `deadline`.
fn pace(rate: f64, start: Instant, deadline: Instant) -> DueQueue {
    let (sender, receiver) = mpsc::unbounded_channel();
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
    let spawned = std::thread::Builder::new()
        .name("sessiond-bench-pacer".into())
        .spawn(move || {
            let mut k: u32 = 0;
            loop {
                let due = start + period * k;
                if due >= deadline {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                // Hand out everything due by now (several at high rates).
                let now = Instant::now();
                loop {
                    let due = start + period * k;
                    if due > now || due >= deadline {
                        break;
                    }
                    if sender.send(due).is_err() {
                        // The run was cut short: nobody is listening any more.
                        return;
                    }
                    k += 1;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the pacer thread");
    }
    Arc::new(tokio::sync::Mutex::new(receiver))
}

/// The next due time, or `None` once the pacer is done and the queue is empty.
async fn next_due(queue: &DueQueue) -> Option<Instant> {
    queue.lock().await.recv().await
}

/// Runs `spec` to its end, recording into `recorder`.
pub async fn run(spec: &RunSpec, recorder: &Arc<Recorder>) -> RunOutput {
    let start = Instant::now();
    let deadline = start + spec.duration;
    let hard_stop = deadline + spec.timeout.min(GRACE);
    let connections = spec.model.connections().max(1);
    let queue = match spec.model {
        Model::Closed { .. } => None,
        Model::Open { rate, .. } => Some(pace(rate, start, deadline)),
    };
    let mut tasks = JoinSet::new();
    for index in 0..connections {
        let mut worker = Worker {
            conn: Connection::new(spec.target.clone(), spec.timeout),
            user: User::new(spec.seed.wrapping_mul(1_000_003).wrapping_add(index as u64)),
            mix: spec.mix.clone(),
            data: spec.data.clone(),
            recorder: recorder.clone(),
        };
        let queue = queue.clone();
        tasks.spawn(async move {
            let body = async {
                match &queue {
                    None => {
                        while Instant::now() < deadline {
                            worker.exchange(None).await;
                        }
                    }
                    Some(queue) => {
                        while let Some(due) = next_due(queue).await {
                            worker.exchange(Some(due)).await;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout_at(hard_stop.into(), body).await;
        });
    }
    // Due but never sent when time ran out: the server fell that far behind. They count.
    let recorder_for_unsent = recorder.clone();
    let mut timeline = Vec::new();
    let mut rss_samples = Vec::new();
    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut last_rss = None::<Instant>;
    let mut last_tick = start;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            joined = tasks.join_next() => {
                if joined.is_none() {
                    break;
                }
                continue;
            }
        }
        let now = Instant::now();
        let t = now.duration_since(start).as_secs_f64();
        let point = recorder.tick(t, now.duration_since(last_tick));
        last_tick = now;
        if let Some(pid) = spec.rss_pid
            && last_rss.is_none_or(|at| now.duration_since(at) >= spec.rss_every)
            && let Some(sample) = memory(pid)
        {
            rss_samples.push((t, sample));
            last_rss = Some(now);
        }
        let line = format!(
            "[{}] {:>5.0}s {:>9.0} req/s  p50 {:>8.2} ms  p99 {:>8.2} ms  errors {}",
            spec.label, t, point.throughput, point.p50, point.p99, point.errors
        );
        if terminal {
            eprint!("\r{line}   ");
        } else if timeline.len() % 5 == 4 {
            eprintln!("{line}");
        }
        timeline.push(point);
    }
    if let Some(queue) = &queue {
        let mut queue = queue.lock().await;
        queue.close();
        while let Ok(due) = queue.try_recv() {
            recorder_for_unsent.record(
                Op::Unsent,
                hard_stop.saturating_duration_since(due),
                Outcome::Failed(Failure::Unsent),
            );
        }
    }
    // What completed after the last whole second still belongs to the run.
    let now = Instant::now();
    let tail = now.duration_since(last_tick);
    if tail > Duration::from_millis(50) {
        timeline.push(recorder.tick(now.duration_since(start).as_secs_f64(), tail));
    }
    if terminal {
        eprintln!();
    }
    if let Some(pid) = spec.rss_pid
        && let Some(sample) = memory(pid)
    {
        rss_samples.push((now.duration_since(start).as_secs_f64(), sample));
    }
    RunOutput {
        elapsed: spec.duration.min(now.duration_since(start)),
        timeline,
        rss_samples,
    }
}
