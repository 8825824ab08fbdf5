//! Periodic maintenance, one unit per file, each with its own settings: provision-timeout,
//! liveness, orphans, retention, delegations and pending-uploads (ADR 0004).
//!
//! Every worker ticks (see the worker's scheduler); a sweep's period is claimed by
//! inserting its `(sweep, period_start)` row in the transaction that enqueues its task, so
//! each period runs once however many workers there are. Runs of one sweep never overlap: a
//! period whose predecessor is still running is recorded as skipped (a retention pass over
//! a large backlog can outlast a short period). A sweep has no retries: the next period
//! runs it again.

pub mod delegations;
pub mod liveness;
pub mod orphans;
pub mod pending_uploads;
pub mod provision_timeout;
pub mod report;
pub mod retention;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

pub use report::Report;

use crate::Result;
use crate::config::Env;
use crate::kinds::JobContext;
use crate::metrics::{self, JobEnd, JobKind};
use crate::queue::{self, SWEEP_QUEUE, SweepTask};
use crate::store::sweep_runs;

/// The settings of every sweep, read from the environment.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub provision_timeout: provision_timeout::Settings,
    pub liveness: liveness::Settings,
    pub orphans: orphans::Settings,
    pub retention: retention::Settings,
    pub delegations: delegations::Settings,
    pub pending_uploads: pending_uploads::Settings,
}

