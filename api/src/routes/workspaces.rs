use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use jobs::lifecycle::{self, CreateRequest, Created, Deleted, Patch, Restarted};
use jobs::ops::Op;
use jobs::store::{workers, workspaces};
use jobs::workspace::{self, MAX_NAME_CHARS, MAX_ROLE_CHARS, Status, Workspace};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{self, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, parse_id};
use crate::state::AppState;
use crate::wait::{self, WaitQuery, Waited};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canvas {
    x: f64,
    y: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: String,
    role: Option<String>,
    runtime: Option<String>,
    tier: Option<i64>,
    model: Option<String>,
    parent_id: Option<Uuid>,
    external: Option<bool>,
    url: Option<String>,
    delivery_mode: Option<String>,
    max_concurrent_tasks: Option<i32>,
    canvas: Option<Canvas>,
}

fn parse_delivery_mode(m: Option<&str>, default: &str) -> ApiResult<String> {
    match m.unwrap_or(default) {
        v @ ("push" | "poll") => Ok(v.to_string()),
        other => Err(ApiError::BadRequest(format!("delivery_mode {other:?} must be push or poll"))),
    }
}

fn parse_create(b: CreateBody) -> ApiResult<CreateRequest> {
    let name = workspace::parse_name("name", &b.name, MAX_NAME_CHARS)?;
    let role = b.role.map(|r| workspace::parse_name("role", &r, MAX_ROLE_CHARS)).transpose()?;
    let runtime = workspace::parse_runtime(b.runtime.as_deref().unwrap_or("langgraph"))?;
    let tier = workspace::parse_tier(b.tier.unwrap_or(3))?;
    let model = match b.model {
        Some(m) => workspace::parse_name("model", &m, 100)?,
        None => workspace::default_model(&runtime).to_string(),
    };
    let external = b.external.unwrap_or(false) || runtime == workspace::EXTERNAL_RUNTIME;
    if b.url.is_some() && !external {
        return Err(ApiError::BadRequest("url is only accepted for external workspaces".into()));
    }
    let url = b.url.map(|u| crate::routes::registry::safe_agent_url(&u)).transpose()?;
    let delivery_mode = parse_delivery_mode(b.delivery_mode.as_deref(), if external { "poll" } else { "push" })?;
    let max_concurrent_tasks = b.max_concurrent_tasks.unwrap_or(1);
    if !(1..=1000).contains(&max_concurrent_tasks) {
        return Err(ApiError::BadRequest("max_concurrent_tasks must be between 1 and 1000".into()));
    }
    if let Some(c) = &b.canvas
        && (!c.x.is_finite() || !c.y.is_finite())
    {
        return Err(ApiError::BadRequest("canvas.x and canvas.y must be finite numbers".into()));
    }
    Ok(CreateRequest {
        name,
        role,
        runtime,
        tier,
        model,
        parent_id: b.parent_id,
        external,
        url,
        delivery_mode,
        max_concurrent_tasks,
        canvas: b.canvas.map(|c| (c.x, c.y)),
    })
}

fn connection(state: &AppState, ws: &Workspace, token: &str) -> Value {
    let base = &state.config.platform_url;
    json!({
        "workspace_id": ws.id,
        "platform_url": base,
        "auth_token": token,
        "registry_endpoint": format!("{base}/registry/register"),
        "heartbeat_endpoint": format!("{base}/registry/heartbeat"),
        "curl_register_template": format!(
            "curl -X POST {base}/registry/register -H 'Authorization: Bearer <token>' -H 'Content-Type: application/json' -d '{{\"id\":\"{}\",\"url\":\"<your agent url>\"}}'",
            ws.id
        ),
        "python_snippet": format!(
            "import requests\nrequests.post(\"{base}/registry/register\", headers={{\"Authorization\": \"Bearer <token>\"}}, json={{\"id\": \"{}\", \"url\": \"<your agent url>\"}})",
            ws.id
        ),
    })
}

fn op_accepted(op: &Op) -> Response {
    (StatusCode::ACCEPTED, Json(json!({"status": "provisioning", "id": op.workspace_id, "op_id": op.id, "op": op})))
        .into_response()
}

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WaitQuery>,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<Response> {
    let caller = auth::admin(&state, &headers).await?;
    let wait = q.duration()?;
    let req = parse_create(body)?;
    match lifecycle::create(&state.pool, req, &caller.label(), state.config.policies()).await? {
        Created::External { workspace, token } => {
            let mut body = json!({"id": workspace.id, "external": true, "status": workspace.status});
            if let Some(t) = token {
                body["connection"] = connection(&state, &workspace, &t);
            }
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Created::Provisioning { workspace, op } => match wait {
            None => {
                Ok((StatusCode::CREATED, Json(json!({"id": workspace.id, "status": "provisioning", "op_id": op.id})))
                    .into_response())
            }
            Some(d) => match wait::until_settled(&state, workspace.id, op.id, d).await? {
                Waited::Settled(ws) => Ok((StatusCode::CREATED, Json(with_op(ws, op.id))).into_response()),
                Waited::TimedOut(op) => Ok(op_accepted(&op)),
            },
        },
    }
}

fn with_op(ws: Workspace, op_id: Uuid) -> Value {
    let mut v = json!(ws);
    v["op_id"] = json!(op_id);
    v
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    parent_id: Option<Uuid>,
}

pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<Workspace>>> {
    auth::admin(&state, &headers).await?;
    let status = q
        .status
        .map(|s| {
            Status::parse(&s).ok_or_else(|| ApiError::BadRequest(format!("status {s:?} is not a workspace status")))
        })
        .transpose()?;
    Ok(Json(workspaces::list(&state.pool, status, q.parent_id).await?))
}

async fn load(state: &AppState, headers: &HeaderMap, raw: &str) -> ApiResult<(Uuid, Caller)> {
    let id = parse_id("workspace id", raw)?;
    let caller = auth::admin_or_workspace(state, headers, id).await?;
    Ok((id, caller))
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Workspace>> {
    let (id, _) = load(&state, &headers, &id).await?;
    let ws = workspaces::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("workspace {id} not found")))?;
    Ok(Json(ws))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    role: Option<Option<String>>,
    tier: Option<i64>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    parent_id: Option<Option<Uuid>>,
    collapsed: Option<bool>,
}

