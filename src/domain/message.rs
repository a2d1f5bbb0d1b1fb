//! Messages: the stored shape, the create request, and the validation of parts.
//!
//! Parts and metadata are kept as the client's JSON text (minified), never re-shaped: other part
//! types (`tool`, `reasoning`, `file`, …) come back verbatim. Validation only looks at what the
//! contract constrains: a non-empty array of objects with a string `type`, and a string `text`
//! on `text` parts, whose texts become the full-text search document.

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::{Invalid, MessageId, SessionId, non_null};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Tool => "tool",
        }
    }

    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "system" => Some(Role::System),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

/// A message as stored and returned.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Message {
    #[schema(value_type = String, example = "msg_01kaq3m0d8g7w2e5r1t9y3v6h0")]
    pub id: MessageId,
    #[schema(value_type = String)]
    pub session_id: SessionId,
    pub role: Role,
    /// Non-empty array of part objects, returned exactly as stored.
    #[schema(value_type = Vec<Part>)]
    pub parts: Box<RawValue>,
    #[schema(value_type = Object)]
    pub metadata: Box<RawValue>,
    pub created_at: i64,
}

/// Body of `POST /v1/sessions/{id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMessage {
    pub role: Role,
    /// Stored and returned verbatim.
    #[schema(value_type = Vec<Part>, min_items = 1)]
    pub parts: Box<RawValue>,
    /// Any JSON object; default `{}`.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = Object)]
    pub metadata: Option<Box<RawValue>>,
}

/// The documented shape of one message part (parts are validated by [`inspect_parts`], which
/// this describes): an object with a string `type`; a `text` part carries a string `text`,
/// which full-text search indexes. Other members and part types are kept verbatim.
pub struct Part;

/// The `text` rule is stated with `if`/`then` (JSON Schema 2020-12), which utoipa cannot
/// build; `crate::http::openapi` adds it to this schema by name.
impl utoipa::PartialSchema for Part {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("type", ObjectBuilder::new().schema_type(Type::String))
            .required("type")
            .description(Some(
                "A part: `type` names its kind (`text`, `tool`, `reasoning`, `file`, …); a \
                 `text` part carries a string `text`. Every other member is stored and \
                 returned verbatim.",
            ))
            .into()
    }
}

impl ToSchema for Part {}

/// A validated message to append.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub role: Role,
    /// Minified JSON array.
    pub parts: String,
    /// Minified JSON object.
    pub metadata: String,
    /// The text parts joined by newlines: what full-text search indexes.
    pub text: String,
}

impl TryFrom<CreateMessage> for NewMessage {
    type Error = Invalid;

    fn try_from(body: CreateMessage) -> Result<Self, Invalid> {
        let text = inspect_parts(body.parts.get())?;
        let metadata = match body.metadata {
            Some(raw) if !raw.get().starts_with('{') => {
                return Err(Invalid::new("metadata must be a JSON object"));
            }
            Some(raw) => minify_json(raw.get()),
            None => "{}".to_owned(),
        };
        Ok(NewMessage {
            role: body.role,
            parts: minify_json(body.parts.get()),
            metadata,
            text,
        })
    }
}

/// The search text of a stored (already valid) parts array.
pub fn search_text(parts: &str) -> Result<String, Invalid> {
    inspect_parts(parts)
}

/// Checks one part that is already a JSON object by [`inspect_parts`]' rules and appends its
/// text to `text` (imports build parts as values, and a round trip through text only to check
/// them cost the opencode import a fifth of its time). `text` is left as it was when the part
/// breaks a rule.
pub fn add_part_text(
    part: &serde_json::Map<String, serde_json::Value>,
    text: &mut String,
) -> Result<(), Invalid> {
    let kind = match part.get("type") {
        Some(serde_json::Value::String(kind)) => kind,
        Some(_) => return Err(Invalid::new("`type` must be a string")),
        None => return Err(Invalid::new("missing field `type`")),
    };
    match text_of(kind, part.get("text")) {
        Ok(found) => {
            append_text(text, found);
            Ok(())
        }
        Err(TextRule::NotAString) => Err(Invalid::new("`text` must be a string")),
        Err(TextRule::Missing) => Err(Invalid::new("a text part needs a string `text`")),
    }
}

/// How a part breaks the rule of [`text_of`].
enum TextRule {
    NotAString,
    Missing,
}

/// The rule for a part of kind `kind`, whichever form it was read from: a `text` part carries
/// a string `text`, which is its search text; other parts have none.
fn text_of<'a>(
    kind: &str,
    text: Option<&'a serde_json::Value>,
) -> Result<Option<&'a str>, TextRule> {
    if kind != "text" {
        return Ok(None);
    }
    match text {
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(TextRule::NotAString),
        None => Err(TextRule::Missing),
    }
}

