//! Lifecycle operations (`workspace_ops`): the durable record of what was asked of a
//! workspace and how it went, and the rules that sequence them.
//!
//! - One at a time per workspace, in creation order: only the oldest unfinished op (the
//!   head) has an apalis task; the transaction that finishes an op gives the next one its
//!   task ([`advance`]). Decisions are serialised by the workspace row lock.
//! - A restart asked for while a start (provision/restart) is still queued returns that op.
//! - Every write of a claimed op is fenced on its lease, so a worker presumed dead cannot
//!   overwrite the result of the worker that replaced it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::events;
use crate::notify::OPS_CHANNEL;
use crate::queue::{self, LIFECYCLE_QUEUE, OpTask};
use crate::retry::{self, RetryPolicy};
use crate::store::workspaces;
use crate::workspace::{Status, Workspace};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Provision,
    Stop,
    Restart,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Provision => "provision",
            OpKind::Stop => "stop",
            OpKind::Restart => "restart",
        }
    }

    pub fn parse(s: &str) -> Option<OpKind> {
        [OpKind::Provision, OpKind::Stop, OpKind::Restart].into_iter().find(|k| k.as_str() == s)
    }

    pub fn policy(self) -> RetryPolicy {
        match self {
            OpKind::Provision | OpKind::Restart => retry::PROVISION,
            OpKind::Stop => retry::STOP,
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Op {
    pub id: Uuid,
    #[serde(skip)]
    pub seq: i64,
    pub workspace_id: Uuid,
    pub kind: String,
    pub reason: String,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub requested_by: String,
    #[serde(skip)]
    pub lease: i64,
    pub task_id: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl Op {
    pub fn kind(&self) -> OpKind {
        OpKind::parse(&self.kind).unwrap_or(OpKind::Stop)
    }

    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "canceled")
    }
}

pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Op>> {
    Ok(sqlx::query_as::<_, Op>("SELECT * FROM workspace_ops WHERE id = $1").bind(id).fetch_optional(db).await?)
}

pub async fn list_for_workspace<'e>(db: impl PgExecutor<'e>, workspace_id: Uuid, limit: i64) -> Result<Vec<Op>> {
    Ok(sqlx::query_as::<_, Op>("SELECT * FROM workspace_ops WHERE workspace_id = $1 ORDER BY seq DESC LIMIT $2")
        .bind(workspace_id)
        .bind(limit)
        .fetch_all(db)
        .await?)
}

/// Whether any op of the workspace is still queued or running.
pub async fn has_unfinished<'e>(db: impl PgExecutor<'e>, workspace_id: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM workspace_ops WHERE workspace_id = $1 AND status IN ('queued', 'running'))",
    )
    .bind(workspace_id)
    .fetch_one(db)
    .await?)
}

