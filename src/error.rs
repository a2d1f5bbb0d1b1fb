//! The one error type of the HTTP API, rendered as RFC 9457 problem details.
//!
//! Every failure a handler or extractor can meet becomes an [`ApiError`]; its response is
//! `application/problem+json` with a stable `code`. Internal errors carry their cause chain to
//! the access log (via a response extension, so it is logged with the request id) and show the
//! client nothing but "internal error".

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::Invalid;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the {tier} rate limit is exhausted; retry in {retry_after_secs} s")]
    RateLimited {
        tier: &'static str,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("the request took longer than the server's request timeout")]
    Timeout,
    #[error("{reason}")]
    Overloaded {
        reason: &'static str,
        retry_after_secs: u32,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// RFC 9457 problem details, with sessiond's stable `code`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: `code` is the machine-readable kind.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub kind: &'static str,
    #[schema(example = "Not Found")]
    pub title: &'static str,
    #[schema(example = 404)]
    pub status: u16,
    #[schema(example = "session ses_01kaq3m0d8g7w2e5r1t9y3v6h0 does not exist")]
    pub detail: String,
    /// One of `not_found`, `invalid_request`, `payload_too_large`, `unauthorized`, `forbidden`,
    /// `rate_limited`, `timeout`, `overloaded`, `conflict`, `internal`.
    #[schema(example = "not_found")]
    pub code: &'static str,
}

/// The cause of a 500, attached to the response for the access log; never serialized.
#[derive(Clone, Debug)]
pub struct InternalCause(pub Arc<anyhow::Error>);

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Timeout | ApiError::Overloaded { .. } | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::InvalidRequest(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::MethodNotAllowed(_) => "invalid_request",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Conflict(_) => "conflict",
            ApiError::Timeout => "timeout",
            ApiError::Overloaded { .. } | ApiError::Unavailable(_) => "overloaded",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Internal(_) => "internal",
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::Internal(_) => {
                "an internal error occurred; the server log has details under this request's \
                 X-Request-Id"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        ApiError::InvalidRequest(invalid.0)
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        match error {
            not_found @ StorageError::NotFound { .. } => ApiError::NotFound(not_found.to_string()),
            StorageError::Unavailable(why) => ApiError::Unavailable(format!(
                "the server cannot take this request right now ({why}); retry shortly"
            )),
            StorageError::Rejected(why) => ApiError::InvalidRequest(why),
            StorageError::Conflict(why) => ApiError::Conflict(why),
            StorageError::Overloaded {
                reason,
                retry_after_secs,
            } => ApiError::Overloaded {
                reason,
                retry_after_secs,
            },
            StorageError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

/// A problem+json response for `status` (also used by middleware that has no `ApiError`).
pub fn problem_response(status: StatusCode, code: &'static str, detail: String) -> Response {
    let problem = Problem {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
        code,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = problem_response(status, self.code(), self.detail());
        match self {
            ApiError::Overloaded {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            ApiError::Internal(cause) => {
                response
                    .extensions_mut()
                    .insert(InternalCause(Arc::new(cause)));
            }
            _ => {}
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
