//! Agent memories: `/workspaces/:id/memories`, for the admin or the workspace's own token.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use jobs::domain::memory::Scope;
use jobs::memories::{self, Edit, NOT_ROOT, NewMemory, NotRoot, Query};
use jobs::store::memories::Memory;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AdminOrWorkspace;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, double_option};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"content": "the build server is ci-3", "scope": "LOCAL", "namespace": "infra"}))]
pub struct CommitBody {
    /// Required.
    content: Option<String>,
    /// Required: `LOCAL`, `TEAM` or `GLOBAL` (roots only).
    scope: Option<String>,
    /// At most 50 characters; `general` when absent.
    namespace: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Committed {
    id: Uuid,
    scope: Scope,
    namespace: String,
}

fn not_root(_: NotRoot) -> ApiError {
    ApiError::Forbidden(NOT_ROOT.into())
}

/// `POST /workspaces/:id/memories`: 201 with the id, scope and namespace stored.
#[utoipa::path(post, path = "/workspaces/{id}/memories", tag = "memories",
    params(("id" = Uuid, Path, description = "The writing workspace")),
    request_body = CommitBody,
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 201, description = "Stored", body = Committed),
        (status = 400, description = "A bad id or body", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token, or a GLOBAL write by a workspace that is not a root", body = ErrorBody),
        (status = 404, description = "No such live workspace", body = ErrorBody),
    ))]
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
    Ok((StatusCode::CREATED, Json(Committed { id: m.id, scope: m.scope, namespace: m.namespace })).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// `LOCAL`, `TEAM` or `GLOBAL`; every scope it may read when absent or empty.
    scope: Option<String>,
    /// Text the content must hold.
    q: Option<String>,
    namespace: Option<String>,
    /// At most this many, newest first.
    limit: Option<i64>,
}

/// An empty query parameter (`?scope=`) is taken as absent.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// `GET /workspaces/:id/memories?scope=&q=&namespace=&limit=`.
#[utoipa::path(get, path = "/workspaces/{id}/memories", tag = "memories",
    params(("id" = Uuid, Path, description = "The reading workspace"), SearchQuery),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The memories it may read that match", body = Vec<Memory>),
        (status = 400, description = "A bad id, scope or limit, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such live workspace", body = ErrorBody),
    ))]
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    content: Option<String>,
    namespace: Option<String>,
    /// Refused by name when given: a memory's scope never changes.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Value>)]
    scope: Option<Option<Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Edited {
    id: Uuid,
    scope: Scope,
    namespace: String,
    content: String,
    updated_at: DateTime<Utc>,
    /// False when the edit changed nothing.
    changed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    id: Uuid,
    /// `deleted`.
    status: &'static str,
}

/// `PATCH /workspaces/:id/memories/:mid`: 200 with the memory and whether it changed.
#[utoipa::path(patch, path = "/workspaces/{id}/memories/{memory_id}", tag = "memories",
    params(("id" = Uuid, Path, description = "The writing workspace"), ("memory_id" = Uuid, Path, description = "The memory")),
    request_body = EditBody,
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The memory as edited", body = Edited),
        (status = 400, description = "A bad id or body, or a scope given", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token, or a GLOBAL memory edited by a workspace that is not a root", body = ErrorBody),
        (status = 404, description = "No such memory of this workspace", body = ErrorBody),
    ))]
pub async fn edit(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    Path((_, mid)): Path<(String, String)>,
    ApiJson(b): ApiJson<EditBody>,
) -> ApiResult<Json<Edited>> {
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
    Ok(Json(Edited {
        id: m.id,
        scope: m.scope,
        namespace: m.namespace,
        content: m.content,
        updated_at: m.updated_at,
        changed: edited.changed,
    }))
}

/// `DELETE /workspaces/:id/memories/:mid`.
#[utoipa::path(delete, path = "/workspaces/{id}/memories/{memory_id}", tag = "memories",
    params(("id" = Uuid, Path, description = "The writing workspace"), ("memory_id" = Uuid, Path, description = "The memory")),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 400, description = "An id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token, or a GLOBAL memory deleted by a workspace that is not a root", body = ErrorBody),
        (status = 404, description = "No such memory of this workspace", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    Path((_, mid)): Path<(String, String)>,
) -> ApiResult<Json<Deleted>> {
    let mid = memory_id(&mid)?;
    let m = memories::delete(&state.pool, who.id, mid, &who.caller.label()).await?;
    Ok(Json(Deleted { id: m.id, status: "deleted" }))
}
