//! The HTTP performance layer: compression, conditional GET, the read cache, limits and CORS.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, assert_problem, raw_request};

async fn fill(app: &TestApp, sessions: usize) {
    for i in 0..sessions {
        app.create_session(
            "/perf",
            &format!("a session with a reasonably long title {i}"),
        )
        .await;
    }
}

fn decode(coding: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "zstd" => out = zstd::decode_all(body).unwrap(),
        "br" => {
            brotli::Decompressor::new(body, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "gzip" => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
        }
        other => panic!("unexpected coding {other}"),
    }
    out
}

/// Every value of header `name`, in order.
fn header_values(response: &reqwest::Response, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn negotiates_zstd_br_and_gzip_by_q_value() {
    let app = TestApp::spawn().await;
    fill(&app, 30).await;
    let identity = get_with(&app, "/v1/sessions?limit=30", &[]).await;
    assert!(identity.headers().get("content-encoding").is_none());
    assert!(
        identity.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("accept-encoding"),
        "Vary on identity responses too"
    );
    let plain = identity.bytes().await.unwrap();
    assert!(plain.len() > 1024);

    for (accept, expected) in [
        ("zstd", Some("zstd")),
        ("br", Some("br")),
        ("gzip", Some("gzip")),
        ("gzip, br, zstd", Some("zstd")),
        ("zstd;q=0.5, gzip;q=1.0", Some("gzip")),
        ("br;q=0.9, gzip;q=0.8, zstd;q=0.1", Some("br")),
        ("zstd;q=0", None),
        ("identity", None),
        ("deflate", None),
    ] {
        let response = get_with(
            &app,
            "/v1/sessions?limit=30",
            &[("accept-encoding", accept)],
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let coding = response
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(coding.as_deref(), expected, "Accept-Encoding: {accept}");
        assert!(
            response.headers()["vary"]
                .to_str()
                .unwrap()
                .contains("accept-encoding")
        );
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        let body = response.bytes().await.unwrap();
        match expected {
            Some(coding) => {
                assert!(body.len() < plain.len(), "{coding} is smaller");
                assert_eq!(
                    decode(coding, &body),
                    plain.to_vec(),
                    "{coding} round-trips"
                );
                assert!(etag.ends_with(&format!("-{coding}\"")), "{etag}");
            }
            None => assert_eq!(body, plain),
        }
    }
}

#[tokio::test]
async fn small_bodies_and_event_streams_are_never_compressed() {
    let app = TestApp::spawn().await;
    let health = get_with(&app, "/health", &[("accept-encoding", "zstd, br, gzip")]).await;
    assert!(health.headers().get("content-encoding").is_none());
    let session = app.create_session("/small", "s").await;
    let small = get_with(
        &app,
        &format!("/v1/sessions/{}", session["id"].as_str().unwrap()),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert!(
        small.headers().get("content-encoding").is_none(),
        "under 1 KiB"
    );
    let mut events = get_with(&app, "/v1/events?since=0", &[("accept-encoding", "gzip")]).await;
    assert!(events.headers().get("content-encoding").is_none());
    let first = tokio::time::timeout(Duration::from_secs(5), events.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("retry:"));
}

#[tokio::test]
async fn conditional_get_of_a_session_and_its_invalidation() {
    let app = TestApp::spawn().await;
    let session = app.create_session("/etag", "before").await;
    let path = format!("/v1/sessions/{}", session["id"].as_str().unwrap());
    let first = app.get(&path).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "a strong ETag: {etag}"
    );

    let not_modified = get_with(&app, &path, &[("if-none-match", &etag)]).await;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert!(
        not_modified.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("accept-encoding")
    );
    assert!(not_modified.bytes().await.unwrap().is_empty());

    // Any change (here twice within a millisecond, which timestamps cannot tell apart)
    // invalidates the tag, and the new representation is served at once.
    for title in ["first", "second"] {
        app.patch_json(&path, &json!({"title": title})).await;
        let changed = get_with(&app, &path, &[("if-none-match", &etag)]).await;
        assert_eq!(changed.status(), StatusCode::OK);
        assert_ne!(changed.headers()["etag"], etag.as_str());
        assert_eq!(changed.json::<Value>().await.unwrap()["title"], title);
    }
    // A list of tags, weak comparison, and `*`.
    let current = app.get(&path).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    for header in [
        format!("\"nope\", {current}"),
        format!("W/{current}"),
        "*".to_owned(),
    ] {
        let response = get_with(&app, &path, &[("if-none-match", &header)]).await;
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{header}");
    }
}

#[tokio::test]
async fn conditional_get_of_lists_follows_every_write() {
    let app = TestApp::spawn().await;
    fill(&app, 3).await;
    let sid = app.create_session_id("/lists", "s").await;
    app.append(&sid, "user", "hello").await;
    for path in [
        "/v1/sessions?limit=10".to_owned(),
        format!("/v1/sessions/{sid}/messages"),
        "/v1/search?q=hello".to_owned(),
    ] {
        let etag = app.get(&path).await.headers()["etag"]
            .to_str()
            .unwrap()
            .to_owned();
        let again = get_with(&app, &path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        // The same client writes, then revalidates: never a stale 304.
        app.append(&sid, "user", "hello again").await;
        let after = get_with(&app, &path, &[("if-none-match", &etag)]).await;
        assert_eq!(after.status(), StatusCode::OK, "{path}");
        assert_ne!(after.headers()["etag"], etag.as_str());
    }
    // A compressed representation's tag also validates the identity request, and vice versa.
    fill(&app, 20).await;
    let zstd = get_with(
        &app,
        "/v1/sessions?limit=30",
        &[("accept-encoding", "zstd")],
    )
    .await;
    let tag = zstd.headers()["etag"].to_str().unwrap().to_owned();
    assert!(tag.ends_with("-zstd\""));
    let revalidated = get_with(&app, "/v1/sessions?limit=30", &[("if-none-match", &tag)]).await;
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.headers()["etag"], tag.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_never_lag_the_clients_own_writes() {
    let app = Arc::new(TestApp::spawn().await);
    let sid = app.create_session_id("/ryw", "t0").await;
    let path = format!("/v1/sessions/{sid}");
    let messages = format!("/v1/sessions/{sid}/messages?limit=1000");
    // Others keep reading (and so re-filling the cache) meanwhile.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let app = app.clone();
            let path = path.clone();
            let messages = messages.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    app.get(&path).await;
                    app.get(&messages).await;
                }
            })
        })
        .collect();
    for i in 1..=60 {
        let title = format!("t{i}");
        app.patch_json(&path, &json!({"title": title})).await;
        assert_eq!(app.get_json(&path).await["title"], title.as_str());
        app.append(&sid, "user", &format!("m{i}")).await;
        let listed = app.get_json(&messages).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), i);
        assert_eq!(app.get_json(&path).await["message_count"], i);
    }
    for reader in readers {
        reader.await.unwrap();
    }
}

