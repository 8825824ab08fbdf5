//! Re-delivering head ops whose task vanished or ended without finishing them (a handler
//! that could not reach the database, an operator who killed a task). Run by the liveness
//! sweep, so no request is ever stranded.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::deliver;
use crate::Result;
use crate::store::{apalis, workspaces};

/// Ops unchanged for less than `older_than` are left alone: their task may be in flight.
pub async fn redeliver_stranded(pool: &PgPool, older_than: Duration) -> Result<Vec<Uuid>> {
    let candidates = apalis::stranded_ops(pool, older_than).await?;
    let mut redelivered = Vec::new();
    for (op_id, workspace_id) in candidates {
        let mut tx = crate::db::begin(pool).await?;
        workspaces::lock(&mut tx, workspace_id).await?;
        // Re-check under the lock: the op may have moved on since the scan.
        if apalis::lock_if_stranded(&mut tx, op_id).await? {
            deliver(&mut tx, op_id, None).await?;
            redelivered.push(op_id);
        }
        tx.commit().await?;
    }
    crate::metrics::ops_rescued(redelivered.len());
    Ok(redelivered)
}
