//! Several instances on one PostgreSQL database: events, caches and key revocations cross
//! instances. These need PostgreSQL whichever backend the rest of the suite runs on.

use std::time::{Duration, Instant};

use axum::Router;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::config::Database;
use sessiond::http::auth::AuthMode;

use crate::events::Sse;
use crate::helpers::{TestApp, postgres_database_at, postgres_required};

/// Two servers on one fresh database, each with its own data dir.
pub(crate) async fn two_instances(
    configure: impl Fn(&mut sessiond::config::Config) + Clone,
) -> Option<(TestApp, TestApp, String, tempfile::TempDir)> {
    let base = postgres_required()?;
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database_at(&base, dir.path());
    let mut apps = Vec::new();
    for name in ["a", "b"] {
        let data_dir = dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let url = url.clone();
        let configure = configure.clone();
        apps.push(
            TestApp::spawn_in(
                &data_dir,
                move |config| {
                    config.database = Database::Postgres(url);
                    configure(config);
                },
                Router::new(),
            )
            .await,
        );
    }
    let b = apps.pop().unwrap();
    let a = apps.pop().unwrap();
    Some((a, b, url, dir))
}

/// Polls `done` every `pause` until it holds, failing with `what` after `limit`; returns how
/// long it took.
async fn eventually(
    limit: Duration,
    pause: Duration,
    what: &str,
    mut done: impl AsyncFnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < limit, "{what}");
        tokio::time::sleep(pause).await;
    }
    started.elapsed()
}

/// Reads `count` events from `sse`, failing after ten quiet seconds.
async fn read_events(sse: &mut Sse, count: usize) -> Vec<Value> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let event = sse
            .next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("only {} of {count} events arrived", events.len()));
        events.push(event.data);
    }
    events
}

