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

use axum::body::Body;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

use tokio::sync::{Notify, mpsc, watch};
use tower::{Service, ServiceExt};

use crate::http::HttpService;

/// The connection a request came on, in request extensions: the peer's address, and a way for
/// a handler to drop the connection outright (a stream whose client stopped reading cannot be
/// ended politely: nothing more can be written to it).
#[derive(Clone, Debug)]
pub struct Connection(Arc<ConnectionShared>);

#[derive(Debug)]
struct ConnectionShared {
    peer: SocketAddr,
    kill: Notify,
    finish: Notify,
}

impl Connection {
    fn new(peer: SocketAddr) -> Connection {
        Connection(Arc::new(ConnectionShared {
            peer,
            kill: Notify::new(),
            finish: Notify::new(),
        }))
    }

    /// The address of the client (or of the proxy in front of it).
    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// Closes the connection now, abandoning whatever it was writing.
    pub fn close(&self) {
        self.0.kill.notify_one();
    }

    /// Closes the connection once the response in progress is complete (no keep-alive).
    pub fn close_after_response(&self) {
        self.0.finish.notify_one();
    }
}

/// One connection's requests, served by its own copy of the service.
///
/// hyper calls a service through `&self`, so hyper_util's adapter clones the whole tower stack
/// for every request. The requests of an HTTP/1.1 connection come one after another, so this
/// keeps one copy behind an uncontended lock and clones only when the stack is not ready.
struct PerConnection {
    service: Mutex<HttpService>,
    connection: Connection,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PerConnection {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Either<
        <HttpService as tower::Service<axum::extract::Request>>::Future,
        tower::util::Oneshot<HttpService, axum::extract::Request>,
    >;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(self.connection.clone());
        let mut service = self.service.lock().unwrap_or_else(|e| e.into_inner());
        // The stack is always ready (limits live inside the router's routes); should a layer
        // ever wait, the request waits on a copy of its own.
        match service.poll_ready(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(Ok(())) => Either::Left(service.call(request)),
            _ => Either::Right(service.clone().oneshot(request)),
        }
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

/// Serves `service` on `listener` until `shutdown` completes, then drains. Returns `true` when
/// every connection finished within the drain timeout.
pub async fn serve(
    listener: TcpListener,
    service: HttpService,
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
        let connection = Connection::new(peer);
        let shared = connection.0.clone();
        let served = PerConnection {
            service: Mutex::new(service.clone()),
            connection,
        };
        let connection = builder
            .serve_connection(TokioIo::new(stream), served)
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
                    () = shared.kill.notified() => {
                        tracing::debug!(%peer, "connection closed by its handler");
                        break;
                    }
                    () = shared.finish.notified(), if !closing => {
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
