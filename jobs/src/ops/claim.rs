//! Claiming an op for one delivery of its task, and the lease that fences every write made
//! on the claim's behalf.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{announce, deliver};
use crate::Result;
use crate::backend::BackendKind;
use crate::domain::{Op, OpKind, Status, Workspace};
use crate::fleet::Snapshot;
use crate::notify::OPS_CHANNEL;
use crate::store::{docker_engines, paused_queues, worker_processes, workspace_ops, workspaces};

/// Who claims: a worker process, what it can reach, and how long its lease lasts.
#[derive(Debug, Clone)]
pub struct Claimant<'a> {
    /// `worker_processes.id`, recorded as the op's `claimed_by`.
    pub worker: &'a str,
    pub lease: Duration,
    /// Whether it can start new instances at all.
    pub starts: bool,
    /// The backends it reaches for instances already recorded.
    pub reaches: Vec<BackendKind>,
    /// The Docker engines it serves: a workspace recorded on an engine is handled only by
    /// workers serving it.
    pub engines: Vec<String>,
    /// The engine its new instances start on, when they start on Docker.
    pub new_on_engine: Option<String>,
}

/// A claimed op: the lease fences every write made on its behalf.
#[derive(Debug, Clone)]
pub struct Claim {
    pub op: Op,
    pub lease: i64,
    /// The workspace as the claim found it, under its row lock: handlers decide from this
    /// instead of reading the row again.
    pub workspace: ClaimedWorkspace,
}

/// What a handler needs of the workspace at claim time.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedWorkspace {
    #[sqlx(rename = "ws_status")]
    pub status: Status,
    #[sqlx(rename = "ws_backend")]
    pub backend: Option<BackendKind>,
    #[sqlx(rename = "ws_instance_ref")]
    pub instance_ref: Option<String>,
    #[sqlx(rename = "ws_external")]
    pub external: bool,
    #[sqlx(rename = "ws_docker_engine")]
    pub docker_engine: Option<String>,
}

impl From<&Workspace> for ClaimedWorkspace {
    fn from(ws: &Workspace) -> Self {
        ClaimedWorkspace {
            status: ws.status,
            backend: ws.backend,
            instance_ref: ws.instance_ref.clone(),
            external: ws.external,
            docker_engine: ws.docker_engine.clone(),
        }
    }
}

#[derive(Debug)]
pub enum ClaimResult {
    Claimed(Box<Claim>),
    /// Nothing to do; the reason is logged.
    Skip(String),
}

/// A deferred redelivery lands this long after the lease it waits for would expire, so it
/// finds the lease renewed or expired, not about to expire.
const DEFER_MARGIN: Duration = Duration::from_millis(500);

/// How long an op left to other workers waits for its next delivery.
const ELSEWHERE_DELAY: Duration = Duration::from_secs(2);

/// How often an op of a paused kind is offered again: how soon it starts once resumed.
const PAUSED_DELAY: Duration = Duration::from_secs(2);

/// How often an op waiting for a Docker engine no live worker serves looks again: a quarter
/// of how long it has waited, within these bounds, so a host that is back soon is found
/// soon, and the many ops of a host that stays down cost little.
const ENGINE_WAIT_DELAY: (Duration, Duration) = (Duration::from_secs(3), Duration::from_secs(30));

/// A fresh start is left to another engine when that engine has at least this many fewer
/// live workspaces than the claimant's: small enough to spread, large enough that two
/// engines with near-equal load do not pass every new workspace back and forth.
pub const SPREAD_MARGIN: i64 = 2;

/// Claims `op_id` for the delivery of apalis task `task_id`. Two cases give the op a new
/// task and drop this one instead:
/// - a running op whose lease has not expired is not taken over: its holder is alive (it
///   renews the lease) whatever apalis concluded from its own heartbeat; the new task is
///   due when that lease would expire;
/// - an op needing a backend the claimant lacks, while another live worker advertises it:
///   claiming it here would only use up an attempt.
///
/// The common case (a queued head op that this worker can run) is one statement
/// ([`claim_directly`], which workers run for many deliveries at once); anything else takes
/// [`claim_exactly`].
pub async fn claim(pool: &PgPool, op_id: Uuid, task_id: &str, claimant: &Claimant<'_>) -> Result<ClaimResult> {
    let fleet = Snapshot::read(pool).await?;
    let delivery = [(op_id, task_id.to_owned())];
    if let Some(claim) = claim_directly(pool, &delivery, claimant, &fleet).await?.pop() {
        return Ok(ClaimResult::Claimed(Box::new(claim)));
    }
    claim_exactly(pool, op_id, task_id, claimant).await
}

