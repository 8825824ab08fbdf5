//! Restart: stop, then start, in one job. The stop is retried briefly in-job; if it still
//! fails the instance is reported as a leak suspect and the start goes ahead (a workspace
//! the user asked to restart should not stay down because its old instance is stuck).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::json;

use crate::Result;
use crate::domain::Status;
use crate::kinds::{JobContext, provision, stop};
use crate::ops::{self, Claim, Outcome};
use crate::transition;

pub async fn run(ctx: &JobContext, claim: &Claim) -> Result<Outcome> {
    // The workspace may have come online (from an earlier instance) since this restart was
    // asked for; the restart still happens, and the workspace is provisioning again.
    let mut tx = crate::db::begin(&ctx.pool).await?;
    let ws = match claim.fence(&mut tx).await? {
        Ok(ws) => ws,
        Err(f) => return Ok(Outcome::Skipped(f.to_string())),
    };
    match ws.status {
        Status::Removed | Status::Paused => return Ok(Outcome::Skipped(format!("workspace is {}", ws.status))),
        Status::Provisioning => {}
        _ => {
            transition::set_status(
                &mut tx,
                &ws,
                Status::Provisioning,
                None,
                json!({"op_id": claim.op.id, "reason": "restart"}),
            )
            .await?;
        }
    }
    tx.commit().await?;
    // A retried restart keeps what its earlier attempt started, for the start to adopt.
    let stopped = (|| stop::stop_recorded(ctx, &ws, Some(claim.op.seq)))
        .retry(ExponentialBuilder::default().with_min_delay(Duration::from_secs(1)).with_max_times(2).with_jitter())
        .when(|e| e.is_transient())
        .await;
    if let Err(e) = stopped {
        let mut tx = crate::db::begin(&ctx.pool).await?;
        let what = "restart could not stop the old instance and starts a new one anyway";
        ops::report_leak_suspect(&mut tx, &ws, claim.op.id, &e.to_string(), what).await?;
        tx.commit().await?;
    }
    provision::start_instance(ctx, claim).await
}
