//! apalis workers, wrapped: each runs in a supervising loop that rebuilds it with backoff
//! when it dies (apalis ends a worker on a transient database error), under a name unique
//! to this process and generation so orphan rescue can tell it from its predecessors.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::{Config as PgConfig, PostgresStorage};
use jobs::kinds::{self, JobContext};
use jobs::queue::{INBOX_QUEUE, InboxTask, LIFECYCLE_QUEUE, OpTask, SWEEP_QUEUE, SweepTask};
use jobs::retry;
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::Instrument;

type Payload = serde_json::Value;

/// A handler that could not reach the database returns an error, which apalis answers by
/// fetching the task again at once; pausing first keeps that from becoming a hot loop.
const DATABASE_TROUBLE_PAUSE: Duration = Duration::from_secs(1);

/// apalis' connections in one worker process: its three workers' fetches, batched
/// acknowledgements, heartbeats and orphan rescue, a few at a time.
const QUEUE_CONNECTIONS: u32 = 10;

/// The pool apalis runs on in this process, apart from the jobs' pool (see [`storage`]).
pub async fn queue_pool(config: &jobs::config::Config) -> jobs::Result<PgPool> {
    jobs::db::connect_with(&config.database_url, QUEUE_CONNECTIONS, Some(config.worker.op_lease)).await
}

/// apalis runs on `queue_pool`, not on the jobs' pool: a worker that apalis ends (on a
/// database error) or that shuts down drops apalis' futures wherever they are, and one dropped
/// inside apalis' own BEGIN leaves its connection in an open transaction (see
/// `jobs::db::begin`). On a pool of its own that costs apalis a connection until the pool
/// closes it; on the jobs' pool our claims and endings would run, uncommitted, inside it.
fn storage(ctx: &JobContext, queue_pool: &PgPool, queue: &str, batch: usize) -> PostgresStorage<Payload> {
    let cfg = &ctx.config.worker;
    PostgresStorage::new(queue_pool).with_config(
        PgConfig::default()
            .queue(queue)
            .batch_size(batch)
            .heartbeat_interval(cfg.heartbeat)
            .missed_heartbeats(cfg.missed_heartbeats),
    )
}

pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) -> Result<(), std::io::Error> {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Rebuilds the worker made by `run_once` until shutdown, backing off 1 s → 30 s.
async fn supervise<F, Fut>(queue: &'static str, mut stop: watch::Receiver<bool>, run_once: F)
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), WorkerError>>,
{
    let delays = retry::forever(Duration::from_secs(1), Duration::from_secs(30));
    for (generation, backoff) in (0u32..).zip(delays) {
        if *stop.borrow() {
            return;
        }
        let result = run_once(generation).await;
        if *stop.borrow() {
            return;
        }
        match result {
            Ok(()) => tracing::warn!(queue, "worker ended without being asked to; restarting"),
            Err(e) => {
                tracing::error!(queue, error = %e, backoff_ms = backoff.as_millis() as u64, "worker died; restarting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
    }
}

pub async fn supervise_lifecycle(
    ctx: Arc<JobContext>,
    queue_pool: PgPool,
    process_id: String,
    stop: watch::Receiver<bool>,
) {
    let concurrency = ctx.config.worker.concurrency;
    let poll = ctx.config.worker.poll_interval;
    supervise(LIFECYCLE_QUEUE, stop.clone(), |generation| {
        let backend = storage(&ctx, &queue_pool, LIFECYCLE_QUEUE, concurrency).with_pubsub().poll_with_interval(poll);
        let worker = WorkerBuilder::new(format!("{LIFECYCLE_QUEUE}-{process_id}-{generation}"))
            .backend(backend)
            .data(ctx.clone())
            .concurrency(concurrency)
            .build(lifecycle_task);
        worker.run_until(stopped(stop.clone()))
    })
    .await
}

pub async fn supervise_sweeps(
    ctx: Arc<JobContext>,
    queue_pool: PgPool,
    process_id: String,
    stop: watch::Receiver<bool>,
) {
    let poll = ctx.config.worker.poll_interval;
    supervise(SWEEP_QUEUE, stop.clone(), |generation| {
        let backend = storage(&ctx, &queue_pool, SWEEP_QUEUE, 2).with_pubsub().poll_with_interval(poll);
        let worker = WorkerBuilder::new(format!("{SWEEP_QUEUE}-{process_id}-{generation}"))
            .backend(backend)
            .data(ctx.clone())
            .concurrency(2)
            .build(sweep_task);
        worker.run_until(stopped(stop.clone()))
    })
    .await
}

/// Inbox drains run beside lifecycle ops, each on its own slots: a slow agent never holds
/// up a provision, nor a provision a push. `INBOX_CONCURRENCY` drains (workspaces) at once.
pub async fn supervise_inbox(
    ctx: Arc<JobContext>,
    queue_pool: PgPool,
    process_id: String,
    stop: watch::Receiver<bool>,
) {
    let concurrency = ctx.config.worker.inbox_concurrency;
    let poll = ctx.config.worker.poll_interval;
    supervise(INBOX_QUEUE, stop.clone(), |generation| {
        let backend = storage(&ctx, &queue_pool, INBOX_QUEUE, concurrency).with_pubsub().poll_with_interval(poll);
        let worker = WorkerBuilder::new(format!("{INBOX_QUEUE}-{process_id}-{generation}"))
            .backend(backend)
            .data(ctx.clone())
            .concurrency(concurrency)
            .build(inbox_task);
        worker.run_until(stopped(stop.clone()))
    })
    .await
}

/// Whether the task was left for a newer worker: its payload declares a version this worker
/// does not know, which happens in a rolling deploy while newer workers enqueue. It is
/// never dropped; a worker that knows the version runs it.
async fn left_for_newer(ctx: &JobContext, queue: &str, task_id: &str, args: &Payload) -> Result<bool, BoxDynError> {
    let known = ctx.config.worker.payload_version_max;
    let Some(version) = jobs::queue::payload_version(args).filter(|v| *v > u64::from(known)) else {
        return Ok(false);
    };
    if let Err(e) = jobs::queue::leave_for_newer(
        &ctx.pool,
        queue,
        task_id,
        args,
        version,
        known,
        &ctx.process_id,
        jobs::queue::NEWER_WORKER_DELAY,
    )
    .await
    {
        // Not acknowledged: apalis offers the task again.
        tracing::error!(queue, job_id = task_id, error = %e, "could not leave the task for a newer worker");
        tokio::time::sleep(DATABASE_TROUBLE_PAUSE).await;
        return Err(Box::new(e));
    }
    Ok(true)
}

/// A payload that does not decode is logged and dropped (returning an error would make
/// apalis re-run it at once, and nothing valid can come of it), unless it is of a version
/// this worker does not know: that one is left for a worker that does.
async fn lifecycle_task(args: Payload, task_id: TaskId, ctx: Data<Arc<JobContext>>) -> Result<(), BoxDynError> {
    let task_id = task_id.to_string();
    if left_for_newer(&ctx, LIFECYCLE_QUEUE, &task_id, &args).await? {
        return Ok(());
    }
    let task: OpTask = match serde_json::from_value(args) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(job_id = %task_id, error = %e, "undecodable lifecycle task; dropped");
            return Ok(());
        }
    };
    if let Err(e) = kinds::run_op(&ctx, task.op_id, &task_id).await {
        // Logged by run_op, inside the op's span.
        tokio::time::sleep(DATABASE_TROUBLE_PAUSE).await;
        return Err(Box::new(e));
    }
    Ok(())
}

async fn inbox_task(args: Payload, task_id: TaskId, ctx: Data<Arc<JobContext>>) -> Result<(), BoxDynError> {
    let task_id = task_id.to_string();
    if left_for_newer(&ctx, INBOX_QUEUE, &task_id, &args).await? {
        return Ok(());
    }
    let task: InboxTask = match serde_json::from_value(args) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(job_id = %task_id, error = %e, "undecodable inbox task; dropped");
            return Ok(());
        }
    };
    if let Err(e) = kinds::inbox_push::run(&ctx, task.workspace_id, &task_id).await {
        // The drain's state is in its rows: apalis' retry (or the delegations sweep, should
        // the task be spent) picks it up where it stopped.
        tracing::error!(job_id = %task_id, workspace_id = %task.workspace_id, error = %e, "inbox drain failed");
        tokio::time::sleep(DATABASE_TROUBLE_PAUSE).await;
        return Err(Box::new(e));
    }
    Ok(())
}

async fn sweep_task(args: Payload, task_id: TaskId, ctx: Data<Arc<JobContext>>) -> Result<(), BoxDynError> {
    if left_for_newer(&ctx, SWEEP_QUEUE, &task_id.to_string(), &args).await? {
        return Ok(());
    }
    let task: SweepTask = match serde_json::from_value(args) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(job_id = %task_id, error = %e, "undecodable sweep task; dropped");
            return Ok(());
        }
    };
    let span = tracing::info_span!("sweep", sweep = %task.sweep, job_id = %task_id);
    if let Err(e) = jobs::sweeps::run(&ctx, &task).instrument(span).await {
        // No retry: the next period runs the sweep again.
        tracing::error!(sweep = %task.sweep, job_id = %task_id, error = %e, "sweep failed");
    }
    Ok(())
}
