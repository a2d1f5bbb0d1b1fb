//! Configuration: every setting comes from a flag, else an environment variable, else the TOML
//! file given by `--config`, else its default. A bad value stops the server with a message that
//! names the setting and where the value came from.

use std::net::SocketAddr;

use axum::http::HeaderValue;
use tower_http::compression::CompressionLevel;

use crate::http::CorsOrigins;
use crate::http::auth::{AuthMode, Cidr};
use crate::http::origin::HostPolicy;
use crate::ratelimit::Policy;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags of `sessiond serve`. Every one also has an environment variable and a key in the
/// configuration file (the flag name without `--`, with `_` for `-`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML configuration file [env: SESSIOND_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [env: SESSIOND_LISTEN] [default: 127.0.0.1:4096]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Directory holding the database [env: SESSIOND_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// `sqlite` (the embedded database in the data dir) or a `postgres://` URL [env: SESSIOND_DATABASE] [default: sqlite]
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// PostgreSQL connections per instance for reads and side writes [env: SESSIOND_DATABASE_POOL] [default: 16]
    #[arg(long, value_name = "N")]
    pub database_pool: Option<String>,
    /// Redis URL for rate limits shared by every instance, e.g. redis://127.0.0.1:6379 [env: SESSIOND_REDIS] [default: none]
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Log filter, e.g. `info` or `warn,sessiond=debug` [env: SESSIOND_LOG_LEVEL] [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// `pretty` or `json` [env: SESSIOND_LOG_FORMAT] [default: pretty]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Share of requests that get an access-log line, 0 < share <= 1 (server errors are always logged) [env: SESSIOND_ACCESS_LOG_SAMPLE] [default: 1]
    #[arg(long, value_name = "SHARE")]
    pub access_log_sample: Option<String>,
    /// Read-only database connections, at most; each opens when concurrent reads first need it [env: SESSIOND_READ_CONNECTIONS] [default: 2 × CPUs, at least 8]
    #[arg(long, value_name = "N")]
    pub read_connections: Option<String>,
    /// Writes that may queue for the writer before callers wait [env: SESSIOND_WRITER_QUEUE] [default: 4096]
    #[arg(long, value_name = "N")]
    pub writer_queue: Option<String>,
    /// Most writes committed in one transaction [env: SESSIOND_WRITE_BATCH] [default: 512]
    #[arg(long, value_name = "N")]
    pub write_batch: Option<String>,
    /// Summaries computed at once [env: SESSIOND_SUMMARIZE_WORKERS] [default: CPUs / 2, at least 1]
    #[arg(long, value_name = "N")]
    pub summarize_workers: Option<String>,
    /// Summaries that may wait for a worker before more are refused with 503 [env: SESSIOND_SUMMARIZE_QUEUE] [default: 64]
    #[arg(long, value_name = "N")]
    pub summarize_queue: Option<String>,
    /// Most session text one summary reads [env: SESSIOND_SUMMARIZE_MAX_BYTES] [default: 4MiB]
    #[arg(long, value_name = "SIZE")]
    pub summarize_max_bytes: Option<String>,
    /// Searches run at once [env: SESSIOND_SEARCH_CONCURRENCY] [default: 8 × CPUs, at most 64]
    #[arg(long, value_name = "N")]
    pub search_concurrency: Option<String>,
    /// Searches that may wait before more are refused with 503 [env: SESSIOND_SEARCH_QUEUE] [default: 256]
    #[arg(long, value_name = "N")]
    pub search_queue: Option<String>,
    /// Accepted for older configurations; no effect (the search index prunes) [env: SESSIOND_SEARCH_WINDOW] [default: 0]
    #[arg(long, value_name = "N")]
    pub search_window: Option<String>,
    /// A search index rebuilt over at most this many messages is built before serving; a bigger one in the background [env: SESSIOND_SEARCH_INDEX_FOREGROUND] [default: 20000]
    #[arg(long, value_name = "N")]
    pub search_index_foreground: Option<String>,
    /// PostgreSQL: where this instance keeps its own search index (one per instance) [env: SESSIOND_SEARCH_INDEX_DIR] [default: DATA_DIR/search]
    #[arg(long, value_name = "DIR")]
    pub search_index_dir: Option<String>,
    /// Events are kept this long for resuming streams [env: SESSIOND_EVENT_RETENTION] [default: 24h]
    #[arg(long, value_name = "DURATION")]
    pub event_retention: Option<String>,
    /// At most this many events are kept [env: SESSIOND_EVENT_RETENTION_COUNT] [default: 1000000]
    #[arg(long, value_name = "N")]
    pub event_retention_count: Option<String>,
    /// How often old events are pruned [env: SESSIOND_EVENT_PRUNE_INTERVAL] [default: 1m]
    #[arg(long, value_name = "DURATION")]
    pub event_prune_interval: Option<String>,
    /// Bytes an event-stream client may have queued before it is dropped as lagged [env: SESSIOND_EVENT_CLIENT_BUFFER] [default: 1MiB]
    #[arg(long, value_name = "SIZE")]
    pub event_client_buffer: Option<String>,
    /// Silence after which SSE streams get a keep-alive comment [env: SESSIOND_EVENT_KEEPALIVE] [default: 15s]
    #[arg(long, value_name = "DURATION")]
    pub event_keepalive: Option<String>,
    /// Time a lagged event-stream client gets to read its `lagged` notice before its connection is dropped [env: SESSIOND_EVENT_LAG_GRACE] [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub event_lag_grace: Option<String>,
    /// How often WebSocket clients are pinged [env: SESSIOND_WS_PING_INTERVAL] [default: 15s]
    #[arg(long, value_name = "DURATION")]
    pub ws_ping_interval: Option<String>,
    /// Time a request may take to produce its response head; then 503 `timeout` [env: SESSIOND_REQUEST_TIMEOUT] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Requests in progress beyond which new ones get 503 `overloaded` at once [env: SESSIOND_MAX_CONCURRENCY] [default: 512]
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<String>,
    /// Open connections beyond which new ones get 503 and are closed [env: SESSIOND_MAX_CONNECTIONS] [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Largest request head (request line and headers); beyond it 431 [env: SESSIOND_MAX_HEADER_BYTES] [default: 64KiB]
    #[arg(long, value_name = "SIZE")]
    pub max_header_bytes: Option<String>,
    /// Memory for cached responses of hot reads; 0 disables the cache [env: SESSIOND_CACHE_SIZE] [default: 64MiB]
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Compression level: fastest, default, best or a number (as each algorithm reads it) [env: SESSIOND_COMPRESSION_LEVEL] [default: 1]
    #[arg(long, value_name = "LEVEL")]
    pub compression_level: Option<String>,
    /// Smallest response body that is compressed [env: SESSIOND_COMPRESSION_MIN_SIZE] [default: 1KiB]
    #[arg(long, value_name = "SIZE")]
    pub compression_min_size: Option<String>,
    /// Browser origins allowed by CORS: `localhost` (any port), `*`, or a comma-separated list [env: SESSIOND_CORS_ORIGINS] [default: localhost]
    #[arg(long, value_name = "ORIGINS")]
    pub cors_origins: Option<String>,
    /// Serve CPU and heap profiles at /v1/admin/profile/{cpu,heap} to local clients (needs a build with --features profiling) [env: SESSIOND_PROFILING] [default: false]
    #[arg(long, value_name = "BOOL")]
    pub profiling: Option<String>,
    /// Host names answered besides localhost, 127.0.0.1 and [::1] while auth is off (a guard against DNS rebinding): comma-separated names, `.example.com` for a domain and its subdomains, or `*` [env: SESSIOND_ALLOWED_HOSTS] [default: none]
    #[arg(long, value_name = "HOSTS")]
    pub allowed_hosts: Option<String>,
    /// `required` (callers need an API key) or `off` [env: SESSIOND_AUTH] [default: off on a loopback address, required otherwise]
    #[arg(long, value_name = "MODE")]
    pub auth: Option<String>,
    /// `on` or `off` [env: SESSIOND_RATE_LIMIT] [default: off on a loopback address, on otherwise]
    #[arg(long, value_name = "ON|OFF")]
    pub rate_limit: Option<String>,
    /// Budget of writes and other requests per caller, RATE/UNIT,BURST [env: SESSIOND_RATE_LIMIT_DEFAULT] [default: 50/s,100]
    #[arg(long, value_name = "POLICY")]
    pub rate_limit_default: Option<String>,
    /// Budget of reads (GETs, streams) per caller [env: SESSIOND_RATE_LIMIT_READ] [default: 200/s,400]
    #[arg(long, value_name = "POLICY")]
    pub rate_limit_read: Option<String>,
    /// Budget of searches and summaries per caller [env: SESSIOND_RATE_LIMIT_EXPENSIVE] [default: 5/s,10]
    #[arg(long, value_name = "POLICY")]
    pub rate_limit_expensive: Option<String>,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose X-Forwarded-For names the client [env: SESSIOND_TRUSTED_PROXIES] [default: none]
    #[arg(long, value_name = "CIDRS")]
    pub trusted_proxies: Option<String>,
    /// Largest request body [env: SESSIOND_BODY_LIMIT] [default: 10MiB]
    #[arg(long, value_name = "SIZE")]
    pub body_limit: Option<String>,
    /// Time a client has to send its request headers [env: SESSIOND_HEADER_READ_TIMEOUT] [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// Time in-flight requests get to finish at shutdown [env: SESSIOND_SHUTDOWN_TIMEOUT] [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Internal networks (CIDR blocks, comma-separated) webhooks may reach anyway, e.g. `127.0.0.0/8` for a local receiver [env: SESSIOND_WEBHOOK_ALLOWED_NETWORKS] [default: none]
    #[arg(long, value_name = "CIDRS")]
    pub webhook_allowed_networks: Option<String>,
    /// Waits between webhook delivery attempts, each with ±20% jitter; after the last, the delivery is `failed` [env: SESSIOND_WEBHOOK_RETRY_SCHEDULE] [default: 5s,5m,30m,2h,5h,10h,10h]
    #[arg(long, value_name = "D,D,...")]
    pub webhook_retry_schedule: Option<String>,
    /// Time one webhook attempt may take (connect, send, answer) [env: SESSIOND_WEBHOOK_TIMEOUT] [default: 15s]
    #[arg(long, value_name = "DURATION")]
    pub webhook_timeout: Option<String>,
    /// Delivered webhook deliveries are kept this long [env: SESSIOND_WEBHOOK_RETENTION] [default: 7d]
    #[arg(long, value_name = "DURATION")]
    pub webhook_retention: Option<String>,
    /// Webhook attempts in flight per endpoint (ordered endpoints: always 1) [env: SESSIOND_WEBHOOK_CONCURRENCY] [default: 8]
    #[arg(long, value_name = "N")]
    pub webhook_concurrency: Option<String>,
    /// How often the webhook outbox is polled when no commit woke the delivery loop [env: SESSIOND_WEBHOOK_POLL_INTERVAL] [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub webhook_poll_interval: Option<String>,
    /// Most webhook endpoints that may be registered [env: SESSIOND_WEBHOOK_MAX_ENDPOINTS] [default: 100]
    #[arg(long, value_name = "N")]
    pub webhook_max_endpoints: Option<String>,
}

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// The embedded SQLite database in the data dir.
    Sqlite,
    /// A PostgreSQL server (a `postgres://` URL).
    Postgres(String),
}

