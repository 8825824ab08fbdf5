//! Claiming an op for one delivery of its task, and the lease that fences every write made
//! on the claim's behalf.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::announce;
use crate::Result;
use crate::domain::{Op, Workspace};
use crate::store::{workspace_ops, workspaces};

/// A claimed op: the lease fences every write made on its behalf.
#[derive(Debug, Clone)]
pub struct Claim {
    pub op: Op,
    pub lease: i64,
}

#[derive(Debug)]
pub enum ClaimResult {
    Claimed(Box<Claim>),
    /// Nothing to do; the reason is logged.
    Skip(String),
}

/// Claims `op_id` for the delivery of apalis task `task_id`.
pub async fn claim(pool: &PgPool, op_id: Uuid, task_id: &str) -> Result<ClaimResult> {
    let mut tx = pool.begin().await?;
    let Some(workspace_id) = workspace_ops::workspace_of(&mut *tx, op_id).await? else {
        return Ok(ClaimResult::Skip(format!("op {op_id} does not exist")));
    };
    workspaces::lock(&mut tx, workspace_id).await?;
    let Some(op) = workspace_ops::lock(&mut tx, op_id).await? else {
        return Ok(ClaimResult::Skip(format!("op {op_id} does not exist")));
    };
    if op.is_final() {
        return Ok(ClaimResult::Skip(format!("op is already {}", op.status)));
    }
    if op.task_id.as_deref() != Some(task_id) {
        return Ok(ClaimResult::Skip(format!("task {task_id} is stale; op is delivered by {:?}", op.task_id)));
    }
    if let Some(head) = workspace_ops::head(&mut tx, workspace_id).await?
        && head.id != op.id
    {
        // Not its turn (should not happen): drop the task; advance() re-delivers it.
        workspace_ops::set_task(&mut tx, op.id, None).await?;
        tx.commit().await?;
        return Ok(ClaimResult::Skip(format!("op {} of the same workspace runs first", head.id)));
    }
    let op = workspace_ops::mark_running(&mut tx, op_id).await?;
    announce(&mut tx, &op).await?;
    tx.commit().await?;
    Ok(ClaimResult::Claimed(Box::new(Claim { lease: op.lease, op })))
}

#[derive(Debug, thiserror::Error)]
#[error("op {0} was claimed by another worker")]
pub struct Fenced(pub Uuid);

impl Claim {
    /// Locks the workspace and checks this claim still owns the op. Every write a job makes
    /// goes through a transaction that called this first.
    pub async fn fence(&self, conn: &mut PgConnection) -> Result<Result<Workspace, Fenced>> {
        let ws = workspaces::lock_existing(conn, self.op.workspace_id).await?;
        let owned = workspace_ops::lock_owned(conn, self.op.id, self.lease).await?;
        Ok(if owned { Ok(ws) } else { Err(Fenced(self.op.id)) })
    }
}
