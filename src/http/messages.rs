//! Messages: append to a session, page through a session's messages, read one.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

use super::SharedState;
use super::conditional;
use super::extract::{JsonBody, MessagePath, NonEmpty, Query, SessionPath};
use super::response::{PageBody, created, encode};
use crate::cache::{Entry, Key};
use crate::domain::{CreateMessage, Invalid, Limit, Message, MessageCursor, NewMessage, Order};
use crate::error::{ApiResult, Problem};
use crate::storage::MessageListQuery;

/// Query of `GET /v1/sessions/{id}/messages`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `asc` (default, oldest first) or `desc`; with a cursor, defaults to the cursor's order
    /// (and must match it).
    #[param(inline)]
    order: Option<Order>,
    #[param(inline)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    #[param(inline)]
    cursor: Option<NonEmpty>,
}

/// Append a message to a session.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/messages", tag = "messages",
    operation_id = "create_message",
    params(("id" = String, Path, description = "Session id")),
    request_body = CreateMessage,
    responses(
        (status = 201, description = "The new message; the session's `updated_at` is now its `created_at`", body = Message,
            headers(("Location" = String, description = "URL of the new message"))),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    SessionPath(session): SessionPath,
    JsonBody(body): JsonBody<CreateMessage>,
) -> ApiResult<Response> {
    let new = NewMessage::try_from(body)?;
    let message = state.storage.append_message(session, new).await?;
    created(&format!("/v1/messages/{}", message.id), &message)
}

/// Page through a session's messages.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/messages", tag = "messages",
    operation_id = "list_messages",
    params(
        ("id" = String, Path, description = "Session id"),
        ListParams,
    ),
    responses(
        (status = 200, description = "A page of messages", body = PageBody<Message>),
        (status = 400, description = "Invalid parameter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such session", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    SessionPath(session): SessionPath,
    RawQuery(query): RawQuery,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let list_query = message_list_query(params)?;
    let raw_query: Arc<str> = Arc::from(query.unwrap_or_default());
    let session_key: Arc<str> = Arc::from(session.as_str());
    let page_key = |version| Key::MessagePage {
        session: session_key.clone(),
        version,
        query: raw_query.clone(),
    };
    // A page is keyed by its session's version: any new message moves it.
    if let Some(known) = state.cache.get(&Key::Session(session_key.clone()))
        && let Some(entry) = state.cache.get(&page_key(known.version))
    {
        return Ok(conditional::respond(&headers, &entry));
    }
    let (page, version) = state.storage.list_messages(&session, list_query).await?;
    let etag = format!(
        "{}-p{version}-{}",
        state.storage.identity(),
        conditional::digest(&raw_query)
    );
    if let Some(tag) = conditional::matching_tag(&headers, &etag) {
        return Ok(conditional::not_modified(&tag));
    }
    let entry = Entry::new(
        encode(&PageBody {
            items: page.items,
            next_cursor: page.next.map(|c| c.encode()),
        })?,
        Arc::from(etag),
        Some(session_key.clone()),
        version,
    );
    state.cache.insert(page_key(version), entry.clone());
    Ok(conditional::fresh(entry.body, entry.tag))
}

fn message_list_query(params: ListParams) -> Result<MessageListQuery, Invalid> {
    let after = params
        .cursor
        .map(|c| MessageCursor::decode(&c.0))
        .transpose()?;
    let order = match (params.order, &after) {
        (Some(order), Some(cursor)) if order != cursor.order => {
            return Err(Invalid::new(format!(
                "this cursor continues an order={} list; it cannot be used with order={}",
                cursor.order.as_str(),
                order.as_str()
            )));
        }
        (Some(order), _) => order,
        (None, Some(cursor)) => cursor.order,
        (None, None) => Order::Asc,
    };
    Ok(MessageListQuery {
        order,
        limit: params.limit.unwrap_or_default(),
        after,
    })
}

/// Get one message.
#[utoipa::path(
    get, path = "/v1/messages/{id}", tag = "messages",
    operation_id = "get_message",
    params(("id" = String, Path, description = "Message id")),
    responses(
        (status = 200, description = "The message", body = Message),
        (status = 404, description = "No such message", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<SharedState>,
    headers: HeaderMap,
    MessagePath(id): MessagePath,
) -> ApiResult<Response> {
    let key = Key::Message(Arc::from(id.as_str()));
    if let Some(entry) = state.cache.get(&key) {
        return Ok(conditional::respond(&headers, &entry));
    }
    let message = state.storage.get_message(&id).await?;
    // Messages never change: the creation time is version enough.
    let entry = Entry::new(
        encode(&message)?,
        Arc::from(format!(
            "{}-m{}",
            state.storage.identity(),
            message.created_at
        )),
        Some(Arc::from(message.session_id.as_str())),
        0,
    );
    state.cache.insert(key, entry.clone());
    Ok(conditional::respond(&headers, &entry))
}
