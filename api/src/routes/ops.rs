use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use jobs::ops::{self, Op};
use jobs::store::workspaces;
use serde::Deserialize;

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, parse_id};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn list_for_workspace(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Op>>> {
    let id = parse_id("workspace id", &id)?;
    auth::admin_or_workspace(&state, &headers, id).await?;
    workspaces::get(&state.pool, id).await?.ok_or_else(|| ApiError::NotFound(format!("workspace {id} not found")))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".into()));
    }
    Ok(Json(ops::list_for_workspace(&state.pool, id, limit).await?))
}

pub async fn get(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult<Json<Op>> {
    let id = parse_id("op id", &id)?;
    // Authenticate before revealing whether the op exists.
    let token = auth::bearer(&headers).ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
    let caller = auth::identify(&state, token).await?.ok_or_else(|| ApiError::Unauthorized("invalid token".into()))?;
    let op = ops::get(&state.pool, id).await?.ok_or_else(|| ops::not_found(id))?;
    match caller {
        auth::Caller::Admin => Ok(Json(op)),
        auth::Caller::Workspace(ws) if ws == op.workspace_id => Ok(Json(op)),
        auth::Caller::Workspace(_) => Err(ops::not_found(id).into()),
    }
}
