//! What the simulated users do: the operations, their mix, and the data they act on.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::Method;
use serde_json::{Value, json};

use super::client::{Connection, Target};

/// One kind of request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Health,
    CreateSession,
    AppendMessage,
    ListSessions,
    /// `GET /v1/sessions?directory=…&limit=50`, always with a directory.
    ListDirectory,
    ListMessages,
    NextMessagePage,
    GetSession,
    GetMessage,
    Search,
    Summarize,
    UpdateSession,
    /// Open model: due, but cut off at the end of the run before it could be sent.
    Unsent,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Health => "health",
            Op::CreateSession => "create_session",
            Op::AppendMessage => "append_message",
            Op::ListSessions => "list_sessions",
            Op::ListDirectory => "list_directory",
            Op::ListMessages => "list_messages",
            Op::NextMessagePage => "next_message_page",
            Op::GetSession => "get_session",
            Op::GetMessage => "get_message",
            Op::Search => "search",
            Op::Summarize => "summarize",
            Op::UpdateSession => "update_session",
            Op::Unsent => "unsent",
        }
    }
}

/// Weighted choice of operations.
#[derive(Clone, Debug)]
pub struct Mix {
    ops: Vec<(Op, u32)>,
    total: u32,
    /// Chance that a user who just read a message page with a `next_cursor` reads the next one.
    pub follow_cursor: f64,
}

impl Mix {
    pub fn new(ops: &[(Op, u32)], follow_cursor: f64) -> Mix {
        Mix {
            total: ops.iter().map(|(_, w)| w).sum::<u32>().max(1),
            ops: ops.to_vec(),
            follow_cursor,
        }
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> Op {
        let mut ticket = rng.u32(..self.total);
        for (op, weight) in &self.ops {
            if ticket < *weight {
                return *op;
            }
            ticket -= weight;
        }
        self.ops.first().map_or(Op::Health, |(op, _)| *op)
    }

    pub fn needs_data(&self) -> bool {
        self.ops.iter().any(|(op, _)| *op != Op::Health)
    }
}

/// Search queries that match the text the bench set-up writes: the fallback when the target's
/// messages have too few words to draw a mix from.
const QUERIES: &[&str] = &[
    "login",
    "token",
    "migration",
    "%22connection+pool%22",
    "retry",
    "cache",
    "deploy*",
    "regression+test",
    "index",
    "timeout",
    "flaky",
    "rate+limiter",
    "backoff",
    "lock*",
];

const MESSAGE_TEXTS: &[&str] = &[
    "Why does the login fail when the session token expired after the deploy?",
    "The root cause is that the connection pool holds a lock while it waits on the network.",
    "I added a regression test that reproduces the failure with PostgreSQL.",
    "Batching the writes cuts the number of fsyncs from one per request to one per batch.",
];

/// The sessions, directories and messages the bench acts on.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub sessions: Vec<String>,
    pub directories: Vec<String>,
    pub messages: Vec<String>,
    message_bodies: Vec<Bytes>,
    /// Search queries (URL-encoded) drawn from the target's own message text.
    pub queries: Vec<String>,
}

impl Dataset {
    /// Discovers up to `want` existing sessions through the API and creates more (with
    /// `messages_each` messages) when fewer than `min` exist. Only talks to `target`.
    pub async fn prepare(
        target: &Target,
        min: usize,
        want: usize,
        messages_each: usize,
    ) -> anyhow::Result<Dataset> {
        let mut conn = Connection::new(target.clone(), Duration::from_secs(30));
        let mut data = Dataset::default();
        let mut cursor: Option<String> = None;
        while data.sessions.len() < want {
            let path = match &cursor {
                Some(c) => format!("/v1/sessions?archived=all&limit=1000&cursor={c}"),
                None => "/v1/sessions?archived=all&limit=1000".to_owned(),
            };
            let page = get_json(&mut conn, &path).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                if let (Some(id), Some(dir)) = (item["id"].as_str(), item["directory"].as_str()) {
                    data.sessions.push(id.to_owned());
                    if !data.directories.iter().any(|d| d == dir) && url_safe(dir) {
                        data.directories.push(dir.to_owned());
                    }
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        data.sessions.truncate(want);
        let mut created = 0;
        while data.sessions.len() < min {
            let directory = format!("/bench/project-{}", created % 10);
            let session = post_json(
                &mut conn,
                "/v1/sessions",
                &json!({"directory": directory, "title": format!("Bench session {created}")}),
            )
            .await?;
            let id = session["id"]
                .as_str()
                .context("the target answered a session without an id")?
                .to_owned();
            for i in 0..messages_each {
                let text = MESSAGE_TEXTS[i % MESSAGE_TEXTS.len()];
                post_json(
                    &mut conn,
                    &format!("/v1/sessions/{id}/messages"),
                    &json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                            "parts": [{"type": "text", "text": text}]}),
                )
                .await?;
            }
            if !data.directories.contains(&directory) {
                data.directories.push(directory);
            }
            data.sessions.push(id);
            created += 1;
        }
        let mut texts = Vec::new();
        for id in data.sessions.iter().take(50) {
            let page = get_json(&mut conn, &format!("/v1/sessions/{id}/messages?limit=20")).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                if let Some(mid) = item["id"].as_str() {
                    data.messages.push(mid.to_owned());
                }
                for part in item["parts"].as_array().into_iter().flatten() {
                    if let Some(text) = part["text"].as_str() {
                        texts.push(text.to_owned());
                    }
                }
            }
        }
        data.queries = query_mix(&texts, QUERY_MIX_SIZE, 0x5eed);
        data.message_bodies = MESSAGE_TEXTS
            .iter()
            .map(|text| {
                Bytes::from(
                    json!({"role": "user", "parts": [{"type": "text", "text": text}],
                           "metadata": {"client": "sessiond-bench"}})
                    .to_string(),
                )
            })
            .collect();
        Ok(data)
    }
}