impl Database {
    pub fn parse(raw: &str) -> Result<Database, String> {
        if raw == "sqlite" {
            return Ok(Database::Sqlite);
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            raw.parse::<tokio_postgres::Config>()
                .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
            return Ok(Database::Postgres(raw.to_owned()));
        }
        Err("expected sqlite or a postgres:// URL".to_owned())
    }
}

/// A URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

// Never print the password of a URL.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Sqlite => f.write_str("Sqlite"),
            Database::Postgres(url) => {
                write!(f, "Postgres({})", redact_url(url))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The resolved configuration of a server.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database: Database,
    pub database_pool: usize,
    pub redis: Option<String>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub access_log_sample: f64,
    pub read_connections: usize,
    pub writer_queue: usize,
    pub write_batch: usize,
    pub summarize_workers: usize,
    pub summarize_queue: usize,
    pub summarize_max_bytes: usize,
    pub search_concurrency: usize,
    pub search_queue: usize,
    pub search_window: u32,
    pub search_index_foreground: u64,
    /// PostgreSQL: this instance's search index dir (`None`: `search/` in the data dir).
    pub search_index_dir: Option<PathBuf>,
    pub event_retention: Duration,
    pub event_retention_count: u64,
    pub event_prune_interval: Duration,
    pub event_client_buffer: usize,
    pub event_keepalive: Duration,
    pub event_lag_grace: Duration,
    pub ws_ping_interval: Duration,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub cache_size: u64,
    pub compression_level: CompressionLevel,
    pub compression_min_size: u16,
    pub cors_origins: CorsOrigins,
    pub allowed_hosts: HostPolicy,
    pub profiling: bool,
    pub auth: AuthMode,
    pub rate_limit: bool,
    pub rate_limits: [Policy; 3],
    pub trusted_proxies: Vec<Cidr>,
    pub body_limit: usize,
    pub header_read_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub webhooks: crate::webhooks::Settings,
}

