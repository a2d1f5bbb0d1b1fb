//! The command line: `sessiond serve`, `seed`, `bench`, `keys`, `migrate-data`, `export` and
//! `import`; the commands that move data only parse their arguments here and call
//! [`crate::transfer`].

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::config::{Config, Database, ServeArgs};
use crate::storage::Storage;
use crate::storage::sqlite::{SqliteOptions, SqliteStorage};
use crate::telemetry;
use crate::transfer::seed::{SeedOptions, seed};

#[derive(Parser, Debug)]
#[command(
    name = "sessiond",
    version,
    about = "Stores, searches and streams AI-agent and chat sessions."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP API server.
    Serve(Box<ServeArgs>),
    /// Fill a data dir with realistic generated sessions and messages.
    Seed(SeedArgs),
    /// Load-test a server that speaks the sessiond API.
    Bench(Box<crate::bench::BenchArgs>),
    /// Manage API keys (works while a server runs on the data dir).
    Keys(KeysArgs),
    /// Copy a whole database (sessions, messages, keys) between backends and verify the counts.
    MigrateData(MigrateArgs),
    /// Write every session and its messages as JSON Lines (stdout by default).
    Export(ExportArgs),
    /// Import sessions: from `sessiond export` output, or from an opencode installation.
    /// Exit status: 0 when everything was taken, 2 when some records were refused (listed in
    /// the report), 1 when the import could not run.
    Import(ImportArgs),
}

/// Which database a command works on.
#[derive(Args, Debug)]
pub struct DatabaseArgs {
    /// Data dir of the database [env: SESSIOND_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<std::path::PathBuf>,
    /// `sqlite` (the data dir's database) or a `postgres://` URL
    #[arg(
        long,
        value_name = "URL",
        global = true,
        env = "SESSIOND_DATABASE",
        default_value = "sqlite"
    )]
    pub database: String,
}

impl DatabaseArgs {
    fn data_dir(&self) -> std::path::PathBuf {
        self.data_dir
            .clone()
            .or_else(|| std::env::var_os("SESSIOND_DATA_DIR").map(Into::into))
            .unwrap_or_else(|| "./data".into())
    }

