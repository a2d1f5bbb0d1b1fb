//! `/v1/sessions`: create, list, read, update, delete and summarize sessions.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::SharedState;
use super::conditional;
use super::extract::{JsonBody, NonEmpty, NonNegative, Query, SessionPath, Text, TitleQuery};
use super::response::{PageBody, created, encode, ok};
use crate::cache::{Entry, Key};
use crate::domain::{
    ArchivedFilter, CreateSession, Invalid, Limit, NewSession, Session, SessionCursor, SessionId,
    SessionPatch, UpdateSession, fold_title, summary,
};
use crate::error::{ApiError, ApiResult, Problem};
use crate::storage::{SessionFilter, SessionListQuery};

/// Query of `GET /v1/sessions`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only sessions of exactly this directory.
    #[param(inline)]
    directory: Option<NonEmpty>,
    /// `true`: only sessions without a parent.
    roots: Option<bool>,
    /// Only sessions with `updated_at` at or after this time (ms).
    #[param(inline)]
    updated_after: Option<NonNegative>,
    /// Case-insensitive substring of the title (empty: no filter).
    #[param(inline)]
    q: Option<TitleQuery>,
    /// `false` (default) hides archived sessions, `true` shows only them, `all` shows both.
    #[param(inline)]
    archived: Option<ArchivedFilter>,
    #[param(inline)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    #[param(inline)]
    cursor: Option<NonEmpty>,
}

/// Create a session.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "sessions",
    operation_id = "create_session",
    request_body = CreateSession,
    responses(
        (status = 201, description = "The new session", body = Session,
            headers(("Location" = String, description = "URL of the new session"))),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`parent_id` names no session", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    JsonBody(body): JsonBody<CreateSession>,
) -> ApiResult<Response> {
    let new = NewSession::try_from(body)?;
    let session = state.storage.create_session(new).await?;
    created(&format!("/v1/sessions/{}", session.id), &session)
}

/// List sessions, most recently updated first.
#[utoipa::path(
    get, path = "/v1/sessions", tag = "sessions",
    operation_id = "list_sessions",
    params(ListParams),
    responses(
        (status = 200, description = "A page of sessions, ordered by `updated_at` then `id`, descending", body = PageBody<Session>),
        (status = 400, description = "Invalid parameter or cursor", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let list_query = session_list_query(params)?;
    let storage = state.storage.clone();
    cached_list(
        &state,
        &headers,
        "sessions",
        query.as_deref(),
        || async move {
            let page = storage.list_sessions(list_query).await?;
            encode(&PageBody {
                items: page.items,
                next_cursor: page.next.map(|c| c.encode()),
            })
        },
    )
    .await
}

/// A list or search page, validated and cached by the event log's head: any change moves the
/// head, so a client that saw this head gets a 304 without a query, and other clients get the
/// cached page without one.
pub async fn cached_list<F, Fut>(
    state: &SharedState,
    headers: &HeaderMap,
    kind: &str,
    query: Option<&str>,
    load: F,
) -> ApiResult<Response>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ApiResult<Bytes>>,
{
    let head = state.hub.head();
    let path: Arc<str> = Arc::from(format!("{kind}?{}", query.unwrap_or("")));
    let etag = format!(
        "{}-h{head}-{}",
        state.storage.identity(),
        conditional::digest(&path)
    );
    if let Some(tag) = conditional::matching_tag(headers, &etag) {
        return Ok(conditional::not_modified(&tag));
    }
    let key = Key::List { head, path };
    if let Some(entry) = state.cache.get(&key) {
        return Ok(conditional::fresh(entry.body, entry.tag));
    }
    let body = load().await?;
    let entry = Entry::new(body, Arc::from(etag), None, head);
    state.cache.insert(key, entry.clone());
    Ok(conditional::fresh(entry.body, entry.tag))
}

fn session_list_query(params: ListParams) -> Result<SessionListQuery, Invalid> {
    Ok(SessionListQuery {
        filter: SessionFilter {
            directory: params.directory.map(Text::into_inner),
            roots_only: params.roots.unwrap_or(false),
            updated_after: params.updated_after.map(|ms| ms.0),
            title_contains: params
                .q
                .filter(|q| !q.0.is_empty())
                .map(|q| fold_title(&q.0)),
            archived: params.archived.unwrap_or_default(),
        },
        limit: params.limit.unwrap_or_default(),
        after: params
            .cursor
            .map(|c| SessionCursor::decode(&c.0))
            .transpose()?,
    })
}

/// Get one session.
#[utoipa::path(
    get, path = "/v1/sessions/{id}", tag = "sessions",
    operation_id = "get_session",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session", body = Session),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<SharedState>,
    headers: HeaderMap,
    SessionPath(id): SessionPath,
) -> ApiResult<Response> {
    let entry = session_entry(&state, &id).await?;
    Ok(conditional::respond(&headers, &entry))
}

