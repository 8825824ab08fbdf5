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
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Admin, AdminOrWorkspace};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Limit};
use crate::state::AppState;

const TASK_MAX: usize = 64 * 1024;
const KEY_MAX: usize = 255;
const MAX_DEADLINE_SECS: f64 = 7.0 * 24.0 * 3600.0;

#[derive(Debug, Deserialize, ToSchema)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct DelegatedAnswer {
    delegation_id: String,
    /// `delegated` for a new one; the existing one's status on an idempotent hit.
    status: String,
    target_id: Uuid,
    /// Present (true) when the idempotency key named an existing delegation.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotent_hit: Option<bool>,
}

/// `POST /workspaces/:id/delegate`: 202 with a new delegation, or 200 with the one the
/// caller's idempotency key already names.
#[utoipa::path(post, path = "/workspaces/{id}/delegate", tag = "delegations",
    params(("id" = Uuid, Path, description = "The delegating workspace")),
    request_body = DelegateBody,
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The delegation the idempotency key already names", body = DelegatedAnswer),
        (status = 202, description = "A new delegation", body = DelegatedAnswer),
        (status = 400, description = "A bad id or body", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such live caller or target", body = ErrorBody),
        (status = 409, description = "The target cannot take it (itself, or not live)", body = ErrorBody),
    ))]
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
            Json(DelegatedAnswer {
                delegation_id: d.delegation_id,
                status: "delegated".into(),
                target_id: d.callee_id,
                idempotent_hit: None,
            }),
        )
            .into_response(),
        Delegated::Hit(d) => (
            StatusCode::OK,
            Json(DelegatedAnswer {
                delegation_id: d.delegation_id,
                status: d.status.as_str().into(),
                target_id: d.callee_id,
                idempotent_hit: Some(true),
            }),
        )
            .into_response(),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    target_id: Uuid,
    task: String,
    delegation_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordedDelegation {
    /// `recorded`.
    status: &'static str,
    delegation_id: String,
}

/// `POST /workspaces/:id/delegations/record`: a delegation the agent sent itself.
#[utoipa::path(post, path = "/workspaces/{id}/delegations/record", tag = "delegations",
    params(("id" = Uuid, Path, description = "The delegating workspace")),
    request_body = RecordBody,
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 202, description = "Recorded (or already was)", body = RecordedDelegation),
        (status = 400, description = "A bad id or body", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such live caller or target", body = ErrorBody),
        (status = 409, description = "The id is taken by another delegation", body = ErrorBody),
    ))]
pub async fn record(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiJson(b): ApiJson<RecordBody>,
) -> ApiResult<Response> {
    check_task(&b.task)?;
    check_id("delegation_id", &b.delegation_id)?;
    let d = delegations::record(&state.pool, who.id, b.target_id, &b.task, &b.delegation_id).await?;
    Ok((StatusCode::ACCEPTED, Json(RecordedDelegation { status: "recorded", delegation_id: d.delegation_id }))
        .into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// `dispatched`, `in_progress`, `completed` or `failed`.
    status: String,
    response_preview: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Updated {
    delegation: ledger::Delegation,
    /// False when it already had that status.
    changed: bool,
}

/// `POST /workspaces/:id/delegations/:delegation_id/update`, by either party.
#[utoipa::path(post, path = "/workspaces/{id}/delegations/{delegation_id}/update", tag = "delegations",
    params(("id" = Uuid, Path, description = "The caller or the callee"), ("delegation_id" = String, Path, description = "The delegation")),
    request_body = UpdateBody,
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The delegation", body = Updated),
        (status = 400, description = "A bad id or body, or a status that cannot be reported", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such delegation of this workspace", body = ErrorBody),
        (status = 409, description = "The status would move backward or away from a final one", body = ErrorBody),
    ))]