async fn notify(conn: &mut PgConnection, op: &Op) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(OPS_CHANNEL)
        .bind(format!("{} {}", op.id, op.workspace_id))
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds an op for a workspace whose row the caller has locked, and returns it with whether
/// it is new (false: a queued start absorbed a restart request).
pub async fn request(
    conn: &mut PgConnection,
    ws: &Workspace,
    kind: OpKind,
    reason: &str,
    requested_by: &str,
    policy: RetryPolicy,
) -> Result<(Op, bool)> {
    if kind == OpKind::Restart {
        // A queued provision or restart will start a fresh instance anyway.
        let queued: Option<Op> = sqlx::query_as(
            "SELECT * FROM workspace_ops
              WHERE workspace_id = $1 AND status = 'queued' AND kind IN ('provision', 'restart')
              ORDER BY seq DESC LIMIT 1",
        )
        .bind(ws.id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(op) = queued {
            return Ok((op, false));
        }
    }
    let op: Op = sqlx::query_as(
        "INSERT INTO workspace_ops (id, workspace_id, kind, reason, status, max_attempts, requested_by)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6) RETURNING *",
    )
    .bind(Uuid::new_v4())
    .bind(ws.id)
    .bind(kind.as_str())
    .bind(reason)
    .bind(policy.max_attempts)
    .bind(requested_by)
    .fetch_one(&mut *conn)
    .await?;
    notify(conn, &op).await?;
    let mut op = op;
    if let Some((head, task)) = advance(conn, ws.id).await?
        && head == op.id
    {
        op.task_id = Some(task);
    }
    Ok((op, true))
}

/// Cancels the workspace's queued starts (delete and pause supersede them).
pub async fn cancel_queued_starts(conn: &mut PgConnection, workspace_id: Uuid, why: &str) -> Result<Vec<Op>> {
    let canceled: Vec<Op> = sqlx::query_as(
        "UPDATE workspace_ops SET status = 'canceled', last_error = $2, finished_at = now(), updated_at = now()
          WHERE workspace_id = $1 AND status = 'queued' AND kind IN ('provision', 'restart')
          RETURNING *",
    )
    .bind(workspace_id)
    .bind(why)
    .fetch_all(&mut *conn)
    .await?;
    for op in &canceled {
        if let Some(task) = &op.task_id {
            queue::cancel(conn, task).await?;
        }
        notify(conn, op).await?;
    }
    Ok(canceled)
}

async fn head(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Option<Op>> {
    Ok(sqlx::query_as(
        "SELECT * FROM workspace_ops WHERE workspace_id = $1 AND status IN ('queued', 'running') ORDER BY seq LIMIT 1",
    )
    .bind(workspace_id)
    .fetch_optional(conn)
    .await?)
}

/// Gives the workspace's head op an apalis task if it has none, and returns (op, task) when
/// it did. Called in every transaction that adds or finishes an op, under the row lock.
pub async fn advance(conn: &mut PgConnection, workspace_id: Uuid) -> Result<Option<(Uuid, String)>> {
    let Some(op) = head(conn, workspace_id).await? else { return Ok(None) };
    if op.status == "queued" && op.task_id.is_none() {
        let delay = op.next_attempt_at.map(|t| (t - Utc::now()).to_std().unwrap_or_default());
        let task = queue::enqueue(conn, LIFECYCLE_QUEUE, &OpTask { v: 1, op_id: op.id }, delay).await?;
        sqlx::query("UPDATE workspace_ops SET task_id = $2, updated_at = now() WHERE id = $1")
            .bind(op.id)
            .bind(&task)
            .execute(&mut *conn)
            .await?;
        return Ok(Some((op.id, task)));
    }
    Ok(None)
}

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
    let Some(workspace_id): Option<Uuid> = sqlx::query_scalar("SELECT workspace_id FROM workspace_ops WHERE id = $1")
        .bind(op_id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(ClaimResult::Skip(format!("op {op_id} does not exist")));
    };
    workspaces::lock(&mut tx, workspace_id).await?;
    let op: Op =
        sqlx::query_as("SELECT * FROM workspace_ops WHERE id = $1 FOR UPDATE").bind(op_id).fetch_one(&mut *tx).await?;
    if op.is_final() {
        return Ok(ClaimResult::Skip(format!("op is already {}", op.status)));
    }
    if op.task_id.as_deref() != Some(task_id) {
        return Ok(ClaimResult::Skip(format!("task {task_id} is stale; op is delivered by {:?}", op.task_id)));
    }
    if let Some(h) = head(&mut tx, workspace_id).await?
        && h.id != op.id
    {
        {
            // Not its turn (should not happen): drop the task; advance() will re-deliver it.
            sqlx::query("UPDATE workspace_ops SET task_id = NULL WHERE id = $1").bind(op.id).execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(ClaimResult::Skip(format!("op {} of the same workspace runs first", h.id)));
        }
    }
    let op: Op = sqlx::query_as(
        "UPDATE workspace_ops
            SET status = 'running', attempts = attempts + 1, lease = lease + 1,
                started_at = coalesce(started_at, now()), next_attempt_at = NULL, updated_at = now()
          WHERE id = $1 RETURNING *",
    )
    .bind(op_id)
    .fetch_one(&mut *tx)
    .await?;
    notify(&mut tx, &op).await?;
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
        let owned: Option<i64> = sqlx::query_scalar(
            "SELECT lease FROM workspace_ops WHERE id = $1 AND lease = $2 AND status = 'running' FOR UPDATE",
        )
        .bind(self.op.id)
        .bind(self.lease)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(if owned.is_some() { Ok(ws) } else { Err(Fenced(self.op.id)) })
    }
}

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

#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    Recorded,
    Fenced,
}

