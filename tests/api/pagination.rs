//! Keyset pages stay complete and duplicate-free while other clients write.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::helpers::TestApp;

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn session_pages_while_other_clients_create_sessions() {
    let app = Arc::new(TestApp::spawn().await);
    let mut existing = HashSet::new();
    for i in 0..120 {
        let s = app
            .create_session(&format!("/d{}", i % 3), &format!("s{i}"))
            .await;
        existing.insert(s["id"].as_str().unwrap().to_owned());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let app = app.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = app
                    .post_json(
                        "/v1/sessions",
                        &json!({"directory": format!("/d{}", n % 3), "title": format!("w{w}-{n}")}),
                    )
                    .await;
                assert_eq!(response.status(), 201);
                n += 1;
            }
            n
        }));
    }

    // Page slowly through everything, and through one directory, while writers insert.
    for path in ["/v1/sessions?limit=7", "/v1/sessions?limit=5&directory=/d1"] {
        let mut seen = Vec::new();
        let mut url = path.to_owned();
        loop {
            let page = app.get_json(&url).await;
            seen.extend(ids(page["items"].as_array().unwrap()));
            tokio::task::yield_now().await;
            match page["next_cursor"].as_str() {
                Some(cursor) => url = format!("{path}&cursor={cursor}"),
                None => break,
            }
        }
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "{path}: a session was repeated");
        let mut expected: HashSet<String> = existing.clone();
        if path.contains("directory") {
            let all = app
                .collect_pages("/v1/sessions?directory=/d1&limit=1000")
                .await;
            let in_dir: HashSet<String> = ids(&all).into_iter().collect();
            expected.retain(|id| in_dir.contains(id));
        }
        assert!(
            expected.is_subset(&unique),
            "{path}: a session that existed before paging was skipped"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }
    assert!(
        written > 0,
        "the writers ran concurrently with the pagination"
    );
}

#[tokio::test]
async fn message_pages_while_messages_are_appended() {
    let app = Arc::new(TestApp::spawn().await);
    let sid = app.create_session("/d", "s").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut before = Vec::new();
    for i in 0..60 {
        before.push(
            app.append(&sid, "user", &format!("m{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let app = app.clone();
        let sid = sid.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut appended = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                appended.push(
                    app.append(&sid, "assistant", "more").await["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            appended
        })
    };
    let path = format!("/v1/sessions/{sid}/messages?limit=9");
    let mut seen = Vec::new();
    let mut url = path.clone();
    loop {
        let page = app.get_json(&url).await;
        seen.extend(ids(page["items"].as_array().unwrap()));
        match page["next_cursor"].as_str() {
            Some(cursor) if seen.len() < 200 => url = format!("{path}&cursor={cursor}"),
            _ => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let appended = writer.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no message repeated");
    assert_eq!(
        &seen[..60],
        &before[..],
        "the existing messages come first, in order, none skipped"
    );
    // What was appended meanwhile follows in order too (a prefix of it, as paging stopped).
    let tail = &seen[60..];
    assert_eq!(tail, &appended[..tail.len()]);
}
