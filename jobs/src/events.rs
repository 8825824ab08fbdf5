//! The event log (`structure_events`). An event is written in the transaction of the change
//! that caused it and announced with `pg_notify`, which Postgres delivers at commit: every
//! api process LISTENs and fans events out to its WebSocket clients.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::Result;
use crate::notify::EVENTS_CHANNEL;

pub const WORKSPACE_PROVISIONING: &str = "WORKSPACE_PROVISIONING";
pub const WORKSPACE_ONLINE: &str = "WORKSPACE_ONLINE";
pub const WORKSPACE_OFFLINE: &str = "WORKSPACE_OFFLINE";
pub const WORKSPACE_DEGRADED: &str = "WORKSPACE_DEGRADED";
pub const WORKSPACE_PROVISION_FAILED: &str = "WORKSPACE_PROVISION_FAILED";
pub const WORKSPACE_AWAITING_AGENT: &str = "WORKSPACE_AWAITING_AGENT";
pub const WORKSPACE_PAUSED: &str = "WORKSPACE_PAUSED";
pub const WORKSPACE_REMOVED: &str = "WORKSPACE_REMOVED";
pub const WORKSPACE_COLLAPSED: &str = "WORKSPACE_COLLAPSED";
pub const WORKSPACE_STARTED: &str = "WORKSPACE_STARTED";
pub const WORKSPACE_STOPPED: &str = "WORKSPACE_STOPPED";
pub const LEAK_SUSPECT: &str = "LEAK_SUSPECT";
pub const ORPHAN_FOUND: &str = "ORPHAN_FOUND";
pub const ORPHAN_REAPED: &str = "ORPHAN_REAPED";
pub const TOKENS_REVOKED: &str = "TOKENS_REVOKED";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    pub id: i64,
    pub event_type: String,
    pub workspace_id: Option<Uuid>,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// The wire envelope shared with the original server's canvas.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    pub id: i64,
    pub event: String,
    pub workspace_id: Option<Uuid>,
    pub timestamp: DateTime<Utc>,
    pub payload: Value,
}

impl From<Event> for Envelope {
    fn from(e: Event) -> Self {
        Envelope {
            id: e.id,
            event: e.event_type,
            workspace_id: e.workspace_id,
            timestamp: e.created_at,
            payload: e.payload,
        }
    }
}

pub async fn record(
    conn: &mut PgConnection,
    event_type: &str,
    workspace_id: Option<Uuid>,
    payload: Value,
) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO structure_events (event_type, workspace_id, payload) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(event_type)
    .bind(workspace_id)
    .bind(&payload)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)").bind(EVENTS_CHANNEL).bind(id.to_string()).execute(&mut *conn).await?;
    Ok(id)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Event>> {
    Ok(sqlx::query_as::<_, Event>("SELECT * FROM structure_events WHERE id = $1").bind(id).fetch_optional(pool).await?)
}

pub async fn list(
    pool: &PgPool,
    workspace_id: Option<Uuid>,
    event_type: Option<&str>,
    limit: i64,
) -> Result<Vec<Event>> {
    Ok(sqlx::query_as::<_, Event>(
        "SELECT * FROM structure_events
          WHERE ($1::uuid IS NULL OR workspace_id = $1) AND ($2::text IS NULL OR event_type = $2)
          ORDER BY id DESC LIMIT $3",
    )
    .bind(workspace_id)
    .bind(event_type)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
