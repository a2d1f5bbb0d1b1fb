//! Building and running the server: open storage, bind, serve, shut down cleanly.
//!
//! Three steps kept apart so tests can bind port 0, learn the real port, and then serve:
//! [`Application::build`] opens everything and binds, [`Application::local_addr`] reports the
//! address, [`Application::run_until`] serves until a shutdown signal and then drains requests
//! and commits pending writes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cache::ResponseCache;
use crate::cluster::Broadcast;
use crate::config::{Config, Database};
use crate::events::{Event, EventKind, Hub};
use crate::http::auth::KeyCache;
use crate::http::{self, AppState, HttpService, HttpSettings, SharedState, StreamCounts};
use crate::ratelimit::{Limiter, LocalLimits};
use crate::server::{self, ServeOptions};
use crate::storage::Storage;
use crate::storage::postgres::{PgOptions, PgStorage};
use crate::storage::sqlite::{SqliteOptions, SqliteStorage};
use crate::telemetry::live::{Inputs, LiveStats};
use crate::workers::WorkPool;

pub struct Application {
    listener: TcpListener,
    router: HttpService,
    state: SharedState,
    config: Config,
    stopping: watch::Sender<bool>,
    /// The Redis broadcast subscriber, stopped with the server.
    listening: Option<tokio::task::JoinHandle<()>>,
    /// Signalled after each commit: wakes the webhook delivery loop.
    wake: Arc<tokio::sync::Notify>,
}

