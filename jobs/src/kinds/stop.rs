//! Stop: remove the instance on the backend recorded on the workspace (never the one
//! configured now), and revoke the credentials it held, so nothing it sends while it dies
//! counts. Nothing recorded means nothing to stop.

use serde_json::json;

use crate::Result;
use crate::backend::BackendError;
use crate::domain::Workspace;
use crate::events;
use crate::kinds::JobContext;
use crate::ops::{Claim, Outcome};
use crate::store::{workspace_bootstraps, workspace_tokens, workspaces};

pub async fn run(ctx: &JobContext, claim: &Claim) -> Result<Outcome> {
    let Some(ws) = workspaces::get(&ctx.pool, claim.op.workspace_id).await? else {
        return Ok(Outcome::Skipped("workspace row is gone".into()));
    };
    // What this op's successors start is not ours to remove, however late this call comes.
    match stop_recorded(ctx, &ws, Some(claim.op.seq)).await {
        Ok(None) => Ok(Outcome::Succeeded("nothing to stop: no instance recorded".into())),
        Ok(Some(what)) => {
            let mut tx = crate::db::begin(&ctx.pool).await?;
            let ws = match claim.fence(&mut tx).await? {
                Ok(ws) => ws,
                Err(f) => return Ok(Outcome::Skipped(f.to_string())),
            };
            workspaces::clear_instance(&mut tx, ws.id).await?;
            // An external agent's token is its owner's, not an instance's.
            if !ws.external {
                workspace_tokens::revoke_all(&mut tx, ws.id).await?;
                workspace_bootstraps::revoke_all(&mut tx, ws.id).await?;
            }
            events::record(
                &mut tx,
                events::WORKSPACE_STOPPED,
                Some(ws.id),
                json!({"op_id": claim.op.id, "instance": what}),
            )
            .await?;
            tx.commit().await?;
            Ok(Outcome::Succeeded(format!("stopped {what}")))
        }
        Err(e) if e.is_transient() => Ok(Outcome::Retry(e.to_string())),
        Err(e) => Ok(Outcome::Failed(e.to_string())),
    }
}

/// Stops whatever the workspace row says is running, except what ops from sequence
/// `keep_from_seq` on started. `Ok(None)`: nothing was recorded.
pub async fn stop_recorded(
    ctx: &JobContext,
    ws: &Workspace,
    keep_from_seq: Option<i64>,
) -> Result<Option<String>, BackendError> {
    let Some(kind) = ws.backend else { return Ok(None) };
    let Some(backend) = ctx.backends.get(kind) else {
        return Err(BackendError::Transient(format!(
            "workspace runs on {} but this worker cannot reach that backend",
            kind.as_str()
        )));
    };
    let instance_ref = ws.instance_ref.clone().unwrap_or_default();
    backend.stop(ws.id, &instance_ref, keep_from_seq).await.map_err(|e| match e {
        BackendError::Transient(m) => BackendError::Transient(format!("{} stop failed: {m}", kind.as_str())),
        BackendError::Permanent(m) => BackendError::Permanent(format!("{} stop failed: {m}", kind.as_str())),
        BackendError::Superseded(m) => BackendError::Superseded(m),
    })?;
    Ok(Some(format!("{} {}", kind.as_str(), instance_ref)))
}
