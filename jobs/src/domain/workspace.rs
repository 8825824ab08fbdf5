//! The workspace row, its runtimes, and the field rules every request is parsed through.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::backend::BackendKind;
use crate::domain::{AgentUrl, Status};
use crate::{Error, Result};

pub const EXTERNAL_RUNTIME: &str = "external";

pub const KNOWN_RUNTIMES: [&str; 10] = [
    "langgraph",
    "deepagents",
    "claude-code",
    "crewai",
    "autogen",
    "hermes",
    "openclaw",
    "codex",
    "gemini-cli",
    EXTERNAL_RUNTIME,
];

/// Runtime names are matched exactly, as agents and images match them: `CLAUDE-CODE` is
/// refused rather than quietly taken for `claude-code`.
pub fn parse_runtime(s: &str) -> Result<String> {
    let rt = s.trim();
    if KNOWN_RUNTIMES.contains(&rt) {
        Ok(rt.to_string())
    } else {
        Err(Error::Invalid {
            field: "runtime",
            problem: format!("{s:?} is not known; use one of {}", KNOWN_RUNTIMES.join(", ")),
        })
    }
}

/// claude-code speaks Anthropic's short model names; every other runtime the long form.
/// Exactly `claude-code`: agents match their runtime name exactly too, so a case variant is
/// not claude-code to them and must not get its short names.
pub fn default_model(runtime: &str) -> &'static str {
    if runtime == "claude-code" { "sonnet" } else { "anthropic:claude-opus-4-7" }
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

/// An agent card is stored and served as given; bounded so that one register cannot bloat
/// the row and every read of it.
pub const MAX_AGENT_CARD_BYTES: usize = 64 * 1024;

pub fn parse_agent_card(card: Value) -> Result<Value> {
    let len = serde_json::to_vec(&card)?.len();
    if len > MAX_AGENT_CARD_BYTES {
        return Err(Error::Invalid {
            field: "agent_card",
            problem: format!("is {len} bytes of JSON; at most {MAX_AGENT_CARD_BYTES} (64 KiB) are accepted"),
        });
    }
    Ok(card)
}

/// Where a page of the workspace list ends: the last row's place in the list's order
/// (`created_at`, then `id`). Clients get it as an opaque string and hand it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl ListCursor {
    pub fn after(ws: &Workspace) -> ListCursor {
        ListCursor { created_at: ws.created_at, id: ws.id }
    }

    /// base64url of the microsecond timestamp (Postgres' precision, so it round-trips
    /// exactly) and the id's bytes.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(s: &str) -> Result<ListCursor> {
        let invalid =
            || Error::Invalid { field: "cursor", problem: format!("{s:?} is not a cursor this server issued") };
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid())?;
        let (micros, id) = bytes.split_at_checked(8).ok_or_else(invalid)?;
        let micros = i64::from_be_bytes(micros.try_into().map_err(|_| invalid())?);
        Ok(ListCursor {
            created_at: DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
            id: Uuid::from_slice(id).map_err(|_| invalid())?,
        })
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
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
    /// The image its instance was started from (Docker: the image's content id; EC2: the
    /// AMI); later starts reuse it unless asked to upgrade.
    pub runtime_image: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub active_tasks: i32,
    pub current_task: Option<String>,
    pub uptime_seconds: i64,
    pub last_error_rate: f64,
    pub status_changed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The Docker engine the workspace's container lives on (`DOCKER_ENGINE_ID` of the
    /// workers that reach it); its ops go only to workers serving that engine.
    pub docker_engine: Option<String>,
}

/// How an agent receives its inbox: pushed to its URL, or polled by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum DeliveryMode {
    Push,
    Poll,
}

impl DeliveryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Push => "push",
            DeliveryMode::Poll => "poll",
        }
    }

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

impl CreateRequest {
    /// An external workspace with placeholder details (tier 1, model `m`), for writers
    /// that make workspaces in bulk without the api (benchmarks, tests).
    pub fn external(name: String, delivery_mode: DeliveryMode, url: Option<AgentUrl>) -> CreateRequest {
        CreateRequest {
            name,
            role: None,
            runtime: "external".into(),
            tier: 1,
            model: "m".into(),
            parent_id: None,
            external: true,
            url,
            delivery_mode,
            max_concurrent_tasks: 1,
            canvas: None,
        }
    }
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
    fn agent_cards_are_bounded_by_their_json_size() {
        let fits = serde_json::json!({"skills": "x".repeat(MAX_AGENT_CARD_BYTES - 20)});
        assert!(parse_agent_card(fits).is_ok());
        let too_big = serde_json::json!({"skills": "x".repeat(MAX_AGENT_CARD_BYTES)});
        let err = parse_agent_card(too_big).unwrap_err().to_string();
        assert!(err.starts_with("agent_card is ") && err.contains("64 KiB"), "{err}");
    }

    #[test]
    fn list_cursors_round_trip_and_refuse_anything_else() {
        let c = ListCursor {
            created_at: DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(ListCursor::decode(&c.encode()).unwrap(), c);
        for bad in ["", "not base64!", "AAAA", &URL_SAFE_NO_PAD.encode([0u8; 25])] {
            let err = ListCursor::decode(bad).unwrap_err().to_string();
            assert!(err.starts_with("cursor "), "{bad}: {err}");
        }
    }

    #[test]
    fn default_model_per_runtime() {
        assert_eq!(default_model("claude-code"), "sonnet");
        for other in ["langgraph", "gemini-cli", "CLAUDE-CODE", "Claude-Code", "claude-code ", "", "unknown"] {
            assert_eq!(default_model(other), "anthropic:claude-opus-4-7", "{other:?}");
        }
    }

    #[test]
    fn runtimes_include_every_known_one_and_refuse_others() {
        for rt in [
            "langgraph",
            "deepagents",
            "claude-code",
            "crewai",
            "autogen",
            "hermes",
            "openclaw",
            "codex",
            "gemini-cli",
            "external",
        ] {
            assert_eq!(parse_runtime(rt).unwrap(), rt);
        }
        assert!(parse_runtime("Claude-Code").is_err());
        let err = parse_runtime("gemini").unwrap_err().to_string();
        assert!(err.starts_with("runtime \"gemini\" is not known") && err.contains("gemini-cli"), "{err}");
    }
}
