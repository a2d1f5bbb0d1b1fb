//! `sessiond export`, `import jsonl` and `import opencode`, run as the real binary, with what
//! they wrote checked through the HTTP API. The opencode fixtures are built here, in both
//! storage forms, from the documented format (shared/formats/opencode.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Process, TestApp, on_postgres, postgres_database_for};

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `sessiond ARGS` against the database of `data_dir` (PostgreSQL when the suite runs
/// there).
fn sessiond(data_dir: &Path, args: &[&str]) -> Output {
    std::fs::create_dir_all(data_dir).unwrap();
    let mut command = Command::new(Process::binary());
    command.args(args).arg("--data-dir").arg(data_dir);
    if let Some(url) = postgres_database_for(data_dir) {
        command.args(["--database", &url]);
    }
    let output = command
        .env_remove("SESSIOND_DATABASE")
        .output()
        .expect("run sessiond");
    Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn server(data_dir: &Path) -> TestApp {
    std::fs::create_dir_all(data_dir).unwrap();
    TestApp::spawn_in(data_dir, |_| {}, axum::Router::new()).await
}

/// `name:  N sessions, M messages` of a report.
fn counts(report: &str, name: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} line in {report}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (numbers[0], numbers[1])
}

/// Writes `value` as a JSON file at `path`, making its directories (as opencode writes its
/// storage: pretty-printed).
fn write_json(path: PathBuf, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// The refusal line among `refused` that names `needle`.
fn refusal<'a>(refused: &'a [String], needle: &str) -> &'a str {
    refused
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no refusal of {needle} in {refused:?}"))
}

fn refused_lines(report: &str) -> Vec<String> {
    report
        .lines()
        .skip_while(|l| !l.starts_with("refused:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The opencode fixture: one description, written in either form.

const PROJECT: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
const T0: i64 = 1_760_000_000_000;

fn oc_id(prefix: &str, n: u64) -> String {
    format!("{prefix}_{n:012x}Zz9Yy8Xx7Ww6Vv")
}

struct Fixture {
    /// (project, session id, session JSON as opencode writes it)
    sessions: Vec<(String, String, Value)>,
    /// (session id, message id, info JSON)
    messages: Vec<(String, String, Value)>,
    /// (message id, part id, part JSON)
    parts: Vec<(String, String, Value)>,
}

fn session_json(id: &str, project: &str, title: &str, created: i64, extra: Value) -> Value {
    let mut session = json!({
        "id": id, "slug": format!("slug-{created}"), "projectID": project, "version": "1.1.3",
        "directory": "/home/zoë/プロジェクト", "title": title,
        "time": {"created": created, "updated": created + 60_000},
        "summary": {"additions": 3, "deletions": 1, "files": 2},
    });
    if let (Value::Object(s), Value::Object(e)) = (&mut session, extra) {
        s.extend(e);
    }
    session
}

fn user(id: &str, session: &str, created: i64) -> Value {
    json!({"id": id, "sessionID": session, "role": "user", "time": {"created": created},
           "agent": "build", "model": {"providerID": "anthropic", "modelID": "claude-sonnet-4"}})
}

fn assistant(id: &str, session: &str, created: i64, parent: &str) -> Value {
    json!({"id": id, "sessionID": session, "role": "assistant",
           "time": {"created": created, "completed": created + 5000}, "parentID": parent,
           "modelID": "claude-sonnet-4", "providerID": "anthropic", "mode": "build",
           "agent": "build", "path": {"cwd": "/home/zoë/プロジェクト", "root": "/home/zoë"},
           "cost": 0.0123, "tokens": {"input": 1200, "output": 300, "reasoning": 40,
           "cache": {"read": 1000, "write": 10}}, "finish": "stop"})
}

fn text(id: &str, session: &str, message: &str, body: &str) -> Value {
    json!({"id": id, "sessionID": session, "messageID": message, "type": "text", "text": body,
           "time": {"start": T0, "end": T0 + 10}})
}

impl Fixture {
    fn new() -> Fixture {
        let s1 = oc_id("ses", 0xfff0);
        let s2 = oc_id("ses", 0xffe0);
        let s3 = oc_id("ses", 0xffd0);
        let s4 = oc_id("ses", 0xffc0);
        let m = |n| oc_id("msg", n);
        let p = |n| oc_id("prt", n);
        let mut f = Fixture {
            sessions: vec![
                (
                    PROJECT.into(),
                    s1.clone(),
                    session_json(
                        &s1,
                        PROJECT,
                        "Anmeldung repariert — ログイン",
                        T0,
                        json!({}),
                    ),
                ),
                (
                    PROJECT.into(),
                    s2.clone(),
                    session_json(
                        &s2,
                        PROJECT,
                        "Sub-agent: tests 🧪",
                        T0 + 1000,
                        json!({"parentID": s1, "time": {"created": T0 + 1000, "updated": T0 + 9000, "archived": T0 + 9500}}),
                    ),
                ),
                (
                    "global".into(),
                    s3.clone(),
                    session_json(
                        &s3,
                        "global",
                        "Orphan child",
                        T0 + 2000,
                        json!({"parentID": oc_id("ses", 0x1)}),
                    ),
                ),
                // A file whose ids inside are stale: the path is right.
                (
                    PROJECT.into(),
                    s4.clone(),
                    session_json(
                        &s4,
                        PROJECT,
                        "Moved by migration 1",
                        T0 + 3000,
                        json!({"id": "ses_stale000000000000000000", "projectID": "stale-project"}),
                    ),
                ),
            ],
            messages: Vec::new(),
            parts: Vec::new(),
        };
        // s1: a user question and an assistant answer with every kind of part; the answer's
        // id sorts before the question's (the hex part wrapped), its time after.
        f.messages
            .push((s1.clone(), m(0x900), user(&m(0x900), &s1, T0 + 100)));
        f.parts.push((
            m(0x900),
            p(0x901),
            text(
                &p(0x901),
                &s1,
                &m(0x900),
                "Warum schlägt die Anmeldung fehl? なぜ？ 🔐",
            ),
        ));
        f.messages.push((
            s1.clone(),
            m(0x100),
            assistant(&m(0x100), &s1, T0 + 200, &m(0x900)),
        ));
        let a = m(0x100);
        f.parts.extend([
            (a.clone(), p(0x101), json!({"id": p(0x101), "sessionID": s1, "messageID": a, "type": "step-start", "snapshot": "abc123"})),
            (a.clone(), p(0x102), json!({"id": p(0x102), "sessionID": s1, "messageID": a, "type": "reasoning",
                "text": "Überlege: the token expiry check is inverted…", "time": {"start": T0 + 201, "end": T0 + 202}})),
            (a.clone(), p(0x103), json!({"id": p(0x103), "sessionID": s1, "messageID": a, "type": "tool", "callID": "call_1",
                "tool": "grep", "state": {"status": "completed", "input": {"pattern": "expiry"},
                "output": "auth.rs:42: if now < expiry", "title": "grep expiry", "metadata": {"matches": 1},
                "time": {"start": T0 + 203, "end": T0 + 204}}})),
            (a.clone(), p(0x104), json!({"id": p(0x104), "sessionID": s1, "messageID": a, "type": "file",
                "mime": "text/x-rust", "filename": "auth.rs", "url": "file:///home/zoë/auth.rs"})),
            (a.clone(), p(0x105), text(&p(0x105), &s1, &a, "Die Prüfung ist umgekehrt: fixed with `now > expiry` ✅")),
            (a.clone(), p(0x106), json!({"id": p(0x106), "sessionID": s1, "messageID": a, "type": "step-finish",
                "reason": "stop", "cost": 0.0123, "tokens": {"input": 1200, "output": 300, "reasoning": 40,
                "cache": {"read": 1000, "write": 10}}})),
        ]);
        // A message without parts: reported, not imported.
        f.messages
            .push((s1.clone(), m(0x950), user(&m(0x950), &s1, T0 + 300)));
        // s2 (archived child of s1): one message.
        f.messages
            .push((s2.clone(), m(0xa00), user(&m(0xa00), &s2, T0 + 1100)));
        f.parts.push((
            m(0xa00),
            p(0xa01),
            text(&p(0xa01), &s2, &m(0xa00), "Run the tests, s'il vous plaît"),
        ));
        // s3: a 300 KB text part (its distinctive word first: PostgreSQL indexes 256 KiB).
        f.messages
            .push((s3.clone(), m(0xb00), user(&m(0xb00), &s3, T0 + 2100)));
        let big = format!(
            "Riesenprotokoll {}",
            "ünïcödé log line ".repeat(300 * 1024 / 18)
        );
        f.parts
            .push((m(0xb00), p(0xb01), text(&p(0xb01), &s3, &m(0xb00), &big)));
        // s4: a message whose file holds stale ids.
        f.messages.push((s4.clone(), m(0xc00), {
            let mut info = user(&m(0xc00), &s4, T0 + 3100);
            info["id"] = json!("msg_stale");
            info["sessionID"] = json!("ses_stale");
            info
        }));
        f.parts.push((m(0xc00), p(0xc01), {
            let mut part = text(&p(0xc01), &s4, &m(0xc00), "Moved, but still here");
            part["id"] = json!("prt_stale");
            part["messageID"] = json!("msg_stale");
            part
        }));
        // Parts of a message that does not exist.
        f.parts.push((
            m(0xdead),
            p(0xd01),
            text(&p(0xd01), &s1, &m(0xdead), "nobody's"),
        ));
        f
    }

    fn session_id(&self, index: usize) -> String {
        self.sessions[index].1.clone()
    }

    /// Writes the JSON-file form under `root` (the `storage` directory), with broken files.
    fn write_files(&self, root: &Path) {
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join("migration"), "2").unwrap();
        write_json(
            root.join("project").join(format!("{PROJECT}.json")),
            &json!({"id": PROJECT, "worktree": "/home/zoë/プロジェクト", "vcs": "git", "time": {"created": T0}}),
        );
        for (project, id, session) in &self.sessions {
            write_json(
                root.join("session")
                    .join(project)
                    .join(format!("{id}.json")),
                session,
            );
        }
        for (session, id, info) in &self.messages {
            write_json(
                root.join("message")
                    .join(session)
                    .join(format!("{id}.json")),
                info,
            );
        }
        for (message, id, part) in &self.parts {
            write_json(
                root.join("part").join(message).join(format!("{id}.json")),
                part,
            );
        }
        // Broken JSON: a session, a message and a part.
        let broken = |path: PathBuf| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "{\"id\": \"broken\", ").unwrap();
        };
        broken(
            root.join("session/global")
                .join(format!("{}.json", oc_id("ses", 0xbad))),
        );
        broken(
            root.join("message")
                .join(self.session_id(1))
                .join(format!("{}.json", oc_id("msg", 0xbad))),
        );
        broken(
            root.join("part")
                .join(oc_id("msg", 0xa00))
                .join(format!("{}.json", oc_id("prt", 0xbad))),
        );
    }

    /// Writes the database form (WAL mode, as opencode runs it) at `path`.
    fn write_db(&self, path: &Path) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE project (id TEXT PRIMARY KEY, worktree TEXT NOT NULL, time_created INTEGER, time_updated INTEGER);
             CREATE TABLE session (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, workspace_id TEXT, parent_id TEXT,
                 slug TEXT NOT NULL, directory TEXT NOT NULL, path TEXT, title TEXT NOT NULL, version TEXT NOT NULL,
                 share_url TEXT, summary_additions INTEGER, summary_deletions INTEGER, summary_files INTEGER,
                 summary_diffs TEXT, cost REAL NOT NULL DEFAULT 0, tokens_input INTEGER NOT NULL DEFAULT 0,
                 tokens_output INTEGER NOT NULL DEFAULT 0, tokens_reasoning INTEGER NOT NULL DEFAULT 0,
                 tokens_cache_read INTEGER NOT NULL DEFAULT 0, tokens_cache_write INTEGER NOT NULL DEFAULT 0,
                 revert TEXT, permission TEXT, goal TEXT, agent TEXT, model TEXT,
                 time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL, time_compacting INTEGER, time_archived INTEGER);
             CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, time_created INTEGER NOT NULL,
                 time_updated INTEGER NOT NULL, data TEXT NOT NULL);
             CREATE TABLE part (id TEXT PRIMARY KEY, message_id TEXT NOT NULL, session_id TEXT NOT NULL,
                 time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL, data TEXT NOT NULL);",
        )
        .unwrap();
        for (project, id, s) in &self.sessions {
            conn.execute(
                "INSERT INTO session (id, project_id, parent_id, slug, directory, title, version, summary_additions,
                 summary_deletions, summary_files, summary_diffs, time_created, time_updated, time_archived)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, '[]', ?11, ?12, ?13)",
                rusqlite::params![id, project, s["parentID"].as_str(), s["slug"].as_str(), s["directory"].as_str(),
                    s["title"].as_str(), s["version"].as_str(), 3, 1, 2, s["time"]["created"].as_i64(),
                    s["time"]["updated"].as_i64(), s["time"]["archived"].as_i64()],
            )
            .unwrap();
        }
        // Later 1.x releases keep a session's totals, agent and model in columns of their own.
        conn.execute(
            "UPDATE session SET cost = 0.125, tokens_input = 900, tokens_output = 120,
             tokens_cache_read = 40, agent = 'build',
             model = '{\"id\":\"claude-sonnet-4\",\"providerID\":\"anthropic\"}' WHERE id = ?1",
            [self.session_id(0)],
        )
        .unwrap();
        for (session, id, info) in &self.messages {
            let mut data = info.clone();
            let created = data["time"]["created"].as_i64().unwrap();
            data.as_object_mut().unwrap().remove("sessionID");
            if data["id"] == json!(id) {
                data.as_object_mut().unwrap().remove("id");
            }
            conn.execute(
                "INSERT INTO message VALUES (?1, ?2, ?3, ?3, ?4)",
                rusqlite::params![id, session, created, data.to_string()],
            )
            .unwrap();
        }
        for (message, id, part) in &self.parts {
            let mut data = part.clone();
            let session = data["sessionID"].as_str().unwrap().to_owned();
            for key in ["sessionID", "messageID"] {
                data.as_object_mut().unwrap().remove(key);
            }
            if data["id"] == json!(id) {
                data.as_object_mut().unwrap().remove("id");
            }
            conn.execute(
                "INSERT INTO part VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                rusqlite::params![id, message, session, T0, data.to_string()],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO message VALUES (?1, ?2, ?3, ?3, '{\"role\": \"user\", ')",
            rusqlite::params![oc_id("msg", 0xbad), self.session_id(1), T0 + 1200],
        )
        .unwrap();
        conn
    }
}