    /// Opens the database for `workload`; a SQLite data dir a running server holds is refused.
    async fn open_for(&self, workload: Workload) -> anyhow::Result<Arc<dyn Storage>> {
        let database =
            Database::parse(&self.database).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
        let data_dir = self.data_dir();
        open_database_for(&data_dir, &database, workload)
            .await
            .map_err(|error| {
                if matches!(database, Database::Sqlite) && format!("{error:#}").contains("in use") {
                    anyhow::anyhow!(
                        "{error:#}: a running server holds it; stop the server first (or use \
                     PostgreSQL, where imports run beside live servers)"
                    )
                } else {
                    error
                }
            })
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Write to this file instead of standard output
    #[arg(long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Sessions, and messages, read per database call: memory holds one page of each
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: u32,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub source: ImportSource,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Subcommand, Debug)]
pub enum ImportSource {
    /// A file written by `sessiond export` (`-` for standard input); ids and times are kept,
    /// records already there are skipped.
    Jsonl {
        /// The JSON Lines file
        file: std::path::PathBuf,
    },
    /// An opencode / IronCode installation: its storage directory (JSON files, releases
    /// before 1.2) or its opencode.db (1.2 and later). Running it again imports only what is
    /// new.
    Opencode {
        /// The storage directory or the opencode.db file
        path: std::path::PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The database to copy: `sqlite:DATA_DIR` or a `postgres://` URL (no server may be
    /// writing to it)
    #[arg(long, value_name = "DATABASE")]
    pub from: String,
    /// The empty database to fill: `sqlite:DATA_DIR` or a `postgres://` URL
    #[arg(long, value_name = "DATABASE")]
    pub to: String,
}

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; prints its secret (once) on stdout, the details on stderr.
    Create {
        /// read, write or admin (a list counts as its highest: write includes read)
        #[arg(long, value_name = "SCOPES")]
        scope: String,
        /// A label for people
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30d, 12h (default: no expiry)
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id (a running server notices within a minute; revoking through
    /// `DELETE /v1/admin/keys/{id}` takes effect at once on that server).
    Revoke {
        /// The key id (`key_…`)
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct SeedArgs {
    /// Data dir to fill (created when missing) [env: SESSIOND_DATA_DIR]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// `sqlite` (the data dir's database) or a `postgres://` URL
    #[arg(
        long,
        value_name = "URL",
        env = "SESSIOND_DATABASE",
        default_value = "sqlite"
    )]
    pub database: String,
    /// Sessions to create
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Messages in each session
    #[arg(long, default_value_t = 10)]
    pub messages_per_session: usize,
    /// Distinct session directories
    #[arg(long, default_value_t = 50)]
    pub directories: usize,
    /// Random seed: the same seed makes the same data
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Parses the command line and runs the command; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The load generator sizes its own runtime (`--threads`).
        Command::Bench(args) => crate::bench::main(*args),
        Command::Serve(args) => with_runtime(serve(*args)),
        Command::Seed(args) => with_runtime(seed_command(args)),
        Command::Keys(args) => keys_command(args),
        Command::MigrateData(args) => with_runtime(migrate_command(args)),
        Command::Export(args) => with_runtime(export_command(args)),
        Command::Import(args) => with_runtime(import_command(args)),
    }
}

async fn export_command(args: ExportArgs) -> ExitCode {
    use std::io::IsTerminal;
    telemetry::init("warn", crate::config::LogFormat::Pretty);
    let run = async {
        let storage = args.database.open_for(Workload::Streaming).await?;
        // A bar drawn between lines of the export on the same terminal would garble both.
        let progress = if args.output.is_none() && std::io::stdout().is_terminal() {
            crate::transfer::Progress::hidden()
        } else {
            crate::transfer::Progress::new(None)
        };
        let show = |report: &crate::transfer::export::ExportReport| {
            progress.written(report.sessions, report.messages, "");
        };
        let result = match &args.output {
            Some(path) => {
                crate::transfer::export::export_to_file(storage.clone(), path, args.page_size, show)
                    .await
            }
            None => {
                crate::transfer::export::export(
                    storage.clone(),
                    std::io::stdout().lock(),
                    args.page_size,
                    show,
                )
                .await
            }
        };
        progress.done();
        storage.close().await;
        result
    };
    match run.await {
        Ok(report) => {
            eprintln!(
                "exported {} sessions and {} messages in {:.1}s",
                report.sessions,
                report.messages,
                report.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sessiond export: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn import_command(args: ImportArgs) -> ExitCode {
    telemetry::init("warn", crate::config::LogFormat::Pretty);
    let run = async {
        let storage = args.database.open_for(Workload::Import).await?;
        let result = match &args.source {
            ImportSource::Jsonl { file } => {
                if file.as_os_str() == "-" {
                    let input = std::io::stdin().lock();
                    Ok(crate::transfer::jsonl::import(storage.clone(), input).await)
                } else {
                    match std::fs::File::open(file) {
                        Ok(f) => {
                            let input = std::io::BufReader::with_capacity(1 << 16, f);
                            Ok(crate::transfer::jsonl::import(storage.clone(), input).await)
                        }
                        Err(e) => Err(anyhow::anyhow!("opening {}: {e}", file.display())),
                    }
                }
            }
            ImportSource::Opencode { path } => {
                crate::transfer::opencode::import(storage.clone(), path).await
            }
        };
        // Closing waits for this process's search index (SQLite) to take in what was
        // imported: part of what the import costs, so it is reported, not hidden behind the
        // import's own rate. (A rebuild that was under way is left to the next start.)
        let indexed = storage
            .search_status()
            .is_some_and(|status| !status.building);
        let closing = std::time::Instant::now();
        storage.close().await;
        result.map(|report| (report, indexed.then(|| closing.elapsed())))
    };
    match run.await {
        Ok((report, closing)) => {
            println!("{report}");
            if let Some(closing) = closing {
                let total = report.elapsed + closing;
                println!(
                    "search index caught up {:.1}s later: {:.1}s in all ({:.0} messages/s)",
                    closing.as_secs_f64(),
                    total.as_secs_f64(),
                    report.messages.read as f64 / total.as_secs_f64().max(1e-9)
                );
            }
            if report.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(error) => {
            eprintln!("sessiond import: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sqlite:PATH` (a data dir, or the `sessiond.db` in one; it must hold a database when
/// `existing`) or a `postgres://` URL, as the data dir and database [`open_database`] takes.
fn location(raw: &str, existing: bool) -> anyhow::Result<(std::path::PathBuf, Database)> {
    if let Some(path) = raw.strip_prefix("sqlite:") {
        let path = std::path::PathBuf::from(path);
        let dir = if path
            .file_name()
            .is_some_and(|name| name == crate::storage::sqlite::DATABASE_FILE)
        {
            path.parent().map(Into::into).unwrap_or_default()
        } else {
            path
        };
        if existing && !dir.join(crate::storage::sqlite::DATABASE_FILE).exists() {
            anyhow::bail!("no sessiond database in {}", dir.display());
        }
        return Ok((dir, Database::Sqlite));
    }
    let database = Database::parse(raw).map_err(|e| anyhow::anyhow!("{e} (or sqlite:PATH)"))?;
    Ok((std::path::PathBuf::from("."), database))
}

async fn migrate_command(args: MigrateArgs) -> ExitCode {
    telemetry::init("warn", crate::config::LogFormat::Pretty);
    let run = async {
        let (from_dir, from) = location(&args.from, true).context("--from")?;
        // A new SQLite target is created by opening it.
        let (to_dir, to) = location(&args.to, false).context("--to")?;
        let source = open_database(&from_dir, &from)
            .await
            .context("opening --from")?;
        let target = open_database(&to_dir, &to).await.context("opening --to")?;
        let progress = crate::transfer::Progress::new(None);
        let result =
            crate::transfer::migrate::migrate_data(source.clone(), target.clone(), |done| {
                progress.set(done, "copied");
            })
            .await;
        progress.done();
        source.close().await;
        target.close().await;
        result
    };
    match run.await {
        Ok(report) => {
            println!(
                "copied {} sessions, {} messages and {} keys in {:.1}s; counts verified",
                report.counts.sessions,
                report.counts.messages,
                report.counts.keys,
                report.elapsed.as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sessiond migrate-data: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn keys_command(args: KeysArgs) -> ExitCode {
    use crate::domain::keys::{ApiKey, NewKey, Scope, Secret};
    use crate::storage::sqlite::keys;
    let data_dir = args.database.data_dir();
    enum Op {
        Create(NewKey, Secret),
        List,
        Revoke(String),
    }
    enum Done {
        Created(ApiKey),
        Listed(Vec<ApiKey>),
        Revoked(ApiKey),
    }
    let run = || -> anyhow::Result<()> {
        let database = Database::parse(&args.database.database)
            .map_err(|e| anyhow::anyhow!("--database: {e}"))?;
        let op = match args.command {
            KeysCommand::Create {
                scope,
                name,
                expires,
            } => {
                let scope =
                    Scope::parse_list(&scope).map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
                let expires_at = match expires {
                    None => None,
                    Some(raw) => {
                        let lifetime = crate::config::parse_duration(&raw)
                            .map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
                        Some(crate::domain::wall_clock_ms() + lifetime.as_millis() as i64)
                    }
                };
                let secret = Secret::generate()
                    .map_err(|e| anyhow::anyhow!("the system random generator failed: {e}"))?;
                let new = NewKey {
                    name: name.unwrap_or_else(|| "unnamed".to_owned()),
                    scope,
                    expires_at,
                };
                Op::Create(new, secret)
            }
            KeysCommand::List => Op::List,
            KeysCommand::Revoke { id } => Op::Revoke(id),
        };
        let (done, secret) = match database {
            Database::Sqlite => {
                // Create or upgrade the database when no server holds it; otherwise the running
                // server already has (and `side_connection` says so if it has not).
                if let Ok(storage) = SqliteStorage::open(SqliteOptions::new(&data_dir)) {
                    drop(storage);
                }
                let conn = keys::side_connection(&data_dir)?;
                match op {
                    Op::Create(new, secret) => (
                        Done::Created(keys::create(&conn, &new, &secret.hash(), &secret.hint())?),
                        Some(secret),
                    ),
                    Op::List => (Done::Listed(keys::list(&conn)?), None),
                    Op::Revoke(id) => (Done::Revoked(keys::revoke(&conn, &id)?), None),
                }
            }
            Database::Postgres(_) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    // Revocations are announced to every running instance, which forget the
                    // key at once.
                    let storage = open_database(&data_dir, &database).await?;
                    let done = match op {
                        Op::Create(new, secret) => {
                            let (hash, hint) = (secret.hash(), secret.hint());
                            (
                                Done::Created(storage.create_key(new, hash, hint).await?),
                                Some(secret),
                            )
                        }
                        Op::List => (Done::Listed(storage.list_keys().await?), None),
                        Op::Revoke(id) => (Done::Revoked(storage.revoke_key(&id).await?), None),
                    };
                    storage.close().await;
                    anyhow::Ok(done)
                })?
            }
        };
        match done {
            Done::Created(key) => {
                eprintln!(
                    "created {} ({}, scope {}{}) — the secret below is shown only now:",
                    key.id,
                    key.name,
                    key.scope,
                    key.expires_at
                        .map(|at| format!(", expires at {at} ms"))
                        .unwrap_or_default()
                );
                if let Some(secret) = secret {
                    println!("{}", secret.expose());
                }
            }
            Done::Listed(list) => {
                let now = crate::domain::wall_clock_ms();
                for key in list {
                    let state = key.unusable(now).unwrap_or_else(|| "active".to_owned());
                    println!(
                        "{}\t{}\t{}\t{}…\t{}",
                        key.id, key.scope, key.name, key.hint, state
                    );
                }
            }
            Done::Revoked(key) => eprintln!("revoked {} ({})", key.id, key.name),
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sessiond keys: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a command does with the database, which decides how it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Reads here and there, again and again (`migrate-data`, `seed`): SQLite's read
    /// connections map the database file, as the server's do.
    Random,
    /// Reads once, from end to end (`export`): no map (see [`SqliteOptions::read_mmap_bytes`]).
    Streaming,
    /// Writes in bulk and ends only when the search index holds what it wrote (the imports):
    /// as `Random`, and the search index is set for bulk writes (see
    /// [`SqliteOptions::search_index_bulk`]).
    Import,
}

/// Opens `database` (`sqlite`: the database in `data_dir`; or a `postgres://` URL) for a
/// command, creating and migrating it when needed.
pub async fn open_database(
    data_dir: &std::path::Path,
    database: &Database,
) -> anyhow::Result<Arc<dyn Storage>> {
    open_database_for(data_dir, database, Workload::Random).await
}

/// [`open_database`], for a command whose work is `workload`.
pub async fn open_database_for(
    data_dir: &std::path::Path,
    database: &Database,
    workload: Workload,
) -> anyhow::Result<Arc<dyn Storage>> {
    use crate::storage::postgres::{PgOptions, PgStorage};
    match database {
        Database::Sqlite => {
            let mut options = SqliteOptions::new(data_dir);
            match workload {
                Workload::Random => {}
                Workload::Streaming => options.read_mmap_bytes = 0,
                Workload::Import => options.search_index_bulk = true,
            }
            let storage = tokio::task::spawn_blocking(move || SqliteStorage::open(options))
                .await
                .map_err(|e| anyhow::anyhow!("opening the database: {e}"))??;
            Ok(Arc::new(storage))
        }
        Database::Postgres(url) => Ok(Arc::new(
            PgStorage::open(PgOptions::new(url.clone())).await?,
        )),
    }
}

fn with_runtime(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sessiond-worker")
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(error) => {
            eprintln!("sessiond: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::resolve(&args, &|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sessiond: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log_level, config.log_format);
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cannot start");
            eprintln!("sessiond: cannot start: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if app.auth_required()
        && let Ok(keys) = app.storage().list_keys().await
        && !keys
            .iter()
            .any(|k| k.unusable(crate::domain::wall_clock_ms()).is_none())
    {
        eprintln!(
            "sessiond: authentication is required (auth = required) but no usable API key exists; \
             create one with:\n  sessiond keys create --scope admin --name ops --data-dir {}",
            app.data_dir().display()
        );
    }
    // Before saying it listens: from then on a SIGTERM must find its handler.
    let shutdown = shutdown_signal();
    match app.local_addr() {
        Ok(addr) => {
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "sessiond listening on http://{addr}");
            let _ = stdout.flush();
        }
        Err(error) => {
            eprintln!("sessiond: {error:#}");
            return ExitCode::FAILURE;
        }
    }
    let code = match app.run_until(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sessiond: {error:#}");
            ExitCode::FAILURE
        }
    };
    telemetry::log_writer::flush(std::time::Duration::from_secs(2));
    code
}

async fn seed_command(args: SeedArgs) -> ExitCode {
    telemetry::init("warn", crate::config::LogFormat::Pretty);
    let data_dir = args
        .data_dir
        .or_else(|| std::env::var_os("SESSIOND_DATA_DIR").map(Into::into))
        .unwrap_or_else(|| "./data".into());
    let opened = match Database::parse(&args.database) {
        Ok(database) => open_database(&data_dir, &database).await,
        Err(error) => Err(anyhow::anyhow!("--database: {error}")),
    };
    let storage = match opened {
        Ok(storage) => storage,
        Err(error) => {
            eprintln!("sessiond seed: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let options = SeedOptions {
        sessions: args.sessions,
        messages_per_session: args.messages_per_session,
        directories: args.directories,
        seed: args.seed,
        ..SeedOptions::default()
    };
    let total = options.sessions;
    let progress = crate::transfer::Progress::new(Some(total as u64));
    let result = seed(storage.clone(), &options, |done| {
        progress.set(done as u64, "written");
    })
    .await;
    progress.done();
    storage.close().await;
    match result {
        Ok(report) => {
            let secs = report.elapsed.as_secs_f64();
            println!(
                "seeded {} sessions and {} messages into {} in {:.1}s ({:.0} messages/s)",
                report.sessions,
                report.messages,
                data_dir.display(),
                secs,
                report.messages as f64 / secs.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("sessiond seed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