pub async fn patch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<PatchBody>,
) -> ApiResult<Json<Workspace>> {
    let id = parse_id("workspace id", &id)?;
    auth::admin(&state, &headers).await?;
    let p = Patch {
        name: b.name.map(|n| workspace::parse_name("name", &n, MAX_NAME_CHARS)).transpose()?,
        role: b.role.map(|r| r.map(|r| workspace::parse_name("role", &r, MAX_ROLE_CHARS)).transpose()).transpose()?,
        tier: b.tier.map(workspace::parse_tier).transpose()?,
        parent_id: b.parent_id,
        collapsed: b.collapsed,
    };
    Ok(Json(lifecycle::patch(&state.pool, id, p).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    confirm: Option<bool>,
}

pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<Value>> {
    let id = parse_id("workspace id", &id)?;
    let caller = auth::admin(&state, &headers).await?;
    match lifecycle::delete(&state.pool, id, q.confirm.unwrap_or(false), &caller.label(), state.config.policies())
        .await?
    {
        Deleted::ConfirmationRequired { children } => Err(ApiError::ConflictWith {
            message: format!(
                "workspace has {} child workspace(s); repeat with ?confirm=true to delete them too",
                children.len()
            ),
            extra: json!({"status": "confirmation_required", "children_count": children.len(), "children": children}),
        }),
        Deleted::Removed { removed, op_ids } => Ok(Json(json!({
            "status": "removed",
            "cascade_deleted": removed.len().saturating_sub(1),
            "op_ids": op_ids,
        }))),
    }
}

/// Starts need a worker that reaches a backend. With no live worker at all the request
/// still queues: it runs when one comes up.
async fn require_backend(state: &AppState) -> ApiResult<()> {
    if workers::any_live_backend(&state.pool).await? == Some(false) {
        return Err(ApiError::Unavailable(jobs::backend::NO_BACKEND_MESSAGE.into()));
    }
    Ok(())
}

pub async fn restart(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let (id, caller) = load(&state, &headers, &id).await?;
    let wait = q.duration()?;
    let ws = workspaces::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("workspace {id} not found")))?;
    if !ws.external {
        require_backend(&state).await?;
    }
    match lifecycle::restart(&state.pool, id, "restart", &caller.label(), state.config.policies()).await? {
        Restarted::Noop => Ok(Json(json!({"status": "noop", "runtime": "external",
            "message": "external workspaces are run by their owner; restart the agent yourself"}))
        .into_response()),
        Restarted::Queued { op, new } => match wait {
            None => Ok(Json(json!({"status": "provisioning", "op_id": op.id, "coalesced": !new})).into_response()),
            Some(d) => match wait::until_settled(&state, id, op.id, d).await? {
                Waited::Settled(ws) => Ok(Json(with_op(ws, op.id)).into_response()),
                Waited::TimedOut(op) => Ok(op_accepted(&op)),
            },
        },
    }
}

pub async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    // Admin only (SPEC): these change a whole subtree.
    let id = parse_id("workspace id", &id)?;
    let caller = auth::admin(&state, &headers).await?;
    let p = lifecycle::pause(&state.pool, id, &caller.label(), state.config.policies()).await?;
    Ok(Json(json!({"status": "paused", "paused_count": p.paused.len(), "paused": p.paused, "op_ids": p.op_ids})))
}

pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    // Admin only (SPEC): these change a whole subtree.
    let id = parse_id("workspace id", &id)?;
    let caller = auth::admin(&state, &headers).await?;
    let wait = q.duration()?;
    require_backend(&state).await?;
    let r = lifecycle::resume(&state.pool, id, &caller.label(), state.config.policies()).await?;
    let body =
        json!({"status": "provisioning", "resumed_count": r.resumed.len(), "resumed": r.resumed, "op_ids": r.op_ids});
    let (Some(d), Some(op_id)) = (wait, r.op_ids.first().copied()) else {
        return Ok(Json(body).into_response());
    };
    match wait::until_settled(&state, id, op_id, d).await? {
        Waited::Settled(ws) => Ok(Json(with_op(ws, op_id)).into_response()),
        Waited::TimedOut(op) => Ok(op_accepted(&op)),
    }
}

pub async fn collapse(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    // Admin only (SPEC): these change a whole subtree.
    let id = parse_id("workspace id", &id)?;
    let caller = auth::admin(&state, &headers).await?;
    let c = lifecycle::collapse(&state.pool, id, &caller.label(), state.config.policies()).await?;
    Ok(Json(json!({"status": "collapsed", "removed": c.removed, "op_ids": c.op_ids})))
}
