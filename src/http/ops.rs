//! Operations endpoints: liveness, readiness, the OpenAPI document and the offline docs page.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::SharedState;
use super::openapi::ApiDoc;
use super::response::json;
use crate::error::{ApiError, ApiResult};

/// How long `/ready` waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: answers without touching any dependency.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is up", body = Health)))]
pub async fn health() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

#[derive(Serialize, ToSchema)]
pub struct Check {
    /// `ok` or `down`.
    status: &'static str,
    latency_ms: f64,
    /// Why the check failed (never internals).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ok`, `degraded` (optional dependencies failing) or `down`.
    status: &'static str,
    checks: BTreeMap<&'static str, Check>,
}

/// Readiness: checks every dependency with a short timeout.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready (status `ok` or `degraded`)", body = Readiness),
        (status = 503, description = "Not ready (status `down`)", body = Readiness),
    ))]
pub async fn ready(State(state): State<SharedState>) -> ApiResult<Response> {
    let started = Instant::now();
    let outcome = tokio::time::timeout(READY_TIMEOUT, state.storage.check()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let database = match outcome {
        Ok(Ok(())) => Check {
            status: "ok",
            latency_ms,
            error: None,
        },
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "readiness: database check failed");
            Check {
                status: "down",
                latency_ms,
                error: Some("the database check failed"),
            }
        }
        Err(_) => Check {
            status: "down",
            latency_ms,
            error: Some("the database check timed out"),
        },
    };
    let up = database.status == "ok";
    let body = Readiness {
        status: if up { "ok" } else { "down" },
        checks: BTreeMap::from([("database", database)]),
    };
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

fn openapi_document() -> &'static [u8] {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .map(String::into_bytes)
            .unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#).into_bytes())
    })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_document(),
    )
        .into_response()
}

const DOCS_HTML: &str = include_str!("../../assets/docs.html");
const DOCS_INIT: &str = include_str!("../../assets/docs-init.js");
const SWAGGER_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

/// Interactive API docs (Swagger UI, served from the binary: works offline).
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "The docs page", content_type = "text/html")))]
pub async fn docs() -> Response {
    asset("text/html; charset=utf-8", DOCS_HTML.as_bytes())
}

pub async fn docs_asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    match name.as_str() {
        "swagger-ui-bundle.js" => Ok(asset("text/javascript; charset=utf-8", SWAGGER_JS)),
        "swagger-ui.css" => Ok(asset("text/css; charset=utf-8", SWAGGER_CSS)),
        "init.js" => Ok(asset(
            "text/javascript; charset=utf-8",
            DOCS_INIT.as_bytes(),
        )),
        _ => Err(ApiError::NotFound("no such resource".to_owned())),
    }
}

fn asset(content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}
