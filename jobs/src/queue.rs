//! The queues and the payloads of their tasks. A task carries only the id of the row that
//! holds the truth (an op, a sweep period); [`enqueue`] is the only way work enters apalis.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;
use crate::store::apalis;

/// Lifecycle ops (provision, stop, restart). One queue per Docker engine would be named
/// here when workers stop sharing one engine; with one engine it is one queue.
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
