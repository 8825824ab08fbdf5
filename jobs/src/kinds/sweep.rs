//! Periodic sweeps. Every worker ticks; a sweep's period is claimed by inserting its
//! `(sweep, period_start)` row in the transaction that enqueues its task, so each period
//! runs once however many workers there are. A sweep has no retries: the next period
//! runs it again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;
use crate::kinds::Runtime;
use crate::lifecycle::{self, Restarted};
use crate::ops;
use crate::queue::{self, SWEEP_QUEUE, SweepTask};
use crate::store::workspaces;
use crate::workspace::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepKind {
    ProvisionTimeout,
    Liveness,
    Orphans,
    Retention,
}

impl SweepKind {
    pub const ALL: [SweepKind; 4] =
        [SweepKind::ProvisionTimeout, SweepKind::Liveness, SweepKind::Orphans, SweepKind::Retention];

    pub fn name(self) -> &'static str {
        match self {
            SweepKind::ProvisionTimeout => "provision-timeout",
            SweepKind::Liveness => "liveness",
            SweepKind::Orphans => "orphans",
            SweepKind::Retention => "retention",
        }
    }

    pub fn parse(s: &str) -> Option<SweepKind> {
        SweepKind::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn period(self, config: &crate::config::Config) -> Duration {
        match self {
            SweepKind::ProvisionTimeout => config.sweep_provision_timeout_every,
            SweepKind::Liveness => config.sweep_liveness_every,
            SweepKind::Orphans => config.sweep_orphans_every,
            SweepKind::Retention => config.sweep_retention_every,
        }
    }
}

