//! The status page in a real browser: headless Chromium driven over WebDriver (chromedriver).
//! Its charts must render and keep updating; a screenshot is kept in
//! `target/test-artifacts/status-page.png`. In CI (`CI=true`) a missing browser is a failure.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::TestApp;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Option<Driver> {
        if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists()
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must have chromium and chromium-driver (.ci/run installs them)"
            );
            eprintln!("skipping: chromium or chromedriver is not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        for _ in 0..100 {
            if let Ok(response) = driver
                .client
                .get(format!("{}/status", driver.base))
                .send()
                .await
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return Some(driver);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not become ready");
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .unwrap();
        assert!(
            response["value"].get("error").is_none(),
            "{path}: {response}"
        );
        response["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_render_and_update_in_headless_chromium() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let app = Arc::new(TestApp::spawn().await);
    // Some traffic, so the charts have something to show.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let session = app.create_session("/status", "status page").await;
            let id = session["id"].as_str().unwrap().to_owned();
            while !stop.load(Ordering::Relaxed) {
                app.append(&id, "user", "hello status page").await;
                app.get("/v1/sessions").await;
                app.get(&format!("/v1/sessions/{id}")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let profile = tempfile::tempdir().unwrap();
    let session = driver
        .call(
            reqwest::Method::POST,
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--window-size=1280,1500",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}})),
        )
        .await;
    let id = session["sessionId"].as_str().unwrap().to_owned();
    let script = |source: &str| json!({"script": source, "args": []});
    driver
        .call(
            reqwest::Method::POST,
            &format!("/session/{id}/url"),
            Some(json!({"url": app.url("/")})),
        )
        .await;
    let execute = format!("/session/{id}/execute/sync");
    let samples = || async {
        driver
            .call(
                reqwest::Method::POST,
                &execute,
                Some(script(
                    "return window.sessiondStatus ? window.sessiondStatus.samples : 0;",
                )),
            )
            .await
            .as_u64()
            .unwrap_or(0)
    };
    let mut first = 0;
    for _ in 0..100 {
        first = samples().await;
        if first >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first >= 2, "samples arrived ({first})");
    let charts = driver
        .call(
            reqwest::Method::POST,
            &execute,
            Some(script(
                "return ['chart-rps','chart-latency','chart-inflight','chart-clients','chart-cache','chart-db']
                   .filter(id => document.querySelector('#' + id + ' path.series')).length;",
            )),
        )
        .await;
    assert_eq!(charts, 6, "every chart drew a series");
    let path_of_rps = script(
        "const p = document.querySelector('#chart-rps path.series'); return p ? p.getAttribute('d') : null;",
    );
    let before = driver
        .call(reqwest::Method::POST, &execute, Some(path_of_rps.clone()))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = samples().await;
    assert!(
        later > first,
        "the page keeps receiving samples ({first} → {later})"
    );
    let after = driver
        .call(reqwest::Method::POST, &execute, Some(path_of_rps))
        .await;
    assert_ne!(before, after, "the requests chart redrew");
    let rps = driver
        .call(
            reqwest::Method::POST,
            &execute,
            Some(script(
                "return document.getElementById('kpi-rps').textContent;",
            )),
        )
        .await;
    assert!(!rps.as_str().unwrap_or("").trim().is_empty());

    let png = driver
        .call(
            reqwest::Method::GET,
            &format!("/session/{id}/screenshot"),
            None,
        )
        .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("status-page.png"), &bytes).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    driver
        .call(reqwest::Method::DELETE, &format!("/session/{id}"), None)
        .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
}
