use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;
use crate::tokens;

/// Revokes the workspace's unused secrets of other ops and mints one for the start `op_id`
/// is making, valid for `ttl` by the database's clock; returns the plaintext, which only the
/// instance receives. Earlier claims' secrets of the same op stay valid: a rescued start may
/// adopt the instance an earlier claim started, which holds that claim's secret.
pub async fn mint(conn: &mut PgConnection, workspace_id: Uuid, op_id: Uuid, ttl: Duration) -> Result<String> {
    sqlx::query(
        "UPDATE workspace_bootstraps SET revoked_at = now()
          WHERE workspace_id = $1 AND op_id <> $2 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(workspace_id)
    .bind(op_id)
    .execute(&mut *conn)
    .await?;
    let t = tokens::generate();
    sqlx::query(
        "INSERT INTO workspace_bootstraps (id, workspace_id, op_id, secret_hash, expires_at)
         VALUES ($1, $2, $3, $4, clock_timestamp() + $5 * interval '1 millisecond')",
    )
    .bind(Uuid::new_v4())
    .bind(workspace_id)
    .bind(op_id)
    .bind(&t.hash)
    .bind(ttl.as_millis() as f64)
    .execute(conn)
    .await?;
    Ok(t.plaintext)
}

pub async fn revoke_all(conn: &mut PgConnection, workspace_id: Uuid) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE workspace_bootstraps SET revoked_at = now()
          WHERE workspace_id = $1 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(workspace_id)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Uses up the workspace's secret `plaintext` if it is live (unused, not revoked, not
/// expired), and revokes its other unused ones: one registration per start. Returns whether
/// the secret was live.
pub async fn consume(conn: &mut PgConnection, workspace_id: Uuid, plaintext: &str) -> Result<bool> {
    let used = sqlx::query(
        "UPDATE workspace_bootstraps SET used_at = now()
          WHERE secret_hash = $1 AND workspace_id = $2 AND used_at IS NULL AND revoked_at IS NULL
            AND expires_at > clock_timestamp()",
    )
    .bind(tokens::hash(plaintext))
    .bind(workspace_id)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if used {
        revoke_all(conn, workspace_id).await?;
    }
    Ok(used)
}
