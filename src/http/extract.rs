//! Request extractors that turn every malformed input into a precise 400/404/413/415.
//!
//! - [`JsonBody`]: checks `Content-Type`, the body limit, UTF-8, JSON syntax, unknown fields and
//!   types, naming the offending field.
//! - [`Query`]: the query string into a typed struct that also documents it, refusing unknown
//!   and repeated parameters.
//! - [`SessionPath`], [`MessagePath`]: path ids; an id that cannot name anything is a 404.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::{DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::error::Category;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

use super::SharedState;
use crate::domain::{MessageId, SessionId, clip};
use crate::error::ApiError;

/// A JSON request body deserialized into `T` (which should `deny_unknown_fields`).
pub struct JsonBody<T>(pub T);

impl<T> FromRequest<SharedState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, ApiError> {
        check_json_content_type(request.headers())?;
        // The limit is read here rather than from a layer's request extension: one less
        // allocation for every request, and bodies are only ever read here.
        let bytes = axum::body::to_bytes(request.into_body(), state.settings.body_limit)
            .await
            .map_err(|error| {
                if too_large(&error) {
                    ApiError::PayloadTooLarge(
                        "the request body is larger than the server's body limit".to_owned(),
                    )
                } else {
                    ApiError::InvalidRequest(format!("could not read the request body: {error}"))
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Whether reading a body failed because it passed the limit.
fn too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
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

/// A query string parsed into `T`, one struct per endpoint. `T` derives `Deserialize` (with
/// `deny_unknown_fields`) to parse and `IntoParams` to document, and its field types carry their
/// own constraints both ways ([`Text`], [`Limit`], [`AtLeast`]), so `/openapi.json` names exactly
/// the parameters accepted, with the rules enforced.
///
/// Unknown parameters (a typo such as `directroy=` must not silently return an unfiltered list)
/// and repeated ones are refused, naming them; so is anything not UTF-8 once percent-decoded.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query()).map(Query)
    }
}

/// Parses a raw query string into `T` (see [`Query`]).
pub fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    let mut pairs = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((decode_component(key)?, decode_component(value)?));
    }
    T::deserialize(QueryPairs {
        pairs: pairs.into_iter(),
        key: String::new(),
        value: None,
    })
    .map_err(|QueryError(detail)| ApiError::InvalidRequest(detail))
}

/// Why a query string was refused: the problem `detail`, naming the parameter.
#[derive(Debug)]
struct QueryError(String);

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

impl serde::de::Error for QueryError {
    fn custom<M: std::fmt::Display>(message: M) -> Self {
        QueryError(message.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let accepted = if expected.is_empty() {
            "none".to_owned()
        } else {
            expected.join(", ")
        };
        QueryError(format!(
            "unknown query parameter `{}`; this endpoint accepts: {accepted}",
            clip(field)
        ))
    }

    fn duplicate_field(field: &'static str) -> Self {
        QueryError(format!("query parameter `{field}` is given more than once"))
    }

    fn missing_field(field: &'static str) -> Self {
        QueryError(format!("query parameter `{field}` is required"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        QueryError(format!(
            "must be {}, not `{}`",
            expected
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(" or "),
            clip(variant)
        ))
    }
}

/// The decoded pairs as a map; a value's error is prefixed with its parameter's name.
struct QueryPairs {
    pairs: std::vec::IntoIter<(String, String)>,
    key: String,
    value: Option<String>,
}

impl<'de> serde::Deserializer<'de> for QueryPairs {
    type Error = QueryError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> MapAccess<'de> for QueryPairs {
    type Error = QueryError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, QueryError> {
        let Some((key, value)) = self.pairs.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        self.key.clone_from(&key);
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, QueryError> {
        let value = self.value.take().unwrap_or_default();
        seed.deserialize(QueryValue(value))
            .map_err(|QueryError(why)| QueryError(format!("{} {why}", self.key)))
    }
}

/// One parameter's decoded value: text that numbers and booleans are parsed from.
struct QueryValue(String);

macro_rules! parse_number {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
            match self.0.trim().parse::<$ty>() {
                Ok(n) => visitor.$visit(n),
                Err(_) => Err(QueryError(format!(
                    "must be a whole number, not `{}`",
                    clip(&self.0)
                ))),
            }
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for QueryValue {
    type Error = QueryError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        visitor.visit_string(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        match self.0.as_str() {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            other => Err(QueryError(format!(
                "must be `true` or `false`, not `{}`",
                clip(other)
            ))),
        }
    }

    parse_number! {
        deserialize_i64 => visit_i64: i64,
        deserialize_i32 => visit_i32: i32,
        deserialize_u64 => visit_u64: u64,
        deserialize_u32 => visit_u32: u32,
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QueryError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, QueryError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, QueryError> {
        visitor.visit_enum(self.0.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i128 u8 u16 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq
        tuple tuple_struct map struct identifier ignored_any
    }
}

/// A string parameter of `MIN..=MAX` characters (`usize::MAX`: no upper bound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text<const MIN: usize, const MAX: usize>(pub String);

/// A string parameter that must not be empty. (utoipa documents these aliases, not the generic
/// type itself.)
pub type NonEmpty = Text<1, { usize::MAX }>;

/// `q` of the sessions list: a title substring, empty meaning no filter.
pub type TitleQuery = Text<0, { crate::domain::MAX_TITLE_CHARS }>;

/// `q` of search.
pub type SearchText = Text<1, { crate::domain::MAX_QUERY_CHARS }>;

/// A time (ms) or an event seq: 0 or more.
pub type NonNegative = AtLeast<0>;

impl<const MIN: usize, const MAX: usize> Text<MIN, MAX> {
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl<'de, const MIN: usize, const MAX: usize> Deserialize<'de> for Text<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let chars = text.chars().count();
        if chars < MIN {
            return Err(serde::de::Error::custom(if MIN == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {MIN} characters long")
            }));
        }
        if chars > MAX {
            return Err(serde::de::Error::custom(format!(
                "is {chars} characters long; the maximum is {MAX}"
            )));
        }
        Ok(Text(text))
    }
}

impl<const MIN: usize, const MAX: usize> PartialSchema for Text<MIN, MAX> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length((MIN > 0).then_some(MIN))
            .max_length((MAX < usize::MAX).then_some(MAX))
            .into()
    }
}

impl<const MIN: usize, const MAX: usize> ToSchema for Text<MIN, MAX> {}

/// An integer parameter of at least `MIN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtLeast<const MIN: i64>(pub i64);

impl<'de, const MIN: i64> Deserialize<'de> for AtLeast<MIN> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(deserializer)?;
        if n < MIN {
            return Err(serde::de::Error::custom(format!(
                "must be {MIN} or more, not `{n}`"
            )));
        }
        Ok(AtLeast(n))
    }
}

impl<const MIN: i64> PartialSchema for AtLeast<MIN> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(MIN))
            .into()
    }
}

impl<const MIN: i64> ToSchema for AtLeast<MIN> {}

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
