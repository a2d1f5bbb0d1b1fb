//! `GET /v1/events` (server-sent events) and `GET /v1/ws` (WebSocket): every change, live,
//! resumable from any retained `seq`.
//!
//! Both run a [`Feed`] in a task of their own. SSE frames go through a small channel into the
//! response body; when the client stops reading, the channel fills, the hub's byte bound for
//! the client fills behind it, and the client is told it lagged and disconnected (forcibly, if
//! it does not even read that). At shutdown every stream ends with a final comment or close
//! frame rather than a reset.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use hyper::body::Frame as BodyFrame;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::SharedState;
use super::extract::{NonEmpty, NonNegative, Query, Text};
use crate::domain::{Invalid, clip};
use crate::error::{ApiError, ApiResult, Problem};
use crate::events::{EventFilter, Feed, Item, sse_frame};
use crate::server::Connection;

/// Frames waiting between a stream's task and the socket; the real bound is the hub's, in bytes.
const BODY_FRAMES: usize = 16;

fn parse_seq(raw: &str, name: &str) -> Result<i64, Invalid> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            Invalid::new(format!(
                "{name} must be an event seq (a whole number, 0 or more), not `{}`",
                clip(raw)
            ))
        })
}

/// Query of `GET /v1/events` and `GET /v1/ws`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events of this session.
    #[param(inline)]
    session_id: Option<NonEmpty>,
    /// Only events of sessions in this directory.
    #[param(inline)]
    directory: Option<NonEmpty>,
    /// Resume after this seq (for SSE, `Last-Event-ID` takes precedence).
    #[param(inline)]
    since: Option<NonNegative>,
}

impl EventParams {
    fn filter(&self) -> EventFilter {
        EventFilter {
            session_id: self.session_id.clone().map(Text::into_inner),
            directory: self.directory.clone().map(Text::into_inner),
        }
    }
}

fn reset_json(seq: i64, oldest: Option<i64>) -> String {
    serde_json::json!({
        "type": "reset",
        "seq": seq,
        "oldest_seq": oldest,
        "detail": "the requested position is outside the retained event log; re-fetch state \
                   and continue from this seq",
    })
    .to_string()
}

fn lagged_json(seq: i64) -> String {
    serde_json::json!({
        "type": "lagged",
        "seq": seq,
        "detail": "this client fell too far behind and is being disconnected; reconnect with \
                   since (or Last-Event-ID) set to this seq",
    })
    .to_string()
}