fn slow_routes() -> Router<sessiond::http::SharedState> {
    Router::new().route(
        "/test/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            "slow"
        }),
    )
}

#[tokio::test]
async fn a_request_over_the_timeout_gets_503_timeout() {
    let app = TestApp::spawn_with(
        |config| config.request_timeout = Duration::from_millis(200),
        slow_routes(),
    )
    .await;
    let started = std::time::Instant::now();
    let problem = assert_problem(
        app.get("/test/slow").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("timeout"));
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "answered at the timeout, not after the handler"
    );
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_concurrency_limit_is_shed_at_once() {
    let app =
        Arc::new(TestApp::spawn_with(|config| config.max_concurrency = 2, slow_routes()).await);
    let mut burst = Vec::new();
    for _ in 0..10 {
        let app = app.clone();
        burst.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let response = app.get("/test/slow").await;
            let status = response.status();
            let retry_after = response.headers().get("retry-after").cloned();
            let body: Option<Value> = response.json().await.ok();
            (status, retry_after, body, started.elapsed())
        }));
    }
    // Liveness is never shed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
    let mut shed = 0;
    let mut served = 0;
    for task in burst {
        let (status, retry_after, body, elapsed) = task.await.unwrap();
        match status {
            StatusCode::OK => served += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                shed += 1;
                assert_eq!(retry_after.unwrap(), "1");
                assert_eq!(body.unwrap()["code"], "overloaded");
                assert!(
                    elapsed < Duration::from_millis(700),
                    "shed at once, not queued"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(served >= 2, "{served}");
    assert!(shed >= 5, "{shed}");
}

#[tokio::test]
async fn a_slowloris_connection_is_closed() {
    let app = TestApp::spawn_configured(|config| {
        config.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Dribble a header byte every 100 ms: the head never completes.
    let mut closed = false;
    for _ in 0..30 {
        if stream.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buffer = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // A 408 may precede the close; keep reading until it closes.
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the server closed the connection");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A normal client is unaffected.
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let app = TestApp::spawn().await;
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let response = raw_request(app.addr, request.as_bytes()).await;
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "{}",
        &response[..response.len().min(200)]
    );
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_with_503() {
    let app = TestApp::spawn_configured(|config| config.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 512];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(
            std::str::from_utf8(&buffer[..n])
                .unwrap()
                .starts_with("HTTP/1.1 200")
        );
        held.push(stream);
    }
    let refused = raw_request(app.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("\"code\":\"overloaded\""));
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn cors_preflight_and_headers_on_errors_and_304() {
    let app = TestApp::spawn().await;
    let origin = "http://localhost:5173";
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/sessions/ses_x"))
        .header("origin", origin)
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "content-type, if-none-match",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin);
    let methods = preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("PATCH"), "{methods}");
    assert!(preflight.headers().contains_key("access-control-max-age"));

    let session = app.create_session("/cors", "c").await;
    let path = format!("/v1/sessions/{}", session["id"].as_str().unwrap());
    let first = get_with(&app, &path, &[("origin", origin)]).await;
    assert_eq!(first.headers()["access-control-allow-origin"], origin);
    let exposed = first.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("x-request-id"),
        "{exposed}"
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let cached = get_with(&app, &path, &[("origin", origin), ("if-none-match", &etag)]).await;
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        cached.headers()["access-control-allow-origin"],
        origin,
        "CORS on 304"
    );
    let vary: Vec<String> = cached
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(vary.iter().any(|v| v.contains("origin")), "{vary:?}");
    assert!(
        vary.iter().any(|v| v.contains("accept-encoding")),
        "{vary:?}"
    );
    let missing = get_with(&app, "/v1/sessions/ses_nope", &[("origin", origin)]).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers()["access-control-allow-origin"],
        origin,
        "CORS on errors"
    );

    // Other origins are not allowed by default.
    let foreign = get_with(&app, &path, &[("origin", "https://evil.example")]).await;
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

/// Responses to requests without an `Origin` take the CORS layer's headers from values made
/// once; they must be the ones the layer gives a browser's request, but the allowed origin.
#[tokio::test]
async fn cors_headers_are_the_same_with_and_without_an_origin() {
    let app = TestApp::spawn().await;
    let session = app.create_session("/cors", "same").await;
    let path = format!("/v1/sessions/{}", session["id"].as_str().unwrap());
    for (path, accept) in [
        ("/health", None),
        (path.as_str(), None),
        (path.as_str(), Some("gzip")),
    ] {
        let mut plain_headers = vec![];
        if let Some(accept) = accept {
            plain_headers.push(("accept-encoding", accept));
        }
        let mut browser_headers = plain_headers.clone();
        browser_headers.push(("origin", "http://localhost:5173"));
        let plain = get_with(&app, path, &plain_headers).await;
        let browser = get_with(&app, path, &browser_headers).await;
        assert_eq!(plain.status(), StatusCode::OK);
        for name in ["vary", "access-control-expose-headers"] {
            let expected = header_values(&browser, name);
            assert!(!expected.is_empty(), "{name} on {path}");
            assert_eq!(header_values(&plain, name), expected, "{name} on {path}");
        }
        assert!(plain.headers().get("access-control-allow-origin").is_none());
        assert_eq!(
            browser.headers()["access-control-allow-origin"],
            "http://localhost:5173"
        );
    }
    // A preflight is answered before routing, and counted as one.
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url(&path))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "PATCH")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"sessiond_http_requests_total{method="OPTIONS",route="preflight",status="200"}"#
        ),
        "{metrics}"
    );
}