impl Config {
    /// Defaults for a server on `data_dir` listening on a free loopback port (tests, benches).
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Config {
        let mut config = Config::resolve(&ServeArgs::default(), &|_| None)
            .unwrap_or_else(|e| unreachable!("the defaults are valid: {e}"));
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.data_dir = data_dir.into();
        config
    }

    /// Resolves flags, then the environment (`env`), then the file, then defaults.
    pub fn resolve(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let config_path = args
            .config
            .clone()
            .or_else(|| env("SESSIOND_CONFIG").map(PathBuf::from));
        let file = match &config_path {
            Some(path) => Some(FileSettings::load(path)?),
            None => None,
        };
        let r = Resolver {
            env,
            file: file.as_ref(),
        };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let listen = r.get("listen", &args.listen, "127.0.0.1:4096", parse_listen)?;
        // Reachable from other machines: protected unless told otherwise.
        let exposed = !listen.ip().is_loopback();
        let config = Config {
            listen,
            data_dir: r.get("data_dir", &args.data_dir, "./data", parse_path)?,
            database: r.get("database", &args.database, "sqlite", Database::parse)?,
            database_pool: r.get("database_pool", &args.database_pool, "16", |v| {
                parse_count(v, 1, 1024)
            })?,
            redis: r.get("redis", &args.redis, "", |v| {
                if v.is_empty() {
                    return Ok(None);
                }
                redis::Client::open(v).map_err(|e| format!("not a valid Redis URL: {e}"))?;
                Ok(Some(v.to_owned()))
            })?,
            log_level: r.get("log_level", &args.log_level, "info", parse_log_level)?,
            log_format: r.get("log_format", &args.log_format, "pretty", parse_log_format)?,
            access_log_sample: r.get(
                "access_log_sample",
                &args.access_log_sample,
                "1",
                |v| match v.parse::<f64>() {
                    Ok(share) if share > 0.0 && share <= 1.0 => Ok(share),
                    _ => Err("expected a share above 0 and at most 1, such as 0.1".to_owned()),
                },
            )?,
            read_connections: r.get(
                "read_connections",
                &args.read_connections,
                &(cpus * 2).max(8).to_string(),
                |v| parse_count(v, 1, 1024),
            )?,
            writer_queue: r.get("writer_queue", &args.writer_queue, "4096", |v| {
                parse_count(v, 1, 1 << 20)
            })?,
            write_batch: r.get("write_batch", &args.write_batch, "512", |v| {
                parse_count(v, 1, 1 << 16)
            })?,
            summarize_workers: r.get(
                "summarize_workers",
                &args.summarize_workers,
                &(cpus / 2).max(1).to_string(),
                |v| parse_count(v, 1, 1024),
            )?,
            summarize_queue: r.get("summarize_queue", &args.summarize_queue, "64", |v| {
                parse_count(v, 0, 1 << 20)
            })?,
            summarize_max_bytes: r.get(
                "summarize_max_bytes",
                &args.summarize_max_bytes,
                "4MiB",
                parse_size,
            )?,
            // Eight per core (at most 64): a search is about a millisecond of CPU, but on a busy
            // server it holds its turn while it waits for a core with every other request, so a
            // small pool queues searches behind each other (the mixed workload's p99 was 0.7-0.8 s
            // with two per core, 0.09-0.1 s with eight; BENCHMARKS.md).
            search_concurrency: r.get(
                "search_concurrency",
                &args.search_concurrency,
                &(8 * cpus).min(64).to_string(),
                |v| parse_count(v, 1, 1024),
            )?,
            search_queue: r.get("search_queue", &args.search_queue, "256", |v| {
                parse_count(v, 0, 1 << 20)
            })?,
            search_window: r.get("search_window", &args.search_window, "0", |v| {
                parse_count(v, 0, u32::MAX as usize).map(|n| n as u32)
            })?,
            search_index_foreground: r.get(
                "search_index_foreground",
                &args.search_index_foreground,
                "20000",
                |v| parse_count(v, 0, usize::MAX).map(|n| n as u64),
            )?,
            search_index_dir: r.get("search_index_dir", &args.search_index_dir, "", |v| {
                Ok((!v.is_empty()).then(|| PathBuf::from(v)))
            })?,
            event_retention: r.get(
                "event_retention",
                &args.event_retention,
                "24h",
                parse_duration,
            )?,
            event_retention_count: r.get(
                "event_retention_count",
                &args.event_retention_count,
                "1000000",
                |v| parse_count(v, 1, usize::MAX).map(|n| n as u64),
            )?,
            event_prune_interval: r.get(
                "event_prune_interval",
                &args.event_prune_interval,
                "1m",
                parse_positive_duration,
            )?,
            event_client_buffer: r.get(
                "event_client_buffer",
                &args.event_client_buffer,
                "1MiB",
                parse_size,
            )?,
            event_keepalive: r.get(
                "event_keepalive",
                &args.event_keepalive,
                "15s",
                parse_positive_duration,
            )?,
            event_lag_grace: r.get(
                "event_lag_grace",
                &args.event_lag_grace,
                "1s",
                parse_positive_duration,
            )?,
            ws_ping_interval: r.get(
                "ws_ping_interval",
                &args.ws_ping_interval,
                "15s",
                parse_positive_duration,
            )?,
            request_timeout: r.get(
                "request_timeout",
                &args.request_timeout,
                "30s",
                parse_positive_duration,
            )?,
            max_concurrency: r.get("max_concurrency", &args.max_concurrency, "512", |v| {
                parse_count(v, 1, 1 << 20)
            })?,
            max_connections: r.get("max_connections", &args.max_connections, "10000", |v| {
                parse_count(v, 1, 1 << 24)
            })?,
            max_header_bytes: r.get("max_header_bytes", &args.max_header_bytes, "64KiB", |v| {
                parse_size(v).and_then(|n| {
                    if n < 8192 {
                        Err("must be at least 8KiB".to_owned())
                    } else {
                        Ok(n)
                    }
                })
            })?,
            cache_size: r.get("cache_size", &args.cache_size, "64MiB", |v| {
                if v == "0" {
                    Ok(0)
                } else {
                    parse_size(v).map(|n| n as u64)
                }
            })?,
            compression_level: r.get(
                "compression_level",
                &args.compression_level,
                "1",
                parse_compression_level,
            )?,
            compression_min_size: r.get(
                "compression_min_size",
                &args.compression_min_size,
                "1KiB",
                |v| {
                    parse_size(v).and_then(|n| {
                        u16::try_from(n).map_err(|_| "must be at most 64KiB - 1".to_owned())
                    })
                },
            )?,
            cors_origins: r.get("cors_origins", &args.cors_origins, "localhost", parse_cors)?,
            allowed_hosts: r.get("allowed_hosts", &args.allowed_hosts, "", HostPolicy::parse)?,
            profiling: r.get("profiling", &args.profiling, "false", parse_profiling)?,
            auth: r.get(
                "auth",
                &args.auth,
                if exposed { "required" } else { "off" },
                |v| match v {
                    "required" => Ok(AuthMode::Required),
                    "off" => Ok(AuthMode::Off),
                    _ => Err("expected required or off".to_owned()),
                },
            )?,
            rate_limit: r.get(
                "rate_limit",
                &args.rate_limit,
                if exposed { "on" } else { "off" },
                |v| match v {
                    "on" => Ok(true),
                    "off" => Ok(false),
                    _ => Err("expected on or off".to_owned()),
                },
            )?,
            rate_limits: [
                r.get(
                    "rate_limit_default",
                    &args.rate_limit_default,
                    "50/s,100",
                    Policy::parse,
                )?,
                r.get(
                    "rate_limit_read",
                    &args.rate_limit_read,
                    "200/s,400",
                    Policy::parse,
                )?,
                r.get(
                    "rate_limit_expensive",
                    &args.rate_limit_expensive,
                    "5/s,10",
                    Policy::parse,
                )?,
            ],
            trusted_proxies: r.get("trusted_proxies", &args.trusted_proxies, "", |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Cidr::parse)
                    .collect()
            })?,
            body_limit: r.get("body_limit", &args.body_limit, "10MiB", parse_size)?,
            header_read_timeout: r.get(
                "header_read_timeout",
                &args.header_read_timeout,
                "10s",
                parse_duration,
            )?,
            shutdown_timeout: r.get(
                "shutdown_timeout",
                &args.shutdown_timeout,
                "10s",
                parse_duration,
            )?,
            webhooks: crate::webhooks::Settings {
                allowed_networks: r.get(
                    "webhook_allowed_networks",
                    &args.webhook_allowed_networks,
                    "",
                    |v| {
                        v.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(Cidr::parse)
                            .collect()
                    },
                )?,
                retry_schedule: r.get(
                    "webhook_retry_schedule",
                    &args.webhook_retry_schedule,
                    crate::webhooks::Schedule::DEFAULT,
                    crate::webhooks::Schedule::parse,
                )?,
                timeout: r.get(
                    "webhook_timeout",
                    &args.webhook_timeout,
                    "15s",
                    parse_duration,
                )?,
                retention: r.get(
                    "webhook_retention",
                    &args.webhook_retention,
                    "7d",
                    parse_duration,
                )?,
                concurrency: r.get("webhook_concurrency", &args.webhook_concurrency, "8", |v| {
                    parse_count(v, 1, 1024).map(|n| n as u32)
                })?,
                poll_interval: r.get(
                    "webhook_poll_interval",
                    &args.webhook_poll_interval,
                    "1s",
                    parse_duration,
                )?,
                max_endpoints: r.get(
                    "webhook_max_endpoints",
                    &args.webhook_max_endpoints,
                    "100",
                    |v| parse_count(v, 1, 1_000_000),
                )?,
            },
        };
        Ok(config)
    }
}

