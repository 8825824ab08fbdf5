//! What agents call: register and heartbeat. Only these make a workspace `online`.

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::{tokens, workspaces};
use crate::workspace::Status;
use crate::{Error, Result};

pub struct Registration {
    pub url: Option<String>,
    pub agent_card: Option<Value>,
    pub delivery_mode: Option<String>,
}

/// Returns the bootstrap token when the workspace had no live token.
pub async fn register(pool: &PgPool, id: Uuid, r: Registration) -> Result<Option<String>> {
    let mut tx = pool.begin().await?;
    match workspaces::lock(&mut tx, id).await? {
        Some(ws) if ws.status() != Status::Removed => {}
        _ => return Err(Error::NotFound(format!("workspace {id} not found"))),
    }
    let token = if tokens::has_live(&mut *tx, id).await? { None } else { Some(tokens::mint(&mut tx, id).await?) };
    let ws = sqlx::query_as::<_, crate::workspace::Workspace>(
        "UPDATE workspaces SET agent_card = coalesce($2, agent_card), delivery_mode = coalesce($3, delivery_mode),
                last_heartbeat_at = now(), updated_at = now()
          WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(&r.agent_card)
    .bind(&r.delivery_mode)
    .fetch_one(&mut *tx)
    .await?;
    // A paused workspace stays paused: its agent may be the last breath of a stopping instance.
    if ws.status() != Status::Paused {
        let ws = workspaces::set_status(
            &mut tx,
            &ws,
            Status::Online,
            None,
            json!({"url": r.url, "agent_card": r.agent_card}),
        )
        .await?;
        sqlx::query("UPDATE workspaces SET url = $2 WHERE id = $1").bind(ws.id).bind(&r.url).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(token)
}

pub struct Heartbeat {
    pub error_rate: Option<f64>,
    pub sample_error: Option<String>,
    pub active_tasks: Option<i32>,
    pub uptime_seconds: Option<i64>,
    pub current_task: Option<String>,
}

pub async fn heartbeat(pool: &PgPool, id: Uuid, h: Heartbeat) -> Result<()> {
    let mut tx = pool.begin().await?;
    let ws = match workspaces::lock(&mut tx, id).await? {
        Some(ws) if ws.status() != Status::Removed => ws,
        _ => return Err(Error::NotFound(format!("workspace {id} not found"))),
    };
    let status = ws.status();
    // The failure reason belongs to the platform while the workspace is failed.
    let reports_health = matches!(status, Status::Online | Status::Degraded | Status::Offline);
    let ws = sqlx::query_as::<_, crate::workspace::Workspace>(
        "UPDATE workspaces SET last_heartbeat_at = now(),
                last_error_rate = coalesce($2, last_error_rate),
                last_sample_error = CASE WHEN $7 THEN $3 ELSE last_sample_error END,
                active_tasks = coalesce($4, active_tasks),
                uptime_seconds = coalesce($5, uptime_seconds),
                current_task = coalesce($6, current_task),
                updated_at = now()
          WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(h.error_rate)
    .bind(&h.sample_error)
    .bind(h.active_tasks)
    .bind(h.uptime_seconds)
    .bind(&h.current_task)
    .bind(reports_health && h.sample_error.is_some())
    .fetch_one(&mut *tx)
    .await?;
    let rate = ws.last_error_rate;
    // Provisioning is left to register: a heartbeat from the instance being replaced must
    // not declare the new one online.
    let next = match status {
        Status::Offline => Some(Status::Online),
        Status::Online if rate >= 0.5 => Some(Status::Degraded),
        Status::Degraded if rate < 0.1 => Some(Status::Online),
        _ => None,
    };
    if let Some(to) = next {
        workspaces::set_status(&mut tx, &ws, to, None, json!({"error_rate": rate})).await?;
    }
    tx.commit().await?;
    Ok(())
}
