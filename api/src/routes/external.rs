//! External workspaces: agents run by their owners, which connect in. What such an agent
//! needs to connect is built here, once, for create, `connection` and `rotate`.

use axum::Json;
use axum::extract::State;
use jobs::lifecycle;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{PathId, WorkspaceId};
use crate::state::AppState;

/// What an external agent needs to connect. `auth_token` is the plaintext when one was just
/// minted (create, rotate) and empty otherwise: a stored token cannot be shown again. The
/// snippets carry a `<token>` placeholder, never the token, so they can be pasted into
/// shared docs.
#[derive(Debug, Serialize, ToSchema)]
pub struct Connection {
    workspace_id: Uuid,
    platform_url: String,
    auth_token: String,
    registry_endpoint: String,
    heartbeat_endpoint: String,
    curl_register_template: String,
    python_snippet: String,
}

pub fn payload(state: &AppState, workspace_id: Uuid, token: &str) -> Connection {
    let base = state.config.platform_url.trim_end_matches('/');
    Connection {
        workspace_id,
        platform_url: base.to_string(),
        auth_token: token.to_string(),
        registry_endpoint: format!("{base}/registry/register"),
        heartbeat_endpoint: format!("{base}/registry/heartbeat"),
        curl_register_template: format!(
            "curl -X POST {base}/registry/register -H 'Authorization: Bearer <token>' -H 'Content-Type: application/json' -d '{{\"id\":\"{workspace_id}\",\"url\":\"<your agent url>\"}}'"
        ),
        python_snippet: format!(
            "import requests\nrequests.post(\"{base}/registry/register\", headers={{\"Authorization\": \"Bearer <token>\"}}, json={{\"id\": \"{workspace_id}\", \"url\": \"<your agent url>\"}})"
        ),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionInfo {
    connection: Connection,
}

/// `GET /workspaces/{id}/external/connection`: how to connect, without a token.
#[utoipa::path(get, path = "/workspaces/{id}/external/connection", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The external workspace")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "How its agent connects (`auth_token` empty)", body = ConnectionInfo),
        (status = 400, description = "The id is not a UUID, or the workspace is not external", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
    ))]
pub async fn connection(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    _: Admin,
) -> ApiResult<Json<ConnectionInfo>> {
    let ws = lifecycle::external(&state.pool, id).await?;
    Ok(Json(ConnectionInfo { connection: payload(&state, ws.id, "") }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Rotated {
    id: Uuid,
    connection: Connection,
}

/// `POST /workspaces/{id}/external/rotate`: every live token of the workspace stops working
/// and a new one is shown, once.
#[utoipa::path(post, path = "/workspaces/{id}/external/rotate", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The external workspace")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The new token, in `connection.auth_token`", body = Rotated),
        (status = 400, description = "The id is not a UUID, or the workspace is not external (restart it instead)", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "The workspace is removed", body = ErrorBody),
    ))]
pub async fn rotate(State(state): State<AppState>, _: Admin, PathId(id, _): WorkspaceId) -> ApiResult<Json<Rotated>> {
    let (ws, token) = lifecycle::rotate_token(&state.pool, id).await?;
    Ok(Json(Rotated { id: ws.id, connection: payload(&state, ws.id, &token) }))
}

/// `POST /workspaces/{id}/token`: the older path of `external/rotate`.
#[utoipa::path(post, path = "/workspaces/{id}/token", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The external workspace")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The new token, in `connection.auth_token`", body = Rotated),
        (status = 400, description = "The id is not a UUID, or the workspace is not external (restart it instead)", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "The workspace is removed", body = ErrorBody),
    ))]
pub async fn rotate_token(state: State<AppState>, admin: Admin, id: WorkspaceId) -> ApiResult<Json<Rotated>> {
    rotate(state, admin, id).await
}
