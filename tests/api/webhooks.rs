//! Webhooks: endpoints registered through the API, deliveries received by a receiver each test
//! starts on a random loopback port (allowed with `--webhook-allowed-networks 127.0.0.0/8`).
//! The receiver hands every request to the test, which decides the answer, so retries and the
//! circuit breaker are driven step by step instead of by timing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::http::auth::Cidr;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::helpers::{Process, TestApp, assert_problem};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

type Pending = (Received, oneshot::Sender<u16>);

/// A webhook receiver on 127.0.0.1: each request waits for the test's answer.
struct Receiver {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Pending>,
}

impl Receiver {
    async fn start() -> Receiver {
        let (tx, requests) = mpsc::unbounded_channel::<Pending>();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::new(tx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next request (failing after 20 quiet seconds), to be answered through the sender.
    async fn next(&mut self) -> Pending {
        tokio::time::timeout(Duration::from_secs(20), self.requests.recv())
            .await
            .expect("a delivery within 20 s")
            .expect("the receiver is running")
    }

    /// The next request, answered with `status` at once.
    async fn answer(&mut self, status: u16) -> Received {
        let (received, reply) = self.next().await;
        let _ = reply.send(status);
        received
    }
}

async fn receive(
    State(tx): State<Arc<mpsc::UnboundedSender<Pending>>>,
    headers: HeaderMap,
    body: Bytes,
) -> AxumStatus {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let received = Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body,
    };
    let (reply, answer) = oneshot::channel();
    if tx.send((received, reply)).is_err() {
        return AxumStatus::SERVICE_UNAVAILABLE;
    }
    let status = answer.await.unwrap_or(503);
    AxumStatus::from_u16(status).unwrap_or(AxumStatus::INTERNAL_SERVER_ERROR)
}

/// HMAC-SHA256, written here independently of the server's.
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Whether `received` carries a valid Standard Webhooks signature made with `secret`.
fn signed_with(received: &Received, secret: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64 secret");
    let mut message = format!("{}.{}.", received.id, received.timestamp).into_bytes();
    message.extend_from_slice(&received.body);
    let expected = format!("v1,{}", STANDARD.encode(hmac(&key, &message)));
    received.signature.split(' ').any(|s| s == expected)
}

fn allow_loopback(config: &mut sessiond::config::Config, schedule: &str) {
    config.webhooks.allowed_networks = vec![Cidr::parse("127.0.0.0/8").unwrap()];
    config.webhooks.retry_schedule = sessiond::webhooks::Schedule::parse(schedule).unwrap();
    config.webhooks.poll_interval = Duration::from_millis(100);
}

async fn register(app: &TestApp, body: Value) -> (String, String) {
    let response = app.post_json("/v1/webhooks", &body).await;
    let status = response.status();
    let created: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

/// Polls `path` until `done` holds for its JSON (at most 20 s).
async fn wait_for(app: &TestApp, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let body = app.get_json(path).await;
        if done(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_matching_event_is_delivered_signed_with_the_same_id_on_retries() {
    let app = TestApp::spawn_configured(|c| allow_loopback(c, "100ms,200ms")).await;
    let mut receiver = Receiver::start().await;
    let (id, secret) = register(
        &app,
        json!({"url": receiver.url(), "events": ["session.created", "message.created"],
               "description": "all of it"}),
    )
    .await;
    let session = app.create_session("/hooks", "h").await;
    let sid = session["id"].as_str().unwrap();
    app.append(sid, "user", "one").await;
    app.append(sid, "user", "two").await;
    // Not subscribed: no delivery.
    app.patch_json(&format!("/v1/sessions/{sid}"), &json!({"title": "x"}))
        .await;

    // The first request fails; every event must still arrive, the failed one again with the
    // same webhook-id.
    let first = receiver.answer(500).await;
    let mut delivered: HashMap<String, Value> = HashMap::new();
    let mut attempts: HashMap<String, u32> = HashMap::from([(first.id.clone(), 1)]);
    assert!(signed_with(&first, &secret));
    while delivered.len() < 3 {
        let got = receiver.answer(200).await;
        assert!(signed_with(&got, &secret), "bad signature on {got:?}");
        let timestamp: i64 = got.timestamp.parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((timestamp - now).abs() < 300, "timestamp within 5 min");
        *attempts.entry(got.id.clone()).or_default() += 1;
        let event = got.json();
        assert_eq!(got.id, format!("evt_{}", event["seq"]));
        delivered.insert(got.id.clone(), event);
    }
    assert_eq!(
        attempts[&first.id], 2,
        "the failed delivery came again, same id"
    );
    let mut types: Vec<&str> = delivered
        .values()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    types.sort();
    assert_eq!(
        types,
        ["message.created", "message.created", "session.created"]
    );
    for event in delivered.values() {
        assert_eq!(event["session_id"], sid);
        assert!(event["data"]["id"].is_string());
    }

    let detail = wait_for(&app, &format!("/v1/webhooks/{id}"), "all delivered", |w| {
        w["deliveries"]["delivered"] == 3
    })
    .await;
    assert_eq!(detail["deliveries"]["pending"], 0);
    assert_eq!(detail["enabled"], true);
    assert_eq!(detail["circuit"]["state"], "closed");
    assert!(detail.get("secret").is_none(), "the secret is shown once");
    let deliveries = app.get_json(&format!("/v1/webhooks/{id}/deliveries")).await;
    let items = deliveries["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let retried = items
        .iter()
        .find(|d| format!("evt_{}", d["event_seq"]) == first.id)
        .unwrap();
    assert_eq!(retried["attempts"], 2);
    assert_eq!(retried["status"], "delivered");
    assert_eq!(retried["last_status"], 200);
    let seqs: Vec<i64> = items
        .iter()
        .map(|d| d["event_seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let page = app
        .get_json(&format!("/v1/webhooks/{id}/deliveries?limit=2"))
        .await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app
        .get_json(&format!(
            "/v1/webhooks/{id}/deliveries?limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    let failed = app
        .get_json(&format!("/v1/webhooks/{id}/deliveries?status=failed"))
        .await;
    assert_eq!(failed["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_exhausted_retries_fail() {
    let app = TestApp::spawn_configured(|c| allow_loopback(c, "50ms")).await;
    let mut receiver = Receiver::start().await;
    let (gone, _) = register(
        &app,
        json!({"url": receiver.url(), "events": ["session.created"]}),
    )
    .await;
    app.create_session("/gone", "g").await;
    receiver.answer(410).await;
    let detail = wait_for(&app, &format!("/v1/webhooks/{gone}"), "disabled", |w| {
        w["enabled"] == false
    })
    .await;
    assert!(detail["disabled_reason"].as_str().unwrap().contains("410"));
    assert_eq!(detail["deliveries"]["failed"], 1);
    // Disabled: later events are not queued for it.
    let replay = app
        .post_json(&format!("/v1/webhooks/{gone}/replay"), &json!({"since": 0}))
        .await;
    assert_problem(replay, StatusCode::CONFLICT, "conflict").await;
    app.delete(&format!("/v1/webhooks/{gone}")).await;

    // One retry (50 ms), then failed.
    let (failing, _) = register(
        &app,
        json!({"url": receiver.url(), "events": ["session.created"]}),
    )
    .await;
    app.create_session("/fail", "f").await;
    let a = receiver.answer(500).await;
    let b = receiver.answer(502).await;
    assert_eq!(a.id, b.id);
    let deliveries = wait_for(
        &app,
        &format!("/v1/webhooks/{failing}/deliveries"),
        "failed after the schedule",
        |d| d["items"][0]["status"] == "failed",
    )
    .await;
    assert_eq!(deliveries["items"][0]["attempts"], 2);
    assert_eq!(deliveries["items"][0]["last_status"], 502);
    assert_eq!(deliveries["items"][0]["next_attempt_at"], Value::Null);
    // One delivery running out does not disable its endpoint: it can be replayed.
    let detail = app.get_json(&format!("/v1/webhooks/{failing}")).await;
    assert_eq!(detail["enabled"], true, "{detail}");
    let seq: i64 = a.id.strip_prefix("evt_").unwrap().parse().unwrap();
    let replay = app
        .post_json(
            &format!("/v1/webhooks/{failing}/replay"),
            &json!({"since": seq - 1}),
        )
        .await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    let again = receiver.answer(200).await;
    assert_eq!(again.id, a.id, "the replay carries the same event");
    wait_for(
        &app,
        &format!("/v1/webhooks/{failing}/deliveries?status=delivered"),
        "the replay delivered",
        |d| d["items"].as_array().is_some_and(|i| i.len() == 1),
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_sends_one_probe_at_a_time_and_closes_after_two_successes() {
    // Open time: the first wait (300 ms), capped at the last; deliveries get many retries.
    let app = TestApp::spawn_configured(|c| {
        allow_loopback(
            c,
            "300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms",
        )
    })
    .await;
    let mut receiver = Receiver::start().await;
    let (id, _) = register(
        &app,
        json!({"url": receiver.url(), "events": ["session.created"]}),
    )
    .await;
    let path = format!("/v1/webhooks/{id}");
    for n in 0..5 {
        app.create_session("/breaker", &format!("b{n}")).await;
    }
    // All five first attempts are out (and held) before any fails, so no retry can come
    // between them.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(receiver.next().await);
    }
    let mut requests = 5;
    let first: HashSet<String> = held.iter().map(|(r, _)| r.id.clone()).collect();
    assert_eq!(first.len(), 5, "five deliveries, one attempt each");
    for (_, reply) in held {
        let _ = reply.send(500);
    }
    let open = wait_for(&app, &path, "the circuit opens", |w| {
        w["circuit"]["state"] == "open" || w["circuit"]["state"] == "half_open"
    })
    .await;
    assert_eq!(open["circuit"]["consecutive_failures"], 5);

    // The probe: held unanswered while the other four deliveries fall due.
    let (probe, reply) = receiver.next().await;
    requests += 1;
    wait_for(&app, &path, "half-open while the probe is out", |w| {
        w["circuit"]["state"] == "half_open"
    })
    .await;
    wait_for(
        &app,
        &format!("{path}/deliveries?status=pending"),
        "the others fall due",
        |d| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let items = d["items"].as_array().unwrap();
            items.len() == 5
                && items
                    .iter()
                    .all(|i| i["next_attempt_at"].as_i64().unwrap() < now)
        },
    )
    .await;
    // Two poll rounds: a second request now would be a second probe.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        receiver.requests.try_recv().is_err(),
        "one probe at a time while half-open"
    );
    let _ = reply.send(200);

    let second = receiver.answer(200).await;
    requests += 1;
    assert_ne!(second.id, probe.id);
    let mut seen: HashSet<String> = HashSet::from([probe.id, second.id]);
    while seen.len() < 5 {
        seen.insert(receiver.answer(200).await.id);
        requests += 1;
    }
    let closed = wait_for(&app, &path, "closed and delivered", |w| {
        w["circuit"]["state"] == "closed" && w["deliveries"]["delivered"] == 5
    })
    .await;
    assert_eq!(closed["circuit"]["consecutive_failures"], 0);
    assert_eq!(closed["circuit"]["next_attempt_at"], Value::Null);
    assert_eq!(requests, 10, "five failures, then one delivery each");
    let metrics = app.metrics().await;
    assert!(metrics.contains("sessiond_webhook_circuit_transitions_total{to=\"open\"}"));
    app.stop().await;
}

#[tokio::test]
async fn internal_addresses_and_bad_bodies_are_refused() {
    // No allowance: loopback, private and mapped addresses are refused, also by name.
    let app = TestApp::spawn().await;
    for url in [
        "http://localhost:9/hook",
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest",
        "http://[::1]:9/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
        "http://[fd00::1]/",
    ] {
        let response = app.post_json("/v1/webhooks", &json!({"url": url})).await;
        let body = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("webhook-allowed-networks"),
            "{url}: {body}"
        );
    }
    for body in [
        json!({"url": "ftp://example.com/"}),
        json!({"url": "not a url"}),
        json!({"url": "https://127.0.0.1/"}),
        json!({"url": "http://127.0.0.1/", "events": ["message.exploded"]}),
        json!({"url": "http://127.0.0.1/", "events": []}),
        json!({"url": "http://127.0.0.1/", "description": "x".repeat(1025)}),
        json!({"url": "http://127.0.0.1/", "colour": "red"}),
        json!({}),
    ] {
        let response = app.post_json("/v1/webhooks", &body).await;
        assert_problem(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_problem(
        app.get("/v1/webhooks/whk_nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        app.get("/v1/webhooks/whk_0000000000000000000000000a").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        app.get("/v1/webhooks?cursor=bogus").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    app.stop().await;

    // Allowed, the same loopback URL registers, and the cap holds.
    let app = TestApp::spawn_configured(|c| allow_loopback(c, "1s")).await;
    let (id, _) = register(&app, json!({"url": "http://localhost:9/hook"})).await;
    let patched = app
        .patch_json(
            &format!("/v1/webhooks/{id}"),
            &json!({"description": "d", "events": ["session.deleted"], "ordered": true}),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["events"], json!(["session.deleted"]));
    assert_eq!(patched["ordered"], true);
    for _ in 1..100 {
        register(&app, json!({"url": "http://127.0.0.1:9/hook"})).await;
    }
    let over = app
        .post_json("/v1/webhooks", &json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    assert_problem(over, StatusCode::BAD_REQUEST, "invalid_request").await;
    let all = app.collect_pages("/v1/webhooks?limit=7").await;
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|w| w.get("secret").is_none()));
    assert_eq!(
        app.delete(&format!("/v1/webhooks/{id}")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_problem(
        app.get(&format!("/v1/webhooks/{id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn https_urls_go_through_tls() {
    // A plain-http receiver behind an https URL: the TLS handshake fails, as a failed attempt.
    let app = TestApp::spawn_configured(|c| allow_loopback(c, "1h")).await;
    let mut receiver = Receiver::start().await;
    let url = format!("https://{}/hook", receiver.addr);
    let (id, _) = register(&app, json!({"url": url, "events": ["session.created"]})).await;
    app.create_session("/tls", "t").await;
    let deliveries = wait_for(
        &app,
        &format!("/v1/webhooks/{id}/deliveries"),
        "the attempt fails",
        |d| d["items"][0]["attempts"] == 1,
    )
    .await;
    let delivery = &deliveries["items"][0];
    assert_eq!(delivery["status"], "pending");
    assert!(
        delivery.get("last_status").is_none(),
        "no HTTP answer: {delivery}"
    );
    let error = delivery["last_error"].as_str().unwrap();
    eprintln!("https to a plain-http receiver: {error}");
    assert!(!error.contains("no answer"), "{error}");
    assert!(
        receiver.requests.try_recv().is_err(),
        "no plain-http request reached the receiver"
    );
    app.stop().await;
}

#[tokio::test]
async fn replay_requeues_and_a_rotated_secret_signs_beside_the_new_one() {
    let app = TestApp::spawn_configured(|c| allow_loopback(c, "100ms")).await;
    let mut receiver = Receiver::start().await;
    let (id, old) = register(&app, json!({"url": receiver.url()})).await;
    let session = app.create_session("/replay", "r").await;
    let first = receiver.answer(200).await;
    assert_eq!(first.json()["data"]["id"], session["id"]);
    assert_eq!(first.signature.split(' ').count(), 1);

    let rotated = app
        .post_json(&format!("/v1/webhooks/{id}/rotate-secret"), &json!({}))
        .await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    let replay = app
        .post_json(&format!("/v1/webhooks/{id}/replay"), &json!({"since": 0}))
        .await;
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["queued"], 1);
    let again = receiver.answer(200).await;
    assert_eq!(again.id, first.id, "a replay is the same event");
    assert_eq!(again.body, first.body);
    assert_eq!(again.signature.split(' ').count(), 2);
    assert!(signed_with(&again, &new) && signed_with(&again, &old));
    wait_for(&app, &format!("/v1/webhooks/{id}"), "both delivered", |w| {
        w["deliveries"]["delivered"] == 2
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_deliveries_survive_kill_9_and_are_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut receiver = Receiver::start().await;
    let args = [
        "--webhook-allowed-networks",
        "127.0.0.0/8",
        "--webhook-retry-schedule",
        "100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms,100ms",
        "--webhook-poll-interval",
        "100ms",
    ];
    let server = Process::start(dir.path(), &args);
    let created: Value = client
        .post(server.url("/v1/webhooks"))
        .json(&json!({"url": receiver.url()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(created["id"].is_string(), "{created}");
    let session: Value = client
        .post(server.url("/v1/sessions"))
        .json(&json!({"directory": "/kill", "title": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = session["id"].as_str().unwrap();
    let mut expected: HashSet<String> = HashSet::from([format!("evt_{}", 1)]);
    for n in 0..20 {
        let message: Value = client
            .post(server.url(&format!("/v1/sessions/{sid}/messages")))
            .json(&json!({"role": "user", "parts": [{"type": "text", "text": format!("m{n}")}]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(message["id"].is_string());
        expected.insert(format!("evt_{}", n + 2));
    }
    // Deliveries are being attempted and refused when the server dies.
    let mut delivered: HashSet<String> = HashSet::new();
    receiver.answer(503).await;
    server.kill();
    // Attempts that reached the receiver before the kill: their answers go nowhere.
    let mut cut_off = 0;
    while let Ok((_, reply)) = receiver.requests.try_recv() {
        let _ = reply.send(503);
        cut_off += 1;
    }

    let server = Process::start(dir.path(), &args);
    let mut duplicates = 0;
    while delivered.len() < expected.len() {
        let got = receiver.answer(200).await;
        assert!(expected.contains(&got.id), "unexpected {}", got.id);
        if !delivered.insert(got.id) {
            duplicates += 1;
        }
    }
    eprintln!(
        "delivered {} events after kill -9 ({cut_off} attempts cut off by it), \
         {duplicates} delivered twice",
        delivered.len()
    );
    drop(server);
}

#[tokio::test]
async fn two_postgresql_instances_deliver_each_event_once() {
    let Some((a, b, _url, _dir)) =
        crate::scale::two_instances(|c| allow_loopback(c, "200ms,400ms")).await
    else {
        return;
    };
    let mut receiver = Receiver::start().await;
    let (id, secret) = register(&a, json!({"url": receiver.url()})).await;
    let session = b.create_session("/two", "t").await;
    let sid = session["id"].as_str().unwrap();
    for n in 0..40 {
        let app = if n % 2 == 0 { &a } else { &b };
        app.append(sid, "user", &format!("m{n}")).await;
    }
    let mut seen = HashSet::new();
    let mut requests = 0;
    while seen.len() < 41 {
        let got = receiver.answer(200).await;
        assert!(signed_with(&got, &secret));
        requests += 1;
        seen.insert(got.id);
    }
    for app in [&a, &b] {
        wait_for(app, &format!("/v1/webhooks/{id}"), "all recorded", |w| {
            w["deliveries"]["delivered"] == 41 && w["deliveries"]["pending"] == 0
        })
        .await;
    }
    // Nothing is pending any more, so nothing else can be in flight: any extra request
    // would be a second delivery of an event.
    while let Ok((_, reply)) = receiver.requests.try_recv() {
        let _ = reply.send(200);
        requests += 1;
    }
    assert_eq!(requests, 41, "each event once");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_internal_address_is_refused_again_at_delivery_inside_the_resolver() {
    // Registered while loopback was allowed; the server restarts without the allowance. The
    // name is resolved again at each attempt, and the guard refuses what it resolves to.
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start().await;
    let app = TestApp::spawn_in(dir.path(), |c| allow_loopback(c, "1h"), Router::new()).await;
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let (id, _) = register(&app, json!({"url": url, "events": ["session.created"]})).await;
    app.stop().await;

    let app = TestApp::spawn_in(
        dir.path(),
        |c| c.webhooks.poll_interval = Duration::from_millis(100),
        Router::new(),
    )
    .await;
    app.create_session("/rebind", "r").await;
    let deliveries = wait_for(
        &app,
        &format!("/v1/webhooks/{id}/deliveries"),
        "the attempt is refused",
        |d| d["items"][0]["attempts"] == 1,
    )
    .await;
    let error = deliveries["items"][0]["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused") && error.contains("loopback"),
        "{error}"
    );
    assert_eq!(deliveries["items"][0]["status"], "pending", "retried later");
    let detail = app.get_json(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(
        detail["circuit"]["consecutive_failures"], 0,
        "not the endpoint's fault"
    );
    assert!(receiver.requests.try_recv().is_err(), "nothing was sent");
    let metrics = app.metrics().await;
    assert!(metrics.contains("sessiond_webhook_refused_addresses_total{stage=\"deliver\"}"));
    app.stop().await;
}

#[tokio::test]
async fn an_ordered_endpoint_gets_one_event_at_a_time_in_seq_order() {
    let app = TestApp::spawn_configured(|c| allow_loopback(c, "100ms,100ms,100ms")).await;
    let mut receiver = Receiver::start().await;
    register(
        &app,
        json!({"url": receiver.url(), "events": ["session.created"], "ordered": true}),
    )
    .await;
    for n in 0..4 {
        app.create_session("/ordered", &format!("o{n}")).await;
    }
    let mut order = Vec::new();
    // The first fails: it is retried before anything after it goes out.
    let (first, reply) = receiver.next().await;
    assert!(
        receiver.requests.try_recv().is_err(),
        "one in flight at a time"
    );
    let _ = reply.send(500);
    order.push(first.json()["seq"].as_i64().unwrap());
    for _ in 0..4 {
        let got = receiver.answer(200).await;
        order.push(got.json()["seq"].as_i64().unwrap());
    }
    assert_eq!(order, vec![1, 1, 2, 3, 4]);
    app.stop().await;
}
