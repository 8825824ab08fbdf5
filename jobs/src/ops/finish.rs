//! Recording how an attempt ended: success, a durable retry, or the final failure and what
//! it means for the workspace.

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use std::collections::{HashMap, HashSet};

use super::{Claim, advance, advance_head, new_task};
use crate::domain::{Op, OpKind, OpStatus, Status, Workspace};
use crate::events;
use crate::metrics::JobEnd;
use crate::notify::OPS_CHANNEL;
use crate::retry::RetryPolicy;
use crate::store::{workspace_ops, workspaces};
use crate::transition;
use crate::{Error, Result};

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

/// How an outcome ends its op, when it does: the final status and its text. `None`: the
/// outcome schedules another attempt.
fn ending(outcome: &Outcome, op: &Op) -> Option<(OpStatus, String)> {
    Some(match outcome {
        Outcome::Succeeded(result) => (OpStatus::Succeeded, result.clone()),
        Outcome::Skipped(why) => (OpStatus::Canceled, format!("skipped: {why}")),
        Outcome::Retry(_) if outcome.retries(op) => return None,
        Outcome::Retry(err) => (OpStatus::Failed, format!("{err} (gave up after {} attempts)", op.attempts)),
        Outcome::Failed(err) => (OpStatus::Failed, err.clone()),
    })
}

/// Records the outcome, schedules a durable retry or applies the final-failure rule, and
/// hands the workspace's next op its task, all in one transaction.
pub async fn finish(pool: &PgPool, claim: &Claim, outcome: Outcome, policy: RetryPolicy) -> Result<Finished> {
    let mut tx = crate::db::begin(pool).await?;
    let ws = workspaces::lock_existing(&mut tx, claim.op.workspace_id).await?;
    let op = &claim.op;
    let attempts = op.attempts;
    // Each write below is conditional on the claim still owning the op; the workspace lock
    // taken above serialises it with every takeover, so `None` means fenced.
    let updated = match (ending(&outcome, op), &outcome) {
        (None, Outcome::Retry(err)) => {
            let delay = policy.delay_after(attempts);
            tracing::warn!(op_id = %op.id, attempts, delay_ms = delay.as_millis() as u64, error = %err, "op attempt failed; retrying");
            let task = new_task(&mut tx, op.id, Some(delay)).await?;
            workspace_ops::mark_retrying(&mut tx, op.id, claim.lease, err, delay, &task, OPS_CHANNEL).await?
        }
        (None, _) => return Err(Error::Internal(format!("op {}: only a retry schedules another attempt", op.id))),
        (Some((status, text)), _) => {
            let ended = workspace_ops::mark_final(&mut tx, op.id, claim.lease, status, &text, OPS_CHANNEL).await?;
            if let Some(ended) = &ended
                && status == OpStatus::Failed
            {
                on_final_failure(&mut tx, &ws, ended, &text).await?;
            }
            ended
        }
    };
    if updated.is_none() {
        return Ok(Finished::Fenced);
    }
    advance(&mut tx, ws.id).await?;
    tx.commit().await?;
    Ok(Finished::Recorded)
}

/// An attempt's end that [`finish_round`] can record with others: the op ends (no retry to
/// schedule), and ending it writes only rows (a stop that gave up, which reports a suspected
/// leak, is finished alone).
#[derive(Debug, Clone)]
pub struct Ending {
    pub op_id: Uuid,
    pub workspace_id: Uuid,
    pub kind: OpKind,
    pub lease: i64,
    pub status: OpStatus,
    pub text: String,
}

impl Ending {
    pub fn of(claim: &Claim, outcome: &Outcome) -> Option<Ending> {
        let (status, text) = ending(outcome, &claim.op)?;
        if status == OpStatus::Failed && claim.op.kind == OpKind::Stop {
            return None;
        }
        Some(Ending {
            op_id: claim.op.id,
            workspace_id: claim.op.workspace_id,
            kind: claim.op.kind,
            lease: claim.lease,
            status,
            text,
        })
    }
}

/// Records many endings in one transaction, as [`finish`] records one: the workspaces are
/// locked (in id order), the ops ended, the final-failure rule applied and the next heads
/// handed their tasks, with one statement per table for the whole round. Returns whether
/// each ending was recorded or fenced, in the order given.
pub async fn finish_round(pool: &PgPool, endings: &[Ending]) -> Result<Vec<Finished>> {
    let mut tx = crate::db::begin(pool).await?;
    let mut ids: Vec<Uuid> = endings.iter().map(|e| e.workspace_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let locked: HashMap<Uuid, Workspace> =
        workspaces::lock_many(&mut tx, &ids).await?.into_iter().map(|ws| (ws.id, ws)).collect();
    let rows: Vec<_> = endings.iter().map(|e| (e.op_id, e.lease, e.status, e.text.as_str())).collect();
    // An ending is recorded when its own claim's lease ended the op: two claims of one op
    // (the second after a takeover) can be in one round, and only the current one counts.
    let ended: HashSet<(Uuid, i64)> = workspace_ops::mark_final_many(&mut tx, &rows, OPS_CHANNEL)
        .await?
        .into_iter()
        .map(|op| (op.id, op.lease))
        .collect();
    let recorded: Vec<&Ending> = endings.iter().filter(|e| ended.contains(&(e.op_id, e.lease))).collect();
    let failed_starts: Vec<_> = recorded
        .iter()
        .filter(|e| e.status == OpStatus::Failed && matches!(e.kind, OpKind::Provision | OpKind::Restart))
        .filter_map(|e| locked.get(&e.workspace_id).map(|ws| (ws, e.op_id, e.kind, e.text.as_str())))
        .collect();
    fail_workspaces_of(&mut tx, failed_starts).await?;
    let mut advanced: Vec<Uuid> = recorded.iter().map(|e| e.workspace_id).collect();
    advanced.sort_unstable();
    advanced.dedup();
    for head in workspace_ops::heads(&mut tx, &advanced).await? {
        advance_head(&mut tx, head).await?;
    }
    tx.commit().await?;
    Ok(endings
        .iter()
        .map(|e| if ended.contains(&(e.op_id, e.lease)) { Finished::Recorded } else { Finished::Fenced })
        .collect())
}

async fn on_final_failure(conn: &mut PgConnection, ws: &Workspace, op: &Op, err: &str) -> Result<()> {
    match op.kind {
        OpKind::Provision | OpKind::Restart => fail_workspaces_of(conn, vec![(ws, op.id, op.kind, err)]).await,
        OpKind::Stop => report_leak_suspect(conn, ws, op.id, err, "stop gave up").await,
    }
}

/// The final failure of starts (workspace, op id, kind, error), in one statement per table:
/// only a workspace still waiting for its start is failed; a paused or removed one has
/// moved on.
async fn fail_workspaces_of(conn: &mut PgConnection, starts: Vec<(&Workspace, Uuid, OpKind, &str)>) -> Result<()> {
    let failing: Vec<_> = starts
        .into_iter()
        .filter(|(ws, ..)| matches!(ws.status, Status::Provisioning | Status::Failed))
        .map(|(ws, op_id, kind, err)| (ws, Some(err), json!({"op_id": op_id, "source": kind})))
        .collect();
    if !failing.is_empty() {
        transition::set_status_many(conn, failing, Status::Failed).await?;
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
