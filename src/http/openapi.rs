//! The OpenAPI 3.1 document, generated from the handlers' annotations and the domain types, and
//! fitted to the server as configured: security requirements and 401/403 only when auth is on,
//! 429 only when rate limiting is, and every status the middleware can answer on every operation
//! it wraps. Built once per router and served as bytes.

use axum::http::Method;
use bytes::Bytes;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::auth::{self, AuthMode};
use super::{events, keys, messages, ops, search, sessions, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiond",
        description = "Stores AI-agent and chat sessions and their messages, searches them, and \
            streams every change. Errors are RFC 9457 problem details \
            (`application/problem+json`) with a stable `code`. Lists are paginated by cursor: \
            pass a page's `next_cursor` as `cursor` to get the next one (any other cursor is \
            400). Every response carries `X-Request-Id`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        ops::health,
        ops::metrics,
        ops::status_page,
        ops::stats,
        ops::ready,
        ops::openapi_json,
        ops::docs,
        sessions::create,
        sessions::list,
        sessions::get,
        sessions::update,
        sessions::delete,
        sessions::summarize,
        messages::create,
        messages::list,
        messages::get,
        search::search,
        events::sse,
        events::ws,
        keys::create,
        keys::list,
        keys::revoke,
        webhooks::create,
        webhooks::list,
        webhooks::get,
        webhooks::update,
        webhooks::delete,
        webhooks::rotate,
        webhooks::deliveries,
        webhooks::replay,
    ),
    tags(
        (name = "sessions", description = "Sessions: a conversation in a directory"),
        (name = "messages", description = "Messages of a session"),
        (name = "search", description = "Full-text search over message text"),
        (name = "events", description = "Every change, live: server-sent events and WebSocket"),
        (name = "admin", description = "API keys (admin scope)"),
        (name = "webhooks", description = "Endpoints every event is pushed to, signed (admin scope)"),
        (name = "operations", description = "Health, readiness and documentation"),
    )
)]
pub struct ApiDoc;

/// The document of a server with these settings, encoded.
pub fn document(auth: AuthMode, rate_limited: bool) -> Bytes {
    let mut openapi = ApiDoc::openapi();
    Configured { auth, rate_limited }.modify(&mut openapi);
    let encoded = serde_json::to_value(&openapi)
        .map(|mut value| {
            add_text_part_rule(&mut value);
            value
        })
        .and_then(|value| serde_json::to_vec(&value));
    match encoded {
        Ok(bytes) => Bytes::from(bytes),
        // Only a bug in a schema could get here; the server still serves everything else.
        Err(error) => Bytes::from(format!(r#"{{"error":"{error}"}}"#)),
    }
}

/// Operations answered with `304 Not Modified` to a matching `If-None-Match`.
const CONDITIONAL: &[&str] = &[
    "list_sessions",
    "get_session",
    "list_messages",
    "get_message",
    "search",
    "list_webhooks",
    "get_webhook",
    "list_webhook_deliveries",
];

/// Where a created resource's id can be used next (OpenAPI links: clients and test generators
/// follow them from a response to the operations it enables): the operation and status that
/// return it, and the operations taking it as `{id}`.
const LINKS: &[(&str, &str, &[&str])] = &[
    (
        "create_session",
        "201",
        &[
            "get_session",
            "update_session",
            "delete_session",
            "summarize_session",
            "create_message",
            "list_messages",
        ],
    ),
    ("create_message", "201", &["get_message"]),
    ("create_key", "201", &["revoke_key"]),
    (
        "create_webhook",
        "201",
        &[
            "get_webhook",
            "update_webhook",
            "delete_webhook",
            "rotate_webhook_secret",
            "list_webhook_deliveries",
            "replay_webhook",
        ],
    ),
];

/// Routes outside the load-shedding and timeout layers (see `router_with`).
const NEVER_SHED: &[&str] = &["/health", "/metrics"];

/// Fits the generated document to the configuration (see the module docs).
struct Configured {
    auth: AuthMode,
    rate_limited: bool,
}

impl Modify for Configured {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if self.auth == AuthMode::Required {
            let components = openapi.components.get_or_insert_with(Default::default);
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An API key (`sessiond_…`) with the scope the operation needs: read \
                             (GETs, streams, summaries), write (changes) or admin (keys, \
                             profiles).",
                        ))
                        .build(),
                ),
            );
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (Method::GET, &mut item.get),
                (Method::POST, &mut item.post),
                (Method::PATCH, &mut item.patch),
                (Method::PUT, &mut item.put),
                (Method::DELETE, &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    self.complete(&method, path, operation);
                    add_links(operation);
                }
            }
        }
    }
}

