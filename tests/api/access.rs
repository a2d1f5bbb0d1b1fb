//! API keys, scopes and rate limits, through HTTP and the `keys` command.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sessiond::http::auth::AuthMode;
use sessiond::ratelimit::Policy;

use crate::helpers::{Process, TestApp, assert_problem};

/// A server with auth required, and an admin key made with the `keys` command.
pub(crate) async fn secured(
    configure: impl FnOnce(&mut sessiond::config::Config),
) -> (TestApp, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // The database must exist for the command; the command creates it when no server runs.
    let admin = keys_cli(dir.path(), &["create", "--scope", "admin", "--name", "ops"]);
    let app = TestApp::spawn_in(
        dir.path(),
        |config| {
            config.auth = AuthMode::Required;
            configure(config);
        },
        axum::Router::new(),
    )
    .await;
    (app, admin, dir)
}

fn keys_cli(data_dir: &std::path::Path, args: &[&str]) -> String {
    let mut command = Command::new(Process::binary());
    command
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir);
    if let Some(url) = crate::helpers::postgres_database_for(data_dir) {
        command.args(["--database", &url]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn create_key(app: &TestApp, admin: &str, scopes: &[&str]) -> Value {
    let response = call(
        app,
        Method::POST,
        "/v1/admin/keys",
        Some(admin),
        Some(json!({"name": format!("{scopes:?}"), "scopes": scopes})),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

#[tokio::test]
async fn every_scope_against_every_endpoint_class() {
    let (app, admin, _dir) = secured(|_| {}).await;
    let read = create_key(&app, &admin, &["read"]).await;
    let write = create_key(&app, &admin, &["read", "write"]).await;
    assert_eq!(read["scope"], json!(["read"]));
    assert_eq!(write["scope"], json!(["read", "write"]));
    assert!(read["secret"].as_str().unwrap().starts_with("sessiond_"));
    let read = read["secret"].as_str().unwrap().to_owned();
    let write = write["secret"].as_str().unwrap().to_owned();

    let session: Value = call(
        &app,
        Method::POST,
        "/v1/sessions",
        Some(&write),
        Some(json!({"directory": "/a"})),
    )
    .await
    .json()
    .await
    .unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();
    let classes: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/v1/sessions".into(), None, "read"),
        (Method::GET, format!("/v1/sessions/{sid}"), None, "read"),
        (
            Method::GET,
            format!("/v1/sessions/{sid}/messages"),
            None,
            "read",
        ),
        (Method::GET, "/v1/search?q=x".into(), None, "read"),
        (Method::GET, "/metrics".into(), None, "read"),
        (
            Method::POST,
            format!("/v1/sessions/{sid}/summarize"),
            None,
            "read",
        ),
        (
            Method::POST,
            "/v1/sessions".into(),
            Some(json!({"directory": "/b"})),
            "write",
        ),
        (
            Method::PATCH,
            format!("/v1/sessions/{sid}"),
            Some(json!({"title": "t"})),
            "write",
        ),
        (
            Method::POST,
            format!("/v1/sessions/{sid}/messages"),
            Some(json!({"role": "user", "parts": [{"type": "text", "text": "x"}]})),
            "write",
        ),
        (Method::GET, "/v1/admin/keys".into(), None, "admin"),
    ];
    for (method, path, body, needs) in &classes {
        for (key, scope) in [
            (None, "none"),
            (Some(read.as_str()), "read"),
            (Some(write.as_str()), "write"),
            (Some(admin.as_str()), "admin"),
        ] {
            let response = call(&app, method.clone(), path, key, body.clone()).await;
            let allowed = match (scope, *needs) {
                ("none", _) => false,
                ("read", need) => need == "read",
                ("write", need) => need != "admin",
                _ => true,
            };
            let status = response.status();
            if allowed {
                assert!(
                    status.is_success(),
                    "{method} {path} with {scope}: {status}"
                );
            } else if scope == "none" {
                assert_eq!(
                    response.headers()["www-authenticate"],
                    "Bearer realm=\"sessiond\""
                );
                assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
            } else {
                let problem = assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
                assert!(
                    problem["detail"].as_str().unwrap().contains(needs),
                    "{problem}"
                );
            }
        }
    }
    // Public endpoints need nothing.
    for path in ["/health", "/ready", "/openapi.json", "/docs"] {
        assert_eq!(
            call(&app, Method::GET, path, None, None).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // Wrong keys and malformed headers are 401.
    for header in ["Bearer sessiond_nope", "Basic abc", "Bearer ", "sessiond_x"] {
        let response = app
            .client
            .get(app.url("/v1/sessions"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // A DELETE is a write.
    let response = call(
        &app,
        Method::DELETE,
        &format!("/v1/sessions/{sid}"),
        Some(&read),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = call(
        &app,
        Method::DELETE,
        &format!("/v1/sessions/{sid}"),
        Some(&write),
        None,
    )
    .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn keys_are_listed_without_secrets_and_revocation_takes_effect_at_once() {
    let (app, admin, _dir) = secured(|_| {}).await;
    let created = create_key(&app, &admin, &["write"]).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(&app, Method::GET, "/v1/sessions", Some(&secret), None)
            .await
            .status(),
        StatusCode::OK
    );

    let listed: Value = call(&app, Method::GET, "/v1/admin/keys", Some(&admin), None)
        .await
        .json()
        .await
        .unwrap();
    let text = listed.to_string();
    assert!(
        !text.contains(&secret) && !text.contains(&admin),
        "no secrets in listings"
    );
    let entry = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert_eq!(entry["hint"], &secret[..12]);
    assert_eq!(entry["revoked_at"], Value::Null);

    let revoked = call(
        &app,
        Method::DELETE,
        &format!("/v1/admin/keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    assert!(revoked.json::<Value>().await.unwrap()["revoked_at"].is_i64());
    // The very next request (the key was in the cache a moment ago).
    let problem = assert_problem(
        call(&app, Method::GET, "/v1/sessions", Some(&secret), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("revoked"));
    assert_problem(
        call(
            &app,
            Method::DELETE,
            "/v1/admin/keys/key_nope",
            Some(&admin),
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    for bad in [
        json!({"scopes": []}),
        json!({"scopes": ["root"]}),
        json!({"scopes": ["read"], "expires_in": 0}),
        json!({"scopes": ["read"], "expires_in": 3_155_760_001_u64}),
        json!({"scopes": ["read"], "expires_in": 1.5}),
        json!({"scopes": ["read"], "expires_in": -1}),
        json!({"scopes": ["read"], "name": null}),
        json!({"name": "x"}),
    ] {
        assert_problem(
            call(
                &app,
                Method::POST,
                "/v1/admin/keys",
                Some(&admin),
                Some(bad),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    // `null` is how a key shows "no expiry"; a whole number may be written `60.0`.
    for (body, expires) in [
        (json!({"scopes": ["read"], "expires_in": null}), false),
        (json!({"scopes": ["read"], "expires_in": 60.0}), true),
    ] {
        let response = call(
            &app,
            Method::POST,
            "/v1/admin/keys",
            Some(&admin),
            Some(body),
        )
        .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let key: Value = response.json().await.unwrap();
        assert_eq!(key["expires_at"].is_i64(), expires, "{key}");
    }
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    keys_cli(dir.path(), &["create", "--scope", "admin"]);
    // A key that expired a second ago, written as the command would have.
    let secret = "sessiond_expiredexpiredexpiredexpiredexpiredexp";
    {
        let database = crate::helpers::postgres_database_for(dir.path())
            .unwrap_or_else(|| "sqlite".to_owned());
        let database = sessiond::config::Database::parse(&database).unwrap();
        let storage = sessiond::cli::open_database(dir.path(), &database)
            .await
            .unwrap();
        let expired = sessiond::domain::keys::NewKey {
            name: "old".to_owned(),
            scope: sessiond::domain::keys::Scope::Read,
            expires_at: Some(sessiond::domain::wall_clock_ms() - 1_000),
        };
        storage
            .create_key(
                expired,
                sessiond::domain::keys::hash(secret),
                "x".to_owned(),
            )
            .await
            .unwrap();
        storage.close().await;
    }
    let app = TestApp::spawn_in(
        dir.path(),
        |c| c.auth = AuthMode::Required,
        axum::Router::new(),
    )
    .await;
    let problem = assert_problem(
        call(&app, Method::GET, "/v1/sessions", Some(secret), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("expired"),
        "{problem}"
    );
}

#[tokio::test]
async fn the_keys_command_creates_lists_and_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let secret = keys_cli(
        dir.path(),
        &[
            "create",
            "--scope",
            "read,write",
            "--name",
            "ci",
            "--expires",
            "30d",
        ],
    );
    assert!(secret.starts_with("sessiond_") && !secret.contains('\n'));
    let listed = keys_cli(dir.path(), &["list"]);
    assert!(
        listed.contains("ci") && listed.contains("write") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&secret));
    let id = listed.split('\t').next().unwrap().to_owned();
    // While a server runs on the data dir too.
    let app = TestApp::spawn_in(
        dir.path(),
        |c| c.auth = AuthMode::Required,
        axum::Router::new(),
    )
    .await;
    assert_eq!(
        call(&app, Method::GET, "/v1/sessions", Some(&secret), None)
            .await
            .status(),
        StatusCode::OK
    );
    keys_cli(dir.path(), &["revoke", &id]);
    assert!(keys_cli(dir.path(), &["list"]).contains("revoked"));
    let output = Command::new(Process::binary())
        .args(["keys", "create", "--scope", "superuser", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--scope"));
}

#[tokio::test]
async fn a_burst_then_429_with_retry_after_and_ratelimit_headers() {
    let (app, admin, _dir) = secured(|config| {
        config.rate_limit = true;
        config.rate_limits[1] = Policy::parse("6/m,3").unwrap(); // read: 1 per 10 s, burst 3
    })
    .await;
    // Limits are per key, not shared between keys.
    let other = create_key(&app, &admin, &["read"]).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    for remaining in [2, 1, 0] {
        let response = call(&app, Method::GET, "/v1/sessions", Some(&admin), None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["ratelimit-policy"], "\"read\";q=3;w=30");
        let header = response.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            header.starts_with(&format!("\"read\";r={remaining};t=")),
            "{header}"
        );
    }
    let limited = call(&app, Method::GET, "/v1/sessions", Some(&admin), None).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (9..=10).contains(&retry_after),
        "the next request is 10 s away: {retry_after}"
    );
    assert!(
        limited.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"read\";r=0;")
    );
    assert_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(
        call(&app, Method::GET, "/v1/sessions", Some(&other), None)
            .await
            .status(),
        StatusCode::OK
    );
    // Writes have their own budget, and /health is never limited.
    assert_eq!(
        call(
            &app,
            Method::POST,
            "/v1/sessions",
            Some(&admin),
            Some(json!({"directory": "/x"}))
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    for _ in 0..10 {
        let health = call(&app, Method::GET, "/health", None, None).await;
        assert_eq!(health.status(), StatusCode::OK);
        assert!(health.headers().get("ratelimit").is_none());
    }
    let text = call(&app, Method::GET, "/metrics", Some(&other), None)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("sessiond_rate_limited_total{tier=\"read\"}"));
}

#[tokio::test]
async fn unauthenticated_callers_are_limited_by_address_and_a_spoofed_forward_is_ignored() {
    let app = TestApp::spawn_configured(|config| {
        config.rate_limit = true;
        config.rate_limits[1] = Policy::parse("1/h,2").unwrap();
    })
    .await;
    for i in 0..2 {
        let response = app
            .client
            .get(app.url("/v1/sessions"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    // A different forwarded address is the same caller: the peer is not a trusted proxy.
    let spoofed = app
        .client
        .get(app.url("/v1/sessions"))
        .header("x-forwarded-for", "198.51.100.77")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::TOO_MANY_REQUESTS);

    // Behind a trusted proxy (here: loopback), the forwarded address is the caller.
    let proxied = TestApp::spawn_configured(|config| {
        config.rate_limit = true;
        config.rate_limits[1] = Policy::parse("1/h,1").unwrap();
        config.trusted_proxies = vec![sessiond::http::auth::Cidr::parse("127.0.0.1").unwrap()];
    })
    .await;
    for client in ["203.0.113.1", "203.0.113.2"] {
        let response = proxied
            .client
            .get(proxied.url("/v1/sessions"))
            .header("x-forwarded-for", client)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{client} has its own budget"
        );
    }
    let again = proxied
        .client
        .get(proxied.url("/v1/sessions"))
        .header("x-forwarded-for", "203.0.113.1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn keys_never_reach_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let admin = keys_cli(dir.path(), &["create", "--scope", "admin"]);
    let log_path = dir.path().join("server.log");
    let database =
        crate::helpers::postgres_database_for(dir.path()).unwrap_or_else(|| "sqlite".to_owned());
    let mut child = Command::new(Process::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--auth", "required"])
        .args(["--database", &database])
        .args(["--log-level", "debug", "--log-format", "json", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("sessiond listening on ")
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{base}/v1/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"scopes": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    for key in [secret.as_str(), admin.as_str(), "sessiond_wrongwrongwrong"] {
        client
            .get(format!("{base}/v1/sessions"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("\"route\":\"/v1/sessions\""),
        "the requests were logged: {text}"
    );
    for needle in [&secret[9..], &admin[9..], "wrongwrongwrong"] {
        assert!(!text.contains(needle), "a key reached the logs");
    }
}

#[test]
fn requiring_auth_without_keys_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(Process::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "required",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.starts_with("sessiond listening on"));
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sessiond keys create --scope admin"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_authenticates_with_its_api_key() {
    let (app, admin, _dir) = secured(|_| {}).await;
    let bench = |key: Option<&str>| {
        let mut command = Command::new(Process::binary());
        command
            .args(["bench", "--target", &app.url(""), "--scenario", "chat_list"])
            .args([
                "--duration",
                "1s",
                "--connections",
                "2",
                "--min-sessions",
                "3",
            ])
            .args(["--threshold", "errors==0"])
            .env_remove("SESSIOND_API_KEY");
        if let Some(key) = key {
            command.args(["--api-key", key]);
        }
        command.output().unwrap()
    };
    let refused = tokio::task::block_in_place(|| bench(None));
    assert!(!refused.status.success(), "ran without a key");
    let output = tokio::task::block_in_place(|| bench(Some(&admin)));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("errors==0") && stdout.contains("pass"),
        "{stdout}"
    );
    assert!(!stdout.contains(&admin), "the key was printed");
}