/// A HEAD answers with the headers the GET would get, compression and validators included,
/// and no body.
#[tokio::test]
async fn head_gets_the_headers_of_get() {
    let app = TestApp::spawn().await;
    fill(&app, 30).await;
    for accept in ["identity", "gzip", "zstd"] {
        let get = get_with(
            &app,
            "/v1/sessions?limit=30",
            &[("accept-encoding", accept)],
        )
        .await;
        let head = app
            .client
            .head(app.url("/v1/sessions?limit=30"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        for name in [
            "content-type",
            "content-encoding",
            "content-length",
            "etag",
            "vary",
            "cache-control",
            "access-control-expose-headers",
        ] {
            assert_eq!(
                header_values(&head, name),
                header_values(&get, name),
                "{name} with {accept}"
            );
        }
        if accept != "identity" {
            assert_eq!(head.headers()["content-encoding"], accept);
        }
        assert!(head.bytes().await.unwrap().is_empty());
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"sessiond_http_requests_total{method="HEAD",route="/v1/sessions",status="200"} 3"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn cors_origins_are_configurable() {
    let app = TestApp::spawn_configured(|config| {
        config.cors_origins =
            sessiond::http::CorsOrigins::List(vec![axum::http::HeaderValue::from_static(
                "https://app.example",
            )]);
    })
    .await;
    let allowed = get_with(&app, "/health", &[("origin", "https://app.example")]).await;
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let local = get_with(&app, "/health", &[("origin", "http://localhost:3000")]).await;
    assert!(local.headers().get("access-control-allow-origin").is_none());
}
