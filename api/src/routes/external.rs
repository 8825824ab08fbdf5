//! External workspaces: agents run by their owners, which connect in. What such an agent
//! needs to connect is built here, once, for create, `connection` and `rotate`.

use axum::Json;
use axum::extract::State;
use jobs::lifecycle;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::ApiResult;
use crate::extract::{PathId, WorkspaceId};
use crate::state::AppState;

/// The connection payload. `token` is the plaintext when one was just minted (create,
/// rotate) and empty otherwise: a stored token cannot be shown again. The snippets carry a
/// `<token>` placeholder, never the token, so they can be pasted into shared docs.
pub fn payload(state: &AppState, workspace_id: Uuid, token: &str) -> Value {
    let base = state.config.platform_url.trim_end_matches('/');
    json!({
        "workspace_id": workspace_id,
        "platform_url": base,
        "auth_token": token,
        "registry_endpoint": format!("{base}/registry/register"),
        "heartbeat_endpoint": format!("{base}/registry/heartbeat"),
        "curl_register_template": format!(
            "curl -X POST {base}/registry/register -H 'Authorization: Bearer <token>' -H 'Content-Type: application/json' -d '{{\"id\":\"{workspace_id}\",\"url\":\"<your agent url>\"}}'"
        ),
        "python_snippet": format!(
            "import requests\nrequests.post(\"{base}/registry/register\", headers={{\"Authorization\": \"Bearer <token>\"}}, json={{\"id\": \"{workspace_id}\", \"url\": \"<your agent url>\"}})"
        ),
    })
}

/// `GET /workspaces/{id}/external/connection`: how to connect, without a token.
pub async fn connection(State(state): State<AppState>, PathId(id, _): WorkspaceId, _: Admin) -> ApiResult<Json<Value>> {
    let ws = lifecycle::external(&state.pool, id).await?;
    Ok(Json(json!({"connection": payload(&state, ws.id, "")})))
}

/// `POST /workspaces/{id}/external/rotate` (and its older path `/workspaces/{id}/token`):
/// every live token of the workspace stops working and a new one is shown, once.
pub async fn rotate(State(state): State<AppState>, _: Admin, PathId(id, _): WorkspaceId) -> ApiResult<Json<Value>> {
    let (ws, token) = lifecycle::rotate_token(&state.pool, id).await?;
    Ok(Json(json!({"id": ws.id, "connection": payload(&state, ws.id, &token)})))
}