impl SweepSettings {
    pub fn from_env(env: &Env) -> Result<SweepSettings> {
        Ok(SweepSettings {
            provision_timeout: provision_timeout::Settings::from_env(env)?,
            liveness: liveness::Settings::from_env(env)?,
            orphans: orphans::Settings::from_env(env)?,
            retention: retention::Settings::from_env(env)?,
            delegations: delegations::Settings::from_env(env)?,
            pending_uploads: pending_uploads::Settings::from_env(env)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepKind {
    ProvisionTimeout,
    Liveness,
    Orphans,
    Retention,
    Delegations,
    PendingUploads,
}

impl SweepKind {
    pub const ALL: [SweepKind; 6] = [
        SweepKind::ProvisionTimeout,
        SweepKind::Liveness,
        SweepKind::Orphans,
        SweepKind::Retention,
        SweepKind::Delegations,
        SweepKind::PendingUploads,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SweepKind::ProvisionTimeout => "provision-timeout",
            SweepKind::Liveness => "liveness",
            SweepKind::Orphans => "orphans",
            SweepKind::Retention => "retention",
            SweepKind::Delegations => "delegations",
            SweepKind::PendingUploads => "pending-uploads",
        }
    }

    pub fn parse(s: &str) -> Option<SweepKind> {
        SweepKind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn period(self, settings: &SweepSettings) -> Duration {
        match self {
            SweepKind::ProvisionTimeout => settings.provision_timeout.every,
            SweepKind::Liveness => settings.liveness.every,
            SweepKind::Orphans => settings.orphans.every,
            SweepKind::Retention => settings.retention.every,
            SweepKind::Delegations => settings.delegations.every,
            SweepKind::PendingUploads => settings.pending_uploads.every,
        }
    }
}

/// Claims the current period of `kind` and enqueues its task. Returns whether this caller
/// won the period; a loser writes nothing.
pub async fn claim_period(pool: &PgPool, kind: SweepKind, period: Duration) -> Result<bool> {
    let mut tx = crate::db::begin(pool).await?;
    let Some(period_start) = sweep_runs::claim(&mut tx, kind.name(), period).await? else {
        return Ok(false);
    };
    let task = SweepTask { v: queue::PAYLOAD_VERSION, sweep: kind.name().to_string(), period_start };
    let task_id = queue::enqueue(&mut tx, SWEEP_QUEUE, &task, None).await?;
    sweep_runs::set_task(&mut tx, kind.name(), period_start, &task_id).await?;
    tx.commit().await?;
    metrics::enqueued(JobKind::Sweep);
    Ok(true)
}

/// Runs the sweep a task names and records its outcome on its period's row.
pub async fn run(ctx: &JobContext, task: &SweepTask) -> Result<()> {
    let Some(kind) = SweepKind::parse(&task.sweep) else {
        tracing::warn!(sweep = %task.sweep, "unknown sweep kind; ignoring");
        return Ok(());
    };
    let settings = &ctx.config.sweeps;
    // Lazy: it runs only once the period's lock is held.
    let work = async {
        match kind {
            SweepKind::ProvisionTimeout => {
                provision_timeout::run(&ctx.pool, &settings.provision_timeout, &ctx.config.platform_url).await
            }
            SweepKind::Liveness => liveness::run(&ctx.pool, &settings.liveness).await,
            SweepKind::Orphans => match orphans_in_grace(ctx) {
                Some(skipped) => Ok(skipped),
                // The platform-wide period covers EC2; each Docker engine has its own.
                None => orphans::run_on(&ctx.pool, ctx.backends.ec2.iter().cloned().collect(), &settings.orphans).await,
            },
            SweepKind::Retention => {
                retention::run(&ctx.pool, &settings.retention).await.map(|p| Report::new(p.to_string(), p.acted()))
            }
            SweepKind::Delegations => delegations::run(&ctx.pool, &settings.delegations).await,
            SweepKind::PendingUploads => pending_uploads::run(&ctx.pool).await,
        }
    };
    run_period(ctx, kind.name(), task.period_start, work).await
}

/// Runs one claimed period of sweep `name`, unless its previous run still holds the
/// sweep's lock, and records the outcome on the period's row. Sweeps that found nothing
/// to do log at DEBUG.
async fn run_period(
    ctx: &JobContext,
    name: &str,
    period_start: DateTime<Utc>,
    work: impl Future<Output = Result<Report>>,
) -> Result<()> {
    // Held (one idle connection) for the whole run; the sweep's own statements use others.
    let mut guard = crate::db::begin(&ctx.pool).await?;
    if !sweep_runs::try_lock(&mut guard, name).await? {
        let text = "skipped: the previous run of this sweep is still going";
        tracing::info!(sweep = name, "{text}");
        sweep_runs::mark_finished(&ctx.pool, name, period_start, text).await?;
        return Ok(());
    }
    sweep_runs::mark_started(&ctx.pool, name, period_start).await?;
    let started = std::time::Instant::now();
    metrics::claimed(JobKind::Sweep);
    let (text, end) = match work.await {
        Ok(r) if r.acted => {
            tracing::info!(sweep = name, outcome = %r, "sweep finished");
            (r.text, JobEnd::Succeeded)
        }
        Ok(r) => {
            tracing::debug!(sweep = name, outcome = %r, "sweep finished");
            (r.text, JobEnd::Succeeded)
        }
        Err(e) => {
            tracing::warn!(sweep = name, error = %e, "sweep failed");
            (format!("error: {e}"), JobEnd::Failed)
        }
    };
    metrics::ended(JobKind::Sweep, end, started.elapsed());
    sweep_runs::mark_finished(&ctx.pool, name, period_start, &text).await?;
    guard.commit().await?;
    Ok(())
}

/// A worker reaps nothing in its first `ORPHANS_START_GRACE_SECONDS`: what looks orphaned
/// may be a start a peer has not recorded yet.
fn orphans_in_grace(ctx: &JobContext) -> Option<Report> {
    let grace = ctx.config.sweeps.orphans.start_grace;
    (ctx.started.elapsed() < grace).then(|| {
        Report::idle(format!(
            "skipped: this worker started {}s ago and reaps nothing before ORPHANS_START_GRACE_SECONDS={}",
            ctx.started.elapsed().as_secs(),
            grace.as_secs()
        ))
    })
}

/// The period name of the orphans sweep of one Docker engine.
pub fn engine_orphans_name(engine: &str) -> String {
    format!("orphans:docker:{engine}")
}

/// Claims the current period of this worker's Docker engine's orphans sweep and, if won,
/// runs it here: only a worker on the engine's host can read its inventory, so the period
/// is not handed to the shared queue. Returns whether this worker won the period.
pub async fn claim_engine_orphans(ctx: &JobContext) -> Result<bool> {
    let (Some(docker), Some(engine)) = (ctx.backends.docker(), ctx.backends.docker_engine()) else {
        return Ok(false);
    };
    let name = engine_orphans_name(&engine);
    let settings = &ctx.config.sweeps.orphans;
    let mut tx = crate::db::begin(&ctx.pool).await?;
    let Some(period_start) = sweep_runs::claim(&mut tx, &name, settings.every).await? else {
        return Ok(false);
    };
    tx.commit().await?;
    let work = async {
        match orphans_in_grace(ctx) {
            Some(skipped) => Ok(skipped),
            None => orphans::run_on(&ctx.pool, vec![docker], settings).await,
        }
    };
    run_period(ctx, &name, period_start, work).await?;
    Ok(true)
}
