//! The workspace row, its runtimes, and the field rules every request is parsed through.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::backend::BackendKind;
use crate::domain::{AgentUrl, Status};
use crate::{Error, Result};

pub const EXTERNAL_RUNTIME: &str = "external";

pub const KNOWN_RUNTIMES: [&str; 9] =
    ["langgraph", "deepagents", "claude-code", "crewai", "autogen", "hermes", "openclaw", "codex", EXTERNAL_RUNTIME];

pub fn parse_runtime(s: &str) -> Result<String> {
    let rt = s.trim().to_ascii_lowercase();
    if KNOWN_RUNTIMES.contains(&rt.as_str()) {
        Ok(rt)
    } else {
        Err(Error::Invalid {
            field: "runtime",
            problem: format!("{s:?} is not known; use one of {}", KNOWN_RUNTIMES.join(", ")),
        })
    }
}

/// claude-code speaks Anthropic's short model names; every other runtime the long form.
pub fn default_model(runtime: &str) -> &'static str {
    if runtime.eq_ignore_ascii_case("claude-code") { "sonnet" } else { "anthropic:claude-opus-4-7" }
}

pub const MAX_NAME_CHARS: usize = 255;
pub const MAX_ROLE_CHARS: usize = 1000;

/// Names are shown on the canvas and in logs: bounded and single-line.
pub fn parse_name(field: &'static str, s: &str, max: usize) -> Result<String> {
    let invalid = |problem: String| Err(Error::Invalid { field, problem });
    let t = s.trim();
    if t.is_empty() {
        return invalid("must not be empty".into());
    }
    if t.chars().count() > max {
        return invalid(format!("is longer than {max} characters"));
    }
    if t.chars().any(char::is_control) {
        return invalid("must not contain newlines or control characters".into());
    }
    Ok(t.to_string())
}

pub fn parse_tier(t: i64) -> Result<i32> {
    if (1..=4).contains(&t) {
        Ok(t as i32)
    } else {
        Err(Error::Invalid { field: "tier", problem: format!("must be between 1 and 4, got {t}") })
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
    pub status: Status,
    pub last_sample_error: Option<String>,
    pub url: Option<String>,
    pub delivery_mode: DeliveryMode,
    pub external: bool,
    pub max_concurrent_tasks: i32,
    pub collapsed: bool,
    pub backend: Option<BackendKind>,
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

/// How an agent receives its inbox: pushed to its URL, or polled by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum DeliveryMode {
    Push,
    Poll,
}

impl DeliveryMode {
    pub fn parse(s: &str) -> Result<DeliveryMode> {
        match s {
            "push" => Ok(DeliveryMode::Push),
            "poll" => Ok(DeliveryMode::Poll),
            other => Err(Error::Invalid { field: "delivery_mode", problem: format!("{other:?} must be push or poll") }),
        }
    }
}

/// A validated create request. External workspaces (runtime `external`) have no instance:
/// they are `online` when given a URL, else `awaiting_agent` until their agent registers.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: String,
    pub role: Option<String>,
    pub runtime: String,
    pub tier: i32,
    pub model: String,
    pub parent_id: Option<Uuid>,
    pub external: bool,
    pub url: Option<AgentUrl>,
    pub delivery_mode: DeliveryMode,
    pub max_concurrent_tasks: i32,
    pub canvas: Option<(f64, f64)>,
}

/// A validated PATCH: `None` leaves a field alone, `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub name: Option<String>,
    pub role: Option<Option<String>>,
    pub tier: Option<i32>,
    pub parent_id: Option<Option<Uuid>>,
    pub collapsed: Option<bool>,
}

/// What an agent says when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub url: Option<AgentUrl>,
    pub agent_card: Option<Value>,
    pub delivery_mode: Option<DeliveryMode>,
}

/// What an agent reports with each heartbeat; free text is already capped.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub error_rate: Option<f64>,
    pub sample_error: Option<String>,
    pub active_tasks: Option<i32>,
    pub uptime_seconds: Option<i64>,
    pub current_task: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_modes_parse_and_name_the_field() {
        assert_eq!(DeliveryMode::parse("poll").unwrap(), DeliveryMode::Poll);
        assert_eq!(DeliveryMode::parse("push").unwrap(), DeliveryMode::Push);
        assert_eq!(
            DeliveryMode::parse("email").unwrap_err().to_string(),
            "delivery_mode \"email\" must be push or poll"
        );
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
