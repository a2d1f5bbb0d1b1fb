//! The `webhooks` scenario: messages published at a fixed rate into a session that 1, 10 and
//! then 100 webhook endpoints subscribe to, all pointing at a receiver inside the bench;
//! measures deliveries per second and the latency from publishing a message (the request
//! sent, on the bench's clock) to its delivery arriving. The target must allow loopback
//! webhooks (`--webhook-allowed-networks 127.0.0.0/8`; the bench's own `--data-dir` server is
//! started so).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::Method;
use serde::{Deserialize, Serialize};

use super::client::{Connection, Target};
use super::stats::{Percentiles, histogram};

/// Marker the publisher puts in each message's metadata; the receiver finds it in the event.
const MARKER: &[u8] = b"\"bench_seq\":";
/// Publishing connections.
const PUBLISHERS: usize = 8;
/// How long the receiver waits for the last deliveries of a step.
const DRAIN: Duration = Duration::from_secs(30);

/// One step: a number of endpoints.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookStep {
    pub endpoints: usize,
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries per second, from the first publish to the last delivery.
    pub deliveries_per_s: f64,
    pub delivery_ms: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookReport {
    pub steps: Vec<WebhookStep>,
}

pub struct WebhookSpec {
    pub target: Target,
    pub endpoints: Vec<usize>,
    /// Messages per second (`None`: 6,000 deliveries per second's worth, at most 1,000).
    pub rate: Option<f64>,
    pub duration: Duration,
    pub timeout: Duration,
}

