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
//!
//! A Docker engine is reachable only from its own host, so its inventory is swept by one of
//! its own workers, once per period per engine ([`super::claim_engine_orphans`]); EC2's by
//! whichever worker wins the platform-wide period.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::Report;
use crate::Result;
use crate::backend::{Backend, BackendKind, Backends, InstanceState, ManagedInstance};
use crate::config::Env;
use crate::domain::{OpKind, Status};
use crate::events;
use crate::ops;
use crate::store::{self, workspace_ops, workspace_tokens, workspaces};

#[derive(Debug, Clone)]
pub struct Settings {
    /// `SWEEP_ORPHANS_SECONDS`; the sweep also runs at every worker start.
    pub every: Duration,
    /// `STALE_TOKEN_AFTER_SECONDS`: a live token of a workspace with no running instance is
    /// revoked after this long unused.
    pub stale_token_after: Duration,
    /// `ORPHANS_START_GRACE_SECONDS` (0 allowed): a worker reaps nothing until it has run
    /// this long, so one started by mistake against another deployment's engine or account
    /// can be stopped before it touches anything.
    pub start_grace: Duration,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings> {
        let grace: f64 = env.num("ORPHANS_START_GRACE_SECONDS", 60.0)?;
        if !(0.0..=86_400.0).contains(&grace) {
            return Err(crate::Error::Config("ORPHANS_START_GRACE_SECONDS must be between 0 and 86400".into()));
        }
        Ok(Settings {
            every: env.secs("SWEEP_ORPHANS_SECONDS", 60)?,
            stale_token_after: env.secs("STALE_TOKEN_AFTER_SECONDS", 300)?,
            start_grace: Duration::from_secs_f64(grace),
        })
    }
}

/// Sweeps every backend this process reaches.
pub async fn run(pool: &PgPool, backends: &Backends, settings: &Settings) -> Result<Report> {
    run_on(pool, backends.all(), settings).await
}

/// Sweeps the inventories of `backends` only.
pub async fn run_on(pool: &PgPool, backends: Vec<Arc<dyn Backend>>, settings: &Settings) -> Result<Report> {
    let mut running_workspaces: HashSet<Uuid> = HashSet::new();
    let mut inventoried: Vec<BackendKind> = vec![];
    let mut engine: Option<String> = None;
    let (mut reaped, mut stop_ops, mut failures) = (0, 0, 0);
    for backend in backends {
        let kind = backend.kind();
        let instances = match backend.list_managed().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(backend = kind.as_str(), error = %e, "orphans: inventory failed; this backend is skipped this period");
                failures += 1;
                continue;
            }
        };
        inventoried.push(kind);
        engine = engine.or(backend.engine().map(str::to_owned));
        for inst in instances {
            if inst.running
                && let Some(id) = inst.workspace_id
            {
                running_workspaces.insert(id);
            }
            match judge(pool, &backend, &inst).await {
                Ok(Verdict::Keep) => {}
                Ok(Verdict::Reaped) => reaped += 1,
                Ok(Verdict::StopQueued) => stop_ops += 1,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(backend = kind.as_str(), instance = %inst.instance_ref, error = %e, "orphans: could not handle instance");
                }
            }
        }
    }
    let revoked = revoke_stale_tokens(pool, settings, &inventoried, engine.as_deref(), &running_workspaces).await?;
    let text = format!(
        "{reaped} reaped, {stop_ops} stop op(s) queued, {revoked} stale token(s) revoked, {failures} failure(s)"
    );
    // A failure did nothing, but an operator should see the summary beside its warnings.
    Ok(Report::new(text, reaped + stop_ops + revoked + failures > 0))
}

enum Verdict {
    Keep,
    Reaped,
    StopQueued,
}

