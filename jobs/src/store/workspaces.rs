use serde_json::{Value, json};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::events;
use crate::workspace::{Status, Workspace};
use crate::{Error, Result};

pub struct NewWorkspace {
    pub id: Uuid,
    pub name: String,
    pub role: Option<String>,
    pub runtime: String,
    pub tier: i32,
    pub model: String,
    pub parent_id: Option<Uuid>,
    pub status: Status,
    pub url: Option<String>,
    pub delivery_mode: String,
    pub external: bool,
    pub max_concurrent_tasks: i32,
    pub canvas: Option<(f64, f64)>,
}

pub async fn insert(conn: &mut PgConnection, w: &NewWorkspace) -> Result<Workspace> {
    let ws = sqlx::query_as::<_, Workspace>(
        "INSERT INTO workspaces (id, name, role, runtime, tier, model, parent_id, status, url, delivery_mode,
                                 external, max_concurrent_tasks, canvas_x, canvas_y)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING *",
    )
    .bind(w.id)
    .bind(&w.name)
    .bind(&w.role)
    .bind(&w.runtime)
    .bind(w.tier)
    .bind(&w.model)
    .bind(w.parent_id)
    .bind(w.status.as_str())
    .bind(&w.url)
    .bind(&w.delivery_mode)
    .bind(w.external)
    .bind(w.max_concurrent_tasks)
    .bind(w.canvas.map(|c| c.0))
    .bind(w.canvas.map(|c| c.1))
    .fetch_one(&mut *conn)
    .await?;
    events::record(
        conn,
        event_for(w.status),
        Some(w.id),
        json!({"name": w.name, "tier": w.tier, "runtime": w.runtime, "parent_id": w.parent_id}),
    )
    .await?;
    Ok(ws)
}

pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>("SELECT * FROM workspaces WHERE id = $1").bind(id).fetch_optional(db).await?)
}

/// Locks the row: every lifecycle decision about a workspace is serialised on this lock.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>("SELECT * FROM workspaces WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(conn)
        .await?)
}

pub async fn lock_existing(conn: &mut PgConnection, id: Uuid) -> Result<Workspace> {
    lock(conn, id).await?.ok_or_else(|| Error::NotFound(format!("workspace {id} not found")))
}

pub async fn list<'e>(
    db: impl PgExecutor<'e>,
    status: Option<Status>,
    parent_id: Option<Uuid>,
) -> Result<Vec<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(
        "SELECT * FROM workspaces
          WHERE status <> 'removed' AND ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR parent_id = $2)
          ORDER BY created_at, id",
    )
    .bind(status.map(Status::as_str))
    .bind(parent_id)
    .fetch_all(db)
    .await?)
}

/// Self and every non-removed descendant, parents before children.
pub async fn subtree(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(
        "WITH RECURSIVE t AS (
             SELECT id, 0 AS depth FROM workspaces WHERE id = $1
             UNION ALL
             SELECT w.id, t.depth + 1 FROM workspaces w JOIN t ON w.parent_id = t.id
              WHERE w.status <> 'removed' AND t.depth < 64)
         SELECT w.* FROM workspaces w JOIN t USING (id) ORDER BY t.depth, w.created_at",
    )
    .bind(id)
    .fetch_all(conn)
    .await?)
}

/// Ancestors, nearest first.
pub async fn ancestors(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Workspace>> {
    Ok(sqlx::query_as::<_, Workspace>(
        "WITH RECURSIVE a AS (
             SELECT parent_id AS id, 1 AS depth FROM workspaces WHERE id = $1
             UNION ALL
             SELECT w.parent_id, a.depth + 1 FROM workspaces w JOIN a ON w.id = a.id
              WHERE w.parent_id IS NOT NULL AND a.depth < 64)
         SELECT w.* FROM workspaces w JOIN a USING (id) ORDER BY a.depth",
    )
    .bind(id)
    .fetch_all(conn)
    .await?)
}

fn event_for(status: Status) -> &'static str {
    match status {
        Status::Provisioning => events::WORKSPACE_PROVISIONING,
        Status::Online => events::WORKSPACE_ONLINE,
        Status::Offline => events::WORKSPACE_OFFLINE,
        Status::Degraded => events::WORKSPACE_DEGRADED,
        Status::Failed => events::WORKSPACE_PROVISION_FAILED,
        Status::Paused => events::WORKSPACE_PAUSED,
        Status::AwaitingAgent => events::WORKSPACE_AWAITING_AGENT,
        Status::Removed => events::WORKSPACE_REMOVED,
    }
}

/// The one place a workspace's status is written (besides insert). Refuses transitions the
/// status machine forbids and a `failed` without a reason, and records the matching event
/// in the same transaction. The caller holds the row lock (`ws` came from [`lock`]).
pub async fn set_status(
    conn: &mut PgConnection,
    ws: &Workspace,
    to: Status,
    reason: Option<&str>,
    mut payload: Value,
) -> Result<Workspace> {
    let from = ws.status();
    if !from.can_become(to) {
        return Err(Error::Conflict(format!("workspace {} is {from} and cannot become {to}", ws.id)));
    }
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if to == Status::Failed && reason.is_none() {
        return Err(Error::Invalid("a workspace can only be marked failed with a reason".into()));
    }
    // A fresh start or an agent coming online supersedes an earlier failure reason; other
    // transitions keep whatever the agent last reported.
    let clear_error = matches!(to, Status::Provisioning | Status::Online);
    let updated = sqlx::query_as::<_, Workspace>(
        "UPDATE workspaces
            SET status = $2,
                last_sample_error = CASE WHEN $3::text IS NOT NULL THEN $3 WHEN $4 THEN NULL ELSE last_sample_error END,
                url = CASE WHEN $2 IN ('provisioning', 'paused', 'removed', 'offline') THEN NULL ELSE url END,
                status_changed_at = CASE WHEN status <> $2 OR $2 = 'provisioning' THEN now() ELSE status_changed_at END,
                updated_at = now()
          WHERE id = $1 RETURNING *",
    )
    .bind(ws.id)
    .bind(to.as_str())
    .bind(reason)
    .bind(clear_error)
    .fetch_one(&mut *conn)
    .await?;
    if let (Some(r), Value::Object(map)) = (reason, &mut payload) {
        map.entry("error").or_insert_with(|| Value::String(r.to_string()));
    }
    if let Value::Object(map) = &mut payload {
        map.entry("name").or_insert_with(|| Value::String(ws.name.clone()));
        map.insert("from".into(), Value::String(from.as_str().into()));
    }
    events::record(conn, event_for(to), Some(ws.id), payload).await?;
    Ok(updated)
}

pub async fn record_instance(conn: &mut PgConnection, id: Uuid, backend: &str, instance_ref: &str) -> Result<()> {
    sqlx::query("UPDATE workspaces SET backend = $2, instance_ref = $3, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(backend)
        .bind(instance_ref)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn clear_instance(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE workspaces SET instance_ref = NULL, updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}