/// A setting with a bad value, or an unreadable configuration file.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting} (from {origin}): {message}")]
pub struct ConfigError {
    pub setting: String,
    pub origin: String,
    pub message: String,
}

/// Every key the configuration file may hold.
const FILE_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database",
    "database_pool",
    "redis",
    "log_level",
    "log_format",
    "access_log_sample",
    "read_connections",
    "writer_queue",
    "write_batch",
    "summarize_workers",
    "summarize_queue",
    "summarize_max_bytes",
    "search_concurrency",
    "search_queue",
    "search_window",
    "search_index_foreground",
    "search_index_dir",
    "event_retention",
    "event_retention_count",
    "event_prune_interval",
    "event_client_buffer",
    "event_keepalive",
    "event_lag_grace",
    "ws_ping_interval",
    "request_timeout",
    "max_concurrency",
    "max_connections",
    "max_header_bytes",
    "cache_size",
    "compression_level",
    "compression_min_size",
    "cors_origins",
    "allowed_hosts",
    "profiling",
    "auth",
    "rate_limit",
    "rate_limit_default",
    "rate_limit_read",
    "rate_limit_expensive",
    "trusted_proxies",
    "body_limit",
    "header_read_timeout",
    "shutdown_timeout",
    "webhook_allowed_networks",
    "webhook_retry_schedule",
    "webhook_timeout",
    "webhook_retention",
    "webhook_concurrency",
    "webhook_poll_interval",
    "webhook_max_endpoints",
];

