//! `/admin/jobs`, `/admin/queues`, `/admin/workers`: operators' view of the queue and their
//! retry, cancel and pause. Admin token or org token only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use jobs::admin::jobs::{self as admin_jobs, Attempt, Cursor, Filter, Job, Task};
use jobs::admin::queues::QueueStats;
use jobs::admin::workers::WorkerInfo;
use jobs::admin::{JobKind, JobRef, JobState, control, queues, workers};
use jobs::domain::Status;
use jobs::store::workspaces;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiQuery, Limit};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// A job kind (an op kind, `inbox_push`, or a sweep's); empty is no filter.
    kind: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `canceled`; empty is no filter.
    state: Option<String>,
    /// Only this workspace's jobs; empty is no filter.
    workspace_id: Option<String>,
    /// 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// The previous page's `next_before`.
    before: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    jobs: Vec<Job>,
    count: usize,
    /// Pass as `before` for the next page; null on the last.
    next_before: Option<String>,
}

pub(crate) const JOB_ID: &str = "A job id: an op's UUID, `inbox:<row id>`, or `sweep:<name>@<epoch ms>`";

fn bad_filter(e: jobs::Error, allowed: Vec<String>) -> ApiError {
    ApiError::BadRequestWith { message: e.to_string(), extra: json!({"allowed": allowed}) }
}

/// `GET /admin/jobs`: newest first; `next_before` pages on.
#[utoipa::path(get, path = "/admin/jobs", tag = "admin",
    params(JobsQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobList),
        (status = 400, description = "A bad filter (the body adds `allowed`), limit or cursor, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> ApiResult<Json<JobList>> {
    let filter = job_filter(q.kind.as_deref(), q.state.as_deref(), q.workspace_id.as_deref(), q.before.as_deref())?;
    let Limit(limit) = Limit::parse(q.limit)?;
    let (jobs, next) = admin_jobs::list(&state.pool, &filter, limit).await?;
    Ok(Json(JobList { count: jobs.len(), jobs, next_before: next.map(|c| c.encode()) }))
}

