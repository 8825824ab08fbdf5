//! The cheap aggregate reads behind the sampled gauges (`crate::metrics::sample`).

use sqlx::PgExecutor;

use crate::Result;

/// (kind, jobs waiting, seconds the oldest due one has waited) per job kind that has any.
/// Ops count while `queued` (including those behind their workspace's head); inbox drains
/// and sweep runs while their task is pending. Waiting is measured from when a job became
/// due, so a retry's backoff is not counted as waiting.
pub async fn queues<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(String, i64, f64)>> {
    Ok(sqlx::query_as(
        "SELECT kind, count(*)::bigint,
                COALESCE(EXTRACT(EPOCH FROM max(GREATEST(now() - COALESCE(next_attempt_at, created_at),
                                                         interval '0'))), 0)::float8
           FROM workspace_ops WHERE status = 'queued' GROUP BY kind
         UNION ALL
         SELECT CASE job_type WHEN 'inbox' THEN 'inbox_push' ELSE 'sweep' END, count(*)::bigint,
                COALESCE(EXTRACT(EPOCH FROM max(GREATEST(now() - run_at, interval '0'))), 0)::float8
           FROM apalis.jobs WHERE job_type IN ('inbox', 'sweeps') AND status = 'Pending'
          GROUP BY job_type",
    )
    .fetch_all(db)
    .await?)
}

/// (status, count) for every status that has workspaces.
pub async fn workspaces_by_status<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as("SELECT status, count(*)::bigint FROM workspaces GROUP BY status").fetch_all(db).await?)
}
