//! The delegations ledger: delegate, record, update, heartbeat, list, and the admin views.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobs::delegations::{self, DelegateRequest, Delegated};
use jobs::domain::DelegationStatus;
use jobs::store::delegations as ledger;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::{Admin, AdminOrWorkspace};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, Limit};
use crate::state::AppState;

const TASK_MAX: usize = 64 * 1024;
const KEY_MAX: usize = 255;
const MAX_DEADLINE_SECS: f64 = 7.0 * 24.0 * 3600.0;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegateBody {
    target_id: Uuid,
    task: String,
    idempotency_key: Option<String>,
    /// Seconds until the delegations sweep fails it (default 6 hours, at most 7 days).
    deadline_seconds: Option<f64>,
}

fn check_task(task: &str) -> ApiResult<()> {
    if task.trim().is_empty() {
        return Err(ApiError::BadRequest("task must not be empty".into()));
    }
    if task.len() > TASK_MAX {
        return Err(ApiError::BadRequest(format!("task is longer than {TASK_MAX} bytes")));
    }
    Ok(())
}

fn check_id(field: &str, v: &str) -> ApiResult<()> {
    if v.trim().is_empty() || v.len() > KEY_MAX {
        return Err(ApiError::BadRequest(format!("{field} must be 1 to {KEY_MAX} bytes")));
    }
    Ok(())
}

/// `POST /workspaces/:id/delegate`: 202 with a new delegation, or 200 with the one the
/// caller's idempotency key already names.
pub async fn delegate(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiJson(b): ApiJson<DelegateBody>,
) -> ApiResult<Response> {
    check_task(&b.task)?;
    if let Some(k) = &b.idempotency_key {
        check_id("idempotency_key", k)?;
    }
    let deadline_in = match b.deadline_seconds {
        None => delegations::DEFAULT_DEADLINE,
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_DEADLINE_SECS => Duration::from_secs_f64(s),
        Some(_) => return Err(ApiError::BadRequest("deadline_seconds must be positive and at most 7 days".into())),
    };
    let r = DelegateRequest {
        caller_id: who.id,
        target_id: b.target_id,
        task: b.task,
        idempotency_key: b.idempotency_key,
        deadline_in,
    };
    Ok(match delegations::delegate(&state.pool, r).await? {
        Delegated::New(d) => (
            StatusCode::ACCEPTED,
            Json(json!({"delegation_id": d.delegation_id, "status": "delegated", "target_id": d.callee_id})),
        )
            .into_response(),
        Delegated::Hit(d) => (
            StatusCode::OK,
            Json(json!({"delegation_id": d.delegation_id, "status": d.status, "target_id": d.callee_id, "idempotent_hit": true})),
        )
            .into_response(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    target_id: Uuid,
    task: String,
    delegation_id: String,
}

/// `POST /workspaces/:id/delegations/record`: a delegation the agent sent itself.
pub async fn record(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiJson(b): ApiJson<RecordBody>,
) -> ApiResult<Response> {
    check_task(&b.task)?;
    check_id("delegation_id", &b.delegation_id)?;
    let d = delegations::record(&state.pool, who.id, b.target_id, &b.task, &b.delegation_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "recorded", "delegation_id": d.delegation_id}))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    status: String,
    response_preview: Option<String>,
    error: Option<String>,
}

/// `POST /workspaces/:id/delegations/:delegation_id/update`, by either party.
pub async fn update(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    Path((_, delegation_id)): Path<(String, String)>,
    ApiJson(b): ApiJson<UpdateBody>,
) -> ApiResult<Json<Value>> {
    let to = DelegationStatus::parse_reported(&b.status)?;
    let (d, changed) =
        delegations::update(&state.pool, who.id, &delegation_id, to, b.response_preview.as_deref(), b.error.as_deref())
            .await?;
    Ok(Json(json!({"delegation": d, "changed": changed})))
}

/// `POST /workspaces/:id/delegations/:delegation_id/heartbeat`.
pub async fn heartbeat(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    Path((_, delegation_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let d = delegations::heartbeat(&state.pool, who.id, &delegation_id).await?;
    Ok(Json(json!({"delegation": d})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<i64>,
}

/// `GET /workspaces/:id/delegations`: as caller or callee, newest first.
pub async fn list(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<ledger::Delegation>>> {
    let limit = Limit::parse(q.limit)?;
    Ok(Json(ledger::of_workspace(&state.pool, who.id, limit.0).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminQuery {
    status: Option<String>,
    limit: Option<i64>,
}

const ADMIN_FILTERS: [&str; 4] = ["in_flight", "stuck", "failed", "completed"];

/// `GET /admin/delegations?status=in_flight|stuck|failed|completed&limit=1..1000`.
pub async fn admin_list(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(q): ApiQuery<AdminQuery>,
) -> ApiResult<Json<Value>> {
    let filter = q.status.unwrap_or_else(|| "in_flight".into());
    let statuses: &[DelegationStatus] = match filter.as_str() {
        "in_flight" => &DelegationStatus::IN_FLIGHT,
        "stuck" => &[DelegationStatus::Stuck],
        "failed" => &[DelegationStatus::Failed],
        "completed" => &[DelegationStatus::Completed],
        _ => {
            return Err(ApiError::BadRequestWith {
                message: format!("unknown status {filter:?}"),
                extra: json!({"allowed": ADMIN_FILTERS, "requested_status": filter}),
            });
        }
    };
    let limit = Limit::parse(q.limit)?;
    let rows = ledger::with_status(&state.pool, statuses, limit.0).await?;
    Ok(Json(json!({"delegations": rows, "count": rows.len(), "status": filter, "limit": limit.0})))
}

/// `GET /admin/delegations/stats`: every status, zero-filled.
pub async fn admin_stats(State(state): State<AppState>, _: Admin) -> ApiResult<Json<BTreeMap<String, i64>>> {
    let mut counts: BTreeMap<String, i64> = DelegationStatus::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    for (status, n) in ledger::counts(&state.pool).await? {
        counts.insert(status, n);
    }
    Ok(Json(counts))
}
