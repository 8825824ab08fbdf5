//! The activity log and inbox: reading it (`since_id` is the poller's cursor), an agent's
//! own rows, and messages to an agent (`/a2a`), which become inbox items.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobs::domain::DeliveryMode;
use jobs::domain::Status;
use jobs::inbox;
use jobs::long_poll;
use jobs::store::activity_logs::{self, NewActivity};
use jobs::store::workspaces;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{AdminOrWorkspace, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiQuery, Limit, WorkspaceId};
use crate::state::AppState;
use crate::wait::WaitQuery;

/// How often `?wait` re-reads an item for its delivery.
const WAIT_POLL: Duration = Duration::from_millis(100);
const TEXT_MAX: usize = 4096;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only rows of this `activity_type`.
    #[serde(rename = "type")]
    activity_type: Option<String>,
    /// The poller's cursor: the rows after this one, oldest first (0: from the beginning).
    since_id: Option<i64>,
    /// 1 to 500; 100 when absent.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// The long poll, with `since_id` only: when no row follows the cursor yet, hold the
    /// answer up to this many seconds (0 to 300) until one is appended; `[]` if none is.
    #[param(minimum = 0, maximum = 300)]
    wait: Option<f64>,
}

pub(crate) async fn live_workspace(state: &AppState, id: Uuid) -> ApiResult<jobs::domain::Workspace> {
    match workspaces::get(&state.pool, id).await? {
        Some(ws) if ws.status != Status::Removed => Ok(ws),
        _ => Err(jobs::Error::workspace_not_found(id).into()),
    }
}

