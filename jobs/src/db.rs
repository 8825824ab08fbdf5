use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::Result;

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// apalis' own schema first (it lives in `apalis.*` with its own history table), then ours.
/// Both migrators take an advisory lock, so concurrent starts are safe.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    apalis_postgres::PostgresStorage::setup(pool).await.map_err(|e| crate::Error::Apalis(e.to_string()))?;
    sqlx::migrate!("../migrations").run(pool).await?;
    Ok(())
}
