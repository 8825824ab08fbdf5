//! An operator's retry and cancel of a job. Both are idempotent and recorded as events
//! naming the operator; both go through the same rules as every other op change (the
//! workspace row lock, `ops::request`, `ops::advance`).

use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::JobRef;
use crate::domain::{Op, OpKind, OpStatus, Status, Workspace};
use crate::events;
use crate::notify::OPS_CHANNEL;
use crate::store::{self, activity_logs, apalis, workspace_ops, workspaces};
use crate::transition;
use crate::{Error, Result, inbox, ops};

#[derive(Debug, Clone, Serialize)]
pub struct Retried {
    /// The job that runs again: a new op, or the re-armed inbox item.
    pub job_id: String,
    pub retry_of: String,
    /// False when a retry of the same job was still pending and is returned instead.
    pub created: bool,
}

/// Re-runs a failed job: a failed op gets a new op of its kind, sequenced like any other
/// (reason `retry of <id>`); an undeliverable inbox item is pending again, for one more push.
pub async fn retry(pool: &PgPool, r: &JobRef, operator: &str) -> Result<Retried> {
    match r {
        JobRef::Op(id) => retry_op(pool, *id, operator).await,
        JobRef::Inbox(id) => retry_item(pool, *id, operator).await,
        JobRef::Sweep { .. } => Err(Error::Conflict("a sweep is not retried: the next period runs it again".into())),
    }
}

fn retry_reason(id: Uuid) -> String {
    format!("retry of {id}")
}

