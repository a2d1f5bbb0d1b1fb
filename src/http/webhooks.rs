//! `/v1/webhooks`: register, inspect, change, rotate, replay and delete webhook endpoints, and
//! list their deliveries (admin scope, like `/v1/admin/…`).

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::SharedState;
use super::conditional;
use super::extract::{JsonBody, NonEmpty, Query};
use super::response::{PageBody, created, encode, json, ok};
use crate::domain::{Limit, WebhookId, wall_clock_ms};
use crate::error::{ApiError, ApiResult, Problem};
use crate::webhooks::model::{
    CreateWebhook, Delivery, DeliveryCounts, DeliveryStatus, UpdateWebhook, Webhook, WebhookUrl,
};
use crate::webhooks::signing::generate_secret;
use crate::webhooks::store::WebhookStore;
use crate::webhooks::{ROTATION_GRACE, guard::Guard};

fn store(state: &SharedState) -> ApiResult<&dyn WebhookStore> {
    state.storage.webhooks().ok_or_else(|| {
        ApiError::NotImplemented("webhooks are not available on this storage backend".to_owned())
    })
}

/// A path id of the form of a webhook id (anything else names nothing: 404).
fn webhook_id(raw: &str) -> ApiResult<WebhookId> {
    WebhookId::parse(raw).ok_or_else(|| {
        ApiError::NotFound(format!(
            "webhook {} does not exist",
            crate::domain::clip(raw)
        ))
    })
}

fn secret() -> ApiResult<String> {
    generate_secret()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the system random generator failed: {e}")))
}

/// Refuses a URL whose host is, or resolves to, an address the guard refuses.
async fn check_reachable(guard: &Guard, url: &WebhookUrl) -> ApiResult<()> {
    let refuse = |why: crate::webhooks::guard::Refused| {
        metrics::counter!(crate::telemetry::metrics::WEBHOOK_REFUSED, "stage" => "register")
            .increment(1);
        ApiError::InvalidRequest(format!("url: {why}"))
    };
    if let Ok(ip) = url.host().parse::<IpAddr>() {
        return guard.check(ip).map_err(refuse);
    }
    let addresses = tokio::net::lookup_host((url.host(), url.port()))
        .await
        .map_err(|_| {
            ApiError::InvalidRequest(format!(
                "url: the host {} does not resolve",
                crate::domain::clip(url.host())
            ))
        })?;
    for address in addresses {
        guard.check(address.ip()).map_err(refuse)?;
    }
    Ok(())
}

/// A new endpoint with its secret: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// `whsec_` + base64 of 32 random bytes: verify the `webhook-signature` of deliveries
    /// with it (see the README). Not retrievable later; rotate to get a new one.
    pub secret: String,
}

/// An endpoint with its delivery counts.
#[derive(Serialize, ToSchema)]
pub struct WebhookDetail {
    #[serde(flatten)]
    pub webhook: Webhook,
    pub deliveries: DeliveryCounts,
}

/// The new secret after a rotation.
#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    pub id: String,
    pub secret: String,
    /// Until when (ms) the previous secret keeps signing beside the new one.
    pub previous_valid_until: i64,
}

/// Body of `POST /v1/webhooks/{id}/replay`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Events with a `seq` after this one are queued again.
    #[schema(value_type = i64, minimum = 0, maximum = 9007199254740991_i64)]
    pub since: serde_json::Number,
}

/// A JSON integer (also written as `12.0`) from 0 to 2^53 - 1.
fn seq_value(number: &serde_json::Number) -> ApiResult<i64> {
    const MAX: i64 = (1 << 53) - 1;
    let value = match number.as_i64() {
        Some(n) => Some(n),
        None => number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= MAX as f64)
            .map(|f| f as i64),
    };
    value.filter(|n| (0..=MAX).contains(n)).ok_or_else(|| {
        ApiError::InvalidRequest(format!(
            "since must be an integer from 0 to {MAX} (got {number})"
        ))
    })
}

