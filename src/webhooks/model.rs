//! Webhook endpoints and deliveries: the request bodies, their validation into domain values,
//! and the views the API returns.
//!
//! Parse, don't validate: a [`WebhookUrl`] can only be built from an `http` URL with a host,
//! so storage and the delivery loop never see anything else. Limits are part of the contract
//! of this server and are documented in the README: at most [`MAX_ENDPOINTS`] endpoints, a
//! description of at most [`MAX_DESCRIPTION`] characters, a URL of at most [`MAX_URL`] bytes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::breaker::{Breaker, State};
use crate::domain::{Invalid, clip, non_null};
use crate::events::EventKind;

/// Most endpoints one server holds, by default (`--webhook-max-endpoints`).
pub const MAX_ENDPOINTS: usize = 100;
/// Longest description, in characters.
pub const MAX_DESCRIPTION: usize = 1024;
/// Longest URL, in bytes.
pub const MAX_URL: usize = 2048;
/// Longest `session_id` / `directory` filter.
const MAX_FILTER: usize = 4096;

/// A URL webhooks may be posted to: `http(s)://host[:port]/path?query`, no credentials, no
/// fragment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    raw: String,
    host: String,
    port: u16,
}

impl WebhookUrl {
    pub fn parse(raw: &str) -> Result<WebhookUrl, Invalid> {
        if raw.len() > MAX_URL {
            return Err(Invalid::new(format!("url is longer than {MAX_URL} bytes")));
        }
        let uri: axum::http::Uri = raw
            .parse()
            .map_err(|_| Invalid::new(format!("url {:?} is not a valid URL", clip(raw))))?;
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            Some("https") => 443,
            _ => {
                return Err(Invalid::new(format!(
                    "url {:?} must be an absolute http or https URL",
                    clip(raw)
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| Invalid::new("url has no host"))?;
        if authority.as_str().contains('@') {
            return Err(Invalid::new("url must not carry credentials"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(Invalid::new("url has no host"));
        }
        if raw.contains('#') {
            return Err(Invalid::new("url must not have a fragment"));
        }
        Ok(WebhookUrl {
            raw: raw.to_owned(),
            host: host.to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
        })
    }

    /// A stored URL that no longer parses: kept for display, never reachable.
    pub fn unparsed(raw: String) -> WebhookUrl {
        WebhookUrl {
            raw,
            host: String::new(),
            port: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Event types an endpoint wants; `None` is every type.
pub type EventTypes = Option<Vec<EventKind>>;

fn parse_events(raw: Vec<String>) -> Result<Vec<EventKind>, Invalid> {
    if raw.is_empty() {
        return Err(Invalid::new(
            "events must name at least one event type (omit it for all)",
        ));
    }
    let mut kinds = Vec::with_capacity(raw.len());
    for name in raw {
        let kind = EventKind::parse(&name).ok_or_else(|| {
            Invalid::new(format!(
                "unknown event type {:?}; types are session.created, session.updated, \
                 session.deleted and message.created",
                clip(&name)
            ))
        })?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

pub fn events_to_text(events: &EventTypes) -> Option<String> {
    events.as_ref().map(|kinds| {
        kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(",")
    })
}

pub fn events_from_text(text: Option<&str>) -> EventTypes {
    text.map(|t| t.split(',').filter_map(EventKind::parse).collect())
}

fn filter_value(name: &str, raw: String) -> Result<String, Invalid> {
    if raw.is_empty() || raw.chars().count() > MAX_FILTER {
        return Err(Invalid::new(format!(
            "{name} must be 1..={MAX_FILTER} characters"
        )));
    }
    Ok(raw)
}

fn description(raw: String) -> Result<String, Invalid> {
    if raw.chars().count() > MAX_DESCRIPTION {
        return Err(Invalid::new(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        )));
    }
    Ok(raw)
}

/// An event type, as the API names it (for the OpenAPI document).
#[derive(Debug, Deserialize, ToSchema)]
pub enum EventTypeName {
    #[serde(rename = "session.created")]
    #[schema(rename = "session.created")]
    SessionCreated,
    #[serde(rename = "session.updated")]
    #[schema(rename = "session.updated")]
    SessionUpdated,
    #[serde(rename = "session.deleted")]
    #[schema(rename = "session.deleted")]
    SessionDeleted,
    #[serde(rename = "message.created")]
    #[schema(rename = "message.created")]
    MessageCreated,
}

/// Body of `POST /v1/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// `http://…` or `https://…`; its host must not be internal (see the README).
    #[schema(max_length = 2048)]
    pub url: String,
    /// Event types to deliver; omitted: all of them.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = Vec<EventTypeName>, min_items = 1)]
    pub events: Option<Vec<String>>,
    /// Only events of this session.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, min_length = 1, max_length = 4096)]
    pub session_id: Option<String>,
    /// Only events of sessions in exactly this directory.
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, min_length = 1, max_length = 4096)]
    pub directory: Option<String>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, max_length = 1024)]
    pub description: Option<String>,
    /// Deliver one event at a time, in `seq` order (default false: concurrently).
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = bool)]
    pub ordered: Option<bool>,
}

/// A validated endpoint to create.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub url: WebhookUrl,
    pub events: EventTypes,
    pub session_id: Option<String>,
    pub directory: Option<String>,
    pub description: Option<String>,
    pub ordered: bool,
    pub secret: String,
}

impl CreateWebhook {
    pub fn into_new(self, secret: String) -> Result<NewEndpoint, Invalid> {
        Ok(NewEndpoint {
            url: WebhookUrl::parse(&self.url)?,
            events: self.events.map(parse_events).transpose()?,
            session_id: self
                .session_id
                .map(|s| filter_value("session_id", s))
                .transpose()?,
            directory: self
                .directory
                .map(|d| filter_value("directory", d))
                .transpose()?,
            description: self.description.map(description).transpose()?,
            ordered: self.ordered.unwrap_or(false),
            secret,
        })
    }
}

/// `Some(None)` for an explicit `null`, `Some(Some(v))` for a value, `None` when absent.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Body of `PATCH /v1/webhooks/{id}`: fields present are replaced; `null` clears a filter or
/// the description (`events: null` means every type again).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhook {
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = String, max_length = 2048)]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<EventTypeName>>, min_items = 1)]
    pub events: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 4096)]
    pub session_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 4096)]
    pub directory: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = bool)]
    pub ordered: Option<bool>,
    /// `true` re-enables a disabled endpoint (closing its circuit); `false` disables it
    /// (its pending deliveries become `failed`, and can be replayed).
    #[serde(default, deserialize_with = "non_null")]
    #[schema(value_type = bool)]
    pub enabled: Option<bool>,
}

