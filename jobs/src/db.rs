use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::Result;

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    connect_with(url, max_connections, None).await
}

/// With `idle_in_transaction`, the server ends any session of this pool that sits in an open
/// transaction for longer: a worker frozen (SIGSTOP, a stalled VM) while it holds a workspace
/// row lock would otherwise keep every other worker off that workspace, lease or no lease.
/// Transactions that may legitimately wait on something else lift the limit for themselves
/// ([`crate::store::allow_idle`]).
pub async fn connect_with(url: &str, max_connections: u32, idle_in_transaction: Option<Duration>) -> Result<PgPool> {
    let mut options: PgConnectOptions = url.parse()?;
    if let Some(limit) = idle_in_transaction {
        options = options.options([("idle_in_transaction_session_timeout", format!("{}ms", limit.as_millis()))]);
    }
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// Begins a transaction on a connection of `pool`, even if the caller is dropped meanwhile.
///
/// sqlx's `Pool::begin` sends BEGIN and counts the transaction only once the answer is in.
/// A future dropped in between (an HTTP client that hung up, a timeout, a `select!`) returns
/// the connection to the pool inside a transaction that nothing rolls back: every later
/// statement of that connection runs in it, holds its locks and never commits. Here the
/// BEGIN runs in a task of its own, which a dropped caller does not cancel; a transaction
/// nobody takes is dropped with the task's output, and dropping it rolls it back.
#[allow(clippy::disallowed_methods)]
pub async fn begin(pool: &PgPool) -> sqlx::Result<Transaction<'static, Postgres>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await }).await.map_err(|_| sqlx::Error::WorkerCrashed)?
}

/// apalis' own schema first (it lives in `apalis.*` with its own history table), then ours.
/// Both migrators take an advisory lock, so concurrent starts are safe.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    apalis_postgres::PostgresStorage::setup(pool).await.map_err(|e| crate::Error::Apalis(e.to_string()))?;
    sqlx::migrate!("../migrations").run(pool).await?;
    Ok(())
}
