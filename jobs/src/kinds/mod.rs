//! The lifecycle job kinds: provision, stop and restart. A lifecycle task names an op;
//! [`run_op`] claims it, runs the kind's handler with panics caught, and records the
//! outcome through `ops::finish`. (Periodic maintenance is in `crate::sweeps`.)

pub mod provision;
pub mod restart;
pub mod stop;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use crate::Result;
use crate::backend::Backends;
use crate::config::Config;
use crate::domain::OpKind;
use crate::ops::{self, Claim, ClaimResult, Finished, Outcome};
use crate::retry::RetryPolicies;

/// What every job a worker process runs shares: the pool, the configuration, the backends
/// this process reaches and the retry policies (delays already scaled).
pub struct JobContext {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub backends: Backends,
    pub retry: RetryPolicies,
}

impl JobContext {
    pub fn new(pool: PgPool, config: Arc<Config>, backends: Backends) -> JobContext {
        let retry = RetryPolicies::scaled(config.worker.retry_delay_scale);
        JobContext { pool, config, backends, retry }
    }
}

/// Runs the op delivered by apalis task `task_id`. Returns an error only when the database
/// cannot be reached to record anything; every other failure is recorded on the op.
pub async fn run_op(ctx: &JobContext, op_id: Uuid, task_id: &str) -> Result<()> {
    let claim = match ops::claim(&ctx.pool, op_id, task_id).await? {
        ClaimResult::Claimed(c) => c,
        ClaimResult::Skip(why) => {
            tracing::info!(%op_id, job_id = task_id, reason = %why, "nothing to do for task");
            return Ok(());
        }
    };
    let kind = claim.op.kind;
    let span = tracing::info_span!("op", %op_id, job_id = task_id, workspace_id = %claim.op.workspace_id,
        kind = kind.as_str(), attempt = claim.op.attempts);
    async {
        tracing::info!(reason = %claim.op.reason, "op started");
        let outcome = match AssertUnwindSafe(execute(ctx, &claim, kind)).catch_unwind().await {
            Ok(Ok(o)) => o,
            // Database trouble mid-job: the work is idempotent, so try again later.
            Ok(Err(e)) => Outcome::Retry(format!("internal error: {e}")),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(panic = %msg, "op handler panicked");
                Outcome::Retry(format!("internal error: handler panicked: {msg}"))
            }
        };
        tracing::info!(?outcome, "op attempt ended");
        if ops::finish(&ctx.pool, &claim, outcome, ctx.retry.for_kind(kind)).await? == Finished::Fenced {
            tracing::warn!("op was claimed by another worker meanwhile; this attempt's outcome is dropped");
        }
        Ok(())
    }
    .instrument(span)
    .await
}

async fn execute(ctx: &JobContext, claim: &Claim, kind: OpKind) -> Result<Outcome> {
    match kind {
        OpKind::Provision => provision::run(ctx, claim).await,
        OpKind::Stop => stop::run(ctx, claim).await,
        OpKind::Restart => restart::run(ctx, claim).await,
    }
}
