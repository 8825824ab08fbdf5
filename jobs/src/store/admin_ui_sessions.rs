//! Sessions of the operators' dashboard: looked up by the sha256 of the cookie's session id.

use std::time::Duration;

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    pub csrf_token: String,
    pub operator: String,
}

/// What a session was opened with, and so what ends it besides logout and expiry.
pub enum OpenedWith<'a> {
    /// The sha256 of the admin token: a changed `ADMIN_TOKEN` ends the session.
    AdminToken(&'a [u8]),
    /// The org API token: revoking it ends the session.
    OrgToken(Uuid),
}

pub async fn insert<'e>(
    db: impl PgExecutor<'e>,
    id_hash: &[u8],
    csrf_token: &str,
    operator: &str,
    opened_with: OpenedWith<'_>,
    ttl: Duration,
) -> Result<()> {
    let (org_token_id, admin_token_hash) = match opened_with {
        OpenedWith::AdminToken(hash) => (None, Some(hash)),
        OpenedWith::OrgToken(id) => (Some(id), None),
    };
    sqlx::query(
        "INSERT INTO admin_ui_sessions (id_hash, csrf_token, operator, org_token_id, admin_token_hash, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond')",
    )
    .bind(id_hash)
    .bind(csrf_token)
    .bind(operator)
    .bind(org_token_id)
    .bind(admin_token_hash)
    .bind(ttl.as_millis() as f64)
    .execute(db)
    .await?;
    Ok(())
}

/// The session, unless it has expired, or what it was opened with no longer opens the
/// dashboard: the org token is revoked, or the admin token is no longer `admin_token_hash`.
pub async fn live<'e>(db: impl PgExecutor<'e>, id_hash: &[u8], admin_token_hash: &[u8]) -> Result<Option<Session>> {
    Ok(sqlx::query_as(
        "SELECT s.csrf_token, s.operator
           FROM admin_ui_sessions s LEFT JOIN org_api_tokens t ON t.id = s.org_token_id
          WHERE s.id_hash = $1 AND s.expires_at > now()
            AND (s.admin_token_hash = $2 OR (s.org_token_id IS NOT NULL AND t.revoked_at IS NULL))",
    )
    .bind(id_hash)
    .bind(admin_token_hash)
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
