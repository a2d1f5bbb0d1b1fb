//! The machine's ceiling for `bench/request-cost.sh`: a bare hyper HTTP/1.1 server answering
//! `/health` with sessiond's body, on the same runtime settings, with nothing in between.
//!
//! With `--kept`, it also does per request what issue 17 says every response keeps, through
//! sessiond's own code and nothing else: an `X-Request-Id`, the request metrics, and the access
//! line through the same subscriber, format and log writer (standard error). That is the floor
//! under any router and middleware, as a share of the same ceiling.
//!
//! Usage: `cargo run --release --example bare_hyper -- [127.0.0.1:4097] [--kept]`

use std::convert::Infallible;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// sessiond's `/health` body.
const BODY: &[u8] = b"{\"status\":\"ok\"}";

fn health() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// `health()` with what every sessiond response keeps.
fn kept(request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let id = HeaderValue::from_bytes(&sessiond::domain::random_token_bytes())
        .unwrap_or(HeaderValue::from_static("-"));
    let metrics = sessiond::telemetry::metrics::HttpMetrics::get();
    metrics.in_flight.increment(1.0);
    let mut response = health();
    let latency = started.elapsed();
    metrics.in_flight.decrement(1.0);
    metrics.record(request.method(), "/health", 200, latency.as_secs_f64());
    metrics.sent_bytes.increment(BODY.len() as u64);
    tracing::info!(
        target: "sessiond::access",
        request_id = id.to_str().unwrap_or("-"),
        method = %request.method(),
        route = "/health",
        status = 200u16,
        latency_us = latency.as_micros() as u64,
        bytes = Some(BODY.len() as u64),
        "request"
    );
    response.headers_mut().insert("x-request-id", id);
    response
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let (flags, addrs): (Vec<String>, Vec<String>) = std::env::args()
        .skip(1)
        .partition(|arg| arg.starts_with("--"));
    let with_kept = flags.iter().any(|flag| flag == "--kept");
    let addr = addrs
        .into_iter()
        .next()
        .unwrap_or_else(|| "127.0.0.1:4097".to_owned());
    if with_kept {
        sessiond::telemetry::init("info", sessiond::config::LogFormat::Pretty);
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare hyper listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| async move {
                Ok::<_, Infallible>(if with_kept { kept(&request) } else { health() })
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