impl Configured {
    /// Adds the security requirement and every status the layers around `operation` can answer
    /// (an annotation's own, more specific, description of a status is kept).
    fn complete(&self, method: &Method, path: &str, operation: &mut Operation) {
        let has_body = operation.request_body.is_some();
        let has_input = has_body
            || operation.parameters.iter().flatten().any(
                |parameter| matches!(parameter, RefOr::T(p) if p.parameter_in != ParameterIn::Path),
            );
        let conditional = CONDITIONAL.contains(&operation.operation_id.as_deref().unwrap_or(""));
        let scope =
            auth::required_scope(method, Some(path)).filter(|_| self.auth == AuthMode::Required);
        operation.security =
            scope.map(|scope| vec![SecurityRequirement::new("bearer", [scope.as_str()])]);
        let responses = &mut operation.responses.responses;
        if conditional {
            responses.entry("304".to_owned()).or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(
                            "Not modified: `If-None-Match` named the current `ETag` (no body)",
                        )
                        .build(),
                )
            });
        }
        let mut add = |status: &str, description: &str| {
            responses
                .entry(status.to_owned())
                .or_insert_with(|| problem(description));
        };
        if has_input {
            add("400", "Invalid parameter or body");
        }
        if let Some(scope) = scope {
            add(
                "401",
                "No API key, or one that is unknown, revoked or expired",
            );
            add(
                "403",
                &format!("The API key lacks the `{scope}` scope this needs"),
            );
        }
        // The browser guards (see `super::origin`): a foreign `Host` with auth off, a foreign
        // `Origin` on a write or a WebSocket upgrade in every mode.
        let writes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if (self.auth == AuthMode::Off && path != "/health") || writes || path == "/v1/ws" {
            add(
                "403",
                "Refused as a browser request: the `Host` is not a loopback name or in \
                 `allowed_hosts` (auth off), or the `Origin` of a change or WebSocket is not \
                 among `cors_origins`",
            );
        }
        if path.contains('{') {
            add("404", "No such resource");
        }
        if has_body {
            add("413", "The body is larger than the server's body limit");
            add("415", "The body is not `application/json`");
        }
        if self.rate_limited && auth::tier(method, Some(path)).is_some() {
            add(
                "429",
                "The caller's rate limit is exhausted; retry after `Retry-After`",
            );
        }
        if !NEVER_SHED.contains(&path) {
            add(
                "503",
                "`overloaded` (past the concurrency limit, or the database cannot take it \
                 now; retry after `Retry-After`) or `timeout` (past the request timeout)",
            );
        }
        add("500", "Internal error (details only in the server log)");
    }
}

fn add_links(operation: &mut Operation) {
    let id = operation.operation_id.as_deref().unwrap_or("");
    let Some((_, status, targets)) = LINKS.iter().find(|(from, _, _)| *from == id) else {
        return;
    };
    if let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status) {
        for target in *targets {
            response.links.insert(
                (*target).to_owned(),
                RefOr::T(
                    LinkBuilder::new()
                        .operation_id(*target)
                        .parameter("id", "$response.body#/id")
                        .build(),
                ),
            );
        }
    }
}

fn problem(description: &str) -> RefOr<utoipa::openapi::response::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build(),
    )
}

/// A `text` part must carry a string `text`: said with `if`/`then`, which utoipa's schema types
/// cannot express (see `domain::Part`).
fn add_text_part_rule(document: &mut serde_json::Value) {
    if let Some(part) = document
        .pointer_mut("/components/schemas/Part")
        .and_then(serde_json::Value::as_object_mut)
    {
        part.insert(
            "if".to_owned(),
            serde_json::json!({"properties": {"type": {"const": "text"}}, "required": ["type"]}),
        );
        part.insert(
            "then".to_owned(),
            serde_json::json!({"properties": {"text": {"type": "string"}}, "required": ["text"]}),
        );
    }
}
