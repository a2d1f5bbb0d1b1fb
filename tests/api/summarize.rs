use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

#[tokio::test]
async fn summary_extracts_sentences_about_the_main_topic() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    for text in [
        "The database migration failed on the users table. The weather is nice.",
        "Rerun the database migration after locking the users table.",
        "I ate a sandwich.",
        "The users table migration now passes, and the database is consistent.",
        "The migration of the database users table is done.",
    ] {
        app.append(&sid, "user", text).await;
    }
    let response = app
        .client
        .post(app.url(&format!("/v1/sessions/{sid}/summarize")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let summary: Value = response.json().await.unwrap();
    assert_eq!(summary["session_id"], sid.as_str());
    assert_eq!(summary["message_count"], 5);
    let sentences: Vec<&str> = summary["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(!sentences.is_empty());
    assert!(
        sentences
            .iter()
            .all(|s| s.contains("migration") || s.contains("database")),
        "{sentences:?}"
    );
    assert!(!summary["summary"].as_str().unwrap().contains("sandwich"));
    assert_eq!(summary["summary"], sentences.join(" "));
    assert_eq!(summary["summarized_messages"], 5);
}

#[tokio::test]
async fn a_message_over_the_text_budget_is_summarized_from_its_end() {
    let app = TestApp::spawn_configured(|config| config.summarize_max_bytes = 2000).await;
    let sid = app.create_session_id("/d", "s").await;
    app.append(
        &sid,
        "user",
        "An older message about deployments and rollbacks.",
    )
    .await;
    let long = "The cache invalidation bug corrupts the session list. ".repeat(200);
    app.append(&sid, "assistant", &long).await;
    let summary: Value = app
        .client
        .post(app.url(&format!("/v1/sessions/{sid}/summarize")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["message_count"], 2);
    assert_eq!(summary["summarized_messages"], 1);
    assert!(
        summary["summary"]
            .as_str()
            .unwrap()
            .contains("cache invalidation"),
        "{summary}"
    );
}

#[tokio::test]
async fn empty_and_unknown_sessions() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    let summary: Value = app
        .client
        .post(app.url(&format!("/v1/sessions/{sid}/summarize")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        summary,
        json!({"session_id": sid, "summary": "", "sentences": [], "message_count": 0, "summarized_messages": 0})
    );
    let response = app
        .client
        .post(app.url("/v1/sessions/ses_00000000000000000000000000/summarize"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
}

/// A flood of summaries runs on the bounded pool; `/health` requests sent meanwhile all finish
/// before most of the flood does (ordering, not wall-clock thresholds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_summaries_does_not_stall_other_requests() {
    let app = std::sync::Arc::new(
        TestApp::spawn_configured(|config| {
            config.summarize_workers = 1;
            config.summarize_queue = 1000;
        })
        .await,
    );
    let sid = app.create_session_id("/d", "big").await;
    let paragraph = "The scheduler retries failed jobs with exponential backoff. \
        Each worker leases a job, runs it, and reports the outcome to the queue. \
        When a lease expires, another worker picks the job up again. ";
    let text = paragraph.repeat(40);
    for _ in 0..30 {
        app.append(&sid, "assistant", &text).await;
    }

    let flood_started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..16 {
        let app = app.clone();
        let sid = sid.clone();
        flood.push(tokio::spawn(async move {
            let response = app
                .client
                .post(app.url(&format!("/v1/sessions/{sid}/summarize")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            flood_started.elapsed()
        }));
    }
    // Let the flood occupy the pool, then probe liveness.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut health = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(app.get("/health").await.status(), StatusCode::OK);
        health.push(flood_started.elapsed());
        let _ = started;
    }
    let mut finished = Vec::new();
    for task in flood {
        finished.push(task.await.unwrap());
    }
    finished.sort();
    let last_health = *health.iter().max().unwrap();
    let median_summary = finished[finished.len() / 2];
    assert!(
        last_health < median_summary,
        "every health check ({last_health:?}) should finish before half the summaries ({median_summary:?})"
    );
}

#[tokio::test]
async fn summaries_past_the_queue_bound_are_refused_with_retry_after() {
    let app = std::sync::Arc::new(
        TestApp::spawn_configured(|config| {
            config.summarize_workers = 1;
            config.summarize_queue = 0;
        })
        .await,
    );
    let sid = app.create_session_id("/d", "big").await;
    let text = "Workers lease jobs from the queue and report outcomes. ".repeat(200);
    for _ in 0..40 {
        app.append(&sid, "assistant", &text).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        let sid = sid.clone();
        tasks.push(tokio::spawn(async move {
            app.client
                .post(app.url(&format!("/v1/sessions/{sid}/summarize")))
                .send()
                .await
                .unwrap()
        }));
    }
    let mut refused = 0;
    let mut ok = 0;
    for task in tasks {
        let response = task.await.unwrap();
        match response.status() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(response.headers()["retry-after"], "1");
                assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1, "at least one summary runs");
    assert!(
        refused >= 1,
        "with no queue, concurrent summaries beyond the worker are refused"
    );
}
