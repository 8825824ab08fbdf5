//! Every statement on apalis' own tables (`apalis.*`). Tasks are inserted with our SQL in
//! the caller's transaction, so a rolled-back request leaves no task and a committed one
//! cannot lose it. apalis only delivers; what a task is for is in our rows (ADR 0001).

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;

/// apalis re-fetches a task whose handler returned an error without any delay, up to this
/// many times; our handlers record failures themselves and only return errors when the
/// database itself is unreachable.
const MAX_ATTEMPTS: i32 = 5;

/// The head of an insert of a pending task into apalis' table, for a statement that inserts
/// a task beside the row it delivers. The values follow as `SELECT id, queue, body,
/// 'Pending', 0, max_attempts, run_at, 0`.
macro_rules! insert_task_into {
    () => {
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority)"
    };
}
pub(crate) use insert_task_into;

/// A task id as apalis requires it (a ULID).
pub fn new_task_id() -> String {
    ulid::Ulid::new().to_string()
}

/// A task to insert in the statement that writes the row it delivers.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub queue: &'static str,
    pub body: Vec<u8>,
    pub max_attempts: i32,
}

impl NewTask {
    pub fn new(queue: &'static str, payload: &impl serde::Serialize) -> Result<NewTask> {
        Ok(NewTask { id: new_task_id(), queue, body: serde_json::to_vec(payload)?, max_attempts: MAX_ATTEMPTS })
    }
}

/// Inserts a pending task on `queue` that becomes due after `delay`; returns its id (a
/// ULID, which apalis requires).
pub async fn insert_task(conn: &mut PgConnection, queue: &str, body: &[u8], delay: Option<Duration>) -> Result<String> {
    let ids = insert_tasks(conn, queue, &[body], delay).await?;
    ids.into_iter().next().ok_or_else(|| crate::Error::Internal("a task insert made no task".into()))
}

/// [`insert_task`] for several tasks in one statement; returns their ids in the order given.
pub async fn insert_tasks(
    conn: &mut PgConnection,
    queue: &str,
    bodies: &[&[u8]],
    delay: Option<Duration>,
) -> Result<Vec<String>> {
    let ids: Vec<String> = bodies.iter().map(|_| new_task_id()).collect();
    let delay_ms = delay.map(|d| d.as_millis() as f64).unwrap_or(0.0);
    sqlx::query(concat!(
        insert_task_into!(),
        " SELECT t.id, $2, t.job, 'Pending', 0, $4, now() + $5 * interval '1 millisecond', 0
           FROM unnest($1::text[], $3::bytea[]) AS t(id, job)"
    ))
    .bind(&ids)
    .bind(queue)
    .bind(bodies)
    .bind(MAX_ATTEMPTS)
    .bind(delay_ms)
    .execute(conn)
    .await?;
    Ok(ids)
}

/// Makes task `new` the deliverer of whatever row task `old` was delivering (an op, a sweep
/// period, an inbox drain), so a copy of a task can take its place.
pub async fn hand_over(conn: &mut PgConnection, queue: &str, old: &str, new: &str) -> Result<u64> {
    let sql = match queue {
        crate::queue::LIFECYCLE_QUEUE => "UPDATE workspace_ops SET task_id = $2, updated_at = now() WHERE task_id = $1",
        crate::queue::SWEEP_QUEUE => "UPDATE sweep_runs SET task_id = $2 WHERE task_id = $1",
        crate::queue::INBOX_QUEUE => "UPDATE inbox_heads SET drain_task_id = $2 WHERE drain_task_id = $1",
        _ => return Ok(0),
    };
    Ok(sqlx::query(sql).bind(old).bind(new).execute(conn).await?.rows_affected())
}

/// Stops a task that has not been fetched yet. A task already fetched is not affected; its
/// handler finds its row final and does nothing.
pub async fn kill_task(conn: &mut PgConnection, task_id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Killed', done_at = now(), last_result = '{\"Err\": \"canceled\"}'
          WHERE id = $1 AND status IN ('Pending', 'Failed')",
    )
    .bind(task_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A head op is stranded when no live task delivers it: it has none, its task row is gone,
/// or the task ended (done, killed, out of apalis attempts) without finishing the op.
macro_rules! stranded {
    () => {
        "o.status IN ('queued', 'running')
         AND (o.task_id IS NULL OR j.id IS NULL OR j.status IN ('Done', 'Killed')
              OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))"
    };
}

/// `(op, workspace)` of head ops that are stranded and unchanged for `older_than`.
pub async fn stranded_ops<'e>(db: impl PgExecutor<'e>, older_than: Duration) -> Result<Vec<(Uuid, Uuid)>> {
    Ok(sqlx::query_as(concat!(
        "SELECT o.id, o.workspace_id FROM workspace_ops o
           LEFT JOIN apalis.jobs j ON j.id = o.task_id
          WHERE ",
        stranded!(),
        " AND o.updated_at < now() - $1 * interval '1 millisecond'
            AND NOT EXISTS (SELECT 1 FROM workspace_ops p
                             WHERE p.workspace_id = o.workspace_id AND p.seq < o.seq AND p.status IN ('queued', 'running'))"
    ))
    .bind(older_than.as_millis() as f64)
    .fetch_all(db)
    .await?)
}

