use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

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
    let sid = app.create_session("/d", "s").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
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

#[tokio::test]
async fn filters_by_session_and_directory() {
    let app = TestApp::spawn().await;
    let a = app.create_session("/home/a", "a").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app.create_session("/home/b", "b").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
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
    let sid = app.create_session("/d", "s").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
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
    let sid = app.create_session("/d", "s").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
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

/// bm25 weighs term counts against document length relative to the corpus average, so writes
/// elsewhere can swap two hits. Page 1 must not decide what page 2 leaves out.
#[tokio::test]
async fn a_swap_in_ranking_between_pages_neither_skips_nor_repeats() {
    let app = TestApp::spawn().await;
    let sid = app.create_session("/d", "s").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
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
    // A fresh search sees the new order (bm25 on SQLite; PostgreSQL's ts_rank does not depend
    // on the rest of the corpus, so there the order never changed).
    let fresh = app.get_json("/v1/search?q=needle&limit=1").await;
    let expected = if crate::helpers::on_postgres() {
        &b
    } else {
        &a
    };
    assert_eq!(fresh["items"][0]["message_id"], expected["id"]);
}

#[tokio::test]
async fn deleted_messages_leave_the_index() {
    let app = TestApp::spawn().await;
    let keep = app.create_session("/d", "keep").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone = app.create_session("/d", "gone").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.append(&keep, "user", "quokka sighting").await;
    app.append(&gone, "user", "quokka again").await;
    assert_eq!(search(&app, "q=quokka").await.len(), 2);
    app.delete(&format!("/v1/sessions/{gone}")).await;
    let hits = search(&app, "q=quokka").await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["session_id"], keep.as_str());
}
