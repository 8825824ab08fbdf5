//! The queues and the payloads of their tasks. A task carries only the id of the row that
//! holds the truth (an op, a sweep period); [`enqueue`] is the only way work enters apalis.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::apalis;
use crate::{Result, events};

/// The payload version this build writes and reads (`v` in every task). A change a worker
/// of the previous version could not run gets a new version; see `docs/deploy.md`.
pub const PAYLOAD_VERSION: u32 = 1;

/// How long a task left for a newer worker waits before it is offered again.
pub const NEWER_WORKER_DELAY: Duration = Duration::from_secs(5);

/// The version a payload declares, read without knowing the rest of it.
pub fn payload_version(payload: &serde_json::Value) -> Option<u64> {
    payload.get("v").and_then(serde_json::Value::as_u64)
}

/// Lifecycle ops (provision, stop, restart). Workers on several Docker engines share it: an
/// op reaches the right engine through the claim, which reads the workspace's recorded
/// engine (`ops::claim`), so no queue per engine is needed.
pub const LIFECYCLE_QUEUE: &str = "lifecycle";
pub const SWEEP_QUEUE: &str = "sweeps";
/// InboxPush drains: one task at a time per push-mode workspace delivers its pending items.
pub const INBOX_QUEUE: &str = "inbox";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpTask {
    pub v: u32,
    pub op_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SweepTask {
    pub v: u32,
    pub sweep: String,
    pub period_start: chrono::DateTime<chrono::Utc>,
}

/// Drains one workspace's pending inbox items, in order (`kinds::inbox_push`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboxTask {
    pub v: u32,
    pub workspace_id: Uuid,
}

impl InboxTask {
    /// The drain of `workspace_id`, in this build's payload version.
    pub fn new(workspace_id: Uuid) -> InboxTask {
        InboxTask { v: PAYLOAD_VERSION, workspace_id }
    }
}

/// Inserts one task in the caller's transaction and returns its id. `delay` postpones it;
/// workers' interval poll picks delayed tasks up.
pub async fn enqueue(
    conn: &mut PgConnection,
    queue: &str,
    payload: &impl Serialize,
    delay: Option<Duration>,
) -> Result<String> {
    let body = serde_json::to_vec(payload)?;
    apalis::insert_task(conn, queue, &body, delay).await
}

/// [`enqueue`] for several tasks due now, in one statement; ids in the order given.
pub async fn enqueue_many(conn: &mut PgConnection, queue: &str, payloads: &[impl Serialize]) -> Result<Vec<String>> {
    let bodies = payloads.iter().map(serde_json::to_vec).collect::<std::result::Result<Vec<_>, _>>()?;
    let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
    apalis::insert_tasks(conn, queue, &bodies, None).await
}

/// Leaves a task whose payload version `version` this worker does not know for a worker
/// that does (a newer build, during a rolling deploy): a copy is enqueued after `delay` and
/// takes over whatever the task delivered, and the refusal is recorded as an event. The
/// task itself then ends as done; nothing is dropped. Returns the copy's id.
#[allow(clippy::too_many_arguments)]
pub async fn leave_for_newer(
    pool: &sqlx::PgPool,
    queue: &str,
    task_id: &str,
    payload: &serde_json::Value,
    version: u64,
    known: u32,
    worker: &str,
    delay: Duration,
) -> Result<String> {
    let mut tx = crate::db::begin(pool).await?;
    let copy = enqueue(&mut tx, queue, payload, Some(delay)).await?;
    apalis::hand_over(&mut tx, queue, task_id, &copy).await?;
    events::record(
        &mut tx,
        events::TASK_VERSION_UNKNOWN,
        None,
        serde_json::json!({"queue": queue, "task_id": task_id, "requeued_as": copy, "version": version,
            "known_up_to": known, "worker": worker}),
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(queue, job_id = task_id, version, known_up_to = known, requeued_as = %copy,
        "task payload version unknown to this worker; left queued for a worker that knows it");
    Ok(copy)
}