/// A validated patch.
#[derive(Clone, Debug, Default)]
pub struct EndpointPatch {
    pub url: Option<WebhookUrl>,
    pub events: Option<EventTypes>,
    pub session_id: Option<Option<String>>,
    pub directory: Option<Option<String>>,
    pub description: Option<Option<String>>,
    pub ordered: Option<bool>,
    pub enabled: Option<bool>,
}

impl UpdateWebhook {
    pub fn into_patch(self) -> Result<EndpointPatch, Invalid> {
        Ok(EndpointPatch {
            url: self.url.as_deref().map(WebhookUrl::parse).transpose()?,
            events: self
                .events
                .map(|e| e.map(parse_events).transpose())
                .transpose()?,
            session_id: self
                .session_id
                .map(|s| s.map(|s| filter_value("session_id", s)).transpose())
                .transpose()?,
            directory: self
                .directory
                .map(|d| d.map(|d| filter_value("directory", d)).transpose())
                .transpose()?,
            description: self
                .description
                .map(|d| d.map(description).transpose())
                .transpose()?,
            ordered: self.ordered,
            enabled: self.enabled,
        })
    }
}

/// A stored endpoint, secrets and circuit included.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: String,
    pub url: WebhookUrl,
    pub events: EventTypes,
    pub session_id: Option<String>,
    pub directory: Option<String>,
    pub description: Option<String>,
    pub ordered: bool,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secret: String,
    /// The secret before the last rotation, and until when it still signs (ms).
    pub previous_secret: Option<(String, i64)>,
    pub breaker: Breaker,
    /// Version of `breaker` as stored (writes of older versions are ignored).
    pub circuit_seq: i64,
    /// Since when every attempt failed (ms), `None` after a success.
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Endpoint {
    /// A newly registered endpoint: enabled, its circuit closed.
    pub fn new(id: String, new: NewEndpoint, now: i64) -> Endpoint {
        Endpoint {
            id,
            url: new.url,
            events: new.events,
            session_id: new.session_id,
            directory: new.directory,
            description: new.description,
            ordered: new.ordered,
            enabled: true,
            disabled_reason: None,
            secret: new.secret,
            previous_secret: None,
            breaker: Breaker::default(),
            circuit_seq: 0,
            failing_since: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Applies `patch` at `now`. Re-enabling closes the circuit (and outranks any circuit
    /// write of an attempt still in flight). Returns whether the patch disabled the endpoint:
    /// its pending deliveries must then fail.
    pub fn apply(&mut self, patch: EndpointPatch, now: i64) -> bool {
        if let Some(url) = patch.url {
            self.url = url;
        }
        if let Some(events) = patch.events {
            self.events = events;
        }
        if let Some(session_id) = patch.session_id {
            self.session_id = session_id;
        }
        if let Some(directory) = patch.directory {
            self.directory = directory;
        }
        if let Some(description) = patch.description {
            self.description = description;
        }
        if let Some(ordered) = patch.ordered {
            self.ordered = ordered;
        }
        self.updated_at = now;
        match patch.enabled {
            Some(true) if !self.enabled => {
                self.enabled = true;
                self.disabled_reason = None;
                self.breaker = Breaker::default();
                self.circuit_seq = self.circuit_seq.max(now.saturating_mul(1000));
                self.failing_since = None;
                false
            }
            Some(false) if self.enabled => {
                self.enabled = false;
                self.disabled_reason = Some("disabled through the API".to_owned());
                true
            }
            _ => false,
        }
    }

    /// The secrets that sign a delivery made at `now`, the current one first.
    pub fn signing_secrets(&self, now: i64) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let Some((old, until)) = &self.previous_secret
            && now < *until
        {
            secrets.push(old);
        }
        secrets
    }

    pub fn subscription(&self) -> Subscription {
        Subscription {
            id: self.id.clone(),
            events: self.events.clone(),
            session_id: self.session_id.clone(),
            directory: self.directory.clone(),
        }
    }
}

/// What an enabled endpoint wants: matched against each event as it is written.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: String,
    pub events: EventTypes,
    pub session_id: Option<String>,
    pub directory: Option<String>,
}

impl Subscription {
    pub fn matches(&self, kind: EventKind, session_id: &str, directory: &str) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(&kind))
            && self.session_id.as_deref().is_none_or(|s| s == session_id)
            && self.directory.as_deref().is_none_or(|d| d == directory)
    }
}