/// Every file under `dir` with a hash of its bytes. A WAL database's `-shm` is left out: it is
/// SQLite's shared-memory index, where every reader (opencode's own too) records its read marks.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    use std::hash::{Hash, Hasher};
    let mut files = BTreeMap::new();
    for path in files_under(dir) {
        if !path.to_string_lossy().ends_with("-shm") {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&path).unwrap().hash(&mut hasher);
            files.insert(path, hasher.finish());
        }
    }
    files
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Sets the access time of every file under `dir` to two days ago; returns what each holds.
fn age_access_times(dir: &Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    let then = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    let mut set = BTreeMap::new();
    for path in files_under(dir) {
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_times(std::fs::FileTimes::new().set_accessed(then))
            .unwrap();
        drop(file);
        let at = std::fs::metadata(&path).unwrap().accessed().unwrap();
        set.insert(path, at);
    }
    set
}

/// The sessions of the import, by their original opencode id.
async fn imported_sessions(app: &TestApp) -> BTreeMap<String, Value> {
    app.collect_pages("/v1/sessions?archived=all&limit=1000")
        .await
        .into_iter()
        .map(|s| {
            (
                s["metadata"]["opencode"]["id"].as_str().unwrap().to_owned(),
                s,
            )
        })
        .collect()
}

async fn messages(app: &TestApp, session: &Value) -> Vec<Value> {
    app.collect_pages(&format!(
        "/v1/sessions/{}/messages",
        session["id"].as_str().unwrap()
    ))
    .await
}

