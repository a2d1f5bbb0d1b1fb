//! `GET /v1/search`: full-text search over the text parts of messages, best match first.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

use super::SharedState;
use super::extract::{NonEmpty, Query, SearchText, Text};
use super::response::{PageBody, encode};
use super::sessions::cached_list;
use crate::domain::{Invalid, Limit, SearchCursor, SearchHit, SearchTerms, SessionId};
use crate::error::{ApiError, ApiResult, Problem};
use crate::storage::SearchQuery;

/// Query of `GET /v1/search`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// The query.
    #[param(inline)]
    q: SearchText,
    /// Only messages of this session.
    #[param(inline)]
    session_id: Option<NonEmpty>,
    /// Only messages of sessions in exactly this directory.
    #[param(inline)]
    directory: Option<NonEmpty>,
    #[param(inline)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    #[param(inline)]
    cursor: Option<NonEmpty>,
}

/// Search messages.
///
/// `q` is plain words (all required), `"quoted phrases"` and `prefix*`; every other character is
/// matched literally and never read as query syntax. Words are matched case- and
/// accent-insensitively.
#[utoipa::path(
    get, path = "/v1/search", tag = "search",
    params(SearchParams),
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
    Query(params): Query<SearchParams>,
) -> ApiResult<Response> {
    let search = search_query(params, state.settings.search_window)?;
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
fn search_query(params: SearchParams, window: u32) -> Result<Option<SearchQuery>, Invalid> {
    let terms = SearchTerms::parse(&params.q.0)?;
    let after = params
        .cursor
        .map(|c| SearchCursor::decode(&c.0))
        .transpose()?;
    let session_id = match params.session_id {
        None => None,
        Some(raw) => match SessionId::parse(&raw.0) {
            Some(id) => Some(id),
            // Not an id: it names no session, so no message can match.
            None => return Ok(None),
        },
    };
    Ok(Some(SearchQuery {
        terms,
        session_id,
        directory: params.directory.map(Text::into_inner),
        limit: params.limit.unwrap_or_default(),
        after,
        window: Some(window),
    }))
}
