//! `sessiond seed`: fills a data dir with realistic generated sessions and messages.
//!
//! The data looks like a team's agent sessions: directories under home folders, titles like
//! "Fix the flaky login test", alternating user and assistant messages made of technical prose
//! (so search and summaries have something to chew on), tool calls, sub-sessions and some
//! archived sessions, spread over the last 90 days. The prose draws on a generated vocabulary
//! of 60,000 words with Zipf-like frequencies (word `r` about `1/r` as often as the first) and
//! mixes in identifiers, file paths, error messages, numbers and code blocks, so search meets
//! the long tail of distinct tokens a real corpus has, not a few hundred words that all match
//! everywhere. Generation is deterministic for a given
//! `--seed`. Rows go through the storage layer's bulk import while the next batch is being
//! generated, so the generator and the writer run on both cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use serde_json::value::RawValue;

use crate::domain::{IdGenerator, Message, MessageId, Role, Session, SessionId, wall_clock_ms};
use crate::storage::{ImportMessage, ImportSession, Storage};

#[derive(Clone, Debug)]
pub struct SeedOptions {
    pub sessions: usize,
    pub messages_per_session: usize,
    pub directories: usize,
    /// Seed of the random generator: the same seed gives the same data.
    pub seed: u64,
    /// Sessions per import batch.
    pub batch: usize,
}

