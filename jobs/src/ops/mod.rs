//! Lifecycle operations: the rules that sequence, claim and finish `workspace_ops` rows.
//!
//! - One at a time per workspace, in creation order: only the oldest unfinished op (the
//!   head) has an apalis task; the transaction that finishes an op gives the next one its
//!   task. Decisions are serialised by the workspace row lock (ADR 0002).
//! - A restart asked for while a start (provision or restart) is still queued returns that op.
//! - Every write of a claimed op is fenced on its lease, so a worker presumed dead cannot
//!   overwrite the result of the worker that replaced it (ADR 0003).

mod claim;
mod finish;
mod redelivery;
pub mod rounds;
mod sequencing;

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

pub use claim::{Claim, ClaimResult, Claimant, ClaimedWorkspace, Fenced, claim, claim_directly, claim_exactly};
pub use finish::{Ending, Finished, Outcome, finish, finish_round, report_leak_suspect};
pub use redelivery::redeliver_stranded;
pub use sequencing::{advance, advance_head, cancel_queued_starts, request, request_first};

use crate::domain::Op;
use crate::notify::OPS_CHANNEL;
use crate::queue::{self, LIFECYCLE_QUEUE, OpTask};
use crate::store::{self, workspace_ops};
use crate::{Error, Result};

pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Op> {
    workspace_ops::get(db, id).await?.ok_or_else(|| Error::op_not_found(id))
}

/// Enqueues a task for the op, due after `delay`. It delivers the op only once the op's row
/// names it (see [`deliver`]); the retry path names it in the same update as its status.
async fn new_task(conn: &mut PgConnection, op_id: Uuid, delay: Option<Duration>) -> Result<String> {
    queue::enqueue(conn, LIFECYCLE_QUEUE, &OpTask { v: queue::PAYLOAD_VERSION, op_id }, delay).await
}

/// [`new_task`] for several ops, due now, in one statement; ids in the order given.
async fn new_tasks(conn: &mut PgConnection, op_ids: &[Uuid]) -> Result<Vec<String>> {
    let tasks: Vec<OpTask> = op_ids.iter().map(|op_id| OpTask { v: queue::PAYLOAD_VERSION, op_id: *op_id }).collect();
    queue::enqueue_many(conn, LIFECYCLE_QUEUE, &tasks).await
}

/// Gives the op a new task and records it as the op's deliverer: any earlier task of the
/// op is stale from here on.
async fn deliver(conn: &mut PgConnection, op_id: Uuid, delay: Option<Duration>) -> Result<String> {
    let task = new_task(conn, op_id, delay).await?;
    workspace_ops::set_task(conn, op_id, Some(&task)).await?;
    Ok(task)
}

/// Wakes `?wait=` callers; delivered at commit.
async fn announce(conn: &mut PgConnection, op: &Op) -> Result<()> {
    store::notify(conn, OPS_CHANNEL, &format!("{} {}", op.id, op.workspace_id)).await
}
