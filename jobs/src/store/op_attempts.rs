//! Each claim of an op, as operators read it. Rows are written by the statements that claim
//! and finish ops (`workspace_ops`), never on their own.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OpAttempt {
    pub attempt: i32,
    pub worker: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `succeeded`, `retrying`, `failed`, `canceled`, `lost`; `None` while it runs.
    pub outcome: Option<String>,
    pub error: Option<String>,
}

pub async fn of_op<'e>(db: impl PgExecutor<'e>, op_id: Uuid) -> Result<Vec<OpAttempt>> {
    Ok(sqlx::query_as(
        "SELECT attempt, worker, started_at, finished_at, outcome, error FROM op_attempts
          WHERE op_id = $1 ORDER BY attempt",
    )
    .bind(op_id)
    .fetch_all(db)
    .await?)
}
