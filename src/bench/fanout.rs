//! The `fanout` scenario: N clients following `/v1/events` while messages are published at a
//! fixed rate; measures delivery latency (publish request sent → event received, on the bench's
//! own clock) and, given the server's PID, its memory per connected client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{Connection, Target};
use super::stats::{
    FanoutReport, Memory, Outcome, Percentiles, Recorder, histogram, memory, rss_mb,
};
use super::workload::Op;

/// Tries a subscriber makes before it gives up, and the pause between them.
const MAX_ATTEMPTS: u32 = 50;
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Marker the publisher puts in each message's metadata; subscribers find it in the event.
const MARKER: &[u8] = b"\"bench_seq\":";

pub struct FanoutSpec {
    /// Where messages are published.
    pub target: Target,
    /// Where the subscribers connect (the target, or another instance of its cluster).
    pub subscribe: Target,
    pub subscribers: usize,
    pub rate: f64,
    pub duration: Duration,
    pub timeout: Duration,
    pub pid: Option<u32>,
}

pub struct FanoutOutput {
    pub report: FanoutReport,
    pub elapsed: Duration,
    pub rss_samples: Vec<(f64, Memory)>,
}

/// Send instants (ns since `origin`) of published messages, by their bench sequence number.
struct Sent {
    origin: Instant,
    at: Vec<AtomicU64>,
}

