use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jobs::domain::workspace::{self, EXTERNAL_RUNTIME, ListCursor, MAX_NAME_CHARS, MAX_ROLE_CHARS};
use jobs::domain::{AgentUrl, CreateRequest, DeliveryMode, Patch, Status, Workspace};
use jobs::lifecycle::ChildRef;
use jobs::lifecycle::{self, Deleted, RestartOptions, Restarted};
use jobs::store::{worker_processes, workspaces};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Admin, AdminOrWorkspace};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Limit, OptionalJson, PathId, WorkspaceId};
use crate::routes::external::{self, Connection};
use crate::state::AppState;
use crate::wait::{self, Settled, TimedOut, WaitQuery};

/// The response header of `GET /workspaces` that holds the next page's cursor.
pub const NEXT_CURSOR: HeaderName = HeaderName::from_static("x-next-cursor");

/// Where the canvas draws the workspace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Canvas {
    x: f64,
    y: f64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "research", "role": "finds sources", "tier": 2}))]
pub struct CreateBody {
    /// 1 to 255 characters, no control characters.
    #[schema(min_length = 1, max_length = 255)]
    pub(crate) name: String,
    pub(crate) role: Option<String>,
    /// `langgraph` when absent; `external` for an agent its owner runs.
    pub(crate) runtime: Option<String>,
    /// 1 to 4; 3 when absent.
    #[schema(minimum = 1, maximum = 4)]
    pub(crate) tier: Option<i64>,
    pub(crate) model: Option<String>,
    pub(crate) parent_id: Option<Uuid>,
    pub(crate) external: Option<bool>,
    /// The agent's URL, for external workspaces only.
    pub(crate) url: Option<String>,
    /// `push` or `poll`; `poll` for external workspaces when absent, else `push`.
    pub(crate) delivery_mode: Option<String>,
    /// 1 to 1000; 1 when absent.
    #[schema(minimum = 1, maximum = 1000)]
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

/// An external workspace: it has no instance, and its agent connects with the token shown
/// here, once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatedExternal {
    id: Uuid,
    external: bool,
    status: Status,
    connection: Connection,
}

/// A workspace whose start is queued.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatedQueued {
    id: Uuid,
    /// `provisioning`.
    status: &'static str,
    op_id: Uuid,
}

/// What `POST /workspaces` answers with 201: an external workspace, a queued start, or
/// (with `?wait`) the workspace as it settled.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Created {
    External(CreatedExternal),
    Queued(CreatedQueued),
    Settled(Settled),
}

#[utoipa::path(post, path = "/workspaces", tag = "workspaces",
    params(WaitQuery),
    request_body = CreateBody,
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "Created", body = Created),
        (status = 202, description = "Created, but `?wait` ran out before it settled", body = TimedOut),
        (status = 400, description = "A field is invalid, unknown or missing, or `wait` is out of range", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "`parent_id` names no live workspace", body = ErrorBody),
        (status = 409, description = "The parent is paused, or another workspace under it has the name", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    admin: Admin,
    ApiJson(body): ApiJson<CreateBody>,
) -> ApiResult<Response> {
    let wait = q.duration()?;
    let req = CreateRequest::try_from(body)?;
    req.url.as_ref().map(|u| u.check(&state.config.api.agent_urls)).transpose()?;
    match state.creates.create(req, &admin.label()).await? {
        lifecycle::Created::External { workspace, token } => {
            let body = Created::External(CreatedExternal {
                id: workspace.id,
                external: true,
                status: workspace.status,
                connection: external::payload(&state, workspace.id, &token),
            });
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        lifecycle::Created::Provisioning { workspace, op } => match wait {
            None => {
                let body = Created::Queued(CreatedQueued { id: workspace.id, status: "provisioning", op_id: op.id });
                Ok((StatusCode::CREATED, Json(body)).into_response())
            }
            Some(d) => wait::answer(&state, workspace.id, op.id, d, StatusCode::CREATED, Created::Settled).await,
        },
    }
}

/// The largest page `GET /workspaces` serves.
const MAX_LIST_LIMIT: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only workspaces with this status.
    status: Option<String>,
    /// Only the children of this workspace.
    parent_id: Option<Uuid>,
    /// 1 to 500; 100 when absent.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The previous page's `x-next-cursor`.
    cursor: Option<String>,
}

/// The body stays a bare array, as it always was; the next page's cursor, when there may
/// be one, comes in a header.
/// A listing's `status` filter, as the REST route and the dashboard take it.
pub(crate) fn status_filter(s: &str) -> ApiResult<Status> {
    Status::parse(s).ok_or_else(|| {
        let allowed: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::BadRequest(format!("status {s:?} is not a workspace status; allowed: {}", allowed.join(", ")))
    })
}

