//! The retention sweep: finished apalis tasks, finished ops, events and sweep runs older
//! than their retention are deleted in bounded batches, each its own short statement, so
//! the tables stay small (and apalis' fetch fast) without ever blocking the queue.

use std::time::Duration;

use sqlx::PgPool;

use crate::Result;
use crate::kinds::Runtime;

/// Deletes in batches of `batch` until a batch comes back short; returns (rows, batches).
async fn in_batches(pool: &PgPool, sql: &'static str, older_than: Duration, batch: i64) -> Result<(u64, u64)> {
    let (mut total, mut batches) = (0u64, 0u64);
    loop {
        let n = sqlx::query(sql).bind(older_than.as_millis() as f64).bind(batch).execute(pool).await?.rows_affected();
        total += n;
        batches += 1;
        if n < batch as u64 {
            return Ok((total, batches));
        }
        // Let the queue's own statements in between batches.
        tokio::task::yield_now().await;
    }
}

pub struct Purged {
    pub jobs: u64,
    pub batches: u64,
    pub ops: u64,
    pub events: u64,
}

pub async fn purge(pool: &PgPool, cfg: &crate::config::Config) -> Result<Purged> {
    let batch = cfg.retention_batch;
    // A row left Running with done_at set is apalis' residue of a panic; it is finished.
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Killed' WHERE status = 'Running' AND done_at IS NOT NULL
            AND done_at < now() - interval '10 minutes'",
    )
    .execute(pool)
    .await?;
    let (jobs, batches) = in_batches(
        pool,
        "DELETE FROM apalis.jobs WHERE id IN (
             SELECT id FROM apalis.jobs
              WHERE status IN ('Done', 'Killed', 'Failed') AND (status <> 'Failed' OR attempts >= max_attempts)
                AND done_at < now() - $1 * interval '1 millisecond'
              LIMIT $2)",
        cfg.retention_jobs,
        batch,
    )
    .await?;
    let mut deleted = [0u64; 3];
    let tables: [(&'static str, Duration); 3] = [
        (
            "DELETE FROM workspace_ops WHERE id IN (
                 SELECT id FROM workspace_ops WHERE finished_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
            cfg.retention_ops,
        ),
        (
            "DELETE FROM structure_events WHERE id IN (
                 SELECT id FROM structure_events WHERE created_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
            cfg.retention_events,
        ),
        (
            "DELETE FROM sweep_runs WHERE (sweep, period_start) IN (
                 SELECT sweep, period_start FROM sweep_runs
                  WHERE claimed_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
            cfg.retention_jobs,
        ),
    ];
    for (n, (sql, keep)) in deleted.iter_mut().zip(tables) {
        *n = in_batches(pool, sql, keep, batch).await?.0;
    }
    let [ops, events, _] = deleted;
    // Dead apalis workers, once no task row points at them any more.
    sqlx::query(
        "DELETE FROM apalis.workers w WHERE w.last_seen < now() - interval '1 hour'
            AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)",
    )
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM worker_processes WHERE last_seen < now() - interval '1 hour'").execute(pool).await?;
    Ok(Purged { jobs, batches, ops, events })
}

pub async fn run(rt: &Runtime) -> Result<String> {
    let p = purge(&rt.pool, &rt.config).await?;
    Ok(format!("deleted {} task(s) in {} batch(es), {} op(s), {} event(s)", p.jobs, p.batches, p.ops, p.events))
}
