//! Real-time events over SSE and WebSocket: order, exactly-once resume, filters, reset,
//! backpressure, keep-alive, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::TestApp;

/// One parsed SSE frame (comments are collected separately).
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// A minimal SSE reader over a streaming reqwest response.
pub struct Sse {
    pub response: reqwest::Response,
    buffer: String,
    comments: Vec<String>,
}

impl Sse {
    /// A reader of an already opened stream.
    pub fn from_response(response: reqwest::Response) -> Sse {
        assert_eq!(response.status(), StatusCode::OK);
        Sse {
            response,
            buffer: String::new(),
            comments: Vec::new(),
        }
    }

    pub async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> Sse {
        let mut request = app.client.get(app.url(path));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("connect");
        assert_eq!(response.status(), StatusCode::OK);
        Sse {
            response,
            buffer: String::new(),
            comments: Vec::new(),
        }
    }

    /// The next event, or `None` when the stream ends or `wait` passes.
    pub async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut event = String::from("message");
                let mut data = String::new();
                let mut is_event = false;
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                        is_event = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                        is_event = true;
                    }
                }
                if is_event {
                    let data = serde_json::from_str(&data).expect("data is JSON");
                    return Some(SseEvent { id, event, data });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                _ => return None,
            }
        }
    }

    async fn expect(&mut self) -> SseEvent {
        self.next(Duration::from_secs(10)).await.expect("an event")
    }
}

