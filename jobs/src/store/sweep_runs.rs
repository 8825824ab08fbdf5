use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::Result;

/// Claims the current period of `sweep` (by the database clock, so workers' clocks do not
/// matter): `Some(period_start)` when this caller inserted its row, `None` when another did.
pub async fn claim(conn: &mut PgConnection, sweep: &str, period: Duration) -> Result<Option<DateTime<Utc>>> {
    let period_start: DateTime<Utc> =
        sqlx::query_scalar("SELECT to_timestamp(floor(extract(epoch FROM now()) * 1000 / $1) * $1 / 1000)")
            .bind(period.as_millis() as f64)
            .fetch_one(&mut *conn)
            .await?;
    let won = sqlx::query("INSERT INTO sweep_runs (sweep, period_start) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(sweep)
        .bind(period_start)
        .execute(&mut *conn)
        .await?
        .rows_affected()
        == 1;
    Ok(won.then_some(period_start))
}

/// Takes the lock that keeps two runs of `sweep` from overlapping, for as long as the
/// caller's transaction lasts; `false` when another run holds it. Released at commit,
/// rollback, or when the connection dies with its process.
pub async fn try_lock(conn: &mut PgConnection, sweep: &str) -> Result<bool> {
    // The guard idles for the whole run by design.
    super::allow_idle(conn).await?;
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('sweep_runs:' || $1))")
        .bind(sweep)
        .fetch_one(conn)
        .await?)
}

pub async fn set_task(conn: &mut PgConnection, sweep: &str, period_start: DateTime<Utc>, task_id: &str) -> Result<()> {
    sqlx::query("UPDATE sweep_runs SET task_id = $3 WHERE sweep = $1 AND period_start = $2")
        .bind(sweep)
        .bind(period_start)
        .bind(task_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn mark_started<'e>(db: impl PgExecutor<'e>, sweep: &str, period_start: DateTime<Utc>) -> Result<()> {
    sqlx::query("UPDATE sweep_runs SET started_at = now() WHERE sweep = $1 AND period_start = $2")
        .bind(sweep)
        .bind(period_start)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn mark_finished<'e>(
    db: impl PgExecutor<'e>,
    sweep: &str,
    period_start: DateTime<Utc>,
    outcome: &str,
) -> Result<()> {
    sqlx::query("UPDATE sweep_runs SET finished_at = now(), outcome = $3 WHERE sweep = $1 AND period_start = $2")
        .bind(sweep)
        .bind(period_start)
        .bind(outcome)
        .execute(db)
        .await?;
    Ok(())
}

/// Deletes up to `batch` runs claimed more than `older_than` ago; returns how many.
pub async fn purge_older<'e>(db: impl PgExecutor<'e>, older_than: Duration, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM sweep_runs WHERE (sweep, period_start) IN (
             SELECT sweep, period_start FROM sweep_runs
              WHERE claimed_at < now() - $1 * interval '1 millisecond' LIMIT $2)",
    )
    .bind(older_than.as_millis() as f64)
    .bind(batch)
    .execute(db)
    .await?
    .rows_affected())
}
