//! InboxPush: delivers a push-mode workspace's pending inbox items to its agent, oldest
//! first, one at a time. At most one drain task is due per workspace (`inbox_heads`), so
//! items to one agent arrive in order while different agents are served concurrently.
//!
//! An item is POSTed as JSON-RPC `message/send` with `messageId` = the item id. A 2xx marks
//! it delivered; a failure schedules the next attempt with exponential backoff and jitter,
//! and the drain ends, leaving a delayed task for that time (later items wait behind it:
//! order first). After the last attempt the item is undeliverable, with its last error and
//! an event. Delivery is at least once: a worker that dies between the agent's answer and
//! the record pushes the item again, and the agent deduplicates on `messageId`.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tracing::Instrument;
use uuid::Uuid;

use super::JobContext;
use crate::domain::{AgentUrl, DeliveryMode, Status};
use crate::metrics::{self, JobEnd, JobKind};
use crate::store::activity_logs::{self, Delivered, DrainClaim, PENDING_BATCH, PendingItem};
use crate::store::workspaces;
use crate::{Result, delegations, events, inbox};

pub const INBOX_UNDELIVERABLE: &str = "INBOX_UNDELIVERABLE";

/// The most of an agent's answer kept on the item.
const ANSWER_MAX: usize = 1024 * 1024;

/// Runs drain task `task_id` of workspace `workspace_id`.
pub async fn run(ctx: &JobContext, workspace_id: Uuid, task_id: &str) -> Result<()> {
    let span = tracing::info_span!("inbox_push", %workspace_id, job_id = task_id);
    drain(ctx, workspace_id, task_id).instrument(span).await
}

fn lease_ttl(ctx: &JobContext) -> Duration {
    // Renewed by every record, which comes at most one push (plus RECORD_WITHIN) after the
    // last: it must outlast the slowest push.
    ctx.config.worker.op_lease + ctx.config.inbox.timeout
}

async fn drain(ctx: &JobContext, ws_id: Uuid, task_id: &str) -> Result<()> {
    let ttl = lease_ttl(ctx);
    let lease = match activity_logs::claim_drain(&ctx.pool, ws_id, task_id, &ctx.process_id, ttl).await? {
        DrainClaim::Claimed(l) => l,
        DrainClaim::NotDue => {
            tracing::debug!("not the workspace's due drain task; nothing to do");
            return Ok(());
        }
        DrainClaim::Held(left) => {
            // A redelivery of a drain that is still running: try again once its lease
            // would have lapsed, without disturbing it. The claim has committed, so the
            // running drain may have stood down or armed its retry meanwhile: then this task
            // is no longer the due one, and the copy is dropped with the transaction.
            let mut tx = crate::db::begin(&ctx.pool).await?;
            let next = crate::queue::enqueue(
                &mut tx,
                crate::queue::INBOX_QUEUE,
                &crate::queue::InboxTask::new(ws_id),
                Some(left + Duration::from_millis(200)),
            )
            .await?;
            if activity_logs::defer_drain(&mut tx, ws_id, task_id, &next).await? {
                tx.commit().await?;
            }
            return Ok(());
        }
    };
    let claimed_at = std::time::Instant::now();
    metrics::claimed(JobKind::InboxPush);
    let result = Drain { ctx, ws_id, lease, ttl }.deliver_pending().await;
    let end = if result.is_ok() { JobEnd::Succeeded } else { JobEnd::Failed };
    metrics::ended(JobKind::InboxPush, end, claimed_at.elapsed());
    result
}

/// Unrecorded successes are recorded before the next push once the first of them started
/// this long ago, and while a push is in flight once it has taken this long. A fast agent's
/// successes are then recorded together, at the batch's end; a success to a slow agent, or
/// followed by a slow push, is recorded about this soon, so an item (and its `?wait` caller)
/// never waits for a slow push of a later item, and the lease, which the record renews,
/// never has to outlast more than one slow push.
const RECORD_WITHIN: Duration = Duration::from_millis(20);

enum Turn {
    /// Every item of the batch was recorded: read the next ones.
    Next,
    /// The drain ends: it was taken over, or the next attempt is scheduled as a new task.
    Stop,
}

/// A claimed drain: every write is fenced on `lease`.
struct Drain<'a> {
    ctx: &'a JobContext,
    ws_id: Uuid,
    lease: i64,
    ttl: Duration,
}

/// Successful pushes not recorded yet, oldest first.
#[derive(Default)]
struct Unrecorded {
    pushes: Vec<Delivered>,
    /// The delegations they carry, told of their delivery in the same transaction.
    delegations: Vec<String>,
}

impl Unrecorded {
    /// Whether the first of them started `RECORD_WITHIN` ago or more.
    fn due(&self) -> bool {
        self.pushes.first().is_some_and(|p| (Utc::now() - p.started_at).to_std().is_ok_and(|age| age >= RECORD_WITHIN))
    }
}

