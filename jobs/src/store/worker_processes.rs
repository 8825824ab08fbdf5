use sqlx::PgExecutor;

use crate::Result;

pub async fn heartbeat<'e>(
    db: impl PgExecutor<'e>,
    id: &str,
    hostname: &str,
    pid: u32,
    backends: &[&str],
    docker_engines: &[String],
) -> Result<()> {
    sqlx::query(
        "INSERT INTO worker_processes (id, hostname, pid, backends, docker_engines, version)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET last_seen = now(), backends = EXCLUDED.backends,
                                        docker_engines = EXCLUDED.docker_engines, version = EXCLUDED.version",
    )
    .bind(id)
    .bind(hostname)
    .bind(pid as i32)
    .bind(backends)
    .bind(docker_engines)
    .bind(env!("CARGO_PKG_VERSION"))
    .execute(db)
    .await?;
    Ok(())
}

pub async fn remove<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM worker_processes WHERE id = $1").bind(id).execute(db).await?;
    Ok(())
}

/// `None` when no worker is alive (requests still queue durably); otherwise whether any
/// live worker reaches a backend.
pub async fn any_live_backend<'e>(db: impl PgExecutor<'e>) -> Result<Option<bool>> {
    let row: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE cardinality(backends) > 0)
           FROM worker_processes WHERE last_seen > now() - interval '30 seconds'",
    )
    .fetch_one(db)
    .await?;
    Ok(if row.0 == 0 { None } else { Some(row.1 > 0) })
}

/// Live workers and the backends each advertises (`fleet` caches this).
pub async fn live<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(String, Vec<String>)>> {
    Ok(sqlx::query_as("SELECT id, backends FROM worker_processes WHERE last_seen > now() - interval '30 seconds'")
        .fetch_all(db)
        .await?)
}

/// Live workers, each with the backends and the Docker engines it advertises.
pub async fn live_with_engines<'e>(db: impl PgExecutor<'e>) -> Result<Vec<(String, Vec<String>, Vec<String>)>> {
    Ok(sqlx::query_as(
        "SELECT id, backends, docker_engines FROM worker_processes WHERE last_seen > now() - interval '30 seconds'",
    )
    .fetch_all(db)
    .await?)
}

/// Whether a live worker other than `me` serves Docker engine `engine`.
pub async fn others_serve_engine<'e>(db: impl PgExecutor<'e>, me: &str, engine: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM worker_processes
                         WHERE last_seen > now() - interval '30 seconds' AND id <> $1 AND $2 = ANY(docker_engines))",
    )
    .bind(me)
    .bind(engine)
    .fetch_one(db)
    .await?)
}

/// Whether a live worker other than `me` advertises `backend` (`None`: any backend).
pub async fn others_advertise<'e>(db: impl PgExecutor<'e>, me: &str, backend: Option<&str>) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM worker_processes
                         WHERE last_seen > now() - interval '30 seconds' AND id <> $1
                           AND CASE WHEN $2::text IS NULL THEN cardinality(backends) > 0 ELSE $2 = ANY(backends) END)",
    )
    .bind(me)
    .bind(backend)
    .fetch_one(db)
    .await?)
}

/// Forgets processes silent for an hour.
pub async fn purge_dead<'e>(db: impl PgExecutor<'e>) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM worker_processes WHERE last_seen < now() - interval '1 hour'")
        .execute(db)
        .await?
        .rows_affected())
}
