use axum::Json;
use axum::extract::State;
use jobs::domain::{AgentUrl, DeliveryMode, Heartbeat, Registration, workspace};
use jobs::registry;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Agent;
use crate::error::ApiResult;
use crate::extract::ApiJson;
use crate::state::AppState;

/// Free text an agent reports is capped, so one heartbeat cannot bloat the row.
const MAX_REPORTED_CHARS: usize = 4096;

#[derive(Debug, Deserialize)]
pub struct RegisterBody {
    id: Uuid,
    url: Option<String>,
    agent_card: Option<Value>,
    delivery_mode: Option<String>,
}

impl TryFrom<RegisterBody> for Registration {
    type Error = jobs::Error;

    fn try_from(b: RegisterBody) -> jobs::Result<Registration> {
        Ok(Registration {
            url: b.url.as_deref().map(AgentUrl::parse).transpose()?,
            agent_card: b.agent_card.map(workspace::parse_agent_card).transpose()?,
            delivery_mode: b.delivery_mode.as_deref().map(DeliveryMode::parse).transpose()?,
        })
    }
}

pub async fn register(
    State(state): State<AppState>,
    agent: Agent,
    ApiJson(b): ApiJson<RegisterBody>,
) -> ApiResult<Json<Value>> {
    let credential = agent.register_credential(b.id)?;
    state.registry_rate.check(b.id)?;
    let id = b.id;
    let registration = Registration::try_from(b)?;
    registration.url.as_ref().map(|u| u.check(&state.config.api.agent_urls)).transpose()?;
    let token = registry::register(&state.pool, id, registration, credential).await?;
    let mut body = json!({"status": "registered"});
    if let Some(t) = token {
        body["auth_token"] = json!(t);
    }
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
pub struct HeartbeatBody {
    workspace_id: Uuid,
    error_rate: Option<f64>,
    sample_error: Option<String>,
    active_tasks: Option<i32>,
    uptime_seconds: Option<i64>,
    current_task: Option<String>,
}

impl TryFrom<HeartbeatBody> for Heartbeat {
    type Error = jobs::Error;

    fn try_from(b: HeartbeatBody) -> jobs::Result<Heartbeat> {
        if let Some(r) = b.error_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err(jobs::Error::Invalid { field: "error_rate", problem: "must be between 0 and 1".into() });
        }
        let cap = |s: Option<String>| s.map(|s| s.chars().take(MAX_REPORTED_CHARS).collect::<String>());
        Ok(Heartbeat {
            error_rate: b.error_rate,
            sample_error: cap(b.sample_error),
            active_tasks: b.active_tasks,
            uptime_seconds: b.uptime_seconds,
            current_task: cap(b.current_task),
        })
    }
}

pub async fn heartbeat(
    State(state): State<AppState>,
    agent: Agent,
    ApiJson(b): ApiJson<HeartbeatBody>,
) -> ApiResult<Json<Value>> {
    agent.authorize(b.workspace_id)?;
    state.registry_rate.check(b.workspace_id)?;
    let id = b.workspace_id;
    registry::heartbeat(&state.pool, id, Heartbeat::try_from(b)?).await?;
    Ok(Json(json!({"status": "ok"})))
}