fn sid(session: &Value) -> String {
    session["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_change_is_one_event_in_order() {
    let app = TestApp::spawn().await;
    let mut sse = Sse::open(&app, "/v1/events", None).await;
    assert_eq!(sse.response.headers()["content-type"], "text/event-stream");
    assert_eq!(sse.response.headers()["cache-control"], "no-store");
    assert_eq!(sse.response.headers()["x-accel-buffering"], "no");
    assert!(sse.response.headers().get("content-encoding").is_none());

    let session = app.create_session("/e", "events").await;
    let id = sid(&session);
    let message = app.append(&id, "user", "hello").await;
    let patched: Value = app
        .patch_json(&format!("/v1/sessions/{id}"), &json!({"title": "renamed"}))
        .await
        .json()
        .await
        .unwrap();
    app.delete(&format!("/v1/sessions/{id}")).await;

    let mut seqs = Vec::new();
    for (kind, data) in [
        ("session.created", &session),
        ("message.created", &message),
        ("session.updated", &patched),
    ] {
        let event = sse.expect().await;
        assert_eq!(event.event, kind);
        assert_eq!(event.data["type"], kind);
        assert_eq!(event.data["session_id"], id.as_str());
        assert_eq!(event.data["seq"].as_i64(), event.id);
        assert!(event.data["at"].is_i64());
        assert_eq!(&event.data["data"], data, "{kind} carries the resource");
        seqs.push(event.id.unwrap());
    }
    let deleted = sse.expect().await;
    assert_eq!(deleted.event, "session.deleted");
    assert_eq!(deleted.data["data"]["id"], id.as_str());
    seqs.push(deleted.id.unwrap());
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test]
async fn resume_replays_exactly_what_was_missed() {
    let app = TestApp::spawn().await;
    let id = sid(&app.create_session("/e", "s").await);
    for i in 0..9 {
        app.append(&id, "user", &format!("m{i}")).await;
    }
    // 10 events: seq 1..=10.
    let mut from_three = Sse::open(&app, "/v1/events?since=3", None).await;
    for expected in 4..=10 {
        assert_eq!(from_three.expect().await.id, Some(expected));
    }
    app.append(&id, "user", "live").await;
    assert_eq!(from_three.expect().await.id, Some(11), "then live, no gap");

    // Last-Event-ID (what browsers send) wins over ?since.
    let mut resumed = Sse::open(&app, "/v1/events?since=1", Some(9)).await;
    assert_eq!(resumed.expect().await.id, Some(10));
    assert_eq!(resumed.expect().await.id, Some(11));
    assert!(
        resumed.next(Duration::from_millis(300)).await.is_none(),
        "no duplicate"
    );

    // Without a position: only what happens from now on.
    let mut live = Sse::open(&app, "/v1/events", None).await;
    assert!(live.next(Duration::from_millis(300)).await.is_none());
    app.append(&id, "user", "later").await;
    assert_eq!(live.expect().await.id, Some(12));

    for bad in ["since=-1", "since=x", "since=", "session_id=", "sort=1"] {
        let response = app.get(&format!("/v1/events?{bad}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_reconnects_while_others_write() {
    let app = Arc::new(TestApp::spawn().await);
    let sessions: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(sid(&app.create_session(&format!("/w{i}"), "w").await));
        }
        ids
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, session) in sessions.iter().enumerate() {
        let app = app.clone();
        let stop = stop.clone();
        let session = session.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                app.append(&session, "user", &format!("w{w} n{n}")).await;
                n += 1;
            }
        }));
    }
    // Read a few events per connection, then drop it and resume from the last id seen.
    let mut seen: Vec<i64> = Vec::new();
    let mut last = Some(4); // the four session.created events came before.
    for _ in 0..12 {
        let mut sse = Sse::open(&app, "/v1/events", last).await;
        for _ in 0..fastrand::usize(1..25) {
            let event = sse.expect().await;
            seen.push(event.id.unwrap());
            last = event.id;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    // Catch up to the end once writers stopped.
    let mut sse = Sse::open(&app, "/v1/events", last).await;
    while let Some(event) = sse.next(Duration::from_millis(500)).await {
        seen.push(event.id.unwrap());
    }
    let expected: Vec<i64> = (5..=*seen.last().unwrap()).collect();
    assert_eq!(seen, expected, "every event exactly once, in order");
    // And that is every event the log holds.
    let mut everything = Sse::open(&app, "/v1/events?since=0", None).await;
    let mut all = Vec::new();
    while let Some(event) = everything.next(Duration::from_millis(500)).await {
        all.push(event.id.unwrap());
    }
    assert_eq!(all.last(), seen.last());
}

#[tokio::test]
async fn filters_by_session_and_directory() {
    let app = TestApp::spawn().await;
    let a = sid(&app.create_session("/dir/a", "a").await);
    let b = sid(&app.create_session("/dir/b", "b").await);
    let mut only_a = Sse::open(&app, &format!("/v1/events?session_id={a}"), None).await;
    let mut only_b_dir = Sse::open(&app, "/v1/events?directory=/dir/b", None).await;
    let mut replay_a = Sse::open(&app, &format!("/v1/events?session_id={a}&since=0"), None).await;
    app.append(&a, "user", "to a").await;
    app.append(&b, "user", "to b").await;
    app.append(&a, "user", "to a again").await;

    for sse in [&mut only_a] {
        for text in ["to a", "to a again"] {
            let event = sse.expect().await;
            assert_eq!(event.data["session_id"], a.as_str());
            assert_eq!(event.data["data"]["parts"][0]["text"], text);
        }
        assert!(sse.next(Duration::from_millis(300)).await.is_none());
    }
    let event = only_b_dir.expect().await;
    assert_eq!(event.data["data"]["parts"][0]["text"], "to b");
    assert!(only_b_dir.next(Duration::from_millis(300)).await.is_none());
    // Replay is filtered too.
    assert_eq!(replay_a.expect().await.event, "session.created");
    for _ in 0..2 {
        assert_eq!(replay_a.expect().await.data["session_id"], a.as_str());
    }
    assert!(replay_a.next(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn a_position_outside_the_retained_log_gets_a_reset() {
    let app = TestApp::spawn_configured(|config| {
        config.event_retention_count = 5;
        config.event_prune_interval = Duration::from_millis(50);
    })
    .await;
    let id = sid(&app.create_session("/r", "r").await);
    for i in 0..14 {
        app.append(&id, "user", &format!("m{i}")).await;
    }
    // 15 events; pruning keeps the newest 5 (11..=15).
    let mut reset = None;
    for _ in 0..100 {
        let mut sse = Sse::open(&app, "/v1/events?since=2", None).await;
        let first = sse.expect().await;
        // Pruning runs every 50 ms: wait for the pass that saw all 15 events.
        if first.event == "reset" && first.data["oldest_seq"] == 11 {
            reset = Some((first, sse));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (event, mut sse) = reset.expect("pruning happened and since=2 got a reset");
    assert_eq!(event.data["type"], "reset");
    assert_eq!(event.id, Some(15));
    assert_eq!(event.data["seq"], 15);
    assert_eq!(event.data["oldest_seq"], 11);
    // Then the stream continues live from the head.
    app.append(&id, "user", "after reset").await;
    assert_eq!(sse.expect().await.id, Some(16));

    // A position still retained replays normally; one ahead of the log is a reset too.
    let mut ok = Sse::open(&app, "/v1/events?since=12", None).await;
    assert_eq!(ok.expect().await.id, Some(13));
    let mut ahead = Sse::open(&app, "/v1/events?since=999", None).await;
    assert_eq!(ahead.expect().await.event, "reset");
}

/// `sessiond_event_clients_lagged_total` from `/metrics`.
async fn lagged_clients(app: &TestApp) -> u64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("sessiond_event_clients_lagged_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Opens `/v1/events` on a raw socket and reads until the stream has started (so the client is
/// subscribed), then leaves the socket unread.
async fn raw_stream(app: &TestApp) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&head).contains(": connected") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the stream starts")
            .unwrap();
        assert!(n > 0, "the stream started");
        head.extend_from_slice(&buffer[..n]);
    }
    stream
}

/// Appends big messages until the server reports a lagged client; the number written. However
/// much the kernel buffers, a client that reads nothing falls behind at some point: the bound
/// only keeps a broken server from looping forever.
async fn write_until_a_client_lags(app: &TestApp, session: &str) -> usize {
    let big = "x".repeat(8 * 1024);
    let mut written = 0;
    while lagged_clients(app).await == 0 {
        assert!(written < 20_000, "no client lagged after {written} events");
        for _ in 0..50 {
            app.append(session, "user", &big).await;
        }
        written += 50;
    }
    written
}

/// Reads a raw socket to its end (EOF or reset); `None` if the server kept it open.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut sink = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&sink[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_and_others_get_everything() {
    let app = TestApp::spawn_configured(|config| {
        config.event_client_buffer = 64 * 1024;
    })
    .await;
    let id = sid(&app.create_session("/slow", "s").await);
    let mut slow = raw_stream(&app).await;
    let mut fast = Sse::open(&app, "/v1/events", None).await;
    // The fast client reads all along, up to the marker that ends the run.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(event) = fast.next(Duration::from_secs(30)).await {
            got.push(event.id.unwrap());
            if event.data["data"]["parts"][0]["text"] == "the end" {
                break;
            }
        }
        got
    });
    let written = write_until_a_client_lags(&app, &id).await;
    app.append(&id, "user", "the end").await;
    let got = reader.await.unwrap();
    assert_eq!(
        got.len(),
        written + 1,
        "the fast client received every event"
    );
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));

    // The slow one was cut off although it never read: its socket ends instead of hanging.
    let received = read_to_close(&mut slow)
        .await
        .expect("the server closed the lagging connection");
    let frames = String::from_utf8_lossy(&received)
        .matches("event: message.created")
        .count();
    assert!(frames < written, "it did not receive everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagged_client_that_reads_gets_the_notice_and_is_disconnected() {
    let app = TestApp::spawn_configured(|config| {
        config.event_client_buffer = 64 * 1024;
        // Longer than the test needs to start reading: the notice is never cut short here.
        config.event_lag_grace = Duration::from_secs(120);
    })
    .await;
    let id = sid(&app.create_session("/slow", "s").await);
    let mut slow = raw_stream(&app).await;
    write_until_a_client_lags(&app, &id).await;

    // Reading again, the client gets what was queued, then the notice, then the end: the server
    // closes the connection (no keep-alive), whatever the client does.
    let received = read_to_close(&mut slow)
        .await
        .expect("the server closed the connection after the notice");
    let text = String::from_utf8_lossy(&received);
    let notice = text.rfind("event: lagged").expect("the lagged notice");
    let after = &text[notice..];
    let data = after
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("the notice's data");
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(data["type"], "lagged");
    let resume = data["seq"].as_i64().unwrap();
    assert!(
        !after.contains("event: message.created"),
        "the notice is last"
    );
    // `seq` is the last event the client was sent: resuming from it misses nothing.
    let last_sent = text[..notice]
        .split("\n\n")
        .filter(|frame| frame.contains("event: message.created"))
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("id: ")))
        .filter_map(|v| v.trim().parse::<i64>().ok())
        .last()
        .expect("events came before the notice");
    assert_eq!(resume, last_sent);
}

