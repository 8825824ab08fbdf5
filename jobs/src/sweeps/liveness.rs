//! Online workspaces whose heartbeat went stale go `offline` and get a (coalesced) restart;
//! external ones go back to `awaiting_agent`. Also re-delivers stranded ops, so no request
//! waits for ever on a task that vanished.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use super::Report;
use crate::Result;
use crate::config::Env;
use crate::domain::Status;
use crate::lifecycle::{self, Restarted};
use crate::ops;
use crate::store::workspaces;
use crate::transition;

/// Ops whose task has been gone this long are re-delivered; younger ones may be in flight.
const STRANDED_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Settings {
    /// `SWEEP_LIVENESS_SECONDS`.
    pub every: Duration,
    /// `HEARTBEAT_STALE_AFTER_SECONDS`: agents are told to heartbeat every third of it.
    pub stale_after: Duration,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings> {
        Ok(Settings {
            every: env.secs("SWEEP_LIVENESS_SECONDS", 15)?,
            stale_after: env.secs("HEARTBEAT_STALE_AFTER_SECONDS", 90)?,
        })
    }
}

pub async fn run(pool: &PgPool, settings: &Settings) -> Result<Report> {
    let stale = settings.stale_after;
    let ids = workspaces::silent_since(pool, stale).await?;
    let mut restarted = 0;
    for id in &ids {
        let mut tx = crate::db::begin(pool).await?;
        let Some(ws) = workspaces::lock(&mut tx, *id).await? else { continue };
        // Re-check under the lock: a heartbeat may have arrived since the scan. Silence is
        // measured by the database's clock, like the heartbeat's own timestamp.
        if !matches!(ws.status, Status::Online | Status::Degraded)
            || workspaces::silent_for(&mut tx, ws.id).await? < stale
        {
            continue;
        }
        let payload = json!({"last_heartbeat_at": ws.last_heartbeat_at, "source": "liveness_sweep"});
        if ws.external {
            transition::set_status(&mut tx, &ws, Status::AwaitingAgent, None, payload).await?;
        } else {
            let ws = transition::set_status(&mut tx, &ws, Status::Offline, None, payload).await?;
            if let Restarted::Queued { .. } =
                lifecycle::request_restart(&mut tx, &ws, "liveness", "sweep:liveness").await?
            {
                restarted += 1;
            }
        }
        tx.commit().await?;
    }
    let redelivered = ops::redeliver_stranded(pool, STRANDED_AFTER).await?;
    if !redelivered.is_empty() {
        tracing::warn!(ops = ?redelivered, "re-delivered ops whose task had vanished");
    }
    let text = format!("{} stale, {restarted} restart(s) queued, {} op(s) re-delivered", ids.len(), redelivered.len());
    Ok(Report::new(text, !ids.is_empty() || !redelivered.is_empty()))
}
