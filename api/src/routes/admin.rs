//! `/admin/jobs`, `/admin/queues`, `/admin/workers`: operators' view of the queue and their
//! retry, cancel and pause. Admin token or org token only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use jobs::admin::jobs::{self as admin_jobs, Cursor, Filter, Job};
use jobs::admin::{JobKind, JobRef, JobState, control, queues, workers};
use jobs::store::workspaces;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, Limit};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    kind: Option<String>,
    state: Option<String>,
    workspace_id: Option<String>,
    limit: Option<i64>,
    before: Option<String>,
}

fn bad_filter(e: jobs::Error, allowed: Vec<String>) -> ApiError {
    ApiError::BadRequestWith { message: e.to_string(), extra: json!({"allowed": allowed}) }
}

/// `GET /admin/jobs`: newest first; `next_before` pages on.
pub async fn list(State(state): State<AppState>, _: Admin, ApiQuery(q): ApiQuery<JobsQuery>) -> ApiResult<Json<Value>> {
    let kind = match q.kind.as_deref().filter(|k| !k.is_empty()) {
        Some(k) => Some(JobKind::parse(k).map_err(|e| bad_filter(e, JobKind::allowed()))?),
        None => None,
    };
    let job_state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => {
            Some(JobState::parse(s).map_err(|e| bad_filter(e, JobState::ALL.iter().map(|s| s.to_string()).collect()))?)
        }
        None => None,
    };
    let workspace_id = match q.workspace_id.as_deref().filter(|w| !w.is_empty()) {
        Some(w) => Some(
            Uuid::parse_str(w).map_err(|_| ApiError::BadRequest(format!("workspace_id {w:?} is not a valid UUID")))?,
        ),
        None => None,
    };
    let before = q.before.as_deref().filter(|b| !b.is_empty()).map(Cursor::decode).transpose()?;
    let Limit(limit) = Limit::parse(q.limit)?;
    let filter = Filter { kind, state: job_state, workspace_id, before };
    let (jobs, next) = admin_jobs::list(&state.pool, &filter, limit).await?;
    Ok(Json(json!({"jobs": jobs, "count": jobs.len(), "next_before": next.map(|c| c.encode())})))
}

fn job_ref(raw: &str) -> ApiResult<JobRef> {
    Ok(JobRef::parse(raw)?)
}

async fn find(state: &AppState, r: &JobRef) -> ApiResult<Job> {
    admin_jobs::get(&state.pool, r).await?.ok_or_else(|| ApiError::NotFound(format!("job {r} not found")))
}

/// `GET /admin/jobs/:id`: the job, each attempt, its workspace and its apalis task.
pub async fn get(State(state): State<AppState>, _: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let r = job_ref(&id)?;
    let job = find(&state, &r).await?;
    let attempts = admin_jobs::attempts(&state.pool, &job, &r).await?;
    let workspace = match job.workspace_id {
        Some(ws) => {
            workspaces::get(&state.pool, ws).await?.map(|w| json!({"id": w.id, "name": w.name, "status": w.status}))
        }
        None => None,
    };
    let task = match admin_jobs::task_id_of(&state.pool, &r).await? {
        Some(t) => admin_jobs::task(&state.pool, &t).await?,
        None => None,
    };
    Ok(Json(json!({"job": job, "attempts": attempts, "workspace": workspace, "task": task})))
}

/// `POST /admin/jobs/:id/retry`: 201 with the new job, 200 with the pending one.
pub async fn retry(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let r = job_ref(&id)?;
    find(&state, &r).await?;
    let retried = control::retry(&state.pool, &r, &admin.label()).await?;
    let job = find(&state, &JobRef::parse(&retried.job_id)?).await?;
    let status = if retried.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({"job": job, "retry_of": retried.retry_of, "created": retried.created}))))
}

/// `POST /admin/jobs/:id/cancel`: 200 with the canceled job (also when it already was).
pub async fn cancel(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let r = job_ref(&id)?;
    find(&state, &r).await?;
    let canceled = control::cancel(&state.pool, &r, &admin.label()).await?;
    let job = find(&state, &r).await?;
    Ok(Json(json!({"job": job, "was": canceled.was})))
}

/// `GET /admin/queues`.
pub async fn queues(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"queues": queues::stats(&state.pool).await?})))
}

fn pausable(kind: &str) -> ApiResult<&'static str> {
    queues::pausable(kind).map(|k| k.as_str()).ok_or_else(|| ApiError::BadRequestWith {
        message: format!("kind {kind:?} cannot be paused; only lifecycle op kinds can"),
        extra: json!({"allowed": queues::PAUSABLE.iter().map(|k| k.as_str()).collect::<Vec<_>>()}),
    })
}

async fn set_paused(state: &AppState, admin: &Admin, kind: &str, paused: bool) -> ApiResult<Json<Value>> {
    let kind = pausable(kind)?;
    let changed = control::set_paused(&state.pool, kind, paused, &admin.label()).await?;
    let queue = queues::stats(&state.pool).await?.into_iter().find(|q| q.kind == kind);
    Ok(Json(json!({"kind": kind, "paused": paused, "changed": changed, "queue": queue})))
}

/// `POST /admin/queues/:kind/pause`: idempotent (`changed` says whether it was running).
pub async fn pause(State(state): State<AppState>, admin: Admin, Path(kind): Path<String>) -> ApiResult<Json<Value>> {
    set_paused(&state, &admin, &kind, true).await
}

/// `POST /admin/queues/:kind/resume`.
pub async fn resume(State(state): State<AppState>, admin: Admin, Path(kind): Path<String>) -> ApiResult<Json<Value>> {
    set_paused(&state, &admin, &kind, false).await
}

/// `GET /admin/workers`.
pub async fn workers(State(state): State<AppState>, _: Admin) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"workers": workers::list(&state.pool).await?})))
}
