//! What a web page the user has open can do to a loopback server: forged `Origin`s on the
//! WebSocket and on writes, forged `Host`s (DNS rebinding), and cross-site "simple" requests.
//! Every request goes through a real socket.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::http::auth::AuthMode;
use sessiond::http::origin::HostPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, assert_problem};

/// Sends a WebSocket handshake for `/v1/ws` and returns the status code and the whole head.
async fn upgrade(addr: SocketAddr, extra_headers: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n",
        addr.port()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    // Read the head (and a short problem body, which follows it in the same writes).
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buffer).await.expect("read");
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&received);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if received.len() >= end + 4 + length {
                    break;
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server answered the handshake");
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn a_foreign_origin_cannot_open_the_websocket() {
    let app = TestApp::spawn().await;
    let (status, head) = upgrade(app.addr, "Origin: http://evil.example\r\n").await;
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert!(head.contains("\"code\":\"forbidden\""), "{head}");
    assert!(
        head.contains("http://evil.example"),
        "the detail names it: {head}"
    );

    // A page from a localhost origin (the CORS default) and a program without an Origin get in.
    let (status, head) = upgrade(app.addr, "Origin: http://localhost:5173\r\n").await;
    assert_eq!(status, 101, "{head}");
    let (status, head) = upgrade(app.addr, "").await;
    assert_eq!(status, 101, "{head}");
    // `null` (sandboxed frames, file: pages) is not a localhost origin.
    let (status, head) = upgrade(app.addr, "Origin: null\r\n").await;
    assert_eq!(status, 403, "{head}");
}

#[tokio::test]
async fn the_websocket_origin_check_holds_with_auth_on_too() {
    let (app, admin, _dir) = crate::access::secured(|_| {}).await;
    let auth = format!("Authorization: Bearer {admin}\r\n");
    let (status, head) =
        upgrade(app.addr, &format!("{auth}Origin: https://evil.example\r\n")).await;
    assert_eq!(status, 403, "{head}");
    let (status, head) = upgrade(app.addr, &auth).await;
    assert_eq!(status, 101, "{head}");
}

#[tokio::test]
async fn configured_cors_origins_may_open_the_websocket() {
    let app = TestApp::spawn_configured(|config| {
        config.cors_origins =
            sessiond::http::CorsOrigins::List(vec![axum::http::HeaderValue::from_static(
                "https://app.example",
            )]);
    })
    .await;
    let (status, head) = upgrade(app.addr, "Origin: https://app.example\r\n").await;
    assert_eq!(status, 101, "{head}");
    let (status, head) = upgrade(app.addr, "Origin: http://localhost:3000\r\n").await;
    assert_eq!(status, 403, "localhost is not in the list: {head}");
}

async fn with_host(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    host: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("host", host);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

#[tokio::test]
async fn a_rebound_host_name_reaches_nothing_but_health() {
    let app = TestApp::spawn().await;
    let evil = format!("evil.example:{}", app.addr.port());
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    let body = assert_problem(
        with_host(&app, get.clone(), "/v1/sessions", &evil, None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("allowed_hosts"),
        "{body}"
    );
    let created = with_host(
        &app,
        post.clone(),
        "/v1/sessions",
        &evil,
        Some(json!({"directory": "/rebound"})),
    )
    .await;
    assert_problem(created, StatusCode::FORBIDDEN, "forbidden").await;
    let minted = with_host(
        &app,
        post.clone(),
        "/v1/admin/keys",
        &evil,
        Some(json!({"name": "stolen", "scopes": ["admin"]})),
    )
    .await;
    assert_problem(minted, StatusCode::FORBIDDEN, "forbidden").await;
    for path in [
        "/v1/admin/keys",
        "/v1/events",
        "/v1/search?q=x",
        "/metrics",
        "/",
    ] {
        let response = with_host(&app, get.clone(), path, &evil, None).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    // Refusals are counted under the route they were refused for.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"sessiond_http_requests_total{method="POST",route="/v1/admin/keys",status="403"} 1"#
        ),
        "{metrics}"
    );
    // Neither write happened.
    let sessions = app.get_json("/v1/sessions").await;
    assert_eq!(sessions["items"].as_array().unwrap().len(), 0);
    let keys = app.get_json("/v1/admin/keys").await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 0, "{keys}");

    // Liveness answers any host (orchestrators probe by address or service name).
    let health = with_host(&app, get.clone(), "/health", &evil, None).await;
    assert_eq!(health.status(), StatusCode::OK);

    // Local programs naming a loopback host, with any port, work.
    let port = app.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        "[::1]:1".to_owned(),
    ] {
        let response = with_host(&app, get.clone(), "/v1/sessions", &host, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{host}");
    }
    let local = with_host(
        &app,
        post,
        "/v1/sessions",
        &format!("127.0.0.1:{port}"),
        Some(json!({"directory": "/local"})),
    )
    .await;
    assert_eq!(local.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn allowed_hosts_let_a_named_host_in() {
    let app = TestApp::spawn_configured(|config| {
        config.allowed_hosts = HostPolicy::parse("sessiond.test, .corp.example").unwrap();
    })
    .await;
    let get = reqwest::Method::GET;
    for host in [
        "sessiond.test:4096",
        "sessiond.test",
        "api.corp.example",
        "corp.example:1",
    ] {
        let response = with_host(&app, get.clone(), "/v1/sessions", host, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{host}");
    }
    for host in [
        "evil.example",
        "sessiond.test.evil.example",
        "notcorp.example",
    ] {
        let response = with_host(&app, get.clone(), "/v1/sessions", host, None).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{host}");
    }
}

#[tokio::test]
async fn allowed_hosts_is_a_setting_like_any_other() {
    use sessiond::config::{Config, ServeArgs};
    let args = ServeArgs {
        allowed_hosts: Some("a.example,.b.example".to_owned()),
        ..ServeArgs::default()
    };
    let config = Config::resolve(&args, &|_| None).unwrap();
    assert!(config.allowed_hosts.allows("a.example:80"));
    assert!(config.allowed_hosts.allows("x.b.example"));
    let from_env = Config::resolve(&ServeArgs::default(), &|name| {
        (name == "SESSIOND_ALLOWED_HOSTS").then(|| "env.example".to_owned())
    })
    .unwrap();
    assert!(from_env.allowed_hosts.allows("env.example"));
    let bad = ServeArgs {
        allowed_hosts: Some("http://x.example/".to_owned()),
        ..ServeArgs::default()
    };
    let error = Config::resolve(&bad, &|_| None).unwrap_err().to_string();
    assert!(
        error.contains("allowed_hosts") || error.contains("allowed-hosts"),
        "{error}"
    );
}

#[tokio::test]
async fn with_auth_on_the_key_is_the_guard_not_the_host() {
    let (app, admin, _dir) = crate::access::secured(|config| {
        assert_eq!(config.auth, AuthMode::Required);
    })
    .await;
    let response = app
        .client
        .get(app.url("/v1/sessions"))
        .header("host", "sessiond.example.com")
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let anonymous = app
        .client
        .get(app.url("/v1/sessions"))
        .header("host", "sessiond.example.com")
        .send()
        .await
        .unwrap();
    assert_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn a_cross_site_simple_request_never_writes() {
    let app = TestApp::spawn().await;
    let body = r#"{"directory": "/csrf"}"#;
    // What a form or a no-cors fetch from another site sends: text/plain, with its Origin.
    let forged = app
        .client
        .post(app.url("/v1/sessions"))
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(forged, StatusCode::FORBIDDEN, "forbidden").await;
    // Even with a JSON type (which a page cannot send without a preflight CORS refuses).
    let json_typed = app
        .client
        .post(app.url("/v1/sessions"))
        .header("content-type", "application/json")
        .header("origin", "https://evil.example")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(json_typed, StatusCode::FORBIDDEN, "forbidden").await;
    // A body-less POST is a simple request too.
    let summarize = app
        .client
        .post(app.url("/v1/sessions/ses_nope/summarize"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_problem(summarize, StatusCode::FORBIDDEN, "forbidden").await;
    // Without an Origin the type alone refuses it.
    let plain = app
        .client
        .post(app.url("/v1/sessions"))
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(plain, StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request").await;
    let sessions = app.get_json("/v1/sessions").await;
    assert_eq!(sessions["items"].as_array().unwrap().len(), 0, "{sessions}");

    // A page from an allowed origin writes (with the JSON type CORS preflights).
    let allowed = app
        .client
        .post(app.url("/v1/sessions"))
        .header("content-type", "application/json")
        .header("origin", "http://localhost:5173")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::CREATED);
}
