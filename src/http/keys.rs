//! `/v1/admin/keys`: create, list and revoke API keys (admin scope).

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use super::SharedState;
use super::extract::JsonBody;
use super::response::{PageBody, created, ok};
use crate::domain::keys::{ApiKey, CreateKey, Secret};
use crate::domain::wall_clock_ms;
use crate::error::{ApiError, ApiResult, Problem};

/// A new key with its secret: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// `sessiond_…`: send as `Authorization: Bearer <secret>`. Not retrievable later.
    pub secret: String,
}

/// Create an API key.
#[utoipa::path(
    post, path = "/v1/admin/keys", tag = "admin",
    operation_id = "create_key",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key, with its secret (shown once)", body = CreatedKey),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    JsonBody(body): JsonBody<CreateKey>,
) -> ApiResult<Response> {
    let new = body.into_new(wall_clock_ms())?;
    let secret = Secret::generate().map_err(|e| {
        ApiError::Internal(anyhow::anyhow!("the system random generator failed: {e}"))
    })?;
    let key = state
        .storage
        .create_key(new, secret.hash(), secret.hint())
        .await?;
    created(
        &format!("/v1/admin/keys/{}", key.id),
        &CreatedKey {
            key,
            secret: secret.expose().to_owned(),
        },
    )
}

/// List API keys (never their secrets).
#[utoipa::path(
    get, path = "/v1/admin/keys", tag = "admin",
    operation_id = "list_keys",
    responses(
        (status = 200, description = "Every key, oldest first", body = PageBody<ApiKey>),
    )
)]
pub async fn list(State(state): State<SharedState>) -> ApiResult<Response> {
    ok(&PageBody {
        items: state.storage.list_keys().await?,
        next_cursor: None,
    })
}

/// Revoke an API key: refused from the next request on (on every instance within a minute).
#[utoipa::path(
    delete, path = "/v1/admin/keys/{id}", tag = "admin",
    operation_id = "revoke_key",
    params(("id" = String, Path, description = "Key id (`key_…`)")),
    responses(
        (status = 200, description = "The revoked key", body = ApiKey),
        (status = 404, description = "No such key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(state): State<SharedState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let key = state.storage.revoke_key(&id).await?;
    state.keys.forget(&key.id);
    if let Some(redis) = &state.redis {
        // The fast path to the other instances (PostgreSQL's NOTIFY is the other).
        redis.broadcast(crate::cluster::Broadcast::Revoke {
            key: key.id.clone(),
        });
    }
    ok(&key)
}
