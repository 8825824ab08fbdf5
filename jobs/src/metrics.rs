//! Prometheus metrics (names and meaning in docs/metrics.md). Each process installs one
//! recorder with [`install`] and serves [`PrometheusHandle::render`] from its own HTTP
//! route; the exporter never opens a listener of its own. Until a recorder is installed
//! every function here is a no-op, so library code records unconditionally.
//!
//! Counters are per process: the api counts the jobs it enqueues and the requests it
//! serves, a worker the jobs it enqueues, claims and finishes. Prometheus sums them.

use std::time::Duration;

use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::OpKind;
use crate::{Error, Result};

pub const JOBS_ENQUEUED: &str = "ws_jobs_enqueued_total";
pub const JOBS_CLAIMED: &str = "ws_jobs_claimed_total";
pub const JOBS_SUCCEEDED: &str = "ws_jobs_succeeded_total";
pub const JOBS_FAILED: &str = "ws_jobs_failed_total";
pub const JOBS_RETRIED: &str = "ws_jobs_retried_total";
pub const JOB_DURATION: &str = "ws_job_duration_seconds";
pub const QUEUE_DEPTH: &str = "ws_queue_depth";
pub const QUEUE_OLDEST_WAITING: &str = "ws_queue_oldest_waiting_seconds";
pub const HTTP_REQUESTS: &str = "ws_http_requests_total";
pub const HTTP_DURATION: &str = "ws_http_request_duration_seconds";
pub const WORKSPACES: &str = "ws_workspaces";
pub const LONG_POLLS: &str = "ws_inbox_long_polls";
pub const OP_RESCUES: &str = "ws_op_rescues_total";
pub const ORPHANS_REAPED: &str = "ws_orphans_reaped_total";
pub const LEAK_SUSPECTS: &str = "ws_leak_suspects_total";

/// The `kind` label of a job: the three op kinds, inbox drains and sweep runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Op(OpKind),
    InboxPush,
    Sweep,
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::Op(OpKind::Provision),
        JobKind::Op(OpKind::Stop),
        JobKind::Op(OpKind::Restart),
        JobKind::InboxPush,
        JobKind::Sweep,
    ];

    pub fn label(self) -> &'static str {
        match self {
            JobKind::Op(k) => k.as_str(),
            JobKind::InboxPush => "inbox_push",
            JobKind::Sweep => "sweep",
        }
    }
}

impl From<OpKind> for JobKind {
    fn from(k: OpKind) -> Self {
        JobKind::Op(k)
    }
}

/// How one claimed run of a job ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    /// Final: no attempt is left, or the failure is not worth another.
    Failed,
    /// Failed, with a later attempt scheduled.
    Retried,
    /// Neither: e.g. an op whose work had become moot, or one taken over by another worker.
    Other,
}

/// Latency buckets from a fast request to a slow EC2 start.
const SECONDS_BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Installs this process's recorder. Durations are exported as histograms (not the
/// exporter's default summaries) so percentiles can be aggregated across processes.
pub fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(|e| Error::Internal(format!("metrics recorder: {e}")))?;
    describe();
    // Every job counter exists from the start, at zero: a rate over a series that appears
    // only at its first increment misses that increment.
    for kind in JobKind::ALL {
        for name in [JOBS_ENQUEUED, JOBS_CLAIMED, JOBS_SUCCEEDED, JOBS_FAILED, JOBS_RETRIED] {
            counter!(name, "kind" => kind.label()).increment(0);
        }
    }
    Ok(handle)
}

fn describe() {
    describe_counter!(JOBS_ENQUEUED, "Jobs put on the queue: new ops, inbox drains armed, sweep periods claimed.");
    describe_counter!(JOBS_CLAIMED, "Job runs claimed by a worker.");
    describe_counter!(JOBS_SUCCEEDED, "Job runs that succeeded.");
    describe_counter!(JOBS_FAILED, "Job runs that failed for good.");
    describe_counter!(JOBS_RETRIED, "Job runs that failed with another attempt scheduled.");
    describe_histogram!(JOB_DURATION, ::metrics::Unit::Seconds, "From claim to recorded outcome.");
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting to be run, sampled by the api at scrape time.");
    describe_gauge!(QUEUE_OLDEST_WAITING, "How long the oldest due job has waited, sampled at scrape time.");
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route template and status.");
    describe_histogram!(HTTP_DURATION, ::metrics::Unit::Seconds, "HTTP request latency by route template.");
    describe_gauge!(WORKSPACES, "Workspaces by status, sampled by the api at scrape time.");
    describe_gauge!(LONG_POLLS, "Inbox long polls this api process holds open, read at scrape time.");
    describe_counter!(OP_RESCUES, "Ops re-delivered because their task had vanished.");
    describe_counter!(ORPHANS_REAPED, "Instances the orphans sweep stopped directly.");
    describe_counter!(LEAK_SUSPECTS, "Stops that gave up, leaving an instance that may still run.");
}

