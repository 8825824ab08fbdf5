use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::Result;
use crate::tokens;

/// A token as it is listed: never its hash, never its plaintext.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct OrgApiToken {
    pub id: Uuid,
    pub name: Option<String>,
    pub prefix: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Who a live org token is, once validated.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrgTokenRef {
    pub id: Uuid,
    pub prefix: String,
}

/// Mints a token; the plaintext returned is the only copy that will ever exist.
pub async fn mint<'e>(db: impl PgExecutor<'e>, name: Option<&str>, created_by: &str) -> Result<(OrgApiToken, String)> {
    let t = tokens::generate();
    let row = sqlx::query_as::<_, OrgApiToken>(
        "INSERT INTO org_api_tokens (id, token_hash, prefix, name, created_by) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, prefix, created_by, created_at, last_used_at",
    )
    .bind(Uuid::new_v4())
    .bind(&t.hash)
    .bind(&t.prefix)
    .bind(name)
    .bind(created_by)
    .fetch_one(db)
    .await?;
    Ok((row, t.plaintext))
}

/// Live tokens, oldest first.
pub async fn list_live<'e>(db: impl PgExecutor<'e>) -> Result<Vec<OrgApiToken>> {
    Ok(sqlx::query_as::<_, OrgApiToken>(
        "SELECT id, name, prefix, created_by, created_at, last_used_at FROM org_api_tokens
          WHERE revoked_at IS NULL ORDER BY created_at, id",
    )
    .fetch_all(db)
    .await?)
}

/// Revokes a live token; false when there is no live token with this id.
pub async fn revoke<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<bool> {
    Ok(sqlx::query("UPDATE org_api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(db)
        .await?
        .rows_affected()
        == 1)
}

/// The live token `plaintext` is, if any. `last_used_at` is written at most once a minute
/// per token: an integration polling the api should not cost a row update per request.
pub async fn validate<'e>(db: impl PgExecutor<'e>, plaintext: &str) -> Result<Option<OrgTokenRef>> {
    Ok(sqlx::query_as::<_, OrgTokenRef>(
        "WITH found AS (
             SELECT id, prefix, last_used_at FROM org_api_tokens WHERE token_hash = $1 AND revoked_at IS NULL
         ), touched AS (
             UPDATE org_api_tokens t SET last_used_at = now() FROM found
              WHERE t.id = found.id
                AND (found.last_used_at IS NULL OR found.last_used_at < now() - interval '1 minute')
         )
         SELECT id, prefix FROM found",
    )
    .bind(tokens::hash(plaintext))
    .fetch_optional(db)
    .await?)
}