/// A message's search text is its text parts joined by newlines.
fn append_text(text: &mut String, part: Option<&str>) {
    if let Some(part) = part {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(part);
    }
}

/// Checks the parts array and returns its search text.
fn inspect_parts(raw: &str) -> Result<String, Invalid> {
    if !raw.starts_with('[') {
        return Err(Invalid::new("parts must be an array of part objects"));
    }
    let parts: Vec<&RawValue> = serde_json::from_str(raw)
        .map_err(|e| Invalid::new(format!("parts must be an array: {e}")))?;
    if parts.is_empty() {
        return Err(Invalid::new("parts must not be empty"));
    }
    let mut text = String::new();
    for (index, part) in parts.iter().enumerate() {
        let info: PartInfo = serde_json::from_str(part.get()).map_err(|e| {
            Invalid::new(format!(
                "parts[{index}]: {}",
                strip_position(&e.to_string())
            ))
        })?;
        match text_of(&info.kind, info.text.as_ref()) {
            Ok(found) => append_text(&mut text, found),
            Err(TextRule::NotAString) => {
                return Err(Invalid::new(format!(
                    "parts[{index}].text must be a string"
                )));
            }
            Err(TextRule::Missing) => {
                return Err(Invalid::new(format!(
                    "parts[{index}] is a text part without a `text` string"
                )));
            }
        }
    }
    Ok(text)
}

/// serde_json appends "at line 1 column 9" relative to the part, which only confuses.
fn strip_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at])
}

/// What validation needs from one part; everything else in it is skipped, not copied.
struct PartInfo {
    kind: String,
    text: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for PartInfo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartVisitor;
        impl<'de> Visitor<'de> for PartVisitor {
            type Value = PartInfo;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a part object with a string `type`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PartInfo, A::Error> {
                let mut kind: Option<String> = None;
                let mut text = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "type" => {
                            if kind.is_some() {
                                return Err(de::Error::duplicate_field("type"));
                            }
                            let value: serde_json::Value = map.next_value()?;
                            match value {
                                serde_json::Value::String(s) => kind = Some(s),
                                _ => return Err(de::Error::custom("`type` must be a string")),
                            }
                        }
                        "text" => {
                            if text.is_some() {
                                return Err(de::Error::duplicate_field("text"));
                            }
                            text = Some(map.next_value()?);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
                Ok(PartInfo { kind, text })
            }
        }
        deserializer.deserialize_map(PartVisitor)
    }
}

/// Removes insignificant whitespace from valid JSON text.
pub fn minify_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<NewMessage, Invalid> {
        let body: CreateMessage = serde_json::from_str(body).expect("body is well-formed");
        NewMessage::try_from(body)
    }

    #[test]
    fn text_parts_become_the_search_text_and_others_stay_verbatim() {
        let message = parse(
            r#"{"role":"assistant","parts":[{"type":"text","text":"hello"},
                {"type":"tool", "name":"grep", "input": {"q": "a b"}},{"type":"text","text":"world"}]}"#,
        )
        .unwrap();
        assert_eq!(message.text, "hello\nworld");
        assert_eq!(
            message.parts,
            r#"[{"type":"text","text":"hello"},{"type":"tool","name":"grep","input":{"q":"a b"}},{"type":"text","text":"world"}]"#
        );
        assert_eq!(message.metadata, "{}");
    }

    #[test]
    fn invalid_parts_are_named() {
        let cases = [
            (r#"{"role":"user","parts":[]}"#, "parts must not be empty"),
            (r#"{"role":"user","parts":{}}"#, "parts must be an array"),
            (r#"{"role":"user","parts":[1]}"#, "parts[0]"),
            (r#"{"role":"user","parts":[["text"]]}"#, "parts[0]"),
            (
                r#"{"role":"user","parts":[{"text":"x"}]}"#,
                "missing field `type`",
            ),
            (
                r#"{"role":"user","parts":[{"type":1}]}"#,
                "`type` must be a string",
            ),
            (
                r#"{"role":"user","parts":[{"type":"text"}]}"#,
                "without a `text`",
            ),
            (
                r#"{"role":"user","parts":[{"type":"text","text":5}]}"#,
                "parts[0].text must be a string",
            ),
            (
                r#"{"role":"user","parts":[{"type":"text","text":"a"}],"metadata":[1]}"#,
                "metadata must be a JSON object",
            ),
        ];
        for (body, expected) in cases {
            let error = parse(body).expect_err(body);
            assert!(error.0.contains(expected), "{body}: {}", error.0);
        }
    }

    #[test]
    fn minify_keeps_whitespace_inside_strings() {
        assert_eq!(
            minify_json("{ \"a\" : \"x \\\" y\" ,\n \"b\" : [ 1 , 2 ] }"),
            "{\"a\":\"x \\\" y\",\"b\":[1,2]}"
        );
    }
}
