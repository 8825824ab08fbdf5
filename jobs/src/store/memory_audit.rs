use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::Result;

pub const WRITE_GLOBAL: &str = "memory_write_global";
pub const EDIT_GLOBAL: &str = "memory_edit_global";
pub const DELETE_GLOBAL: &str = "memory_delete_global";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub workspace_id: Uuid,
    pub memory_id: Uuid,
    pub action: String,
    pub namespace: String,
    pub content_sha256: String,
    pub reason: Option<String>,
    pub actor: String,
    pub created_at: DateTime<Utc>,
}

pub struct NewAudit<'a> {
    pub workspace_id: Uuid,
    pub memory_id: Uuid,
    pub action: &'static str,
    pub namespace: &'a str,
    pub content_sha256: &'a str,
    pub reason: Option<&'a str>,
    pub actor: &'a str,
}

pub async fn insert(conn: &mut PgConnection, a: NewAudit<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO memory_audit (workspace_id, memory_id, action, namespace, content_sha256, reason, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(a.workspace_id)
    .bind(a.memory_id)
    .bind(a.action)
    .bind(a.namespace)
    .bind(a.content_sha256)
    .bind(a.reason)
    .bind(a.actor)
    .fetch_one(conn)
    .await?)
}

/// The trail of one memory, oldest first.
pub async fn for_memory<'e>(db: impl PgExecutor<'e>, memory_id: Uuid) -> Result<Vec<AuditRow>> {
    Ok(sqlx::query_as::<_, AuditRow>(
        "SELECT id, workspace_id, memory_id, action, namespace, content_sha256, reason, actor, created_at
           FROM memory_audit WHERE memory_id = $1 ORDER BY id",
    )
    .bind(memory_id)
    .fetch_all(db)
    .await?)
}
