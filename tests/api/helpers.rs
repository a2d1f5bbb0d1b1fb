//! Spawning a server for a test: in process on a random port with a fresh temporary data dir,
//! or as the real binary (for crash and signal tests).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::Router;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use sessiond::app::Application;
use sessiond::config::Config;
use sessiond::http::SharedState;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The PostgreSQL server the suite runs against instead of SQLite, when
/// `SESSIOND_TEST_POSTGRES` holds its base URL (e.g. `postgres://root@127.0.0.1:5432`).
pub fn postgres_base() -> Option<String> {
    std::env::var("SESSIOND_TEST_POSTGRES")
        .ok()
        .filter(|url| !url.is_empty())
        .map(|url| url.trim_end_matches('/').to_owned())
}

/// Whether the suite runs against PostgreSQL (tests of SQLite's files skip their file checks).
pub fn on_postgres() -> bool {
    postgres_base().is_some()
}

/// The database of a data dir on the test PostgreSQL server: one per data dir, so a test that
/// restarts a server on the same data dir finds its data again. A marker file in the data dir
/// says the database was made for it; without one it is made afresh.
pub fn postgres_database_for(data_dir: &Path) -> Option<String> {
    Some(postgres_database_at(&postgres_base()?, data_dir))
}

/// The PostgreSQL server for tests that need one whichever backend the suite runs on (several
/// instances on one database): `SESSIOND_TEST_POSTGRES`, else the local server. Outside CI a
/// missing server skips such tests (`None`, said on stderr); in CI (`CI=true`) it fails them.
pub fn postgres_required() -> Option<String> {
    let base = postgres_base().unwrap_or_else(|| "postgres://root@127.0.0.1:5432".to_owned());
    let reachable = std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], 5432)),
        Duration::from_secs(2),
    )
    .is_ok()
        || postgres_base().is_some();
    if reachable {
        return Some(base);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but no PostgreSQL answers at {base}");
    }
    eprintln!("skipped: no PostgreSQL at {base} (set SESSIOND_TEST_POSTGRES)");
    None
}

/// The `--database` arguments of a [`Process`] on `data_dir`: its PostgreSQL database (see
/// [`postgres_database_for`]) when the suite runs on PostgreSQL, else none (SQLite in the dir).
pub fn backend_args(data_dir: &Path) -> Vec<String> {
    postgres_database_for(data_dir)
        .map(|url| vec!["--database".to_owned(), url])
        .unwrap_or_default()
}

/// A fresh database on `base` for `data_dir` (see [`postgres_database_for`]).
pub fn postgres_database_at(base: &str, data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    let name = format!("sessiond_t_{:016x}", hasher.finish());
    let marker = data_dir.join("postgres-test-database");
    if !marker.exists() {
        let admin = format!("{base}/test");
        let create = name.clone();
        // A runtime of its own on a thread of its own: callers may be sync or async.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("SESSIOND_TEST_POSTGRES is set but {admin} is unreachable: {e}")
                    });
                let driver = tokio::spawn(connection);
                // Two statements: CREATE DATABASE refuses to run in a multi-statement string.
                for statement in [
                    format!("DROP DATABASE IF EXISTS {create}"),
                    format!("CREATE DATABASE {create}"),
                ] {
                    client
                        .batch_execute(&statement)
                        .await
                        .expect("creating a test database");
                }
                drop(client);
                let _ = driver.await;
            })
        })
        .join()
        .expect("creating the test database");
        std::fs::write(&marker, &name).expect("marking the data dir");
    }
    format!("{base}/{name}")
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub storage: std::sync::Arc<dyn sessiond::storage::Storage>,
    pub client: Client,
    _dir: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}, Router::new()).await
    }

    pub async fn spawn_configured(configure: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_with(configure, Router::new()).await
    }

    pub async fn spawn_with(
        configure: impl FnOnce(&mut Config),
        routes: Router<SharedState>,
    ) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut app = Self::spawn_in(dir.path(), configure, routes).await;
        app._dir = Some(dir);
        app
    }

    /// A server on an existing data dir (the caller keeps the directory alive).
    pub async fn spawn_in(
        data_dir: &Path,
        configure: impl FnOnce(&mut Config),
        routes: Router<SharedState>,
    ) -> TestApp {
        let mut config = Config::ephemeral(data_dir);
        if let Some(url) = postgres_database_for(data_dir) {
            config.database = sessiond::config::Database::Postgres(url);
        }
        configure(&mut config);
        let app = Application::build_with(config, routes)
            .await
            .expect("the server builds");
        let addr = app.local_addr().expect("bound");
        let storage = app.storage();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            storage,
            client: Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            _dir: None,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Response {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send().await.expect("request")
    }

    pub async fn patch_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn create_session(&self, directory: &str, title: &str) -> Value {
        let response = self
            .post_json(
                "/v1/sessions",
                &json!({"directory": directory, "title": title}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("session json")
    }

    /// The id of a new session (see [`TestApp::create_session`]).
    pub async fn create_session_id(&self, directory: &str, title: &str) -> String {
        let session = self.create_session(directory, title).await;
        session["id"].as_str().expect("a session id").to_owned()
    }

    pub async fn append(&self, session_id: &str, role: &str, text: &str) -> Value {
        let response = self
            .post_json(
                &format!("/v1/sessions/{session_id}/messages"),
                &json!({"role": role, "parts": [{"type": "text", "text": text}]}),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{:?}",
            response.text().await
        );
        response.json().await.expect("message json")
    }

    /// GETs `path` expecting 200 and returns the JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json body");
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    /// Follows `next_cursor` from `path` (which must not carry a cursor) to the end.
    pub async fn collect_pages(&self, path: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut url = path.to_owned();
        loop {
            let page = self.get_json(&url).await;
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(cursor) => url = format!("{path}{separator}cursor={cursor}"),
                None => return items,
            }
        }
    }

    /// Graceful stop: returns once the server has drained and closed its storage.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server result");
        }
    }
}

/// Asserts a problem+json response and returns its body.
pub async fn assert_problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.expect("problem json");
    assert_eq!(body["status"], status.as_u16());
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], "about:blank");
    assert!(body["title"].is_string());
    assert!(body["detail"].is_string());
    body
}

/// The real `sessiond` binary serving a data dir.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Process {
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_sessiond")
    }

    /// [`Process::start`] on the suite's backend: SQLite in `data_dir`, or the PostgreSQL
    /// database of `data_dir` (see [`backend_args`]) when the suite runs on PostgreSQL.
    pub fn start_on_backend(data_dir: &Path, extra_args: &[&str]) -> Process {
        let backend = backend_args(data_dir);
        let mut args: Vec<&str> = backend.iter().map(String::as_str).collect();
        args.extend_from_slice(extra_args);
        Process::start(data_dir, &args)
    }

    /// Starts `sessiond serve` on `data_dir` and waits for its "listening" line.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Process {
        let mut child = Command::new(Self::binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--log-level", "warn"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sessiond");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("sessiond listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .expect("address");
        Process { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends SIGTERM and waits for the exit status (at most 30 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("sessiond did not exit within 30 s of SIGTERM");
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes on a new connection and returns everything the server sent back.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}