/// The exact path of [`claim`], for a delivery the one-statement claim did not take: it
/// reads the fleet afresh inside the transaction before it leaves an op to others.
pub async fn claim_exactly(pool: &PgPool, op_id: Uuid, task_id: &str, claimant: &Claimant<'_>) -> Result<ClaimResult> {
    let mut tx = crate::db::begin(pool).await?;
    let Some(workspace_id) = workspace_ops::workspace_of(&mut *tx, op_id).await? else {
        return Ok(ClaimResult::Skip(format!("op {op_id} does not exist")));
    };
    let Some(ws) = workspaces::lock(&mut tx, workspace_id).await? else {
        return Ok(ClaimResult::Skip(format!("workspace {workspace_id} does not exist")));
    };
    let Some(op) = workspace_ops::lock(&mut tx, op_id).await? else {
        return Ok(ClaimResult::Skip(format!("op {op_id} does not exist")));
    };
    if op.is_final() {
        return Ok(ClaimResult::Skip(format!("op is already {}", op.status)));
    }
    if op.task_id.as_deref() != Some(task_id) {
        return Ok(ClaimResult::Skip(format!("task {task_id} is stale; op is delivered by {:?}", op.task_id)));
    }
    if let Some(head) = workspace_ops::head(&mut tx, workspace_id).await?
        && head.id != op.id
    {
        // Not its turn (should not happen): drop the task; advance() re-delivers it.
        workspace_ops::set_task(&mut tx, op.id, None).await?;
        tx.commit().await?;
        return Ok(ClaimResult::Skip(format!("op {} of the same workspace runs first", head.id)));
    }
    if let Some(left) = workspace_ops::lease_left(&mut tx, op.id).await? {
        let task = deliver(&mut tx, op.id, Some(left + DEFER_MARGIN)).await?;
        tx.commit().await?;
        return Ok(ClaimResult::Skip(format!(
            "op is running under a live lease held by {}; redelivery deferred by {} ms as task {task}",
            op.claimed_by.as_deref().unwrap_or("an unknown worker"),
            (left + DEFER_MARGIN).as_millis()
        )));
    }
    if paused_queues::is_paused(&mut *tx, op.kind.as_str()).await? {
        // Not an attempt: the op waits, as queued, for its kind to be resumed.
        let task = deliver(&mut tx, op.id, Some(PAUSED_DELAY)).await?;
        tx.commit().await?;
        return Ok(ClaimResult::Skip(format!(
            "{} ops are paused by an operator; redelivered as task {task} in {} ms",
            op.kind.as_str(),
            PAUSED_DELAY.as_millis()
        )));
    }
    match engine_route(&mut tx, &op, &ws, claimant).await? {
        EngineRoute::Here => {}
        EngineRoute::Elsewhere(why) => {
            let task = deliver(&mut tx, op.id, Some(ELSEWHERE_DELAY)).await?;
            tx.commit().await?;
            return Ok(ClaimResult::Skip(format!("{why}: left to another worker, redelivered as task {task}")));
        }
        EngineRoute::Wait(why) => {
            let waited = workspace_ops::set_waiting(&mut tx, op.id, &why).await?;
            let delay = (waited / 4).clamp(ENGINE_WAIT_DELAY.0, ENGINE_WAIT_DELAY.1);
            let task = deliver(&mut tx, op.id, Some(delay)).await?;
            tx.commit().await?;
            tracing::warn!(op_id = %op.id, workspace_id = %ws.id, reason = %why, "op waits for its Docker engine");
            return Ok(ClaimResult::Skip(format!("{why}; redelivered as task {task}")));
        }
    }
    if let Some(needed) = needed_elsewhere(&mut tx, &op, &ws, claimant).await? {
        let task = deliver(&mut tx, op.id, Some(ELSEWHERE_DELAY)).await?;
        tx.commit().await?;
        return Ok(ClaimResult::Skip(format!(
            "this worker cannot reach {needed} and another live worker can: left to it, redelivered as task {task}"
        )));
    }
    let op = workspace_ops::mark_running(&mut tx, op_id, claimant.lease, claimant.worker).await?;
    announce(&mut tx, &op).await?;
    tx.commit().await?;
    Ok(ClaimResult::Claimed(Box::new(Claim { lease: op.lease, op, workspace: (&ws).into() })))
}

