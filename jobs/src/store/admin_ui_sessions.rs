//! Sessions of the operators' dashboard: looked up by the sha256 of the cookie's session id.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    pub csrf_token: String,
    pub operator: String,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert<'e>(
    db: impl PgExecutor<'e>,
    id_hash: &[u8],
    csrf_token: &str,
    operator: &str,
    org_token_id: Option<Uuid>,
    ttl: Duration,
) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO admin_ui_sessions (id_hash, csrf_token, operator, org_token_id, expires_at)
         VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond')
         RETURNING expires_at",
    )
    .bind(id_hash)
    .bind(csrf_token)
    .bind(operator)
    .bind(org_token_id)
    .bind(ttl.as_millis() as f64)
    .fetch_one(db)
    .await?)
}

/// The session, unless it has expired or the org token it was opened with is revoked.
pub async fn live<'e>(db: impl PgExecutor<'e>, id_hash: &[u8]) -> Result<Option<Session>> {
    Ok(sqlx::query_as(
        "SELECT s.csrf_token, s.operator, s.expires_at
           FROM admin_ui_sessions s LEFT JOIN org_api_tokens t ON t.id = s.org_token_id
          WHERE s.id_hash = $1 AND s.expires_at > now()
            AND (s.org_token_id IS NULL OR t.revoked_at IS NULL)",
    )
    .bind(id_hash)
    .fetch_optional(db)
    .await?)
}

pub async fn delete<'e>(db: impl PgExecutor<'e>, id_hash: &[u8]) -> Result<()> {
    sqlx::query("DELETE FROM admin_ui_sessions WHERE id_hash = $1").bind(id_hash).execute(db).await?;
    Ok(())
}

/// Run at each login, so the table holds at most the sessions opened within one lifetime.
pub async fn purge_expired<'e>(db: impl PgExecutor<'e>) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM admin_ui_sessions WHERE expires_at <= now()").execute(db).await?.rows_affected())
}