struct Receiver {
    origin: Instant,
    /// Send instants (ns since `origin`, 0: not sent) of this step's messages.
    sent: std::sync::RwLock<Vec<AtomicU64>>,
    delivered: AtomicU64,
    last_ns: AtomicU64,
    latency: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Receiver {
    fn since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn receive(&self, body: &[u8]) {
        let now = self.since_origin();
        let seq = body
            .windows(MARKER.len())
            .position(|w| w == MARKER)
            .map(|at| &body[at + MARKER.len()..])
            .and_then(|rest| {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                std::str::from_utf8(&rest[..digits])
                    .ok()?
                    .parse::<usize>()
                    .ok()
            });
        let sent = seq.and_then(|seq| {
            let sent = self.sent.read().unwrap_or_else(|e| e.into_inner());
            sent.get(seq).map(|at| at.load(Ordering::Acquire))
        });
        if let Some(sent) = sent.filter(|s| *s > 0) {
            let micros = now.saturating_sub(sent) / 1000;
            let mut latency = self.latency.lock().unwrap_or_else(|e| e.into_inner());
            let _ = latency.record(micros.max(1));
        }
        self.delivered.fetch_add(1, Ordering::AcqRel);
        self.last_ns.fetch_max(now, Ordering::AcqRel);
    }
}

async fn start_receiver(receiver: Arc<Receiver>) -> anyhow::Result<String> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let receiver = receiver.clone();
            async move {
                receiver.receive(&body);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the webhook receiver")?;
    let addr = listener.local_addr().context("the receiver's address")?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/hook"))
}

async fn call(
    conn: &mut Connection,
    method: Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let reply = conn
        .send(method, path, body.map(Bytes::from))
        .await
        .map_err(|f| anyhow::anyhow!("{path}: the request failed ({})", f.as_str()))?;
    if !(200..300).contains(&reply.status) {
        bail!(
            "{path} answered {}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    if reply.body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&reply.body).with_context(|| format!("{path}: not JSON"))
}

pub async fn run(spec: &WebhookSpec) -> anyhow::Result<WebhookReport> {
    let receiver = Arc::new(Receiver {
        origin: Instant::now(),
        sent: std::sync::RwLock::new(Vec::new()),
        delivered: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        latency: std::sync::Mutex::new(histogram()),
    });
    let url = start_receiver(receiver.clone()).await?;
    let mut setup = Connection::new(spec.target.clone(), spec.timeout);
    let session = call(
        &mut setup,
        Method::POST,
        "/v1/sessions",
        Some(r#"{"directory":"/bench/webhooks","title":"Webhooks"}"#.to_owned()),
    )
    .await?;
    let session_id = session["id"]
        .as_str()
        .context("the created session has no id")?
        .to_owned();
    let mut report = WebhookReport::default();
    for &endpoints in &spec.endpoints {
        let mut ids = Vec::new();
        for _ in 0..endpoints {
            let body = serde_json::json!({
                "url": url, "events": ["message.created"], "session_id": session_id,
                "description": "sessiond bench",
            });
            let created = call(
                &mut setup,
                Method::POST,
                "/v1/webhooks",
                Some(body.to_string()),
            )
            .await
            .context(
                "registering a webhook (start the target with \
                     --webhook-allowed-networks 127.0.0.0/8)",
            )?;
            ids.push(created["id"].as_str().unwrap_or_default().to_owned());
        }
        let rate = spec
            .rate
            .unwrap_or_else(|| (6000.0 / endpoints.max(1) as f64).min(1000.0))
            .max(1.0);
        let total = ((rate * spec.duration.as_secs_f64()).ceil() as usize).max(1);
        *receiver.sent.write().unwrap_or_else(|e| e.into_inner()) =
            (0..total).map(|_| AtomicU64::new(0)).collect();
        receiver.delivered.store(0, Ordering::Release);
        receiver.last_ns.store(0, Ordering::Release);
        *receiver.latency.lock().unwrap_or_else(|e| e.into_inner()) = histogram();

        let started = receiver.since_origin();
        let begin = tokio::time::Instant::now();
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let (target, timeout) = (spec.target.clone(), spec.timeout);
            let (receiver, path) = (
                receiver.clone(),
                format!("/v1/sessions/{session_id}/messages"),
            );
            publishers.push(tokio::spawn(async move {
                let mut conn = Connection::new(target, timeout);
                let mut published = 0_u64;
                for seq in (p..total).step_by(PUBLISHERS) {
                    tokio::time::sleep_until(begin + interval.mul_f64(seq as f64)).await;
                    let body = format!(
                        r#"{{"role":"user","parts":[{{"type":"text","text":"hook {seq}"}}],"metadata":{{"bench_seq":{seq}}}}}"#
                    );
                    {
                        let sent = receiver.sent.read().unwrap_or_else(|e| e.into_inner());
                        if let Some(at) = sent.get(seq) {
                            at.store(receiver.since_origin().max(1), Ordering::Release);
                        }
                    }
                    if let Ok(reply) = conn.send(Method::POST, &path, Some(Bytes::from(body))).await
                        && reply.status == 201
                    {
                        published += 1;
                    }
                }
                published
            }));
        }
        let mut published = 0;
        for publisher in publishers {
            published += publisher.await.unwrap_or(0);
        }
        let expected = published * endpoints as u64;
        let drained = Instant::now();
        while receiver.delivered.load(Ordering::Acquire) < expected && drained.elapsed() < DRAIN {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delivered = receiver.delivered.load(Ordering::Acquire);
        let span_s = (receiver
            .last_ns
            .load(Ordering::Acquire)
            .saturating_sub(started)) as f64
            / 1e9;
        let delivery_ms =
            Percentiles::of(&receiver.latency.lock().unwrap_or_else(|e| e.into_inner()));
        eprintln!(
            "{endpoints} endpoint(s): {published} messages, {delivered} of {expected} deliveries, \
             {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
            delivered as f64 / span_s.max(1e-9),
            delivery_ms.p50,
            delivery_ms.p99
        );
        report.steps.push(WebhookStep {
            endpoints,
            published,
            expected,
            delivered,
            deliveries_per_s: if span_s > 0.0 {
                delivered as f64 / span_s
            } else {
                0.0
            },
            delivery_ms,
        });
        for id in ids {
            let _ = call(
                &mut setup,
                Method::DELETE,
                &format!("/v1/webhooks/{id}"),
                None,
            )
            .await;
        }
    }
    Ok(report)
}
