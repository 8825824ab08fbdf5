//! The orphans sweep: nothing we start may outlive its workspace. Every reachable backend's
//! inventory (containers by label, instances by tag, this platform's only) is compared with
//! the workspace rows:
//! - no row at all, or no workspace label: reaped directly;
//! - a removed workspace, or a paused one with an instance still up: a stop op (unless one
//!   is already queued), so the reap is retried and recorded like any other stop;
//! - a live workspace recorded on another backend (a migration whose old stop gave up):
//!   reaped directly, since its stop op would go to the recorded backend;
//! - a live workspace's instance that is not its recorded one, with no op in flight (a
//!   restart whose stop of the old instance gave up): that instance alone is reaped.
//!
//! Then live tokens of workspaces with no running instance, unused for a while, are revoked,
//! so a re-created instance bootstraps a fresh one.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use crate::Result;
use crate::backend::{Backend, ManagedInstance};
use crate::events;
use crate::kinds::Runtime;
use crate::ops::{self, OpKind};
use crate::store::workspaces;
use crate::workspace::Status;

pub async fn run(rt: &Runtime) -> Result<String> {
    let mut running_workspaces: HashSet<Uuid> = HashSet::new();
    let mut inventoried: Vec<&'static str> = vec![];
    let (mut reaped, mut stop_ops, mut failures) = (0, 0, 0);
    for backend in rt.backends.all() {
        let kind = backend.kind().as_str();
        let instances = match backend.list_managed().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(backend = kind, error = %e, "orphans: inventory failed; this backend is skipped this period");
                failures += 1;
                continue;
            }
        };
        inventoried.push(kind);
        for inst in instances {
            if inst.running
                && let Some(id) = inst.workspace_id
            {
                running_workspaces.insert(id);
            }
            match judge(rt, backend, &inst).await {
                Ok(Verdict::Keep) => {}
                Ok(Verdict::Reaped) => reaped += 1,
                Ok(Verdict::StopQueued) => stop_ops += 1,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(backend = kind, instance = %inst.instance_ref, error = %e, "orphans: could not handle instance");
                }
            }
        }
    }
    let revoked = revoke_stale_tokens(rt, &inventoried, &running_workspaces).await?;
    Ok(format!(
        "{reaped} reaped, {stop_ops} stop op(s) queued, {revoked} stale token(s) revoked, {failures} failure(s)"
    ))
}

enum Verdict {
    Keep,
    Reaped,
    StopQueued,
}

async fn judge(rt: &Runtime, backend: &Arc<dyn Backend>, inst: &ManagedInstance) -> Result<Verdict> {
    let kind = backend.kind().as_str();
    let ws = match inst.workspace_id {
        Some(id) => workspaces::get(&rt.pool, id).await?,
        None => None,
    };
    let Some(ws) = ws else {
        return reap(rt, backend, inst, "no workspace row", true).await;
    };
    let unfinished = ops::has_unfinished(&rt.pool, ws.id).await?;
    let on_recorded_backend = ws.backend.as_deref() == Some(kind);
    match ws.status() {
        Status::Removed | Status::Paused if on_recorded_backend => {
            if unfinished || (ws.status() == Status::Paused && !inst.running) {
                return Ok(Verdict::Keep);
            }
            let mut tx = rt.pool.begin().await?;
            let Some(locked) = workspaces::lock(&mut tx, ws.id).await? else { return Ok(Verdict::Keep) };
            // Re-check under the lock: a resume since the scan must not be undone.
            let still_unfinished = ops::has_unfinished(&mut *tx, ws.id).await?;
            if locked.status() != ws.status() || still_unfinished {
                return Ok(Verdict::Keep);
            }
            let (op, new) = ops::request(
                &mut tx,
                &locked,
                OpKind::Stop,
                "orphan",
                "sweep:orphans",
                rt.config.policies().for_kind(OpKind::Stop),
            )
            .await?;
            events::record(
                &mut tx,
                events::ORPHAN_FOUND,
                Some(ws.id),
                json!({"backend": kind, "instance_ref": inst.instance_ref, "status": ws.status, "op_id": op.id}),
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(workspace_id = %ws.id, backend = kind, instance = %inst.instance_ref, op_id = %op.id, new,
                "orphans: instance of a {} workspace is still there; stop queued", ws.status);
            Ok(Verdict::StopQueued)
        }
        Status::Removed => reap(rt, backend, inst, "workspace removed and recorded on another backend", true).await,
        _ if !on_recorded_backend && !unfinished => {
            reap(rt, backend, inst, "workspace runs on another backend", true).await
        }
        // A live workspace's instance that is not the recorded one (a restart whose stop of
        // the old instance gave up), with nothing in flight that could still record it.
        _ if !unfinished && ws.instance_ref.as_deref().is_some_and(|r| !r.is_empty() && r != inst.instance_ref) => {
            reap(rt, backend, inst, "not the workspace's recorded instance", false).await
        }
        _ => Ok(Verdict::Keep),
    }
}

/// Stops the instance; with `whole_workspace`, every instance of its workspace on this
/// backend (a stop given the nil id touches only the instance named).
async fn reap(
    rt: &Runtime,
    backend: &Arc<dyn Backend>,
    inst: &ManagedInstance,
    why: &str,
    whole_workspace: bool,
) -> Result<Verdict> {
    let kind = backend.kind().as_str();
    let ws_id = inst.workspace_id.unwrap_or(Uuid::nil());
    backend.stop(if whole_workspace { ws_id } else { Uuid::nil() }, &inst.instance_ref).await?;
    tracing::warn!(workspace_id = %ws_id, backend = kind, instance = %inst.instance_ref, reason = why, "orphans: reaped instance");
    let mut tx = rt.pool.begin().await?;
    events::record(
        &mut tx,
        events::ORPHAN_REAPED,
        inst.workspace_id,
        json!({"backend": kind, "instance_ref": inst.instance_ref, "reason": why}),
    )
    .await?;
    tx.commit().await?;
    Ok(Verdict::Reaped)
}

/// Only workspaces recorded on a backend whose inventory we just read are judged.
async fn revoke_stale_tokens(rt: &Runtime, inventoried: &[&str], running: &HashSet<Uuid>) -> Result<u64> {
    if inventoried.is_empty() {
        return Ok(0);
    }
    let running: Vec<Uuid> = running.iter().copied().collect();
    let backends: Vec<String> = inventoried.iter().map(|s| s.to_string()).collect();
    let revoked: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE workspace_tokens t SET revoked_at = now()
           FROM workspaces w
          WHERE t.workspace_id = w.id AND t.revoked_at IS NULL
            AND w.status NOT IN ('removed', 'provisioning') AND NOT w.external
            AND w.backend = ANY($1) AND NOT (w.id = ANY($2))
            AND coalesce(t.last_used_at, t.created_at) < now() - $3 * interval '1 millisecond'
          RETURNING t.workspace_id",
    )
    .bind(&backends)
    .bind(&running)
    .bind(rt.config.stale_token_after.as_millis() as f64)
    .fetch_all(&rt.pool)
    .await?;
    if !revoked.is_empty() {
        let mut tx = rt.pool.begin().await?;
        for id in &revoked {
            events::record(&mut tx, events::TOKENS_REVOKED, Some(*id), json!({"reason": "no running instance"}))
                .await?;
        }
        tx.commit().await?;
        tracing::info!(workspaces = ?revoked, "orphans: revoked stale tokens of workspaces with no running instance");
    }
    Ok(revoked.len() as u64)
}
