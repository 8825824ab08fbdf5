//! `/org/tokens`: org API tokens, minted by the admin for integrations that need the
//! admin's reach but must be revocable one by one.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use jobs::domain::workspace::{self, MAX_NAME_CHARS};
use jobs::store::org_api_tokens::{self, OrgApiToken};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, IdKind, PathId};
use crate::state::AppState;

pub struct OrgTokenIdKind;
impl IdKind for OrgTokenIdKind {
    const NAME: &'static str = "org token id";
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "deploy pipeline"}))]
pub struct MintBody {
    /// What the token is for, to recognise it by.
    name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Minted {
    id: Uuid,
    name: Option<String>,
    prefix: String,
    /// The plaintext: shown here once, never again.
    token: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    revoked: bool,
}

/// `POST /org/tokens`: the plaintext is in this answer and nowhere else, ever.
#[utoipa::path(post, path = "/org/tokens", tag = "org tokens",
    request_body = MintBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "The new token", body = Minted),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin token itself (an org token cannot mint)", body = ErrorBody),
        (status = 429, description = "Too many mints from this address this hour (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn mint(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    admin: Admin,
    ApiJson(body): ApiJson<MintBody>,
) -> ApiResult<(StatusCode, Json<Minted>)> {
    admin.require_admin_token()?;
    state.org_token_rate.check(client.ip())?;
    let name = body.name.map(|n| workspace::parse_name("name", &n, MAX_NAME_CHARS)).transpose()?;
    let (row, token) = org_api_tokens::mint(&state.pool, name.as_deref(), &admin.label()).await?;
    tracing::info!(id = %row.id, prefix = %row.prefix, "org token minted");
    Ok((
        StatusCode::CREATED,
        Json(Minted { id: row.id, name: row.name, prefix: row.prefix, token, created_at: row.created_at }),
    ))
}

/// `GET /org/tokens`: the live tokens, recognisable by prefix and name.
#[utoipa::path(get, path = "/org/tokens", tag = "org tokens",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The live tokens, never their plaintext", body = Vec<OrgApiToken>),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Vec<OrgApiToken>>> {
    Ok(Json(org_api_tokens::list_live(&state.pool).await?))
}

/// `DELETE /org/tokens/{id}`: the token stops working at once.
#[utoipa::path(delete, path = "/org/tokens/{id}", tag = "org tokens",
    params(("id" = Uuid, Path, description = "The org token")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such live token", body = ErrorBody),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    _: Admin,
    PathId(id, _): PathId<OrgTokenIdKind>,
) -> ApiResult<Json<Revoked>> {
    if !org_api_tokens::revoke(&state.pool, id).await? {
        return Err(ApiError::NotFound(format!("org token {id} not found (or already revoked)")));
    }
    tracing::info!(%id, "org token revoked");
    Ok(Json(Revoked { revoked: true }))
}