/// A response body fed by a channel; tells `done` when it has been read to the end or dropped.
struct ChannelBody {
    frames: mpsc::Receiver<Bytes>,
    done: Option<oneshot::Sender<()>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(BodyFrame::data(bytes)))),
            Poll::Ready(None) => {
                if let Some(done) = self.done.take() {
                    let _ = done.send(());
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A streaming response body of the frames sent on `frames`.
pub fn stream_body(frames: mpsc::Receiver<Bytes>) -> axum::body::Body {
    axum::body::Body::new(ChannelBody { frames, done: None })
}

impl Drop for ChannelBody {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// Follow events as server-sent events.
///
/// Frames are `id: <seq>`, `event: <type>`, `data: <event JSON>`. Resume with `Last-Event-ID`
/// (browsers send it on reconnect) or `?since=<seq>`: every retained event after it comes
/// first, then live ones, with no gap and no duplicate. A position outside the retained log
/// gets a `reset` event; a client that falls too far behind gets a `lagged` event and is
/// disconnected. `: keep-alive` comments flow after 15 s of silence.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(
        EventParams,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "Resume after this seq"),
    ),
    responses(
        (status = 200, description = "An endless event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sse(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(params): Query<EventParams>,
    control: Option<axum::Extension<Connection>>,
) -> ApiResult<Response> {
    let filter = params.filter();
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map_err(|_| Invalid::new("Last-Event-ID must be an event seq"))
                .and_then(|s| parse_seq(s, "Last-Event-ID"))
        })
        .transpose()?;
    let since = match last_event_id {
        Some(seq) => Some(seq),
        None => params.since.map(|s| s.0),
    };
    let feed = Feed::start(state.storage.clone(), &state.hub, filter, since).await?;
    let (sender, frames) = mpsc::channel(BODY_FRAMES);
    let (done_tx, done_rx) = oneshot::channel();
    let stream = SseStream {
        sent: feed.last_seq(),
        feed,
        sender,
        stopping: state.stopping.clone(),
        keepalive: state.settings.event_keepalive,
        control: control.map(|c| c.0),
        done: done_rx,
    };
    tokio::spawn(stream.run(state.clone()));

    let mut response = Response::new(axum::body::Body::new(ChannelBody {
        frames,
        done: Some(done_tx),
    }));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct SseStream {
    feed: Feed,
    sender: mpsc::Sender<Bytes>,
    stopping: watch::Receiver<bool>,
    keepalive: Duration,
    control: Option<Connection>,
    done: oneshot::Receiver<()>,
    /// The `seq` of the last frame handed to the body: where a lagged client resumes.
    sent: i64,
}

/// Why a stream ended.
enum End {
    ClientGone,
    Lagged,
    Finished,
}

impl SseStream {
    async fn run(mut self, state: SharedState) {
        let _counted = super::StreamGuard::new(&state.streams.sse);
        let end = self.pump().await;
        if let End::Lagged = end {
            // The notice queues behind the frames the client has not read yet: a client that
            // reads again within the grace gets it, then the end of the body.
            let deadline = Instant::now() + state.settings.event_lag_grace;
            let notice = sse_frame(Some(self.sent), "lagged", &lagged_json(self.sent)).0;
            let _ = tokio::time::timeout_at(deadline, self.sender.send(Bytes::from(notice))).await;
            drop(self.sender);
            if let Some(control) = &self.control {
                // Disconnected, as the contract says, whether or not the client reads: no
                // keep-alive after this response, and a client that does not even read its
                // notice loses the connection when the grace is over.
                control.close_after_response();
                if tokio::time::timeout_at(deadline, &mut self.done)
                    .await
                    .is_err()
                {
                    control.close();
                }
            }
        }
    }

    /// Sends one frame, unless the client lags while we wait for room.
    async fn deliver(&mut self, bytes: Bytes) -> Result<(), End> {
        tokio::select! {
            sent = self.sender.send(bytes) => sent.map_err(|_| End::ClientGone),
            () = self.feed.lagged() => Err(End::Lagged),
        }
    }

    async fn pump(&mut self) -> End {
        // Browsers retry after this long when the connection drops.
        if self
            .deliver(Bytes::from_static(b"retry: 1000\n: connected\n\n"))
            .await
            .is_err()
        {
            return End::ClientGone;
        }
        let mut quiet_until = Instant::now() + self.keepalive;
        let mut stopping = self.stopping.clone();
        loop {
            enum Wake {
                Stop,
                Quiet,
                Item(crate::storage::StorageResult<Item>),
            }
            let wake = tokio::select! {
                biased;
                _ = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => Wake::Stop,
                () = tokio::time::sleep_until(quiet_until) => Wake::Quiet,
                item = self.feed.next() => Wake::Item(item),
            };
            let item = match wake {
                Wake::Stop => {
                    let _ = self
                        .sender
                        .try_send(Bytes::from_static(b": server shutting down\n\n"));
                    return End::Finished;
                }
                Wake::Quiet => {
                    if let Err(end) = self.deliver(Bytes::from_static(b": keep-alive\n\n")).await {
                        return end;
                    }
                    quiet_until = Instant::now() + self.keepalive;
                    continue;
                }
                Wake::Item(item) => item,
            };
            let (frame, seq) = match item {
                Ok(Item::Event(frame)) => (frame.sse.clone(), frame.seq),
                Ok(Item::Reset { seq, oldest }) => (
                    Bytes::from(sse_frame(Some(seq), "reset", &reset_json(seq, oldest)).0),
                    seq,
                ),
                Ok(Item::Lagged { .. }) => return End::Lagged,
                Ok(Item::Closed) => return End::Finished,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "an event stream failed");
                    let _ = self.sender.try_send(Bytes::from_static(
                        b": the stream failed; reconnect with Last-Event-ID\n\n",
                    ));
                    return End::Finished;
                }
            };
            if let Err(end) = self.deliver(frame).await {
                return end;
            }
            self.sent = seq;
            quiet_until = Instant::now() + self.keepalive;
        }
    }
}

/// The one message a WebSocket client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        #[serde(default)]
        session_id: Option<String>,
        #[serde(default)]
        directory: Option<String>,
        #[serde(default)]
        since: Option<i64>,
    },
}

/// Follow events over a WebSocket.
///
/// The server sends the same JSON objects as SSE `data:`, one per text frame, starting with
/// the subscription given by the query parameters (default: every event, from now). The client
/// may send `{"type":"subscribe","session_id"?,"directory"?,"since"?}` at any time to replace
/// it (answered with `{"type":"subscribed",…}`). The server pings every 15 s and closes
/// clients that stop answering; a client that falls too far behind gets `{"type":"lagged",
/// "seq":…}` and is disconnected.
#[utoipa::path(
    get, path = "/v1/ws", tag = "events",
    params(EventParams),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake, or an invalid parameter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ws(
    State(state): State<SharedState>,
    Query(params): Query<EventParams>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let filter = params.filter();
    let since = params.since.map(|s| s.0);
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::InvalidRequest(format!(
            "this endpoint speaks WebSocket: {}",
            rejection.body_text()
        ))
    })?;
    let feed = Feed::start(state.storage.clone(), &state.hub, filter, since).await?;
    Ok(upgrade
        // tungstenite's 128 KiB read and write buffers per connection would cost 2.5 GiB at
        // 10,000 clients; clients send almost nothing and frames are small.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
        .on_upgrade(move |socket| {
            WsSession {
                socket,
                feed,
                state,
            }
            .run()
        }))
}

struct WsSession {
    socket: WebSocket,
    feed: Feed,
    state: SharedState,
}

