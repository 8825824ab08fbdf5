use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jobs::domain::workspace::{self, EXTERNAL_RUNTIME, ListCursor, MAX_NAME_CHARS, MAX_ROLE_CHARS};
use jobs::domain::{AgentUrl, CreateRequest, DeliveryMode, Patch, Status, Workspace};
use jobs::lifecycle::{self, Created, Deleted, RestartOptions, Restarted};
use jobs::store::{worker_processes, workspaces};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{Admin, AdminOrWorkspace};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, Limit, OptionalJson, PathId, WorkspaceId};
use crate::routes::external;
use crate::state::AppState;
use crate::wait::{self, WaitQuery};

/// The response header of `GET /workspaces` that holds the next page's cursor.
pub const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canvas {
    x: f64,
    y: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    pub(crate) name: String,
    pub(crate) role: Option<String>,
    pub(crate) runtime: Option<String>,
    pub(crate) tier: Option<i64>,
    pub(crate) model: Option<String>,
    pub(crate) parent_id: Option<Uuid>,
    pub(crate) external: Option<bool>,
    pub(crate) url: Option<String>,
    pub(crate) delivery_mode: Option<String>,
    pub(crate) max_concurrent_tasks: Option<i32>,
    pub(crate) canvas: Option<Canvas>,
}

impl TryFrom<CreateBody> for CreateRequest {
    type Error = jobs::Error;

