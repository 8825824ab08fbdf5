use axum::Json;
use axum::extract::State;
use jobs::domain::Op;
use jobs::ops;
use jobs::store::{workspace_ops, workspaces};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{AdminOrWorkspace, Caller};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiQuery, Limit, OpId, PathId};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/workspaces/{id}/ops", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The workspace"), ListQuery),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The workspace's ops, newest first", body = Vec<Op>),
        (status = 400, description = "A bad id or limit, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
    ))]
pub async fn list_for_workspace(
    State(state): State<AppState>,
    ws: AdminOrWorkspace,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Op>>> {
    workspaces::get(&state.pool, ws.id).await?.ok_or_else(|| jobs::Error::workspace_not_found(ws.id))?;
    let Limit(limit) = Limit::parse(q.limit)?;
    Ok(Json(workspace_ops::list_for_workspace(&state.pool, ws.id, limit).await?))
}

#[utoipa::path(get, path = "/ops/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The op")),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The op", body = Op),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such op, or another workspace's", body = ErrorBody),
    ))]
/// Authenticated before revealing whether the op exists; another workspace's op is "not
/// found" to a workspace token.
pub async fn get(State(state): State<AppState>, PathId(id, _): OpId, caller: Caller) -> ApiResult<Json<Op>> {
    let op = ops::get(&state.pool, id).await?;
    match caller {
        Caller::Workspace(ws) if ws != op.workspace_id => Err(jobs::Error::op_not_found(id).into()),
        _ => Ok(Json(op)),
    }
}