impl Default for SeedOptions {
    fn default() -> Self {
        SeedOptions {
            sessions: 1000,
            messages_per_session: 10,
            directories: 50,
            seed: 42,
            batch: 1000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SeedReport {
    pub sessions: usize,
    pub messages: usize,
    pub elapsed: Duration,
}

const USERS: &[&str] = &[
    "ana", "bo", "chen", "dara", "eli", "fatima", "gus", "hana", "ivo", "jun",
];
const PROJECTS: &[&str] = &[
    "api",
    "web",
    "billing",
    "auth-service",
    "mobile",
    "infra",
    "search",
    "payments",
    "docs",
    "cli",
    "scheduler",
    "ingest",
    "gateway",
    "dashboard",
    "ml-pipeline",
    "notifications",
];
const VERBS: &[&str] = &[
    "fix", "refactor", "debug", "speed up", "test", "document", "migrate", "remove", "add",
    "review", "profile", "simplify", "upgrade", "rewrite", "split",
];
const THINGS: &[&str] = &[
    "login flow",
    "session cache",
    "database migration",
    "retry logic",
    "rate limiter",
    "search index",
    "billing webhook",
    "CI pipeline",
    "connection pool",
    "error handling",
    "config loader",
    "JSON parser",
    "auth middleware",
    "background worker",
    "pagination",
    "upload handler",
    "feature flag",
    "metrics exporter",
    "build script",
    "date formatting",
];
const PROBLEMS: &[&str] = &[
    "times out under load",
    "returns a 500 for empty input",
    "leaks memory",
    "is flaky in CI",
    "drops events on restart",
    "is slow on large tables",
    "breaks on unicode input",
    "double-charges some users",
    "ignores the timeout setting",
    "deadlocks at shutdown",
];
const TECH: &[&str] = &[
    "Rust",
    "TypeScript",
    "PostgreSQL",
    "SQLite",
    "Redis",
    "Kubernetes",
    "nginx",
    "React",
    "tokio",
    "Python",
    "Go",
    "Docker",
    "Kafka",
    "GraphQL",
    "gRPC",
];
const ADVICE: &[&str] = &[
    "The root cause is that the {thing} holds a lock while it waits on the network.",
    "I added a regression test that reproduces the failure with {tech}.",
    "We should move the {thing} behind a trait so the tests can swap it out.",
    "The query plan shows a full table scan, so an index on the foreign key will help.",
    "Batching the writes cuts the number of fsyncs from one per request to one per batch.",
    "The {thing} now retries with exponential backoff and a jittered delay.",
    "I measured the change with a load test: p99 latency dropped from 180 ms to 35 ms.",
    "The error comes from an unchecked unwrap on user input in the {thing}.",
    "Let me check the logs around the deploy to see when the {thing} started failing.",
    "This is safe to ship behind a feature flag while we watch the dashboards.",
    "The {tech} client was created per request, so every call paid for a new connection.",
    "Caching the parsed config avoids re-reading the file on every request.",
    "I updated the docs and the changelog to describe the new {thing} behaviour.",
    "The flaky test depended on wall-clock time; it now uses a fake clock.",
    "Splitting the {thing} into two smaller functions makes the failure path obvious.",
];
const QUESTIONS: &[&str] = &[
    "Why does the {thing} {problem}?",
    "Can you {verb} the {thing} in the {project} repo?",
    "How should we {verb} the {thing} without breaking {tech} clients?",
    "The {thing} {problem} again, can you take a look?",
    "What is the safest way to {verb} the {thing}?",
    "Please {verb} the {thing} and add tests for the edge cases.",
];
const COMMANDS: &[&str] = &[
    "cargo test --workspace",
    "rg -n \"unwrap()\" src/",
    "git log --oneline -20",
    "npm run build",
    "psql -c \"EXPLAIN ANALYZE SELECT 1\"",
    "kubectl get pods",
    "curl -s localhost:4096/health",
    "go test ./...",
];

/// Generates and writes the data described by `options`; `progress` gets the sessions written.
pub async fn seed(
    storage: Arc<dyn Storage>,
    options: &SeedOptions,
    progress: impl Fn(usize),
) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    let mut generator = Generator::new(options);
    let mut pending: Option<tokio::task::JoinHandle<anyhow::Result<()>>> = None;
    let mut written = 0;
    let mut messages = 0;
    while written < options.sessions {
        let count = options.batch.max(1).min(options.sessions - written);
        let batch: Vec<ImportSession> = (0..count).map(|_| generator.session()).collect();
        messages += batch.iter().map(|s| s.messages.len()).sum::<usize>();
        // Keep one import in flight while the next batch is generated.
        if let Some(previous) = pending.take() {
            previous.await.context("an import task failed")??;
            progress(written);
        }
        let storage = storage.clone();
        pending = Some(tokio::spawn(async move {
            storage.import(batch).await.context("importing a batch")
        }));
        written += count;
    }
    if let Some(previous) = pending.take() {
        previous.await.context("an import task failed")??;
    }
    progress(written);
    Ok(SeedReport {
        sessions: written,
        messages,
        elapsed: started.elapsed(),
    })
}

/// Words in the generated vocabulary.
const VOCABULARY: usize = 60_000;

const ONSETS: &[&str] = &[
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br",
    "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "sk", "sl", "sp", "st", "tr", "th",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"];
const CODAS: &[&str] = &["", "n", "r", "s", "t", "x", "l", "m", "ck", "nd", "st"];
const EXTENSIONS: &[&str] = &["rs", "ts", "py", "go", "sql", "toml", "yaml", "md", "tsx"];
const ERRORS: &[&str] = &[
    "error[E0425]: cannot find value `{ident}` in this scope\n  --> {path}",
    "thread 'main' panicked at {path}: called `Result::unwrap()` on an `Err` value: {word}",
    "TypeError: Cannot read properties of undefined (reading '{ident}') at {path}",
    "ECONNREFUSED 127.0.0.1:{port} while calling {ident}",
    "ERROR: relation \"{word}_{word}\" does not exist at character {num}",
    "Traceback (most recent call last): File \"{path}\", in {ident}: KeyError: '{word}'",
    "HTTP {status} from /v1/{word}/{num}: {word} {word} failed after {num} ms",
];

/// The words of the generated corpus, most frequent first.
struct Vocabulary(Vec<String>);

impl Vocabulary {
    fn new(rng: &mut fastrand::Rng) -> Vocabulary {
        let mut seen = std::collections::HashSet::with_capacity(VOCABULARY);
        let mut words = Vec::with_capacity(VOCABULARY);
        while words.len() < VOCABULARY {
            // Frequent words come first and tend to be short, as in natural language.
            let syllables = 1 + usize::from(words.len() > 300) + usize::from(rng.u8(..3) == 0);
            let mut word = String::new();
            for _ in 0..syllables {
                word.push_str(ONSETS[rng.usize(..ONSETS.len())]);
                word.push_str(VOWELS[rng.usize(..VOWELS.len())]);
                word.push_str(CODAS[rng.usize(..CODAS.len())]);
            }
            if seen.insert(word.clone()) {
                words.push(word);
            }
        }
        Vocabulary(words)
    }

    /// A word with Zipf-like frequency: rank `r` (from 1) is drawn with probability ∝ `1/r`.
    fn word(&self, rng: &mut fastrand::Rng) -> &str {
        let rank = (self.0.len() as f64).powf(rng.f64()) as usize;
        &self.0[rank.saturating_sub(1).min(self.0.len() - 1)]
    }
}

struct Generator {
    rng: fastrand::Rng,
    vocabulary: Vocabulary,
    session_ids: IdGenerator,
    directories: Vec<String>,
    /// The last session made in each directory: the parent of the next sub-session there.
    last_in_directory: Vec<Option<SessionId>>,
    messages_per_session: usize,
    start_ms: i64,
    step_ms: i64,
}

impl Generator {
    fn new(options: &SeedOptions) -> Self {
        let mut rng = fastrand::Rng::with_seed(options.seed);
        let vocabulary = Vocabulary::new(&mut rng);
        let directories: Vec<String> = (0..options.directories.max(1))
            .map(|i| {
                let user = USERS[i % USERS.len()];
                let project = PROJECTS[(i / USERS.len()) % PROJECTS.len()];
                let copy = i / (USERS.len() * PROJECTS.len());
                if copy == 0 {
                    format!("/home/{user}/{project}")
                } else {
                    format!("/home/{user}/{project}-{copy}")
                }
            })
            .collect();
        let now = wall_clock_ms();
        let span = 90 * 24 * 3600 * 1000_i64;
        // Leave room after the last session for its messages, so nothing lands in the future.
        let tail = options.messages_per_session as i64 * 130_000;
        let start_ms = now - span - tail;
        let step_ms = (span / options.sessions.max(1) as i64).max(1);
        Generator {
            rng,
            vocabulary,
            session_ids: IdGenerator::starting_after(start_ms),
            last_in_directory: vec![None; directories.len()],
            directories,
            messages_per_session: options.messages_per_session,
            start_ms,
            step_ms,
        }
    }

    fn word(&mut self) -> String {
        self.vocabulary.word(&mut self.rng).to_owned()
    }

    /// `snake_case`, `camelCase` or `PascalCase` of two or three words.
    fn identifier(&mut self) -> String {
        let count = self.rng.usize(2..4);
        let words: Vec<String> = (0..count).map(|_| self.word()).collect();
        match self.rng.u8(..3) {
            0 => words.join("_"),
            style => words
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    if i == 0 && style == 1 {
                        w.clone()
                    } else {
                        capitalize(w)
                    }
                })
                .collect(),
        }
    }