async fn retry_op(pool: &PgPool, id: Uuid, operator: &str) -> Result<Retried> {
    let mut tx = crate::db::begin(pool).await?;
    let ws_id = workspace_ops::workspace_of(&mut *tx, id).await?.ok_or_else(|| Error::op_not_found(id))?;
    let ws = workspaces::lock_existing(&mut tx, ws_id).await?;
    let op = ops::get(&mut *tx, id).await?;
    let reason = retry_reason(id);
    // A retry still pending is the answer to a second one (the row lock orders them).
    if let Some(pending) = workspace_ops::unfinished_with_reason(&mut tx, ws.id, &reason).await? {
        return Ok(Retried { job_id: pending.id.to_string(), retry_of: id.to_string(), created: false });
    }
    if op.status != OpStatus::Failed {
        return Err(Error::Conflict(format!("op {id} is {}; only a failed op is retried", op.status)));
    }
    let (new, created) = match op.kind {
        OpKind::Provision | OpKind::Restart => retry_start(&mut tx, &ws, op.kind, &reason, operator).await?,
        OpKind::Stop => ops::request(&mut tx, &ws, OpKind::Stop, &reason, operator).await?,
    };
    if !created {
        // A restart joined a start already queued: that start is the retry.
        tx.commit().await?;
        return Ok(Retried { job_id: new.id.to_string(), retry_of: id.to_string(), created: false });
    }
    events::record(
        &mut tx,
        events::JOB_RETRIED,
        Some(ws.id),
        json!({"job_id": id, "new_job_id": new.id, "kind": op.kind, "operator": operator}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(op_id = %id, new_op_id = %new.id, operator, "op retried");
    Ok(Retried { job_id: new.id.to_string(), retry_of: id.to_string(), created: true })
}

/// A start runs only for a workspace waiting for it: a failed one waits again.
async fn retry_start(
    conn: &mut PgConnection,
    ws: &Workspace,
    kind: OpKind,
    reason: &str,
    by: &str,
) -> Result<(Op, bool)> {
    match ws.status {
        Status::Removed => return Err(Error::Conflict(format!("workspace {} is removed; nothing to start", ws.id))),
        Status::Paused => return Err(Error::Paused { id: ws.id }),
        _ => {}
    }
    let (op, new) = ops::request(conn, ws, kind, reason, by).await?;
    if new && ws.status == Status::Failed {
        transition::set_status(conn, ws, Status::Provisioning, None, json!({"op_id": op.id, "reason": reason})).await?;
    }
    Ok((op, new))
}

async fn retry_item(pool: &PgPool, id: i64, operator: &str) -> Result<Retried> {
    let job_id = JobRef::Inbox(id).to_string();
    let mut tx = crate::db::begin(pool).await?;
    let ws_id =
        activity_logs::owner(&mut *tx, id).await?.ok_or_else(|| Error::Missing(format!("job {job_id} not found")))?;
    let due = activity_logs::lock_head(&mut tx, ws_id).await?;
    let delivery: Option<String> = sqlx::query_scalar("SELECT delivery FROM activity_logs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    match delivery.as_deref() {
        Some("undeliverable") => {}
        // Re-armed already and not yet pushed: the same retry.
        Some("pending") => return Ok(Retried { job_id: job_id.clone(), retry_of: job_id, created: false }),
        Some(other) => {
            return Err(Error::Conflict(format!("job {job_id} is {other}; only an undeliverable item is retried")));
        }
        None => return Err(Error::Missing(format!("job {job_id} not found"))),
    }
    sqlx::query("UPDATE activity_logs SET delivery = 'pending', next_attempt_at = NULL WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if due.is_none() {
        inbox::arm_drain(&mut tx, ws_id, None).await?;
    }
    events::record(&mut tx, events::JOB_RETRIED, Some(ws_id), json!({"job_id": job_id, "operator": operator})).await?;
    tx.commit().await?;
    Ok(Retried { job_id: job_id.clone(), retry_of: job_id, created: true })
}

#[derive(Debug, Clone, Serialize)]
pub struct Canceled {
    pub job_id: String,
    /// `queued` or `running` when this call canceled it; `canceled` when it already was.
    pub was: String,
}

/// Cancels an op. A queued one is canceled and its task killed; a running one is canceled
/// and its lease bumped, so its holder's next fence (every write it makes) finds it gone
/// and drops its outcome. The workspace's next op is handed its task at once. A start
/// canceled while its workspace waits for it fails the workspace, which would otherwise
/// wait for an op that never comes.
pub async fn cancel(pool: &PgPool, r: &JobRef, operator: &str) -> Result<Canceled> {
    let JobRef::Op(id) = r else {
        return Err(Error::Conflict(format!("job {r} cannot be canceled: only lifecycle ops are")));
    };
    let id = *id;
    let mut tx = crate::db::begin(pool).await?;
    let ws_id = workspace_ops::workspace_of(&mut *tx, id).await?.ok_or_else(|| Error::op_not_found(id))?;
    let ws = workspaces::lock_existing(&mut tx, ws_id).await?;
    let op = workspace_ops::lock(&mut tx, id).await?.ok_or_else(|| Error::op_not_found(id))?;
    match op.status {
        OpStatus::Canceled => return Ok(Canceled { job_id: id.to_string(), was: "canceled".into() }),
        OpStatus::Succeeded | OpStatus::Failed => {
            return Err(Error::Conflict(format!(
                "op {id} is already {}; only a queued or running op is canceled",
                op.status
            )));
        }
        OpStatus::Queued | OpStatus::Running => {}
    }
    let why = format!("canceled by {operator} while {}", op.status);
    let canceled = workspace_ops::cancel_by_operator(&mut tx, id, &why, OPS_CHANNEL).await?;
    if let Some(task) = &op.task_id {
        apalis::kill_task(&mut tx, task).await?;
    }
    if matches!(op.kind, OpKind::Provision | OpKind::Restart)
        && ws.status == Status::Provisioning
        && workspace_ops::queued_start(&mut tx, ws.id).await?.is_none()
    {
        transition::set_status(&mut tx, &ws, Status::Failed, Some(&why), json!({"op_id": id, "source": "operator"}))
            .await?;
    }
    ops::advance(&mut tx, ws.id).await?;
    events::record(
        &mut tx,
        events::JOB_CANCELED,
        Some(ws.id),
        json!({"job_id": id, "kind": op.kind, "was": op.status, "operator": operator}),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(op_id = %id, was = %op.status, operator, "op canceled by an operator");
    Ok(Canceled { job_id: canceled.id.to_string(), was: op.status.to_string() })
}

/// Pauses or resumes a kind; returns whether this call changed anything.
pub async fn set_paused(pool: &PgPool, kind: &str, paused: bool, operator: &str) -> Result<bool> {
    let mut tx = crate::db::begin(pool).await?;
    let changed = if paused {
        store::paused_queues::pause(&mut *tx, kind, operator).await?.is_some()
    } else {
        store::paused_queues::resume(&mut *tx, kind).await?.is_some()
    };
    let event = if paused { events::QUEUE_PAUSED } else { events::QUEUE_RESUMED };
    if changed {
        events::record(&mut tx, event, None, json!({"kind": kind, "operator": operator})).await?;
    }
    tx.commit().await?;
    Ok(changed)
}