/// Locks op `id` if it is still stranded (the caller holds its workspace's row lock).
pub async fn lock_if_stranded(conn: &mut PgConnection, id: Uuid) -> Result<bool> {
    let found: Option<Uuid> = sqlx::query_scalar(concat!(
        "SELECT o.id FROM workspace_ops o LEFT JOIN apalis.jobs j ON j.id = o.task_id WHERE o.id = $1 AND ",
        stranded!(),
        " FOR UPDATE OF o"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// Binds $1, the lifecycle queue. Its `WHERE` matches `apalis_jobs_running_done_at_idx`,
/// so the check reads the few running tasks, not every retained one.
pub const KILL_PANIC_RESIDUE: &str = "UPDATE apalis.jobs j SET status = 'Killed'
  WHERE j.status = 'Running' AND j.done_at IS NOT NULL AND j.done_at < now() - interval '10 minutes'
    AND NOT EXISTS (
        SELECT 1 FROM workspace_ops o
         WHERE o.status = 'running' AND o.lease_until > clock_timestamp()
           AND (o.task_id = j.id
                OR (j.job_type = $1 AND o.id::text = convert_from(j.job, 'UTF8')::jsonb ->> 'op_id')))";

/// A row left `Running` with `done_at` set may be apalis' residue of a panic, but apalis
/// never clears `done_at` when it fetches a task again, so the column alone cannot tell a
/// residue from a task being worked on. The op's lease can: a task is killed only when no
/// op it delivers is running under a lease that has not expired.
pub async fn kill_panic_residue<'e>(db: impl PgExecutor<'e>, lifecycle_queue: &str) -> Result<u64> {
    Ok(sqlx::query(KILL_PANIC_RESIDUE).bind(lifecycle_queue).execute(db).await?.rows_affected())
}

/// Deletes up to `batch` finished tasks done more than `older_than` ago; returns how many.
pub async fn purge_finished<'e>(db: impl PgExecutor<'e>, older_than: Duration, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM apalis.jobs WHERE id IN (
             SELECT id FROM apalis.jobs
              WHERE status IN ('Done', 'Killed', 'Failed') AND (status <> 'Failed' OR attempts >= max_attempts)
                AND done_at < now() - $1 * interval '1 millisecond'
              LIMIT $2)",
    )
    .bind(older_than.as_millis() as f64)
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}

/// Dead apalis workers, once no task row points at them any more.
pub async fn purge_dead_workers<'e>(db: impl PgExecutor<'e>) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM apalis.workers w WHERE w.last_seen < now() - interval '1 hour'
            AND NOT EXISTS (SELECT 1 FROM apalis.jobs j WHERE j.lock_by = w.id)",
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// What `worker bench` needs to drive apalis' own fetch directly.
pub mod bench {
    use super::*;

    /// Registers `worker` on `queue` and empties the queue.
    pub async fn reset_queue<'e, E: PgExecutor<'e> + Copy>(db: E, worker: &str, queue: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen) VALUES ($1, $2, $1, now())
             ON CONFLICT (id) DO UPDATE SET last_seen = now()",
        )
        .bind(worker)
        .bind(queue)
        .execute(db)
        .await?;
        sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1").bind(queue).execute(db).await?;
        Ok(())
    }

    /// Inserts `rows` tasks finished two days ago, then refreshes the planner's statistics.
    pub async fn insert_finished<'e, E: PgExecutor<'e> + Copy>(
        db: E,
        worker: &str,
        queue: &str,
        rows: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at, lock_by)
             SELECT apalis.generate_ulid(), $1, '\\x7b7d', 'Done', 1, 5, now() - interval '2 days', now() - interval '2 days', $3
               FROM generate_series(1, $2)",
        )
        .bind(queue)
        .bind(rows)
        .bind(worker)
        .execute(db)
        .await?;
        analyze(db).await
    }

    pub async fn analyze<'e>(db: impl PgExecutor<'e>) -> Result<()> {
        sqlx::query("ANALYZE apalis.jobs").execute(db).await?;
        Ok(())
    }

    /// apalis' own fetch (`apalis.get_jobs`) of up to one task; returns the ids it claimed.
    pub async fn fetch_one<'e>(db: impl PgExecutor<'e>, worker: &str, queue: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM apalis.get_jobs($1, $2, 1)")
            .bind(worker)
            .bind(queue)
            .fetch_all(db)
            .await?)
    }

    pub async fn mark_done<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<()> {
        sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now() WHERE id = $1")
            .bind(id)
            .execute(db)
            .await?;
        Ok(())
    }

    /// Inserts `rows` tasks due now on `queue`, in one statement.
    pub async fn insert_pending<'e>(db: impl PgExecutor<'e>, queue: &str, rows: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at)
             SELECT apalis.generate_ulid(), $1, '\\x7b7d', 'Pending', 0, 5, now()
               FROM generate_series(1, $2)",
        )
        .bind(queue)
        .bind(rows)
        .execute(db)
        .await?;
        Ok(())
    }

    /// How many of `queue`'s tasks are done, and the seconds from the first lock to the
    /// last completion (apalis' own timestamps).
    pub async fn done_span<'e>(db: impl PgExecutor<'e>, queue: &str) -> Result<(i64, Option<f64>)> {
        Ok(sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'Done'),
                    extract(epoch FROM max(done_at) - min(lock_at))::float8
               FROM apalis.jobs WHERE job_type = $1",
        )
        .bind(queue)
        .fetch_one(db)
        .await?)
    }
}