    fn path(&mut self) -> String {
        let ext = self.pick(EXTENSIONS);
        format!(
            "src/{}/{}.{ext}:{}",
            self.word(),
            self.identifier().to_lowercase(),
            self.rng.u32(1..2000)
        )
    }

    /// A sentence of vocabulary words.
    fn prose(&mut self) -> String {
        let count = self.rng.usize(6..20);
        let mut words: Vec<String> = (0..count).map(|_| self.word()).collect();
        match self.rng.u8(..6) {
            0 => words.insert(self.rng.usize(..count), format!("`{}`", self.identifier())),
            1 => words.insert(self.rng.usize(..count), self.path()),
            2 => words.insert(self.rng.usize(..count), self.rng.u32(..100_000).to_string()),
            _ => {}
        }
        let mut sentence = words.join(" ");
        sentence = capitalize(&sentence);
        sentence.push('.');
        sentence
    }

    fn error(&mut self) -> String {
        let mut out = self.pick(ERRORS).to_owned();
        for slot in ["{ident}", "{path}", "{word}", "{num}", "{port}", "{status}"] {
            while out.contains(slot) {
                let value = match slot {
                    "{ident}" => self.identifier(),
                    "{path}" => self.path(),
                    "{word}" => self.word(),
                    "{port}" => self.rng.u32(1024..65536).to_string(),
                    "{status}" => self
                        .pick(&["400", "401", "404", "409", "500", "502", "503"])
                        .to_owned(),
                    _ => self.rng.u32(..10_000).to_string(),
                };
                out = out.replacen(slot, &value, 1);
            }
        }
        out
    }

