//! Finished apalis tasks, finished ops, events, activity rows and sweep runs older than their retention are
//! deleted in bounded batches, each its own short statement, so the tables stay small (and
//! apalis' fetch fast) without ever blocking the queue.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;

use crate::config::Env;
use crate::store::{activity_logs, apalis, structure_events, sweep_runs, worker_processes, workspace_ops};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `SWEEP_RETENTION_SECONDS`.
    pub every: Duration,
    /// `RETENTION_JOBS_SECONDS`: finished apalis tasks and sweep runs.
    pub jobs: Duration,
    /// `RETENTION_OPS_SECONDS`: finished ops.
    pub ops: Duration,
    /// `RETENTION_EVENTS_SECONDS`.
    pub events: Duration,
    /// `RETENTION_ACTIVITY_SECONDS`: activity rows (an item still to be pushed stays).
    pub activity: Duration,
    /// `RETENTION_BATCH`: rows per delete statement, small enough never to hold locks the
    /// queue's fetch waits on for long.
    pub batch: i64,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings> {
        let batch: i64 = env.num("RETENTION_BATCH", 1000)?;
        if !(1..=100_000).contains(&batch) {
            return Err(Error::Config("RETENTION_BATCH must be between 1 and 100000".into()));
        }
        Ok(Settings {
            every: env.secs("SWEEP_RETENTION_SECONDS", 3600)?,
            jobs: env.secs("RETENTION_JOBS_SECONDS", 24 * 3600)?,
            ops: env.secs("RETENTION_OPS_SECONDS", 30 * 24 * 3600)?,
            events: env.secs("RETENTION_EVENTS_SECONDS", 30 * 24 * 3600)?,
            activity: env.secs("RETENTION_ACTIVITY_SECONDS", 7 * 24 * 3600)?,
            batch,
        })
    }
}

pub struct Purged {
    pub jobs: u64,
    pub batches: u64,
    pub ops: u64,
    pub events: u64,
    pub activity: u64,
}

impl Purged {
    /// Whether the pass deleted anything.
    pub fn acted(&self) -> bool {
        self.jobs + self.ops + self.events + self.activity > 0
    }
}

impl std::fmt::Display for Purged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "deleted {} task(s) in {} batch(es), {} op(s), {} event(s), {} activity row(s)",
            self.jobs, self.batches, self.ops, self.events, self.activity
        )
    }
}

/// Runs `delete` (one batch) until a batch comes back short; returns (rows, batches).
pub(crate) async fn in_batches<F, Fut>(batch: i64, mut delete: F) -> Result<(u64, u64)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    let (mut total, mut batches) = (0u64, 0u64);
    loop {
        let n = delete().await?;
        total += n;
        batches += 1;
        if n < batch as u64 {
            return Ok((total, batches));
        }
        // Let the queue's own statements in between batches.
        tokio::task::yield_now().await;
    }
}

pub async fn run(pool: &PgPool, s: &Settings) -> Result<Purged> {
    let batch = s.batch;
    apalis::kill_panic_residue(pool, crate::queue::LIFECYCLE_QUEUE).await?;
    let (jobs, batches) = in_batches(batch, || apalis::purge_finished(pool, s.jobs, batch)).await?;
    let (ops, _) = in_batches(batch, || workspace_ops::purge_finished(pool, s.ops, batch)).await?;
    let (events, _) = in_batches(batch, || structure_events::purge_older(pool, s.events, batch)).await?;
    let (activity, _) = in_batches(batch, || activity_logs::purge_older(pool, s.activity, batch)).await?;
    in_batches(batch, || sweep_runs::purge_older(pool, s.jobs, batch)).await?;
    apalis::purge_dead_workers(pool).await?;
    worker_processes::purge_dead(pool).await?;
    Ok(Purged { jobs, batches, ops, events, activity })
}
