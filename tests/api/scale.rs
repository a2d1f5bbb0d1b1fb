//! Several instances on one PostgreSQL database: events, caches and key revocations cross
//! instances. These need PostgreSQL whichever backend the rest of the suite runs on.

use std::time::{Duration, Instant};

use axum::Router;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sessiond::config::Database;
use sessiond::http::auth::AuthMode;

use crate::events::Sse;
use crate::helpers::{TestApp, postgres_database_at, postgres_required};

/// Two servers on one fresh database, each with its own data dir.
async fn two_instances(
    configure: impl Fn(&mut sessiond::config::Config) + Clone,
) -> Option<(TestApp, TestApp, String, tempfile::TempDir)> {
    let base = postgres_required()?;
    let dir = tempfile::tempdir().unwrap();
    let url = postgres_database_at(&base, dir.path());
    let mut apps = Vec::new();
    for name in ["a", "b"] {
        let data_dir = dir.path().join(name);
        std::fs::create_dir_all(&data_dir).unwrap();
        let url = url.clone();
        let configure = configure.clone();
        apps.push(
            TestApp::spawn_in(
                &data_dir,
                move |config| {
                    config.database = Database::Postgres(url);
                    configure(config);
                },
                Router::new(),
            )
            .await,
        );
    }
    let b = apps.pop().unwrap();
    let a = apps.pop().unwrap();
    Some((a, b, url, dir))
}

/// Reads `count` events from `sse`, failing after ten quiet seconds.
async fn read_events(sse: &mut Sse, count: usize) -> Vec<Value> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let event = sse
            .next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("only {} of {count} events arrived", events.len()));
        events.push(event.data);
    }
    events
}

#[tokio::test]
async fn writes_on_either_instance_reach_subscribers_of_both_once_and_in_order() {
    let Some((a, b, _url, _dir)) = two_instances(|_| {}).await else {
        return;
    };
    let mut on_a = Sse::open(&a, "/v1/events", None).await;
    let mut on_b = Sse::open(&b, "/v1/events", None).await;
    // Writers on both instances at once: their batches interleave on the shared log.
    let session_a = a.create_session("/x", "from a").await;
    let session_b = b.create_session("/x", "from b").await;
    let (ia, ib) = (
        session_a["id"].as_str().unwrap().to_owned(),
        session_b["id"].as_str().unwrap().to_owned(),
    );
    let writes = 40;
    let (left, right) = tokio::join!(
        async {
            for i in 0..writes {
                a.append(&ib, "user", &format!("a{i}")).await;
            }
        },
        async {
            for i in 0..writes {
                b.append(&ia, "user", &format!("b{i}")).await;
            }
        }
    );
    let ((), ()) = (left, right);
    let total = 2 + 2 * writes;
    let seen_a = read_events(&mut on_a, total).await;
    let seen_b = read_events(&mut on_b, total).await;
    for seen in [&seen_a, &seen_b] {
        let seqs: Vec<i64> = seen.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "every event once, in order: {seqs:?}"
        );
        assert_eq!(seqs.len(), total);
    }
    assert_eq!(seen_a, seen_b, "both instances deliver the same log");
    // Each writer's own messages keep their order within the log.
    let texts: Vec<String> = seen_a
        .iter()
        .filter(|e| e["type"] == "message.created" && e["session_id"] == ib.as_str())
        .map(|e| e["data"]["parts"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        (0..writes).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    assert!(on_a.next(Duration::from_millis(300)).await.is_none(), "nothing more");

    // Resuming on the other instance from the middle replays exactly the rest.
    let middle = seen_a[total / 2]["seq"].as_i64().unwrap();
    let mut resumed = Sse::open(&b, "/v1/events", Some(middle)).await;
    let rest = read_events(&mut resumed, total - total / 2 - 1).await;
    assert_eq!(rest.as_slice(), &seen_a[total / 2 + 1..]);
}

#[tokio::test]
async fn a_write_on_one_instance_is_read_fresh_on_the_other() {
    let Some((a, b, _url, _dir)) = two_instances(|_| {}).await else {
        return;
    };
    let session = a.create_session("/c", "before").await;
    let id = session["id"].as_str().unwrap();
    let path = format!("/v1/sessions/{id}");
    // Cached on b (the second read is a hit).
    for _ in 0..2 {
        assert_eq!(b.get_json(&path).await["title"], "before");
    }
    let listed = b.get_json("/v1/sessions?directory=/c").await;
    assert_eq!(listed["items"][0]["title"], "before");
    let response = a.patch_json(&path, &json!({"title": "after"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    // b hears of the change through the event feed and drops its cached copies.
    let started = Instant::now();
    loop {
        let single = b.get_json(&path).await;
        let listed = b.get_json("/v1/sessions?directory=/c").await;
        if single["title"] == "after" && listed["items"][0]["title"] == "after" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "b still serves the old title"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("b served the new title after {:?}", started.elapsed());
}

#[tokio::test]
async fn a_key_revoked_on_one_instance_stops_working_on_the_other() {
    let Some((a, b, url, _dir)) = two_instances(|c| c.auth = AuthMode::Required).await else {
        return;
    };
    let admin = {
        let storage = sessiond::cli::open_database(std::path::Path::new("."), &url)
            .await
            .unwrap();
        let secret = "sessiond_scaletestadminscaletestadminscaletestad";
        storage
            .create_key(
                sessiond::domain::keys::NewKey {
                    name: "admin".to_owned(),
                    scope: sessiond::domain::keys::Scope::Admin,
                    expires_at: None,
                },
                sessiond::domain::keys::hash(secret),
                "x".to_owned(),
            )
            .await
            .unwrap();
        storage.close().await;
        secret.to_owned()
    };
    let created: Value = a
        .client
        .post(a.url("/v1/admin/keys"))
        .bearer_auth(&admin)
        .json(&json!({"scopes": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, secret) = (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let status_on_b = || async {
        b.client
            .get(b.url("/v1/sessions"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap()
            .status()
    };
    // b knows the key now (and caches it).
    assert_eq!(status_on_b().await, StatusCode::OK);
    assert_eq!(status_on_b().await, StatusCode::OK);
    let revoked = a
        .client
        .delete(a.url(&format!("/v1/admin/keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    let started = Instant::now();
    while status_on_b().await != StatusCode::UNAUTHORIZED {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "b still accepts the revoked key"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("b refused the revoked key after {:?}", started.elapsed());
}