#[tokio::test]
async fn writes_on_either_instance_reach_subscribers_of_both_once_and_in_order() {
    let Some((a, b, _url, _dir)) = two_instances(|_| {}).await else {
        return;
    };
    let mut on_a = Sse::open(&a, "/v1/events", None).await;
    let mut on_b = Sse::open(&b, "/v1/events", None).await;
    // Writers on both instances at once: their batches interleave on the shared log.
    let session_a = a.create_session("/x", "from a").await;
    let session_b = b.create_session("/x", "from b").await;
    let (ia, ib) = (
        session_a["id"].as_str().unwrap().to_owned(),
        session_b["id"].as_str().unwrap().to_owned(),
    );
    let writes = 40;
    tokio::join!(
        async {
            for i in 0..writes {
                a.append(&ib, "user", &format!("a{i}")).await;
            }
        },
        async {
            for i in 0..writes {
                b.append(&ia, "user", &format!("b{i}")).await;
            }
        }
    );
    let total = 2 + 2 * writes;
    let seen_a = read_events(&mut on_a, total).await;
    let seen_b = read_events(&mut on_b, total).await;
    for seen in [&seen_a, &seen_b] {
        let seqs: Vec<i64> = seen.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "every event once, in order: {seqs:?}"
        );
        assert_eq!(seqs.len(), total);
    }
    assert_eq!(seen_a, seen_b, "both instances deliver the same log");
    // Each writer's own messages keep their order within the log.
    let texts: Vec<String> = seen_a
        .iter()
        .filter(|e| e["type"] == "message.created" && e["session_id"] == ib.as_str())
        .map(|e| e["data"]["parts"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        (0..writes).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    assert!(
        on_a.next(Duration::from_millis(300)).await.is_none(),
        "nothing more"
    );

    // Resuming on the other instance from the middle replays exactly the rest.
    let middle = seen_a[total / 2]["seq"].as_i64().unwrap();
    let mut resumed = Sse::open(&b, "/v1/events", Some(middle)).await;
    let rest = read_events(&mut resumed, total - total / 2 - 1).await;
    assert_eq!(rest.as_slice(), &seen_a[total / 2 + 1..]);
}

#[tokio::test]
async fn a_write_on_one_instance_is_read_fresh_on_the_other() {
    let Some((a, b, _url, _dir)) = two_instances(|_| {}).await else {
        return;
    };
    let session = a.create_session("/c", "before").await;
    let id = session["id"].as_str().unwrap();
    let path = format!("/v1/sessions/{id}");
    // Cached on b (the second read is a hit).
    for _ in 0..2 {
        assert_eq!(b.get_json(&path).await["title"], "before");
    }
    let listed = b.get_json("/v1/sessions?directory=/c").await;
    assert_eq!(listed["items"][0]["title"], "before");
    let response = a.patch_json(&path, &json!({"title": "after"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    // b hears of the change through the event feed and drops its cached copies.
    let took = eventually(
        Duration::from_secs(5),
        Duration::from_millis(5),
        "b still serves the old title",
        async || {
            let single = b.get_json(&path).await;
            let listed = b.get_json("/v1/sessions?directory=/c").await;
            single["title"] == "after" && listed["items"][0]["title"] == "after"
        },
    )
    .await;
    eprintln!("b served the new title after {took:?}");
}

#[tokio::test]
async fn a_key_revoked_on_one_instance_stops_working_on_the_other() {
    let Some((a, b, url, _dir)) = two_instances(|c| c.auth = AuthMode::Required).await else {
        return;
    };
    let admin = {
        let storage = sessiond::cli::open_database(
            std::path::Path::new("."),
            &Database::Postgres(url.clone()),
        )
        .await
        .unwrap();
        let secret = "sessiond_scaletestadminscaletestadminscaletestad";
        storage
            .create_key(
                sessiond::domain::keys::NewKey {
                    name: "admin".to_owned(),
                    scope: sessiond::domain::keys::Scope::Admin,
                    expires_at: None,
                },
                sessiond::domain::keys::hash(secret),
                "x".to_owned(),
            )
            .await
            .unwrap();
        storage.close().await;
        secret.to_owned()
    };
    let created: Value = a
        .client
        .post(a.url("/v1/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"scopes": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let status_on_b = || async {
        b.client
            .get(b.url("/v1/sessions"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap()
            .status()
    };
    // b knows the key now (and caches it).
    assert_eq!(status_on_b().await, StatusCode::OK);
    assert_eq!(status_on_b().await, StatusCode::OK);
    let revoked = a
        .client
        .delete(a.url(&format!("/v1/admin/keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    let took = eventually(
        Duration::from_secs(5),
        Duration::from_millis(5),
        "b still accepts the revoked key",
        async || status_on_b().await == StatusCode::UNAUTHORIZED,
    )
    .await;
    eprintln!("b refused the revoked key after {took:?}");
}

fn sessiond(args: &[&str]) -> std::process::Output {
    std::process::Command::new(crate::helpers::Process::binary())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sessiond")
}

#[tokio::test]
async fn migrate_data_copies_a_sqlite_database_to_postgres_and_verifies_it() {
    let Some(base) = postgres_required() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite_dir = dir.path().join("sqlite");
    let data = sqlite_dir.to_str().unwrap();
    let seeded = sessiond(&[
        "seed",
        "--database",
        "sqlite",
        "--data-dir",
        data,
        "--sessions",
        "60",
        "--messages-per-session",
        "7",
    ]);
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let key = sessiond(&["keys", "create", "--scope", "read", "--data-dir", data]);
    assert!(key.status.success());
    let secret = String::from_utf8(key.stdout).unwrap().trim().to_owned();
    std::fs::create_dir_all(dir.path().join("pg")).unwrap();
    let url = postgres_database_at(&base, &dir.path().join("pg"));

    let from = format!("sqlite:{data}");
    let output = sessiond(&["migrate-data", "--from", &from, "--to", &url]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("copied 60 sessions, 420 messages and 1 keys")
            && stdout.contains("verified"),
        "{stdout}"
    );
    // A second run refuses: the target is no longer empty.
    let again = sessiond(&["migrate-data", "--from", &from, "--to", &url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    // Nonsense is named.
    let bad = sessiond(&["migrate-data", "--from", "mysql://x", "--to", &url]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--from"));

    // Both backends serve the same data, in the same order, and the key works on the copy.
    let old = TestApp::spawn_in(
        &sqlite_dir,
        |c| c.database = Database::Sqlite,
        Router::new(),
    )
    .await;
    let pg_dir = dir.path().join("pg");
    let new = TestApp::spawn_in(
        &pg_dir,
        |c| {
            c.database = Database::Postgres(url.clone());
            c.auth = AuthMode::Required;
        },
        Router::new(),
    )
    .await;
    let authed = |path: &str| new.client.get(new.url(path)).bearer_auth(&secret).send();
    let sessions_old = old
        .collect_pages("/v1/sessions?archived=all&limit=13")
        .await;
    let mut sessions_new = Vec::new();
    let mut path = "/v1/sessions?archived=all&limit=13".to_owned();
    loop {
        let page: Value = authed(&path).await.unwrap().json().await.unwrap();
        sessions_new.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/sessions?archived=all&limit=13&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(sessions_old, sessions_new);
    let id = sessions_old[0]["id"].as_str().unwrap();
    let messages_old = old
        .get_json(&format!("/v1/sessions/{id}/messages?limit=100"))
        .await;
    let messages_new: Value = authed(&format!("/v1/sessions/{id}/messages?limit=100"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(messages_old["items"], messages_new["items"]);
    // Search found the copied text.
    let word = messages_old["items"][0]["parts"][0]["text"]
        .as_str()
        .unwrap()
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| w.len() > 3)
        .unwrap()
        .to_owned();
    let hits: Value = authed(&format!("/v1/search?q={word}&session_id={id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !hits["items"].as_array().unwrap().is_empty(),
        "{word}: {hits}"
    );
}

/// `deploy/cluster.sh` running: two instances and nginx; stopped (SIGTERM) on drop.
struct Cluster {
    child: std::process::Child,
    instances: Vec<String>,
    nginx: String,
}

impl Cluster {
    fn start(database: &str) -> Option<Cluster> {
        use std::io::BufRead;
        if std::process::Command::new("nginx")
            .arg("-v")
            .output()
            .is_err()
        {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but nginx is not installed");
            }
            eprintln!("skipped: nginx is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/cluster.sh"),
        )
        .env("DATABASE_URL", database)
        .env("SESSIOND_BIN", crate::helpers::Process::binary())
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .env("INSTANCES", "2")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("deploy/cluster.sh starts");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut instances = Vec::new();
        let nginx = loop {
            let line = lines
                .next()
                .expect("cluster.sh printed where nginx is")
                .unwrap();
            if let Some(url) = line.strip_prefix("nginx at ") {
                break url.to_owned();
            }
            if let Some((_, url)) = line.split_once(" at ") {
                instances.push(url.to_owned());
            }
        };
        Some(Cluster {
            child,
            instances,
            nginx,
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn through_nginx_every_subscriber_of_every_instance_gets_every_event_once_in_order() {
    let Some(base) = postgres_required() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database_at(&base, dir.path());
    let Some(cluster) = tokio::task::block_in_place(|| Cluster::start(&url)) else {
        return;
    };
    assert_eq!(cluster.instances.len(), 2);
    let client = reqwest::Client::new();
    let open = |base: String| {
        let client = client.clone();
        async move {
            Sse::from_response(
                client
                    .get(format!("{base}/v1/events"))
                    .send()
                    .await
                    .unwrap(),
            )
        }
    };
    // Subscribers on each instance directly, and one through nginx (SSE proxied unbuffered).
    let mut streams = vec![
        open(cluster.instances[0].clone()).await,
        open(cluster.instances[1].clone()).await,
        open(cluster.nginx.clone()).await,
    ];
    let ws_url = format!("{}/v1/ws", cluster.nginx.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("a WebSocket through nginx");
    // Give the streams a moment to register before the writes start.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Writes through nginx, which spreads them over both instances, four at a time.
    let session: Value = client
        .post(format!("{}/v1/sessions", cluster.nginx))
        .json(&json!({"directory": "/nginx", "title": "through nginx"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["id"].as_str().unwrap().to_owned();
    let writes = 60;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (client, nginx, id) = (client.clone(), cluster.nginx.clone(), id.clone());
        tasks.spawn(async move {
            for i in 0..writes / 4 {
                let response = client
                    .post(format!("{nginx}/v1/sessions/{id}/messages"))
                    .json(&json!({"role": "user", "parts": [{"type": "text", "text": format!("w{worker}-{i}")}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let total = 1 + writes;
    let mut logs = Vec::new();
    for sse in &mut streams {
        let events = read_events(sse, total).await;
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=total as i64).collect::<Vec<_>>(),
            "once and in order"
        );
        assert!(
            sse.next(Duration::from_millis(300)).await.is_none(),
            "nothing more"
        );
        logs.push(events);
    }
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[0], logs[2]);
    // The WebSocket through nginx carries the same events.
    use futures_util::StreamExt;
    let mut over_ws = Vec::new();
    while over_ws.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a WebSocket message in time")
            .expect("open")
            .expect("ok");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            over_ws.push(serde_json::from_str::<Value>(&text).unwrap());
        }
    }
    assert_eq!(over_ws, logs[0]);

    // Large bodies pass nginx both ways (they go through its temp files).
    let big = "word ".repeat(40_000);
    let response = client
        .post(format!("{}/v1/sessions/{id}/messages", cluster.nginx))
        .json(&json!({"role": "user", "parts": [{"type": "text", "text": big}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let listed: Value = client
        .get(format!(
            "{}/v1/sessions/{id}/messages?order=desc&limit=1",
            cluster.nginx
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"][0]["parts"][0]["text"]
            .as_str()
            .unwrap()
            .len(),
        big.len()
    );
}

/// The Redis for tests: `SESSIOND_TEST_REDIS`, else the local one; missing is a failure in CI
/// and a skip (said on stderr) elsewhere.
fn redis_required() -> Option<String> {
    let url = std::env::var("SESSIOND_TEST_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    if std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 6379)),
        Duration::from_secs(2),
    )
    .is_ok()
        || std::env::var("SESSIOND_TEST_REDIS").is_ok()
    {
        return Some(url);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but no Redis answers at {url}");
    }
    eprintln!("skipped: no Redis at {url}");
    None
}

/// A server limited through `redis`, believing loopback's X-Forwarded-For (so each test run can
/// be a caller of its own).
async fn limited(redis: String, read_policy: &str) -> TestApp {
    let policy = sessiond::ratelimit::Policy::parse(read_policy).unwrap();
    let app = TestApp::spawn_configured(move |config| {
        config.redis = Some(redis);
        config.rate_limit = true;
        config.rate_limits[1] = policy;
        config.trusted_proxies = vec![sessiond::http::auth::Cidr::parse("127.0.0.1").unwrap()];
    })
    .await;
    wait_for_ready(&app, "ok").await;
    app
}

async fn wait_for_ready(app: &TestApp, status: &str) -> Value {
    let started = Instant::now();
    loop {
        // As a caller of its own each time: /ready is rate limited like any read.
        let ready: Value = app
            .client
            .get(app.url("/ready"))
            .header("x-forwarded-for", random_ip())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["status"] == status {
            return ready;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "/ready never said {status}: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_as(app: &TestApp, ip: &str) -> StatusCode {
    app.client
        .get(app.url("/v1/sessions"))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap()
        .status()
}

fn random_ip() -> String {
    format!(
        "10.{}.{}.{}",
        fastrand::u8(..),
        fastrand::u8(..),
        fastrand::u8(1..)
    )
}

#[tokio::test]
async fn rate_limits_are_shared_by_instances_through_redis() {
    let Some(redis) = redis_required() else {
        return;
    };
    let a = limited(redis.clone(), "6/m,3").await;
    let b = limited(redis, "6/m,3").await;
    let caller = random_ip();
    // A burst of three in all, whichever instance serves it.
    assert_eq!(read_as(&a, &caller).await, StatusCode::OK);
    assert_eq!(read_as(&b, &caller).await, StatusCode::OK);
    assert_eq!(read_as(&a, &caller).await, StatusCode::OK);
    let refused = b
        .client
        .get(b.url("/v1/sessions"))
        .header("x-forwarded-for", &caller)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(read_as(&a, &caller).await, StatusCode::TOO_MANY_REQUESTS);
    // Another caller has a budget of its own.
    assert_eq!(read_as(&b, &random_ip()).await, StatusCode::OK);
}

/// A Redis server of the test's own, so it can be stopped and started again.
struct OwnRedis {
    port: u16,
    child: std::process::Child,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { port, child }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_redis_the_server_keeps_serving_degraded_and_recovers_by_itself() {
    if redis_required().is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = tokio::task::block_in_place(|| OwnRedis::start(port));
    let app = limited(format!("redis://127.0.0.1:{}", redis.port), "60/m,2").await;
    let caller = random_ip();
    assert_eq!(read_as(&app, &caller).await, StatusCode::OK);

    drop(redis);
    let ready = wait_for_ready(&app, "degraded").await;
    assert_eq!(ready["checks"]["database"]["status"], "ok");
    assert_eq!(ready["checks"]["redis"]["status"], "down");
    let response = app
        .client
        .get(app.url("/ready"))
        .header("x-forwarded-for", random_ip())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "degraded is still ready");
    // Still served, and still limited (by this instance alone).
    let other = random_ip();
    assert_eq!(read_as(&app, &other).await, StatusCode::OK);
    assert_eq!(read_as(&app, &other).await, StatusCode::OK);
    assert_eq!(read_as(&app, &other).await, StatusCode::TOO_MANY_REQUESTS);
    let session = app.create_session("/r", "writes work too").await;
    assert!(session["id"].is_string());

    let _redis = tokio::task::block_in_place(|| OwnRedis::start(port));
    wait_for_ready(&app, "ok").await;
    // Decisions go to Redis again (within a probe interval): a fresh caller's state appears
    // in the new Redis.
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let took = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        "limits never went back to Redis",
        async || {
            let caller = random_ip();
            assert_eq!(read_as(&app, &caller).await, StatusCode::OK);
            redis::cmd("EXISTS")
                .arg(format!("sessiond:rl:read:ip:{caller}"))
                .query_async::<bool>(&mut connection)
                .await
                .unwrap()
        },
    )
    .await;
    eprintln!("limits back in Redis after {took:?}");
}

#[tokio::test]
async fn a_stream_opened_on_one_instance_while_another_writes_has_no_gap() {
    let Some((a, b, _url, _dir)) = two_instances(|_| {}).await else {
        return;
    };
    let id = a.create_session_id("/g", "gaps").await;
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (client, url, writing) = (
            a.client.clone(),
            a.url(&format!("/v1/sessions/{id}/messages")),
            writing.clone(),
        );
        tokio::spawn(async move {
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client
                    .post(&url)
                    .json(&json!({"role": "user", "parts": [{"type": "text", "text": "w"}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        })
    };
    // Streams opened on b at random moments of a's writing: each sees a run without holes,
    // whatever b was relaying when it opened.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..20))).await;
        let mut sse = Sse::open(&b, "/v1/events", None).await;
        let events = read_events(&mut sse, 10).await;
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "a gap: {seqs:?}");
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
}

#[tokio::test]
async fn broadcasts_reach_other_instances_through_redis_and_not_their_sender() {
    use sessiond::cluster::{Broadcast, Redis};
    let Some(url) = redis_required() else {
        return;
    };
    let (a, b) = (Redis::connect(&url).unwrap(), Redis::connect(&url).unwrap());
    let (to_a, mut at_a) = tokio::sync::mpsc::unbounded_channel();
    let (to_b, mut at_b) = tokio::sync::mpsc::unbounded_channel();
    let listening = [
        a.listen(move |m| {
            let _ = to_a.send(m);
        }),
        b.listen(move |m| {
            let _ = to_b.send(m);
        }),
    ];
    let tag = format!("{:016x}", fastrand::u64(..));
    let revoke = Broadcast::Revoke {
        key: format!("key_{tag}"),
    };
    // Subscribing is asynchronous: say it until b has heard it once.
    let started = Instant::now();
    'heard: loop {
        a.broadcast(revoke.clone());
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, at_b.recv()).await {
            if message == revoke {
                break 'heard;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "b never heard a"
        );
    }
    let invalidate = Broadcast::Invalidate {
        session: format!("ses_{tag}"),
        version: 7,
        deleted: true,
    };
    let sent = Instant::now();
    b.broadcast(invalidate.clone());
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), at_a.recv())
            .await
            .expect("a hears b")
            .unwrap();
        // a hears b's invalidation, and never its own revocations.
        assert_ne!(message, revoke, "a heard itself");
        if message == invalidate {
            break;
        }
    }
    eprintln!("a broadcast arrived after {:?}", sent.elapsed());
    for task in listening {
        task.abort();
    }
}

/// The ids of the hits of a search on `app`.
async fn search_ids(app: &TestApp, query: &str) -> Vec<String> {
    app.get_json(&format!("/v1/search?{query}")).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| hit["message_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Each instance searches an index of its own, fed from the shared log. A search that starts
/// after a write's 2xx on the other instance finds it (the heads come from the database and the
/// index's tail covers what it has not committed), one after a delete's 2xx no longer returns
/// what it deleted, and the same holds once the index has committed everything. (A query
/// string each time: a response this instance cached before is fresh only once the event feed
/// brings the change, as for every list.)
#[tokio::test]
async fn a_search_on_one_instance_finds_what_another_wrote_and_not_what_it_deleted() {
    let Some((a, b, _url, _dir)) = two_instances(|_| {}).await else {
        return;
    };
    let keep = a.create_session_id("/s", "keep").await;
    let gone = b.create_session_id("/s", "gone").await;
    let mut kept = Vec::new();
    for n in 0..20 {
        // Written alternately on either instance, searched at once on the other.
        let (writer, reader) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let id = writer
            .append(&keep, "user", &format!("walrus{n} tusk"))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            search_ids(reader, &format!("q=walrus{n}")).await,
            vec![id.clone()]
        );
        kept.push(id);
    }
    let doomed = a.append(&gone, "user", "walrus tusk doomed").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut all = kept.clone();
    all.push(doomed.clone());
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    assert_eq!(sorted(search_ids(&b, "q=tusk&limit=50").await), sorted(all));
    let mut feed = Sse::open(&b, "/v1/events", None).await;
    assert_eq!(
        a.delete(&format!("/v1/sessions/{gone}")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sorted(search_ids(&b, "q=tusk&limit=51").await),
        sorted(kept.clone())
    );
    assert!(search_ids(&b, "q=doomed").await.is_empty());

    // Once b's index has committed everything (the deletion is fed after every message before
    // it), it answers the same from disk.
    let deletion = loop {
        let event = feed
            .next(Duration::from_secs(10))
            .await
            .expect("the deletion reaches b")
            .data;
        if event["type"] == "session.deleted" {
            break event["seq"].as_i64().unwrap();
        }
    };
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        "b's index never committed the deletion",
        async || {
            let index = &b.get_json("/ready").await["search_index"];
            index["committed"]["events"].as_i64() >= Some(deletion)
        },
    )
    .await;
    assert_eq!(
        sorted(search_ids(&b, "q=tusk&limit=52").await),
        sorted(kept)
    );
    assert!(search_ids(&b, "q=doomed&limit=2").await.is_empty());
}

/// Two instances never share one search index dir (each would rebuild it under the other):
/// the second is refused at start, saying why.
#[tokio::test]
async fn a_second_instance_on_the_same_search_index_dir_is_refused() {
    let Some((a, _b, url, dir)) = two_instances(|_| {}).await else {
        return;
    };
    let mut config = sessiond::config::Config::ephemeral(dir.path().join("a"));
    config.database = Database::Postgres(url.clone());
    let refused = sessiond::app::Application::build_with(config, Router::new()).await;
    let error = format!(
        "{:#}",
        refused.err().expect("the second instance is refused")
    );
    assert!(error.contains("in use by another sessiond"), "{error}");
    assert!(error.contains("search_index_dir"), "{error}");
    // The first keeps serving searches.
    let sid = a.create_session_id("/s", "s").await;
    let id = a.append(&sid, "user", "still searchable").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(search_ids(&a, "q=searchable").await, vec![id.clone()]);
    // On the same data dir with a search index dir of its own, a third instance starts, builds
    // its index there from the database, and finds the same.
    let own = dir.path().join("own-index");
    let c = TestApp::spawn_in(
        &dir.path().join("a"),
        {
            let own = own.clone();
            move |config| {
                config.database = Database::Postgres(url);
                config.search_index_dir = Some(own);
            }
        },
        Router::new(),
    )
    .await;
    assert_eq!(search_ids(&c, "q=searchable").await, vec![id]);
    assert!(own.join("meta.json").exists());
}
