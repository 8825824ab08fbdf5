//! Provision: choose the backend, record it on the workspace, revoke the old credentials,
//! mint the new instance's bootstrap secret, start the instance idempotently. The workspace
//! stays `provisioning`; its agent brings it online by registering with that secret.

use serde_json::json;

use crate::Result;
use crate::backend::{BackendError, InstanceState, NO_BACKEND_MESSAGE, StartSpec};
use crate::domain::Status;
use crate::events;
use crate::kinds::JobContext;
use crate::ops::{Claim, Outcome};
use crate::store::{workspace_bootstraps, workspace_tokens, workspaces};
use crate::transition;

pub async fn run(ctx: &JobContext, claim: &Claim) -> Result<Outcome> {
    let ws = &claim.workspace;
    if matches!(ws.status, Status::Online | Status::Degraded)
        && let (Some(kind), Some(instance)) = (ws.backend, ws.instance_ref.as_deref().filter(|r| !r.is_empty()))
        && let Some(backend) = ctx.backends.get(kind)
    {
        // A re-delivered provision whose instance already came up (its worker died after
        // the start) is done, but only if that instance is still running: a registration
        // alone proves nothing about what runs now.
        match backend.status(instance).await {
            Ok(InstanceState::Running) => {
                return Ok(Outcome::Succeeded(format!(
                    "{} {instance} is running and its agent registered; nothing to start",
                    kind.as_str()
                )));
            }
            Ok(state) => tracing::info!(?state, instance, "the registered instance is not running; starting anew"),
            Err(e) => return Ok(Outcome::Retry(format!("could not check {} {instance}: {e}", kind.as_str()))),
        }
    }
    start_instance(ctx, claim).await
}

/// Shared with restart, which stops the old instance first.
pub async fn start_instance(ctx: &JobContext, claim: &Claim) -> Result<Outcome> {
    let Some(backend) = ctx.backends.for_new_instance() else {
        // In a mixed fleet another worker may reach a backend: leave the op to it.
        if ctx.fleet.snapshot().await?.any_live_backend() == Some(true) {
            return Ok(Outcome::Retry("this worker reaches no backend; leaving the op to one that does".into()));
        }
        return Ok(Outcome::Failed(NO_BACKEND_MESSAGE.to_string()));
    };
    let mut tx = crate::db::begin(&ctx.pool).await?;
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
    let engine = backend.engine().map(str::to_owned);
    let provisional_ref = ws.instance_ref.clone().filter(|_| ws.backend == Some(kind)).unwrap_or_default();
    workspaces::mark_starting(&mut tx, ws.id, kind, &provisional_ref, engine.as_deref()).await?;
    // Old credentials die with the old instance: only the one started now can register.
    workspace_tokens::revoke_all(&mut tx, ws.id).await?;
    let valid_for = ctx.config.sweeps.provision_timeout.timeout(&ws.runtime);
    let bootstrap_secret = workspace_bootstraps::mint(&mut tx, ws.id, claim.op.id, valid_for).await?;
    tx.commit().await?;

    let spec = StartSpec {
        workspace_id: ws.id,
        op_id: claim.op.id,
        op_seq: claim.op.seq,
        lease: claim.lease,
        runtime: ws.runtime.clone(),
        tier: ws.tier,
        model: ws.model.clone(),
        platform_url: ctx.config.platform_url.clone(),
        bootstrap_secret,
        heartbeat_interval_secs: (ctx.config.sweeps.liveness.stale_after.as_secs() / 3).clamp(1, 30),
        reset_session: claim.op.reset_session,
        // An image is pinned only on the backend that recorded it.
        image: ws.runtime_image.clone().filter(|_| ws.backend == Some(kind) && !claim.op.upgrade_image),
    };
    let started = match backend.start(&spec).await {
        Ok(s) => s,
        Err(BackendError::Superseded(why)) => return Ok(Outcome::Skipped(why)),
        Err(e) if e.is_transient() => return Ok(Outcome::Retry(format!("{} start failed: {e}", kind.as_str()))),
        Err(e) => return Ok(Outcome::Failed(format!("{} start failed: {e}", kind.as_str()))),
    };

    if let Some(pause) = ctx.config.worker.failpoint_after_start {
        tracing::warn!(pause_ms = pause.as_millis() as u64, "failpoint: pausing between start and its record");
        tokio::time::sleep(pause).await;
    }
    let mut tx = crate::db::begin(&ctx.pool).await?;
    if let Err(f) = claim.fence(&mut tx).await? {
        // Superseded while starting: what this start made must not outlive it (its secret
        // is revoked already; the claim that superseded us records its own instance).
        drop(tx);
        if let Err(e) = backend.discard(&started).await {
            tracing::warn!(error = %e, made = %started.made, "could not discard a superseded start; the orphans sweep will");
        }
        return Ok(Outcome::Skipped(f.to_string()));
    }
    workspaces::record_instance(
        &mut tx,
        ws.id,
        kind,
        &started.instance_ref,
        started.image.as_deref(),
        engine.as_deref(),
    )
    .await?;
    events::record(
        &mut tx,
        events::WORKSPACE_STARTED,
        Some(ws.id),
        json!({"backend": kind, "instance_ref": started.instance_ref, "image": started.image, "op_id": claim.op.id,
            "reset_session": claim.op.reset_session, "docker_engine": engine}),
    )
    .await?;
    tx.commit().await?;
    Ok(Outcome::Succeeded(match &engine {
        Some(engine) => format!("started {} {} on engine {engine}", kind.as_str(), started.instance_ref),
        None => format!("started {} {}", kind.as_str(), started.instance_ref),
    }))
}