struct FileSettings {
    path: PathBuf,
    table: toml::Table,
}

impl FileSettings {
    fn load(path: &Path) -> Result<FileSettings, ConfigError> {
        let fail = |message: String| ConfigError {
            setting: "config".to_owned(),
            origin: format!("--config / SESSIOND_CONFIG = {}", path.display()),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read the file: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| fail(format!("not valid TOML: {e}")))?;
        if let Some(unknown) = table.keys().find(|k| !FILE_KEYS.contains(&k.as_str())) {
            return Err(ConfigError {
                setting: unknown.clone(),
                origin: format!("config file {}", path.display()),
                message: format!("unknown setting; known settings: {}", FILE_KEYS.join(", ")),
            });
        }
        Ok(FileSettings {
            path: path.to_owned(),
            table,
        })
    }
}

struct Resolver<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<&'a FileSettings>,
}

impl Resolver<'_> {
    fn get<T>(
        &self,
        key: &str,
        flag: &Option<String>,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let env_name = format!("SESSIOND_{}", key.to_ascii_uppercase());
        let (value, origin) = if let Some(value) = flag {
            (value.clone(), format!("--{}", key.replace('_', "-")))
        } else if let Some(value) = (self.env)(&env_name) {
            (value, env_name)
        } else if let Some((value, file)) = self
            .file
            .and_then(|f| f.table.get(key).map(|v| (v, &f.path)))
        {
            let origin = format!("config file {}", file.display());
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                // A list setting may be written as a TOML array of strings.
                toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => items
                    .iter()
                    .filter_map(toml::Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                other => {
                    return Err(ConfigError {
                        setting: key.to_owned(),
                        origin,
                        message: format!(
                            "expected a string or a number, found {}",
                            other.type_str()
                        ),
                    });
                }
            };
            (text, origin)
        } else {
            (default.to_owned(), "the default".to_owned())
        };
        parse(value.trim()).map_err(|message| {
            // A database URL may carry a password.
            let shown = if key == "database" || key == "redis" {
                redact_url(&value)
            } else {
                value.clone()
            };
            ConfigError {
                setting: key.to_owned(),
                origin,
                message: format!("{message} (got {shown:?})"),
            }
        })
    }
}

fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| "expected an IP address and port such as 127.0.0.1:4096 or [::1]:0".to_owned())
}

fn parse_path(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(PathBuf::from(value))
}

fn parse_log_level(value: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(value)
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log filter: {e}"))
}

fn parse_log_format(value: &str) -> Result<LogFormat, String> {
    match value {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `pretty` or `json`".to_owned()),
    }
}

fn parse_count(value: &str, min: usize, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// Sizes: a number of bytes, optionally with a unit: B, KiB/K/KB, MiB/M/MB, GiB/G/GB (all
/// powers of 1024).
pub fn parse_size(value: &str) -> Result<usize, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| "expected a size such as 10MiB, 512KiB or 1048576".to_owned())?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err("unknown unit; use B, KiB, MiB or GiB".to_owned()),
    };
    number
        .checked_mul(multiplier)
        .filter(|n| *n > 0)
        .ok_or_else(|| "must be above zero and fit in memory".to_owned())
}

/// Durations: a number with `ms`, `s`, `m` or `h` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| "expected a duration such as 500ms, 10s or 2m".to_owned())?;
    let seconds = |factor: u64| {
        number
            .checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(|| "too large".to_owned())
    };
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => Err("unknown unit; use ms, s, m, h or d".to_owned()),
    }
}