/// Distinct queries in a drawn mix: enough that a response cache cannot hold the mix's
/// popular queries only (with `--cache-size 0` none is cached at all).
const QUERY_MIX_SIZE: usize = 4096;

/// A search mix drawn from real message text, so it matches what the target holds whatever its
/// vocabulary: 40% single words (drawn by occurrence, so common words come up as often as they
/// occur), 25% two words of one message (a conjunction that matches), 20% two adjacent words as
/// a `"phrase"`, 15% a `prefix*` of a word. URL-encoded. Empty when the texts hold no words.
pub fn query_mix(texts: &[String], count: usize, seed: u64) -> Vec<String> {
    let messages: Vec<Vec<String>> = texts
        .iter()
        .map(|text| {
            text.split(|c: char| !c.is_alphanumeric())
                .filter(|w| w.chars().count() >= 3 && !w.chars().all(|c| c.is_ascii_digit()))
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
        })
        .filter(|words| words.len() >= 2)
        .collect();
    if messages.is_empty() {
        return Vec::new();
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let encode = |q: &str| percent_encoding::utf8_percent_encode(q, QUERY_ESCAPES).to_string();
    (0..count)
        .map(|_| {
            let words = &messages[rng.usize(..messages.len())];
            let i = rng.usize(..words.len());
            let query = match rng.u8(..100) {
                0..40 => words[i].clone(),
                40..65 => format!("{} {}", words[i], words[rng.usize(..words.len())]),
                65..85 => {
                    let i = i.min(words.len() - 2);
                    format!("\"{} {}\"", words[i], words[i + 1])
                }
                _ => {
                    let keep = (words[i].chars().count() - 1).clamp(3, 5);
                    format!("{}*", words[i].chars().take(keep).collect::<String>())
                }
            };
            encode(&query)
        })
        .collect()
}

/// Everything but unreserved characters is escaped in a query parameter.
const QUERY_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn url_safe(directory: &str) -> bool {
    directory
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
}

async fn get_json(conn: &mut Connection, path: &str) -> anyhow::Result<Value> {
    let reply = conn
        .send(Method::GET, path, None)
        .await
        .map_err(|f| anyhow::anyhow!("GET {path} failed ({})", f.as_str()))?;
    if reply.status != 200 {
        bail!("GET {path} answered {}", reply.status);
    }
    serde_json::from_slice(&reply.body).with_context(|| format!("GET {path}: not JSON"))
}

async fn post_json(conn: &mut Connection, path: &str, body: &Value) -> anyhow::Result<Value> {
    let reply = conn
        .send(Method::POST, path, Some(Bytes::from(body.to_string())))
        .await
        .map_err(|f| anyhow::anyhow!("POST {path} failed ({})", f.as_str()))?;
    if reply.status != 201 {
        bail!("POST {path} answered {}", reply.status);
    }
    serde_json::from_slice(&reply.body).with_context(|| format!("POST {path}: not JSON"))
}

/// A request to send.
pub struct Planned {
    pub op: Op,
    pub method: Method,
    pub path: String,
    pub body: Option<Bytes>,
}

/// One simulated user: picks operations from the mix, follows message cursors.
pub struct User {
    rng: fastrand::Rng,
    /// `(session, cursor)` of the last message page that had a next page.
    next_page: Option<(String, String)>,
}

impl User {
    pub fn new(seed: u64) -> User {
        User {
            rng: fastrand::Rng::with_seed(seed),
            next_page: None,
        }
    }

    pub fn next(&mut self, mix: &Mix, data: &Dataset) -> Planned {
        if let Some((session, cursor)) = self.next_page.take()
            && self.rng.f64() < mix.follow_cursor
        {
            return Planned {
                op: Op::NextMessagePage,
                method: Method::GET,
                path: format!("/v1/sessions/{session}/messages?limit=50&cursor={cursor}"),
                body: None,
            };
        }
        let op = mix.pick(&mut self.rng);
        let pick = |rng: &mut fastrand::Rng, items: &[String]| -> String {
            if items.is_empty() {
                String::new()
            } else {
                items[rng.usize(..items.len())].clone()
            }
        };
        let (method, path, body) = match op {
            Op::Health | Op::Unsent => (Method::GET, "/health".to_owned(), None),
            Op::CreateSession => {
                let dir = pick(&mut self.rng, &data.directories);
                let body = json!({"directory": if dir.is_empty() { "/bench".to_owned() } else { dir },
                                  "title": "Bench session"});
                (
                    Method::POST,
                    "/v1/sessions".to_owned(),
                    Some(Bytes::from(body.to_string())),
                )
            }
            Op::AppendMessage => {
                let id = pick(&mut self.rng, &data.sessions);
                let body = data
                    .message_bodies
                    .get(self.rng.usize(..data.message_bodies.len().max(1)))
                    .cloned();
                (Method::POST, format!("/v1/sessions/{id}/messages"), body)
            }
            Op::ListSessions => {
                let path = if data.directories.is_empty() || self.rng.u8(..5) == 0 {
                    "/v1/sessions?limit=50".to_owned()
                } else {
                    let dir = pick(&mut self.rng, &data.directories);
                    format!("/v1/sessions?directory={dir}&limit=50")
                };
                (Method::GET, path, None)
            }
            Op::ListDirectory => {
                let dir = pick(&mut self.rng, &data.directories);
                (
                    Method::GET,
                    format!("/v1/sessions?directory={dir}&limit=50"),
                    None,
                )
            }
            Op::ListMessages | Op::NextMessagePage => {
                let id = pick(&mut self.rng, &data.sessions);
                (
                    Method::GET,
                    format!("/v1/sessions/{id}/messages?limit=50"),
                    None,
                )
            }
            Op::GetSession => {
                let id = pick(&mut self.rng, &data.sessions);
                (Method::GET, format!("/v1/sessions/{id}"), None)
            }
            Op::GetMessage => {
                let id = pick(&mut self.rng, &data.messages);
                (Method::GET, format!("/v1/messages/{id}"), None)
            }
            Op::Search => {
                let q = if data.queries.is_empty() {
                    QUERIES[self.rng.usize(..QUERIES.len())]
                } else {
                    &data.queries[self.rng.usize(..data.queries.len())]
                };
                (Method::GET, format!("/v1/search?q={q}&limit=20"), None)
            }
            Op::Summarize => {
                let id = pick(&mut self.rng, &data.sessions);
                (Method::POST, format!("/v1/sessions/{id}/summarize"), None)
            }
            Op::UpdateSession => {
                let id = pick(&mut self.rng, &data.sessions);
                let body = Bytes::from_static(br#"{"title":"Renamed by the bench"}"#);
                (Method::PATCH, format!("/v1/sessions/{id}"), Some(body))
            }
        };
        Planned {
            op,
            method,
            path,
            body,
        }
    }

    /// Looks at a response for what the user does next (the next page of messages).
    pub fn observe(&mut self, planned: &Planned, status: u16, body: &[u8]) {
        if status != 200 || !matches!(planned.op, Op::ListMessages | Op::NextMessagePage) {
            return;
        }
        if let Some(cursor) = next_cursor(body) {
            let session = planned
                .path
                .strip_prefix("/v1/sessions/")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default()
                .to_owned();
            self.next_page = Some((session, cursor));
        }
    }
}

/// The `next_cursor` of a page, found without parsing the whole body.
fn next_cursor(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"next_cursor\":\"";
    let at = body.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let end = body[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&body[at..at + end])
        .ok()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_cursor() {
        assert_eq!(
            next_cursor(br#"{"items":[{"x":"\"next_cursor\":\"no\""}],"next_cursor":"AQI_x-9"}"#),
            Some("AQI_x-9".to_owned())
        );
        assert_eq!(next_cursor(br#"{"items":[],"next_cursor":null}"#), None);
    }

    #[test]
    fn query_mix_draws_every_kind_from_the_text() {
        let texts = vec![
            "Retry the flaky migration after the deploy.".to_owned(),
            "42 ok".to_owned(),
        ];
        let queries = query_mix(&texts, 400, 1);
        assert_eq!(queries.len(), 400);
        let words = ["retry", "the", "flaky", "migration", "after", "deploy"];
        let decoded: Vec<String> = queries
            .iter()
            .map(|q| {
                percent_encoding::percent_decode_str(q)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        assert!(decoded.iter().any(|q| words.contains(&q.as_str())));
        assert!(
            decoded
                .iter()
                .any(|q| q.starts_with('"') && q.ends_with('"'))
        );
        assert!(decoded.iter().any(|q| q.ends_with('*')));
        assert!(
            decoded
                .iter()
                .any(|q| !q.starts_with('"') && q.split(' ').count() == 2)
        );
        for q in &decoded {
            for word in q.trim_matches(['"', '*']).split(' ') {
                assert!(words.iter().any(|w| w.starts_with(word)), "{q}");
            }
        }
        assert!(query_mix(&["1 2 3".to_owned()], 10, 1).is_empty());
    }

    #[test]
    fn mix_follows_its_weights() {
        let mix = Mix::new(&[(Op::Health, 3), (Op::Search, 1)], 0.0);
        let mut rng = fastrand::Rng::with_seed(7);
        let health = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == Op::Health)
            .count();
        assert!((7000..8000).contains(&health), "{health}");
    }
}
