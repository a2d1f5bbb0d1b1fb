use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Process, TestApp, assert_problem};

fn message_ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["message_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn search(app: &TestApp, query: &str) -> Vec<Value> {
    app.get_json(&format!("/v1/search?{query}")).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn encode(q: &str) -> String {
    form_urlencoded::byte_serialize(q.as_bytes()).collect()
}

#[tokio::test]
async fn finds_words_phrases_and_prefixes_with_snippets_and_scores() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    let login = app
        .append(
            &sid,
            "user",
            "Why does the login fail when the token expired?",
        )
        .await;
    let refresh = app
        .append(&sid, "assistant", "The refresh token rotation is broken.")
        .await;
    let other = app
        .append(&sid, "user", "Completely unrelated: lunch plans.")
        .await;
    // Non-text parts are not indexed.
    let tool = app
        .post_json(
            &format!("/v1/sessions/{sid}/messages"),
            &json!({"role": "tool", "parts": [{"type": "tool", "output": "token token token"}]}),
        )
        .await;
    assert_eq!(tool.status(), StatusCode::CREATED);

    let hits = search(&app, "q=token").await;
    let ids: HashSet<String> = message_ids(&hits).into_iter().collect();
    let expected: HashSet<String> = [&login, &refresh]
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected);
    for hit in &hits {
        assert_eq!(hit["session_id"], sid.as_str());
        assert!(hit["score"].as_f64().unwrap() > 0.0);
        assert!(
            hit["snippet"]
                .as_str()
                .unwrap()
                .contains("<mark>token</mark>"),
            "{hit}"
        );
        assert!(hit["created_at"].is_i64());
        assert!(hit["role"].is_string());
    }
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );

    // All words are required.
    assert_eq!(
        message_ids(&search(&app, "q=token+login").await),
        vec![login["id"].as_str().unwrap()]
    );
    // A phrase needs the words adjacent and in order.
    assert_eq!(
        message_ids(&search(&app, &format!("q={}", encode("\"refresh token\""))).await),
        vec![refresh["id"].as_str().unwrap()]
    );
    assert!(
        search(&app, &format!("q={}", encode("\"token refresh\"")))
            .await
            .is_empty()
    );
    // Prefixes.
    assert_eq!(
        message_ids(&search(&app, "q=lun*").await),
        vec![other["id"].as_str().unwrap()]
    );
    // Case- and accent-insensitive.
    assert_eq!(
        search(&app, &format!("q={}", encode("LÚNCH"))).await.len(),
        1
    );
}

/// A `prefix*` longer than an edge gram (5 characters) matches exactly the words it starts,
/// not every word that shares its gram.
#[tokio::test]
async fn long_prefixes_match_exactly_the_words_they_start() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    for n in 0..70 {
        app.append(&sid, "user", &format!("rolled deployment{n:02} out"))
            .await;
    }
    // Shares the first five characters with every word above, but none of the stems below.
    let deployed = app.append(&sid, "user", "we deployed it").await;
    let deployed = deployed["id"].as_str().unwrap();
    let hits = |q: &str| {
        let q = encode(q);
        let app = &app;
        async move { message_ids(&search(app, &format!("q={q}&limit=1000")).await) }
    };
    assert_eq!(hits("deployment*").await.len(), 70);
    // deployment00 … deployment09.
    assert_eq!(hits("deployment0*").await.len(), 10);
    assert_eq!(hits("deploymentx*").await.len(), 0);
    assert_eq!(hits("deployed*").await, vec![deployed.to_owned()]);
    // 71 words start with `deplo`, the gram itself.
    assert_eq!(hits("deplo*").await.len(), 71);
    assert_eq!(hits("deploym*").await.len(), 70);
}

