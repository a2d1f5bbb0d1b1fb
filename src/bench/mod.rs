//! `sessiond bench`: a load generator for any server that speaks `shared/API.md`.
//!
//! Scenarios model real clients (chat users listing and paging, agents bursting writes, a
//! realistic mix, a soak, a ramp to the knee). Two load models: closed (N connections as fast as
//! they can) and open (a constant arrival rate, latency measured from each request's intended
//! send time, so coordinated omission cannot hide stalls). Latencies go into HDR histograms;
//! results print as a table and can be written as JSON and as a self-contained HTML report,
//! compared with an earlier run, and checked against thresholds (a failed threshold makes the
//! command exit non-zero, so CI can gate on it). Traffic only ever goes to the given target.

mod client;
mod fanout;
mod report;
mod runner;
mod scenarios;
mod stats;
mod webhooks;
mod workload;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

pub use report::Threshold;
pub use stats::BenchResult;

use self::client::{Connection, Target};
use self::report::{compare, html, summary};
use self::runner::{Model, RunSpec, run};
use self::scenarios::Scenario;
use self::stats::{Memory, RampReport, RampStep, Recorder, RssReport, slope};
use self::workload::Dataset;
use crate::config::parse_duration;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the server under test (only this host is ever contacted)
    #[arg(long, value_name = "URL", required_unless_present = "data_dir")]
    pub target: Option<String>,
    /// health, message_burst, chat_list, list_sessions, search, mixed, soak, ramp, fanout, webhooks
    #[arg(long, value_name = "NAME")]
    pub scenario: String,
    /// How long to measure (e.g. 30s, 2m) [default: the scenario's]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Open model: requests per second (latency from the intended send time)
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Connections (closed model: concurrent users; open model: connections carrying the rate)
    #[arg(long, value_name = "C")]
    pub connections: Option<usize>,
    /// Write the machine-readable result here
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report here
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Show the change against an earlier --json result
    #[arg(long, value_name = "OLD.json")]
    pub compare: Option<PathBuf>,
    /// Pass/fail condition such as `p99<50ms`, `errors==0`, `search.p95<300ms`, `throughput>=950`;
    /// repeatable; replaces the scenario's defaults
    #[arg(long = "threshold", value_name = "EXPR")]
    pub thresholds: Vec<String>,
    /// Check no thresholds at all
    #[arg(long, conflicts_with = "thresholds")]
    pub no_thresholds: bool,
    /// Sample this process's resident memory during the run (the server's PID)
    #[arg(long, value_name = "PID")]
    pub target_pid: Option<u32>,
    /// Instead of --target: start a local sessiond on this data dir (seeding it first when it
    /// holds no database) and stop it afterwards
    #[arg(long, value_name = "DIR", conflicts_with = "target")]
    pub data_dir: Option<PathBuf>,
    /// Sessions to seed into a new --data-dir
    #[arg(long, default_value_t = 10_000)]
    pub seed_sessions: usize,
    /// Messages per session to seed into a new --data-dir
    #[arg(long, default_value_t = 10)]
    pub seed_messages: usize,
    /// Existing sessions to discover and use (more are created through the API when fewer than
    /// --min-sessions exist)
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Sessions the scenario needs; missing ones are created through the API
    #[arg(long, default_value_t = 100)]
    pub min_sessions: usize,
    /// Per-request timeout
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Threads generating load
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the simulated users' choices
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Ramp: the p99 latency that marks the knee
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "100ms")]
    pub slo: Duration,
    /// Ramp: the first arrival rate
    #[arg(long, default_value_t = 250.0)]
    pub ramp_start: f64,
    /// Ramp: each step multiplies the rate by this
    #[arg(long, default_value_t = 1.5)]
    pub ramp_factor: f64,
    /// Ramp: how long each step lasts
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub ramp_step: Duration,
    /// Fan-out: event-stream subscribers to hold open
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Fan-out: where the subscribers connect, when not to --target (another instance of the
    /// same cluster: the latency then includes the hop between instances)
    #[arg(long, value_name = "URL")]
    pub subscribe_target: Option<String>,
    /// API key sent as `Authorization: Bearer …` (for a server with auth required); a key
    /// with the write scope runs every scenario
    #[arg(
        long,
        env = "SESSIOND_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
}