    fn try_from(b: CreateBody) -> jobs::Result<CreateRequest> {
        let invalid = |field, problem: &str| jobs::Error::Invalid { field, problem: problem.into() };
        let name = workspace::parse_name("name", &b.name, MAX_NAME_CHARS)?;
        let role = b.role.map(|r| workspace::parse_name("role", &r, MAX_ROLE_CHARS)).transpose()?;
        let runtime = workspace::parse_runtime(b.runtime.as_deref().unwrap_or("langgraph"))?;
        let tier = workspace::parse_tier(b.tier.unwrap_or(3))?;
        let model = match b.model {
            Some(m) => workspace::parse_name("model", &m, 100)?,
            None => workspace::default_model(&runtime).to_string(),
        };
        let external = b.external.unwrap_or(false) || runtime == EXTERNAL_RUNTIME;
        if b.url.is_some() && !external {
            return Err(invalid("url", "is only accepted for external workspaces"));
        }
        let url = b.url.as_deref().map(AgentUrl::parse).transpose()?;
        let delivery_mode = match b.delivery_mode {
            Some(m) => DeliveryMode::parse(&m)?,
            None if external => DeliveryMode::Poll,
            None => DeliveryMode::Push,
        };
        let max_concurrent_tasks = b.max_concurrent_tasks.unwrap_or(1);
        if !(1..=1000).contains(&max_concurrent_tasks) {
            return Err(invalid("max_concurrent_tasks", "must be between 1 and 1000"));
        }
        if let Some(c) = &b.canvas
            && (!c.x.is_finite() || !c.y.is_finite())
        {
            return Err(invalid("canvas", "x and y must be finite numbers"));
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
}

pub async fn create(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    admin: Admin,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<Response> {
    let wait = q.duration()?;
    let req = CreateRequest::try_from(body)?;
    req.url.as_ref().map(|u| u.check(&state.config.api.agent_urls)).transpose()?;
    match lifecycle::create(&state.pool, req, &admin.label()).await? {
        Created::External { workspace, token } => {
            let body = json!({"id": workspace.id, "external": true, "status": workspace.status,
                "connection": external::payload(&state, workspace.id, &token)});
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Created::Provisioning { workspace, op } => match wait {
            None => {
                Ok((StatusCode::CREATED, Json(json!({"id": workspace.id, "status": "provisioning", "op_id": op.id})))
                    .into_response())
            }
            Some(d) => wait::answer(&state, workspace.id, op.id, d, StatusCode::CREATED).await,
        },
    }
}

/// The largest page `GET /workspaces` serves.
const MAX_LIST_LIMIT: i64 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    parent_id: Option<Uuid>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// The body stays a bare array, as it always was; the next page's cursor, when there may
/// be one, comes in a header.
pub async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>, _: Admin) -> ApiResult<Response> {
    let status = q
        .status
        .map(|s| {
            Status::parse(&s).ok_or_else(|| ApiError::BadRequest(format!("status {s:?} is not a workspace status")))
        })
        .transpose()?;
    let Limit(limit) = Limit::parse_up_to(q.limit, MAX_LIST_LIMIT)?;
    let after = q.cursor.as_deref().map(ListCursor::decode).transpose()?;
    // One row more than asked says whether another page exists.
    let mut rows = workspaces::list_page(&state.pool, status, q.parent_id, after.as_ref(), limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = rows.last().filter(|_| more).map(|ws| ListCursor::after(ws).encode());
    let mut response = Json(rows).into_response();
    if let Some(cursor) = next.and_then(|c| HeaderValue::try_from(c).ok()) {
        response.headers_mut().insert(NEXT_CURSOR, cursor);
    }
    Ok(response)
}

pub async fn get(State(state): State<AppState>, ws: AdminOrWorkspace) -> ApiResult<Json<Workspace>> {
    let found = workspaces::get(&state.pool, ws.id).await?.ok_or_else(|| jobs::Error::workspace_not_found(ws.id))?;
    Ok(Json(found))
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

impl TryFrom<PatchBody> for Patch {
    type Error = jobs::Error;

    fn try_from(b: PatchBody) -> jobs::Result<Patch> {
        Ok(Patch {
            name: b.name.map(|n| workspace::parse_name("name", &n, MAX_NAME_CHARS)).transpose()?,
            role: b
                .role
                .map(|r| r.map(|r| workspace::parse_name("role", &r, MAX_ROLE_CHARS)).transpose())
                .transpose()?,
            tier: b.tier.map(workspace::parse_tier).transpose()?,
            parent_id: b.parent_id,
            collapsed: b.collapsed,
        })
    }
}

pub async fn patch(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    _: Admin,
    ApiJson(b): ApiJson<PatchBody>,
) -> ApiResult<Json<Workspace>> {
    Ok(Json(lifecycle::patch(&state.pool, id, Patch::try_from(b)?).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    confirm: Option<bool>,
    purge: Option<bool>,
}

pub async fn delete(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    admin: Admin,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<Value>> {
    if q.purge == Some(true) {
        // The rows are what stop and the orphan sweep find instances by, so a purge comes
        // after the delete's stops, as a second call.
        let purged = lifecycle::purge(&state.pool, id).await?;
        return Ok(Json(json!({"status": "purged", "cascade_deleted": purged.saturating_sub(1)})));
    }
    match lifecycle::delete(&state.pool, id, q.confirm.unwrap_or(false), &admin.label()).await? {
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
    // Only a cached "yes" is trusted: a refusal is always checked against the table, so a
    // worker that just came up is never refused for a second.
    if state.fleet.snapshot().await?.any_live_backend() == Some(true) {
        return Ok(());
    }
    if worker_processes::any_live_backend(&state.pool).await? == Some(false) {
        return Err(ApiError::Unavailable(jobs::backend::NO_BACKEND_MESSAGE.into()));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartQuery {
    wait: Option<f64>,
    reset: Option<bool>,
    upgrade: Option<bool>,
}

/// The same two asks as the query's; either place turns one on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartBody {
    reset: Option<bool>,
    upgrade: Option<bool>,
}

pub async fn restart(
    State(state): State<AppState>,
    ws: AdminOrWorkspace,
    ApiQuery(q): ApiQuery<RestartQuery>,
    OptionalJson(b): OptionalJson<RestartBody>,
) -> ApiResult<Response> {
    let id = ws.id;
    let wait = WaitQuery { wait: q.wait }.duration()?;
    let options = RestartOptions {
        reset_session: q.reset.unwrap_or(false) || b.reset.unwrap_or(false),
        upgrade_image: q.upgrade.unwrap_or(false) || b.upgrade.unwrap_or(false),
    };
    let found = workspaces::get(&state.pool, id).await?.ok_or_else(|| jobs::Error::workspace_not_found(id))?;
    if !found.external {
        require_backend(&state).await?;
    }
    match lifecycle::restart(&state.pool, id, "restart", &ws.caller.label(), options).await? {
        Restarted::Noop => Ok(Json(json!({"status": "noop", "runtime": "external",
            "message": "external workspaces are run by their owner; restart the agent yourself"}))
        .into_response()),
        Restarted::Queued { op, new } => match wait {
            None => Ok(Json(json!({"status": "provisioning", "op_id": op.id, "coalesced": !new,
                "reset_session": op.reset_session, "upgrade_image": op.upgrade_image}))
            .into_response()),
            Some(d) => wait::answer(&state, id, op.id, d, StatusCode::OK).await,
        },
    }
}

// Pause, resume and collapse change a whole subtree: admin only.

pub async fn pause(State(state): State<AppState>, PathId(id, _): WorkspaceId, admin: Admin) -> ApiResult<Json<Value>> {
    let p = lifecycle::pause(&state.pool, id, &admin.label()).await?;
    Ok(Json(json!({"status": "paused", "paused_count": p.paused.len(), "paused": p.paused, "op_ids": p.op_ids})))
}

pub async fn resume(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    admin: Admin,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let wait = q.duration()?;
    require_backend(&state).await?;
    let r = lifecycle::resume(&state.pool, id, &admin.label()).await?;
    match (wait, r.root_op) {
        (Some(d), Some(op_id)) => wait::answer(&state, id, op_id, d, StatusCode::OK).await,
        _ => Ok(Json(json!({"status": "provisioning", "resumed_count": r.resumed.len(), "resumed": r.resumed,
            "op_ids": r.op_ids}))
        .into_response()),
    }
}

pub async fn collapse(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    admin: Admin,
) -> ApiResult<Json<Value>> {
    let c = lifecycle::collapse(&state.pool, id, &admin.label()).await?;
    Ok(Json(json!({"status": "collapsed", "removed": c.removed, "op_ids": c.op_ids})))
}
