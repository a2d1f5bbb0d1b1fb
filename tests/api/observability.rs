//! Metrics move as expected after known requests; the status page's stream; logs.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Process, TestApp};

/// The value of the first metric line that starts with `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn request_counters_and_histograms_move_by_exactly_the_requests_made() {
    // A route only this test uses: the recorder is shared by every server in the process.
    let routes = Router::new().route("/test/probe", get(|| async { "probe" }));
    let app = TestApp::spawn_with(|_| {}, routes).await;
    let series = r#"sessiond_http_requests_total{method="GET",route="/test/probe",status="200"}"#;
    let count = r#"sessiond_http_request_duration_seconds_count{method="GET",route="/test/probe"}"#;
    let before = scrape(&app).await;
    let (requests_before, observed_before) = (
        value(&before, series).unwrap_or(0.0),
        value(&before, count).unwrap_or(0.0),
    );
    for _ in 0..3 {
        assert_eq!(app.get("/test/probe").await.status(), StatusCode::OK);
    }
    let after = scrape(&app).await;
    assert_eq!(
        value(&after, series),
        Some(requests_before + 3.0),
        "{after}"
    );
    assert_eq!(value(&after, count), Some(observed_before + 3.0));
    let bucket = r#"sessiond_http_request_duration_seconds_bucket{method="GET",route="/test/probe",le="+Inf"}"#;
    assert_eq!(value(&after, bucket), Some(observed_before + 3.0));
    // Route templates, never raw ids.
    let session = app.create_session("/m", "m").await;
    let id = session["id"].as_str().unwrap();
    app.get(&format!("/v1/sessions/{id}")).await;
    let text = scrape(&app).await;
    assert!(text.contains(r#"route="/v1/sessions/{id}""#));
    assert!(!text.contains(id), "no id in any label");
    assert!(value(&text, "sessiond_http_requests_in_flight").is_some());
}

#[tokio::test]
async fn cache_counters_show_a_hit_after_a_repeated_read() {
    let app = TestApp::spawn().await;
    let session = app.create_session("/c", "c").await;
    let path = format!("/v1/sessions/{}", session["id"].as_str().unwrap());
    let before = scrape(&app).await;
    let hits = r#"sessiond_cache_hits_total{cache="responses"}"#;
    let misses = r#"sessiond_cache_misses_total{cache="responses"}"#;
    let (h0, m0) = (
        value(&before, hits).unwrap(),
        value(&before, misses).unwrap(),
    );
    app.get(&path).await;
    app.get(&path).await;
    let after = scrape(&app).await;
    assert_eq!(
        value(&after, misses),
        Some(m0 + 1.0),
        "the first read misses"
    );
    assert_eq!(value(&after, hits), Some(h0 + 1.0), "the second read hits");
    assert!(value(&after, r#"sessiond_cache_entries{cache="responses"}"#).unwrap() >= 1.0);
    assert!(value(&after, r#"sessiond_cache_bytes{cache="responses"}"#).unwrap() > 0.0);
}

#[tokio::test]
async fn event_stream_and_writer_metrics() {
    let app = TestApp::spawn().await;
    let mut stream = app.get("/v1/events").await;
    // Wait for the stream to be established (its first bytes).
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await;
    let session = app.create_session("/e", "e").await;
    app.append(session["id"].as_str().unwrap(), "user", "x")
        .await;
    let text = scrape(&app).await;
    assert_eq!(
        value(&text, r#"sessiond_event_clients{transport="sse"}"#),
        Some(1.0)
    );
    assert_eq!(value(&text, "sessiond_events_published_total"), Some(2.0));
    assert!(value(&text, "sessiond_events_delivered_total").unwrap() >= 1.0);
    assert_eq!(value(&text, "sessiond_event_log_head"), Some(2.0));
    assert!(value(&text, "sessiond_writer_batch_size_count").unwrap() >= 2.0);
    assert!(value(&text, "sessiond_writer_commit_seconds_count").unwrap() >= 2.0);
    assert!(value(&text, "sessiond_db_read_wait_seconds_count").unwrap() >= 1.0);
    assert!(value(&text, "sessiond_database_bytes").unwrap() > 0.0);
    assert!(value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&text, "process_open_fds").unwrap() > 0.0);
    assert!(value(&text, "process_cpu_seconds_total").is_some());
    assert_eq!(
        value(
            &text,
            &format!(
                "sessiond_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_and_uncompressed_bytes_are_counted() {
    // The byte counters have no route label and the recorder is shared by every server in
    // this test process: a server process of its own keeps the other tests' traffic out.
    let dir = tempfile::tempdir().unwrap();
    let server = tokio::task::block_in_place(|| Process::start(dir.path(), &[]));
    let client = reqwest::Client::new();
    for i in 0..30 {
        let created = client
            .post(server.url("/v1/sessions"))
            .json(&serde_json::json!({
                "directory": "/bytes",
                "title": format!("a long enough title for compression {i}"),
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let scrape = || async {
        let response = client.get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    };
    let before = scrape().await;
    let body = value(&before, "sessiond_http_response_body_bytes_total").unwrap();
    let sent = value(&before, "sessiond_http_response_sent_bytes_total").unwrap();
    let response = client
        .get(server.url("/v1/sessions?limit=30"))
        .header("accept-encoding", "zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "zstd");
    let compressed = response.bytes().await.unwrap().len() as f64;
    let after = scrape().await;
    let body_delta = value(&after, "sessiond_http_response_body_bytes_total").unwrap() - body;
    let sent_delta = value(&after, "sessiond_http_response_sent_bytes_total").unwrap() - sent;
    // The deltas include the first scrape's own body; the list dominates either way.
    assert!(
        body_delta > sent_delta,
        "before compression {body_delta} > after {sent_delta}"
    );
    assert!(sent_delta >= compressed);
    assert!(tokio::task::block_in_place(|| server.terminate()).success());
}

#[tokio::test]
async fn the_stats_stream_says_hello_then_a_sample_a_second() {
    let app = TestApp::spawn().await;
    app.create_session("/s", "s").await;
    let mut stream = app.get("/v1/stats").await;
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while text.matches("event: stats").count() < 2 {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(std::str::from_utf8(&bytes).unwrap()),
            _ => panic!("no stats in time: {text}"),
        }
    }
    assert!(text.starts_with("event: hello\n"), "{text}");
    let sample: Value = text
        .split("\n\n")
        .find(|frame| frame.starts_with("event: stats"))
        .and_then(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .unwrap();
    for field in [
        "requests_per_second",
        "p50_ms",
        "p99_ms",
        "in_flight",
        "event_clients",
        "database_bytes",
        "rss_bytes",
        "uptime_s",
    ] {
        assert!(sample[field].is_number(), "{field}: {sample}");
    }
    assert!(sample["event_clients"].as_u64().unwrap() == 0);
    assert!(sample["database_bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_status_page_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let page = app.get("/").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/v1/stats"));
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "src='http",
    ] {
        assert!(
            !html.contains(external),
            "nothing loaded from elsewhere: {external}"
        );
    }
}
