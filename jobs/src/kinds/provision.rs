//! Provision: choose the backend, record it on the workspace, rotate the token, start the
//! instance idempotently. The workspace stays `provisioning`; its agent brings it online.

use serde_json::json;

use crate::Result;
use crate::backend::{NO_BACKEND_MESSAGE, StartSpec};
use crate::domain::Status;
use crate::events;
use crate::kinds::JobContext;
use crate::ops::{Claim, Outcome};
use crate::store::{worker_processes, workspace_tokens, workspaces};
use crate::transition;

pub async fn run(ctx: &JobContext, claim: &Claim) -> Result<Outcome> {
    if let Some(ws) = workspaces::get(&ctx.pool, claim.op.workspace_id).await?
        && matches!(ws.status, Status::Online | Status::Degraded)
    {
        // A re-delivered provision whose instance already came up (its worker died after
        // the start): the agent registered, so the work is done.
        return Ok(Outcome::Succeeded("the agent had already registered; nothing to start".into()));
    }
    start_instance(ctx, claim).await
}

/// Shared with restart, which stops the old instance first.
pub async fn start_instance(ctx: &JobContext, claim: &Claim) -> Result<Outcome> {
    let Some(backend) = ctx.backends.for_new_instance().cloned() else {
        // In a mixed fleet another worker may reach a backend: leave the op to it.
        if worker_processes::any_live_backend(&ctx.pool).await? == Some(true) {
            return Ok(Outcome::Retry("this worker reaches no backend; leaving the op to one that does".into()));
        }
        return Ok(Outcome::Failed(NO_BACKEND_MESSAGE.to_string()));
    };
    let mut tx = ctx.pool.begin().await?;
    let ws = match claim.fence(&mut tx).await? {
        Ok(ws) => ws,
        Err(f) => return Ok(Outcome::Skipped(f.to_string())),
    };
    let ws = match ws.status {
        Status::Removed | Status::Paused | Status::Failed => {
            return Ok(Outcome::Skipped(format!("workspace is {}", ws.status)));
        }
        Status::Provisioning => ws,
        // An agent registered (from the instance being replaced) since the op began: the
        // start goes ahead and the workspace waits for the new agent.
        _ => transition::set_status(&mut tx, &ws, Status::Provisioning, None, json!({"op_id": claim.op.id})).await?,
    };
    // Recorded before the start: if this worker dies mid-start, stop and the orphan sweep
    // still know where to look.
    let kind = backend.kind();
    let provisional_ref = ws.instance_ref.clone().filter(|_| ws.backend == Some(kind)).unwrap_or_default();
    workspaces::record_instance(&mut tx, ws.id, kind, &provisional_ref).await?;
    // Old tokens die with the old instance; backends that cannot deliver one leave the
    // agent to bootstrap through register.
    workspace_tokens::revoke_all(&mut tx, ws.id).await?;
    let token = if backend.delivers_token() { Some(workspace_tokens::mint(&mut tx, ws.id).await?) } else { None };
    tx.commit().await?;

    let spec = StartSpec {
        workspace_id: ws.id,
        op_id: claim.op.id,
        attempt: claim.lease,
        runtime: ws.runtime.clone(),
        tier: ws.tier,
        model: ws.model.clone(),
        platform_url: ctx.config.platform_url.clone(),
        token,
        heartbeat_interval_secs: (ctx.config.sweeps.liveness.stale_after.as_secs() / 3).clamp(1, 30),
    };
    let started = match backend.start(&spec).await {
        Ok(s) => s,
        Err(e) if e.is_transient() => return Ok(Outcome::Retry(format!("{} start failed: {e}", kind.as_str()))),
        Err(e) => return Ok(Outcome::Failed(format!("{} start failed: {e}", kind.as_str()))),
    };

    if let Some(pause) = ctx.config.worker.failpoint_after_start {
        tracing::warn!(pause_ms = pause.as_millis() as u64, "failpoint: pausing between start and its record");
        tokio::time::sleep(pause).await;
    }
    let mut tx = ctx.pool.begin().await?;
    if let Err(f) = claim.fence(&mut tx).await? {
        // The replacing worker records its own instance; ours has the same name/token scope.
        return Ok(Outcome::Skipped(f.to_string()));
    }
    workspaces::record_instance(&mut tx, ws.id, kind, &started.instance_ref).await?;
    events::record(
        &mut tx,
        events::WORKSPACE_STARTED,
        Some(ws.id),
        json!({"backend": kind, "instance_ref": started.instance_ref, "op_id": claim.op.id}),
    )
    .await?;
    tx.commit().await?;
    Ok(Outcome::Succeeded(format!("started {} {}", kind.as_str(), started.instance_ref)))
}
