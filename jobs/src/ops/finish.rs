//! Recording how an attempt ended: success, a durable retry, or the final failure and what
//! it means for the workspace.

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{Claim, advance, new_task};
use crate::Result;
use crate::domain::{Op, OpKind, OpStatus, Status, Workspace};
use crate::events;
use crate::metrics::JobEnd;
use crate::notify::OPS_CHANNEL;
use crate::retry::RetryPolicy;
use crate::store::{workspace_ops, workspaces};
use crate::transition;

/// How a job ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded(String),
    /// The current state made the work moot (e.g. a provision for a removed workspace).
    Skipped(String),
    /// Worth another attempt, if the policy has one left.
    Retry(String),
    /// Final, whatever the attempts left.
    Failed(String),
}

impl Outcome {
    /// Whether recording this outcome schedules another attempt of `op`.
    pub fn retries(&self, op: &Op) -> bool {
        matches!(self, Outcome::Retry(_)) && op.attempts < op.max_attempts
    }

    /// How the attempt counts in the job metrics.
    pub fn job_end(&self, op: &Op) -> JobEnd {
        match self {
            Outcome::Succeeded(_) => JobEnd::Succeeded,
            Outcome::Skipped(_) => JobEnd::Other,
            Outcome::Retry(_) if self.retries(op) => JobEnd::Retried,
            Outcome::Retry(_) | Outcome::Failed(_) => JobEnd::Failed,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    Recorded,
    Fenced,
}

/// Records the outcome, schedules a durable retry or applies the final-failure rule, and
/// hands the workspace's next op its task, all in one transaction.
pub async fn finish(pool: &PgPool, claim: &Claim, outcome: Outcome, policy: RetryPolicy) -> Result<Finished> {
    let mut tx = pool.begin().await?;
    let ws = workspaces::lock_existing(&mut tx, claim.op.workspace_id).await?;
    let op = &claim.op;
    let attempts = op.attempts;
    // Each write below is conditional on the claim still owning the op; the workspace lock
    // taken above serialises it with every takeover, so `None` means fenced.
    let updated = match &outcome {
        Outcome::Succeeded(result) => {
            workspace_ops::mark_final(&mut tx, op.id, claim.lease, OpStatus::Succeeded, result, OPS_CHANNEL).await?
        }
        Outcome::Skipped(why) => {
            let why = format!("skipped: {why}");
            workspace_ops::mark_final(&mut tx, op.id, claim.lease, OpStatus::Canceled, &why, OPS_CHANNEL).await?
        }
        Outcome::Retry(err) if outcome.retries(op) => {
            let delay = policy.delay_after(attempts);
            tracing::warn!(op_id = %op.id, attempts, delay_ms = delay.as_millis() as u64, error = %err, "op attempt failed; retrying");
            let task = new_task(&mut tx, op.id, Some(delay)).await?;
            workspace_ops::mark_retrying(&mut tx, op.id, claim.lease, err, delay, &task, OPS_CHANNEL).await?
        }
        Outcome::Retry(err) | Outcome::Failed(err) => {
            let err = if matches!(outcome, Outcome::Retry(_)) {
                format!("{err} (gave up after {attempts} attempts)")
            } else {
                err.clone()
            };
            let failed =
                workspace_ops::mark_final(&mut tx, op.id, claim.lease, OpStatus::Failed, &err, OPS_CHANNEL).await?;
            if let Some(failed) = &failed {
                on_final_failure(&mut tx, &ws, failed, &err).await?;
            }
            failed
        }
    };
    if updated.is_none() {
        return Ok(Finished::Fenced);
    }
    advance(&mut tx, ws.id).await?;
    tx.commit().await?;
    Ok(Finished::Recorded)
}

async fn on_final_failure(conn: &mut PgConnection, ws: &Workspace, op: &Op, err: &str) -> Result<()> {
    match op.kind {
        OpKind::Provision | OpKind::Restart => {
            // Only a workspace still waiting for this start is failed; a paused or removed
            // one has moved on.
            if matches!(ws.status, Status::Provisioning | Status::Failed) {
                transition::set_status(conn, ws, Status::Failed, Some(err), json!({"op_id": op.id, "source": op.kind}))
                    .await?;
            }
        }
        OpKind::Stop => report_leak_suspect(conn, ws, op.id, err, "stop gave up").await?,
    }
    Ok(())
}

/// A stop that could not be done: the `LEAK-SUSPECT` log line operators grep for and the
/// `LEAK_SUSPECT` event they list. The orphans sweep reaps the instance later.
pub async fn report_leak_suspect(
    conn: &mut PgConnection,
    ws: &Workspace,
    op_id: Uuid,
    err: &str,
    what: &str,
) -> Result<()> {
    tracing::error!(
        workspace_id = %ws.id, %op_id, backend = ?ws.backend, instance_ref = ?ws.instance_ref, last_err = %err,
        "LEAK-SUSPECT {what}; the instance may still be running"
    );
    events::record(
        conn,
        events::LEAK_SUSPECT,
        Some(ws.id),
        json!({"op_id": op_id, "backend": ws.backend, "instance_ref": ws.instance_ref, "error": err}),
    )
    .await?;
    crate::metrics::leak_suspected();
    Ok(())
}