#[tokio::test]
async fn silence_gets_keep_alive_comments() {
    let app = TestApp::spawn_configured(|config| {
        config.event_keepalive = Duration::from_millis(150);
    })
    .await;
    let mut sse = Sse::open(&app, "/v1/events", None).await;
    assert!(sse.next(Duration::from_millis(700)).await.is_none());
    let keep_alives = sse.comments.iter().filter(|c| *c == "keep-alive").count();
    assert!(keep_alives >= 2, "{:?}", sse.comments);
}

#[tokio::test]
async fn shutdown_ends_streams_cleanly() {
    let app = TestApp::spawn().await;
    let mut sse = Sse::open(&app, "/v1/events", None).await;
    app.stop().await;
    assert!(
        sse.next(Duration::from_secs(5)).await.is_none(),
        "the stream ended"
    );
    assert!(
        sse.comments.iter().any(|c| c == "server shutting down"),
        "{:?}",
        sse.comments
    );
}

async fn ws_connect(
    app: &TestApp,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/v1/ws{query}", app.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect")
        .0
}

async fn ws_json<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("ok");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn websocket_carries_the_same_events_and_resubscribes() {
    let app = TestApp::spawn().await;
    let a = sid(&app.create_session("/ws/a", "a").await);
    let b = sid(&app.create_session("/ws/b", "b").await);
    let mut ws = ws_connect(&app, "").await;
    app.append(&a, "user", "one").await;
    let event = ws_json(&mut ws).await;
    assert_eq!(event["type"], "message.created");
    assert_eq!(event["seq"], 3);
    assert_eq!(event["data"]["parts"][0]["text"], "one");

    // Replace the subscription: only b, replaying from the start of the log.
    ws.send(Message::text(
        json!({"type": "subscribe", "session_id": b, "since": 0}).to_string(),
    ))
    .await
    .unwrap();
    let ack = ws_json(&mut ws).await;
    assert_eq!(ack["type"], "subscribed");
    assert_eq!(ack["session_id"], b.as_str());
    let replayed = ws_json(&mut ws).await;
    assert_eq!(replayed["type"], "session.created");
    assert_eq!(replayed["session_id"], b.as_str());
    app.append(&a, "user", "not for us").await;
    app.append(&b, "user", "for us").await;
    let live = ws_json(&mut ws).await;
    assert_eq!(live["data"]["parts"][0]["text"], "for us");

    // Bad input gets an error message and the connection stays usable.
    ws.send(Message::text("{\"type\":\"unsubscribe\"}"))
        .await
        .unwrap();
    assert_eq!(ws_json(&mut ws).await["type"], "error");
    ws.send(Message::text("not json")).await.unwrap();
    assert_eq!(ws_json(&mut ws).await["type"], "error");
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(ws_json(&mut ws).await["type"], "error");
    app.append(&b, "user", "still here").await;
    assert_eq!(
        ws_json(&mut ws).await["data"]["parts"][0]["text"],
        "still here"
    );

    // The query string sets the first subscription.
    let mut filtered = ws_connect(&app, &format!("?session_id={a}&since=0")).await;
    assert_eq!(ws_json(&mut filtered).await["type"], "session.created");
    assert_eq!(
        ws_json(&mut filtered).await["data"]["parts"][0]["text"],
        "one"
    );

    // Not a WebSocket handshake: a problem, not a hang.
    let plain = app.get("/v1/ws").await;
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn websocket_pings_and_closes_unresponsive_clients() {
    let app = TestApp::spawn_configured(|config| {
        config.ws_ping_interval = Duration::from_millis(150);
    })
    .await;
    // A responsive client, read all along (reading lets tungstenite answer pings).
    let mut alive = ws_connect(&app, "").await;
    let (texts_tx, mut texts) = tokio::sync::mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(message)) = alive.next().await {
            match message {
                Message::Ping(_) => pings += 1,
                Message::Text(text) => {
                    let _ = texts_tx.send(text.to_string());
                }
                _ => {}
            }
        }
        pings
    });
    // An unresponsive one (a raw socket that completes the handshake and never answers) gets
    // a close frame with 1011 and the connection ends.
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    silent
        .write_all(
            b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut raw)).await;
    assert!(
        ended.is_ok(),
        "the server closed the unresponsive connection"
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // Unmasked close frame: 0x88, payload length, then the code 1011 (0x03F3).
    let close = raw
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xF3);
    assert!(
        close,
        "a close frame with code 1011 came before the end: {raw:?}"
    );
    let pings = raw.windows(2).filter(|w| w[0] == 0x89).count();
    assert!(pings >= 1, "it was pinged first");
    // The responsive client is still served.
    app.create_session("/alive", "a").await;
    let text = tokio::time::timeout(Duration::from_secs(5), texts.recv())
        .await
        .expect("in time")
        .expect("the responsive client is still connected");
    assert!(text.contains("session.created"), "{text}");
    app.stop().await;
    let pings = reader.await.unwrap();
    assert!(pings >= 2, "pinged every interval ({pings})");
}

