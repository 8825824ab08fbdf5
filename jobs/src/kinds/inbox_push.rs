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
use crate::store::activity_logs::{self, Delivered, DrainClaim, PendingItem};
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
    // Renewed once per item: it must outlast the slowest push.
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
            // would have lapsed, without disturbing it.
            let mut tx = ctx.pool.begin().await?;
            let next = crate::queue::enqueue(
                &mut tx,
                crate::queue::INBOX_QUEUE,
                &crate::queue::InboxTask { v: crate::queue::PAYLOAD_VERSION, workspace_id: ws_id },
                Some(left + Duration::from_millis(200)),
            )
            .await?;
            activity_logs::defer_drain(&mut tx, ws_id, &next).await?;
            tx.commit().await?;
            return Ok(());
        }
    };
    let claimed_at = std::time::Instant::now();
    metrics::claimed(JobKind::InboxPush);
    let result = deliver_pending(ctx, ws_id, lease, ttl).await;
    let end = if result.is_ok() { JobEnd::Succeeded } else { JobEnd::Failed };
    metrics::ended(JobKind::InboxPush, end, claimed_at.elapsed());
    result
}

/// Pushes the workspace's pending items under the drain's lease until none is due. Items
/// are read [`BATCH`] at a time, with the workspace's target once per batch; each success
/// is recorded by one statement.
async fn deliver_pending(ctx: &JobContext, ws_id: Uuid, lease: i64, ttl: Duration) -> Result<()> {
    let mut delivered = 0u64;
    let mut batch = activity_logs::pending(&ctx.pool, ws_id, BATCH).await?;
    loop {
        if batch.is_empty() {
            // Nothing left: stand down, unless an item arrived meanwhile (writers hold the
            // head lock, so after taking it the read is final).
            let mut tx = ctx.pool.begin().await?;
            if !activity_logs::renew_drain(&mut tx, ws_id, lease, ttl).await? {
                return Ok(());
            }
            batch = activity_logs::pending_or_stand_down(&mut tx, ws_id, lease, BATCH).await?;
            tx.commit().await?;
            if batch.is_empty() {
                tracing::debug!(delivered, "inbox drained");
                return Ok(());
            }
        }
        let full = batch.len() as i64 == BATCH;
        match deliver_batch(ctx, ws_id, lease, ttl, &batch, &mut delivered).await? {
            Turn::Next if full => batch = activity_logs::pending(&ctx.pool, ws_id, BATCH).await?,
            // A short batch was all there was when it was read: go straight to standing down.
            Turn::Next => batch.clear(),
            Turn::Stop => return Ok(()),
        }
    }
}

/// How many pending items a drain reads at once. Each is held in memory until pushed, with
/// its request body.
const BATCH: i64 = 8;

enum Turn {
    /// Every item of the batch was recorded: read the next ones.
    Next,
    /// The drain ends: it was taken over, or the next attempt is scheduled as a new task.
    Stop,
}

async fn deliver_batch(
    ctx: &JobContext,
    ws_id: Uuid,
    lease: i64,
    ttl: Duration,
    batch: &[PendingItem],
    delivered: &mut u64,
) -> Result<Turn> {
    let ws = workspaces::get(&ctx.pool, ws_id).await?;
    let target = match &ws {
        None => Err("the workspace no longer exists".to_string()),
        Some(w) if w.status == Status::Removed => Err("the workspace was removed".to_string()),
        Some(w) if w.delivery_mode == DeliveryMode::Poll => {
            // Its agent polls now: the rows are its delivery.
            let mut tx = ctx.pool.begin().await?;
            if !activity_logs::renew_drain(&mut tx, ws_id, lease, ttl).await? {
                return Ok(Turn::Stop);
            }
            activity_logs::stop_pushing(&mut tx, ws_id).await?;
            tx.commit().await?;
            return Ok(Turn::Next);
        }
        Some(w) => w.url.clone().ok_or_else(|| "the agent has not registered a URL yet".to_string()),
    };
    let final_failure = ws.as_ref().is_none_or(|w| w.status == Status::Removed);
    for item in batch {
        if let Some(wait) = item.wait_secs.filter(|w| *w > 0.0) {
            let mut tx = ctx.pool.begin().await?;
            if activity_logs::renew_drain(&mut tx, ws_id, lease, ttl).await? {
                inbox::arm_drain(&mut tx, ws_id, Some(Duration::from_secs_f64(wait))).await?;
                tx.commit().await?;
            }
            return Ok(Turn::Stop);
        }
        let started = Utc::now();
        let answer = match &target {
            Ok(url) => push(ctx, url, item).await,
            Err(e) => Err((None, e.clone())),
        };
        let attempt = item.delivery_attempts + 1;
        let delegation = inbox::delegation_of(item.request_body.as_ref());
        let turn = match answer {
            Ok((status, body)) => {
                let d = Delivered {
                    item_id: item.id,
                    attempt,
                    started_at: started,
                    http_status: status,
                    answer: body.as_ref(),
                    worker: &ctx.process_id,
                };
                let recorded = match &delegation {
                    None => activity_logs::record_delivered(&ctx.pool, ws_id, lease, ttl, &d).await?,
                    Some(delegation) => {
                        let mut tx = ctx.pool.begin().await?;
                        let recorded = activity_logs::record_delivered(&mut *tx, ws_id, lease, ttl, &d).await?;
                        if recorded {
                            delegations::on_delivery(&mut tx, delegation, Ok(())).await?;
                            tx.commit().await?;
                        }
                        recorded
                    }
                };
                if recorded {
                    *delivered += 1;
                    Turn::Next
                } else {
                    Turn::Stop
                }
            }
            Err((status, error)) => {
                record_failure(ctx, ws_id, lease, ttl, item, final_failure, (attempt, started, status, error)).await?
            }
        };
        if let Turn::Stop = turn {
            return Ok(Turn::Stop);
        }
    }
    Ok(Turn::Next)
}

/// Records a failed attempt. A failure the policy retries schedules the next attempt as a
/// delayed drain task and stops this drain (later items wait behind it: order first); the
/// last attempt makes the item undeliverable and the drain goes on.
async fn record_failure(
    ctx: &JobContext,
    ws_id: Uuid,
    lease: i64,
    ttl: Duration,
    item: &PendingItem,
    final_failure: bool,
    (attempt, started, status, error): (i32, chrono::DateTime<Utc>, Option<i32>, String),
) -> Result<Turn> {
    let mut tx = ctx.pool.begin().await?;
    if !activity_logs::renew_drain(&mut tx, ws_id, lease, ttl).await? {
        tracing::warn!(item = item.id, "the drain was taken over meanwhile; this attempt is not recorded");
        return Ok(Turn::Stop);
    }
    activity_logs::record_attempt(&mut tx, item.id, attempt, started, status, Some(&error), &ctx.process_id).await?;
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