/// A delivery's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn code(self) -> i64 {
        match self {
            DeliveryStatus::Pending => 0,
            DeliveryStatus::Delivered => 1,
            DeliveryStatus::Failed => 2,
        }
    }

    pub fn from_code(code: i64) -> DeliveryStatus {
        match code {
            0 => DeliveryStatus::Pending,
            1 => DeliveryStatus::Delivered,
            _ => DeliveryStatus::Failed,
        }
    }
}

/// The circuit as `GET /v1/webhooks/{id}` shows it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Circuit {
    /// `closed`, `open` or `half_open`.
    #[schema(example = "closed")]
    pub state: &'static str,
    pub consecutive_failures: u32,
    /// When an open circuit lets a probe through (ms); `null` unless open.
    pub next_attempt_at: Option<i64>,
}

impl Circuit {
    /// The circuit at `now`: an open one whose open time has passed is shown half-open (its
    /// next attempt is a probe), though the delivery loop records that only when it probes.
    pub fn at(b: &Breaker, now: i64) -> Circuit {
        let open = b.state == State::Open;
        let due = b.open_until.is_none_or(|until| until <= now);
        Circuit {
            state: if open && due {
                State::HalfOpen.as_str()
            } else {
                b.state.as_str()
            },
            consecutive_failures: b.consecutive_failures,
            next_attempt_at: if open && !due { b.open_until } else { None },
        }
    }
}

