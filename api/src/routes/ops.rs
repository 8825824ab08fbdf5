use axum::Json;
use axum::extract::State;
use jobs::domain::Op;
use jobs::ops;
use jobs::store::{workspace_ops, workspaces};
use serde::Deserialize;

use crate::auth::{AdminOrWorkspace, Caller};
use crate::error::ApiResult;
use crate::extract::{ApiQuery, Limit, OpId, PathId};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn list_for_workspace(
    State(state): State<AppState>,
    ws: AdminOrWorkspace,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Op>>> {
    workspaces::get(&state.pool, ws.id).await?.ok_or_else(|| jobs::Error::workspace_not_found(ws.id))?;
    let Limit(limit) = Limit::parse(q.limit)?;
    Ok(Json(workspace_ops::list_for_workspace(&state.pool, ws.id, limit).await?))
}

/// Authenticated before revealing whether the op exists; another workspace's op is "not
/// found" to a workspace token.
pub async fn get(State(state): State<AppState>, PathId(id, _): OpId, caller: Caller) -> ApiResult<Json<Op>> {
    let op = ops::get(&state.pool, id).await?;
    match caller {
        Caller::Workspace(ws) if ws != op.workspace_id => Err(jobs::Error::op_not_found(id).into()),
        _ => Ok(Json(op)),
    }
}