impl Drain<'_> {
    /// Pushes the workspace's pending items until none is due. Items are read [`PENDING_BATCH`]
    /// at a time, with the workspace's target once per batch; the successes of a batch are
    /// recorded together.
    async fn deliver_pending(&self) -> Result<()> {
        let (ctx, ws_id) = (self.ctx, self.ws_id);
        let mut delivered = 0usize;
        let mut batch = activity_logs::pending(&ctx.pool, ws_id).await?;
        loop {
            if batch.is_empty() {
                // Nothing left: stand down, unless an item arrived meanwhile (writers hold
                // the head lock, so after taking it the read is final).
                let mut tx = crate::db::begin(&ctx.pool).await?;
                if !activity_logs::renew_drain(&mut tx, ws_id, self.lease, self.ttl).await? {
                    return Ok(());
                }
                batch = activity_logs::pending_or_stand_down(&mut tx, ws_id, self.lease).await?;
                tx.commit().await?;
                if batch.is_empty() {
                    tracing::debug!(delivered, "inbox drained");
                    return Ok(());
                }
            }
            let full = batch.len() == PENDING_BATCH;
            match self.deliver_batch(&batch, &mut delivered).await? {
                Turn::Next if full => batch = activity_logs::pending(&ctx.pool, ws_id).await?,
                // A short batch was all there was when it was read: go straight to standing down.
                Turn::Next => batch.clear(),
                Turn::Stop => return Ok(()),
            }
        }
    }

    async fn deliver_batch(&self, batch: &[PendingItem], delivered: &mut usize) -> Result<Turn> {
        let ctx = self.ctx;
        let ws = workspaces::get(&ctx.pool, self.ws_id).await?;
        let target = match &ws {
            None => Err("the workspace no longer exists".to_string()),
            Some(w) if w.status == Status::Removed => Err("the workspace was removed".to_string()),
            Some(w) if w.delivery_mode == DeliveryMode::Poll => {
                // Its agent polls now: the rows are its delivery.
                let mut tx = crate::db::begin(&ctx.pool).await?;
                if !activity_logs::renew_drain(&mut tx, self.ws_id, self.lease, self.ttl).await? {
                    return Ok(Turn::Stop);
                }
                activity_logs::stop_pushing(&mut tx, self.ws_id).await?;
                tx.commit().await?;
                return Ok(Turn::Next);
            }
            Some(w) => w.url.clone().ok_or_else(|| "the agent has not registered a URL yet".to_string()),
        };
        let final_failure = ws.as_ref().is_none_or(|w| w.status == Status::Removed);
        let mut unrecorded = Unrecorded::default();
        for item in batch {
            if unrecorded.due() && !self.record(&mut unrecorded, delivered).await? {
                return Ok(Turn::Stop);
            }
            if let Some(wait) = item.wait_secs.filter(|w| *w > 0.0) {
                if !self.record(&mut unrecorded, delivered).await? {
                    return Ok(Turn::Stop);
                }
                let mut tx = crate::db::begin(&ctx.pool).await?;
                if activity_logs::renew_drain(&mut tx, self.ws_id, self.lease, self.ttl).await? {
                    inbox::arm_drain(&mut tx, self.ws_id, Some(Duration::from_secs_f64(wait))).await?;
                    tx.commit().await?;
                }
                return Ok(Turn::Stop);
            }
            let started = Utc::now();
            let answer = match &target {
                Ok(url) => {
                    let pushing = push(ctx, url, item);
                    tokio::pin!(pushing);
                    tokio::select! {
                        answer = &mut pushing => answer,
                        // A slow push: the successes before it are recorded meanwhile.
                        _ = tokio::time::sleep(RECORD_WITHIN), if !unrecorded.pushes.is_empty() => {
                            let (recorded, answer) = tokio::join!(self.record(&mut unrecorded, delivered), &mut pushing);
                            if !recorded? {
                                return Ok(Turn::Stop);
                            }
                            answer
                        }
                    }
                }
                Err(e) => Err((None, e.clone())),
            };
            let attempt = item.delivery_attempts + 1;
            match answer {
                Ok((status, body)) => {
                    unrecorded.pushes.push(Delivered {
                        item_id: item.id,
                        attempt,
                        started_at: started,
                        finished_at: Utc::now(),
                        http_status: status,
                        answer: body,
                    });
                    unrecorded.delegations.extend(inbox::delegation_of(item.request_body.as_ref()));
                }
                Err((status, error)) => {
                    // Earlier successes first: the failure may end the drain.
                    if !self.record(&mut unrecorded, delivered).await? {
                        return Ok(Turn::Stop);
                    }
                    let failed = Failed { attempt, started, status, error };
                    if let Turn::Stop = self.record_failure(item, final_failure, failed).await? {
                        return Ok(Turn::Stop);
                    }
                }
            }
        }
        Ok(if self.record(&mut unrecorded, delivered).await? { Turn::Next } else { Turn::Stop })
    }

    /// Records the unrecorded successes (one statement, or one transaction with their
    /// delegations); false when the drain was taken over, and nothing was written.
    async fn record(&self, unrecorded: &mut Unrecorded, delivered: &mut usize) -> Result<bool> {
        let Unrecorded { pushes, delegations } = std::mem::take(unrecorded);
        if pushes.is_empty() {
            return Ok(true);
        }
        let (ctx, worker) = (self.ctx, self.ctx.process_id.as_str());
        let recorded = if delegations.is_empty() {
            activity_logs::record_delivered(&ctx.pool, self.ws_id, self.lease, self.ttl, worker, &pushes).await?
        } else {
            let mut tx = crate::db::begin(&ctx.pool).await?;
            let recorded =
                activity_logs::record_delivered(&mut *tx, self.ws_id, self.lease, self.ttl, worker, &pushes).await?;
            if recorded {
                for d in &delegations {
                    delegations::on_delivery(&mut tx, d, Ok(())).await?;
                }
                tx.commit().await?;
            }
            recorded
        };
        if recorded {
            *delivered += pushes.len();
        } else {
            let first = pushes.first().map(|p| p.item_id);
            tracing::warn!(
                pushes = pushes.len(),
                first,
                "the drain was taken over meanwhile; these pushes are not recorded"
            );
        }
        Ok(recorded)
    }

    /// Records a failed attempt. A failure the policy retries schedules the next attempt as a
    /// delayed drain task and stops this drain (later items wait behind it: order first); the
    /// last attempt makes the item undeliverable and the drain goes on.
    async fn record_failure(&self, item: &PendingItem, final_failure: bool, f: Failed) -> Result<Turn> {
        let (ctx, ws_id) = (self.ctx, self.ws_id);
        let Failed { attempt, started, status, error } = f;
        let mut tx = crate::db::begin(&ctx.pool).await?;
        if !activity_logs::renew_drain(&mut tx, ws_id, self.lease, self.ttl).await? {
            tracing::warn!(item = item.id, "the drain was taken over meanwhile; this attempt is not recorded");
            return Ok(Turn::Stop);
        }
        activity_logs::record_attempt(&mut tx, item.id, attempt, started, status, Some(&error), &ctx.process_id)
            .await?;
        let policy = &ctx.config.inbox.retry;
        let turn = if final_failure || attempt >= policy.max_attempts {
            let why = format!("undeliverable after {attempt} attempt(s): {error}");
            tracing::warn!(item = item.id, %why, "inbox item undeliverable");
            activity_logs::mark_failed(&mut tx, item.id, &why, None).await?;
            events::record(
                &mut tx,
                INBOX_UNDELIVERABLE,
                Some(ws_id),
                json!({"item_id": item.id, "attempts": attempt, "error": why, "method": item.method}),
            )
            .await?;
            if let Some(d) = inbox::delegation_of(item.request_body.as_ref()) {
                delegations::on_delivery(&mut tx, &d, Err(&why)).await?;
            }
            Turn::Next
        } else {
            let delay = policy.delay_after(attempt);
            tracing::info!(item = item.id, attempt, delay_ms = delay.as_millis() as u64, %error, "push failed; retrying later");
            metrics::retried(JobKind::InboxPush);
            activity_logs::mark_failed(&mut tx, item.id, &error, Some(delay)).await?;
            inbox::arm_drain(&mut tx, ws_id, Some(delay)).await?;
            Turn::Stop
        };
        tx.commit().await?;
        Ok(turn)
    }
}