/// `GET /workspaces/:id/activity`: without a cursor the newest rows first; with `since_id`
/// the rows after it, oldest first (`since_id=0`: from the beginning). A cursor that is not
/// one of this workspace's rows (another's, unknown, purged) is 410: the poller must start
/// again rather than silently skip or repeat. With `since_id`, `wait` makes it a long poll:
/// an append wakes the waiting reader at once, instead of the agent polling on a timer.
#[utoipa::path(get, path = "/workspaces/{id}/activity", tag = "activity",
    params(("id" = Uuid, Path, description = "The workspace"), ListQuery),
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "Activity rows", body = Vec<activity_logs::Activity>),
        (status = 400, description = "A bad id, cursor, limit or wait (or a wait without since_id), or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Another workspace's token", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 410, description = "The cursor is not one of this workspace's rows: start again from 0", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<activity_logs::Activity>>> {
    let limit = Limit::parse_up_to(q.limit, 500)?;
    let wait = WaitQuery { wait: q.wait }.duration()?;
    if wait.is_some() && q.since_id.is_none() {
        return Err(ApiError::BadRequest("wait needs since_id: a long poll waits for the rows after a cursor".into()));
    }
    if workspaces::get(&state.pool, who.id).await?.is_none() {
        return Err(jobs::Error::workspace_not_found(who.id).into());
    }
    let after = match q.since_id {
        None => None,
        Some(0) => Some(0),
        Some(c) if c < 0 => {
            return Err(ApiError::BadRequest("since_id must be a row id, or 0 for the beginning".into()));
        }
        Some(c) => match activity_logs::owner(&state.pool, c).await? {
            Some(owner) if owner == who.id => Some(c),
            Some(_) => {
                return Err(ApiError::Gone(format!(
                    "cursor {c} belongs to another workspace; start again from since_id=0"
                )));
            }
            None => {
                return Err(ApiError::Gone(format!("cursor {c} is unknown or purged; start again from since_id=0")));
            }
        },
    };
    let kind = q.activity_type.as_deref();
    let rows = match (after, wait) {
        (Some(after), Some(wait)) => {
            let wakes = long_poll::Wakes { readers: &state.inbox_readers, stopping: state.stopping.clone() };
            long_poll::read_waiting(&state.pool, wakes, who.id, kind, after, limit.0, wait).await?
        }
        _ => activity_logs::list(&state.pool, who.id, kind, after, limit.0).await?,
    };
    Ok(Json(rows))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnActivity {
    /// One of `a2a_send`, `task_update`, `agent_log`, `skill_promotion`, `memory_write`, `error`.
    activity_type: String,
    method: Option<String>,
    summary: Option<String>,
    request_body: Option<Value>,
    response_body: Option<Value>,
    status: Option<String>,
    error_detail: Option<String>,
    source_id: Option<Uuid>,
    target_id: Option<Uuid>,
    duration_ms: Option<i32>,
}

fn capped(field: &'static str, v: Option<String>, max: usize) -> ApiResult<Option<String>> {
    match v {
        Some(s) if s.len() > max => Err(ApiError::BadRequest(format!("{field} is longer than {max} bytes"))),
        other => Ok(other),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recorded {
    id: i64,
}

/// `POST /workspaces/:id/activity`: an agent's own row, with its own token only.
#[utoipa::path(post, path = "/workspaces/{id}/activity", tag = "activity",
    params(("id" = Uuid, Path, description = "The workspace")),
    request_body = OwnActivity,
    security(("workspace_token" = [])),
    responses(
        (status = 201, description = "The row's id", body = Recorded),
        (status = 400, description = "A bad id or body, or a type an agent may not write", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 403, description = "Not this workspace's own token, or a `source_id` not its own", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
    ))]
pub async fn record(
    State(state): State<AppState>,
    who: AdminOrWorkspace,
    ApiJson(b): ApiJson<OwnActivity>,
) -> ApiResult<Response> {
    if who.caller != Caller::Workspace(who.id) {
        return Err(ApiError::Forbidden("an agent writes its own activity with its workspace token".into()));
    }
    if !inbox::AGENT_TYPES.contains(&b.activity_type.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "activity_type {:?} is not one an agent may write; allowed: {}",
            b.activity_type,
            inbox::AGENT_TYPES.join(", ")
        )));
    }
    if b.source_id.is_some_and(|s| s != who.id) {
        return Err(ApiError::Forbidden("source_id must be the workspace itself (or absent)".into()));
    }
    let status = capped("status", b.status, 32)?.unwrap_or_else(|| "ok".into());
    let ws = live_workspace(&state, who.id).await?;
    let id = state
        .appends
        .append(
            ws.delivery_mode,
            NewActivity {
                workspace_id: who.id,
                activity_type: b.activity_type,
                method: capped("method", b.method, 255)?,
                source_id: Some(who.id),
                target_id: b.target_id,
                summary: capped("summary", b.summary, TEXT_MAX)?,
                request_body: b.request_body,
                response_body: b.response_body,
                status,
                error_detail: capped("error_detail", b.error_detail, TEXT_MAX)?,
                duration_ms: b.duration_ms,
                push: false,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(Recorded { id })).into_response())
}

/// The body `/a2a` accepts. It only describes the body in `/openapi.json`: the handler reads
/// the JSON itself, to name each problem of a malformed envelope.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"jsonrpc": "2.0", "id": 1, "method": "message/send",
    "params": {"message": {"role": "user", "parts": [{"kind": "text", "text": "hello"}]}}}))]
pub struct MessageSend {
    /// `2.0`.
    jsonrpc: String,
    /// `message/send`.
    method: String,
    id: Option<Value>,
    params: MessageParams,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MessageParams {
    /// The A2A message.
    #[schema(value_type = Object)]
    message: Value,
}

/// What `/a2a` answers: the inbox item's id and how far its delivery got.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sent {
    id: i64,
    /// `queued`, `delivered` or `undeliverable`.
    status: &'static str,
    delivery_mode: DeliveryMode,
    /// The agent's answer, when it was delivered within `?wait`.
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
    /// Why the push failed, when it is undeliverable.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    error: Option<Option<String>>,
}

/// The JSON-RPC envelope of a message, checked: `message/send` with a message object.
fn message_envelope(body: Value) -> ApiResult<Value> {
    let Value::Object(map) = &body else {
        return Err(ApiError::BadRequest("the body must be a JSON-RPC 2.0 request object".into()));
    };
    if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(ApiError::BadRequest("jsonrpc must be \"2.0\"".into()));
    }
    match map.get("method").and_then(Value::as_str) {
        Some("message/send") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!("method {other:?} is not accepted; send message/send")));
        }
        None => return Err(ApiError::BadRequest("method is required (message/send)".into())),
    }
    if !body.pointer("/params/message").is_some_and(Value::is_object) {
        return Err(ApiError::BadRequest("params.message must be an object (the A2A message)".into()));
    }
    Ok(body)
}

