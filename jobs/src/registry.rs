//! What agents call: register and heartbeat. Only these make a workspace `online`, and
//! only with a credential of the current instance: its workspace token, or the single-use
//! bootstrap secret delivered into it by the start that made it. Every start and stop
//! revokes both kinds, so an earlier instance can never bring the workspace online.

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Heartbeat, Registration, Status};
use crate::store::{workspace_bootstraps, workspace_tokens, workspaces};
use crate::transition;
use crate::{Error, Result};

/// What a register presented, as far as the api could tell before the body was read.
#[derive(Debug)]
pub enum Credential {
    /// The admin token, or the workspace's own live token.
    Verified,
    /// Anything else: it may be the workspace's bootstrap secret, checked under the
    /// workspace's row lock.
    Secret(String),
}

/// Returns the workspace's new token when the agent came in with its bootstrap secret.
pub async fn register(pool: &PgPool, id: Uuid, r: Registration, credential: Credential) -> Result<Option<String>> {
    let mut tx = crate::db::begin(pool).await?;
    match workspaces::lock(&mut tx, id).await? {
        Some(ws) if ws.status != Status::Removed => {}
        _ => return Err(Error::workspace_not_found(id)),
    }
    let token = match credential {
        Credential::Verified => None,
        Credential::Secret(secret) => {
            if !workspace_bootstraps::consume(&mut tx, id, &secret).await? {
                return Err(Error::Unauthorized(
                    "invalid credential: not this workspace's token, and not a live bootstrap secret \
                     (each is single-use and expires with the provision timeout)"
                        .into(),
                ));
            }
            workspace_tokens::revoke_all(&mut tx, id).await?;
            Some(workspace_tokens::mint(&mut tx, id).await?)
        }
    };
    let ws = workspaces::record_registration(&mut tx, id, r.agent_card.as_ref(), r.delivery_mode).await?;
    // A paused workspace stays paused: its agent may be the last breath of a stopping instance.
    if ws.status != Status::Paused {
        let ws = transition::set_status(
            &mut tx,
            &ws,
            Status::Online,
            None,
            json!({"url": r.url, "agent_card": r.agent_card}),
        )
        .await?;
        workspaces::set_url(&mut tx, ws.id, r.url.as_ref()).await?;
    }
    tx.commit().await?;
    Ok(token)
}

pub async fn heartbeat(pool: &PgPool, id: Uuid, h: Heartbeat) -> Result<()> {
    let mut tx = crate::db::begin(pool).await?;
    let ws = match workspaces::lock(&mut tx, id).await? {
        Some(ws) if ws.status != Status::Removed => ws,
        _ => return Err(Error::workspace_not_found(id)),
    };
    let status = ws.status;
    // The failure reason belongs to the platform while the workspace is failed.
    let reports_health = matches!(status, Status::Online | Status::Degraded | Status::Offline);
    let ws = workspaces::record_heartbeat(&mut tx, id, &h, reports_health).await?;
    let rate = ws.last_error_rate;
    // Provisioning is left to register: a heartbeat from the instance being replaced must
    // not declare the new one online.
    let next = match status {
        Status::Offline => Some(Status::Online),
        Status::Online if rate >= 0.5 => Some(Status::Degraded),
        Status::Degraded if rate < 0.1 => Some(Status::Online),
        _ => None,
    };
    if let Some(to) = next {
        transition::set_status(&mut tx, &ws, to, None, json!({"error_rate": rate})).await?;
    }
    tx.commit().await?;
    Ok(())
}
