//! The worker processes as operators see them: alive or recently dead, and what each runs.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgExecutor;

use crate::Result;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub version: Option<String>,
    pub backends: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Seen within the liveness window every other decision uses (30 s).
    pub alive: bool,
    /// The ops it holds a claim on now: `[{id, kind, workspace_id, attempt, started_at}]`.
    pub running: Value,
}

/// Every process heard from within the last hour (older ones are purged), live ones first.
pub async fn list<'e>(db: impl PgExecutor<'e>) -> Result<Vec<WorkerInfo>> {
    Ok(sqlx::query_as(
        "SELECT w.id, w.hostname AS host, w.pid, w.version, w.backends, w.started_at, w.last_seen,
                w.last_seen > now() - interval '30 seconds' AS alive,
                coalesce((SELECT json_agg(json_build_object('id', o.id, 'kind', o.kind, 'workspace_id', o.workspace_id,
                                                            'attempt', o.attempts, 'started_at', o.started_at)
                                          ORDER BY o.seq)
                            FROM workspace_ops o WHERE o.status = 'running' AND o.claimed_by = w.id), '[]'::json)::jsonb
                    AS running
           FROM worker_processes w ORDER BY alive DESC, w.started_at DESC, w.id",
    )
    .fetch_all(db)
    .await?)
}
