//! The real binary: crash safety, signals, configuration, migrations, the data dir lock, seeding.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sessiond::storage::sqlite::{DATABASE_FILE, migrations};

use crate::helpers::{Process, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path(), &[]);
    let base = server.url("");
    let client = Client::new();
    let session: Value = client
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"directory": "/crash", "title": "before the crash"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();

    let acked_messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let unexpected = Arc::new(Mutex::new(Vec::<u16>::new()));
    let acked_sessions = Arc::new(Mutex::new(vec![sid.clone()]));
    let mut writers = Vec::new();
    for w in 0..8 {
        let client = client.clone();
        let base = base.clone();
        let sid = sid.clone();
        let acked_messages = acked_messages.clone();
        let acked_sessions = acked_sessions.clone();
        let unexpected = unexpected.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let result = if n % 5 == 0 {
                    client
                        .post(format!("{base}/v1/sessions"))
                        .json(&json!({"directory": "/crash", "title": format!("w{w} n{n}")}))
                        .send()
                        .await
                } else {
                    client
                        .post(format!("{base}/v1/sessions/{sid}/messages"))
                        .json(&json!({"role": "user", "parts": [{"type": "text", "text": format!("w{w} n{n}")}]}))
                        .send()
                        .await
                };
                // Once the server is killed requests fail: stop writing.
                let Ok(response) = result else { return };
                if response.status() != StatusCode::CREATED {
                    unexpected.lock().unwrap().push(response.status().as_u16());
                    return;
                }
                let Ok(body) = response.json::<Value>().await else { return };
                let id = body["id"].as_str().unwrap().to_owned();
                if n % 5 == 0 {
                    acked_sessions.lock().unwrap().push(id);
                } else {
                    acked_messages.lock().unwrap().push(id);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked_messages = acked_messages.lock().unwrap().clone();
    let acked_sessions = acked_sessions.lock().unwrap().clone();
    assert!(
        acked_messages.len() > 20,
        "the writers made progress before the kill"
    );
    assert!(
        unexpected.lock().unwrap().is_empty(),
        "every answer before the kill was a success: {:?}",
        unexpected.lock().unwrap()
    );

    let restarted = Process::start(dir.path(), &[]);
    let base = restarted.url("");
    for id in &acked_sessions {
        let response = client
            .get(format!("{base}/v1/sessions/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "acknowledged session {id} lost"
        );
    }
    let mut listed = HashSet::new();
    let mut url = format!("{base}/v1/sessions/{sid}/messages?limit=1000");
    loop {
        let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            listed.insert(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                url = format!("{base}/v1/sessions/{sid}/messages?limit=1000&cursor={cursor}")
            }
            None => break,
        }
    }
    for id in &acked_messages {
        assert!(listed.contains(id), "acknowledged message {id} lost");
    }
    // The session's counters agree with what is stored.
    let session: Value = client
        .get(format!("{base}/v1/sessions/{sid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        session["message_count"].as_u64().unwrap() as usize,
        listed.len()
    );
    // New writes keep ids increasing after the restart.
    let newest: Value = client
        .post(format!("{base}/v1/sessions/{sid}/messages"))
        .json(&json!({"role": "user", "parts": [{"type": "text", "text": "after restart"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let newest_id = newest["id"].as_str().unwrap();
    assert!(listed.iter().all(|id| id.as_str() < newest_id));
    let _ = restarted.terminate();
}

#[tokio::test]
async fn sigterm_drains_commits_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(dir.path(), &[]);
    let client = Client::new();
    let created: Value = client
        .post(server.url("/v1/sessions"))
        .json(&json!({"directory": "/term"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");

    let again = Process::start(dir.path(), &[]);
    let id = created["id"].as_str().unwrap();
    let response = client
        .get(again.url(&format!("/v1/sessions/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let status = again.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let routes: Router<sessiond::http::SharedState> = Router::new().route(
        "/test/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "done"
        }),
    );
    let app = TestApp::spawn_with(|_| {}, routes).await;
    let client = app.client.clone();
    let url = app.url("/test/slow");
    let addr = app.addr;
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.stop().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "done");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    Command::new(Process::binary())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run sessiond")
}

#[test]
fn bad_configuration_exits_non_zero_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (args, envs, needle) in [
        (
            vec!["serve", "--listen", "nonsense", "--data-dir", data],
            vec![],
            "listen (from --listen)",
        ),
        (
            vec!["serve", "--data-dir", data],
            vec![("SESSIOND_LISTEN", "host:port:x")],
            "listen (from SESSIOND_LISTEN)",
        ),
        (
            vec!["serve", "--data-dir", data, "--body-limit", "lots"],
            vec![],
            "body_limit",
        ),
        (
            vec!["serve", "--data-dir", data, "--log-format", "xml"],
            vec![],
            "log_format",
        ),
        (
            vec!["serve", "--config", "/nonexistent/sessiond.toml"],
            vec![],
            "config",
        ),
    ] {
        let output = run(&args, &envs);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }

    let file = dir.path().join("sessiond.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nunknown_key = 1\n").unwrap();
    let output = run(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown_key"));
}

#[tokio::test]
async fn flags_override_the_environment_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.toml");
    std::fs::write(&file, "listen = \"not an address\"\n").unwrap();
    // The file and the environment hold bad values, the flag a good one: the flag wins.
    let mut child = Command::new(Process::binary())
        .args([
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("SESSIOND_LISTEN", "also not an address")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(
        line.starts_with("sessiond listening on http://127.0.0.1:"),
        "{line}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn an_older_database_is_migrated_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DATABASE_FILE);
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        migrations::migrate_to(&mut conn, 1).unwrap();
        assert_eq!(migrations::current_version(&conn).unwrap(), 1);
        conn.execute_batch(
            "INSERT INTO sessions (id, directory, title, title_fold, parent_id, created_at, updated_at, archived_at, message_count)
             VALUES ('ses_01kaq3m0d8g7w2e5r1t9y3v6h0', '/old', 'From v1', 'from v1', NULL, 1763800000000, 1763800000000, NULL, 0);",
        )
        .unwrap();
    }
    let server = Process::start(dir.path(), &[]);
    let client = Client::new();
    let session: Value = client
        .get(server.url("/v1/sessions/ses_01kaq3m0d8g7w2e5r1t9y3v6h0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["title"], "From v1");
    // The newer schema works: writes (which also record events) succeed.
    let response = client
        .post(server.url("/v1/sessions/ses_01kaq3m0d8g7w2e5r1t9y3v6h0/messages"))
        .json(&json!({"role": "user", "parts": [{"type": "text", "text": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(server.terminate().success());
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(
        migrations::current_version(&conn).unwrap(),
        migrations::latest_version()
    );
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 1);
}

#[test]
fn a_newer_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DATABASE_FILE);
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        migrations::migrate(&mut conn).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA user_version = {}",
            migrations::latest_version() + 1
        ))
        .unwrap();
    }
    let output = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("newer than this sessiond binary supports"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_data_dir_serves_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Process::start(dir.path(), &[]);
    let output = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("in use by another sessiond"));
    assert!(first.terminate().success());
}

#[tokio::test]
async fn seed_fills_a_data_dir_that_the_server_then_serves() {
    let dir = tempfile::tempdir().unwrap();
    let database =
        crate::helpers::postgres_database_for(dir.path()).unwrap_or_else(|| "sqlite".to_owned());
    let output = run(
        &[
            "seed",
            "--database",
            &database,
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--sessions",
            "40",
            "--messages-per-session",
            "6",
            "--directories",
            "3",
        ],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("seeded 40 sessions and 240 messages")
    );

    let app = TestApp::spawn_in(dir.path(), |_| {}, Router::new()).await;
    let sessions = app.collect_pages("/v1/sessions?archived=all&limit=7").await;
    assert_eq!(sessions.len(), 40);
    let directories: HashSet<&str> = sessions
        .iter()
        .map(|s| s["directory"].as_str().unwrap())
        .collect();
    assert_eq!(directories.len(), 3);
    for session in &sessions {
        assert_eq!(session["message_count"], 6);
        assert!(session["updated_at"].as_i64() >= session["created_at"].as_i64());
    }
    let sid = sessions[0]["id"].as_str().unwrap();
    let messages = app
        .collect_pages(&format!("/v1/sessions/{sid}/messages"))
        .await;
    assert_eq!(messages.len(), 6);
    assert_eq!(
        messages.last().unwrap()["created_at"],
        sessions[0]["updated_at"]
    );
    let hits = app.get_json("/v1/search?q=the").await;
    assert!(!hits["items"].as_array().unwrap().is_empty());
    // Writes after seeding get newer ids and timestamps than the seeded data.
    let message = app.append(sid, "user", "fresh").await;
    assert!(message["created_at"].as_i64() >= sessions[0]["updated_at"].as_i64());
    app.stop().await;
}
