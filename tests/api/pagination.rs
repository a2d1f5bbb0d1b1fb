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

/// Sessions are ordered by `updated_at`: a session that gets a message while a client pages
/// moves to the front, behind the client's position. The guarantees: nothing is ever repeated,
/// every session that did not change meanwhile is seen, and `updated_after` (with the time
/// paging started) finds exactly what moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pages_while_others_create_and_update_sessions() {
    let app = Arc::new(TestApp::spawn().await);
    let mut existing = Vec::new();
    for i in 0..120 {
        let s = app
            .create_session(&format!("/d{}", i % 3), &format!("s{i}"))
            .await;
        existing.push(s["id"].as_str().unwrap().to_owned());
    }
    let started = app.get_json("/v1/sessions?limit=1").await["items"][0]["updated_at"]
        .as_i64()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut writers = Vec::new();
    for w in 0..3 {
        let app = app.clone();
        let stop = stop.clone();
        let moved = moved.clone();
        let existing = existing.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                if w == 0 {
                    // Move an existing session to the front with a new message.
                    let id = &existing[fastrand::usize(..existing.len())];
                    moved.lock().unwrap().insert(id.clone());
                    app.append(id, "user", "bump").await;
                } else {
                    let body =
                        json!({"directory": format!("/d{}", n % 3), "title": format!("w{w}-{n}")});
                    assert_eq!(app.post_json("/v1/sessions", &body).await.status(), 201);
                }
                n += 1;
            }
            n
        }));
    }

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
        let moved = moved.lock().unwrap().clone();
        let in_scope: HashSet<String> = if path.contains("directory") {
            let all = app
                .collect_pages("/v1/sessions?directory=/d1&limit=1000")
                .await;
            ids(&all).into_iter().collect()
        } else {
            existing.iter().cloned().collect()
        };
        for id in &existing {
            if in_scope.contains(id) && !moved.contains(id) {
                assert!(
                    unique.contains(id),
                    "{path}: unchanged session {id} was skipped"
                );
            }
        }
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
    // What moved is exactly what changed since paging started.
    let caught_up: HashSet<String> = ids(&app
        .collect_pages(&format!("/v1/sessions?updated_after={started}&limit=1000"))
        .await)
    .into_iter()
    .collect();
    for id in moved.lock().unwrap().iter() {
        assert!(
            caught_up.contains(id),
            "updated_after finds moved session {id}"
        );
    }
}

#[tokio::test]
async fn message_pages_while_messages_are_appended() {
    let app = Arc::new(TestApp::spawn().await);
    let sid = app.create_session_id("/d", "s").await;
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