impl Application {
    /// Opens the storage and binds the listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        Self::build_with(config, Router::new()).await
    }

    /// Like [`Application::build`], with extra routes merged in (tests add slow routes).
    pub async fn build_with(
        config: Config,
        extra: Router<SharedState>,
    ) -> anyhow::Result<Application> {
        // Before anything records a metric: recordings made earlier would be lost.
        crate::telemetry::metrics::handle();
        let hub = Hub::new(config.event_client_buffer);
        let cache = Arc::new(ResponseCache::new(config.cache_size));
        let keys = Arc::new(KeyCache::default());
        let redis = match &config.redis {
            Some(url) => Some(crate::cluster::Redis::connect(url)?),
            None => None,
        };
        let wake = Arc::new(tokio::sync::Notify::new());
        let storage = open_storage(&config, &hub, &cache, &keys, redis.as_ref(), &wake).await?;
        // What other instances broadcast: forget it here too.
        let listening = redis.as_ref().map(|redis| {
            let (cache, keys) = (cache.clone(), keys.clone());
            redis.listen(move |message| match message {
                Broadcast::Invalidate {
                    session,
                    version,
                    deleted,
                } => cache.invalidate_session(&session, version, deleted),
                Broadcast::Revoke { key } => keys.forget(&key),
            })
        });
        hub.set_head(storage.event_bounds().await?.newest);
        let limiter: Option<Arc<dyn Limiter>> = match (config.rate_limit, &redis) {
            (false, _) => None,
            (true, Some(redis)) => Some(Arc::new(crate::cluster::RedisLimits::new(
                redis.clone(),
                config.rate_limits,
            ))),
            (true, None) => Some(Arc::new(LocalLimits::new(config.rate_limits))),
        };
        let (stopping, stopping_rx) = watch::channel(false);
        let state: SharedState = Arc::new(AppState {
            storage,
            redis,
            summarizer: WorkPool::new(config.summarize_workers, config.summarize_queue),
            searches: WorkPool::new(config.search_concurrency, config.search_queue),
            settings: HttpSettings {
                body_limit: config.body_limit,
                summarize_max_bytes: config.summarize_max_bytes,
                search_window: config.search_window,
                event_keepalive: config.event_keepalive,
                event_lag_grace: config.event_lag_grace,
                ws_ping_interval: config.ws_ping_interval,
                request_timeout: config.request_timeout,
                max_concurrency: config.max_concurrency,
                compression_level: config.compression_level,
                compression_min_size: config.compression_min_size,
                cors: config.cors_origins.clone(),
                profiling: config.profiling,
                auth: config.auth,
                trusted_proxies: config.trusted_proxies.clone(),
                allowed_hosts: config.allowed_hosts.clone(),
                access_log_sample: config.access_log_sample,
            },
            started: Instant::now(),
            hub,
            cache,
            stopping: stopping_rx,
            live: LiveStats::default(),
            streams: StreamCounts::default(),
            keys,
            limiter,
            webhook_guard: crate::webhooks::guard::Guard::new(
                config.webhooks.allowed_networks.clone(),
            ),
            webhook_max_endpoints: config.webhooks.max_endpoints,
        });
        let router = http::router_with(state.clone(), extra);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {} (setting `listen`)", config.listen))?;
        Ok(Application {
            listener,
            router,
            state,
            config,
            stopping,
            listening,
            wake,
        })
    }

    /// The address actually bound (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("reading the listening address")
    }

    pub fn auth_required(&self) -> bool {
        self.config.auth == crate::http::auth::AuthMode::Required
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// The storage this server uses.
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.state.storage.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// (up to `shutdown_timeout`), and commits every write already accepted.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let options = ServeOptions {
            header_read_timeout: self.config.header_read_timeout,
            max_header_bytes: self.config.max_header_bytes,
            max_connections: self.config.max_connections,
            drain_timeout: self.config.shutdown_timeout,
        };
        let sampling = tokio::spawn(sample_stats(self.state.clone()));
        let forgetting = self.state.limiter.clone().map(|limiter| {
            tokio::spawn(async move {
                // Idle callers are back at full burst: their state can go (bounded memory).
                let mut interval = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    interval.tick().await;
                    limiter.forget_idle();
                }
            })
        });
        let pruning = tokio::spawn(prune_events(
            self.state.storage.clone(),
            self.config.clone(),
            self.state.stopping.clone(),
        ));
        let delivering = crate::webhooks::worker::spawn(
            self.state.storage.clone(),
            self.config.webhooks.clone(),
            self.wake.clone(),
            self.state.stopping.clone(),
        );
        let stopping = self.stopping;
        let shutdown = async move {
            shutdown.await;
            // Streams see this and end with a final comment or close frame.
            let _ = stopping.send(true);
        };
        let drained = server::serve(self.listener, self.router, options, shutdown).await;
        pruning.abort();
        if let Some(task) = delivering {
            // Attempts in flight stay `pending` in the database and are retried after a
            // restart: stopping here loses nothing.
            task.abort();
        }
        if let Some(task) = &self.listening {
            task.abort();
        }
        sampling.abort();
        if let Some(task) = forgetting {
            task.abort();
        }
        if !drained {
            tracing::warn!(
                timeout = ?self.config.shutdown_timeout,
                "some requests were still running at the end of the drain timeout"
            );
        }
        self.state.storage.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn open_storage(
    config: &Config,
    hub: &Arc<Hub>,
    cache: &Arc<ResponseCache>,
    keys: &Arc<KeyCache>,
    redis: Option<&Arc<crate::cluster::Redis>>,
    wake: &Arc<tokio::sync::Notify>,
) -> anyhow::Result<Arc<dyn Storage>> {
    let publisher = hub.clone();
    let stale = {
        let cache = cache.clone();
        move |events: &[Event]| forget_changed(&cache, events)
    };
    let cache = cache.clone();
    let wake = wake.clone();
    // Runs after each commit and before its writers hear back: their next read is fresh.
    let on_commit = move |events: &[Event]| {
        forget_changed(&cache, events);
        publisher.publish(events);
        // The commit may have queued webhook deliveries.
        wake.notify_one();
    };
    if let Database::Postgres(url) = &config.database {
        let keys = keys.clone();
        let options = PgOptions {
            url: url.clone(),
            pool_size: config.database_pool,
            writer_queue: config.writer_queue,
            max_batch: config.write_batch,
            on_commit: Some(Arc::new(on_commit)),
            // `None`: the listener reconnected and may have missed revocations.
            on_revoke: Some(Arc::new(move |id: Option<&str>| match id {
                Some(id) => keys.forget(id),
                None => keys.forget_all(),
            })),
            on_stale: Some(Arc::new(stale)),
            search_index: Some(crate::storage::postgres::SearchIndexOptions {
                dir: config
                    .search_index_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join(crate::storage::sqlite::SEARCH_DIR)),
                foreground: config.search_index_foreground,
            }),
            on_local_commit: redis.map(|redis| {
                let redis = redis.clone();
                Arc::new(move |events: &[Event]| {
                    for event in events {
                        redis.broadcast(Broadcast::Invalidate {
                            session: event.session_id.as_str().to_owned(),
                            version: event.seq,
                            deleted: event.kind == EventKind::SessionDeleted,
                        });
                    }
                }) as crate::storage::CommitHook
            }),
        };
        return Ok(Arc::new(PgStorage::open(options).await?));
    }
    let options = SqliteOptions {
        data_dir: config.data_dir.clone(),
        read_connections: config.read_connections,
        heavy_connections: config.search_concurrency + config.summarize_workers,
        search_index_foreground: config.search_index_foreground,
        writer_queue: config.writer_queue,
        max_batch: config.write_batch,
        on_commit: Some(Arc::new(on_commit)),
        ..SqliteOptions::new(&config.data_dir)
    };
    let storage = tokio::task::spawn_blocking(move || SqliteStorage::open(options))
        .await
        .context("opening the database")??;
    Ok(Arc::new(storage))
}