/// What a replay queued.
#[derive(Serialize, ToSchema)]
pub struct Replayed {
    /// Deliveries queued (at most 10,000 per replay).
    pub queued: u64,
}

/// Query of `GET /v1/webhooks`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    #[param(inline)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    #[param(inline)]
    cursor: Option<NonEmpty>,
}

/// Query of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Only deliveries in this state.
    #[param(inline)]
    status: Option<DeliveryStatus>,
    #[param(inline)]
    limit: Option<Limit>,
    /// `next_cursor` of the previous page.
    #[param(inline)]
    cursor: Option<NonEmpty>,
}

fn invalid_cursor() -> ApiError {
    ApiError::InvalidRequest(
        "cursor is invalid: pass the next_cursor of a previous page of this same list".to_owned(),
    )
}

fn encode_cursor(kind: char, value: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}{value}"))
}

fn decode_cursor(kind: char, raw: &str) -> ApiResult<String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(raw.as_bytes())
        .map_err(|_| invalid_cursor())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid_cursor())?;
    text.strip_prefix(kind)
        .map(str::to_owned)
        .ok_or_else(invalid_cursor)
}

/// A GET answer with a strong ETag over its body, or 304 when the client has it already.
fn tagged(headers: &HeaderMap, body: bytes::Bytes) -> Response {
    let etag = format!("w{}", conditional::digest(&String::from_utf8_lossy(&body)));
    match conditional::matching_tag(headers, &etag) {
        Some(tag) => conditional::not_modified(&tag),
        None => conditional::fresh(body, crate::cache::quoted(&etag)),
    }
}

/// Register a webhook endpoint.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    operation_id = "create_webhook",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The endpoint, with its secret (shown once)", body = CreatedWebhook,
            headers(("Location" = String, description = "URL of the new endpoint"))),
        (status = 400, description = "Invalid body: a URL that is not http, or whose host is internal or does not resolve; an unknown event type; a description over 1024 characters; or `webhook_max_endpoints` (100) endpoints exist already", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This storage backend has no webhooks", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    JsonBody(body): JsonBody<CreateWebhook>,
) -> ApiResult<Response> {
    let webhooks = store(&state)?;
    let new = body.into_new(secret()?)?;
    check_reachable(&state.webhook_guard, &new.url).await?;
    let endpoint = webhooks
        .create_endpoint(new, state.webhook_max_endpoints)
        .await?;
    created(
        &format!("/v1/webhooks/{}", endpoint.id),
        &CreatedWebhook {
            webhook: Webhook::from(&endpoint),
            secret: endpoint.secret.clone(),
        },
    )
}

/// List webhook endpoints (never their secrets), oldest first.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    operation_id = "list_webhooks",
    params(ListParams),
    responses(
        (status = 200, description = "A page of endpoints, in creation order", body = PageBody<Webhook>),
        (status = 400, description = "Invalid parameter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This storage backend has no webhooks", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let webhooks = store(&state)?;
    let after = params
        .cursor
        .map(|c| decode_cursor('w', &c.into_inner()))
        .transpose()?;
    let page = webhooks
        .list_endpoints(params.limit.unwrap_or_default().get(), after)
        .await?;
    let body = encode(&PageBody {
        items: page.items.iter().map(Webhook::from).collect(),
        next_cursor: page.next.map(|id| encode_cursor('w', &id)),
    })?;
    Ok(tagged(&headers, body))
}

/// A webhook endpoint, its circuit and its delivery counts.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    operation_id = "get_webhook",
    params(("id" = String, Path, description = "Endpoint id (`whk_…`)")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookDetail),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This storage backend has no webhooks", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let webhooks = store(&state)?;
    let id = webhook_id(&id)?;
    let (endpoint, deliveries) = webhooks.get_endpoint(id.as_str()).await?;
    let body = encode(&WebhookDetail {
        webhook: Webhook::from(&endpoint),
        deliveries,
    })?;
    Ok(tagged(&headers, body))
}

