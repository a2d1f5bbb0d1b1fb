use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem};

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn create_returns_201_location_and_the_full_session() {
    let app = TestApp::spawn().await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let response = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/home/ana/project", "title": "Fix the login bug"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let session: Value = response.json().await.unwrap();
    let id = session["id"].as_str().unwrap();
    assert!(id.starts_with("ses_"), "{id}");
    assert_eq!(location, format!("/v1/sessions/{id}"));
    assert_eq!(session["directory"], "/home/ana/project");
    assert_eq!(session["title"], "Fix the login bug");
    assert_eq!(session["parent_id"], Value::Null);
    assert_eq!(session["archived_at"], Value::Null);
    assert_eq!(session["message_count"], 0);
    let created = session["created_at"].as_i64().unwrap();
    assert!(created >= before, "created_at is ms since the epoch");
    assert_eq!(session["updated_at"], session["created_at"]);
    let keys: Vec<&str> = session
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 9, "{keys:?}");
    assert_eq!(session["metadata"], json!({}));

    // The Location resolves to the same session.
    assert_eq!(app.get_json(&location).await, session);
}

#[tokio::test]
async fn title_defaults_and_limits() {
    let app = TestApp::spawn().await;
    let session: Value = app
        .post_json("/v1/sessions", &json!({"directory": "/d"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["title"], "New session");

    // Limits count characters, not bytes.
    let ok_title = "é".repeat(1024);
    let response = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "ü".repeat(4096), "title": ok_title}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    for body in [
        json!({"directory": ""}),
        json!({"directory": "x".repeat(4097)}),
        json!({"directory": "/d", "title": "t".repeat(1025)}),
        json!({"directory": "/d", "title": null}),
        json!({"title": "no directory"}),
    ] {
        let problem = assert_problem(
            app.post_json("/v1/sessions", &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
}

/// `null` is how a session shows "no parent", so a create body may say it too.
#[tokio::test]
async fn a_null_parent_means_no_parent() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/d", "parent_id": null}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["parent_id"], Value::Null);
}

#[tokio::test]
async fn parent_must_exist() {
    let app = TestApp::spawn().await;
    let parent = app.create_session("/d", "parent").await;
    let child: Value = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/d", "parent_id": parent["id"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(child["parent_id"], parent["id"]);

    for unknown in ["ses_00000000000000000000000000", "not-an-id", ""] {
        let response = app
            .post_json(
                "/v1/sessions",
                &json!({"directory": "/d", "parent_id": unknown}),
            )
            .await;
        let problem = assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("does not exist")
        );
    }
}

#[tokio::test]
async fn unknown_ids_of_any_form_are_404() {
    let app = TestApp::spawn().await;
    for id in [
        "ses_00000000000000000000000000",
        "ses_x",
        "nothing",
        "msg_00000000000000000000000000",
        "%E2%9C%93",
        "..%2F..%2Fetc",
    ] {
        let path = format!("/v1/sessions/{id}");
        assert_problem(app.get(&path).await, StatusCode::NOT_FOUND, "not_found").await;
        assert_problem(
            app.patch_json(&path, &json!({"title": "x"})).await,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        assert_problem(app.delete(&path).await, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn patch_renames_archives_and_bumps_updated_at() {
    let app = TestApp::spawn().await;
    let session = app.create_session("/d", "old").await;
    let path = format!("/v1/sessions/{}", session["id"].as_str().unwrap());

    let renamed: Value = app
        .patch_json(&path, &json!({"title": "new"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["title"], "new");
    assert!(renamed["updated_at"].as_i64() >= session["updated_at"].as_i64());
    assert_eq!(renamed["created_at"], session["created_at"]);

    let archived: Value = app
        .patch_json(&path, &json!({"archived": true}))
        .await
        .json()
        .await
        .unwrap();
    let archived_at = archived["archived_at"].as_i64().expect("archived_at set");
    assert!(archived_at >= renamed["updated_at"].as_i64().unwrap());

    // Archiving again keeps the first archive time.
    let again: Value = app
        .patch_json(&path, &json!({"archived": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["archived_at"], archived_at);

    let unarchived: Value = app
        .patch_json(&path, &json!({"archived": false, "title": "both"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unarchived["archived_at"], Value::Null);
    assert_eq!(unarchived["title"], "both");
    assert_eq!(app.get_json(&path).await, unarchived);

    for bad in [
        json!({"title": 5}),
        json!({"archived": "yes"}),
        json!({"archived": null}),
        json!({"directory": "/moved"}),
        json!({"title": "t".repeat(1025)}),
    ] {
        assert_problem(
            app.patch_json(&path, &bad).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
}

#[tokio::test]
async fn delete_removes_messages_and_detaches_children() {
    let app = TestApp::spawn().await;
    let parent = app.create_session("/d", "parent").await;
    let parent_id = parent["id"].as_str().unwrap();
    let child: Value = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/d", "parent_id": parent_id}),
        )
        .await
        .json()
        .await
        .unwrap();
    let message = app
        .append(parent_id, "user", "a unique zanzibar word")
        .await;
    assert_eq!(
        app.get_json("/v1/search?q=zanzibar").await["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let response = app.delete(&format!("/v1/sessions/{parent_id}")).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.unwrap().is_empty());

    assert_problem(
        app.get(&format!("/v1/sessions/{parent_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let message_path = format!("/v1/messages/{}", message["id"].as_str().unwrap());
    assert_problem(
        app.get(&message_path).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        app.get(&format!("/v1/sessions/{parent_id}/messages")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(
        app.get_json("/v1/search?q=zanzibar").await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let child_now = app
        .get_json(&format!("/v1/sessions/{}", child["id"].as_str().unwrap()))
        .await;
    assert_eq!(child_now["parent_id"], Value::Null);
    assert_problem(
        app.delete(&format!("/v1/sessions/{parent_id}")).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn list_orders_by_updated_at_then_id_descending() {
    let app = TestApp::spawn().await;
    let a = app.create_session("/d", "a").await;
    let b = app.create_session("/d", "b").await;
    let c = app.create_session("/d", "c").await;
    let id = |s: &Value| s["id"].as_str().unwrap().to_owned();
    let listed = ids(&app.collect_pages("/v1/sessions").await);
    assert_eq!(listed, vec![id(&c), id(&b), id(&a)]);

    // A new message moves its session to the top.
    app.append(&id(&a), "user", "hello").await;
    let listed = ids(&app.collect_pages("/v1/sessions").await);
    assert_eq!(listed, vec![id(&a), id(&c), id(&b)]);
    let first = &app.get_json("/v1/sessions?limit=1").await["items"][0];
    assert_eq!(first["message_count"], 1);
}

#[tokio::test]
async fn list_filters() {
    let app = TestApp::spawn().await;
    let root = app
        .create_session("/home/ana/api", "Fix the LOGIN bug")
        .await;
    let root_id = root["id"].as_str().unwrap();
    let child: Value = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/home/ana/api", "title": "Über-login cleanup", "parent_id": root_id}),
        )
        .await
        .json()
        .await
        .unwrap();
    let other = app.create_session("/home/bo/web", "Styling").await;
    let archived = app.create_session("/home/ana/api", "Old login work").await;
    let archived_id = archived["id"].as_str().unwrap();
    app.patch_json(
        &format!("/v1/sessions/{archived_id}"),
        &json!({"archived": true}),
    )
    .await;
    let id = |s: &Value| s["id"].as_str().unwrap().to_owned();

    let by_dir = ids(&app
        .collect_pages("/v1/sessions?directory=/home/ana/api")
        .await);
    assert_eq!(by_dir, vec![id(&child), id(&root)]);
    // Exact match only: no prefix matching.
    assert!(
        app.collect_pages("/v1/sessions?directory=/home/ana")
            .await
            .is_empty()
    );

    let roots = ids(&app.collect_pages("/v1/sessions?roots=true").await);
    assert_eq!(roots, vec![id(&other), id(&root)]);
    assert_eq!(app.collect_pages("/v1/sessions?roots=false").await.len(), 3);

    // Case-insensitive substring of the title, Unicode included.
    let q = ids(&app.collect_pages("/v1/sessions?q=LoGiN").await);
    assert_eq!(q, vec![id(&child), id(&root)]);
    let q = ids(&app.collect_pages("/v1/sessions?q=%C3%BCBER").await);
    assert_eq!(q, vec![id(&child)]);
    // Substring characters are literal, not patterns.
    assert!(app.collect_pages("/v1/sessions?q=%25").await.is_empty());
    assert!(app.collect_pages("/v1/sessions?q=_").await.is_empty());

    let only_archived = ids(&app.collect_pages("/v1/sessions?archived=true").await);
    assert_eq!(only_archived, vec![archived_id.to_owned()]);
    let all = ids(&app.collect_pages("/v1/sessions?archived=all").await);
    assert_eq!(all.len(), 4);
    assert_eq!(all[0], archived_id, "archiving bumped updated_at");
    let all_in_dir = app
        .collect_pages("/v1/sessions?archived=all&directory=/home/ana/api&q=login")
        .await;
    assert_eq!(all_in_dir.len(), 3);

    // updated_after is inclusive.
    let threshold = child["updated_at"].as_i64().unwrap();
    let recent = app
        .collect_pages(&format!(
            "/v1/sessions?updated_after={threshold}&archived=all"
        ))
        .await;
    assert!(
        recent
            .iter()
            .all(|s| s["updated_at"].as_i64().unwrap() >= threshold)
    );
    assert!(ids(&recent).contains(&id(&child)));
    let expected: Vec<String> = ids(&app
        .collect_pages("/v1/sessions?archived=all")
        .await
        .into_iter()
        .filter(|s| s["updated_at"].as_i64().unwrap() >= threshold)
        .collect::<Vec<_>>());
    assert_eq!(ids(&recent), expected);
}

#[tokio::test]
async fn list_parameters_are_validated() {
    let app = TestApp::spawn().await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "archived=maybe",
        "roots=1",
        "updated_after=yesterday",
        "directory=",
        "cursor=not-a-cursor",
        "directroy=/typo",
        "limit=1&limit=2",
    ] {
        let problem = assert_problem(
            app.get(&format!("/v1/sessions?{query}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        let name = query.split('=').next().unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(name),
            "{query}: {problem}"
        );
    }
    assert_eq!(
        app.get("/v1/sessions?limit=1000").await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get("/v1/sessions?limit=1").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn metadata_is_set_on_create_replaced_by_patch_and_returned_everywhere() {
    let app = TestApp::spawn().await;
    let mut sse = crate::events::Sse::open(&app, "/v1/events", None).await;
    let metadata = json!({"origin": {"tool": "ünïcødé ✓", "n": [1, 2.5, null]}, "tags": ["a"]});
    let response = app
        .post_json(
            "/v1/sessions",
            &json!({"directory": "/meta", "title": "m", "metadata": metadata}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let session: Value = response.json().await.unwrap();
    assert_eq!(session["metadata"], metadata);
    let id = session["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/sessions/{id}");

    let first = app.get(&path).await;
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(first.json::<Value>().await.unwrap()["metadata"], metadata);
    let listed = app.get_json("/v1/sessions?directory=/meta").await;
    assert_eq!(listed["items"][0]["metadata"], metadata);

    // A title-only patch keeps the metadata; a metadata patch replaces all of it.
    let renamed: Value = app
        .patch_json(&path, &json!({"title": "renamed"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["metadata"], metadata);
    let replaced = json!({"only": "this"});
    let patched: Value = app
        .patch_json(&path, &json!({"metadata": replaced}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(patched["metadata"], replaced);
    assert_eq!(patched["title"], "renamed");
    let after = app.get(&path).await;
    assert_ne!(after.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(after.json::<Value>().await.unwrap(), patched);
    let stale = app
        .client
        .get(app.url(&path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stale.status(),
        StatusCode::OK,
        "the old ETag no longer matches"
    );
    let emptied: Value = app
        .patch_json(&path, &json!({"metadata": {}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(emptied["metadata"], json!({}));

    for (kind, data) in [
        ("session.created", &session),
        ("session.updated", &renamed),
        ("session.updated", &patched),
        ("session.updated", &emptied),
    ] {
        let event = sse
            .next(std::time::Duration::from_secs(10))
            .await
            .expect("an event");
        assert_eq!(event.event, kind);
        assert_eq!(&event.data["data"], data, "{kind} carries the metadata");
    }

    // At most 64 KiB of minified JSON; an object, never null.
    let at_limit = json!({"k": "x".repeat(64 * 1024 - 8)});
    assert_eq!(at_limit.to_string().len(), 64 * 1024);
    let ok = app.patch_json(&path, &json!({"metadata": at_limit})).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let over = json!({"k": "x".repeat(64 * 1024 - 7)});
    for bad in [
        json!({"metadata": over}),
        json!({"metadata": null}),
        json!({"metadata": [1]}),
        json!({"metadata": "text"}),
    ] {
        assert_problem(
            app.patch_json(&path, &bad).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        let mut create = json!({"directory": "/meta"});
        create["metadata"] = bad["metadata"].clone();
        assert_problem(
            app.post_json("/v1/sessions", &create).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }

    let doc = app.get_json("/openapi.json").await;
    for schema in ["Session", "CreateSession", "UpdateSession"] {
        assert!(
            doc["components"]["schemas"][schema]["properties"]["metadata"].is_object(),
            "{schema} documents metadata"
        );
    }
}

/// A database made before sessions had metadata is migrated: its sessions read `{}`.
#[tokio::test]
async fn existing_databases_are_migrated_to_session_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let id = "ses_01kaq3m0d8g7w2e5r1t9y3v6h0";
    let insert = format!(
        "INSERT INTO sessions (id, directory, title, title_fold, created_at, updated_at) \
         VALUES ('{id}', '/old', 'Old', 'old', 1763800000000, 1763800000000)"
    );
    match crate::helpers::postgres_database_for(dir.path()) {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::spawn(connection);
            client
                .batch_execute(include_str!("../../migrations/postgres/0001_schema.sql"))
                .await
                .unwrap();
            client
                .batch_execute(
                    "CREATE TABLE sessiond_schema (version BIGINT NOT NULL); \
                     INSERT INTO sessiond_schema (version) VALUES (1);",
                )
                .await
                .unwrap();
            client.batch_execute(&insert).await.unwrap();
            drop(client);
            driver.await.unwrap().unwrap();
        }
        None => {
            let mut conn = rusqlite::Connection::open(dir.path().join("sessiond.db")).unwrap();
            sessiond::storage::sqlite::migrations::migrate_to(&mut conn, 5).unwrap();
            conn.execute_batch(&insert).unwrap();
        }
    }
    let app = TestApp::spawn_in(dir.path(), |_| {}, axum::Router::new()).await;
    let session = app.get_json(&format!("/v1/sessions/{id}")).await;
    assert_eq!(session["metadata"], json!({}));
    assert_eq!(session["title"], "Old");
    let patched: Value = app
        .patch_json(
            &format!("/v1/sessions/{id}"),
            &json!({"metadata": {"after": "migration"}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(patched["metadata"], json!({"after": "migration"}));
    app.stop().await;
}
