//! Delegations that will not finish on their own: past its deadline a delegation `failed`
//! (the deadline wins over everything else); in progress with a heartbeat older than the
//! stuck threshold it is `stuck`. A NULL heartbeat is never stale, and a `queued` or
//! `dispatched` row simply waits for its deadline. Each ending writes the caller's
//! `delegate_result`. Also re-arms inbox drains whose task is gone, so no pushed item waits
//! for ever.

use std::time::Duration;

use sqlx::PgPool;

use super::Report;
use crate::Result;
use crate::config::Env;
use crate::delegations;
use crate::domain::{DelegationStatus, Move};
use crate::inbox;
use crate::store::{activity_logs, delegations as ledger};

/// Rows judged per run; the next run takes the rest.
const BATCH: i64 = 1000;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `SWEEP_DELEGATIONS_SECONDS`.
    pub every: Duration,
    /// `DELEGATION_STUCK_THRESHOLD_SECONDS`.
    pub stuck_after: Duration,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings> {
        Ok(Settings {
            every: env.secs("SWEEP_DELEGATIONS_SECONDS", 300)?,
            stuck_after: env.secs("DELEGATION_STUCK_THRESHOLD_SECONDS", 600)?,
        })
    }
}

pub async fn run(pool: &PgPool, s: &Settings) -> Result<Report> {
    let (mut failed, mut stuck) = (0u64, 0u64);
    for id in ledger::overdue(pool, s.stuck_after, BATCH).await? {
        // Judged again under the row lock: the agent may have finished it meanwhile.
        let mut tx = crate::db::begin(pool).await?;
        let Some(d) = ledger::lock(&mut tx, &id).await? else { continue };
        let (past_deadline, silent_for) = ledger::age(&mut tx, &id).await?;
        let verdict = if past_deadline {
            Some((DelegationStatus::Failed, "deadline exceeded by sweeper".to_string()))
        } else {
            silent_for
                .filter(|secs| *secs > s.stuck_after.as_secs_f64())
                .map(|secs| (DelegationStatus::Stuck, format!("no heartbeat for {secs:.0}s")))
        };
        if let Some((to, why)) = verdict
            && d.status.to(to) == Move::Forward
        {
            delegations::advance(&mut tx, &d, to, None, Some(&why)).await?;
            if to == DelegationStatus::Failed { failed += 1 } else { stuck += 1 }
        }
        tx.commit().await?;
    }
    let mut rearmed = 0u64;
    for ws in activity_logs::stranded_drains(pool).await? {
        let mut tx = crate::db::begin(pool).await?;
        activity_logs::lock_head(&mut tx, ws).await?;
        inbox::arm_drain(&mut tx, ws, None).await?;
        tx.commit().await?;
        rearmed += 1;
    }
    let text = format!("{failed} past their deadline failed, {stuck} stuck, {rearmed} inbox drain(s) re-armed");
    Ok(Report::new(text, failed + stuck + rearmed > 0))
}
