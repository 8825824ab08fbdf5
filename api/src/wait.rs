//! `?wait=SECONDS`: hold the request until the op is final and the workspace has left
//! `provisioning`, woken by LISTEN/NOTIFY through the process-wide listener. A notice can
//! still be lost (between a listener's death and its rebuild), so the wait also re-reads on
//! a slow timer: a lost notice costs seconds, not the whole wait.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jobs::domain::{Op, Status, Workspace};
use jobs::notify::Notice;
use jobs::ops;
use jobs::store::workspaces;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub const MAX_WAIT_SECS: f64 = 300.0;

/// The backstop re-read, whatever the notices say.
const REREAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Seconds (0 to 300) to hold the answer until the workspace settles.
    #[param(minimum = 0, maximum = 300)]
    pub wait: Option<f64>,
}

/// The workspace as it settled within `?wait`, and the op waited for.
#[derive(Debug, Serialize, ToSchema)]
pub struct Settled {
    #[serde(flatten)]
    pub workspace: Workspace,
    pub op_id: Uuid,
}

/// `?wait` ran out: the op as it stands.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimedOut {
    /// `provisioning`.
    pub status: &'static str,
    /// The workspace.
    pub id: Uuid,
    pub op_id: Uuid,
    pub op: Op,
}

impl WaitQuery {
    pub fn duration(&self) -> ApiResult<Option<Duration>> {
        match self.wait {
            None => Ok(None),
            Some(s) if s.is_finite() && (0.0..=MAX_WAIT_SECS).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
            Some(_) => Err(ApiError::BadRequest(format!("wait must be between 0 and {MAX_WAIT_SECS} seconds"))),
        }
    }
}

enum Waited {
    Settled(Workspace),
    TimedOut(Op),
}

/// Waits for op `op_id` of workspace `ws_id`, then answers: `settled` with the workspace
/// (and the op id) as the route's answer `wrap` makes of it, or 202 with the op as it stands
/// when time runs out.
pub async fn answer<T: Serialize>(
    state: &AppState,
    ws_id: Uuid,
    op_id: Uuid,
    timeout: Duration,
    settled: StatusCode,
    wrap: fn(Settled) -> T,
) -> ApiResult<Response> {
    Ok(match until_settled(state, ws_id, op_id, timeout).await? {
        Waited::Settled(workspace) => (settled, Json(wrap(Settled { workspace, op_id }))).into_response(),
        Waited::TimedOut(op) => {
            (StatusCode::ACCEPTED, Json(TimedOut { status: "provisioning", id: op.workspace_id, op_id: op.id, op }))
                .into_response()
        }
    })
}

/// Waits until op `op_id` is final and workspace `ws_id` is no longer `provisioning` (its
/// agent registered, or it failed, was paused or removed), or `timeout` passes.
async fn until_settled(state: &AppState, ws_id: Uuid, op_id: Uuid, timeout: Duration) -> ApiResult<Waited> {
    // Subscribe before the first read so no change can slip between the two.
    let mut rx = state.notices.subscribe();
    let deadline = Instant::now() + timeout;
    loop {
        let ws = workspaces::get(&state.pool, ws_id).await?.ok_or_else(|| jobs::Error::workspace_not_found(ws_id))?;
        let op = ops::get(&state.pool, op_id).await?;
        // The op must be done too: a workspace can be online from an earlier instance while
        // the restart asked for is still queued.
        if op.is_final() && ws.status != Status::Provisioning {
            return Ok(Waited::Settled(ws));
        }
        // Sleep until something about this workspace changes, or the backstop is due.
        let reread_at = (Instant::now() + REREAD_EVERY).min(deadline);
        loop {
            match tokio::time::timeout_at(reread_at, rx.recv()).await {
                Err(_) if Instant::now() >= deadline => {
                    return Ok(Waited::TimedOut(ops::get(&state.pool, op_id).await?));
                }
                Err(_) => break,
                Ok(Ok(Notice::Resync)) | Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Ok(n)) if n.workspace_id() == Some(ws_id) => break,
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Closed)) => {
                    return Err(jobs::Error::Internal("the process's event listener stopped".into()).into());
                }
            }
        }
    }
}
