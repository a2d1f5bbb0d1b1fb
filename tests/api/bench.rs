//! A short smoke run of `sessiond bench` against a server the test starts, so the load
//! generator keeps working. No timing assertions: only that it runs, measures and reports.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{Process, TestApp};

fn bench(app: &TestApp, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let output = Command::new(Process::binary())
        .args(["bench", "--target", &app.url("")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sessiond bench");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_run_writes_json_and_html() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("health.json");
    let html = dir.path().join("health.html");
    let (status, stdout, stderr) = tokio::task::block_in_place(|| {
        bench(
            &app,
            &[
                "--scenario",
                "health",
                "--duration",
                "2s",
                "--rate",
                "200",
                "--json",
                json.to_str().unwrap(),
                "--html",
                html.to_str().unwrap(),
                "--threshold",
                "errors==0",
            ],
        )
    });
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("health") && stdout.contains("p99"),
        "{stdout}"
    );
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(result["scenario"], "health");
    assert_eq!(result["model"], "open");
    assert!(result["requests"].as_u64().unwrap() > 100);
    assert!(result["throughput"].as_f64().unwrap() > 0.0);
    for p in ["p50", "p90", "p99", "p999", "max"] {
        assert!(result["latency_ms"][p].as_f64().unwrap() > 0.0, "{p}");
    }
    assert_eq!(result["errors"]["total"], 0);
    assert!(!result["timeline"].as_array().unwrap().is_empty());
    assert_eq!(result["thresholds"][0]["passed"], true);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("\"scenario\":\"health\""));
    assert!(!page.contains("/*BENCH_DATA*/null"));
    assert!(!page.contains("http://cdn") && !page.contains("https://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_run_touches_every_endpoint_without_errors_and_compares() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.json");
    let args = [
        "--scenario",
        "mixed",
        "--duration",
        "3s",
        "--connections",
        "4",
        "--min-sessions",
        "20",
        "--json",
    ];
    let (status, stdout, stderr) = tokio::task::block_in_place(|| {
        bench(&app, &[&args[..], &[first.to_str().unwrap()]].concat())
    });
    assert!(status.success(), "{stdout}\n{stderr}");
    let result: Value = serde_json::from_str(&std::fs::read_to_string(&first).unwrap()).unwrap();
    assert_eq!(result["errors"]["total"], 0, "{result}");
    let operations = result["operations"].as_object().unwrap();
    for op in [
        "list_sessions",
        "list_messages",
        "get_session",
        "append_message",
    ] {
        assert!(
            operations.contains_key(op),
            "{op} never ran: {operations:?}"
        );
    }
    // The data the bench needed was created through the API.
    let sessions = app.get_json("/v1/sessions?limit=1000&archived=all").await;
    assert!(sessions["items"].as_array().unwrap().len() >= 20);

    let (status, stdout, _) = tokio::task::block_in_place(|| {
        bench(
            &app,
            &[
                "--scenario",
                "chat_list",
                "--duration",
                "1s",
                "--connections",
                "2",
                "--compare",
                first.to_str().unwrap(),
            ],
        )
    });
    assert!(status.success());
    assert!(
        stdout.contains("change against the earlier run"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_threshold_fails_the_command() {
    let app = TestApp::spawn().await;
    let (status, stdout, stderr) = tokio::task::block_in_place(|| {
        bench(
            &app,
            &[
                "--scenario",
                "health",
                "--duration",
                "1s",
                "--connections",
                "2",
                "--threshold",
                "p50<0.0001ms",
            ],
        )
    });
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("FAIL"));
    let (status, _, stderr) =
        tokio::task::block_in_place(|| bench(&app, &["--scenario", "nope", "--duration", "1s"]));
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unknown scenario"));
    let (status, _, stderr) = tokio::task::block_in_place(|| {
        bench(&app, &["--scenario", "health", "--threshold", "p99<<5"])
    });
    assert_eq!(status.code(), Some(2), "{stderr}");
}
