//! Sessions: the stored shape, the create and patch requests, and their validation.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::{Invalid, SessionId, minify_json, non_null};

pub const MAX_DIRECTORY_CHARS: usize = 4096;
/// Largest session `metadata`, in bytes of its minified JSON.
pub const MAX_SESSION_METADATA_BYTES: usize = 64 * 1024;
pub const MAX_TITLE_CHARS: usize = 1024;
pub const DEFAULT_TITLE: &str = "New session";

/// A session as stored and returned.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Session {
    #[schema(value_type = String, example = "ses_01kaq3m0d8g7w2e5r1t9y3v6h0")]
    pub id: SessionId,
    #[schema(example = "/home/ana/project")]
    pub directory: String,
    #[schema(example = "Fix the login bug")]
    pub title: String,
    #[schema(value_type = Option<String>)]
    pub parent_id: Option<SessionId>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch; bumped by every change and every new message.
    pub updated_at: i64,
    pub archived_at: Option<i64>,
    pub message_count: i64,
    /// Any JSON object (at most 64 KiB), as the client or an import set it.
    #[schema(value_type = Object)]
    pub metadata: Box<RawValue>,
    /// The `seq` of the last event that changed the session (0 for bulk-loaded ones): what its
    /// ETag is made of. Not part of the API representation.
    #[serde(skip)]
    pub version: i64,
}

/// Body of `POST /v1/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    #[schema(min_length = 1, max_length = 4096)]
    pub directory: String,
    /// Default "New session".
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, max_length = 1024)]
    pub title: Option<String>,
    /// An existing session (unknown ids are 404); `null` or absent: no parent.
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Any JSON object, at most 64 KiB; default `{}`.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = Object)]
    pub metadata: Option<Box<RawValue>>,
}

/// A validated session to create. The parent is only known to be well-formed; storage checks
/// that it exists inside the same transaction as the insert.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub directory: String,
    pub title: String,
    pub parent_id: Option<ParentRef>,
    /// Minified JSON object.
    pub metadata: Box<RawValue>,
}

/// A parent id as the client sent it: either the form of a session id, or something that can
/// name nothing (still reported as 404, as the contract asks).
#[derive(Clone, Debug)]
pub enum ParentRef {
    Id(SessionId),
    Unknown(String),
}

impl TryFrom<CreateSession> for NewSession {
    type Error = Invalid;

    fn try_from(body: CreateSession) -> Result<Self, Invalid> {
        let directory = validate_directory(body.directory)?;
        let title = match body.title {
            Some(title) => validate_title(title)?,
            None => DEFAULT_TITLE.to_owned(),
        };
        let parent_id = body.parent_id.map(|raw| match SessionId::parse(&raw) {
            Some(id) => ParentRef::Id(id),
            None => ParentRef::Unknown(raw),
        });
        let metadata = match body.metadata {
            Some(raw) => validate_metadata(&raw)?,
            None => empty_metadata(),
        };
        Ok(NewSession {
            directory,
            title,
            parent_id,
            metadata,
        })
    }
}

/// A session's metadata as stored: a JSON object, minified, within
/// [`MAX_SESSION_METADATA_BYTES`].
pub fn validate_metadata(raw: &RawValue) -> Result<Box<RawValue>, Invalid> {
    if !raw.get().starts_with('{') {
        return Err(Invalid::new("metadata must be a JSON object"));
    }
    let metadata = minify_json(raw.get());
    if metadata.len() > MAX_SESSION_METADATA_BYTES {
        return Err(Invalid::new(format!(
            "metadata is {} bytes long (minified); the maximum is {MAX_SESSION_METADATA_BYTES}",
            metadata.len()
        )));
    }
    RawValue::from_string(metadata).map_err(|e| Invalid::new(format!("metadata: {e}")))
}

/// `{}`, the metadata of a session nobody gave any.
pub fn empty_metadata() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned())
        .unwrap_or_else(|_| unreachable!("an empty object is JSON"))
}

fn validate_directory(directory: String) -> Result<String, Invalid> {
    let chars = directory.chars().count();
    if chars == 0 {
        return Err(Invalid::new("directory must not be empty"));
    }
    if chars > MAX_DIRECTORY_CHARS {
        return Err(Invalid::new(format!(
            "directory is {chars} characters long; the maximum is {MAX_DIRECTORY_CHARS}"
        )));
    }
    Ok(directory)
}

fn validate_title(title: String) -> Result<String, Invalid> {
    let chars = title.chars().count();
    if chars > MAX_TITLE_CHARS {
        return Err(Invalid::new(format!(
            "title is {chars} characters long; the maximum is {MAX_TITLE_CHARS}"
        )));
    }
    Ok(title)
}

/// Body of `PATCH /v1/sessions/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSession {
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, max_length = 1024)]
    pub title: Option<String>,
    /// `true` archives (keeping the first archive time), `false` unarchives.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = bool)]
    pub archived: Option<bool>,
    /// Replaces the whole metadata object (at most 64 KiB).
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = Object)]
    pub metadata: Option<Box<RawValue>>,
}

/// A validated patch. An empty patch is allowed: it only bumps `updated_at` ("touch").
#[derive(Clone, Debug, Default)]
pub struct SessionPatch {
    pub title: Option<String>,
    pub archived: Option<bool>,
    /// Minified JSON object replacing the metadata.
    pub metadata: Option<Box<RawValue>>,
}

impl TryFrom<UpdateSession> for SessionPatch {
    type Error = Invalid;

    fn try_from(body: UpdateSession) -> Result<Self, Invalid> {
        Ok(SessionPatch {
            title: body.title.map(validate_title).transpose()?,
            archived: body.archived,
            metadata: body
                .metadata
                .as_deref()
                .map(validate_metadata)
                .transpose()?,
        })
    }
}

impl SessionPatch {
    /// Applies the patch to `session` as of `now`.
    pub fn apply(&self, session: &mut Session, now: i64) {
        if let Some(metadata) = &self.metadata {
            session.metadata.clone_from(metadata);
        }
        if let Some(title) = &self.title {
            session.title.clone_from(title);
        }
        match self.archived {
            Some(true) if session.archived_at.is_none() => session.archived_at = Some(now),
            Some(false) => session.archived_at = None,
            _ => {}
        }
        session.updated_at = now;
    }
}

/// Which sessions a list shows with respect to archiving: `false` hides archived sessions,
/// `true` shows only them, `all` shows both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
pub enum ArchivedFilter {
    #[default]
    #[serde(rename = "false")]
    Hide,
    #[serde(rename = "true")]
    Only,
    #[serde(rename = "all")]
    All,
}

/// Lower-cases a title or title query the same way for storage and lookup, so the substring
/// filter is case-insensitive beyond ASCII.
pub fn fold_title(title: &str) -> String {
    title.to_lowercase()
}