const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_UNRESPONSIVE: u16 = 1011;
/// Application-defined close code: the client lagged (resume with `since`).
const CLOSE_LAGGED: u16 = 4008;

impl WsSession {
    async fn run(mut self) {
        let state = self.state.clone();
        let _counted = super::StreamGuard::new(&state.streams.ws);
        let ping_every = self.state.settings.ws_ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut stopping = self.state.stopping.clone();
        // When the last unanswered ping was sent.
        let mut awaiting_pong: Option<Instant> = None;
        loop {
            enum Wake {
                Stop,
                Incoming(Option<Result<Message, axum::Error>>),
                Ping,
                Item(crate::storage::StorageResult<Item>),
            }
            let wake = tokio::select! {
                biased;
                _ = async { let _ = stopping.wait_for(|stopping| *stopping).await; } => Wake::Stop,
                incoming = self.socket.recv() => Wake::Incoming(incoming),
                _ = ping.tick() => Wake::Ping,
                item = self.feed.next() => Wake::Item(item),
            };
            let carry_on = match wake {
                Wake::Stop => {
                    self.close(CLOSE_GOING_AWAY, "server shutting down").await;
                    false
                }
                Wake::Incoming(Some(Ok(Message::Text(text)))) => {
                    self.on_client_message(&text).await
                }
                Wake::Incoming(Some(Ok(Message::Pong(_)))) => {
                    awaiting_pong = None;
                    true
                }
                Wake::Incoming(Some(Ok(Message::Binary(_)))) => {
                    self.send_json(error_json("send JSON text frames")).await
                }
                Wake::Incoming(Some(Ok(Message::Ping(_)))) => true,
                Wake::Incoming(_) => false,
                Wake::Ping => {
                    if awaiting_pong.is_some_and(|sent| sent.elapsed() >= ping_every) {
                        self.close(CLOSE_UNRESPONSIVE, "no pong received").await;
                        false
                    } else {
                        awaiting_pong.get_or_insert_with(Instant::now);
                        self.send(Message::Ping(Bytes::from_static(b"sessiond")))
                            .await
                    }
                }
                Wake::Item(Ok(Item::Event(frame))) => match Utf8Bytes::try_from(frame.json.clone())
                {
                    Ok(text) => self.send(Message::Text(text)).await,
                    Err(_) => true,
                },
                Wake::Item(Ok(Item::Reset { seq, oldest })) => {
                    self.send_json(reset_json(seq, oldest)).await
                }
                Wake::Item(Ok(Item::Lagged { seq })) => {
                    // Best effort: a client this far behind may not read it.
                    let notice = Message::Text(lagged_json(seq).into());
                    let _ = tokio::time::timeout(
                        self.state.settings.event_lag_grace,
                        self.socket.send(notice),
                    )
                    .await;
                    self.close(CLOSE_LAGGED, "lagged").await;
                    false
                }
                Wake::Item(Ok(Item::Closed)) => {
                    self.close(CLOSE_GOING_AWAY, "server shutting down").await;
                    false
                }
                Wake::Item(Err(error)) => {
                    tracing::error!(error = format!("{error:#}"), "a WebSocket feed failed");
                    self.close(
                        CLOSE_UNRESPONSIVE,
                        "the stream failed; reconnect with since",
                    )
                    .await;
                    false
                }
            };
            if !carry_on {
                return;
            }
        }
    }

    /// Sends a frame unless the client lags meanwhile; `false` when the session must end.
    async fn send(&mut self, message: Message) -> bool {
        tokio::select! {
            sent = self.socket.send(message) => sent.is_ok(),
            () = self.feed.lagged() => false,
        }
    }

    async fn send_json(&mut self, json: String) -> bool {
        self.send(Message::Text(json.into())).await
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(self.state.settings.event_lag_grace, self.socket.send(frame))
            .await;
    }

    /// Handles a client message; `false` when the session must end.
    async fn on_client_message(&mut self, text: &str) -> bool {
        let (filter, since) = match serde_json::from_str::<ClientMessage>(text) {
            Ok(ClientMessage::Subscribe {
                session_id,
                directory,
                since,
            }) => {
                if since.is_some_and(|s| s < 0) {
                    return self.send_json(error_json("since must be 0 or more")).await;
                }
                (
                    EventFilter {
                        session_id,
                        directory,
                    },
                    since,
                )
            }
            Err(error) => {
                return self
                    .send_json(error_json(&format!("invalid message: {error}")))
                    .await;
            }
        };
        match Feed::start(
            self.state.storage.clone(),
            &self.state.hub,
            filter.clone(),
            since,
        )
        .await
        {
            Ok(feed) => {
                self.feed = feed;
                let ack = serde_json::json!({
                    "type": "subscribed",
                    "session_id": filter.session_id,
                    "directory": filter.directory,
                    "since": since,
                    "seq": self.feed.last_seq(),
                });
                self.send_json(ack.to_string()).await
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "a WebSocket subscribe failed");
                self.send_json(error_json("could not subscribe; retry"))
                    .await
            }
        }
    }
}

fn error_json(detail: &str) -> String {
    serde_json::json!({"type": "error", "detail": detail}).to_string()
}
