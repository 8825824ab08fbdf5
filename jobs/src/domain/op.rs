//! Lifecycle operations (`workspace_ops` rows): what was asked of a workspace, by whom, and
//! how it went. How they are sequenced, claimed and finished is in `crate::ops`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum OpKind {
    Provision,
    Stop,
    Restart,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Provision => "provision",
            OpKind::Stop => "stop",
            OpKind::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum OpStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Queued => "queued",
            OpStatus::Running => "running",
            OpStatus::Succeeded => "succeeded",
            OpStatus::Failed => "failed",
            OpStatus::Canceled => "canceled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, OpStatus::Succeeded | OpStatus::Failed | OpStatus::Canceled)
    }
}

impl std::fmt::Display for OpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct Op {
    pub id: Uuid,
    #[serde(skip)]
    pub seq: i64,
    pub workspace_id: Uuid,
    pub kind: OpKind,
    pub reason: String,
    pub status: OpStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub requested_by: String,
    /// A restart that also tells the agent to start a fresh session (no resumed state).
    pub reset_session: bool,
    /// A start that moves the workspace to the image configured now instead of the one it
    /// is pinned to.
    pub upgrade_image: bool,
    #[serde(skip)]
    pub lease: i64,
    /// Until when the current claim owns the op; the running handler keeps renewing it.
    pub lease_until: Option<DateTime<Utc>>,
    /// The worker process holding the current claim.
    pub claimed_by: Option<String>,
    pub task_id: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl Op {
    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }
}