    fn code_block(&mut self) -> String {
        let function = self.identifier().to_lowercase();
        let (a, b) = (self.word(), self.word());
        let call = self.identifier().to_lowercase();
        let number = self.rng.u32(..1000);
        format!(
            "```rust\nfn {function}({a}: &str) -> Result<u32, Error> {{\n    let {b} = {call}({a}, {number})?;\n    Ok({b})\n}}\n```"
        )
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.usize(..items.len())]
    }

    fn fill(&mut self, template: &str, project: &str) -> String {
        let mut out = template.to_owned();
        for (slot, pool) in [
            ("{thing}", THINGS),
            ("{problem}", PROBLEMS),
            ("{tech}", TECH),
            ("{verb}", VERBS),
        ] {
            while out.contains(slot) {
                let word = self.pick(pool);
                out = out.replacen(slot, word, 1);
            }
        }
        out.replace("{project}", project)
    }

    fn session(&mut self) -> ImportSession {
        let wall = self.start_ms + self.step_ms + self.rng.i64(0..self.step_ms.max(2) / 2);
        let (created_at, value) = self.session_ids.next(wall);
        self.start_ms += self.step_ms;
        let id = SessionId::from_value(value);
        let dir_index = self.rng.usize(..self.directories.len());
        let directory = self.directories[dir_index].clone();
        let project = directory.rsplit('/').next().unwrap_or("app").to_owned();
        let parent_id = if self.rng.u8(..10) == 0 {
            self.last_in_directory[dir_index].clone()
        } else {
            None
        };
        self.last_in_directory[dir_index] = Some(id.clone());
        let verb = self.pick(VERBS);
        let thing = self.pick(THINGS);
        let title = match self.rng.u8(..3) {
            0 => format!("{} the {thing}", capitalize(verb)),
            1 => format!("The {thing} {}", self.pick(PROBLEMS)),
            _ => format!("{} {thing} in {project}", capitalize(verb)),
        };

        let mut message_ids = IdGenerator::starting_after(created_at);
        let mut at = created_at;
        let mut messages = Vec::with_capacity(self.messages_per_session);
        for index in 0..self.messages_per_session {
            at += self.rng.i64(5_000..120_000);
            let (created, value) = message_ids.next(at);
            let (role, parts, text) = self.message(index, &project);
            messages.push(ImportMessage {
                message: Message {
                    id: MessageId::from_value(value),
                    session_id: id.clone(),
                    role,
                    parts,
                    metadata: self.metadata(role),
                    created_at: created,
                },
                text,
            });
        }
        let updated_at = messages.last().map_or(created_at, |m| m.message.created_at);
        let archived_at = (self.rng.u8(..20) == 0).then_some(updated_at);
        ImportSession {
            session: Session {
                id,
                directory,
                title,
                parent_id,
                created_at,
                updated_at,
                archived_at,
                message_count: messages.len() as i64,
                metadata: crate::domain::empty_metadata(),
                version: 0,
            },
            messages,
        }
    }

    fn metadata(&mut self, role: Role) -> Box<RawValue> {
        let metadata = match role {
            Role::Assistant => json!({"model": "agent-large", "tokens": self.rng.u32(40..2000)}),
            _ => json!({}),
        };
        raw(metadata.to_string())
    }

    fn message(&mut self, index: usize, project: &str) -> (Role, Box<RawValue>, String) {
        if index.is_multiple_of(2) {
            let template = self.pick(QUESTIONS);
            let mut text = self.fill(template, project);
            match self.rng.u8(..4) {
                0 => text = format!("{text} {}", self.prose()),
                1 => text = format!("{text}\n\n{}", self.error()),
                _ => {}
            }
            let parts = json!([{"type": "text", "text": text}]).to_string();
            return (Role::User, raw(parts), text);
        }
        let sentences = self.rng.usize(2..6);
        let mut text = String::new();
        for _ in 0..sentences {
            if !text.is_empty() {
                text.push(' ');
            }
            let sentence = match self.rng.u8(..8) {
                0..=2 => {
                    let template = self.pick(ADVICE);
                    self.fill(template, project)
                }
                3 => self.error(),
                4 => self.code_block(),
                _ => self.prose(),
            };
            text.push_str(&sentence);
        }
        let parts = if self.rng.u8(..3) == 0 {
            let command = self.pick(COMMANDS);
            json!([
                {"type": "reasoning", "text": "Checking the code before answering."},
                {"type": "tool", "name": "bash", "input": {"command": command}, "output": "ok"},
                {"type": "text", "text": text},
            ])
        } else {
            json!([{"type": "text", "text": text}])
        };
        (Role::Assistant, raw(parts.to_string()), text)
    }
}

fn raw(json: String) -> Box<RawValue> {
    // Built from serde_json values just above: always valid JSON.
    RawValue::from_string(json).unwrap_or_else(|_| unreachable!("serde_json output is JSON"))
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
