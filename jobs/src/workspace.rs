//! The workspace model: status machine, runtimes, and the field rules parsed at the edge.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Provisioning,
    Online,
    Offline,
    Degraded,
    Failed,
    Paused,
    AwaitingAgent,
    Removed,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Provisioning,
        Status::Online,
        Status::Offline,
        Status::Degraded,
        Status::Failed,
        Status::Paused,
        Status::AwaitingAgent,
        Status::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Provisioning => "provisioning",
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Degraded => "degraded",
            Status::Failed => "failed",
            Status::Paused => "paused",
            Status::AwaitingAgent => "awaiting_agent",
            Status::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The status machine. `removed` is final; `paused` only leaves through resume
    /// (provisioning) or delete; only an agent brings a workspace `online`, which the
    /// callers of `Online` guarantee.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        match (self, to) {
            (Removed, _) => false,
            (_, Removed) => true,
            (Paused, Provisioning) => true,
            (Paused, _) => false,
            (_, Paused) => true,
            (AwaitingAgent, Provisioning) => false,
            (_, Provisioning) => true,
            (_, Online) => true,
            (Online | Degraded, Offline | Degraded | AwaitingAgent) => true,
            (Provisioning | Online | Offline | Degraded | AwaitingAgent, Failed) => true,
            (Failed, Failed) => true,
            _ => false,
        }
    }

    /// Statuses whose workspace should have a running instance.
    pub fn wants_instance(self) -> bool {
        matches!(self, Status::Provisioning | Status::Online | Status::Offline | Status::Degraded)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const EXTERNAL_RUNTIME: &str = "external";

pub const KNOWN_RUNTIMES: [&str; 9] =
    ["langgraph", "deepagents", "claude-code", "crewai", "autogen", "hermes", "openclaw", "codex", EXTERNAL_RUNTIME];

pub fn parse_runtime(s: &str) -> Result<String> {
    let rt = s.trim().to_ascii_lowercase();
    if KNOWN_RUNTIMES.contains(&rt.as_str()) {
        Ok(rt)
    } else {
        Err(Error::Invalid(format!("runtime {s:?} is not known; use one of {}", KNOWN_RUNTIMES.join(", "))))
    }
}

/// claude-code speaks Anthropic's short model names; every other runtime the long form.
pub fn default_model(runtime: &str) -> &'static str {
    if runtime.eq_ignore_ascii_case("claude-code") { "sonnet" } else { "anthropic:claude-opus-4-7" }
}

pub const MAX_NAME_CHARS: usize = 255;
pub const MAX_ROLE_CHARS: usize = 1000;

/// Names are shown on the canvas and in logs: bounded and single-line.
pub fn parse_name(field: &str, s: &str, max: usize) -> Result<String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(Error::Invalid(format!("{field} must not be empty")));
    }
    if t.chars().count() > max {
        return Err(Error::Invalid(format!("{field} is longer than {max} characters")));
    }
    if t.chars().any(char::is_control) {
        return Err(Error::Invalid(format!("{field} must not contain newlines or control characters")));
    }
    Ok(t.to_string())
}

pub fn parse_tier(t: i64) -> Result<i32> {
    if (1..=4).contains(&t) {
        Ok(t as i32)
    } else {
        Err(Error::Invalid(format!("tier must be between 1 and 4, got {t}")))
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    pub role: Option<String>,
    pub runtime: String,
    pub tier: i32,
    pub model: String,
    pub parent_id: Option<Uuid>,
    pub status: String,
    pub last_sample_error: Option<String>,
    pub url: Option<String>,
    pub delivery_mode: String,
    pub external: bool,
    pub max_concurrent_tasks: i32,
    pub collapsed: bool,
    pub backend: Option<String>,
    pub instance_ref: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub active_tasks: i32,
    pub current_task: Option<String>,
    pub uptime_seconds: i64,
    pub last_error_rate: f64,
    pub status_changed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Workspace {
    /// The backend recorded as running this workspace (whatever is configured now).
    pub fn backend_kind(&self) -> Option<crate::backend::BackendKind> {
        self.backend.as_deref().and_then(crate::backend::BackendKind::parse)
    }

    pub fn status(&self) -> Status {
        // The CHECK constraint guarantees a known value; fall back to a harmless one.
        Status::parse(&self.status).unwrap_or(Status::Offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_is_final_and_paused_only_resumes() {
        for s in Status::ALL {
            assert!(!Status::Removed.can_become(s));
        }
        assert!(Status::Paused.can_become(Status::Provisioning));
        assert!(!Status::Paused.can_become(Status::Online));
        assert!(Status::Online.can_become(Status::Paused));
    }

    #[test]
    fn names_are_bounded_and_single_line() {
        assert!(parse_name("name", "ok", 255).is_ok());
        assert!(parse_name("name", "a\nb", 255).is_err());
        assert!(parse_name("name", "  ", 255).is_err());
        assert!(parse_name("name", &"x".repeat(256), 255).is_err());
    }

    #[test]
    fn default_model_per_runtime() {
        assert_eq!(default_model("claude-code"), "sonnet");
        assert_eq!(default_model("langgraph"), "anthropic:claude-opus-4-7");
    }
}