/// `POST /workspaces/:id/a2a[?wait=SECONDS]`: a message to the workspace's agent from the
/// admin (the canvas) or another workspace (recorded as the source). It becomes an inbox
/// item: 202 with its id. With `wait`, a push-mode agent's answer comes back if the push
/// lands within the wait.
#[utoipa::path(post, path = "/workspaces/{id}/a2a", tag = "activity",
    params(("id" = Uuid, Path, description = "The workspace whose agent gets the message"), WaitQuery),
    request_body = MessageSend,
    security(("admin_token" = []), ("workspace_token" = [])),
    responses(
        (status = 200, description = "Delivered within `?wait`, with the agent's answer", body = Sent),
        (status = 202, description = "Queued in the inbox (or found undeliverable within `?wait`)", body = Sent),
        (status = 400, description = "A bad id, `wait` or envelope", body = ErrorBody),
        (status = 401, description = "No token, or an unknown one", body = ErrorBody),
        (status = 404, description = "No such live workspace", body = ErrorBody),
    ))]
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    WorkspaceId { 0: target, .. }: WorkspaceId,
    ApiQuery(wait): ApiQuery<WaitQuery>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let wait = wait.duration()?;
    let envelope = message_envelope(body)?;
    let source = caller.workspace();
    let ws = live_workspace(&state, target).await?;
    let id = state
        .appends
        .append(
            ws.delivery_mode,
            NewActivity {
                workspace_id: target,
                activity_type: inbox::INBOX_TYPE.into(),
                method: Some("message/send".into()),
                source_id: source,
                target_id: Some(target),
                summary: Some(match source {
                    Some(s) => format!("Message from workspace {s}"),
                    None => "Message from the canvas".into(),
                }),
                request_body: Some(envelope),
                status: "ok".into(),
                ..Default::default()
            },
        )
        .await?;
    // A fresh item is queued: it is read back only to wait for its push.
    let mut item = None;
    if let Some(wait) = wait.filter(|_| ws.delivery_mode == jobs::domain::DeliveryMode::Push) {
        item = activity_logs::get(&state.pool, id).await?;
        let deadline = tokio::time::Instant::now() + wait;
        while item.as_ref().is_some_and(|i| i.delivery.as_deref() == Some("pending"))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(WAIT_POLL.min(deadline - tokio::time::Instant::now())).await;
            item = activity_logs::get(&state.pool, id).await?;
        }
    }
    let delivery = item.as_ref().and_then(|i| i.delivery.clone());
    let answer = Sent { id, status: "queued", delivery_mode: ws.delivery_mode, response: None, error: None };
    match delivery.as_deref() {
        Some("delivered") => {
            let response = Some(item.and_then(|i| i.response_body).unwrap_or(Value::Null));
            Ok((StatusCode::OK, Json(Sent { status: "delivered", response, ..answer })).into_response())
        }
        Some("undeliverable") => {
            let error = Some(item.and_then(|i| i.error_detail));
            Ok((StatusCode::ACCEPTED, Json(Sent { status: "undeliverable", error, ..answer })).into_response())
        }
        _ => Ok((StatusCode::ACCEPTED, Json(answer)).into_response()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_a_message_send_with_a_message_is_accepted() {
        let ok = json!({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {"parts": []}}});
        assert!(message_envelope(ok).is_ok());
        for bad in [
            json!([]),
            json!({"jsonrpc": "1.0", "method": "message/send", "params": {"message": {}}}),
            json!({"jsonrpc": "2.0", "method": "tasks/cancel", "params": {"message": {}}}),
            json!({"jsonrpc": "2.0", "method": "message/send", "params": {}}),
        ] {
            assert!(matches!(message_envelope(bad), Err(ApiError::BadRequest(_))));
        }
    }
}
