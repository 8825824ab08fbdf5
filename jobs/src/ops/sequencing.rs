//! Adding ops, canceling queued ones, and handing the head op its task.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{announce, deliver, new_tasks};
use crate::Result;
use crate::domain::{Op, OpKind, OpStatus, Workspace};
use crate::metrics;
use crate::notify::OPS_CHANNEL;
use crate::retry;
use crate::store::{apalis, workspace_ops};

/// Adds an op for a workspace whose row the caller has locked, and returns it with whether
/// it is new (false: a queued start absorbed a restart request).
pub async fn request(
    conn: &mut PgConnection,
    ws: &Workspace,
    kind: OpKind,
    reason: &str,
    requested_by: &str,
) -> Result<(Op, bool)> {
    if kind == OpKind::Restart
        && let Some(queued) = workspace_ops::queued_start(conn, ws.id).await?
    {
        // A queued provision or restart will start a fresh instance anyway.
        return Ok((queued, false));
    }
    let max_attempts = retry::default_policy(kind).max_attempts;
    let mut op = workspace_ops::insert(conn, ws.id, kind, reason, max_attempts, requested_by).await?;
    metrics::enqueued(kind);
    announce(conn, &op).await?;
    if let Some((head, task)) = advance(conn, ws.id).await?
        && head == op.id
    {
        op.task_id = Some(task);
    }
    Ok((op, true))
}

/// The first ops of workspaces created in the caller's transaction, one per `(workspace,
/// requested_by)`, in one statement per table: each has no op before it, so it is its
/// workspace's head and gets its task at once, without looking. Returns them in the order
/// given.
pub async fn request_first(
    conn: &mut PgConnection,
    firsts: &[(Uuid, &str)],
    kind: OpKind,
    reason: &str,
) -> Result<Vec<Op>> {
    let max_attempts = retry::default_policy(kind).max_attempts;
    let ids: Vec<Uuid> = firsts.iter().map(|_| Uuid::new_v4()).collect();
    let tasks = new_tasks(conn, &ids).await?;
    let delivered: Vec<workspace_ops::Delivered> = firsts
        .iter()
        .zip(&ids)
        .zip(&tasks)
        .map(|(((workspace_id, requested_by), id), task_id)| workspace_ops::Delivered {
            id: *id,
            workspace_id: *workspace_id,
            requested_by,
            task_id,
        })
        .collect();
    let ops = workspace_ops::insert_delivered(conn, &delivered, kind, reason, max_attempts, OPS_CHANNEL).await?;
    for _ in &ops {
        metrics::enqueued(kind);
    }
    Ok(ops)
}

/// Cancels the workspace's queued starts (delete and pause supersede them).
pub async fn cancel_queued_starts(conn: &mut PgConnection, workspace_id: Uuid, why: &str) -> Result<Vec<Op>> {
    let canceled = workspace_ops::cancel_queued_starts(conn, workspace_id, why).await?;
    for op in &canceled {
        if let Some(task) = &op.task_id {
            apalis::kill_task(conn, task).await?;
        }
        announce(conn, op).await?;
    }
    Ok(canceled)
}

/// Gives the workspace's head op an apalis task if it has none, and returns (op, task) when
/// it did. Called in every transaction that adds or finishes an op, under the row lock.
pub async fn advance(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Option<(Uuid, String)>> {
    let Some(op) = workspace_ops::head(conn, workspace_id).await? else { return Ok(None) };
    advance_head(conn, op).await
}

/// [`advance`], given the workspace's head as read under its row lock.
pub async fn advance_head(conn: &mut PgConnection, op: Op) -> Result<Option<(Uuid, String)>> {
    if op.status != OpStatus::Queued || op.task_id.is_some() {
        return Ok(None);
    }
    let delay = match op.next_attempt_at {
        Some(_) => workspace_ops::due_in(conn, op.id).await?,
        None => None,
    };
    let task = deliver(conn, op.id, delay).await?;
    Ok(Some((op.id, task)))
}
