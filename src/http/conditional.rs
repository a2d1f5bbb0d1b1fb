//! Conditional GET: strong ETags derived from data versions, and `304 Not Modified`.
//!
//! Validators come from versions the server already has (a session's version, the event log's
//! head), so deciding on a 304 never needs the response body, and for lists not even a query.
//! A compressed representation carries its coding in the tag (`"v12-zstd"`, added by
//! [`super::middleware::encoding_validators`]); matching ignores that suffix (If-None-Match is
//! a weak comparison), and a 304 echoes the tag the client sent.

use std::hash::{Hash, Hasher};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use crate::cache::Entry;

/// Content codings whose names may follow a tag (see the module docs).
const CODINGS: &[&str] = &["-zstd", "-br", "-gzip"];

/// The tag of the client's `If-None-Match` that matches `etag`, if any (`*` matches all).
pub fn matching_tag(headers: &HeaderMap, etag: &str) -> Option<String> {
    for value in headers.get_all(header::IF_NONE_MATCH) {
        let Ok(value) = value.to_str() else { continue };
        for candidate in value.split(',') {
            let candidate = candidate.trim();
            if candidate == "*" {
                return Some(format!("\"{etag}\""));
            }
            let opaque = candidate.strip_prefix("W/").unwrap_or(candidate);
            let Some(inner) = opaque
                .strip_prefix('"')
                .and_then(|rest| rest.strip_suffix('"'))
            else {
                continue;
            };
            let base = CODINGS
                .iter()
                .find_map(|coding| inner.strip_suffix(coding))
                .unwrap_or(inner);
            if base == etag {
                return Some(opaque.to_owned());
            }
        }
    }
    None
}

/// `304 Not Modified` for a request whose `If-None-Match` held `tag`.
pub fn not_modified(tag: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(tag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `200 OK` with a JSON body and its ETag (see [`crate::cache::quoted`]).
pub fn fresh(body: Bytes, tag: Option<HeaderValue>) -> Response {
    let mut response = Response::new(Body::from(body));
    // Room for what the layers outside add (`Vary` twice, CORS, `X-Request-Id`,
    // `Content-Length`), so the map is allocated once.
    *response.headers_mut() = HeaderMap::with_capacity(12);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(tag) = tag {
        headers.insert(header::ETAG, tag);
    }
    // Clients may keep it, but must revalidate (cheaply, with If-None-Match) before use.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The response for a cached (or just computed) entry: 304 when the client has it.
pub fn respond(headers: &HeaderMap, entry: &Entry) -> Response {
    match matching_tag(headers, &entry.etag) {
        Some(tag) => not_modified(&tag),
        None => fresh(entry.body.clone(), entry.tag.clone()),
    }
}

/// A short, stable digest of a query string for list tags.
pub fn digest(text: &str) -> String {
    // FNV-1a: deterministic across processes and releases (std's hasher is not), and only
    // needs to tell a client's own queries apart, not resist attackers.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for byte in bytes {
                self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    text.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn matching_ignores_weakness_and_codings() {
        assert_eq!(
            matching_tag(&headers("\"v3\""), "v3").as_deref(),
            Some("\"v3\"")
        );
        assert_eq!(
            matching_tag(&headers("W/\"v3\""), "v3").as_deref(),
            Some("\"v3\"")
        );
        assert_eq!(
            matching_tag(&headers("\"v1\", \"v3-zstd\""), "v3").as_deref(),
            Some("\"v3-zstd\"")
        );
        assert_eq!(matching_tag(&headers("*"), "v3").as_deref(), Some("\"v3\""));
        assert_eq!(matching_tag(&headers("\"v31\""), "v3"), None);
        assert_eq!(
            matching_tag(&headers("v3"), "v3"),
            None,
            "unquoted tags are invalid"
        );
        assert_eq!(matching_tag(&HeaderMap::new(), "v3"), None);
    }

    #[test]
    fn digests_are_stable() {
        assert_eq!(digest("limit=5"), digest("limit=5"));
        assert_ne!(digest("limit=5"), digest("limit=6"));
    }
}
