//! The only way work enters apalis. Tasks are inserted with our own SQL inside the caller's
//! transaction, so a rolled-back request leaves no task and a committed one cannot lose
//! it. A task carries only the id of the row that holds the truth (an op, a sweep run).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

/// Lifecycle ops (provision, stop, restart). One queue per Docker engine would be named
/// here when workers stop sharing one engine; with one engine it is one queue.
pub const LIFECYCLE_QUEUE: &str = "lifecycle";
pub const SWEEP_QUEUE: &str = "sweeps";

/// apalis re-fetches a task whose handler returned an error without any delay, up to this
/// many times; our handlers record failures themselves and only return errors when the
/// database itself is unreachable.
const APALIS_MAX_ATTEMPTS: i32 = 5;

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

/// Inserts one apalis task in the caller's transaction and returns its id (a ULID, which
/// apalis requires). `delay` postpones it; workers' interval poll picks delayed tasks up.
pub async fn enqueue(
    conn: &mut PgConnection,
    queue: &str,
    payload: &impl Serialize,
    delay: Option<Duration>,
) -> Result<String> {
    let id = ulid::Ulid::new().to_string();
    let body = serde_json::to_vec(payload)?;
    let delay_ms = delay.map(|d| d.as_millis() as f64).unwrap_or(0.0);
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority)
         VALUES ($1, $2, $3, 'Pending', 0, $4, now() + $5 * interval '1 millisecond', 0)",
    )
    .bind(&id)
    .bind(queue)
    .bind(body)
    .bind(APALIS_MAX_ATTEMPTS)
    .bind(delay_ms)
    .execute(conn)
    .await?;
    Ok(id)
}

/// Stops a task that has not been fetched yet. A task already fetched is not affected; its
/// handler finds its row final and does nothing.
pub async fn cancel(conn: &mut PgConnection, task_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Killed', done_at = now(), last_result = '{\"Err\": \"canceled\"}'
          WHERE id = $1 AND status IN ('Pending', 'Failed')",
    )
    .bind(task_id)
    .execute(conn)
    .await?;
    Ok(())
}