/// Change a webhook endpoint.
#[utoipa::path(
    patch, path = "/v1/webhooks/{id}", tag = "webhooks",
    operation_id = "update_webhook",
    params(("id" = String, Path, description = "Endpoint id (`whk_…`)")),
    request_body = UpdateWebhook,
    responses(
        (status = 200, description = "The changed endpoint", body = Webhook),
        (status = 400, description = "Invalid body (as for creation)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This storage backend has no webhooks", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateWebhook>,
) -> ApiResult<Response> {
    let webhooks = store(&state)?;
    let id = webhook_id(&id)?;
    let patch = body.into_patch()?;
    if let Some(url) = &patch.url {
        check_reachable(&state.webhook_guard, url).await?;
    }
    let endpoint = webhooks.update_endpoint(id.as_str(), patch).await?;
    ok(&Webhook::from(&endpoint))
}

/// Delete a webhook endpoint; its pending deliveries are dropped.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    operation_id = "delete_webhook",
    params(("id" = String, Path, description = "Endpoint id (`whk_…`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This storage backend has no webhooks", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let webhooks = store(&state)?;
    let id = webhook_id(&id)?;
    webhooks.delete_endpoint(id.as_str()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give an endpoint a new secret; the old one keeps signing beside it for 24 hours.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks",
    operation_id = "rotate_webhook_secret",
    params(("id" = String, Path, description = "Endpoint id (`whk_…`)")),
    responses(
        (status = 200, description = "The new secret (shown once)", body = RotatedSecret),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This storage backend has no webhooks", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let webhooks = store(&state)?;
    let id = webhook_id(&id)?;
    let until = wall_clock_ms() + ROTATION_GRACE.as_millis() as i64;
    let endpoint = webhooks
        .rotate_secret(id.as_str(), secret()?, until)
        .await?;
    ok(&RotatedSecret {
        id: endpoint.id.clone(),
        secret: endpoint.secret.clone(),
        previous_valid_until: until,
    })
}

/// An endpoint's deliveries, newest first.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    operation_id = "list_webhook_deliveries",
    params(("id" = String, Path, description = "Endpoint id (`whk_…`)"), DeliveryParams),
    responses(
        (status = 200, description = "A page of deliveries, newest first", body = PageBody<Delivery>),
        (status = 400, description = "Invalid parameter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This storage backend has no webhooks", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn deliveries(
    State(state): State<SharedState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<DeliveryParams>,
) -> ApiResult<Response> {
    let webhooks = store(&state)?;
    let id = webhook_id(&id)?;
    let before = params
        .cursor
        .map(|c| {
            decode_cursor('d', &c.into_inner())?
                .parse::<i64>()
                .map_err(|_| invalid_cursor())
        })
        .transpose()?;
    let page = webhooks
        .list_deliveries(
            id.as_str(),
            params.status,
            params.limit.unwrap_or_default().get(),
            before,
        )
        .await?;
    let body = encode(&PageBody {
        items: page.items,
        next_cursor: page.next.map(|n| encode_cursor('d', &n.to_string())),
    })?;
    Ok(tagged(&headers, body))
}

/// Queue again every retained event after `since` that matches the endpoint.
#[utoipa::path(
    post, path = "/v1/webhooks/{id}/replay", tag = "webhooks",
    operation_id = "replay_webhook",
    params(("id" = String, Path, description = "Endpoint id (`whk_…`)")),
    request_body = Replay,
    responses(
        (status = 202, description = "Queued", body = Replayed),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such endpoint", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The endpoint is disabled; enable it (PATCH `enabled: true`) first", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "This storage backend has no webhooks", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Replay>,
) -> ApiResult<Response> {
    let webhooks = store(&state)?;
    let id = webhook_id(&id)?;
    let since = seq_value(&body.since)?;
    let queued = webhooks.replay(id.as_str(), since).await?;
    json(StatusCode::ACCEPTED, &Replayed { queued })
}
