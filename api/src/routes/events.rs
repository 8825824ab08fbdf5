use axum::Json;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use jobs::events::Envelope;
use jobs::notify::Notice;
use jobs::store::structure_events;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::auth::{self, Admin};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, Limit};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    workspace_id: Option<Uuid>,
    /// e.g. `LEAK_SUSPECT`, for operators hunting leaks.
    #[serde(rename = "type")]
    event_type: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
    _: Admin,
) -> ApiResult<Json<Vec<Envelope>>> {
    let Limit(limit) = Limit::parse(q.limit)?;
    let rows = structure_events::list(&state.pool, q.workspace_id, q.event_type.as_deref(), limit).await?;
    Ok(Json(rows.into_iter().map(Envelope::from).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    token: Option<String>,
}

/// Every event, from every process, as `{id, event, workspace_id, timestamp, payload}`.
/// Browsers cannot set headers on a WebSocket, so the token may come as `?token=`.
pub async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<WsQuery>,
    upgrade: WebSocketUpgrade,
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
                    Ok(Notice::Op { .. }) => None,
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
