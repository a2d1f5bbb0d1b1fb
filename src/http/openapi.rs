//! The OpenAPI 3.1 document, generated from the handlers' annotations and the domain types.

use utoipa::OpenApi;

use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{events, keys, messages, ops, search, sessions};

/// `Authorization: Bearer <API key>` (when the server runs with `auth = required`). Scopes:
/// `read` for GETs and streams, `write` for changes, `admin` for keys and profiles.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`sessiond_…`) with the scope the operation needs: read \
                         (GETs, streams, summaries), write (changes) or admin (keys, profiles).",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiond",
        description = "Stores AI-agent and chat sessions and their messages, searches them, and \
            streams every change. Errors are RFC 9457 problem details \
            (`application/problem+json`) with a stable `code`. Lists are paginated by cursor: \
            pass a page's `next_cursor` as `cursor` to get the next one. Every response carries \
            `X-Request-Id`.",
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
    ),
    modifiers(&BearerAuth),
    security((), ("bearer" = [])),
    tags(
        (name = "sessions", description = "Sessions: a conversation in a directory"),
        (name = "messages", description = "Messages of a session"),
        (name = "search", description = "Full-text search over message text"),
        (name = "events", description = "Every change, live: server-sent events and WebSocket"),
        (name = "admin", description = "API keys (admin scope)"),
        (name = "operations", description = "Health, readiness and documentation"),
    )
)]
pub struct ApiDoc;