/// Checks everything the first import of the fixture must have written.
async fn check_first_import(app: &TestApp, fixture: &Fixture, report: &str, form: &str) {
    assert_eq!(counts(report, "imported:"), (4, 5), "{report}");
    let refused = refused_lines(report);
    let bad = |kind: &str, n: u64| oc_id(kind, n);
    let expect_refused: Vec<String> = if form == "files" {
        vec![
            format!("session/global/{}.json", bad("ses", 0xbad)),
            format!(
                "message/{}/{}.json",
                fixture.session_id(1),
                bad("msg", 0xbad)
            ),
            format!("part/{}/{}.json", bad("msg", 0xa00), bad("prt", 0xbad)),
            format!(
                "message/{}/{}.json",
                fixture.session_id(0),
                bad("msg", 0x950)
            ),
            format!("part/{}/{}.json", bad("msg", 0xdead), bad("prt", 0xd01)),
        ]
    } else {
        vec![
            format!("message row {}", bad("msg", 0xbad)),
            format!("message row {}", bad("msg", 0x950)),
            format!("part row {}", bad("prt", 0xd01)),
        ]
    };
    assert_eq!(refused.len(), expect_refused.len(), "{report}");
    for location in &expect_refused {
        assert!(
            refused
                .iter()
                .any(|l| l.starts_with(&format!("{location}: "))),
            "{location} is reported refused in {report}"
        );
    }
    assert!(
        refused.iter().any(|l| l.contains("broken JSON")),
        "{report}"
    );
    assert!(refused.iter().any(|l| l.contains("no parts")), "{report}");
    assert!(
        refused.iter().any(|l| l.contains("is not in the")),
        "{report}"
    );

    let sessions = imported_sessions(app).await;
    assert_eq!(sessions.len(), 4, "{sessions:?}");
    let s = |i: usize| &sessions[&fixture.session_id(i)];
    // sessiond ids sort as the history did.
    let mut by_created: Vec<&Value> = sessions.values().collect();
    by_created.sort_by_key(|s| s["created_at"].as_i64());
    let ids: Vec<&str> = by_created
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    for (i, (project, id, source)) in fixture.sessions.iter().enumerate() {
        let session = s(i);
        assert!(session["id"].as_str().unwrap().starts_with("ses_"));
        assert_eq!(session["title"], source["title"]);
        assert_eq!(session["directory"], "/home/zoë/プロジェクト");
        assert_eq!(session["created_at"], source["time"]["created"]);
        let oc = &session["metadata"]["opencode"];
        assert_eq!(oc["id"], json!(id), "the id comes from the path");
        assert_eq!(
            oc["projectID"],
            json!(project),
            "the project comes from the path"
        );
        assert_eq!(oc["slug"], source["slug"]);
        assert_eq!(oc["version"], "1.1.3");
        assert_eq!(oc["summary"]["additions"], 3);
    }
    let oc = &s(0)["metadata"]["opencode"];
    if form == "files" {
        assert_eq!(oc.get("tokens"), None, "{oc}");
    } else {
        assert_eq!(oc["cost"], 0.125);
        assert_eq!(
            oc["tokens"],
            json!({"input": 900, "output": 120, "reasoning": 0, "cache": {"read": 40, "write": 0}})
        );
        assert_eq!(oc["agent"], "build");
        assert_eq!(oc["model"]["providerID"], "anthropic");
        assert_eq!(
            s(1)["metadata"]["opencode"]["cost"],
            0.0,
            "the column's default"
        );
    }
    assert_eq!(
        s(1)["parent_id"],
        s(0)["id"],
        "a child points to its imported parent"
    );
    assert_eq!(s(1)["archived_at"], T0 + 9500);
    assert_eq!(
        s(2)["parent_id"],
        Value::Null,
        "a missing parent becomes null"
    );
    assert_eq!(s(0)["parent_id"], Value::Null);
    assert_eq!(s(0)["message_count"], 2);
    assert_eq!(s(1)["message_count"], 1);
    assert_eq!(s(2)["message_count"], 1);
    assert_eq!(s(3)["message_count"], 1);

    // s1: question then answer, by time (the answer's opencode id sorts first).
    let list = messages(app, s(0)).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["role"], "user");
    assert_eq!(list[0]["created_at"], T0 + 100);
    assert_eq!(
        list[0]["parts"][0]["text"],
        "Warum schlägt die Anmeldung fehl? なぜ？ 🔐"
    );
    assert_eq!(list[0]["metadata"]["opencode"]["agent"], "build");
    assert_eq!(
        list[0]["metadata"]["opencode"]["model"]["modelID"],
        "claude-sonnet-4"
    );
    let answer = &list[1];
    assert_eq!(answer["role"], "assistant");
    assert!(answer["id"].as_str().unwrap() > list[0]["id"].as_str().unwrap());
    let types: Vec<&str> = answer["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "step-start",
            "reasoning",
            "tool",
            "file",
            "text",
            "step-finish"
        ]
    );
    let source_parts: Vec<&Value> = fixture
        .parts
        .iter()
        .filter(|(m, _, _)| *m == oc_id("msg", 0x100))
        .map(|(_, _, p)| p)
        .collect();
    for (got, source) in answer["parts"].as_array().unwrap().iter().zip(source_parts) {
        let mut expected = source.clone();
        let map = expected.as_object_mut().unwrap();
        map.remove("sessionID");
        map.remove("messageID");
        assert_eq!(got, &expected, "every field of the part is kept");
    }
    let oc = &answer["metadata"]["opencode"];
    assert_eq!(oc["id"], oc_id("msg", 0x100));
    assert_eq!(oc["tokens"]["cache"]["read"], 1000);
    assert_eq!(oc["cost"], 0.0123);
    assert_eq!(oc["finish"], "stop");
    assert_eq!(oc["providerID"], "anthropic");
    assert_eq!(oc["path"]["cwd"], "/home/zoë/プロジェクト");
    assert_eq!(oc["parentID"], oc_id("msg", 0x900));

    // The stale ids inside s4's files are ignored.
    let moved = messages(app, s(3)).await;
    assert_eq!(moved[0]["metadata"]["opencode"]["id"], oc_id("msg", 0xc00));
    assert_eq!(moved[0]["parts"][0]["id"], oc_id("prt", 0xc01));
    // The 300 KB part, whole.
    let big = messages(app, s(2)).await;
    assert!(big[0]["parts"][0]["text"].as_str().unwrap().len() > 300_000);

    // Imported text is searchable.
    for (word, session) in [
        ("Anmeldung", 0),
        ("umgekehrt", 0),
        ("Riesenprotokoll", 2),
        ("plaît", 1),
    ] {
        let hits = app.get_json(&format!("/v1/search?q={word}")).await;
        let items = hits["items"].as_array().unwrap();
        assert!(
            items.iter().any(|h| h["session_id"] == s(session)["id"]),
            "{word}: {hits}"
        );
    }
}