/// The filters of a job listing, as the REST route and the dashboard take them; an empty
/// one is no filter.
pub(crate) fn job_filter(
    kind: Option<&str>,
    state: Option<&str>,
    workspace_id: Option<&str>,
    before: Option<&str>,
) -> ApiResult<Filter> {
    fn given(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    let kind = given(kind).map(|k| JobKind::parse(k).map_err(|e| bad_filter(e, JobKind::allowed()))).transpose()?;
    let state = given(state)
        .map(|s| JobState::parse(s).map_err(|e| bad_filter(e, JobState::ALL.iter().map(|s| s.to_string()).collect())))
        .transpose()?;
    let workspace_id = given(workspace_id)
        .map(|w| {
            Uuid::parse_str(w).map_err(|_| ApiError::BadRequest(format!("workspace_id {w:?} is not a valid UUID")))
        })
        .transpose()?;
    let before = given(before).map(Cursor::decode).transpose()?;
    Ok(Filter { kind, state, workspace_id, before })
}

pub(crate) fn job_ref(raw: &str) -> ApiResult<JobRef> {
    Ok(JobRef::parse(raw)?)
}

pub(crate) async fn find(state: &AppState, r: &JobRef) -> ApiResult<Job> {
    admin_jobs::get(&state.pool, r).await?.ok_or_else(|| ApiError::NotFound(format!("job {r} not found")))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobWorkspace {
    id: Uuid,
    name: String,
    status: Status,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    job: Job,
    attempts: Vec<Attempt>,
    /// Null when the job has none, or it is purged.
    workspace: Option<JobWorkspace>,
    /// The apalis task that delivers it; null when there is none.
    task: Option<Task>,
}

/// `GET /admin/jobs/:id`: the job, each attempt, its workspace and its apalis task.
#[utoipa::path(get, path = "/admin/jobs/{id}", tag = "admin",
    params(("id" = String, Path, description = JOB_ID)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The job", body = JobDetail),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ))]
pub async fn get(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<JobDetail>> {
    let r = job_ref(&id)?;
    let job = find(&state, &r).await?;
    let attempts = admin_jobs::attempts(&state.pool, &job, &r).await?;
    let workspace = match job.workspace_id {
        Some(ws) => {
            workspaces::get(&state.pool, ws).await?.map(|w| JobWorkspace { id: w.id, name: w.name, status: w.status })
        }
        None => None,
    };
    let task = match admin_jobs::task_id_of(&state.pool, &r).await? {
        Some(t) => admin_jobs::task(&state.pool, &t).await?,
        None => None,
    };
    Ok(Json(JobDetail { job, attempts, workspace, task }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetryAnswer {
    job: Job,
    /// The job retried.
    retry_of: String,
    /// False when a retry of it was still pending and is returned instead.
    created: bool,
}

/// `POST /admin/jobs/:id/retry`: 201 with the new job, 200 with the pending one.
#[utoipa::path(post, path = "/admin/jobs/{id}/retry", tag = "admin",
    params(("id" = String, Path, description = JOB_ID)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A retry of it was pending already", body = RetryAnswer),
        (status = 201, description = "The new job", body = RetryAnswer),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job cannot be retried (not failed, a sweep, or its workspace is gone)", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RetryAnswer>)> {
    let r = job_ref(&id)?;
    find(&state, &r).await?;
    let retried = control::retry(&state.pool, &r, &admin.label()).await?;
    let job = find(&state, &JobRef::parse(&retried.job_id)?).await?;
    let status = if retried.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(RetryAnswer { job, retry_of: retried.retry_of, created: retried.created })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancelAnswer {
    job: Job,
    /// `queued` or `running` when this call canceled it; `canceled` when it already was.
    was: String,
}

/// `POST /admin/jobs/:id/cancel`: 200 with the canceled job (also when it already was).
#[utoipa::path(post, path = "/admin/jobs/{id}/cancel", tag = "admin",
    params(("id" = String, Path, description = JOB_ID)),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The canceled job", body = CancelAnswer),
        (status = 400, description = "Not a job id", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "Only lifecycle ops can be canceled, and not once finished", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Json<CancelAnswer>> {
    let r = job_ref(&id)?;
    find(&state, &r).await?;
    let canceled = control::cancel(&state.pool, &r, &admin.label()).await?;
    let job = find(&state, &r).await?;
    Ok(Json(CancelAnswer { job, was: canceled.was }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Queues {
    queues: Vec<QueueStats>,
}

/// `GET /admin/queues`.
#[utoipa::path(get, path = "/admin/queues", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Per-kind queue statistics", body = Queues),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn queues(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Queues>> {
    Ok(Json(Queues { queues: queues::stats(&state.pool).await? }))
}

pub(crate) fn pausable(kind: &str) -> ApiResult<&'static str> {
    queues::pausable(kind).map(|k| k.as_str()).ok_or_else(|| ApiError::BadRequestWith {
        message: format!("kind {kind:?} cannot be paused; only lifecycle op kinds can"),
        extra: json!({"allowed": queues::PAUSABLE.iter().map(|k| k.as_str()).collect::<Vec<_>>()}),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PauseAnswer {
    kind: &'static str,
    paused: bool,
    /// False when the queue already was so.
    changed: bool,
    queue: Option<QueueStats>,
}

async fn set_paused(state: &AppState, admin: &Admin, kind: &str, paused: bool) -> ApiResult<Json<PauseAnswer>> {
    let kind = pausable(kind)?;
    let changed = control::set_paused(&state.pool, kind, paused, &admin.label()).await?;
    let queue = queues::stats(&state.pool).await?.into_iter().find(|q| q.kind == kind);
    Ok(Json(PauseAnswer { kind, paused, changed, queue }))
}

/// `POST /admin/queues/:kind/pause`: idempotent (`changed` says whether it was running).
#[utoipa::path(post, path = "/admin/queues/{kind}/pause", tag = "admin",
    params(("kind" = String, Path, description = "`provision`, `stop` or `restart`")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The queue, paused", body = PauseAnswer),
        (status = 400, description = "A kind that cannot be paused (the body adds `allowed`)", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn pause(
    State(state): State<AppState>,
    admin: Admin,
    Path(kind): Path<String>,
) -> ApiResult<Json<PauseAnswer>> {
    set_paused(&state, &admin, &kind, true).await
}

/// `POST /admin/queues/:kind/resume`.
#[utoipa::path(post, path = "/admin/queues/{kind}/resume", tag = "admin",
    params(("kind" = String, Path, description = "`provision`, `stop` or `restart`")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The queue, running", body = PauseAnswer),
        (status = 400, description = "A kind that cannot be paused (the body adds `allowed`)", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn resume(
    State(state): State<AppState>,
    admin: Admin,
    Path(kind): Path<String>,
) -> ApiResult<Json<PauseAnswer>> {
    set_paused(&state, &admin, &kind, false).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Workers {
    workers: Vec<WorkerInfo>,
}

/// `GET /admin/workers`.
#[utoipa::path(get, path = "/admin/workers", tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every worker process heard from within the hour, live ones first", body = Workers),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn workers(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Workers>> {
    Ok(Json(Workers { workers: workers::list(&state.pool).await? }))
}
