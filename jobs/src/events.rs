//! The event log (`structure_events`). An event is written in the transaction of the change
//! that caused it and announced with `pg_notify`, which Postgres delivers at commit: every
//! api process LISTENs and fans events out to its WebSocket clients.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;
use crate::domain::Status;
use crate::notify::EVENTS_CHANNEL;
use crate::store::structure_events;

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
/// Recorded without a workspace id: the workspace's own events go with it.
pub const WORKSPACE_PURGED: &str = "WORKSPACE_PURGED";
pub const EXTERNAL_CREDENTIALS_ROTATED: &str = "EXTERNAL_CREDENTIALS_ROTATED";
/// An operator re-ran a failed job; the payload names the job, the new one and the operator.
pub const JOB_RETRIED: &str = "JOB_RETRIED";
/// An operator canceled a queued or running job.
pub const JOB_CANCELED: &str = "JOB_CANCELED";
pub const QUEUE_PAUSED: &str = "QUEUE_PAUSED";
pub const QUEUE_RESUMED: &str = "QUEUE_RESUMED";
/// A Docker engine taken out of service; recorded without a workspace id.
pub const DOCKER_ENGINE_RETIRED: &str = "DOCKER_ENGINE_RETIRED";
/// A worker met a task payload version it does not know and left the task for another.
pub const TASK_VERSION_UNKNOWN: &str = "TASK_VERSION_UNKNOWN";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    pub id: i64,
    pub event_type: String,
    pub workspace_id: Option<Uuid>,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// The wire envelope the canvas reads from `GET /events` and `GET /ws`, and the payload of
/// an event's notification.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

/// The event that announces a workspace entering `status`.
pub fn for_status(status: Status) -> &'static str {
    match status {
        Status::Provisioning => WORKSPACE_PROVISIONING,
        Status::Online => WORKSPACE_ONLINE,
        Status::Offline => WORKSPACE_OFFLINE,
        Status::Degraded => WORKSPACE_DEGRADED,
        Status::Failed => WORKSPACE_PROVISION_FAILED,
        Status::Paused => WORKSPACE_PAUSED,
        Status::AwaitingAgent => WORKSPACE_AWAITING_AGENT,
        Status::Removed => WORKSPACE_REMOVED,
    }
}

/// [`record`] for several events of one type, in one statement, in the order given.
pub async fn record_many(
    conn: &mut PgConnection,
    event_type: &str,
    events: &[(Option<Uuid>, &Value)],
) -> Result<Vec<i64>> {
    structure_events::insert_announced_many(conn, event_type, events, EVENTS_CHANNEL).await
}

/// Writes the event in the caller's transaction and announces it at commit.
pub async fn record(
    conn: &mut PgConnection,
    event_type: &str,
    workspace_id: Option<Uuid>,
    payload: Value,
) -> Result<i64> {
    structure_events::insert_announced(conn, event_type, workspace_id, &payload, EVENTS_CHANNEL).await
}