#[utoipa::path(get, path = "/workspaces", tag = "workspaces",
    params(ListQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of workspaces, oldest first", body = Vec<Workspace>,
            headers(("x-next-cursor" = String, description = "The next page's cursor, when there may be one"))),
        (status = 400, description = "A bad status, limit or cursor, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>, _: Admin) -> ApiResult<Response> {
    let status = q.status.as_deref().map(status_filter).transpose()?;
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

#[utoipa::path(get, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The workspace")),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The workspace", body = Workspace),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
    ))]
pub async fn get(State(state): State<AppState>, ws: AdminOrWorkspace) -> ApiResult<Json<Workspace>> {
    let found = workspaces::get(&state.pool, ws.id).await?.ok_or_else(|| jobs::Error::workspace_not_found(ws.id))?;
    Ok(Json(found))
}

/// Absent fields are left alone; `role` and `parent_id` may be set to null to clear them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "research team", "role": null}))]
pub struct PatchBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<String>)]
    role: Option<Option<String>>,
    tier: Option<i64>,
    #[serde(default, deserialize_with = "crate::extract::double_option")]
    #[schema(value_type = Option<Uuid>)]
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

#[utoipa::path(patch, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The workspace")),
    request_body = PatchBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The workspace as changed", body = Workspace),
        (status = 400, description = "A field is invalid or unknown, or the id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such workspace, or no such new parent", body = ErrorBody),
        (status = 409, description = "The move would make a cycle, or the workspace is removed", body = ErrorBody),
    ))]
