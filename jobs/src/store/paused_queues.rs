//! Kinds of work an operator has paused: claims of a paused kind are refused and its work
//! waits in the queue until the kind is resumed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use crate::Result;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PausedQueue {
    pub kind: String,
    pub paused_at: DateTime<Utc>,
    pub paused_by: String,
}

pub async fn is_paused<'e>(db: impl PgExecutor<'e>, kind: &str) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM paused_queues WHERE kind = $1)")
        .bind(kind)
        .fetch_one(db)
        .await?)
}

/// Pauses `kind`; `None` when it already was (that earlier pause stays as it was).
pub async fn pause<'e>(db: impl PgExecutor<'e>, kind: &str, by: &str) -> Result<Option<PausedQueue>> {
    Ok(sqlx::query_as(
        "INSERT INTO paused_queues (kind, paused_by) VALUES ($1, $2) ON CONFLICT (kind) DO NOTHING
         RETURNING kind, paused_at, paused_by",
    )
    .bind(kind)
    .bind(by)
    .fetch_optional(db)
    .await?)
}

/// Resumes `kind`; returns the pause it lifted, if there was one.
pub async fn resume<'e>(db: impl PgExecutor<'e>, kind: &str) -> Result<Option<PausedQueue>> {
    Ok(sqlx::query_as("DELETE FROM paused_queues WHERE kind = $1 RETURNING kind, paused_at, paused_by")
        .bind(kind)
        .fetch_optional(db)
        .await?)
}

pub async fn list<'e>(db: impl PgExecutor<'e>) -> Result<Vec<PausedQueue>> {
    Ok(sqlx::query_as("SELECT kind, paused_at, paused_by FROM paused_queues ORDER BY kind").fetch_all(db).await?)
}