/// A session's cached response, loading (and caching) it on a miss.
pub async fn session_entry(state: &SharedState, id: &SessionId) -> ApiResult<Entry> {
    let key = Key::Session(Arc::from(id.as_str()));
    if let Some(entry) = state.cache.get(&key) {
        return Ok(entry);
    }
    let session = state.storage.get_session(id).await?;
    let entry = Entry::new(
        encode(&session)?,
        // The version alone would do; timestamps and count also cover data loaded in bulk.
        Arc::from(format!(
            "{}-s{}.{}.{}",
            state.storage.identity(),
            session.version,
            session.updated_at,
            session.message_count
        )),
        Some(Arc::from(id.as_str())),
        session.version,
    );
    state.cache.insert(key, entry.clone());
    Ok(entry)
}

/// Rename, archive or unarchive a session; always bumps `updated_at`.
#[utoipa::path(
    patch, path = "/v1/sessions/{id}", tag = "sessions",
    operation_id = "update_session",
    params(("id" = String, Path, description = "Session id")),
    request_body = UpdateSession,
    responses(
        (status = 200, description = "The updated session", body = Session),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<SharedState>,
    SessionPath(id): SessionPath,
    JsonBody(body): JsonBody<UpdateSession>,
) -> ApiResult<Response> {
    let patch = SessionPatch::try_from(body)?;
    ok(&state.storage.update_session(id, patch).await?)
}

/// Delete a session and its messages; its children stay, without a parent.
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", tag = "sessions",
    operation_id = "delete_session",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<SharedState>,
    SessionPath(id): SessionPath,
) -> ApiResult<Response> {
    state.storage.delete_session(id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An extractive summary of a session.
#[derive(Serialize, ToSchema)]
pub struct Summary {
    #[schema(value_type = String)]
    pub session_id: SessionId,
    /// The extracted sentences joined by spaces.
    pub summary: String,
    /// The most representative sentences of the session, in their original order.
    pub sentences: Vec<String>,
    pub message_count: i64,
    /// How many of the messages with text were read (the most recent ones, up to the
    /// server's `summarize_max_bytes`).
    pub summarized_messages: usize,
}

/// Summarize a session (CPU-heavy; runs on a bounded worker pool).
#[utoipa::path(
    post, path = "/v1/sessions/{id}/summarize", tag = "sessions",
    operation_id = "summarize_session",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The summary", body = Summary),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many summaries in progress; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn summarize(
    State(state): State<SharedState>,
    SessionPath(id): SessionPath,
) -> ApiResult<Response> {
    // The turn is taken before reading the text, so waiting summaries hold no session text.
    let turn = state
        .summarizer
        .turn()
        .await
        .map_err(|_| ApiError::Overloaded {
            reason: "too many summaries are in progress; retry shortly",
            retry_after_secs: 1,
        })?;
    let text = state
        .storage
        .session_text(&id, state.settings.summarize_max_bytes)
        .await?;
    let summarized_messages = text.texts.len();
    let sentences = turn
        .run(move || summary::summarize(&text.texts, summary::MAX_SENTENCES))
        .await?;
    ok(&Summary {
        session_id: id,
        summary: sentences.join(" "),
        sentences,
        message_count: text.message_count,
        summarized_messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parameters_are_validated() {
        let parse = |q: &str| {
            super::super::extract::parse_query::<ListParams>(Some(q))
                .map_err(|e| e.to_string())
                .and_then(|p| session_list_query(p).map_err(|e| e.to_string()))
        };
        assert!(parse("directory=/a&roots=true&archived=all&limit=10&q=Fix").is_ok());
        assert_eq!(
            parse("q=FiX").unwrap().filter.title_contains.as_deref(),
            Some("fix")
        );
        for bad in [
            "directory=",
            "roots=yes",
            "archived=maybe",
            "limit=0",
            "updated_after=-5",
            "cursor=xyz",
            "directroy=/a",
            "limit=5&limit=6",
            "q=%FF",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