pub async fn patch(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    _: Admin,
    ApiJson(b): ApiJson<PatchBody>,
) -> ApiResult<Json<Workspace>> {
    Ok(Json(lifecycle::patch(&state.pool, id, Patch::try_from(b)?).await?))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete the workspace's children too.
    confirm: Option<bool>,
    /// Delete the rows of a removed workspace (and its removed subtree) for good.
    purge: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Purged {
    /// `purged`.
    status: &'static str,
    cascade_deleted: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    /// `removed`.
    status: &'static str,
    cascade_deleted: usize,
    /// The stop ops queued.
    op_ids: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum DeleteAnswer {
    Removed(Removed),
    Purged(Purged),
}

/// What the 409 of a delete that would take children with it adds beside `error`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConfirmationRequired {
    /// `confirmation_required`.
    status: &'static str,
    children_count: usize,
    children: Vec<ChildRef>,
}

#[utoipa::path(delete, path = "/workspaces/{id}", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The workspace"), DeleteQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Removed (its instances are stopped by queued ops), or purged", body = DeleteAnswer),
        (status = 400, description = "The id is not a UUID, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "It has children and `confirm` was not given (the body adds `status`, \
            `children_count` and `children`, see `ConfirmationRequired`), or a purge of a workspace not removed", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    admin: Admin,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Json<DeleteAnswer>> {
    if q.purge == Some(true) {
        // The rows are what stop and the orphan sweep find instances by, so a purge comes
        // after the delete's stops, as a second call.
        let purged = lifecycle::purge(&state.pool, id).await?;
        return Ok(Json(DeleteAnswer::Purged(Purged { status: "purged", cascade_deleted: purged.saturating_sub(1) })));
    }
    match lifecycle::delete(&state.pool, id, q.confirm.unwrap_or(false), &admin.label()).await? {
        Deleted::ConfirmationRequired { children } => Err(ApiError::ConflictWith {
            message: format!(
                "workspace has {} child workspace(s); repeat with ?confirm=true to delete them too",
                children.len()
            ),
            extra: json!(ConfirmationRequired {
                status: "confirmation_required",
                children_count: children.len(),
                children,
            }),
        }),
        Deleted::Removed { removed, op_ids } => Ok(Json(DeleteAnswer::Removed(Removed {
            status: "removed",
            cascade_deleted: removed.len().saturating_sub(1),
            op_ids,
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

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RestartQuery {
    /// Seconds (0 to 300) to hold the answer until the workspace settles.
    #[param(minimum = 0, maximum = 300)]
    wait: Option<f64>,
    /// Start the agent with a fresh session.
    reset: Option<bool>,
    /// Move to the image configured now instead of the pinned one.
    upgrade: Option<bool>,
}

/// The same two asks as the query's; either place turns one on. The body may be left out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartBody {
    reset: Option<bool>,
    upgrade: Option<bool>,
}

/// An external workspace's restart: nothing for the platform to do.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartNoop {
    /// `noop`.
    status: &'static str,
    /// `external`.
    runtime: &'static str,
    message: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartQueued {
    /// `provisioning`.
    status: &'static str,
    op_id: Uuid,
    /// True when a restart already queued took this one in.
    coalesced: bool,
    reset_session: bool,
    upgrade_image: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RestartAnswer {
    Noop(RestartNoop),
    Queued(RestartQueued),
    Settled(Box<Settled>),
}

#[utoipa::path(post, path = "/workspaces/{id}/restart", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The workspace"), RestartQuery),
    request_body(content = Option<RestartBody>, description = "Optional; the same asks as the query's"),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "Queued (or nothing to do for an external workspace), or settled within `?wait`", body = RestartAnswer),
        (status = 202, description = "`?wait` ran out before it settled", body = TimedOut),
        (status = 400, description = "A bad id, body or query", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "The workspace is removed or paused", body = ErrorBody),
    ))]
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
        Restarted::Noop => Ok(Json(RestartAnswer::Noop(RestartNoop {
            status: "noop",
            runtime: "external",
            message: "external workspaces are run by their owner; restart the agent yourself",
        }))
        .into_response()),
        Restarted::Queued { op, new } => match wait {
            None => Ok(Json(RestartAnswer::Queued(RestartQueued {
                status: "provisioning",
                op_id: op.id,
                coalesced: !new,
                reset_session: op.reset_session,
                upgrade_image: op.upgrade_image,
            }))
            .into_response()),
            Some(d) => {
                wait::answer(&state, id, op.id, d, StatusCode::OK, |s| RestartAnswer::Settled(Box::new(s))).await
            }
        },
    }
}

// Pause, resume and collapse change a whole subtree: admin only.

#[derive(Debug, Serialize, ToSchema)]
pub struct PausedAnswer {
    /// `paused`.
    status: &'static str,
    paused_count: usize,
    /// The workspaces paused: this one and its subtree.
    paused: Vec<Uuid>,
    /// The stop ops queued.
    op_ids: Vec<Uuid>,
}

#[utoipa::path(post, path = "/workspaces/{id}/pause", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The workspace")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Paused, with its subtree", body = PausedAnswer),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "Already paused, or removed", body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    admin: Admin,
) -> ApiResult<Json<PausedAnswer>> {
    let p = lifecycle::pause(&state.pool, id, &admin.label()).await?;
    Ok(Json(PausedAnswer { status: "paused", paused_count: p.paused.len(), paused: p.paused, op_ids: p.op_ids }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumedAnswer {
    /// `provisioning`.
    status: &'static str,
    resumed_count: usize,
    resumed: Vec<Uuid>,
    /// The start ops queued.
    op_ids: Vec<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ResumeAnswer {
    Resumed(ResumedAnswer),
    Settled(Box<Settled>),
}

#[utoipa::path(post, path = "/workspaces/{id}/resume", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The workspace"), WaitQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Resumed with its subtree, or settled within `?wait`", body = ResumeAnswer),
        (status = 202, description = "`?wait` ran out before it settled", body = TimedOut),
        (status = 400, description = "A bad id or `wait`", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "Not paused, or a paused ancestor", body = ErrorBody),
    ))]
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
        (Some(d), Some(op_id)) => {
            wait::answer(&state, id, op_id, d, StatusCode::OK, |s| ResumeAnswer::Settled(Box::new(s))).await
        }
        _ => Ok(Json(ResumeAnswer::Resumed(ResumedAnswer {
            status: "provisioning",
            resumed_count: r.resumed.len(),
            resumed: r.resumed,
            op_ids: r.op_ids,
        }))
        .into_response()),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Collapsed {
    /// `collapsed`.
    status: &'static str,
    /// The children removed, by name.
    removed: Vec<String>,
    /// The stop ops queued.
    op_ids: Vec<Uuid>,
}

#[utoipa::path(post, path = "/workspaces/{id}/collapse", tag = "workspaces",
    params(("id" = Uuid, Path, description = "The workspace")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Its direct children (and their subtrees) are removed", body = Collapsed),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "The workspace is removed", body = ErrorBody),
    ))]
pub async fn collapse(
    State(state): State<AppState>,
    PathId(id, _): WorkspaceId,
    admin: Admin,
) -> ApiResult<Json<Collapsed>> {
    let c = lifecycle::collapse(&state.pool, id, &admin.label()).await?;
    Ok(Json(Collapsed { status: "collapsed", removed: c.removed, op_ids: c.op_ids }))
}