/// Runs the exporter's upkeep (it drains histogram samples) until the future is dropped;
/// without it a process that is rarely scraped would keep every sample in memory.
pub async fn keep_up(handle: PrometheusHandle) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

pub fn enqueued(kind: impl Into<JobKind>) {
    counter!(JOBS_ENQUEUED, "kind" => kind.into().label()).increment(1);
}

pub fn claimed(kind: impl Into<JobKind>) {
    counter!(JOBS_CLAIMED, "kind" => kind.into().label()).increment(1);
}

/// Counts how a claimed run ended and how long it took from its claim.
pub fn ended(kind: impl Into<JobKind>, end: JobEnd, took: Duration) {
    let kind = kind.into().label();
    let name = match end {
        JobEnd::Succeeded => Some(JOBS_SUCCEEDED),
        JobEnd::Failed => Some(JOBS_FAILED),
        JobEnd::Retried => Some(JOBS_RETRIED),
        JobEnd::Other => None,
    };
    if let Some(name) = name {
        counter!(name, "kind" => kind).increment(1);
    }
    histogram!(JOB_DURATION, "kind" => kind).record(took.as_secs_f64());
}

/// A push that failed and will be tried again: the inbox drain's retries are per item.
pub fn retried(kind: impl Into<JobKind>) {
    counter!(JOBS_RETRIED, "kind" => kind.into().label()).increment(1);
}

pub fn ops_rescued(n: usize) {
    counter!(OP_RESCUES).increment(n as u64);
}

pub fn orphan_reaped() {
    counter!(ORPHANS_REAPED).increment(1);
}

pub fn leak_suspected() {
    counter!(LEAK_SUSPECTS).increment(1);
}

/// `route` is the matched route template (`/workspaces/{id}`), never the raw path: raw
/// paths carry ids and would make a series per workspace.
pub fn http_request(route: &str, status: u16, took: Duration) {
    counter!(HTTP_REQUESTS, "route" => route.to_string(), "status" => status.to_string()).increment(1);
    histogram!(HTTP_DURATION, "route" => route.to_string()).record(took.as_secs_f64());
}

pub fn queue_sample(kind: JobKind, depth: i64, oldest_waiting_secs: f64) {
    gauge!(QUEUE_DEPTH, "kind" => kind.label()).set(depth as f64);
    gauge!(QUEUE_OLDEST_WAITING, "kind" => kind.label()).set(oldest_waiting_secs);
}

pub fn workspaces_sample(status: &'static str, count: i64) {
    gauge!(WORKSPACES, "status" => status).set(count as f64);
}

pub fn long_polls_sample(open: usize) {
    gauge!(LONG_POLLS).set(open as f64);
}

/// Sets the sampled gauges from the database: queue depth and wait per job kind, and
/// workspaces per status. Kinds and statuses with nothing are set to zero, so a gauge
/// falls back instead of keeping its last value.
pub async fn sample(pool: &sqlx::PgPool) -> Result<()> {
    let queues = crate::store::gauges::queues(pool).await?;
    for kind in JobKind::ALL {
        let (depth, oldest) =
            queues.iter().find(|(k, _, _)| k == kind.label()).map(|(_, d, o)| (*d, *o)).unwrap_or((0, 0.0));
        queue_sample(kind, depth, oldest);
    }
    let counts = crate::store::gauges::workspaces_by_status(pool).await?;
    for status in crate::domain::Status::ALL {
        let n = counts.iter().find(|(s, _)| s == status.as_str()).map(|(_, n)| *n).unwrap_or(0);
        workspaces_sample(status.as_str(), n);
    }
    Ok(())
}

pub use metrics_exporter_prometheus::PrometheusHandle as Handle;
