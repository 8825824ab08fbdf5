//! All SQL outside the migrations lives here: one module per table, and `apalis` for the
//! queue's own tables. Functions take an executor or a connection so that callers choose
//! the transaction. Nothing here decides policy, with one exception kept here on purpose:
//! [`workspaces::set_status`] refuses what the status machine forbids, because it is the
//! only way a status is ever written.

pub mod activity_logs;
pub mod admin_ui_sessions;
pub mod apalis;
pub mod delegations;
pub mod docker_engines;
pub mod gauges;
pub mod memories;
pub mod memory_audit;
pub mod op_attempts;
pub mod org_api_tokens;
pub mod paused_queues;
pub mod pending_uploads;
pub mod platform;
pub mod structure_events;
pub mod sweep_runs;
pub mod worker_processes;
pub mod workspace_bootstraps;
pub mod workspace_ops;
pub mod workspace_tokens;
pub mod workspaces;

use sqlx::{PgConnection, PgExecutor};

use crate::Result;

/// `pg_notify` inside the caller's transaction: Postgres delivers it at commit, and never
/// for a transaction that rolls back.
pub async fn notify(conn: &mut PgConnection, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(conn).await?;
    Ok(())
}

/// Lifts the pool's idle-in-transaction limit for the rest of the caller's transaction, for
/// one that holds a lock while it waits on something other than the database (a sweep's
/// overlap guard, an orphan reap's backend call).
pub async fn allow_idle(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0").execute(conn).await?;
    Ok(())
}

/// Serialises, until the caller's transaction ends, everyone acting on one backend
/// instance: sweeps that judge instances with no workspace row have no row lock to share.
pub async fn lock_instance(conn: &mut PgConnection, instance_ref: &str) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('instance:' || $1, 0))")
        .bind(instance_ref)
        .execute(conn)
        .await?;
    Ok(())
}

/// A round trip to the database, for health checks.
pub async fn ping<'e>(db: impl PgExecutor<'e>) -> Result<()> {
    sqlx::query("SELECT 1").execute(db).await?;
    Ok(())
}
