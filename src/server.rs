//! The connection loop: accepts TCP connections and serves HTTP/1.1 on each with hyper, with a
//! header read timeout (a slowloris client cannot hold a slot), a bounded header buffer, and a
//! graceful shutdown that stops accepting, lets in-flight requests finish within a drain
//! timeout, and then returns.
//!
//! We drive hyper directly rather than through `axum::serve` because these limits are settings
//! of hyper's connection builder that `axum::serve` does not expose.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

use tokio::sync::{Notify, mpsc, watch};
use tower::ServiceExt;

/// Lets a handler drop its connection outright (a stream whose client stopped reading cannot
/// be ended politely: nothing more can be written to it). In request extensions.
#[derive(Clone, Debug, Default)]
pub struct ConnectionControl {
    kill: Arc<Notify>,
    finish: Arc<Notify>,
}

impl ConnectionControl {
    /// Closes the connection now, abandoning whatever it was writing.
    pub fn close(&self) {
        self.kill.notify_one();
    }

    /// Closes the connection once the response in progress is complete (no keep-alive).
    pub fn close_after_response(&self) {
        self.finish.notify_one();
    }
}

/// Connection-level limits.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A client must send its complete request head within this time.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: usize,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains. Returns `true` when
/// every connection finished within the drain timeout.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> bool {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Each connection task holds a clone; `recv` returns `None` once all of them are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<Infallible>(1);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_header_size(options.max_header_bytes)
        .keep_alive(true);

    let live = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        if live.load(Ordering::Acquire) >= options.max_connections {
            tokio::spawn(refuse(stream));
            continue;
        }
        let slot = ConnectionSlot::take(&live);
        let control = ConnectionControl::default();
        let kill = control.kill.clone();
        let finish = control.finish.clone();
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request.extensions_mut().insert(control.clone());
                    request
                });
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let mut stop = stop_rx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let _slot = slot;
            tokio::pin!(connection);
            // Set once the connection is to close after its current response.
            let mut closing = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        log_connection_end(result, peer);
                        break;
                    }
                    // Dropping the connection closes the socket, whatever is pending on it.
                    () = kill.notified() => {
                        tracing::debug!(%peer, "connection closed by its handler");
                        break;
                    }
                    () = finish.notified(), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = stop.wait_for(|stop| *stop), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    tokio::time::timeout(options.drain_timeout, alive_rx.recv())
        .await
        .is_ok()
}

/// Counts a live connection for as long as it is held.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(live: &Arc<AtomicUsize>) -> ConnectionSlot {
        live.fetch_add(1, Ordering::AcqRel);
        ConnectionSlot(live.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection beyond `max_connections` with a 503 problem and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BODY: &str = r#"{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the server is at its connection limit; retry shortly","code":"overloaded"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nx-request-id: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        crate::domain::random_token(),
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

fn log_connection_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(error) = result {
        // Timeouts, resets and malformed requests: routine on the open internet.
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}
