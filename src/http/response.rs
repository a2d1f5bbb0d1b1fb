//! Building JSON responses: serialized once, straight into the body buffer.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

/// One page of a list as sent: `{"items": [...], "next_cursor": "…" | null}`.
#[derive(Serialize, ToSchema)]
pub struct PageBody<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `value` encoded as JSON, into a buffer sized for typical pages.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> ApiResult<bytes::Bytes> {
    let mut buffer = Vec::with_capacity(4096);
    serde_json::to_writer(&mut buffer, value)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("encoding a response")))?;
    Ok(bytes::Bytes::from(buffer))
}

/// A JSON response with `status`.
pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> ApiResult<Response> {
    let body = serde_json::to_vec(value)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("encoding a response")))?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `200 OK` with a JSON body.
pub fn ok<T: Serialize + ?Sized>(value: &T) -> ApiResult<Response> {
    json(StatusCode::OK, value)
}

/// `201 Created` with `Location` and the created resource.
pub fn created<T: Serialize + ?Sized>(location: &str, value: &T) -> ApiResult<Response> {
    let mut response = json(StatusCode::CREATED, value)?;
    let location = HeaderValue::from_str(location)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("building Location")))?;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}
