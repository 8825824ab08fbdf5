//! Docker engines as operators see them: each workspace on Docker records the engine its
//! container lives on, and only workers serving that engine handle it (`ops::claim`). When
//! an engine is gone for good, retiring it settles what waited for it.

use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use crate::domain::Status;
use crate::events;
use crate::notify::OPS_CHANNEL;
use crate::store::{self, docker_engines, workspaces};
use crate::transition;
use crate::{Error, Result};

/// The longest engine id accepted (Docker's own ids are 64 characters or fewer).
pub const MAX_ENGINE_ID_CHARS: usize = 255;

/// What retiring an engine settled.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Retired {
    pub engine_id: String,
    pub retired_at: chrono::DateTime<chrono::Utc>,
    /// Stop ops that succeeded: the engine took their containers with it.
    pub stops_resolved: usize,
    /// Start ops canceled.
    pub starts_canceled: usize,
    /// Workspaces that were live on the engine and are now `failed`.
    pub workspaces_failed: usize,
}

pub fn parse_engine_id(raw: &str) -> Result<String> {
    let id = raw.trim();
    let problem = if id.is_empty() {
        Some("must not be empty".to_owned())
    } else if id.chars().count() > MAX_ENGINE_ID_CHARS {
        Some(format!("must be at most {MAX_ENGINE_ID_CHARS} characters"))
    } else if id.chars().any(char::is_control) {
        Some("must not contain control characters".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Invalid { field: "engine_id", problem }),
        None => Ok(id.to_owned()),
    }
}

/// Marks the engine retired and, in the same transaction, settles every workspace recorded
/// on it: their unfinished stops succeed (nothing is left to stop), their starts are
/// canceled, live ones become `failed`, and each forgets its instance so a later restart
/// starts afresh on another engine. Idempotent.
#[tracing::instrument(skip(pool))]
pub async fn retire(pool: &PgPool, engine_id: &str, by: &str) -> Result<Retired> {
    let why = format!("docker engine {engine_id} was retired");
    let stopped = "engine retired; nothing left to stop";
    let mut tx = crate::db::begin(pool).await?;
    let retired_at = docker_engines::retire(&mut tx, engine_id, by).await?;
    let (mut stops_resolved, mut starts_canceled, mut workspaces_failed) = (0, 0, 0);
    for id in docker_engines::lock_workspaces(&mut tx, engine_id).await? {
        let Some(ws) = workspaces::lock(&mut tx, id).await? else { continue };
        for op_id in docker_engines::resolve_ops(&mut tx, id, stopped, &why).await? {
            let op = crate::ops::get(&mut *tx, op_id).await?;
            if op.status == crate::domain::OpStatus::Succeeded {
                stops_resolved += 1;
            } else {
                starts_canceled += 1;
            }
            store::notify(&mut tx, OPS_CHANNEL, &format!("{} {}", op.id, op.workspace_id)).await?;
        }
        docker_engines::forget_instance(&mut tx, id).await?;
        if ws.status.can_become(Status::Failed) && ws.status != Status::Failed {
            transition::set_status(&mut tx, &ws, Status::Failed, Some(&why), json!({"docker_engine": engine_id}))
                .await?;
            workspaces_failed += 1;
        }
    }
    events::record(
        &mut tx,
        events::DOCKER_ENGINE_RETIRED,
        None,
        json!({"engine_id": engine_id, "by": by, "stops_resolved": stops_resolved,
            "starts_canceled": starts_canceled, "workspaces_failed": workspaces_failed}),
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(engine_id, stops_resolved, starts_canceled, workspaces_failed, "docker engine retired");
    Ok(Retired { engine_id: engine_id.to_owned(), retired_at, stops_resolved, starts_canceled, workspaces_failed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_ids_are_checked() {
        assert_eq!(parse_engine_id(" engine-a ").unwrap(), "engine-a");
        assert!(parse_engine_id("  ").unwrap_err().to_string().contains("must not be empty"));
        assert!(parse_engine_id(&"x".repeat(256)).unwrap_err().to_string().contains("at most 255"));
        assert!(parse_engine_id("a\nb").unwrap_err().to_string().contains("control"));
    }
}
