//! The domain: identifiers, sessions, messages, pagination and search types, and their
//! validation. Nothing here knows about HTTP or SQL, so every backend and the HTTP layer share
//! one definition of what a valid request is.

mod id;
pub mod keys;
mod message;
mod pagination;
mod search;
mod session;
pub mod summary;

pub use id::{
    IdGenerator, MessageId, SessionId, WebhookId, random_token, random_token_bytes, wall_clock_ms,
};
pub use message::{
    CreateMessage, Message, NewMessage, Part, Role, add_part_text, minify_json, search_text,
};
pub use pagination::{Limit, MessageCursor, Order, SearchCursor, SessionCursor};
pub use search::{MAX_QUERY_CHARS, SearchHit, SearchTerms, Term};
pub use session::{
    ArchivedFilter, CreateSession, DEFAULT_TITLE, MAX_DIRECTORY_CHARS, MAX_SESSION_METADATA_BYTES,
    MAX_TITLE_CHARS, NewSession, ParentRef, Session, SessionPatch, UpdateSession, empty_metadata,
    fold_title, validate_metadata,
};

use serde::{Deserialize, Deserializer};

/// A request that breaks a rule of the contract; the message says which and is shown to the
/// client as the problem `detail`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }
}

/// For optional fields that, when present, must not be `null` (`"title": null` is a wrong type,
/// not an omitted title). Used with `#[serde(default)]` so absence still means `None`.
pub(crate) fn non_null<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Echoes client input in an error message without letting it grow the message unboundedly.
pub fn clip(raw: &str) -> String {
    const MAX: usize = 64;
    match raw.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &raw[..at]),
        None => raw.to_owned(),
    }
}

/// One page of a list, with the key to continue after its last item.
#[derive(Debug, Clone)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}
