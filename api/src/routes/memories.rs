//! Agent memories: `/workspaces/:id/memories`, for the admin or the workspace's own token.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobs::domain::memory::Scope;
use jobs::memories::{self, Edit, NOT_ROOT, NewMemory, NotRoot, Query};
use jobs::store::memories::Memory;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::AdminOrWorkspace;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, double_option};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitBody {
    content: Option<String>,
    scope: Option<String>,
    namespace: Option<String>,
}

fn not_root(_: NotRoot) -> ApiError {
    ApiError::Forbidden(NOT_ROOT.into())
}

/// `POST /workspaces/:id/memories`: 201 with the id, scope and namespace stored.
pub async fn commit(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiJson(b): ApiJson<CommitBody>,
) -> ApiResult<Response> {
    let content = b.content.ok_or_else(|| ApiError::BadRequest("content is required".into()))?;
    let scope = b.scope.ok_or_else(|| ApiError::BadRequest("scope is required: LOCAL, TEAM or GLOBAL".into()))?;
    let scope = Scope::parse(&scope)?;
    let actor = who.caller.label();
    let m = memories::commit(
        &state.pool,
        NewMemory { workspace_id: who.id, scope, namespace: b.namespace.as_deref(), content: &content, actor: &actor },
    )
    .await?
    .map_err(not_root)?;
    Ok((StatusCode::CREATED, Json(json!({"id": m.id, "scope": m.scope, "namespace": m.namespace}))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    scope: Option<String>,
    q: Option<String>,
    namespace: Option<String>,
    limit: Option<i64>,
}

/// An empty query parameter (`?scope=`) is taken as absent.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// `GET /workspaces/:id/memories?scope=&q=&namespace=&limit=`.
pub async fn search(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> ApiResult<Json<Vec<Memory>>> {
    let scope = given(&q.scope).map(Scope::parse).transpose()?;
    let rows = memories::search(
        &state.pool,
        Query {
            workspace_id: who.id,
            scope,
            namespace: given(&q.namespace),
            text: given(&q.q),
            limit: q.limit.unwrap_or(memories::LIMIT_MAX),
        },
    )
    .await?;
    Ok(Json(rows))
}

fn memory_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest(format!("memory id {raw:?} is not a valid UUID")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    content: Option<String>,
    namespace: Option<String>,
    /// Only to refuse it by name: a memory's scope never changes.
    #[serde(default, deserialize_with = "double_option")]
    scope: Option<Option<Value>>,
}

/// `PATCH /workspaces/:id/memories/:mid`: 200 with the memory and whether it changed.
pub async fn edit(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    Path((_, mid)): Path<(String, String)>,
    ApiJson(b): ApiJson<EditBody>,
) -> ApiResult<Json<Value>> {
    let mid = memory_id(&mid)?;
    if b.scope.is_some() {
        return Err(ApiError::BadRequest(
            "scope cannot change; delete the memory and write it again in the other scope".into(),
        ));
    }
    let actor = who.caller.label();
    let edited = memories::edit(
        &state.pool,
        Edit {
            workspace_id: who.id,
            memory_id: mid,
            content: b.content.as_deref(),
            namespace: b.namespace.as_deref(),
            actor: &actor,
        },
    )
    .await?
    .map_err(not_root)?;
    let m = edited.memory;
    Ok(Json(json!({
        "id": m.id,
        "scope": m.scope,
        "namespace": m.namespace,
        "content": m.content,
        "updated_at": m.updated_at,
        "changed": edited.changed,
    })))
}

/// `DELETE /workspaces/:id/memories/:mid`.
pub async fn delete(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    Path((_, mid)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let mid = memory_id(&mid)?;
    let m = memories::delete(&state.pool, who.id, mid, &who.caller.label()).await?;
    Ok(Json(json!({"id": m.id, "status": "deleted"})))
}
