use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use jobs::registry::{self, Heartbeat, Registration};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::state::AppState;

/// Agent URLs are called by the platform, so they must not point at link-local or cloud
/// metadata addresses. Loopback stays allowed: agents on the platform's host use it.
pub fn safe_agent_url(raw: &str) -> ApiResult<String> {
    let bad = |why: &str| ApiError::BadRequest(format!("url {raw:?} is not allowed: {why}"));
    let url = url::Url::parse(raw).map_err(|_| bad("not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("scheme must be http or https"));
    }
    let host = url.host().ok_or_else(|| bad("no host"))?;
    let ip = match host {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(d) => {
            let d = d.to_ascii_lowercase();
            if d == "metadata.google.internal" || d.ends_with(".metadata.google.internal") {
                return Err(bad("cloud metadata host"));
            }
            None
        }
    };
    match ip {
        Some(IpAddr::V4(v4)) if v4.is_link_local() => Err(bad("link-local address (cloud metadata range)")),
        Some(IpAddr::V4(v4)) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Err(bad("not a unicast address"))
        }
        Some(IpAddr::V6(v6)) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Err(bad("link-local address")),
        Some(IpAddr::V6(v6)) if v6.segments()[..3] == [0xfd00, 0x0ec2, 0] => Err(bad("cloud metadata address")),
        Some(IpAddr::V6(v6)) if v6.is_unspecified() || v6.is_multicast() => Err(bad("not a unicast address")),
        _ => Ok(url.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct RegisterBody {
    id: Uuid,
    url: Option<String>,
    agent_card: Option<Value>,
    delivery_mode: Option<String>,
}

pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<RegisterBody>,
) -> ApiResult<Json<Value>> {
    auth::bootstrap(&state, &headers, b.id).await?;
    let url = b.url.as_deref().map(safe_agent_url).transpose()?;
    if let Some(m) = &b.delivery_mode
        && !matches!(m.as_str(), "push" | "poll")
    {
        return Err(ApiError::BadRequest(format!("delivery_mode {m:?} must be push or poll")));
    }
    let token = registry::register(
        &state.pool,
        b.id,
        Registration { url, agent_card: b.agent_card, delivery_mode: b.delivery_mode },
    )
    .await?;
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

pub async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(b): ApiJson<HeartbeatBody>,
) -> ApiResult<Json<Value>> {
    auth::bootstrap(&state, &headers, b.workspace_id).await?;
    if let Some(r) = b.error_rate
        && !(0.0..=1.0).contains(&r)
    {
        return Err(ApiError::BadRequest("error_rate must be between 0 and 1".into()));
    }
    let cap = |s: Option<String>| s.map(|s| s.chars().take(4096).collect::<String>());
    registry::heartbeat(
        &state.pool,
        b.workspace_id,
        Heartbeat {
            error_rate: b.error_rate,
            sample_error: cap(b.sample_error),
            active_tasks: b.active_tasks,
            uptime_seconds: b.uptime_seconds,
            current_task: cap(b.current_task),
        },
    )
    .await?;
    Ok(Json(json!({"status": "ok"})))
}

#[cfg(test)]
mod tests {
    use super::safe_agent_url;

    #[test]
    fn metadata_and_link_local_urls_are_refused() {
        assert!(safe_agent_url("http://169.254.169.254/latest").is_err());
        assert!(safe_agent_url("http://[fe80::1]:80/").is_err());
        assert!(safe_agent_url("http://[fd00:ec2::254]/").is_err());
        assert!(safe_agent_url("ftp://example.com").is_err());
        assert!(safe_agent_url("http://127.0.0.1:8000").is_ok());
        assert!(safe_agent_url("https://agent.example.com/a2a").is_ok());
    }
}
