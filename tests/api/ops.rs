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

/// Every operation of the document: (path, method, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            out.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_describes_the_server_as_configured() {
    // The loopback default: open, no rate limits, so no security and no 401 or 429; 403 only
    // from the browser guards (a foreign Host or Origin), which spare `/health`.
    let open = TestApp::spawn().await;
    let doc = open.get_json("/openapi.json").await;
    assert!(doc["components"].get("securitySchemes").is_none(), "{doc}");
    assert!(doc.get("security").is_none());
    for (path, method, operation) in operations(&doc) {
        assert!(operation.get("security").is_none(), "{method} {path}");
        let responses = &operation["responses"];
        for status in ["401", "429"] {
            assert!(responses.get(status).is_none(), "{method} {path} {status}");
        }
        assert_eq!(
            responses.get("403").is_some(),
            path != "/health",
            "{method} {path} 403"
        );
        let shed = !["/health", "/metrics"].contains(&path.as_str());
        assert_eq!(responses.get("503").is_some(), shed, "{method} {path}");
        if path.contains('{') {
            assert!(responses.get("404").is_some(), "{method} {path}");
        }
        let has_body = operation.get("requestBody").is_some();
        for status in ["413", "415"] {
            assert_eq!(
                responses.get(status).is_some(),
                has_body,
                "{method} {path} {status}"
            );
        }
    }
    for (path, method) in [
        ("/v1/sessions", "get"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}/messages", "get"),
        ("/v1/messages/{id}", "get"),
        ("/v1/search", "get"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"]["304"].is_object(),
            "conditional {method} {path}"
        );
    }
    let ids: Vec<String> = operations(&doc)
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str().unwrap().to_owned())
        .collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "operation ids are unique: {ids:?}");

    // Auth and rate limiting on: bearer with the route's scope, except on the public routes.
    let secured = TestApp::spawn_configured(|config| {
        config.auth = sessiond::http::auth::AuthMode::Required;
        config.rate_limit = true;
    })
    .await;
    let doc = secured.get_json("/openapi.json").await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, method, operation) in operations(&doc) {
        let public = ["/health", "/ready", "/openapi.json", "/docs"].contains(&path.as_str());
        let responses = &operation["responses"];
        assert_eq!(
            operation.get("security").is_none(),
            public,
            "{method} {path}"
        );
        for status in ["401", "403"] {
            assert_eq!(
                responses.get(status).is_none(),
                public,
                "{method} {path} {status}"
            );
        }
        assert_eq!(
            responses.get("429").is_none(),
            path == "/health",
            "{method} {path}"
        );
    }
    assert_eq!(
        doc["paths"]["/v1/admin/keys"]["post"]["security"],
        serde_json::json!([{"bearer": ["admin"]}])
    );
    assert_eq!(
        doc["paths"]["/v1/sessions"]["get"]["security"],
        serde_json::json!([{"bearer": ["read"]}])
    );
    assert_eq!(
        doc["paths"]["/v1/sessions"]["post"]["security"],
        serde_json::json!([{"bearer": ["write"]}])
    );
}

/// The names an endpoint lists when refusing an unknown parameter are the ones the document
/// gives it: both come from the same struct.
#[tokio::test]
async fn documented_query_parameters_are_exactly_the_accepted_ones() {
    let app = TestApp::spawn().await;
    let session = app.create_session("/d", "t").await;
    let id = session["id"].as_str().unwrap();
    let doc = app.get_json("/openapi.json").await;
    for (path, request) in [
        ("/v1/sessions", "/v1/sessions?bogus=1".to_owned()),
        (
            "/v1/sessions/{id}/messages",
            format!("/v1/sessions/{id}/messages?bogus=1"),
        ),
        ("/v1/search", "/v1/search?q=x&bogus=1".to_owned()),
        ("/v1/events", "/v1/events?bogus=1".to_owned()),
        ("/v1/ws", "/v1/ws?bogus=1".to_owned()),
    ] {
        let mut documented: Vec<String> = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        documented.sort();
        let problem = crate::helpers::assert_problem(
            app.get(&request).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        let mut accepted: Vec<String> = detail
            .split_once("accepts: ")
            .unwrap_or_else(|| panic!("{path}: {detail}"))
            .1
            .split(", ")
            .map(str::to_owned)
            .collect();
        accepted.sort();
        assert_eq!(accepted, documented, "{path}: {detail}");
        assert!(detail.contains("`bogus`"), "{detail}");
    }
}

/// The `hello` event carries exactly the fields its schema declares (the latest sample's and
/// `history`).
#[tokio::test]
async fn the_stats_hello_event_is_what_the_document_declares() {
    let app = TestApp::spawn().await;
    let doc = app.get_json("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    let properties = |schema: &Value| -> Vec<String> {
        schema["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut declared = Vec::new();
    let mut required = Vec::new();
    for part in schemas["StatsHello"]["allOf"].as_array().unwrap() {
        let part = match part["$ref"].as_str() {
            Some(reference) => &schemas[reference.rsplit('/').next().unwrap()],
            None => part,
        };
        declared.extend(properties(part));
        required.extend(
            part["required"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| r.as_str().unwrap().to_owned()),
        );
    }
    declared.sort();

    let mut stream = app.get("/v1/stats").await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("\n\n") {
        match tokio::time::timeout_at(deadline, stream.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(std::str::from_utf8(&bytes).unwrap()),
            _ => panic!("no hello in time: {text}"),
        }
    }
    let hello: Value = text
        .strip_prefix("event: hello\n")
        .and_then(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .unwrap_or_else(|| panic!("{text}"));
    let mut sent: Vec<String> = hello.as_object().unwrap().keys().cloned().collect();
    sent.sort();
    assert_eq!(sent, declared);
    for field in required {
        assert!(hello.get(&field).is_some(), "{field} missing: {hello}");
    }
}