#[tokio::test]
async fn filters_by_session_and_directory() {
    let app = TestApp::spawn().await;
    let a = app.create_session_id("/home/a", "a").await;
    let b = app.create_session_id("/home/b", "b").await;
    let in_a = app.append(&a, "user", "deploy the gateway").await;
    let in_b = app.append(&b, "user", "deploy the gateway again").await;

    assert_eq!(search(&app, "q=gateway").await.len(), 2);
    assert_eq!(
        message_ids(&search(&app, &format!("q=gateway&session_id={a}")).await),
        vec![in_a["id"].as_str().unwrap()]
    );
    assert_eq!(
        message_ids(&search(&app, "q=gateway&directory=/home/b").await),
        vec![in_b["id"].as_str().unwrap()]
    );
    assert!(
        search(&app, &format!("q=gateway&directory=/home/b&session_id={a}"))
            .await
            .is_empty()
    );
    assert!(search(&app, "q=gateway&directory=/home").await.is_empty());
    assert!(
        search(&app, "q=gateway&session_id=ses_00000000000000000000000000")
            .await
            .is_empty()
    );
    assert!(
        search(&app, "q=gateway&session_id=garbage")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn hostile_queries_never_error() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    app.append(
        &sid,
        "user",
        "NEAR the col: text (with) parens AND OR NOT * \"quotes\" ; DROP TABLE",
    )
    .await;
    for q in [
        "\"",
        "\"\"",
        "\"unterminated phrase",
        "*",
        "**",
        "a*b*",
        "NEAR(a b, 2)",
        "NEAR",
        "col:text",
        "text:col",
        "messages_fts:x",
        "(",
        ")",
        "((parens))",
        "AND",
        "OR OR",
        "NOT x",
        "-x",
        "+x",
        "^x",
        "x'; DROP TABLE messages; --",
        "' OR 1=1 --",
        "\\",
        "{col1 col2}: x",
        "rank MATCH 'bm25(1)'",
        "\u{0}",
        "😀 emoji",
        "日本語",
        "%",
        "_",
    ] {
        let response = app.get(&format!("/v1/search?q={}", encode(q))).await;
        assert_eq!(response.status(), StatusCode::OK, "query {q:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["items"].is_array(), "{q:?}: {body}");
    }
    // Syntax words are searched as plain words.
    assert_eq!(search(&app, "q=NEAR").await.len(), 1);
    assert_eq!(
        search(&app, &format!("q={}", encode("col:"))).await.len(),
        1
    );
    assert_eq!(
        search(&app, &format!("q={}", encode("DROP TABLE")))
            .await
            .len(),
        1
    );
    // The table still exists afterwards.
    assert_eq!(search(&app, "q=parens").await.len(), 1);
}

#[tokio::test]
async fn query_is_required_and_bounded() {
    let app = TestApp::spawn().await;
    for query in [
        "",
        "q=",
        &format!("q={}", "a".repeat(257)),
        "q=x&limit=0",
        "q=x&cursor=zz",
        "q=x&sort=new",
    ] {
        assert_problem(
            app.get(&format!("/v1/search?{query}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    assert_eq!(
        app.get(&format!("/v1/search?q={}", "a".repeat(256)))
            .await
            .status(),
        StatusCode::OK
    );
    // Characters, not bytes.
    assert_eq!(
        app.get(&format!("/v1/search?q={}", encode(&"é".repeat(256))))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn pages_cover_every_hit_once_in_one_order_even_while_others_write() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    let mut expected = HashSet::new();
    for i in 0..60 {
        // Different term counts and lengths: bm25 order moves as the corpus grows.
        let text = format!(
            "{} {} number {i}",
            "needle ".repeat(1 + i % 5),
            "filler word ".repeat(i % 7)
        );
        let m = app.append(&sid, "user", &text).await;
        expected.insert(m["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut scores = Vec::new();
    let mut url = "/v1/search?q=needle&limit=7".to_owned();
    loop {
        let page = app.get_json(&url).await;
        for hit in page["items"].as_array().unwrap() {
            seen.push(hit["message_id"].as_str().unwrap().to_owned());
            scores.push(hit["score"].as_f64().unwrap());
        }
        // Others write matches that would rank first and shift every score.
        for _ in 0..5 {
            app.append(&sid, "user", "needle needle needle needle needle needle")
                .await;
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => url = format!("/v1/search?q=needle&limit=7&cursor={cursor}"),
            None => break,
        }
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no hit repeated");
    assert_eq!(
        unique, expected,
        "every hit present when paging started, and only those"
    );
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "one best-first order across pages: {scores:?}"
    );
}

/// A first page ranks and keeps 100 hits (or `limit`, when larger); pages of any size, the
/// largest included, go on past them to the last hit.
#[tokio::test]
async fn pages_of_every_size_reach_past_the_kept_ranking_to_the_last_hit() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    let mut expected = HashSet::new();
    for i in 0..430 {
        let text = format!("{} number {i}", "needle ".repeat(1 + i % 3));
        let m = app.append(&sid, "user", &text).await;
        expected.insert(m["id"].as_str().unwrap().to_owned());
    }
    for limit in [200, 250, 150, 100, 60, 7] {
        let mut seen = Vec::new();
        let mut url = format!("/v1/search?q=needle&limit={limit}");
        loop {
            let page = app.get_json(&url).await;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= limit, "limit {limit}: {} items", items.len());
            seen.extend(
                items
                    .iter()
                    .map(|h| h["message_id"].as_str().unwrap().to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(cursor) => {
                    assert!(
                        !items.is_empty(),
                        "limit {limit}: an empty page with a cursor"
                    );
                    url = format!("/v1/search?q=needle&limit={limit}&cursor={cursor}");
                }
                None => break,
            }
        }
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "limit {limit}: no hit repeated");
        assert_eq!(unique, expected, "limit {limit}: every hit, once");
    }
}

/// bm25 weighs term counts against document length relative to the corpus average, so writes
/// elsewhere can swap two hits. Page 1 must not decide what page 2 leaves out.
#[tokio::test]
async fn a_swap_in_ranking_between_pages_neither_skips_nor_repeats() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    for _ in 0..20 {
        app.append(&sid, "user", &"long filler text ".repeat(33))
            .await;
    }
    let a = app
        .append(&sid, "user", &format!("needle {}", "pad ".repeat(30)))
        .await;
    let b = app
        .append(
            &sid,
            "user",
            &format!("needle needle {}", "pad ".repeat(70)),
        )
        .await;
    let first = app.get_json("/v1/search?q=needle&limit=1").await;
    assert_eq!(
        first["items"][0]["message_id"], b["id"],
        "long documents around: b first"
    );
    // Many short documents shrink the average length: now `a` outranks `b`.
    for _ in 0..400 {
        app.append(&sid, "user", "x").await;
    }
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = app
        .get_json(&format!("/v1/search?q=needle&limit=1&cursor={cursor}"))
        .await;
    assert_eq!(
        second["items"][0]["message_id"], a["id"],
        "a is not skipped"
    );
    assert_eq!(second["next_cursor"], Value::Null);
    // A fresh search sees the new order (bm25, on both backends).
    let fresh = app.get_json("/v1/search?q=needle&limit=1").await;
    assert_eq!(fresh["items"][0]["message_id"], a["id"]);
}

#[tokio::test]
async fn deleted_messages_leave_the_index() {
    let app = TestApp::spawn().await;
    let keep = app.create_session_id("/d", "keep").await;
    let gone = app.create_session_id("/d", "gone").await;
    app.append(&keep, "user", "quokka sighting").await;
    app.append(&gone, "user", "quokka again").await;
    assert_eq!(search(&app, "q=quokka").await.len(), 2);
    app.delete(&format!("/v1/sessions/{gone}")).await;
    let hits = search(&app, "q=quokka").await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["session_id"], keep.as_str());
}

/// Appends `count` messages `"{word}{n} shared"` and returns their ids in order.
async fn append_numbered(
    client: &reqwest::Client,
    server: &Process,
    sid: &str,
    word: &str,
    count: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let response = client
            .post(server.url(&format!("/v1/sessions/{sid}/messages")))
            .json(&json!({"role": "user", "parts": [{"type": "text", "text": format!("{word}{n} shared")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids
}

async fn process_search(client: &reqwest::Client, server: &Process, query: &str) -> Vec<String> {
    let response = client
        .get(server.url(&format!("/v1/search?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    message_ids(body["items"].as_array().unwrap())
}

async fn index_status(client: &reqwest::Client, server: &Process) -> Value {
    let body: Value = client
        .get(server.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["search_index"].clone()
}

/// Every acknowledged message is searchable right after a restart, whether or not the index had
/// committed it, and the index then catches up from its last commit (both backends: on
/// PostgreSQL the index is this instance's, in its data dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_loses_nothing_to_sigkill_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Process::start_on_backend(dir.path(), &[]);
    let session: Value = client
        .post(server.url("/v1/sessions"))
        .json(&json!({"directory": "/kill", "title": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();
    let ids = append_numbered(&client, &server, &sid, "kiwi", 200).await;
    server.kill();

    let server = Process::start_on_backend(dir.path(), &[]);
    for n in [0, 99, 199] {
        assert_eq!(
            process_search(&client, &server, &format!("q=kiwi{n}")).await,
            vec![ids[n].clone()]
        );
    }
    let all: HashSet<String> = process_search(&client, &server, "q=shared&limit=1000")
        .await
        .into_iter()
        .collect();
    assert_eq!(all, ids.iter().cloned().collect::<HashSet<_>>());
    let newest = 200; // one message per seq, the session is no message
    let started = std::time::Instant::now();
    loop {
        let status = index_status(&client, &server).await;
        if status["lag"] == 0 && status["committed"]["messages"].as_i64() >= Some(newest) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the index never caught up: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // New writes after the restart are found too.
    let more = append_numbered(&client, &server, &sid, "lime", 3).await;
    assert_eq!(
        process_search(&client, &server, "q=lime2").await,
        vec![more[2].clone()]
    );
}

/// A corrupted or deleted index dir is rebuilt from the database (both backends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_deleted_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Process::start_on_backend(dir.path(), &[]);
    let session: Value = client
        .post(server.url("/v1/sessions"))
        .json(&json!({"directory": "/rebuild", "title": "r"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = session["id"].as_str().unwrap().to_owned();
    let ids = append_numbered(&client, &server, &sid, "papaya", 30).await;
    assert!(server.terminate().success());
    let index_dir = dir.path().join("search");
    let meta = index_dir.join("meta.json");
    assert!(meta.exists(), "the index lives in the data dir");

    std::fs::write(&meta, b"{ not json").unwrap();
    let server = Process::start_on_backend(dir.path(), &[]);
    assert_eq!(
        process_search(&client, &server, "q=papaya7").await,
        vec![ids[7].clone()]
    );
    assert_eq!(
        process_search(&client, &server, "q=shared&limit=100")
            .await
            .len(),
        30
    );
    assert_eq!(index_status(&client, &server).await["building"], false);
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "sessiond_searches_total{kind=\"word\"}",
        "sessiond_search_index_lag ",
        "sessiond_search_index_segments ",
        "sessiond_search_index_commit_seconds",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
    assert!(server.terminate().success());
    let rebuilt = std::fs::read_to_string(&meta).unwrap();
    assert!(rebuilt.contains("payload"), "{rebuilt}");

    std::fs::remove_dir_all(&index_dir).unwrap();
    let server = Process::start_on_backend(dir.path(), &[]);
    assert_eq!(
        process_search(&client, &server, "q=papaya29").await,
        vec![ids[29].clone()]
    );
    assert!(index_dir.join("meta.json").exists());
}

/// An index too big to build before serving is built in the background: meanwhile a search is
/// either the complete answer or 503 `overloaded` with `Retry-After`, never a partial one, and
/// `/ready` shows the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_index_builds_in_the_background_and_search_is_never_partial() {
    let dir = tempfile::tempdir().unwrap();
    let backend = crate::helpers::backend_args(dir.path());
    let seeded = std::process::Command::new(Process::binary())
        .args(["seed", "--data-dir"])
        .arg(dir.path())
        .args(if backend.is_empty() {
            vec!["--database".to_owned(), "sqlite".to_owned()]
        } else {
            backend
        })
        .args(["--sessions", "200", "--messages-per-session", "10"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        seeded.status.success(),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    if crate::helpers::on_postgres() {
        // Commands open PostgreSQL without a search index: the server builds its own.
        assert!(!dir.path().join("search").exists());
    } else {
        std::fs::remove_dir_all(dir.path().join("search")).unwrap();
    }

    let client = reqwest::Client::new();
    let server = Process::start_on_backend(dir.path(), &["--search-index-foreground", "100"]);
    let url = server.url("/v1/search?q=the&limit=20");
    let mut during = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let ready: Value = client
            .get(server.url("/ready"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let index = &ready["search_index"];
        let progress = index["progress"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&progress), "{ready}");
        if index["building"] == false {
            break;
        }
        assert_eq!(ready["status"], "degraded", "{ready}");
        let response = client.get(&url).send().await.unwrap();
        if response.status() == StatusCode::OK {
            during.push(response.json::<Value>().await.unwrap());
        } else {
            assert!(response.headers().contains_key("retry-after"));
            let problem =
                assert_problem(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
            assert!(
                problem["detail"].as_str().unwrap().contains("index"),
                "{problem}"
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the build did not finish: {ready}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let complete: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(complete["items"].as_array().unwrap().len(), 20);
    for answer in during {
        assert_eq!(answer["items"], complete["items"]);
    }
}

/// A PostgreSQL database made when search used a `tsvector` column is migrated: the column and
/// its GIN index go, this instance's index is built from the messages already there, and the
/// messages head starts at them. (PostgreSQL whichever backend the suite runs on.)
#[tokio::test]
async fn a_postgres_database_searched_by_tsvector_is_migrated_to_the_index() {
    let Some(base) = crate::helpers::postgres_required() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::postgres_database_at(&base, dir.path());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    // The schema as of version 3, written to as that version did (the tsvector generated).
    for (_, sql) in &sessiond::storage::postgres::migrations::MIGRATIONS[..3] {
        client.batch_execute(sql).await.unwrap();
    }
    client
        .batch_execute(
            "CREATE TABLE sessiond_schema (version BIGINT NOT NULL); \
             INSERT INTO sessiond_schema (version) VALUES (3); \
             INSERT INTO sessions (id, directory, title, title_fold, created_at, updated_at, \
                 message_count) \
             VALUES ('ses_01kaq3m0d8g7w2e5r1t9y3v6h0', '/old', 'Old', 'old', 1763800000000, \
                 1763800000000, 2); \
             INSERT INTO messages (id, session_id, role, parts, metadata, text, created_at) VALUES \
             ('msg_01kaq3m0d8g7w2e5r1t9y3v6h1', 'ses_01kaq3m0d8g7w2e5r1t9y3v6h0', 'user', \
                 '[{\"type\":\"text\",\"text\":\"an old axolotl\"}]', '{}', 'an old axolotl', \
                 1763800000001), \
             ('msg_01kaq3m0d8g7w2e5r1t9y3v6h2', 'ses_01kaq3m0d8g7w2e5r1t9y3v6h0', 'user', \
                 '[{\"type\":\"text\",\"text\":\"another axolotl\"}]', '{}', 'another axolotl', \
                 1763800000002);",
        )
        .await
        .unwrap();
    let has_tsv = "SELECT count(*) FROM information_schema.columns \
                   WHERE table_name = 'messages' AND column_name = 'tsv'";
    let count: i64 = client.query_one(has_tsv, &[]).await.unwrap().get(0);
    assert_eq!(count, 1, "the old schema has the tsvector");

    let app = TestApp::spawn_in(
        dir.path(),
        |config| config.database = sessiond::config::Database::Postgres(url.clone()),
        axum::Router::new(),
    )
    .await;
    let found = message_ids(&search(&app, "q=axolotl").await);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        message_ids(&search(&app, "q=another").await),
        vec!["msg_01kaq3m0d8g7w2e5r1t9y3v6h2"]
    );
    let fresh = app
        .append("ses_01kaq3m0d8g7w2e5r1t9y3v6h0", "user", "a new axolotl")
        .await;
    assert_eq!(
        message_ids(&search(&app, "q=new").await),
        vec![fresh["id"].as_str().unwrap()]
    );

    let count: i64 = client.query_one(has_tsv, &[]).await.unwrap().get(0);
    assert_eq!(count, 0, "the tsvector is gone");
    let gin: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'messages_search'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gin, 0, "its GIN index too");
    let (messages, newest): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT messages FROM head), (SELECT max(seq) FROM messages)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        messages, newest,
        "the messages head names the newest message"
    );
    app.stop().await;
    drop(client);
    driver.await.unwrap().unwrap();
}

/// The trap of taking the messages head from the identity sequence: a batch in flight (here one
/// of "another instance", holding the `head` lock) has taken a `seq` but not committed. A
/// search meanwhile must not move past it, or that message would never be searched; once the
/// batch commits, the next search finds it. (PostgreSQL whichever backend the suite runs on.)
#[tokio::test]
async fn a_message_in_flight_on_postgres_is_found_once_committed() {
    let Some(base) = crate::helpers::postgres_required() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::postgres_database_at(&base, dir.path());
    let app = TestApp::spawn_in(
        dir.path(),
        |config| config.database = sessiond::config::Database::Postgres(url.clone()),
        axum::Router::new(),
    )
    .await;
    let sid = app.create_session_id("/f", "f").await;
    app.append(&sid, "user", "committed first").await;

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    // A batch as every instance's writer runs it: the head lock, the rows, the head moved.
    client
        .batch_execute(
            "BEGIN; \
             SELECT seq FROM head WHERE id = 1 FOR UPDATE; \
             INSERT INTO messages (id, session_id, role, parts, metadata, text, created_at) \
             SELECT 'msg_01kaq3m0d8g7w2e5r1t9y3v6h9', id, 'user', \
                 '[{\"type\":\"text\",\"text\":\"inflight walrus\"}]', '{}', 'inflight walrus', \
                 updated_at + 1 FROM sessions;",
        )
        .await
        .unwrap();
    // Searches while it is in flight see only what is committed…
    assert!(search(&app, "q=inflight").await.is_empty());
    assert_eq!(search(&app, "q=committed").await.len(), 1);
    client
        .batch_execute(
            "UPDATE head SET messages = GREATEST(messages, \
                 coalesce((SELECT max(seq) FROM messages), 0)) WHERE id = 1; \
             COMMIT;",
        )
        .await
        .unwrap();
    // …and the first one after its commit finds it (another query string: nothing cached).
    assert_eq!(
        message_ids(&search(&app, "q=inflight&limit=5").await),
        vec!["msg_01kaq3m0d8g7w2e5r1t9y3v6h9"]
    );
    app.stop().await;
    drop(client);
    driver.await.unwrap().unwrap();
}
