use axum::Json;
use axum::extract::State;
use jobs::domain::{AgentUrl, DeliveryMode, Heartbeat, Registration, workspace};
use jobs::registry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Agent;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;

/// Free text an agent reports is capped, so one heartbeat cannot bloat the row.
const MAX_REPORTED_CHARS: usize = 4096;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterBody {
    /// The workspace the agent serves.
    id: Uuid,
    /// Where the platform reaches the agent.
    url: Option<String>,
    /// The agent's A2A card, stored as given.
    #[schema(value_type = Option<Object>)]
    agent_card: Option<Value>,
    /// `push` or `poll`.
    delivery_mode: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// `registered`.
    status: &'static str,
    /// The workspace token, minted when the register presented the bootstrap secret: the
    /// only time it is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Beat {
    /// `ok`.
    status: &'static str,
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

/// An agent announces itself: its workspace goes online.
#[utoipa::path(post, path = "/registry/register", tag = "registry",
    request_body = RegisterBody,
    security(("workspace_token" = []), ("bootstrap_secret" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "Registered", body = Registered),
        (status = 400, description = "A bad body, URL or agent card", body = ErrorBody),
        (status = 401, description = "No token, or a secret that is not the workspace's", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "The workspace cannot take an agent now (removed, paused)", body = ErrorBody),
        (status = 429, description = "Too many registers and heartbeats for the workspace (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    agent: Agent,
    ApiJson(b): ApiJson<RegisterBody>,
) -> ApiResult<Json<Registered>> {
    let credential = agent.register_credential(b.id)?;
    state.registry_rate.check(b.id)?;
    let id = b.id;
    let registration = Registration::try_from(b)?;
    registration.url.as_ref().map(|u| u.check(&state.config.api.agent_urls)).transpose()?;
    let token = registry::register(&state.pool, id, registration, credential).await?;
    Ok(Json(Registered { status: "registered", auth_token: token }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct HeartbeatBody {
    workspace_id: Uuid,
    /// 0 to 1.
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

#[utoipa::path(post, path = "/registry/heartbeat", tag = "registry",
    request_body = HeartbeatBody,
    security(("workspace_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "Recorded", body = Beat),
        (status = 400, description = "A bad body", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "The workspace has no registered agent now", body = ErrorBody),
        (status = 429, description = "Too many registers and heartbeats for the workspace (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn heartbeat(
    State(state): State<AppState>,
    agent: Agent,
    ApiJson(b): ApiJson<HeartbeatBody>,
) -> ApiResult<Json<Beat>> {
    agent.authorize(b.workspace_id)?;
    state.registry_rate.check(b.workspace_id)?;
    let id = b.workspace_id;
    registry::heartbeat(&state.pool, id, Heartbeat::try_from(b)?).await?;
    Ok(Json(Beat { status: "ok" }))
}