async fn opencode_import_of(form: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fixture = Fixture::new();
    let (source, conn) = if form == "files" {
        let root = dir.path().join("opencode/storage");
        fixture.write_files(&root);
        (root, None)
    } else {
        let db = dir.path().join("opencode/opencode.db");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        let conn = fixture.write_db(&db);
        (db, Some(conn))
    };
    let before = snapshot(source.parent().unwrap());
    // Access times older than a day, which a plain read on a `relatime` mount would move.
    let accessed = (form == "files").then(|| age_access_times(&source));
    let source_arg = source.to_str().unwrap();

    let first = sessiond(&data, &["import", "opencode", source_arg]);
    assert_eq!(
        first.code,
        Some(2),
        "refusals make the exit non-zero: {}{}",
        first.stdout,
        first.stderr
    );
    if let Some(accessed) = accessed {
        for (path, at) in accessed {
            let now = std::fs::metadata(&path).unwrap().accessed().unwrap();
            assert_eq!(
                now,
                at,
                "{} was read with its access time updated",
                path.display()
            );
        }
    }
    assert_eq!(
        snapshot(source.parent().unwrap()),
        before,
        "the source is not changed"
    );
    let app = server(&data).await;
    check_first_import(&app, &fixture, &first.stdout, form).await;
    app.stop().await;

    let second = sessiond(&data, &["import", "opencode", source_arg]);
    assert_eq!(
        counts(&second.stdout, "imported:"),
        (0, 0),
        "{}",
        second.stdout
    );
    assert_eq!(
        counts(&second.stdout, "skipped:"),
        (4, 5),
        "{}",
        second.stdout
    );

    // New activity: a new message in s1, a new session with a message.
    let s1 = fixture.session_id(0);
    let s5 = oc_id("ses", 0xff00);
    let (m_new, m5) = (oc_id("msg", 0xe00), oc_id("msg", 0xf00));
    let later = T0 + 100_000;
    match &conn {
        None => {
            write_json(
                source
                    .join("message")
                    .join(&s1)
                    .join(format!("{m_new}.json")),
                &user(&m_new, &s1, later),
            );
            write_json(
                source.join("part").join(&m_new).join("prt_new.json"),
                &text("prt_new", &s1, &m_new, "Noch eine Frage"),
            );
            write_json(
                source.join("session/global").join(format!("{s5}.json")),
                &session_json(&s5, "global", "Neu", later, json!({})),
            );
            write_json(
                source.join("message").join(&s5).join(format!("{m5}.json")),
                &user(&m5, &s5, later + 1),
            );
            write_json(
                source.join("part").join(&m5).join("prt_5.json"),
                &text("prt_5", &s5, &m5, "Hallo"),
            );
        }
        Some(conn) => {
            conn.execute_batch(&format!(
                "INSERT INTO message VALUES ('{m_new}', '{s1}', {later}, {later}, '{{\"role\":\"user\",\"time\":{{\"created\":{later}}}}}');
                 INSERT INTO part VALUES ('prt_new', '{m_new}', '{s1}', {later}, {later}, '{{\"type\":\"text\",\"text\":\"Noch eine Frage\"}}');
                 INSERT INTO session (id, project_id, slug, directory, title, version, time_created, time_updated)
                     VALUES ('{s5}', 'global', 's', '/neu', 'Neu', '1.2.0', {later}, {later});
                 INSERT INTO message VALUES ('{m5}', '{s5}', {later}, {later}, '{{\"role\":\"user\",\"time\":{{\"created\":{later}}}}}');
                 INSERT INTO part VALUES ('prt_5', '{m5}', '{s5}', {later}, {later}, '{{\"type\":\"text\",\"text\":\"Hallo\"}}');"
            ))
            .unwrap();
        }
    }
    let third = sessiond(&data, &["import", "opencode", source_arg]);
    assert_eq!(
        counts(&third.stdout, "imported:"),
        (1, 2),
        "{}",
        third.stdout
    );
    let app = server(&data).await;
    let sessions = imported_sessions(&app).await;
    assert_eq!(sessions.len(), 5);
    assert_eq!(sessions[&s1]["message_count"], 3);
    assert_eq!(
        sessions[&s1]["updated_at"], later,
        "appending moves updated_at"
    );
    let list = messages(&app, &sessions[&s1]).await;
    assert_eq!(list[2]["parts"][0]["text"], "Noch eine Frage");
    assert_eq!(
        messages(&app, &sessions[&s5]).await[0]["parts"][0]["text"],
        "Hallo"
    );
    app.stop().await;
    drop(conn);
}