#[tokio::test]
async fn websocket_clients_get_a_close_frame_at_shutdown() {
    let app = TestApp::spawn().await;
    let mut ws = ws_connect(&app, "").await;
    let stop = tokio::spawn(app.stop());
    let mut code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
    {
        if let Message::Close(Some(frame)) = message {
            code = Some(u16::from(frame.code));
            break;
        }
    }
    assert_eq!(code, Some(1001));
    stop.await.unwrap();
}

#[tokio::test]
async fn refused_writes_leave_no_hole_in_the_log() {
    let app = TestApp::spawn().await;
    let mut sse = Sse::open(&app, "/v1/events", None).await;
    let id = sid(&app.create_session("/holes", "h").await);
    let missing = "ses_00000000000000000000000000";
    for round in 0..3 {
        let refused = app
            .post_json(
                &format!("/v1/sessions/{missing}/messages"),
                &json!({"role": "user", "parts": [{"type": "text", "text": "lost"}]}),
            )
            .await;
        assert_eq!(refused.status(), StatusCode::NOT_FOUND);
        let patched = app
            .patch_json(&format!("/v1/sessions/{missing}"), &json!({"title": "x"}))
            .await;
        assert_eq!(patched.status(), StatusCode::NOT_FOUND);
        app.append(&id, "user", &format!("kept {round}")).await;
    }
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(sse.expect().await.id.unwrap());
    }
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    assert!(sse.next(Duration::from_millis(200)).await.is_none());
}
