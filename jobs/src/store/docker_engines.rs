//! The Docker engines workers serve: their load, for spreading new workspaces, and their
//! retirement.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;

/// Every engine a live worker serves, with its non-removed workspaces and whether it is
/// retired.
pub async fn live_load<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(String, i64, bool)>> {
    Ok(sqlx::query_as(
        "SELECT e.engine,
                (SELECT count(*) FROM workspaces w WHERE w.docker_engine = e.engine AND w.status <> 'removed'),
                EXISTS (SELECT 1 FROM docker_engines d WHERE d.id = e.engine AND d.retired_at IS NOT NULL)
           FROM (SELECT DISTINCT unnest(docker_engines) AS engine FROM worker_processes
                  WHERE last_seen > now() - interval '30 seconds') e
          ORDER BY e.engine",
    )
    .fetch_all(db)
    .await?)
}

/// Marks the engine retired (the first retirement's time and author are kept); returns when.
pub async fn retire(conn: &mut PgConnection, id: &str, by: &str) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO docker_engines (id, retired_at, retired_by) VALUES ($1, now(), $2)
         ON CONFLICT (id) DO UPDATE
            SET retired_at = coalesce(docker_engines.retired_at, now()),
                retired_by = CASE WHEN docker_engines.retired_at IS NULL THEN $2 ELSE docker_engines.retired_by END
         RETURNING retired_at",
    )
    .bind(id)
    .bind(by)
    .fetch_one(conn)
    .await?)
}

/// Locks the workspaces recorded on the engine, in id order so that two retirements of
/// one engine queue behind each other instead of deadlocking; returns their ids.
pub async fn lock_workspaces(conn: &mut PgConnection, engine: &str) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar("SELECT id FROM workspaces WHERE docker_engine = $1 ORDER BY id FOR UPDATE")
        .bind(engine)
        .fetch_all(conn)
        .await?)
}

/// Ends every unfinished op of a workspace whose engine is gone: stops succeed with
/// `stopped` (nothing is left to stop), starts are canceled with `why`. A worker still
/// running one is fenced by its lease. Returns the ops' ids.
pub async fn resolve_ops(conn: &mut PgConnection, workspace_id: Uuid, stopped: &str, why: &str) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "UPDATE workspace_ops
            SET status = CASE WHEN kind = 'stop' THEN 'succeeded' ELSE 'canceled' END,
                result = CASE WHEN kind = 'stop' THEN $2 ELSE result END,
                last_error = CASE WHEN kind = 'stop' THEN last_error ELSE $3 END,
                task_id = NULL, finished_at = now(), updated_at = now()
          WHERE workspace_id = $1 AND status IN ('queued', 'running')
          RETURNING id",
    )
    .bind(workspace_id)
    .bind(stopped)
    .bind(why)
    .fetch_all(conn)
    .await?)
}

/// Forgets the instance of a workspace whose engine is gone: nothing of it can be reached.
pub async fn forget_instance(conn: &mut PgConnection, workspace_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE workspaces SET backend = NULL, instance_ref = NULL, docker_engine = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(workspace_id)
    .execute(conn)
    .await?;
    Ok(())
}
