use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

#[tokio::test]
async fn append_returns_the_message_and_bumps_the_session() {
    let app = TestApp::spawn().await;
    let session = app.create_session("/d", "s").await;
    let sid = session["id"].as_str().unwrap();
    let body = json!({
        "role": "assistant",
        "parts": [
            {"type": "text", "text": "Login fails because the token expired."},
            {"type": "tool", "name": "bash", "input": {"command": "ls -la"}, "output": "ok", "nested": [1, {"a": null}]},
            {"type": "file", "path": "/etc/hosts", "mime": "text/plain"}
        ],
        "metadata": {"model": "x", "tokens": 12, "tags": ["a"]}
    });
    let response = app
        .post_json(&format!("/v1/sessions/{sid}/messages"), &body)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let message: Value = response.json().await.unwrap();
    let mid = message["id"].as_str().unwrap();
    assert!(mid.starts_with("msg_"));
    assert_eq!(location, format!("/v1/messages/{mid}"));
    assert_eq!(message["session_id"], sid);
    assert_eq!(message["role"], "assistant");
    // Parts and metadata come back verbatim.
    assert_eq!(message["parts"], body["parts"]);
    assert_eq!(message["metadata"], body["metadata"]);
    assert_eq!(app.get_json(&location).await, message);

    let after = app.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(after["updated_at"], message["created_at"]);
    assert_eq!(after["message_count"], 1);
}

#[tokio::test]
async fn metadata_defaults_to_an_empty_object() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    let message = app.append(&sid, "user", "hi").await;
    assert_eq!(message["metadata"], json!({}));
}

#[tokio::test]
async fn every_role_is_accepted_and_others_refused() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    for role in ["user", "assistant", "system", "tool"] {
        assert_eq!(app.append(&sid, role, "x").await["role"], role);
    }
    let response = app
        .post_json(
            &format!("/v1/sessions/{sid}/messages"),
            &json!({"role": "admin", "parts": [{"type": "text", "text": "x"}]}),
        )
        .await;
    let problem = assert_problem(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("role"),
        "{problem}"
    );
}

#[tokio::test]
async fn invalid_messages_are_refused_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    let path = format!("/v1/sessions/{sid}/messages");
    for (body, needle) in [
        (json!({"role": "user"}), "parts"),
        (json!({"role": "user", "parts": []}), "parts"),
        (json!({"role": "user", "parts": "text"}), "parts"),
        (json!({"role": "user", "parts": [5]}), "parts[0]"),
        (json!({"role": "user", "parts": [{"text": "x"}]}), "type"),
        (json!({"role": "user", "parts": [{"type": 3}]}), "type"),
        (json!({"role": "user", "parts": [{"type": "text"}]}), "text"),
        (
            json!({"role": "user", "parts": [{"type": "text", "text": ["x"]}]}),
            "text",
        ),
        (
            json!({"role": "user", "parts": [{"type": "text", "text": "x"}], "metadata": []}),
            "metadata",
        ),
        (
            json!({"role": "user", "parts": [{"type": "text", "text": "x"}], "metadata": null}),
            "metadata",
        ),
        (
            json!({"role": "user", "parts": [{"type": "text", "text": "x"}], "extra": 1}),
            "extra",
        ),
        (json!({"parts": [{"type": "text", "text": "x"}]}), "role"),
    ] {
        let problem = assert_problem(
            app.post_json(&path, &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{body}: {problem}"
        );
    }
    let session = app.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(session["message_count"], 0);
    assert!(app.collect_pages(&path).await.is_empty());
}

#[tokio::test]
async fn append_to_an_unknown_session_is_404() {
    let app = TestApp::spawn().await;
    for sid in ["ses_00000000000000000000000000", "bogus"] {
        let response = app
            .post_json(
                &format!("/v1/sessions/{sid}/messages"),
                &json!({"role": "user", "parts": [{"type": "text", "text": "x"}]}),
            )
            .await;
        assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
        assert_problem(
            app.get(&format!("/v1/sessions/{sid}/messages")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    for mid in ["msg_00000000000000000000000000", "msg_", "x"] {
        assert_problem(
            app.get(&format!("/v1/messages/{mid}")).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn list_pages_in_both_orders() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    let other = app.create_session_id("/d", "other").await;
    let mut written = Vec::new();
    for i in 0..25 {
        written.push(app.append(&sid, "user", &format!("message {i}")).await);
        if i % 5 == 0 {
            app.append(&other, "user", "noise").await;
        }
    }
    let ids = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let expected = ids(&written);

    let asc = app
        .collect_pages(&format!("/v1/sessions/{sid}/messages?limit=7"))
        .await;
    assert_eq!(ids(&asc), expected);
    assert_eq!(asc, written, "listed messages are the stored ones");

    let desc = app
        .collect_pages(&format!("/v1/sessions/{sid}/messages?order=desc&limit=4"))
        .await;
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(ids(&desc), reversed);

    // created_at never decreases along the ascending order.
    let times: Vec<i64> = asc
        .iter()
        .map(|m| m["created_at"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));

    let first = app
        .get_json(&format!("/v1/sessions/{sid}/messages?limit=25"))
        .await;
    assert_eq!(
        first["next_cursor"],
        Value::Null,
        "an exactly full last page has no cursor"
    );
}

#[tokio::test]
async fn cursors_keep_their_order_and_their_list() {
    let app = TestApp::spawn().await;
    let sid = app.create_session_id("/d", "s").await;
    for i in 0..3 {
        app.append(&sid, "user", &format!("m{i}")).await;
    }
    let page = app
        .get_json(&format!("/v1/sessions/{sid}/messages?order=desc&limit=1"))
        .await;
    let cursor = page["next_cursor"].as_str().unwrap();
    // Without `order`, the cursor's own order continues.
    let next = app
        .get_json(&format!(
            "/v1/sessions/{sid}/messages?limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(next["items"][0]["parts"][0]["text"], "m1");
    assert_problem(
        app.get(&format!(
            "/v1/sessions/{sid}/messages?order=asc&cursor={cursor}"
        ))
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    // A sessions cursor is not a messages cursor.
    app.create_session("/d", "second").await;
    let sessions = app.get_json("/v1/sessions?limit=1").await;
    let foreign = sessions["next_cursor"].as_str().unwrap();
    assert_problem(
        app.get(&format!("/v1/sessions/{sid}/messages?cursor={foreign}"))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    for bad in ["order=up", "limit=0", "cursor=%%%", "before=x"] {
        assert_problem(
            app.get(&format!("/v1/sessions/{sid}/messages?{bad}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
}
