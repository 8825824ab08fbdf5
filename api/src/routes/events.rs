use axum::Json;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use jobs::events::Envelope;
use jobs::notify::Notice;
use jobs::store::structure_events;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::{self, Admin};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiQuery, Limit};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this workspace's events.
    workspace_id: Option<Uuid>,
    /// e.g. `LEAK_SUSPECT`, for operators hunting leaks.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// 1 to 1000; 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The structure events, newest first.
#[utoipa::path(get, path = "/events", tag = "events",
    params(ListQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Events, newest first", body = Vec<Envelope>),
        (status = 400, description = "A bad filter or limit, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
    _: Admin,
) -> ApiResult<Json<Vec<Envelope>>> {
    let Limit(limit) = Limit::parse(q.limit)?;
    let rows = structure_events::list(&state.pool, q.workspace_id, q.event_type.as_deref(), limit).await?;
    Ok(Json(rows.into_iter().map(Envelope::from).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WsQuery {
    /// The admin token, for clients that cannot send an `Authorization` header.
    token: Option<String>,
}

/// Every event, from every process, as `{id, event, workspace_id, timestamp, payload}`.
/// Browsers cannot set headers on a WebSocket, so the token may come as `?token=`.
#[utoipa::path(get, path = "/ws", tag = "events",
    params(WsQuery),
    security(("admin_token" = []), ("query_token" = [])),
    responses(
        (status = 101, description = "Upgraded: every event as a text frame shaped like `Envelope`; a `RESYNC` frame when some may have been missed"),
        (status = 400, description = "Not a WebSocket upgrade request, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not the admin's token", body = ErrorBody),
    ))]
pub async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let token = q
        .token
        .as_deref()
        .or_else(|| auth::bearer(&headers))
        .ok_or_else(|| ApiError::Unauthorized("missing token".into()))?;
    match auth::identify(&state, token).await? {
        Some(caller) if caller.is_admin() => {}
        Some(_) => return Err(ApiError::Forbidden("the event stream needs the admin token".into())),
        None => return Err(ApiError::Unauthorized("invalid token".into())),
    }
    // Checked after the token, so a caller without one learns nothing more.
    let upgrade =
        upgrade.map_err(|e| ApiError::BadRequest(format!("expected a WebSocket upgrade: {}", e.body_text())))?;
    let rx = state.notices.subscribe();
    Ok(upgrade.on_upgrade(move |socket| forward(socket, rx)))
}

/// The frame that tells a client it may have missed events, shaped like an event.
pub const RESYNC: &str = "RESYNC";

fn resync_frame(reason: &str) -> Option<String> {
    let frame = json!({
        "id": null,
        "event": RESYNC,
        "workspace_id": null,
        "timestamp": chrono::Utc::now(),
        "payload": {"reason": reason},
    });
    serde_json::to_string(&frame).ok()
}

async fn forward(mut socket: WebSocket, mut rx: tokio::sync::broadcast::Receiver<Notice>) {
    loop {
        tokio::select! {
            n = rx.recv() => {
                let text = match n {
                    Ok(Notice::Event(e)) => serde_json::to_string(&*e).ok(),
                    Ok(Notice::Resync) => {
                        resync_frame("the server's event listener reconnected; events may have been missed")
                    }
                    Ok(Notice::Op { .. } | Notice::Appended(_)) => None,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "websocket client too slow; events dropped");
                        resync_frame(&format!("this client fell behind and missed {n} notifications"))
                    }
                    Err(RecvError::Closed) => return,
                };
                if let Some(text) = text
                    && socket.send(Message::Text(text.into())).await.is_err()
                {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
