//! `/org/tokens`: org API tokens, minted by the admin for integrations that need the
//! admin's reach but must be revocable one by one.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use jobs::domain::workspace::{self, MAX_NAME_CHARS};
use jobs::store::org_api_tokens::{self, OrgApiToken};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, IdKind, PathId};
use crate::state::AppState;

pub struct OrgTokenIdKind;
impl IdKind for OrgTokenIdKind {
    const NAME: &'static str = "org token id";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    name: Option<String>,
}

/// `POST /org/tokens`: the plaintext is in this answer and nowhere else, ever.
pub async fn mint(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    admin: Admin,
    ApiJson(body): ApiJson<MintBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    admin.require_admin_token()?;
    state.org_token_rate.check(client.ip())?;
    let name = body.name.map(|n| workspace::parse_name("name", &n, MAX_NAME_CHARS)).transpose()?;
    let (row, token) = org_api_tokens::mint(&state.pool, name.as_deref(), &admin.label()).await?;
    tracing::info!(id = %row.id, prefix = %row.prefix, "org token minted");
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": row.id, "name": row.name, "prefix": row.prefix, "token": token, "created_at": row.created_at}),
        ),
    ))
}

/// `GET /org/tokens`: the live tokens, recognisable by prefix and name.
pub async fn list(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Vec<OrgApiToken>>> {
    Ok(Json(org_api_tokens::list_live(&state.pool).await?))
}

/// `DELETE /org/tokens/{id}`: the token stops working at once.
pub async fn revoke(
    State(state): State<AppState>,
    _: Admin,
    PathId(id, _): PathId<OrgTokenIdKind>,
) -> ApiResult<Json<Value>> {
    if !org_api_tokens::revoke(&state.pool, id).await? {
        return Err(ApiError::NotFound(format!("org token {id} not found (or already revoked)")));
    }
    tracing::info!(%id, "org token revoked");
    Ok(Json(json!({"revoked": true})))
}