fn parse_compression_level(value: &str) -> Result<CompressionLevel, String> {
    match value {
        "fastest" => Ok(CompressionLevel::Fastest),
        "default" => Ok(CompressionLevel::Default),
        "best" => Ok(CompressionLevel::Best),
        number => number
            .parse::<i32>()
            .ok()
            .filter(|n| (1..=22).contains(n))
            .map(CompressionLevel::Precise)
            .ok_or_else(|| "expected fastest, default, best or a number from 1 to 22".to_owned()),
    }
}

fn parse_profiling(value: &str) -> Result<bool, String> {
    match value {
        "false" => Ok(false),
        "true" if cfg!(feature = "profiling") => Ok(true),
        "true" => Err(
            "this binary was built without profiling; build with `cargo build --release \
             --features profiling`"
                .to_owned(),
        ),
        _ => Err("expected true or false".to_owned()),
    }
}

fn parse_cors(value: &str) -> Result<CorsOrigins, String> {
    match value {
        "localhost" => Ok(CorsOrigins::Localhost),
        "*" => Ok(CorsOrigins::Any),
        list => list
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|origin| {
                let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && !origin[origin.find("//").map_or(0, |i| i + 2)..].contains('/');
                if !valid {
                    return Err(format!(
                        "{origin:?} is not an origin (scheme://host[:port], no path)"
                    ));
                }
                HeaderValue::from_str(origin).map_err(|_| format!("{origin:?} is not an origin"))
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|list| {
                if list.is_empty() {
                    Err("expected localhost, * or a list of origins".to_owned())
                } else {
                    Ok(CorsOrigins::List(list))
                }
            }),
    }
}

fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    parse_duration(value).and_then(|d| {
        if d.is_zero() {
            Err("must be above zero".to_owned())
        } else {
            Ok(d)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: ServeArgs, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(&args, &move |k| env.get(k).cloned())
    }

    #[test]
    fn flags_override_env_which_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sessiond.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1111\"\ndata_dir = \"/from/file\"\nbody_limit = 2048\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            listen: Some("127.0.0.1:3333".into()),
            ..ServeArgs::default()
        };
        let config = resolve(
            args,
            &[
                ("SESSIOND_LISTEN", "127.0.0.1:2222"),
                ("SESSIOND_DATA_DIR", "/from/env"),
            ],
        )
        .unwrap();
        assert_eq!(config.listen.port(), 3333);
        assert_eq!(config.data_dir, PathBuf::from("/from/env"));
        assert_eq!(config.body_limit, 2048);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
    }

    #[test]
    fn webhook_settings_come_from_flags_env_and_file_and_bad_ones_are_named() {
        let defaults = resolve(ServeArgs::default(), &[]).unwrap().webhooks;
        assert!(defaults.allowed_networks.is_empty());
        assert_eq!(
            defaults.retry_schedule,
            crate::webhooks::Schedule::default()
        );
        assert_eq!(defaults.timeout, Duration::from_secs(15));
        assert_eq!(defaults.max_endpoints, 100);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sessiond.toml");
        std::fs::write(
            &file,
            "webhook_timeout = \"3s\"\nwebhook_retention = \"1d\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            webhook_concurrency: Some("2".into()),
            ..ServeArgs::default()
        };
        let config = resolve(
            args,
            &[
                (
                    "SESSIOND_WEBHOOK_ALLOWED_NETWORKS",
                    "127.0.0.0/8, 10.0.0.0/8",
                ),
                ("SESSIOND_WEBHOOK_RETRY_SCHEDULE", "100ms,2s"),
            ],
        )
        .unwrap()
        .webhooks;
        assert_eq!(config.allowed_networks.len(), 2);
        assert_eq!(
            config.retry_schedule.waits(),
            [Duration::from_millis(100), Duration::from_secs(2)]
        );
        assert_eq!(config.timeout, Duration::from_secs(3));
        assert_eq!(config.retention, Duration::from_secs(86_400));
        assert_eq!(config.concurrency, 2);
        for (key, value) in [
            ("SESSIOND_WEBHOOK_RETRY_SCHEDULE", "soon"),
            ("SESSIOND_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/99"),
        ] {
            let error = resolve(ServeArgs::default(), &[(key, value)]).unwrap_err();
            assert!(
                error.setting.starts_with("webhook_"),
                "{key}: {}",
                error.setting
            );
        }
    }

    #[test]
    fn the_search_index_dir_defaults_to_none_and_is_read_from_file_and_env() {
        assert_eq!(
            resolve(ServeArgs::default(), &[]).unwrap().search_index_dir,
            None
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sessiond.toml");
        std::fs::write(&file, "search_index_dir = \"/from/file\"\n").unwrap();
        let from_file = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        assert_eq!(
            resolve(from_file, &[]).unwrap().search_index_dir,
            Some(PathBuf::from("/from/file"))
        );
        let config = resolve(
            ServeArgs::default(),
            &[("SESSIOND_SEARCH_INDEX_DIR", "/from/env")],
        )
        .unwrap();
        assert_eq!(config.search_index_dir, Some(PathBuf::from("/from/env")));
    }

    #[test]
    fn errors_name_the_setting_and_its_origin() {
        let error = resolve(ServeArgs::default(), &[("SESSIOND_LISTEN", "nowhere")]).unwrap_err();
        assert_eq!(error.setting, "listen");
        assert_eq!(error.origin, "SESSIOND_LISTEN");
        let error = resolve(
            ServeArgs {
                body_limit: Some("ten".into()),
                ..ServeArgs::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("body_limit (from --body-limit)"),
            "{error}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listne = \"x\"\n").unwrap();
        let error = resolve(
            ServeArgs {
                config: Some(file),
                ..ServeArgs::default()
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(error.setting, "listne");
    }

    #[test]
    fn exposed_servers_are_protected_by_default() {
        let local = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!((local.auth, local.rate_limit), (AuthMode::Off, false));
        let exposed = resolve(
            ServeArgs {
                listen: Some("0.0.0.0:4096".into()),
                ..ServeArgs::default()
            },
            &[],
        )
        .unwrap();
        assert_eq!(
            (exposed.auth, exposed.rate_limit),
            (AuthMode::Required, true)
        );
        let explicit = resolve(
            ServeArgs {
                listen: Some("0.0.0.0:4096".into()),
                auth: Some("off".into()),
                ..ServeArgs::default()
            },
            &[],
        )
        .unwrap();
        assert_eq!(explicit.auth, AuthMode::Off);
        assert!(
            resolve(
                ServeArgs::default(),
                &[("SESSIOND_TRUSTED_PROXIES", "10.0.0.0/8, ::1")]
            )
            .is_ok()
        );
        let error = resolve(
            ServeArgs::default(),
            &[("SESSIOND_RATE_LIMIT_READ", "fast")],
        )
        .unwrap_err();
        assert_eq!(error.setting, "rate_limit_read");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1TB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("99999999999999999h").is_err());
    }
}