pub async fn update(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    Path((_, delegation_id)): Path<(String, String)>,
    ApiJson(b): ApiJson<UpdateBody>,
) -> ApiResult<Json<Updated>> {
    let to = DelegationStatus::parse_reported(&b.status)?;
    let (d, changed) =
        delegations::update(&state.pool, who.id, &delegation_id, to, b.response_preview.as_deref(), b.error.as_deref())
            .await?;
    Ok(Json(Updated { delegation: d, changed }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Heartbeated {
    delegation: ledger::Delegation,
}

/// `POST /workspaces/:id/delegations/:delegation_id/heartbeat`.
#[utoipa::path(post, path = "/workspaces/{id}/delegations/{delegation_id}/heartbeat", tag = "delegations",
    params(("id" = Uuid, Path, description = "The callee"), ("delegation_id" = String, Path, description = "The delegation")),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "The delegation, its heartbeat stamped", body = Heartbeated),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such delegation of this workspace", body = ErrorBody),
        (status = 409, description = "The delegation is final", body = ErrorBody),
    ))]
pub async fn heartbeat(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    Path((_, delegation_id)): Path<(String, String)>,
) -> ApiResult<Json<Heartbeated>> {
    let d = delegations::heartbeat(&state.pool, who.id, &delegation_id).await?;
    Ok(Json(Heartbeated { delegation: d }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /workspaces/:id/delegations`: as caller or callee, newest first.
#[utoipa::path(get, path = "/workspaces/{id}/delegations", tag = "delegations",
    params(("id" = Uuid, Path, description = "The workspace"), ListQuery),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "Its delegations", body = Vec<ledger::Delegation>),
        (status = 400, description = "A bad id or limit, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<ledger::Delegation>>> {
    let limit = Limit::parse(q.limit)?;
    Ok(Json(ledger::of_workspace(&state.pool, who.id, limit.0).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdminQuery {
    /// `in_flight` (when absent), `stuck`, `failed` or `completed`.
    status: Option<String>,
    /// 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminDelegations {
    delegations: Vec<ledger::Delegation>,
    count: usize,
    status: String,
    limit: i64,
}

pub(crate) const ADMIN_FILTERS: [&str; 4] = ["in_flight", "stuck", "failed", "completed"];

/// The statuses an operator's filter names: `in_flight` is every status still under way.
pub(crate) fn admin_filter(filter: &str) -> ApiResult<&'static [DelegationStatus]> {
    Ok(match filter {
        "in_flight" => &DelegationStatus::IN_FLIGHT,
        "stuck" => &[DelegationStatus::Stuck],
        "failed" => &[DelegationStatus::Failed],
        "completed" => &[DelegationStatus::Completed],
        _ => {
            return Err(ApiError::BadRequestWith {
                message: format!("unknown status {filter:?}; allowed: {}", ADMIN_FILTERS.join(", ")),
                extra: json!({"allowed": ADMIN_FILTERS, "requested_status": filter}),
            });
        }
    })
}

/// `GET /admin/delegations?status=in_flight|stuck|failed|completed&limit=1..1000`.
#[utoipa::path(get, path = "/admin/delegations", tag = "delegations",
    params(AdminQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The delegations with that status", body = AdminDelegations),
        (status = 400, description = "An unknown status (the body adds `allowed` and `requested_status`), a bad limit, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn admin_list(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(q): ApiQuery<AdminQuery>,
) -> ApiResult<Json<AdminDelegations>> {
    let filter = q.status.unwrap_or_else(|| "in_flight".into());
    let statuses = admin_filter(&filter)?;
    let limit = Limit::parse(q.limit)?;
    let rows = ledger::with_status(&state.pool, statuses, limit.0).await?;
    Ok(Json(AdminDelegations { count: rows.len(), delegations: rows, status: filter, limit: limit.0 }))
}

/// `GET /admin/delegations/stats`: every status, zero-filled.
#[utoipa::path(get, path = "/admin/delegations/stats", tag = "delegations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "How many delegations have each status", body = BTreeMap<String, i64>),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn admin_stats(State(state): State<AppState>, _: Admin) -> ApiResult<Json<BTreeMap<String, i64>>> {
    let mut counts: BTreeMap<String, i64> = DelegationStatus::ALL.iter().map(|s| (s.as_str().to_string(), 0)).collect();
    for (status, n) in ledger::counts(&state.pool).await? {
        counts.insert(status, n);
    }
    Ok(Json(counts))
}