/// Records the outcome, schedules a durable retry or applies the final-failure rule, and
/// hands the workspace's next op its task, all in one transaction.
pub async fn finish(pool: &PgPool, claim: &Claim, outcome: Outcome, policy: RetryPolicy) -> Result<Finished> {
    let mut tx = pool.begin().await?;
    let ws = match claim.fence(&mut tx).await? {
        Ok(ws) => ws,
        Err(_) => return Ok(Finished::Fenced),
    };
    let op = &claim.op;
    let attempts = op.attempts;
    let updated: Op = match &outcome {
        Outcome::Succeeded(result) => {
            sqlx::query_as(
                "UPDATE workspace_ops SET status = 'succeeded', result = $2, finished_at = now(), updated_at = now()
                  WHERE id = $1 RETURNING *",
            )
            .bind(op.id)
            .bind(result)
            .fetch_one(&mut *tx)
            .await?
        }
        Outcome::Skipped(why) => {
            sqlx::query_as(
                "UPDATE workspace_ops SET status = 'canceled', last_error = $2, finished_at = now(), updated_at = now()
                  WHERE id = $1 RETURNING *",
            )
            .bind(op.id)
            .bind(format!("skipped: {why}"))
            .fetch_one(&mut *tx)
            .await?
        }
        Outcome::Retry(err) if attempts < op.max_attempts => {
            let delay = policy.delay_after(attempts);
            let task = queue::enqueue(&mut tx, LIFECYCLE_QUEUE, &OpTask { v: 1, op_id: op.id }, Some(delay)).await?;
            tracing::warn!(op_id = %op.id, attempts, delay_ms = delay.as_millis() as u64, error = %err, "op attempt failed; retrying");
            sqlx::query_as(
                "UPDATE workspace_ops
                    SET status = 'queued', last_error = $2, task_id = $3,
                        next_attempt_at = now() + $4 * interval '1 millisecond', updated_at = now()
                  WHERE id = $1 RETURNING *",
            )
            .bind(op.id)
            .bind(err)
            .bind(task)
            .bind(delay.as_millis() as f64)
            .fetch_one(&mut *tx)
            .await?
        }
        Outcome::Retry(err) | Outcome::Failed(err) => {
            let err = if matches!(outcome, Outcome::Retry(_)) {
                format!("{err} (gave up after {attempts} attempts)")
            } else {
                err.clone()
            };
            let failed: Op = sqlx::query_as(
                "UPDATE workspace_ops SET status = 'failed', last_error = $2, finished_at = now(), updated_at = now()
                  WHERE id = $1 RETURNING *",
            )
            .bind(op.id)
            .bind(&err)
            .fetch_one(&mut *tx)
            .await?;
            on_final_failure(&mut tx, &ws, &failed, &err).await?;
            failed
        }
    };
    notify(&mut tx, &updated).await?;
    advance(&mut tx, ws.id).await?;
    tx.commit().await?;
    Ok(Finished::Recorded)
}

async fn on_final_failure(conn: &mut PgConnection, ws: &Workspace, op: &Op, err: &str) -> Result<()> {
    match op.kind() {
        OpKind::Provision | OpKind::Restart => {
            // Only a workspace still waiting for this start is failed; a paused or removed
            // one has moved on.
            if matches!(ws.status(), Status::Provisioning | Status::Failed) {
                workspaces::set_status(conn, ws, Status::Failed, Some(err), json!({"op_id": op.id, "source": op.kind}))
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
    Ok(())
}

/// Re-delivers head ops whose task vanished or ended without finishing them (a handler
/// that could not reach the database, an operator who killed a task). Run by a sweep.
pub async fn redeliver_stranded(pool: &PgPool, older_than: Duration) -> Result<Vec<Uuid>> {
    let candidates: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT o.id, o.workspace_id FROM workspace_ops o
           LEFT JOIN apalis.jobs j ON j.id = o.task_id
          WHERE o.status IN ('queued', 'running')
            AND o.updated_at < now() - $1 * interval '1 millisecond'
            AND (o.task_id IS NULL OR j.id IS NULL OR j.status IN ('Done', 'Killed')
                 OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))
            AND NOT EXISTS (SELECT 1 FROM workspace_ops p
                             WHERE p.workspace_id = o.workspace_id AND p.seq < o.seq AND p.status IN ('queued', 'running'))",
    )
    .bind(older_than.as_millis() as f64)
    .fetch_all(pool)
    .await?;
    let mut redelivered = Vec::new();
    for (op_id, workspace_id) in candidates {
        let mut tx = pool.begin().await?;
        workspaces::lock(&mut tx, workspace_id).await?;
        // Re-check under the lock: the op may have moved on since the scan.
        let still: Option<Op> = sqlx::query_as(
            "SELECT o.* FROM workspace_ops o LEFT JOIN apalis.jobs j ON j.id = o.task_id
              WHERE o.id = $1 AND o.status IN ('queued', 'running')
                AND (o.task_id IS NULL OR j.id IS NULL OR j.status IN ('Done', 'Killed')
                     OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))
              FOR UPDATE OF o",
        )
        .bind(op_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(op) = still {
            let task = queue::enqueue(&mut tx, LIFECYCLE_QUEUE, &OpTask { v: 1, op_id: op.id }, None).await?;
            sqlx::query("UPDATE workspace_ops SET task_id = $2, updated_at = now() WHERE id = $1")
                .bind(op.id)
                .bind(task)
                .execute(&mut *tx)
                .await?;
            redelivered.push(op.id);
        }
        tx.commit().await?;
    }
    Ok(redelivered)
}

pub fn not_found(id: Uuid) -> Error {
    Error::NotFound(format!("op {id} not found"))
}