/// Runs the bench command on its own runtime (sized by `--threads`).
pub fn main(args: BenchArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .thread_name("sessiond-bench")
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sessiond bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("sessiond bench: at least one threshold failed");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("sessiond bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a whole bench; `Ok(false)` when a threshold failed.
pub async fn bench(args: BenchArgs) -> anyhow::Result<bool> {
    let scenario = Scenario::named(&args.scenario)?;
    let thresholds: Vec<Threshold> = if args.no_thresholds {
        Vec::new()
    } else if args.thresholds.is_empty() {
        scenario
            .thresholds
            .iter()
            .map(|t| Threshold::parse(t))
            .collect::<anyhow::Result<_>>()?
    } else {
        args.thresholds
            .iter()
            .map(|t| Threshold::parse(t))
            .collect::<anyhow::Result<_>>()?
    };
    let baseline = match &args.compare {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --compare {}", path.display()))?;
            Some(
                serde_json::from_str::<BenchResult>(&text)
                    .with_context(|| format!("{} is not a bench result", path.display()))?,
            )
        }
        None => None,
    };

    let mut local = None;
    let (target_url, target_pid) = match (&args.target, &args.data_dir) {
        (Some(url), _) => (url.clone(), args.target_pid),
        (None, Some(dir)) => {
            let server = LocalServer::start(dir, args.seed_sessions, args.seed_messages).await?;
            let url = server.url.clone();
            let pid = server.child.id();
            local = Some(server);
            (url, args.target_pid.or(Some(pid)))
        }
        (None, None) => bail!("give --target URL or --data-dir DIR"),
    };
    let mut target = Target::parse(&target_url)?;
    if let Some(key) = &args.api_key {
        target = target.with_api_key(key)?;
    }
    wait_until_healthy(&target).await?;

    let result = scenario.run(&args, &target, &target_url, target_pid).await;
    if let Some(server) = local.take() {
        server.stop();
    }
    let mut result = result?;
    result.thresholds = thresholds.iter().map(|t| t.evaluate(&result)).collect();
    print!("{}", summary(&result));
    if let Some(old) = &baseline {
        print!("{}", compare(old, &result));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result).context("encoding the result")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html(&result, baseline.as_ref())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(result.thresholds.iter().all(|t| t.passed))
}

async fn wait_until_healthy(target: &Target) -> anyhow::Result<()> {
    let mut conn = Connection::new(target.clone(), Duration::from_secs(5));
    let started = Instant::now();
    loop {
        match conn.send(hyper::Method::GET, "/health", None).await {
            Ok(reply) if reply.status == 200 => return Ok(()),
            outcome if started.elapsed() > Duration::from_secs(10) => {
                let why = match outcome {
                    Ok(reply) => format!("it answered {}", reply.status),
                    Err(failure) => format!("the request failed ({})", failure.as_str()),
                };
                bail!(
                    "the target {}{} is not healthy: {why}",
                    target.authority,
                    target.base_path
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The result fields that describe the run rather than measure it; `started_at_ms` is when
/// the measured run began.
fn base_result(scenario: &str, target: &str, model: Model, started_at_ms: i64) -> BenchResult {
    BenchResult {
        scenario: scenario.to_owned(),
        target: target.to_owned(),
        model: match model {
            Model::Open { .. } => "open".to_owned(),
            Model::Closed { .. } => "closed".to_owned(),
        },
        rate: match model {
            Model::Open { rate, .. } => Some(rate),
            Model::Closed { .. } => None,
        },
        connections: model.connections(),
        started_at_ms,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..BenchResult::default()
    }
}

fn rss_report(pid: Option<u32>, memory: Vec<(f64, Memory)>) -> Option<RssReport> {
    let pid = pid?;
    let samples: Vec<(f64, f64)> = memory.iter().map(|(t, m)| (*t, m.rss_mb)).collect();
    let anon_samples: Vec<(f64, f64)> = memory.iter().map(|(t, m)| (*t, m.anon_mb)).collect();
    // Caches fill during the first minutes (page caches, the mmap, the response cache): the
    // trend that matters is the one after that warm-up, so the first quarter of the run is
    // left out of the fit.
    let after_warm_up = |s: &[(f64, f64)]| slope(&s[s.len() / 4..]) * 3600.0;
    Some(RssReport {
        pid,
        start_mb: samples.first()?.1,
        end_mb: samples.last()?.1,
        max_mb: samples.iter().map(|s| s.1).fold(0.0, f64::max),
        growth_mb_per_hour: after_warm_up(&samples),
        anon_start_mb: anon_samples.first()?.1,
        anon_end_mb: anon_samples.last()?.1,
        anon_growth_mb_per_hour: after_warm_up(&anon_samples),
        samples,
        anon_samples,
    })
}

impl Scenario {
    async fn run(
        &self,
        args: &BenchArgs,
        target: &Target,
        target_url: &str,
        target_pid: Option<u32>,
    ) -> anyhow::Result<BenchResult> {
        let data = if self.mix.needs_data() && self.name != "fanout" && self.name != "webhooks" {
            eprintln!("preparing data on {target_url} …");
            let data = Dataset::prepare(target, args.min_sessions, args.sessions, 10).await?;
            eprintln!(
                "using {} sessions in {} directories, {} messages",
                data.sessions.len(),
                data.directories.len(),
                data.messages.len()
            );
            data
        } else {
            Dataset::default()
        };
        let data = Arc::new(data);
        if self.name == "ramp" {
            return self.ramp(args, target, target_url, target_pid, data).await;
        }
        if self.name == "fanout" {
            return self.fanout(args, target, target_url, target_pid).await;
        }
        if self.name == "webhooks" {
            let spec = webhooks::WebhookSpec {
                target: target.clone(),
                endpoints: vec![1, 10, 100],
                rate: args.rate,
                duration: args.duration.unwrap_or(self.duration),
                timeout: args.timeout,
            };
            let started_at_ms = crate::domain::wall_clock_ms();
            let started = Instant::now();
            let report = webhooks::run(&spec).await?;
            let mut result = base_result(self.name, target_url, self.model, started_at_ms);
            result.duration_s = started.elapsed().as_secs_f64();
            result.webhooks = Some(report);
            return Ok(result);
        }
        let model = match (args.rate, args.connections) {
            (Some(rate), connections) => Model::Open {
                rate,
                connections: connections.unwrap_or_else(|| open_connections(rate)),
            },
            (None, Some(connections)) => Model::Closed { connections },
            (None, None) => self.model,
        };
        let duration = args.duration.unwrap_or(self.duration);
        let spec = RunSpec {
            target: target.clone(),
            model,
            duration,
            mix: self.mix.clone(),
            data,
            timeout: args.timeout,
            label: self.name.to_owned(),
            rss_pid: target_pid,
            rss_every: if self.name == "soak" {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(1)
            },
            seed: args.seed,
        };
        let recorder = Arc::new(Recorder::default());
        let started_at_ms = crate::domain::wall_clock_ms();
        let output = run(&spec, &recorder).await;
        let mut result = base_result(self.name, target_url, model, started_at_ms);
        recorder.finish(
            &mut result,
            output.elapsed,
            matches!(model, Model::Open { .. }),
        );
        result.timeline = output.timeline;
        result.rss = rss_report(target_pid, output.rss_samples);
        Ok(result)
    }

    async fn fanout(
        &self,
        args: &BenchArgs,
        target: &Target,
        target_url: &str,
        target_pid: Option<u32>,
    ) -> anyhow::Result<BenchResult> {
        let rate = args.rate.unwrap_or(match self.model {
            Model::Open { rate, .. } => rate,
            Model::Closed { .. } => 20.0,
        });
        let subscribe = match &args.subscribe_target {
            Some(url) => {
                let mut other = Target::parse(url).context("--subscribe-target")?;
                if let Some(key) = &args.api_key {
                    other = other.with_api_key(key)?;
                }
                wait_until_healthy(&other).await?;
                other
            }
            None => target.clone(),
        };
        let spec = fanout::FanoutSpec {
            target: target.clone(),
            subscribe,
            subscribers: args.subscribers,
            rate,
            duration: args.duration.unwrap_or(self.duration),
            timeout: args.timeout,
            pid: target_pid,
        };
        let publishers = Arc::new(Recorder::default());
        let started_at_ms = crate::domain::wall_clock_ms();
        let output = fanout::run(&spec, &publishers).await?;
        let model = Model::Open {
            rate,
            connections: args.subscribers,
        };
        let mut result = base_result(self.name, target_url, model, started_at_ms);
        publishers.finish(&mut result, output.elapsed, false);
        result.rss = rss_report(target_pid, output.rss_samples);
        result.fanout = Some(output.report);
        Ok(result)
    }

    async fn ramp(
        &self,
        args: &BenchArgs,
        target: &Target,
        target_url: &str,
        target_pid: Option<u32>,
        data: Arc<Dataset>,
    ) -> anyhow::Result<BenchResult> {
        let started_at_ms = crate::domain::wall_clock_ms();
        let slo_ms = args.slo.as_secs_f64() * 1000.0;
        let budget = args.duration.unwrap_or(self.duration);
        let started = Instant::now();
        let mut rate = args.ramp_start.max(1.0);
        let mut steps = Vec::new();
        let mut timeline = Vec::new();
        let mut rss_samples = Vec::new();
        let overall = Arc::new(Recorder::default());
        let mut last_model = Model::Open {
            rate,
            connections: 1,
        };
        while started.elapsed() + args.ramp_step <= budget + Duration::from_millis(500) {
            let model = Model::Open {
                rate,
                connections: args.connections.unwrap_or_else(|| open_connections(rate)),
            };
            last_model = model;
            let spec = RunSpec {
                target: target.clone(),
                model,
                duration: args.ramp_step,
                mix: self.mix.clone(),
                data: data.clone(),
                timeout: args.timeout,
                label: format!("ramp {rate:.0}/s"),
                rss_pid: target_pid,
                rss_every: Duration::from_secs(1),
                seed: args.seed.wrapping_add(steps.len() as u64),
            };
            let recorder = Arc::new(Recorder::default());
            let offset = started.elapsed().as_secs_f64();
            let output = run(&spec, &recorder).await;
            let mut step_result = BenchResult::default();
            recorder.finish(&mut step_result, output.elapsed, true);
            overall.absorb(&recorder);
            timeline.extend(output.timeline.into_iter().map(|mut p| {
                p.t += offset;
                p
            }));
            rss_samples.extend(
                output
                    .rss_samples
                    .into_iter()
                    .map(|(t, memory)| (t + offset, memory)),
            );
            // Keeping up matters as much as latency: an overloaded open-model run that falls
            // behind schedule shows it as latency, but only if requests complete at all.
            let passed = step_result.errors.total == 0
                && step_result.latency_ms.p99 < slo_ms
                && step_result.throughput >= rate * 0.9;
            steps.push(RampStep {
                rate,
                throughput: step_result.throughput,
                p50: step_result.latency_ms.p50,
                p99: step_result.latency_ms.p99,
                errors: step_result.errors.total,
                passed,
            });
            if !passed {
                break;
            }
            rate *= args.ramp_factor.max(1.01);
        }
        let knee_rps = steps.iter().take_while(|s| s.passed).last().map(|s| s.rate);
        let mut result = base_result("ramp", target_url, last_model, started_at_ms);
        overall.finish(&mut result, started.elapsed(), true);
        result.timeline = timeline;
        result.rss = rss_report(target_pid, rss_samples);
        result.ramp = Some(RampReport {
            slo_p99_ms: slo_ms,
            steps,
            knee_rps,
        });
        Ok(result)
    }
}

/// Connections to carry an open-model rate: the most requests that can be in flight at once
/// before due requests start to queue in the generator (at 100 ms per response, 10 per
/// connection per second).
fn open_connections(rate: f64) -> usize {
    ((rate / 10.0).ceil() as usize).clamp(16, 1024)
}

/// A sessiond started by the bench itself on a local data dir.
struct LocalServer {
    child: Child,
    url: String,
}

impl LocalServer {
    async fn start(
        dir: &std::path::Path,
        sessions: usize,
        messages: usize,
    ) -> anyhow::Result<LocalServer> {
        let database = dir.join(crate::storage::sqlite::DATABASE_FILE);
        let exe = std::env::current_exe().context("locating the sessiond binary")?;
        if !database.exists() {
            eprintln!(
                "seeding {} with {sessions} sessions × {messages} messages …",
                dir.display()
            );
            let status = Command::new(&exe)
                .arg("seed")
                .arg("--data-dir")
                .arg(dir)
                .args(["--sessions", &sessions.to_string()])
                .args(["--messages-per-session", &messages.to_string()])
                .stdin(Stdio::null())
                .status()
                .context("running sessiond seed")?;
            if !status.success() {
                bail!("sessiond seed failed ({status})");
            }
        }
        let mut child = Command::new(&exe)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "warn",
                // The webhooks scenario's receiver is on loopback.
                "--webhook-allowed-networks",
                "127.0.0.0/8",
                "--data-dir",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a local sessiond")?;
        let stdout = child
            .stdout
            .take()
            .context("capturing the server's stdout")?;
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        })
        .await
        .context("waiting for the local server")?
        .context("reading the local server's address")?;
        let url = line
            .trim()
            .strip_prefix("sessiond listening on ")
            .with_context(|| format!("the local server did not start: {line:?}"))?
            .to_owned();
        eprintln!("started a local sessiond (pid {}) at {url}", child.id());
        Ok(LocalServer { child, url })
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
