use sqlx::PgExecutor;

use crate::Result;

/// The platform id created with the database, used when `PLATFORM_ID` is not set.
pub async fn id<'e>(db: impl PgExecutor<'e>) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT id FROM platform").fetch_one(db).await?)
}
