//! Who is calling: the admin (operators, canvas) or a workspace's agent.

use axum::http::HeaderMap;
use jobs::store::tokens as token_store;
use jobs::tokens::constant_time_eq;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Workspace(Uuid),
}

impl Caller {
    pub fn label(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Workspace(id) => format!("workspace:{id}"),
        }
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))?.trim();
    (!t.is_empty()).then_some(t)
}

/// Resolves a presented token: the admin token, or a live workspace token.
pub async fn identify(state: &AppState, token: &str) -> ApiResult<Option<Caller>> {
    if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) {
        return Ok(Some(Caller::Admin));
    }
    Ok(token_store::validate(&state.pool, token).await?.map(Caller::Workspace))
}

pub async fn admin(state: &AppState, headers: &HeaderMap) -> ApiResult<Caller> {
    let token = bearer(headers).ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    match identify(state, token).await? {
        Some(Caller::Admin) => Ok(Caller::Admin),
        Some(Caller::Workspace(_)) => Err(ApiError::Forbidden("this route needs the admin token".into())),
        None => Err(ApiError::Unauthorized("invalid token".into())),
    }
}

/// The admin, or the workspace's own token; another workspace's token is refused.
pub async fn admin_or_workspace(state: &AppState, headers: &HeaderMap, workspace_id: Uuid) -> ApiResult<Caller> {
    let token = bearer(headers).ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    match identify(state, token).await? {
        Some(Caller::Admin) => Ok(Caller::Admin),
        Some(Caller::Workspace(id)) if id == workspace_id => Ok(Caller::Workspace(id)),
        Some(Caller::Workspace(_)) => Err(ApiError::Forbidden("this token belongs to another workspace".into())),
        None => Err(ApiError::Unauthorized("invalid token".into())),
    }
}

/// Register and heartbeat: like [`admin_or_workspace`], except that a workspace with no
/// live token may call without one (first boot, or an agent that bootstraps its token).
pub async fn bootstrap(state: &AppState, headers: &HeaderMap, workspace_id: Uuid) -> ApiResult<()> {
    if bearer(headers).is_some() {
        return admin_or_workspace(state, headers, workspace_id).await.map(|_| ());
    }
    if token_store::has_live(&state.pool, workspace_id).await? {
        return Err(ApiError::Unauthorized("this workspace has a token; send it as a bearer token".into()));
    }
    Ok(())
}