/// The one-statement claim of several deliveries (op id, task id) at once: locks their
/// workspaces, then marks each op running only if it is queued, delivered by its task, its
/// workspace's head, and not better left to another worker by `fleet`; announces them at
/// commit. Returns the claims made, in no particular order; for a delivery not among them
/// (any of that does not hold, or the statement's snapshot, taken before the lock was
/// granted, is too old to tell) the exact path decides.
pub async fn claim_directly(
    pool: &PgPool,
    deliveries: &[(Uuid, String)],
    claimant: &Claimant<'_>,
    fleet: &Snapshot,
) -> Result<Vec<Claim>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        op: Op,
        #[sqlx(flatten)]
        workspace: ClaimedWorkspace,
    }
    let reaches: Vec<&str> = claimant.reaches.iter().map(|k| k.as_str()).collect();
    let others = fleet.others_backends(claimant.worker);
    let weigh_spread = claimant.new_on_engine.as_deref().is_some_and(|e| fleet.other_engines_live(claimant.worker, e));
    let ops: Vec<Uuid> = deliveries.iter().map(|(op, _)| *op).collect();
    let tasks: Vec<&str> = deliveries.iter().map(|(_, task)| task.as_str()).collect();
    let rows: Vec<Row> = sqlx::query_as(workspace_ops::CLAIM_DIRECTLY)
        .bind(&ops)
        .bind(&tasks)
        .bind(claimant.lease.as_millis() as f64)
        .bind(claimant.worker)
        .bind(&reaches)
        .bind(claimant.starts)
        .bind(&others)
        .bind(OPS_CHANNEL)
        .bind(&claimant.engines)
        .bind(weigh_spread)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| Claim { lease: r.op.lease, op: r.op, workspace: r.workspace }).collect())
}

/// Where an op must run as far as Docker engines go.
enum EngineRoute {
    Here,
    /// Another live worker should take it.
    Elsewhere(String),
    /// No live worker serves the engine the workspace's container is on: the op waits for
    /// one, and never runs anywhere else.
    Wait(String),
}

/// A workspace recorded on an engine is handled by that engine's workers only. A fresh
/// start on Docker goes to the claimant's engine unless another live engine is less loaded
/// by [`SPREAD_MARGIN`] or more (or the claimant's engine is retired).
async fn engine_route(
    conn: &mut PgConnection,
    op: &Op,
    ws: &Workspace,
    claimant: &Claimant<'_>,
) -> Result<EngineRoute> {
    if let Some(engine) = ws.docker_engine.as_deref() {
        if claimant.engines.iter().any(|e| e == engine) {
            return Ok(EngineRoute::Here);
        }
        if worker_processes::others_serve_engine(&mut *conn, claimant.worker, engine).await? {
            return Ok(EngineRoute::Elsewhere(format!(
                "the workspace is on Docker engine {engine}, which this worker does not serve"
            )));
        }
        return Ok(EngineRoute::Wait(format!("waiting for engine {engine}: no live worker serves it")));
    }
    let (Some(mine), OpKind::Provision | OpKind::Restart, false) =
        (claimant.new_on_engine.as_deref(), op.kind, ws.external)
    else {
        return Ok(EngineRoute::Here);
    };
    let load = docker_engines::live_load(&mut *conn).await?;
    let my_load = load.iter().find(|(e, _, _)| e == mine);
    let my_count = my_load.map_or(0, |(_, n, _)| *n);
    let my_retired = my_load.is_some_and(|(_, _, retired)| *retired);
    let lightest = load.iter().filter(|(e, _, retired)| e != mine && !retired).min_by_key(|(_, n, _)| *n);
    Ok(match lightest {
        Some((other, n, _)) if my_retired => {
            EngineRoute::Elsewhere(format!("engine {mine} is retired; engine {other} ({n} workspaces) takes new ones"))
        }
        Some((other, n, _)) if my_count - n >= SPREAD_MARGIN => EngineRoute::Elsewhere(format!(
            "engine {other} has {n} live workspaces to this engine's ({mine}) {my_count}"
        )),
        _ => EngineRoute::Here,
    })
}

/// The backend the op needs when the claimant lacks it and another live worker advertises it.
async fn needed_elsewhere(
    conn: &mut PgConnection,
    op: &Op,
    ws: &Workspace,
    claimant: &Claimant<'_>,
) -> Result<Option<&'static str>> {
    // A recorded instance needs its own backend to be stopped (stop, and restart's first half).
    if matches!(op.kind, OpKind::Stop | OpKind::Restart)
        && let Some(kind) = ws.backend
        && !claimant.reaches.contains(&kind)
        && worker_processes::others_advertise(&mut *conn, claimant.worker, Some(kind.as_str())).await?
    {
        return Ok(Some(kind.as_str()));
    }
    if matches!(op.kind, OpKind::Provision | OpKind::Restart)
        && !ws.external
        && !claimant.starts
        && worker_processes::others_advertise(&mut *conn, claimant.worker, None).await?
    {
        return Ok(Some("any backend"));
    }
    Ok(None)
}

#[derive(Debug, thiserror::Error)]
#[error("op {0} was claimed by another worker")]
pub struct Fenced(pub Uuid);

impl Claim {
    /// Locks the workspace and checks this claim still owns the op. Every write a job makes
    /// goes through a transaction that called this first.
    pub async fn fence(&self, conn: &mut PgConnection) -> Result<Result<Workspace, Fenced>> {
        let ws = workspaces::lock_existing(conn, self.op.workspace_id).await?;
        let owned = workspace_ops::lock_owned(conn, self.op.id, self.lease).await?;
        Ok(if owned { Ok(ws) } else { Err(Fenced(self.op.id)) })
    }
}