#[tokio::test(flavor = "multi_thread")]
async fn import_opencode_json_files() {
    opencode_import_of("files").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn import_opencode_database() {
    opencode_import_of("db").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn export_import_export_is_byte_identical_and_a_second_import_skips_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    let app = server(&from).await;
    let parent: Value = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/ünï", "title": "Größe 📦", "metadata": {"k": ["v", 1]}}),
        )
        .await
        .json()
        .await
        .unwrap();
    let pid = parent["id"].as_str().unwrap();
    let child: Value = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/ünï", "title": "child", "parent_id": pid}),
        )
        .await
        .json()
        .await
        .unwrap();
    let cid = child["id"].as_str().unwrap();
    for i in 0..5 {
        app.append(pid, "user", &format!("Frage {i}: 日本語 ✓"))
            .await;
    }
    let response = app
        .post_json(&format!("/v1/sessions/{cid}/messages"),
            &json!({"role": "assistant", "parts": [{"type": "tool", "tool": "bash", "state": {"x": [1, 2]}},
                    {"type": "text", "text": "fertig"}], "metadata": {"tokens": 5}}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    app.patch_json(&format!("/v1/sessions/{cid}"), &json!({"archived": true}))
        .await;
    app.create_session("/empty", "no messages").await;
    app.stop().await;

    let first = dir.path().join("first.jsonl");
    let out = sessiond(&from, &["export", "--output", first.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let import = sessiond(&to, &["import", "jsonl", first.to_str().unwrap()]);
    assert_eq!(import.code, Some(0), "{}{}", import.stdout, import.stderr);
    assert_eq!(
        counts(&import.stdout, "imported:"),
        (3, 6),
        "{}",
        import.stdout
    );
    let again = sessiond(&to, &["import", "jsonl", first.to_str().unwrap()]);
    assert_eq!(again.code, Some(0));
    assert_eq!(
        counts(&again.stdout, "imported:"),
        (0, 0),
        "{}",
        again.stdout
    );
    assert_eq!(
        counts(&again.stdout, "skipped:"),
        (3, 6),
        "{}",
        again.stdout
    );
    let second = sessiond(&to, &["export"]);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let first_bytes = std::fs::read_to_string(&first).unwrap();
    // Pages smaller than a session's messages, and pages of messages that span sessions (a
    // message page of two holds the child's message and the next page starts past it), give
    // the same lines.
    for page in ["1", "2", "4"] {
        let paged = sessiond(&from, &["export", "--page-size", page]);
        assert_eq!(paged.code, Some(0), "{}", paged.stderr);
        assert_eq!(paged.stdout, first_bytes, "--page-size {page}");
    }
    let zero = sessiond(&from, &["export", "--page-size", "0"]);
    assert_eq!(zero.code, Some(2), "{}", zero.stderr);
    assert!(zero.stderr.contains("--page-size"), "{}", zero.stderr);
    assert_eq!(
        second.stdout, first_bytes,
        "export → import → export gives the same bytes"
    );
    let lines: Vec<Value> = first_bytes
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 9);
    assert_eq!(lines[0]["type"], "session");
    assert_eq!(lines[0]["id"], pid);
    assert!(
        lines[1..6]
            .iter()
            .all(|l| l["type"] == "message" && l["session_id"] == pid)
    );

    let app = server(&to).await;
    let copied = app.get_json(&format!("/v1/sessions/{cid}")).await;
    assert_eq!(copied["parent_id"], pid);
    assert!(copied["archived_at"].is_i64());
    assert_eq!(
        app.get_json(&format!("/v1/sessions/{pid}")).await["metadata"],
        json!({"k": ["v", 1]})
    );
    let hits = app.get_json("/v1/search?q=fertig").await;
    assert_eq!(hits["items"][0]["session_id"], cid);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn import_jsonl_refuses_bad_lines_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("in.jsonl");
    let ses = "ses_01kaq3m0d8g7w2e5r1t9y3v6h0";
    let msg = "msg_01kaq3m0d8g7w2e5r1t9y3v6h1";
    let lines = [
        json!({"type": "session", "id": ses, "directory": "/d", "title": "t", "parent_id": null,
               "created_at": 1, "updated_at": 2, "archived_at": null, "message_count": 1, "metadata": {}}).to_string(),
        json!({"type": "message", "id": msg, "session_id": ses, "role": "user",
               "parts": [{"type": "text", "text": "ok"}], "metadata": {}, "created_at": 2}).to_string(),
        json!({"type": "message", "id": "msg_01kaq3m0d8g7w2e5r1t9y3v6h2", "session_id": ses, "role": "user",
               "parts": [], "metadata": {}, "created_at": 2}).to_string(),
        "{not json".to_owned(),
        json!({"type": "session", "id": "nope", "directory": "/d", "title": "t",
               "created_at": 1, "updated_at": 2}).to_string(),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = sessiond(&data, &["import", "jsonl", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert_eq!(counts(&out.stdout, "imported:"), (1, 1), "{}", out.stdout);
    let refused = refused_lines(&out.stdout);
    assert_eq!(refused.len(), 3, "{}", out.stdout);
    for (line, why) in [
        (3, "parts must not be empty"),
        (4, ""),
        (5, "not a session id"),
    ] {
        assert!(
            refused
                .iter()
                .any(|l| l.starts_with(&format!("line {line}: ")) && l.contains(why)),
            "line {line}: {}",
            out.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_held_by_a_running_server_is_refused() {
    if on_postgres() {
        return; // PostgreSQL imports run beside live servers.
    }
    let dir = tempfile::tempdir().unwrap();
    let app = server(dir.path()).await;
    let file = dir.path().join("empty.jsonl");
    std::fs::write(&file, "").unwrap();
    for args in [
        vec!["import", "jsonl", file.to_str().unwrap()],
        vec!["export"],
    ] {
        let out = sessiond(dir.path(), &args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("a running server holds it"),
            "{}",
            out.stderr
        );
    }
    app.stop().await;
}

/// On PostgreSQL a running instance sees what an import wrote: its events and new ETags.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_server_sees_imported_sessions() {
    if !on_postgres() {
        return; // A SQLite data dir cannot be imported into while a server holds it.
    }
    let dir = tempfile::tempdir().unwrap();
    let app = server(dir.path()).await;
    let list = app.get("/v1/sessions").await;
    let etag = list.headers()["etag"].to_str().unwrap().to_owned();
    let mut sse = crate::events::Sse::open(&app, "/v1/events", None).await;
    let fixture = Fixture::new();
    let root = dir.path().join("storage");
    fixture.write_files(&root);
    let out = sessiond(dir.path(), &["import", "opencode", root.to_str().unwrap()]);
    assert_eq!(counts(&out.stdout, "imported:"), (4, 5), "{}", out.stdout);
    let mut created = 0;
    while created < 4 {
        let event = sse
            .next(std::time::Duration::from_secs(10))
            .await
            .expect("an event");
        assert_eq!(event.event, "session.created");
        created += 1;
    }
    let fresh = app
        .client
        .get(app.url("/v1/sessions?archived=all"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    let body: Value = fresh.json().await.unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 4);
    app.stop().await;
}

/// Storage a real installation can hold beside the common case: one session's file in two
/// project folders, a session file that does not parse (with messages and parts under it), a
/// database named for its release channel, and the layout that predates storage migration 1.
#[tokio::test(flavor = "multi_thread")]
async fn import_opencode_copes_with_duplicate_files_refused_sessions_and_channel_databases() {
    let dir = tempfile::tempdir().unwrap();

    // The JSON files.
    let root = dir.path().join("files/storage");
    let (dup, bad) = (oc_id("ses", 0xd00), oc_id("ses", 0xbad));
    let (m1, m_bad) = (oc_id("msg", 0xd01), oc_id("msg", 0xd02));
    let mut older = session_json(&dup, PROJECT, "Älter", T0, json!({}));
    older["time"]["updated"] = json!(T0 + 1_000);
    let mut newer = session_json(&dup, "global", "Neuer Titel", T0, json!({}));
    newer["time"]["updated"] = json!(T0 + 2_000);
    write_json(
        root.join("session")
            .join(PROJECT)
            .join(format!("{dup}.json")),
        &older,
    );
    write_json(
        root.join("session/global").join(format!("{dup}.json")),
        &newer,
    );
    write_json(
        root.join("message").join(&dup).join(format!("{m1}.json")),
        &user(&m1, &dup, T0 + 10),
    );
    write_json(
        root.join("part").join(&m1).join("prt_a.json"),
        &text("prt_a", &dup, &m1, "nur einmal"),
    );
    let bad_file = root.join("session/global").join(format!("{bad}.json"));
    std::fs::write(&bad_file, "{\"id\": ").unwrap();
    write_json(
        root.join("message")
            .join(&bad)
            .join(format!("{m_bad}.json")),
        &user(&m_bad, &bad, T0 + 20),
    );
    write_json(
        root.join("part").join(&m_bad).join("prt_b.json"),
        &text("prt_b", &bad, &m_bad, "verloren"),
    );

    let data = dir.path().join("data-files");
    let out = sessiond(&data, &["import", "opencode", root.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert_eq!(counts(&out.stdout, "imported:"), (1, 1), "{}", out.stdout);
    let refused = refused_lines(&out.stdout);
    let line = |needle: &str| refusal(&refused, needle);
    assert!(
        line(&format!("session/{PROJECT}/{dup}.json")).contains("another file of session"),
        "{refused:?}"
    );
    assert!(
        line(&format!("message/{bad}/{m_bad}.json")).contains(&format!(
            "its session's file session/global/{bad}.json was refused"
        )),
        "{refused:?}"
    );
    assert!(
        line(&format!("part/{m_bad}/prt_b.json")).contains("its message's file"),
        "{refused:?}"
    );
    assert_eq!(refused.len(), 4, "{refused:?}");
    let app = server(&data).await;
    let sessions = imported_sessions(&app).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[&dup]["title"], "Neuer Titel");
    assert_eq!(sessions[&dup]["message_count"], 1);
    assert_eq!(
        messages(&app, &sessions[&dup]).await[0]["parts"][0]["text"],
        "nur einmal"
    );
    app.stop().await;

    // A data directory whose only database is named for its channel.
    let home = dir.path().join("opencode-home");
    std::fs::create_dir_all(&home).unwrap();
    drop(Fixture::new().write_db(&home.join("opencode-dev.db")));
    let data = dir.path().join("data-db");
    let out = sessiond(&data, &["import", "opencode", home.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert_eq!(counts(&out.stdout, "imported:").0, 4, "{}", out.stdout);
    // Two of them, and no opencode.db: the user names one.
    std::fs::copy(home.join("opencode-dev.db"), home.join("opencode-local.db")).unwrap();
    let out = sessiond(&data, &["import", "opencode", home.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("several opencode databases")
            && out.stderr.contains("opencode-dev.db, opencode-local.db"),
        "{}",
        out.stderr
    );

    // The per-project layout before storage migration 1.
    let old = dir.path().join("project/home-zoe/storage");
    write_json(old.join("session/info").join(format!("{dup}.json")), &older);
    let out = sessiond(
        &dir.path().join("data-old"),
        &["import", "opencode", old.to_str().unwrap()],
    );
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("old per-project layout"),
        "{}",
        out.stderr
    );
}

/// A part that breaks the rules every part keeps (a string `type`; a `text` part's string
/// `text`) is refused on its own, with its file and why; its message keeps the parts that are
/// fine, and a message left with none is refused whole.
#[tokio::test(flavor = "multi_thread")]
async fn import_opencode_refuses_parts_that_break_the_part_rules() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("storage");
    let s = oc_id("ses", 0xe00);
    let (good, empty) = (oc_id("msg", 0xe01), oc_id("msg", 0xe02));
    write_json(
        root.join("session").join(PROJECT).join(format!("{s}.json")),
        &session_json(&s, PROJECT, "Teile", T0, json!({})),
    );
    write_json(
        root.join("message").join(&s).join(format!("{good}.json")),
        &user(&good, &s, T0 + 10),
    );
    write_json(
        root.join("message").join(&s).join(format!("{empty}.json")),
        &user(&empty, &s, T0 + 20),
    );
    let part = |message: &str, id: &str, value: Value| {
        write_json(
            root.join("part").join(message).join(format!("{id}.json")),
            &value,
        )
    };
    part(&good, "prt_a", text("prt_a", &s, &good, "bleibt"));
    part(
        &good,
        "prt_b",
        json!({"type": 7, "text": "typ ist eine Zahl"}),
    );
    part(&good, "prt_c", json!({"type": "text", "text": 5}));
    part(&good, "prt_d", json!({"text": "ohne Typ"}));
    part(
        &good,
        "prt_e",
        json!({"type": "file", "url": "file:///ä.png"}),
    );
    part(&empty, "prt_f", json!({"type": "text"}));

    let data = dir.path().join("data");
    let out = sessiond(&data, &["import", "opencode", root.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert_eq!(counts(&out.stdout, "imported:"), (1, 1), "{}", out.stdout);
    let refused = refused_lines(&out.stdout);
    let reason = |needle: &str| refusal(&refused, needle);
    assert!(reason(&format!("part/{good}/prt_b.json")).contains("`type` must be a string"));
    assert!(reason(&format!("part/{good}/prt_c.json")).contains("`text` must be a string"));
    assert!(reason(&format!("part/{good}/prt_d.json")).contains("missing field `type`"));
    assert!(
        reason(&format!("part/{empty}/prt_f.json")).contains("a text part needs a string `text`")
    );
    assert!(reason(&format!("message/{s}/{empty}.json")).contains("no parts"));
    assert_eq!(refused.len(), 5, "{refused:?}");

    let app = server(&data).await;
    let sessions = imported_sessions(&app).await;
    let listed = messages(&app, &sessions[&s]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let parts = listed[0]["parts"].as_array().unwrap();
    let ids: Vec<&str> = parts.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["prt_a", "prt_e"]);
    assert_eq!(parts[0]["text"], "bleibt");
    assert_eq!(parts[1]["url"], "file:///ä.png");
    app.stop().await;
}

/// The columns of opencode 1.x's `session`, `message` and `part` tables that the import needs.
const V1_TABLES: &str = "CREATE TABLE session (id TEXT PRIMARY KEY, project_id TEXT NOT NULL,
         slug TEXT NOT NULL, directory TEXT NOT NULL, title TEXT NOT NULL, version TEXT NOT NULL,
         time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL);
     CREATE TABLE message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, time_created INTEGER NOT NULL,
         time_updated INTEGER NOT NULL, data TEXT NOT NULL);
     CREATE TABLE part (id TEXT PRIMARY KEY, message_id TEXT NOT NULL, session_id TEXT NOT NULL,
         time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL, data TEXT NOT NULL);";

/// Only the part is refused whose `data` is not text (a BLOB): its message and session are
/// imported with the rest. So is only the message whose `data` is not text. A `text` holding
/// half of a surrogate pair (an emoji cut by JavaScript's `substring`) is kept, the half written
/// as U+FFFD.
#[tokio::test]
async fn import_opencode_refuses_only_the_record_whose_data_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("opencode.db");
    let (s, m, blob) = (
        oc_id("ses", 0xf00),
        oc_id("msg", 0xf01),
        oc_id("msg", 0xf02),
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&format!(
        "{V1_TABLES}
         INSERT INTO session VALUES ('{s}', 'global', 's', '/teile', 'Teile', '1.2.0', {T0}, {T0});
         INSERT INTO message VALUES ('{m}', '{s}', {T0}, {T0}, '{{\"role\":\"user\"}}');
         INSERT INTO message VALUES ('{blob}', '{s}', {T0}, {T0}, x'7b7d');
         INSERT INTO part VALUES ('prt_a', '{m}', '{s}', {T0}, {T0}, '{{\"type\":\"text\",\"text\":\"bleibt\"}}');
         INSERT INTO part VALUES ('prt_b', '{m}', '{s}', {T0}, {T0}, x'7b7d');
         INSERT INTO part VALUES ('prt_c', '{m}', '{s}', {T0}, {T0}, '{{\"type\":\"text\",\"text\":\"cut \\ud83d\"}}');"
    ))
    .unwrap();
    drop(conn);

    let data = dir.path().join("data");
    let out = sessiond(&data, &["import", "opencode", db.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert_eq!(counts(&out.stdout, "imported:"), (1, 1), "{}", out.stdout);
    let refused = refused_lines(&out.stdout);
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refusal(&refused, &format!("message row {blob}")).contains("data cannot be read as text")
    );
    assert!(refusal(&refused, "part row prt_b").contains("data cannot be read as text"));

    let app = server(&data).await;
    let sessions = imported_sessions(&app).await;
    let listed = messages(&app, &sessions[&s]).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0]["parts"],
        json!([
            {"id": "prt_a", "type": "text", "text": "bleibt"},
            {"id": "prt_c", "type": "text", "text": "cut \u{fffd}"}
        ])
    );
    app.stop().await;
}

/// In the JSON files too, half of a surrogate pair (a title or a text cut by JavaScript's
/// `substring` inside an emoji) is written as U+FFFD, and its session is imported rather than
/// refused with its messages; a whole pair stays the emoji.
#[tokio::test]
async fn import_opencode_writes_half_a_surrogate_pair_as_a_replacement_character() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let (s, m) = (oc_id("ses", 0xe00), oc_id("msg", 0xe01));
    let write = |path: PathBuf, text: String| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        storage.join(format!("session/global/{s}.json")),
        format!(
            "{{\n  \"id\": \"{s}\",\n  \"projectID\": \"global\",\n  \"directory\": \"/cut\",\n  \
             \"title\": \"Fix \\ud83d\",\n  \"version\": \"1.0.0\",\n  \
             \"time\": {{\"created\": {T0}, \"updated\": {T0}}}\n}}"
        ),
    );
    write(
        storage.join(format!("message/{s}/{m}.json")),
        format!("{{\"id\": \"{m}\", \"role\": \"user\", \"time\": {{\"created\": {T0}}}}}"),
    );
    write(
        storage.join(format!("part/{m}/prt_a.json")),
        "{\"type\": \"text\", \"text\": \"\\ud83d\\ude00 gut \\ude00 \\ud83d\"}".to_owned(),
    );

    let data = dir.path().join("data");
    let out = sessiond(&data, &["import", "opencode", storage.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(counts(&out.stdout, "imported:"), (1, 1), "{}", out.stdout);

    let app = server(&data).await;
    let sessions = imported_sessions(&app).await;
    assert_eq!(sessions[&s]["title"], "Fix \u{fffd}");
    let listed = messages(&app, &sessions[&s]).await;
    assert_eq!(
        listed[0]["parts"][0]["text"],
        "\u{1f600} gut \u{fffd} \u{fffd}"
    );
    let found = app.get_json("/v1/search?q=gut").await;
    assert_eq!(found["items"].as_array().map(Vec::len), Some(1), "{found}");
    app.stop().await;
}

/// An `opencode.db` that OpenCode 2 has used: its history in `session_v2` and `session_message`
/// (one row per timeline entry, a message's content inside it), beside the 1.x tables it was
/// copied from. The 2.x copy of a session is imported and its 1.x copy passed over; a session
/// only in the 1.x tables, and one whose 2.x copy got no messages, come from the 1.x tables.
/// Every kind of entry becomes a message with a role and parts, in the order of the records' own
/// times, markers of state are no messages, and what cannot be read is refused with its row.
#[tokio::test(flavor = "multi_thread")]
async fn import_opencode_reads_opencode_2s_session_message_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("opencode.db");
    let (a, b, c, d, e) = (
        oc_id("ses", 0x2a0),
        oc_id("ses", 0x2b0),
        oc_id("ses", 0x2c0),
        oc_id("ses", 0x2d0),
        oc_id("ses", 0x2e0),
    );
    let m = |n: u64| oc_id("msg", 0x2000 + n);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&format!(
        "{V1_TABLES}
         CREATE TABLE session_v2 (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, workspace_id TEXT,
             parent_id TEXT, fork_session_id TEXT, fork_boundary TEXT, slug TEXT NOT NULL,
             directory TEXT NOT NULL, path TEXT, title TEXT, version TEXT NOT NULL, share_url TEXT,
             summary_additions INTEGER, summary_deletions INTEGER, summary_files INTEGER,
             summary_diffs TEXT, metadata TEXT, cost REAL DEFAULT 0 NOT NULL,
             tokens_input INTEGER DEFAULT 0 NOT NULL, tokens_output INTEGER DEFAULT 0 NOT NULL,
             tokens_reasoning INTEGER DEFAULT 0 NOT NULL, tokens_cache_read INTEGER DEFAULT 0 NOT NULL,
             tokens_cache_write INTEGER DEFAULT 0 NOT NULL, revert TEXT, permission TEXT, agent TEXT,
             model TEXT, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL,
             time_idle INTEGER, idle_outcome TEXT, time_compacting INTEGER, time_archived INTEGER);
         CREATE TABLE session_message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, type TEXT NOT NULL,
             seq INTEGER NOT NULL, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL,
             data TEXT NOT NULL);
         CREATE UNIQUE INDEX session_message_session_seq_idx ON session_message (session_id, seq);

         -- The 1.x copy of a, passed over; c, made by 1.x after the copy; d and e, whose 2.x
         -- copies have no messages (e only a marker).
         INSERT INTO session VALUES ('{a}', 'global', 'a', '/alt', 'Alte Kopie', '1.14.0', {T0}, {T0});
         INSERT INTO message VALUES ('{m0}', '{a}', {T0}, {T0}, '{{\"role\":\"user\"}}');
         INSERT INTO part VALUES ('prt_old', '{m0}', '{a}', {T0}, {T0}, '{{\"type\":\"text\",\"text\":\"Altkopie\"}}');
         INSERT INTO session VALUES ('{c}', 'global', 'c', '/danach', 'Danach', '1.14.0', {t2}, {t2});
         INSERT INTO message VALUES ('{m20}', '{c}', {t2}, {t2}, '{{\"role\":\"user\"}}');
         INSERT INTO part VALUES ('prt_c', '{m20}', '{c}', {t2}, {t2}, '{{\"type\":\"text\",\"text\":\"nach der Kopie\"}}');
         INSERT INTO session VALUES ('{d}', 'global', 'd', '/leer', 'Leer', '1.14.0', {T0}, {T0});
         INSERT INTO message VALUES ('{m30}', '{d}', {T0}, {T0}, '{{\"role\":\"user\"}}');
         INSERT INTO part VALUES ('prt_d', '{m30}', '{d}', {T0}, {T0}, '{{\"type\":\"text\",\"text\":\"nie kopiert\"}}');
         INSERT INTO session VALUES ('{e}', 'global', 'e', '/marke', 'Marke', '1.14.0', {T0}, {T0});
         INSERT INTO message VALUES ('{m40}', '{e}', {T0}, {T0}, '{{\"role\":\"user\"}}');
         INSERT INTO part VALUES ('prt_e', '{m40}', '{e}', {T0}, {T0}, '{{\"type\":\"text\",\"text\":\"nur markiert\"}}');

         INSERT INTO session_v2 (id, project_id, slug, directory, title, version, metadata, cost,
             tokens_input, tokens_output, agent, model, fork_session_id, time_created, time_updated)
             VALUES ('{a}', 'global', 'a', '/zwei', 'Résumé 2.x', '2.0.25', '{{\"k\":1}}', 0.75,
             100, 20, 'build', '{{\"id\":\"m1\",\"providerID\":\"p\"}}', '{d}', {T0}, {t1});
         INSERT INTO session_v2 (id, project_id, parent_id, slug, directory, version, time_created, time_updated)
             VALUES ('{b}', 'global', '{a}', 'b', '/zwei', '2.0.25', {t1}, {t1});
         INSERT INTO session_v2 (id, project_id, slug, directory, title, version, time_created, time_updated)
             VALUES ('{d}', 'global', 'd', '/leer', 'Leer', '2.0.25', {T0}, {T0}),
                    ('{e}', 'global', 'e', '/marke', 'Marke', '2.0.25', {T0}, {T0});
         ",
        m0 = m(0),
        m20 = m(20),
        m30 = m(30),
        m40 = m(40),
        t1 = T0 + 60_000,
        t2 = T0 + 120_000,
    ))
    .unwrap();
    let entry = |session: &str, n: u64, kind: &str, data: Value| {
        conn.execute(
            "INSERT INTO session_message VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
            rusqlite::params![
                m(n),
                session,
                kind,
                n as i64,
                T0 + n as i64,
                data.to_string()
            ],
        )
        .unwrap();
    };
    let assistant_content = json!([
        {"type": "reasoning", "text": "Erst nachsehen."},
        {"type": "text", "text": "Der Linker findet zstd nicht."},
        {"type": "tool", "id": "call_1", "name": "shell",
         "state": {"status": "completed", "input": {"command": "cargo build"},
                   "content": [{"type": "text", "text": "error: zstd"}]},
         "time": {"created": T0 + 3}}
    ]);
    entry(
        &a,
        1,
        "user",
        json!({"text": "Warum schlägt der Build fehl?",
        "files": [{"uri": "file:///p/Cargo.toml", "mime": "text/plain"}], "time": {"created": T0 + 1}}),
    );
    entry(
        &a,
        2,
        "agent-switched",
        json!({"agent": "plan", "time": {"created": T0 + 2}}),
    );
    entry(
        &a,
        3,
        "assistant",
        json!({"agent": "build", "model": {"id": "m1", "providerID": "p"},
        "content": assistant_content, "finish": "tool-calls", "cost": 0.5,
        "tokens": {"input": 10, "output": 5, "reasoning": 2, "cache": {"read": 0, "write": 0}},
        "time": {"created": T0 + 3, "completed": T0 + 4}}),
    );
    entry(
        &a,
        4,
        "shell",
        json!({"shellID": "sh_1", "command": "ls", "status": "exited", "exit": 0,
        "output": {"output": "Cargo.toml", "truncated": false}, "time": {"created": T0 + 4}}),
    );
    entry(
        &a,
        5,
        "compaction",
        json!({"status": "completed", "reason": "auto",
        "summary": "Zusammenfassung: zstd fehlte.", "recent": m(4), "time": {"created": T0 + 5}}),
    );
    entry(
        &a,
        6,
        "synthetic",
        // Queued while the assistant was busy: created before it, after it in the timeline. Its
        // own time places it (messages are ordered by their times); `seq` says the rest.
        json!({"sessionID": a, "text": "Hintergrundjob fertig", "time": {"created": T0 + 2}}),
    );
    entry(
        &a,
        7,
        "system",
        json!({"text": "Plan-Modus", "description": "plan", "time": {"created": T0 + 7}}),
    );
    entry(
        &a,
        8,
        "idle",
        json!({"outcome": "succeeded", "time": {"created": T0 + 8}}),
    );
    entry(
        &a,
        9,
        "assistant",
        json!({"agent": "build", "model": {"id": "m1", "providerID": "p"},
        "content": [], "error": {"type": "api", "message": "overloaded"}, "time": {"created": T0 + 9}}),
    );
    entry(&a, 10, "hologram", json!({"time": {"created": T0 + 10}}));
    conn.execute(
        "INSERT INTO session_message VALUES (?1, ?2, 'user', 11, ?3, ?3, '{\"text\": ')",
        rusqlite::params![m(11), a, T0 + 11],
    )
    .unwrap();
    entry(
        &b,
        12,
        "user",
        json!({"text": "Unteraufgabe", "time": {"created": T0 + 60_000}}),
    );
    entry("ses_gone", 13, "user", json!({"text": "verwaist"}));
    entry("ses_gone", 14, "idle", json!({"outcome": "succeeded"}));
    entry(&e, 15, "idle", json!({"outcome": "succeeded"}));
    // Written by a 1.x opencode beside its own tables (an experimental setting): c is read from
    // those.
    entry(&c, 16, "user", json!({"text": "doppelt"}));

    let data = dir.path().join("data");
    let out = sessiond(&data, &["import", "opencode", db.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert_eq!(counts(&out.stdout, "imported:"), (5, 10), "{}", out.stdout);
    let refused = refused_lines(&out.stdout);
    assert_eq!(refused.len(), 4, "{refused:?}");
    let row = |n: u64| format!("session_message row {}", m(n));
    assert!(
        refusal(&refused, &row(9)).contains("no parts"),
        "{refused:?}"
    );
    assert!(
        refusal(&refused, &row(10)).contains("\"hologram\""),
        "{refused:?}"
    );
    assert!(
        refusal(&refused, &row(11)).contains("broken JSON"),
        "{refused:?}"
    );
    assert!(
        refusal(&refused, &row(13)).contains("its session ses_gone is not in the database"),
        "{refused:?}"
    );

    let app = server(&data).await;
    let sessions = imported_sessions(&app).await;
    assert_eq!(sessions.len(), 5, "{sessions:?}");
    let sa = &sessions[&a];
    assert_eq!(sa["title"], "Résumé 2.x");
    assert_eq!(sa["directory"], "/zwei");
    assert_eq!(sa["updated_at"], T0 + 60_000);
    assert_eq!(sa["message_count"], 6);
    let meta = &sa["metadata"]["opencode"];
    assert_eq!(meta["version"], "2.0.25");
    assert_eq!(meta["cost"], 0.75);
    assert_eq!(meta["tokens"]["input"], 100);
    assert_eq!(meta["agent"], "build");
    assert_eq!(meta["model"], json!({"id": "m1", "providerID": "p"}));
    assert_eq!(meta["metadata"], json!({"k": 1}));
    assert_eq!(meta["forkSessionID"], d);
    assert_eq!(sessions[&b]["parent_id"], sa["id"]);
    assert_eq!(sessions[&b]["title"], "");

    let listed = messages(&app, sa).await;
    let roles: Vec<&str> = listed.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["user", "user", "assistant", "tool", "assistant", "system"]
    );
    assert_eq!(
        listed[0]["parts"],
        json!([
            {"type": "text", "text": "Warum schlägt der Build fehl?"},
            {"type": "file", "uri": "file:///p/Cargo.toml", "mime": "text/plain"}
        ])
    );
    assert_eq!(listed[0]["created_at"], T0 + 1);
    assert_eq!(
        listed[2]["parts"], assistant_content,
        "content as it was, in order"
    );
    let info = &listed[2]["metadata"]["opencode"];
    assert_eq!(info["id"], m(3));
    assert_eq!(info["type"], "assistant");
    assert_eq!(info["seq"], 3);
    assert_eq!(info["cost"], 0.5);
    assert_eq!(info["finish"], "tool-calls");
    assert_eq!(info["tokens"]["reasoning"], 2);
    assert!(
        info.get("content").is_none() && info.get("role").is_none(),
        "{info}"
    );
    assert_eq!(
        listed[3]["parts"],
        json!([{"type": "shell", "shellID": "sh_1", "command": "ls", "status": "exited", "exit": 0,
                "output": {"output": "Cargo.toml", "truncated": false}}])
    );
    assert_eq!(
        listed[4]["parts"],
        json!([
            {"type": "compaction", "status": "completed", "reason": "auto", "recent": m(4)},
            {"type": "text", "text": "Zusammenfassung: zstd fehlte."}
        ])
    );
    assert_eq!(
        listed[1]["parts"],
        json!([{"type": "text", "text": "Hintergrundjob fertig", "synthetic": true}])
    );
    assert_eq!(listed[1]["created_at"], T0 + 2, "the record's own time");
    assert_eq!(listed[1]["metadata"]["opencode"]["seq"], 6);
    assert_eq!(
        listed[5]["parts"],
        json!([{"type": "text", "text": "Plan-Modus"}])
    );
    assert_eq!(listed[5]["metadata"]["opencode"]["description"], "plan");
    assert_eq!(
        messages(&app, &sessions[&c]).await[0]["parts"][0]["text"],
        "nach der Kopie"
    );
    assert_eq!(
        messages(&app, &sessions[&d]).await[0]["parts"][0]["text"],
        "nie kopiert"
    );
    assert_eq!(sessions[&d]["metadata"]["opencode"]["version"], "2.0.25");
    assert_eq!(
        messages(&app, &sessions[&e]).await[0]["parts"][0]["text"],
        "nur markiert"
    );
    assert_eq!(sessions[&c]["message_count"], 1);
    for (word, found) in [
        ("Linker", 1),
        ("Zusammenfassung", 1),
        ("Unteraufgabe", 1),
        ("Altkopie", 0),
        ("verwaist", 0),
        ("doppelt", 0),
    ] {
        let hits = app.get_json(&format!("/v1/search?q={word}")).await;
        assert_eq!(
            hits["items"].as_array().map(Vec::len),
            Some(found),
            "{word}: {hits}"
        );
    }
    app.stop().await;

    // A second run imports nothing; a new entry of a is appended to it.
    let again = sessiond(&data, &["import", "opencode", db.to_str().unwrap()]);
    assert_eq!(
        counts(&again.stdout, "imported:"),
        (0, 0),
        "{}",
        again.stdout
    );
    assert_eq!(refused_lines(&again.stdout).len(), 4, "{}", again.stdout);
    entry(
        &a,
        17,
        "user",
        json!({"text": "Noch eine Frage", "time": {"created": T0 + 90_000}}),
    );
    let later = sessiond(&data, &["import", "opencode", db.to_str().unwrap()]);
    assert_eq!(
        counts(&later.stdout, "imported:"),
        (0, 1),
        "{}",
        later.stdout
    );
    let app = server(&data).await;
    let sessions = imported_sessions(&app).await;
    assert_eq!(sessions[&a]["message_count"], 7);
    let listed = messages(&app, &sessions[&a]).await;
    assert_eq!(listed[6]["parts"][0]["text"], "Noch eine Frage");
    app.stop().await;
}

/// An installation imported under 1.x and imported again after OpenCode 2 copied its history
/// (under the same ids) into its own tables: the second import continues the first, adding
/// only what was said since, not the copied history a second time.
#[tokio::test(flavor = "multi_thread")]
async fn import_opencode_continues_across_the_upgrade_to_opencode_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("opencode.db");
    let s = oc_id("ses", 0x3a0);
    let (m1, m2, m3) = (
        oc_id("msg", 0x3a1),
        oc_id("msg", 0x3a2),
        oc_id("msg", 0x3a3),
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(&format!(
        "{V1_TABLES}
         INSERT INTO session VALUES ('{s}', 'global', 's', '/upgrade', 'Vorher', '1.14.0', {T0}, {T0});
         INSERT INTO message VALUES ('{m1}', '{s}', {t1}, {t1}, '{{\"role\":\"user\"}}');
         INSERT INTO part VALUES ('prt_1', '{m1}', '{s}', {t1}, {t1}, '{{\"type\":\"text\",\"text\":\"vorher gefragt\"}}');
         INSERT INTO message VALUES ('{m2}', '{s}', {t2}, {t2}, '{{\"role\":\"assistant\"}}');
         INSERT INTO part VALUES ('prt_2', '{m2}', '{s}', {t2}, {t2}, '{{\"type\":\"text\",\"text\":\"vorher geantwortet\"}}');",
        t1 = T0 + 1,
        t2 = T0 + 2,
    ))
    .unwrap();
    let data = dir.path().join("data");
    let first = sessiond(&data, &["import", "opencode", db.to_str().unwrap()]);
    assert_eq!(first.code, Some(0), "{}{}", first.stdout, first.stderr);
    assert_eq!(
        counts(&first.stdout, "imported:"),
        (1, 2),
        "{}",
        first.stdout
    );

    // OpenCode 2's first start: the session and its messages copied under the same ids, the 1.x
    // tables left as they were; then one more exchange under 2.x.
    conn.execute_batch(&format!(
        "CREATE TABLE session_v2 (id TEXT PRIMARY KEY, project_id TEXT NOT NULL, parent_id TEXT,
             slug TEXT NOT NULL, directory TEXT NOT NULL, title TEXT, version TEXT NOT NULL,
             time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL);
         CREATE TABLE session_message (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, type TEXT NOT NULL,
             seq INTEGER NOT NULL, time_created INTEGER NOT NULL, time_updated INTEGER NOT NULL,
             data TEXT NOT NULL);
         INSERT INTO session_v2 VALUES ('{s}', 'global', NULL, 's', '/upgrade', 'Vorher', '2.0.25', {T0}, {t3});
         INSERT INTO session_message VALUES ('{m1}', '{s}', 'user', 1, {t1}, {t1},
             '{{\"text\":\"vorher gefragt\",\"time\":{{\"created\":{t1}}}}}');
         INSERT INTO session_message VALUES ('{m2}', '{s}', 'assistant', 2, {t2}, {t2},
             '{{\"content\":[{{\"type\":\"text\",\"text\":\"vorher geantwortet\"}}],\"time\":{{\"created\":{t2}}}}}');
         INSERT INTO session_message VALUES ('{m3}', '{s}', 'user', 3, {t3}, {t3},
             '{{\"text\":\"nachher gefragt\",\"time\":{{\"created\":{t3}}}}}');",
        t1 = T0 + 1,
        t2 = T0 + 2,
        t3 = T0 + 3,
    ))
    .unwrap();
    let second = sessiond(&data, &["import", "opencode", db.to_str().unwrap()]);
    assert_eq!(second.code, Some(0), "{}{}", second.stdout, second.stderr);
    assert_eq!(
        counts(&second.stdout, "imported:"),
        (0, 1),
        "{}",
        second.stdout
    );
    assert_eq!(
        counts(&second.stdout, "skipped:"),
        (1, 2),
        "{}",
        second.stdout
    );

    let app = server(&data).await;
    let sessions = imported_sessions(&app).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let texts: Vec<Value> = messages(&app, &sessions[&s])
        .await
        .iter()
        .map(|m| m["parts"][0]["text"].clone())
        .collect();
    assert_eq!(
        texts,
        [
            json!("vorher gefragt"),
            json!("vorher geantwortet"),
            json!("nachher gefragt")
        ]
    );
    app.stop().await;
}

/// Makes every stored message unreadable (its parts no longer JSON), behind the server's back.
async fn break_stored_messages(data_dir: &Path) {
    let sql = "UPDATE messages SET parts = 'not json'";
    match postgres_database_for(data_dir) {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.execute(sql, &[]).await.unwrap();
        }
        None => {
            let conn = rusqlite::Connection::open(data_dir.join("sessiond.db")).unwrap();
            conn.execute(sql, []).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_that_fails_half_way_leaves_the_previous_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = server(&data).await;
    let sid = app.create_session_id("/d", "s").await;
    app.append(&sid, "user", "the first backup").await;
    app.stop().await;
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let backup = backups.join("backup.jsonl");
    let path = backup.to_str().unwrap();

    std::fs::write(&backup, "an older backup\n").unwrap();
    let done = sessiond(&data, &["export", "--output", path]);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let good = std::fs::read_to_string(&backup).unwrap();
    assert_eq!(good.lines().count(), 2, "{good}");
    assert!(good.contains("the first backup"), "{good}");

    // The session's line is written before its messages are read, and they cannot be.
    break_stored_messages(&data).await;
    let failed = sessiond(&data, &["export", "--output", path]);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(
        failed.stderr.contains("sessiond export:") && failed.stderr.contains("messages"),
        "{}",
        failed.stderr
    );
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), good);
    let left: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("backup.jsonl")]);
}
