use axum::Router;
use axum::routing::get;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::error::ApiError;

use crate::helpers::{TestApp, assert_problem, raw_request};

#[tokio::test]
async fn unknown_fields_are_named() {
    let app = TestApp::spawn().await;
    let problem = assert_problem(
        app.post_json("/v1/sessions", &json!({"directory": "/d", "colour": "red"}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("colour"),
        "{problem}"
    );
}

#[tokio::test]
async fn wrong_types_name_the_field() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        (json!({"directory": 5}), "directory"),
        (json!({"directory": "/d", "title": ["x"]}), "title"),
        (json!({"directory": "/d", "parent_id": 7}), "parent_id"),
        (json!(["/d"]), "object"),
        (json!("just a string"), "object"),
    ] {
        let problem = assert_problem(
            app.post_json("/v1/sessions", &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().contains(field),
            "{body}: {problem}"
        );
    }
}

#[tokio::test]
async fn malformed_json_empty_bodies_and_trailing_garbage_are_400() {
    let app = TestApp::spawn().await;
    for body in [
        &b"{\"directory\": "[..],
        b"{'directory': '/d'}",
        b"",
        b"   ",
        b"{\"directory\": \"/d\"} trailing",
        b"{\"directory\": \"/d\"}{}",
    ] {
        let problem = assert_problem(
            app.post_raw("/v1/sessions", Some("application/json"), body.to_vec())
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("JSON") || detail.contains("empty"),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn invalid_utf8_is_400_with_the_offset() {
    let app = TestApp::spawn().await;
    let mut body = b"{\"directory\": \"/d".to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(b"\"}");
    let problem = assert_problem(
        app.post_raw("/v1/sessions", Some("application/json"), body)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("UTF-8") && detail.contains("17"),
        "{detail}"
    );
}

#[tokio::test]
async fn non_json_content_types_are_415() {
    let app = TestApp::spawn().await;
    let body = br#"{"directory": "/d"}"#.to_vec();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/json; charset=latin1"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let problem = assert_problem(
            app.post_raw("/v1/sessions", content_type, body.clone())
                .await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
        )
        .await;
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    for accepted in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=\"UTF-8\"",
        "application/merge-patch+json",
    ] {
        let response = app
            .post_raw("/v1/sessions", Some(accepted), body.clone())
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{accepted}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = TestApp::spawn_configured(|config| config.body_limit = 1024).await;
    let big = json!({"directory": "/d", "title": "x".repeat(2000)});
    assert_problem(
        app.post_json("/v1/sessions", &big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    // Also when the length is not announced up front (chunked).
    let body = big.to_string();
    let mut request = String::from(
        "POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for chunk in body.as_bytes().chunks(100) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        ));
    }
    request.push_str("0\r\n\r\n");
    let response = raw_request(app.addr, request.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");
    assert_eq!(
        app.post_json("/v1/sessions", &json!({"directory": "/d"}))
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = TestApp::spawn().await;
    assert_problem(
        app.get("/v2/sessions").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(app.get("/nope").await, StatusCode::NOT_FOUND, "not_found").await;
    let response = app
        .client
        .put(app.url("/v1/sessions"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "invalid_request").await;
    let response = app.delete("/v1/search").await;
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED, "invalid_request").await;
}

#[tokio::test]
async fn internal_errors_leak_nothing_and_carry_the_request_id() {
    let routes = Router::new().route(
        "/test/explode",
        get(|| async {
            Err::<(), _>(ApiError::Internal(anyhow::anyhow!(
                "SELECT secret FROM users WHERE path = '/var/lib/sessiond/sessiond.db'"
            )))
        }),
    );
    let routes = routes.route(
        "/test/panic",
        get(|| async {
            panic!("secret panic detail in /var/lib/sessiond");
            #[allow(unreachable_code)]
            ()
        }),
    );
    let app = TestApp::spawn_with(|_| {}, routes).await;
    let panicked = app.get("/test/panic").await;
    assert!(panicked.headers().contains_key("x-request-id"));
    let raw = panicked.text().await.unwrap();
    assert!(
        raw.contains("\"code\":\"internal\"") && !raw.contains("secret"),
        "{raw}"
    );
    // Counted under its route, as any other answer of it.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            r#"sessiond_http_requests_total{method="GET",route="/test/panic",status="500"} 1"#
        ),
        "{metrics}"
    );
    let response = app
        .client
        .get(app.url("/test/explode"))
        .header("x-request-id", "req-500")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-500");
    let raw = response.text().await.unwrap();
    let problem: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(problem["status"], 500);
    assert_eq!(problem["code"], "internal");
    for secret in ["SELECT", "secret", "/var/lib", "sessiond.db"] {
        assert!(!raw.contains(secret), "{raw}");
    }
}

#[tokio::test]
async fn query_strings_that_are_not_utf8_are_refused() {
    let app = TestApp::spawn().await;
    for query in [
        "/v1/search?q=%FF",
        "/v1/sessions?directory=%C3",
        "/v1/sessions?%FF=1",
    ] {
        assert_problem(
            app.get(query).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    // Well-formed escapes and `+` for space still work.
    let session = app.create_session("/a b/ü", "t").await;
    let found = app.get_json("/v1/sessions?directory=%2Fa+b%2F%C3%BC").await;
    assert_eq!(found["items"][0]["id"], session["id"]);
}

/// A shared buffer the test's log subscriber writes into.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn a_500_logs_its_cause_with_the_request_id() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    // This test's runtime has one thread: every task of the server logs through this.
    let _guard = tracing::subscriber::set_default(subscriber);
    let routes = Router::new().route(
        "/test/explode",
        get(|| async {
            Err::<(), _>(ApiError::Internal(
                anyhow::anyhow!("disk I/O error").context("committing the write batch"),
            ))
        }),
    );
    let app = TestApp::spawn_with(|_| {}, routes).await;
    let response = app
        .client
        .get(app.url("/test/explode"))
        .header("x-request-id", "req-log-500")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!response.text().await.unwrap().contains("disk"));
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("request failed"))
        .unwrap_or_else(|| panic!("no error line in {text}"));
    let entry: Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["level"], "ERROR");
    assert_eq!(entry["fields"]["request_id"], "req-log-500");
    assert_eq!(entry["fields"]["route"], "/test/explode");
    assert_eq!(
        entry["fields"]["error"], "committing the write batch: disk I/O error",
        "the whole cause chain"
    );
    // And the access line names the request too.
    assert!(
        text.lines()
            .any(|l| l.contains("\"request_id\":\"req-log-500\"") && l.contains("\"status\":500"))
    );
}

#[tokio::test]
async fn nul_characters_are_kept_or_refused_clearly_never_a_500() {
    let app = TestApp::spawn().await;
    // A title with NUL: SQLite keeps it, PostgreSQL's text cannot hold it (400, saying why).
    let titled = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/nul", "title": "a\u{0}b"}),
        )
        .await;
    match titled.status() {
        StatusCode::CREATED => {}
        StatusCode::BAD_REQUEST => {
            let problem: Value = titled.json().await.unwrap();
            assert!(
                problem["detail"].as_str().unwrap().contains("NUL"),
                "{problem}"
            );
        }
        other => panic!("{other}"),
    }
    // In message text it is always kept (the parts are stored as JSON, which escapes it).
    let id = app.create_session_id("/nul", "t").await;
    let message = app.append(&id, "user", "before\u{0}after words").await;
    let stored = app
        .get_json(&format!("/v1/messages/{}", message["id"].as_str().unwrap()))
        .await;
    assert_eq!(stored["parts"][0]["text"], "before\u{0}after words");
    let found = app.get_json("/v1/search?q=after").await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
    for query in [
        "/v1/search?q=a%00b",
        "/v1/sessions?directory=%2Fnul%00",
        "/v1/search?q=x&directory=%00",
    ] {
        let status = app.get(query).await.status();
        assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "{query}: {status}"
        );
    }
}