pub async fn run(
    spec: &FanoutSpec,
    publisher_stats: &Arc<Recorder>,
) -> anyhow::Result<FanoutOutput> {
    let mut setup = Connection::new(spec.target.clone(), spec.timeout);
    let reply = setup
        .send(
            Method::POST,
            "/v1/sessions",
            Some(Bytes::from_static(
                br#"{"directory":"/bench/fanout","title":"Fan-out"}"#,
            )),
        )
        .await
        .map_err(|f| anyhow::anyhow!("creating the fan-out session failed ({})", f.as_str()))?;
    let session: serde_json::Value =
        serde_json::from_slice(&reply.body).context("the created session is not JSON")?;
    let session_id = session["id"]
        .as_str()
        .context("the created session has no id")?
        .to_owned();

    let rss_before = spec.pid.and_then(rss_mb);
    let total = (spec.rate * spec.duration.as_secs_f64()).ceil() as usize;
    let sent = Arc::new(Sent {
        origin: Instant::now(),
        at: (0..total).map(|_| AtomicU64::new(0)).collect(),
    });
    let delivery = Arc::new(std::sync::Mutex::new(histogram()));
    let delivered = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicU64::new(0));

    eprintln!("connecting {} subscribers …", spec.subscribers);
    let mut tasks = tokio::task::JoinSet::new();
    let authorization = spec
        .subscribe
        .authorization
        .as_ref()
        .and_then(|value| value.to_str().ok())
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {}/v1/events?session_id={session_id} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{authorization}\r\n",
        spec.subscribe.base_path, spec.subscribe.authority
    );
    for index in 0..spec.subscribers {
        let addr = spec.subscribe.addr;
        let request = request.clone();
        let sent = sent.clone();
        let delivery = delivery.clone();
        let delivered = delivered.clone();
        let connected = connected.clone();
        let refused = refused.clone();
        tasks.spawn(async move {
            let mut buffer = vec![0u8; 16 * 1024];
            let mut pending: Vec<u8> = Vec::new();
            // Connected only on a 200: a server shedding load (503) or limiting (429) refuses
            // some of a connection storm, and a real client tries again, as this one does.
            let mut attempts = 0;
            let mut stream = loop {
                attempts += 1;
                if attempts > MAX_ATTEMPTS {
                    return;
                }
                pending.clear();
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                };
                if stream.write_all(request.as_bytes()).await.is_err() {
                    continue;
                }
                let head_end = loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => pending.extend_from_slice(&buffer[..n]),
                    }
                    if let Some(at) = find(&pending, b"\r\n\r\n") {
                        break Some(at + 4);
                    }
                };
                let Some(head_end) = head_end else { continue };
                if pending.starts_with(b"HTTP/1.1 200") {
                    pending.drain(..head_end);
                    connected.fetch_add(1, Ordering::Relaxed);
                    break stream;
                }
                refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY_PAUSE + Duration::from_millis(fastrand::u64(0..200)))
                    .await;
            };
            loop {
                let n = match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let now = Instant::now();
                pending.extend_from_slice(&buffer[..n]);
                // Only complete frames: a marker may straddle two reads.
                let Some(end) = pending.windows(2).rposition(|w| w == b"\n\n") else {
                    continue;
                };
                let mut found = Vec::new();
                let mut rest = &pending[..end];
                while let Some(at) = find(rest, MARKER) {
                    rest = &rest[at + MARKER.len()..];
                    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                    if let Some(k) = std::str::from_utf8(&rest[..digits])
                        .ok()
                        .and_then(|d| d.parse::<usize>().ok())
                    {
                        found.push(k);
                    }
                }
                pending.drain(..end + 2);
                if found.is_empty() {
                    continue;
                }
                let mut histogram = delivery.lock().unwrap_or_else(|e| e.into_inner());
                for k in found {
                    let Some(slot) = sent.at.get(k) else { continue };
                    let sent_ns = slot.load(Ordering::Acquire);
                    let received_ns = now.duration_since(sent.origin).as_nanos() as u64;
                    if sent_ns > 0 {
                        histogram
                            .saturating_record((received_ns.saturating_sub(sent_ns) / 1000).max(1));
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        // Pace the connection storm a little: the listen backlog is finite.
        if index % 256 == 255 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let waiting = Instant::now();
    while connected.load(Ordering::Relaxed) < spec.subscribers
        && waiting.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected_count = connected.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = spec.pid.and_then(rss_mb);
    eprintln!(
        "{connected_count} of {} subscribers connected; publishing {total} messages at {}/s …",
        spec.subscribers, spec.rate
    );

    // Publish at a fixed rate on one connection per in-flight message.
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / spec.rate.max(1e-6));
    let mut publishers = tokio::task::JoinSet::new();
    let mut rss_samples = Vec::new();
    for k in 0..total {
        let due = started + period * k as u32;
        tokio::time::sleep_until(due.into()).await;
        if k % (spec.rate.ceil() as usize).max(1) == 0
            && let Some(mb) = spec.pid.and_then(memory)
        {
            rss_samples.push((started.elapsed().as_secs_f64(), mb));
        }
        let target = spec.target.clone();
        let session_id = session_id.clone();
        let sent = sent.clone();
        let stats = publisher_stats.clone();
        let timeout = spec.timeout;
        publishers.spawn(async move {
            let body = format!(
                r#"{{"role":"assistant","parts":[{{"type":"text","text":"fan-out message {k}"}}],"metadata":{{"bench_seq":{k}}}}}"#
            );
            let mut conn = Connection::new(target, timeout);
            let begun = Instant::now();
            sent.at[k].store(begun.duration_since(sent.origin).as_nanos() as u64, Ordering::Release);
            let outcome = match conn
                .send(Method::POST, &format!("/v1/sessions/{session_id}/messages"), Some(Bytes::from(body)))
                .await
            {
                Ok(reply) => Outcome::Status(reply.status),
                Err(failure) => Outcome::Failed(failure),
            };
            stats.record(Op::AppendMessage, begun.elapsed(), outcome);
        });
    }
    while publishers.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    // Let the last deliveries arrive.
    let expected = (total * connected_count) as u64;
    let waiting = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected
        && waiting.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks.abort_all();
    let rss_per_connection_kb = match (rss_before, rss_connected) {
        (Some(before), Some(after)) if connected_count > 0 => {
            Some((after - before) * 1024.0 / connected_count as f64)
        }
        _ => None,
    };
    let delivery_ms = {
        let histogram = delivery.lock().unwrap_or_else(|e| e.into_inner());
        Percentiles::of(&histogram)
    };
    Ok(FanoutOutput {
        report: FanoutReport {
            subscribers: spec.subscribers,
            connected: connected_count,
            refused: refused.load(Ordering::Relaxed),
            published: total as u64,
            delivered: delivered.load(Ordering::Relaxed),
            expected,
            delivery_ms,
            rss_per_connection_kb,
        },
        elapsed,
        rss_samples,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
