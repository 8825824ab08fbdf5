//! Restart: stop, then start, in one job. The stop is retried briefly in-job; if it still
//! fails the instance is reported as a leak suspect and the start goes ahead (a workspace
//! the user asked to restart should not stay down because its old instance is stuck).

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::json;

use crate::Result;
use crate::events;
use crate::kinds::{Runtime, provision, stop};
use crate::ops::{Claim, Outcome};
use crate::store::workspaces;
use crate::workspace::Status;

pub async fn run(rt: &Runtime, claim: &Claim) -> Result<Outcome> {
    let Some(ws) = workspaces::get(&rt.pool, claim.op.workspace_id).await? else {
        return Ok(Outcome::Skipped("workspace row is gone".into()));
    };
    if ws.status() != Status::Provisioning {
        return Ok(Outcome::Skipped(format!("workspace is {}", ws.status())));
    }
    let stopped = (|| stop::stop_recorded(rt, &ws))
        .retry(ExponentialBuilder::default().with_min_delay(Duration::from_secs(1)).with_max_times(2).with_jitter())
        .when(|e| e.is_transient())
        .await;
    if let Err(e) = stopped {
        tracing::error!(workspace_id = %ws.id, op_id = %claim.op.id, backend = ?ws.backend, instance_ref = ?ws.instance_ref,
            last_err = %e, "LEAK-SUSPECT restart could not stop the old instance; starting a new one anyway");
        let mut tx = rt.pool.begin().await?;
        events::record(
            &mut tx,
            events::LEAK_SUSPECT,
            Some(ws.id),
            json!({"op_id": claim.op.id, "backend": ws.backend, "instance_ref": ws.instance_ref, "error": e.to_string()}),
        )
        .await?;
        tx.commit().await?;
    }
    provision::start_instance(rt, claim).await
}