/// An endpoint as the API shows it (never with its secret).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Webhook {
    #[schema(example = "whk_01kaq3m0d8g7w2e5r1t9y3v6h0")]
    pub id: String,
    pub url: String,
    /// Event types delivered; `null`: all of them.
    pub events: Option<Vec<String>>,
    pub session_id: Option<String>,
    pub directory: Option<String>,
    pub description: Option<String>,
    pub ordered: bool,
    pub enabled: bool,
    /// Why the server disabled it (a 410, or failing for twice the retry schedule).
    pub disabled_reason: Option<String>,
    pub circuit: Circuit,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<&Endpoint> for Webhook {
    fn from(e: &Endpoint) -> Webhook {
        Webhook {
            id: e.id.clone(),
            url: e.url.as_str().to_owned(),
            events: e
                .events
                .as_ref()
                .map(|k| k.iter().map(|k| k.as_str().to_owned()).collect()),
            session_id: e.session_id.clone(),
            directory: e.directory.clone(),
            description: e.description.clone(),
            ordered: e.ordered,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            circuit: Circuit::at(&e.breaker, crate::domain::wall_clock_ms()),
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// Deliveries of an endpoint, by status.
#[derive(Clone, Copy, Debug, Default, Serialize, ToSchema)]
pub struct DeliveryCounts {
    pub pending: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// One delivery (an event for an endpoint) and its last attempt.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Delivery {
    #[schema(example = "dlv_42")]
    pub id: String,
    pub event_seq: i64,
    #[schema(example = "message.created")]
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When the next attempt is due (ms); `null` once delivered or failed.
    pub next_attempt_at: Option<i64>,
    /// HTTP status of the last answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt failed (at most 4 KiB of the answer, or the connection error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed() {
        let url = WebhookUrl::parse("http://Example.com:8080/hook?x=1").unwrap();
        assert_eq!((url.host(), url.port()), ("example.com", 8080));
        let url = WebhookUrl::parse("http://[::1]/h").unwrap();
        assert_eq!((url.host(), url.port()), ("::1", 80));
        let url = WebhookUrl::parse("https://hooks.example.com/h").unwrap();
        assert_eq!((url.host(), url.port()), ("hooks.example.com", 443));
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "/relative",
            "http://user:pw@example.com/",
            "http://example.com/#frag",
            "http:///nohost",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(WebhookUrl::parse(&format!("http://a.com/{}", "x".repeat(MAX_URL))).is_err());
    }

    #[test]
    fn events_and_filters_are_checked() {
        assert!(parse_events(vec!["message.created".into()]).is_ok());
        assert!(parse_events(vec!["message.exploded".into()]).is_err());
        assert!(parse_events(vec![]).is_err());
        let sub = Subscription {
            id: "w".into(),
            events: Some(vec![EventKind::MessageCreated]),
            session_id: None,
            directory: Some("/d".into()),
        };
        assert!(sub.matches(EventKind::MessageCreated, "s", "/d"));
        assert!(!sub.matches(EventKind::SessionCreated, "s", "/d"));
        assert!(!sub.matches(EventKind::MessageCreated, "s", "/e"));
        assert!(description("x".repeat(MAX_DESCRIPTION + 1)).is_err());
        assert_eq!(
            events_from_text(events_to_text(&Some(vec![EventKind::SessionDeleted])).as_deref()),
            Some(vec![EventKind::SessionDeleted])
        );
    }
}