/// Drops the cached responses that `events` made stale.
fn forget_changed(cache: &ResponseCache, events: &[Event]) {
    for event in events {
        cache.invalidate_session(
            event.session_id.as_str(),
            event.seq,
            event.kind == EventKind::SessionDeleted,
        );
    }
}

/// Prunes the event log to its retention (age and count) every `event_prune_interval`.
async fn prune_events(
    storage: Arc<dyn Storage>,
    config: Config,
    mut stopping: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(config.event_prune_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
        let cutoff = crate::domain::wall_clock_ms()
            - i64::try_from(config.event_retention.as_millis()).unwrap_or(i64::MAX);
        match storage
            .prune_events(cutoff, config.event_retention_count)
            .await
        {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "pruned the event log"),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "pruning the event log failed")
            }
        }
    }
}

/// Turns the server's state into a status-page sample once a second.
async fn sample_stats(state: SharedState) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    loop {
        interval.tick().await;
        let now = Instant::now();
        let cache = state.cache.stats();
        let inputs = Inputs {
            uptime_s: state.started.elapsed().as_secs_f64(),
            event_clients: (state.streams.sse.load(std::sync::atomic::Ordering::Relaxed)
                + state.streams.ws.load(std::sync::atomic::Ordering::Relaxed))
                as u64,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_bytes: cache.bytes,
            database_bytes: state.storage.disk_bytes().unwrap_or(0),
            rss_bytes: crate::telemetry::process::read()
                .resident_bytes
                .unwrap_or(0),
            events_published: state
                .hub
                .stats()
                .published
                .load(std::sync::atomic::Ordering::Relaxed),
            writer_queue: state.storage.writer_queue_depth() as u64,
        };
        state
            .live
            .tick(now - last, crate::domain::wall_clock_ms(), inputs);
        last = now;
    }
}

/// Completes on SIGINT or SIGTERM.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    // The handlers are installed now, not when the future is first polled: a SIGTERM sent
    // once the server says it is listening must stop it gracefully, and before the accept loop
    // first polled this future, the signal's default action killed the process outright.
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |installed: std::io::Result<tokio::signal::unix::Signal>, name| async move {
                match installed {
                    Ok(mut signal) => {
                        signal.recv().await;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot listen for {name}");
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                () = wait(interrupt, "SIGINT") => tracing::info!("SIGINT received; shutting down"),
                () = wait(terminate, "SIGTERM") => tracing::info!("SIGTERM received; shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            if let Err(error) = tokio::signal::ctrl_c().await {
                tracing::error!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
            tracing::info!("Ctrl-C received; shutting down");
        }
    }
}
