//! Profiles on demand: off by default; with the `profiling` build and `--profiling`, a CPU
//! profile and a heap profile download as gzipped pprof.

use reqwest::StatusCode;

use crate::helpers::TestApp;

#[tokio::test]
async fn profiles_are_off_by_default() {
    let app = TestApp::spawn().await;
    for path in ["/v1/admin/profile/cpu?seconds=1", "/v1/admin/profile/heap"] {
        assert_eq!(
            app.get(path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

#[cfg(not(feature = "profiling"))]
#[test]
fn enabling_profiling_needs_the_profiling_build() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(crate::helpers::Process::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--profiling",
            "true",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("profiling") && stderr.contains("--features profiling"),
        "{stderr}"
    );
}

#[cfg(feature = "profiling")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_and_heap_profiles_download_as_gzipped_pprof() {
    use std::io::Read;

    use crate::helpers::Process;

    let dir = tempfile::tempdir().unwrap();
    let server = std::process::Command::new(Process::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--profiling",
            "true",
            "--log-level",
            "warn",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env(
            "MALLOC_CONF",
            "prof:true,prof_active:true,lg_prof_sample:19",
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = scopeguard(server);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .trim()
        .strip_prefix("sessiond listening on ")
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();

    let busy = {
        let client = client.clone();
        let url = format!("{base}/v1/admin/profile/cpu?seconds=2");
        tokio::spawn(async move { client.get(url).send().await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = client
        .get(format!("{base}/v1/admin/profile/cpu?seconds=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.status(),
        StatusCode::CONFLICT,
        "one CPU profile at a time"
    );
    // Work to sample meanwhile: writes and reads until the profile is done.
    let session: serde_json::Value = client
        .post(format!("{base}/v1/sessions"))
        .json(&serde_json::json!({"directory": "/p"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();
    while !busy.is_finished() {
        client
            .post(format!("{base}/v1/sessions/{sid}/messages"))
            .json(&serde_json::json!({"role": "user", "parts": [{"type": "text", "text": "profile me"}]}))
            .send()
            .await
            .unwrap();
        client
            .get(format!("{base}/v1/search?q=profile"))
            .send()
            .await
            .unwrap();
    }
    let cpu = busy.await.unwrap();
    assert_eq!(cpu.status(), StatusCode::OK);
    assert!(
        cpu.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("sessiond-cpu.pb.gz")
    );
    let bytes = cpu.bytes().await.unwrap();
    assert_eq!(&bytes[..2], b"\x1f\x8b", "gzip");
    let mut protobuf = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_end(&mut protobuf)
        .unwrap();
    let text = String::from_utf8_lossy(&protobuf);
    assert!(
        text.contains("cpu") && text.contains("nanoseconds"),
        "a pprof CPU profile"
    );
    assert!(
        text.contains("sessiond"),
        "with samples in sessiond's own code"
    );

    let heap = client
        .get(format!("{base}/v1/admin/profile/heap"))
        .send()
        .await
        .unwrap();
    assert_eq!(heap.status(), StatusCode::OK);
    let bytes = heap.bytes().await.unwrap();
    assert_eq!(&bytes[..2], b"\x1f\x8b", "gzip");

    for bad in ["seconds=0", "seconds=61", "seconds=x", "other=1"] {
        let response = client
            .get(format!("{base}/v1/admin/profile/cpu?{bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let _ = server.0.kill();
}

#[cfg(feature = "profiling")]
struct Guard(std::process::Child);

#[cfg(feature = "profiling")]
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(feature = "profiling")]
fn scopeguard(child: std::process::Child) -> Guard {
    Guard(child)
}