/// A failed push attempt.
struct Failed {
    attempt: i32,
    started: chrono::DateTime<Utc>,
    status: Option<i32>,
    error: String,
}

/// POSTs the item; `Ok((status, answer))` on 2xx, else `Err((status, reason))`.
async fn push(
    ctx: &JobContext,
    url: &str,
    item: &PendingItem,
) -> std::result::Result<(i32, Option<Value>), (Option<i32>, String)> {
    let checked = AgentUrl::parse_with(url, &ctx.config.api.agent_urls).map_err(|e| (None, e.to_string()))?;
    let addrs = checked.resolve_checked(&ctx.config.api.agent_urls).await.map_err(|e| (None, e.to_string()))?;
    let payload =
        inbox::push_payload(item.id, item.method.as_deref(), item.request_body.as_ref(), item.response_body.as_ref());
    let client = ctx.http_for(&checked, &addrs).map_err(|e| (None, e))?;
    let resp = client.post(checked.as_str()).json(&payload).send().await.map_err(|e| (None, describe(&e)))?;
    let status = resp.status();
    let code = i32::from(status.as_u16());
    let bytes = resp.bytes().await.map_err(|e| (Some(code), describe(&e)))?;
    if !status.is_success() {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string();
        let hint = if status.is_redirection() { " (redirects are not followed)" } else { "" };
        return Err((Some(code), format!("the agent answered HTTP {code}{hint}: {text}")));
    }
    let answer = (bytes.len() <= ANSWER_MAX).then(|| serde_json::from_slice::<Value>(&bytes).ok()).flatten();
    Ok((code, answer))
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the push timed out".into()
    } else if e.is_connect() {
        format!("could not connect to the agent: {e}")
    } else {
        format!("the push failed: {e}")
    }
}
