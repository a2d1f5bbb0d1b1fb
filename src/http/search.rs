//! `GET /v1/search`: full-text search over the text parts of messages, best match first.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::SharedState;
use super::extract::QueryParams;
use super::response::{PageBody, encode};
use super::sessions::cached_list;
use crate::domain::{Invalid, SearchCursor, SearchHit, SearchTerms, SessionId};
use crate::error::{ApiError, ApiResult, Problem};
use crate::storage::SearchQuery;

/// Search messages.
///
/// `q` is plain words (all required), `"quoted phrases"` and `prefix*`; every other character is
/// matched literally and never read as query syntax. Words are matched case- and
/// accent-insensitively.
#[utoipa::path(
    get, path = "/v1/search", tag = "search",
    params(
        ("q" = String, Query, description = "The query, 1..=256 characters"),
        ("session_id" = Option<String>, Query, description = "Only messages of this session"),
        ("directory" = Option<String>, Query, description = "Only messages of sessions in exactly this directory"),
        ("limit" = Option<u32>, Query, description = "Page size, 1..=1000, default 50"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of hits, best first", body = PageBody<SearchHit>),
        (status = 400, description = "Missing or invalid parameter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many searches in progress; retry after `Retry-After`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn search(
    State(state): State<SharedState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let params = QueryParams::parse(
        query.as_deref(),
        &["q", "session_id", "directory", "limit", "cursor"],
    )?;
    let search = search_query(&params, state.settings.search_window)?;
    cached_list(&state, &headers, "search", query.as_deref(), || async {
        let Some(search) = search else {
            return encode(&PageBody::<SearchHit> {
                items: Vec::new(),
                next_cursor: None,
            });
        };
        // Searches wait for a turn here, not on a database connection cheap reads need.
        let _turn = state
            .searches
            .turn()
            .await
            .map_err(|_| ApiError::Overloaded {
                reason: "too many searches are in progress; retry shortly",
                retry_after_secs: 1,
            })?;
        let page = state.storage.search(search).await?;
        encode(&PageBody {
            items: page.items,
            next_cursor: page.next.map(|c| c.encode()),
        })
    })
    .await
}

/// The storage query, or `None` when the filters can match nothing.
fn search_query(params: &QueryParams, window: u32) -> Result<Option<SearchQuery>, Invalid> {
    let q = params
        .get("q")
        .ok_or_else(|| Invalid::new("q is required: the text to search for"))?;
    let terms = SearchTerms::parse(q)?;
    let limit = params.limit()?;
    let after = params.get("cursor").map(SearchCursor::decode).transpose()?;
    let directory = match params.get("directory") {
        Some("") => return Err(Invalid::new("directory must not be empty")),
        other => other.map(str::to_owned),
    };
    let session_id = match params.get("session_id") {
        None => None,
        Some(raw) => match SessionId::parse(raw) {
            Some(id) => Some(id),
            // Not an id: it names no session, so no message can match.
            None => return Ok(None),
        },
    };
    Ok(Some(SearchQuery {
        terms,
        session_id,
        directory,
        limit,
        after,
        window: Some(window),
    }))
}
