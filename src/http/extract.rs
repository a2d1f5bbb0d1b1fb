//! Request extractors that turn every malformed input into a precise 400/404/413/415.
//!
//! - [`JsonBody`]: checks `Content-Type`, the body limit, UTF-8, JSON syntax, unknown fields and
//!   types, naming the offending field.
//! - [`QueryParams`]: the query string, refusing unknown and repeated parameters (a typo such as
//!   `directroy=` must not silently return an unfiltered list).
//! - [`SessionPath`], [`MessagePath`]: path ids; an id that cannot name anything is a 404.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::domain::{Invalid, Limit, MessageId, SessionId, clip};
use crate::error::ApiError;

/// A JSON request body deserialized into `T` (which should `deny_unknown_fields`).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        check_json_content_type(request.headers())?;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(
                        "the request body is larger than the server's body limit".to_owned(),
                    )
                } else {
                    ApiError::InvalidRequest(format!(
                        "could not read the request body: {}",
                        rejection.body_text()
                    ))
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "the request has no Content-Type; send `Content-Type: application/json`".to_owned(),
        ));
    };
    let text = value.to_str().unwrap_or("");
    let mut pieces = text.split(';');
    let essence = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type `{}` is not supported; send `application/json`",
            clip(text)
        )));
    }
    for parameter in pieces {
        if let Some((name, value)) = parameter.split_once('=')
            && name.trim().eq_ignore_ascii_case("charset")
        {
            let charset = value.trim().trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "charset `{}` is not supported; JSON bodies must be UTF-8",
                    clip(charset)
                )));
            }
        }
    }
    Ok(())
}

/// Parses a JSON object body into `T` with errors that say what and where.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Err(error) = std::str::from_utf8(bytes) {
        return Err(ApiError::InvalidRequest(format!(
            "the request body is not valid UTF-8 (invalid bytes at offset {})",
            error.valid_up_to()
        )));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest(
            "the request body is empty; expected a JSON object".to_owned(),
        ));
    }
    // serde would accept `["/d"]` for a struct (fields by position): bodies must be objects.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return Err(ApiError::InvalidRequest(
            "the request body must be a JSON object".to_owned(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = inner.to_string().replace(
            // serde names our Rust types; clients only need to know an object was expected.
            "expected struct ",
            "expected a JSON object for ",
        );
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::InvalidRequest(format!("malformed JSON: {message}"))
            }
            Category::Data if path == "." || message.starts_with("unknown field") => {
                ApiError::InvalidRequest(format!("invalid request body: {message}"))
            }
            Category::Data => {
                ApiError::InvalidRequest(format!("invalid value for `{path}`: {message}"))
            }
        }
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::InvalidRequest(format!("malformed JSON: {error}")))?;
    Ok(value)
}

/// The decoded query string of a request, checked against the parameters an endpoint accepts.
#[derive(Debug, Default)]
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl QueryParams {
    /// Decodes `query`, refusing parameters outside `allowed` and repeated ones.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<QueryParams, ApiError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (decode_component(key)?, decode_component(value)?);
            if !allowed.contains(&key.as_ref()) {
                let accepted = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                return Err(ApiError::InvalidRequest(format!(
                    "unknown query parameter `{}`; this endpoint accepts: {accepted}",
                    clip(&key)
                )));
            }
            if pairs.iter().any(|(k, _)| k == &key) {
                return Err(ApiError::InvalidRequest(format!(
                    "query parameter `{key}` is given more than once"
                )));
            }
            pairs.push((key, value));
        }
        Ok(QueryParams { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`, default 50.
    pub fn limit(&self) -> Result<Limit, Invalid> {
        self.get("limit").map_or(Ok(Limit::DEFAULT), Limit::parse)
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, Invalid> {
        match self.get(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(Invalid::new(format!(
                "{key} must be `true` or `false`, not `{}`",
                clip(other)
            ))),
        }
    }

    pub fn millis(&self, key: &str) -> Result<Option<i64>, Invalid> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => match raw.parse::<i64>() {
                Ok(ms) if ms >= 0 => Ok(Some(ms)),
                _ => Err(Invalid::new(format!(
                    "{key} must be a time in milliseconds since the Unix epoch, not `{}`",
                    clip(raw)
                ))),
            },
        }
    }
}

/// Decodes one `application/x-www-form-urlencoded` component, refusing what is not UTF-8
/// (decoding it lossily would quietly search for or filter by something else).
fn decode_component(raw: &str) -> Result<String, ApiError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            ApiError::InvalidRequest(format!(
                "query component `{}` is not valid UTF-8 once percent-decoded",
                clip(raw)
            ))
        })
}

/// `{id}` of a session route.
pub struct SessionPath(pub SessionId);

/// `{id}` of a message route.
pub struct MessagePath(pub MessageId);

async fn raw_path_id<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, state)
        .await
        .map(|Path(raw)| raw)
        .map_err(|_| ApiError::NotFound("no such resource".to_owned()))
}

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = raw_path_id(parts, state).await?;
        SessionId::parse(&raw)
            .map(SessionPath)
            .ok_or_else(|| ApiError::NotFound(format!("session {} does not exist", clip(&raw))))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for MessagePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = raw_path_id(parts, state).await?;
        MessageId::parse(&raw)
            .map(MessagePath)
            .ok_or_else(|| ApiError::NotFound(format!("message {} does not exist", clip(&raw))))
    }
}
