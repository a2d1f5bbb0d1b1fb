use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::TestApp;

#[tokio::test]
async fn health_is_ok_and_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let response = app.get("/health").await;
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!id.is_empty());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));

    // Every response gets a fresh id...
    let other = app.get("/health").await;
    assert_ne!(other.headers()["x-request-id"].to_str().unwrap(), id);
}

#[tokio::test]
async fn a_valid_incoming_request_id_is_echoed_and_a_hostile_one_replaced() {
    let app = TestApp::spawn().await;
    let echoed = app
        .client
        .get(app.url("/v1/sessions"))
        .header("x-request-id", "trace-123.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-123.abc");

    for hostile in ["a b", "<script>", &"z".repeat(200)] {
        let replaced = app
            .client
            .get(app.url("/nowhere"))
            .header("x-request-id", hostile)
            .send()
            .await
            .unwrap();
        let id = replaced.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, hostile);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}

#[tokio::test]
async fn ready_reports_the_database_check() {
    let app = TestApp::spawn().await;
    let body = app.get_json("/ready").await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["checks"]["database"]["status"], "ok");
    assert!(body["checks"]["database"]["latency_ms"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn openapi_document_describes_every_endpoint() {
    let app = TestApp::spawn().await;
    let doc = app.get_json("/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/health", &["get"][..]),
        ("/ready", &["get"]),
        ("/openapi.json", &["get"]),
        ("/docs", &["get"]),
        ("/v1/sessions", &["get", "post"]),
        ("/v1/sessions/{id}", &["get", "patch", "delete"]),
        ("/v1/sessions/{id}/messages", &["get", "post"]),
        ("/v1/sessions/{id}/summarize", &["post"]),
        ("/v1/messages/{id}", &["get"]),
        ("/v1/search", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths[path].get(*method).is_some(),
                "{method} {path} missing from the OpenAPI document"
            );
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "Session",
        "Message",
        "Problem",
        "SearchHit",
        "CreateSession",
        "CreateMessage",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
}

#[tokio::test]
async fn docs_page_and_its_assets_are_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let page = app.get("/docs").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN: {html}"
    );
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/init.js",
    ] {
        assert!(html.contains(asset), "{asset} not referenced");
        let response = app.get(asset).await;
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 20, "{asset} empty");
    }
    let init = app.get("/docs/init.js").await.text().await.unwrap();
    assert!(init.contains("/openapi.json"));
}

#[tokio::test]
async fn ready_reports_down_when_the_database_cannot_serve() {
    let app = TestApp::spawn().await;
    app.storage.close().await;
    let response = app.get("/ready").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "down");
    assert_eq!(body["checks"]["database"]["status"], "down");
    assert!(body["checks"]["database"]["error"].is_string());
    // Liveness does not depend on the database.
    assert_eq!(app.get("/health").await.status(), StatusCode::OK);
}