/// Claims the current period of `kind` (by the database clock, so workers' clocks do not
/// matter) and enqueues its task. Returns whether this caller won the period.
pub async fn claim_period(pool: &PgPool, kind: SweepKind, period: Duration) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let period_start: DateTime<Utc> =
        sqlx::query_scalar("SELECT to_timestamp(floor(extract(epoch FROM now()) * 1000 / $1) * $1 / 1000)")
            .bind(period.as_millis() as f64)
            .fetch_one(&mut *tx)
            .await?;
    let won = sqlx::query("INSERT INTO sweep_runs (sweep, period_start) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(kind.name())
        .bind(period_start)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !won {
        return Ok(false);
    }
    let task = SweepTask { v: 1, sweep: kind.name().to_string(), period_start };
    let task_id = queue::enqueue(&mut tx, SWEEP_QUEUE, &task, None).await?;
    sqlx::query("UPDATE sweep_runs SET task_id = $3 WHERE sweep = $1 AND period_start = $2")
        .bind(kind.name())
        .bind(period_start)
        .bind(&task_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn run(rt: &Runtime, task: &SweepTask) -> Result<()> {
    let Some(kind) = SweepKind::parse(&task.sweep) else {
        tracing::warn!(sweep = %task.sweep, "unknown sweep kind; ignoring");
        return Ok(());
    };
    sqlx::query("UPDATE sweep_runs SET started_at = now() WHERE sweep = $1 AND period_start = $2")
        .bind(kind.name())
        .bind(task.period_start)
        .execute(&rt.pool)
        .await?;
    let outcome = match kind {
        SweepKind::ProvisionTimeout => provision_timeout(rt).await,
        SweepKind::Liveness => liveness(rt).await,
        SweepKind::Orphans => super::orphans::run(rt).await,
        SweepKind::Retention => super::retention::run(rt).await,
    };
    let text = match &outcome {
        Ok(s) => s.clone(),
        Err(e) => format!("error: {e}"),
    };
    tracing::info!(sweep = kind.name(), outcome = %text, "sweep finished");
    sqlx::query("UPDATE sweep_runs SET finished_at = now(), outcome = $3 WHERE sweep = $1 AND period_start = $2")
        .bind(kind.name())
        .bind(task.period_start)
        .bind(&text)
        .execute(&rt.pool)
        .await?;
    Ok(())
}

/// Workspaces stuck in `provisioning` past their runtime's timeout become `failed`.
async fn provision_timeout(rt: &Runtime) -> Result<String> {
    let candidates: Vec<(Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, runtime, status_changed_at FROM workspaces WHERE status = 'provisioning'")
            .fetch_all(&rt.pool)
            .await?;
    let mut failed = 0;
    for (id, runtime, since) in candidates {
        let timeout = rt.config.provision_timeout(&runtime);
        if (Utc::now() - since).to_std().unwrap_or_default() < timeout {
            continue;
        }
        let mut tx = rt.pool.begin().await?;
        let Some(ws) = workspaces::lock(&mut tx, id).await? else { continue };
        // Re-check under the lock: the agent may have registered since the scan.
        if ws.status() != Status::Provisioning || ws.status_changed_at != since {
            continue;
        }
        let secs = timeout.as_secs();
        // A start still retrying knows better than "the agent never called".
        let start_error: Option<String> = sqlx::query_scalar(
            "SELECT last_error FROM workspace_ops WHERE workspace_id = $1 AND status IN ('queued', 'running')
                AND kind IN ('provision', 'restart') AND last_error IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let reason = match start_error {
            Some(e) => format!("provisioning timed out after {secs}s; the last start attempt failed: {e}"),
            None => format!(
                "provisioning timed out after {secs}s: the agent never called /registry/register; \
                 check the workspace's logs and that {} is reachable from it",
                rt.config.platform_url
            ),
        };
        workspaces::set_status(
            &mut tx,
            &ws,
            Status::Failed,
            Some(&reason),
            json!({"timeout_secs": secs, "runtime": runtime, "source": "provision_timeout_sweep"}),
        )
        .await?;
        tx.commit().await?;
        failed += 1;
    }
    Ok(format!("{failed} workspace(s) failed by timeout"))
}

/// Online workspaces whose heartbeat went stale go `offline` and get a (coalesced)
/// restart; external ones go back to `awaiting_agent`. Also re-delivers stranded ops.
async fn liveness(rt: &Runtime) -> Result<String> {
    let stale = rt.config.heartbeat_stale_after;
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM workspaces WHERE status IN ('online', 'degraded')
            AND coalesce(last_heartbeat_at, status_changed_at) < now() - $1 * interval '1 millisecond'",
    )
    .bind(stale.as_millis() as f64)
    .fetch_all(&rt.pool)
    .await?;
    let mut restarted = 0;
    for id in &ids {
        let mut tx = rt.pool.begin().await?;
        let Some(ws) = workspaces::lock(&mut tx, *id).await? else { continue };
        let fresh = ws.last_heartbeat_at.unwrap_or(ws.status_changed_at);
        if !matches!(ws.status(), Status::Online | Status::Degraded)
            || (Utc::now() - fresh).to_std().unwrap_or_default() < stale
        {
            continue;
        }
        let payload = json!({"last_heartbeat_at": ws.last_heartbeat_at, "source": "liveness_sweep"});
        if ws.external {
            workspaces::set_status(&mut tx, &ws, Status::AwaitingAgent, None, payload).await?;
        } else {
            let ws = workspaces::set_status(&mut tx, &ws, Status::Offline, None, payload).await?;
            if let Restarted::Queued { .. } =
                lifecycle::request_restart(&mut tx, &ws, "liveness", "sweep:liveness", rt.config.policies()).await?
            {
                restarted += 1;
            }
        }
        tx.commit().await?;
    }
    let redelivered = ops::redeliver_stranded(&rt.pool, Duration::from_secs(30)).await?;
    if !redelivered.is_empty() {
        tracing::warn!(ops = ?redelivered, "re-delivered ops whose task had vanished");
    }
    Ok(format!("{} stale, {restarted} restart(s) queued, {} op(s) re-delivered", ids.len(), redelivered.len()))
}
