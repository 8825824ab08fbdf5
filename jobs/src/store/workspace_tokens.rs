use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;
use crate::backend::BackendKind;
use crate::tokens;

/// Mints a token and returns the plaintext: the only moment it exists outside the agent.
pub async fn mint(conn: &mut PgConnection, workspace_id: Uuid) -> Result<String> {
    let t = tokens::generate();
    sqlx::query("INSERT INTO workspace_tokens (id, workspace_id, token_hash, prefix) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::new_v4())
        .bind(workspace_id)
        .bind(&t.hash)
        .bind(&t.prefix)
        .execute(conn)
        .await?;
    Ok(t.plaintext)
}

pub async fn revoke_all(conn: &mut PgConnection, workspace_id: Uuid) -> Result<u64> {
    Ok(sqlx::query("UPDATE workspace_tokens SET revoked_at = now() WHERE workspace_id = $1 AND revoked_at IS NULL")
        .bind(workspace_id)
        .execute(conn)
        .await?
        .rows_affected())
}

/// The workspace a live token belongs to. Tokens of removed workspaces are dead too.
pub async fn validate<'e>(db: impl PgExecutor<'e>, plaintext: &str) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "UPDATE workspace_tokens t SET last_used_at = now()
           FROM workspaces w
          WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND w.id = t.workspace_id AND w.status <> 'removed'
          RETURNING t.workspace_id",
    )
    .bind(tokens::hash(plaintext))
    .fetch_optional(db)
    .await?)
}

/// Revokes live tokens unused for `unused_for` of live, non-external workspaces recorded on
/// one of `backends` whose id is not in `running`; returns their workspaces.
pub async fn revoke_unused<'e>(
    db: impl PgExecutor<'e>,
    backends: &[BackendKind],
    docker_engine: Option<&str>,
    running: &[Uuid],
    unused_for: Duration,
) -> Result<Vec<Uuid>> {
    // Docker workspaces are judged only by the inventory of their own engine (`$4`); rows
    // from before engines were recorded count as on it.
    Ok(sqlx::query_scalar(
        "UPDATE workspace_tokens t SET revoked_at = now()
           FROM workspaces w
          WHERE t.workspace_id = w.id AND t.revoked_at IS NULL
            AND w.status NOT IN ('removed', 'provisioning') AND NOT w.external
            AND w.backend = ANY($1) AND NOT (w.id = ANY($2))
            AND (w.backend <> 'docker' OR coalesce(w.docker_engine, $4) IS NOT DISTINCT FROM $4)
            AND coalesce(t.last_used_at, t.created_at) < now() - $3 * interval '1 millisecond'
          RETURNING t.workspace_id",
    )
    .bind(backends)
    .bind(running)
    .bind(unused_for.as_millis() as f64)
    .bind(docker_engine)
    .fetch_all(db)
    .await?)
}