/// Decides and acts under the workspace's row lock, held across the backend call: a verb, a
/// claim or a start fence in between would otherwise slip past a decision made on a stale
/// read. (Every start fences on this lock before it touches the backend.)
async fn judge(pool: &PgPool, backend: &Arc<dyn Backend>, inst: &ManagedInstance) -> Result<Verdict> {
    let kind = backend.kind();
    let mut tx = crate::db::begin(pool).await?;
    store::allow_idle(&mut tx).await?;
    let ws = match inst.workspace_id {
        Some(id) => workspaces::lock(&mut tx, id).await?,
        None => None,
    };
    // The inventory was read before the lock: a stop may have removed the instance since.
    if backend.status(&inst.instance_ref).await? == InstanceState::Missing {
        return Ok(Verdict::Keep);
    }
    let Some(ws) = ws else {
        return reap(tx, backend, inst, "no workspace row", true).await;
    };
    let unfinished = workspace_ops::has_unfinished(&mut *tx, ws.id).await?;
    // On a Docker engine, "recorded" means this engine: another engine's workspace has no
    // business here (rows from before engines were recorded count as this engine's).
    let on_recorded_backend = ws.backend == Some(kind)
        && ws.docker_engine.as_deref().is_none_or(|recorded| backend.engine().is_none_or(|e| e == recorded));
    match ws.status {
        Status::Removed | Status::Paused if on_recorded_backend => {
            if unfinished || (ws.status == Status::Paused && !inst.running) {
                return Ok(Verdict::Keep);
            }
            let (op, new) = ops::request(&mut tx, &ws, OpKind::Stop, "orphan", "sweep:orphans").await?;
            events::record(
                &mut tx,
                events::ORPHAN_FOUND,
                Some(ws.id),
                json!({"backend": kind, "instance_ref": inst.instance_ref, "status": ws.status, "op_id": op.id}),
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(workspace_id = %ws.id, backend = kind.as_str(), instance = %inst.instance_ref, op_id = %op.id, new,
                "orphans: instance of a {} workspace is still there; stop queued", ws.status);
            Ok(Verdict::StopQueued)
        }
        Status::Removed => reap(tx, backend, inst, "workspace removed and recorded on another backend", true).await,
        _ if !on_recorded_backend && !unfinished => {
            reap(tx, backend, inst, "workspace runs on another backend", true).await
        }
        // A live workspace's instance that is not the recorded one (a restart whose stop of
        // the old instance gave up), with nothing in flight that could still record it.
        _ if !unfinished && ws.instance_ref.as_deref().is_some_and(|r| !r.is_empty() && r != inst.instance_ref) => {
            reap(tx, backend, inst, "not the workspace's recorded instance", false).await
        }
        _ => Ok(Verdict::Keep),
    }
}

/// Stops the instance; with `whole_workspace`, every instance of its workspace on this
/// backend (a stop given the nil id touches only the instance named). The event is written
/// in `tx`, which holds the workspace's lock until the reap is done, and committed.
async fn reap(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    backend: &Arc<dyn Backend>,
    inst: &ManagedInstance,
    why: &str,
    whole_workspace: bool,
) -> Result<Verdict> {
    let kind = backend.kind();
    let ws_id = inst.workspace_id.unwrap_or(Uuid::nil());
    // Two sweeps of one inventory (a worker's start-up sweep and its period's) can judge the
    // same instance from their own listings: the later one finds it gone and reports nothing.
    store::lock_instance(&mut tx, &inst.instance_ref).await?;
    if backend.status(&inst.instance_ref).await? == InstanceState::Missing {
        return Ok(Verdict::Keep);
    }
    backend.stop(if whole_workspace { ws_id } else { Uuid::nil() }, &inst.instance_ref, None).await?;
    tracing::warn!(workspace_id = %ws_id, backend = kind.as_str(), instance = %inst.instance_ref, reason = why, "orphans: reaped instance");
    events::record(
        &mut tx,
        events::ORPHAN_REAPED,
        inst.workspace_id,
        json!({"backend": kind, "instance_ref": inst.instance_ref, "reason": why}),
    )
    .await?;
    tx.commit().await?;
    crate::metrics::orphan_reaped();
    Ok(Verdict::Reaped)
}

/// Only workspaces recorded on a backend whose inventory we just read are judged.
async fn revoke_stale_tokens(
    pool: &PgPool,
    settings: &Settings,
    inventoried: &[BackendKind],
    docker_engine: Option<&str>,
    running: &HashSet<Uuid>,
) -> Result<u64> {
    if inventoried.is_empty() {
        return Ok(0);
    }
    let running: Vec<Uuid> = running.iter().copied().collect();
    let revoked =
        workspace_tokens::revoke_unused(pool, inventoried, docker_engine, &running, settings.stale_token_after).await?;
    if !revoked.is_empty() {
        let mut tx = crate::db::begin(pool).await?;
        for id in &revoked {
            events::record(&mut tx, events::TOKENS_REVOKED, Some(*id), json!({"reason": "no running instance"}))
                .await?;
        }
        tx.commit().await?;
        tracing::info!(workspaces = ?revoked, "orphans: revoked stale tokens of workspaces with no running instance");
    }
    Ok(revoked.len() as u64)
}
