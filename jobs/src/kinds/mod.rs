//! The lifecycle job kinds: provision, stop and restart. A lifecycle task names an op;
//! [`run_op`] claims it, runs the kind's handler with panics caught, and records the
//! outcome through `ops::finish`. (Periodic maintenance is in `crate::sweeps`.)

pub mod inbox_push;
pub mod provision;
pub mod restart;
pub mod stop;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use sqlx::PgPool;
use tracing::Instrument;
use uuid::Uuid;

use crate::Result;
use crate::backend::Backends;
use crate::config::Config;
use crate::domain::OpKind;
use crate::fleet::Fleet;
use crate::metrics::{self, JobEnd};
use crate::ops::rounds::Rounds;
use crate::ops::{self, Claim, ClaimResult, Claimant, Ending, Finished, Outcome};
use crate::retry::RetryPolicies;
use crate::store::workspace_ops;

/// What every job a worker process runs shares: the pool, the configuration, the backends
/// this process reaches, the retry policies (delays already scaled) and the process's id
/// (`worker_processes.id`), which its claims are recorded under.
pub struct JobContext {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub backends: Backends,
    pub retry: RetryPolicies,
    pub process_id: String,
    /// When this process started (its own clock: only its uptime is measured with it).
    pub started: std::time::Instant,
    /// Pushes to agents: no redirects, the push timeouts.
    pub http: reqwest::Client,
    /// The live workers, read at most once a second for all ops (and the claim rounds).
    pub fleet: Arc<Fleet>,
    /// This process's concurrent claims and endings, coalesced (started at first use).
    rounds: OnceLock<OpRounds>,
}

/// One statement claims every delivery that arrived during the previous claim round; one
/// transaction records every ending that arrived during the previous ending round.
struct OpRounds {
    /// (op id, task id) deliveries.
    claims: Rounds<(Uuid, String), Option<Claim>>,
    endings: Rounds<Ending, Option<Finished>>,
}

impl JobContext {
    pub fn new(pool: PgPool, config: Arc<Config>, backends: Backends, process_id: String) -> JobContext {
        let retry = RetryPolicies::scaled(config.worker.retry_delay_scale);
        let http = push_client(&config, None).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not build the push client with its timeouts; using defaults");
            reqwest::Client::new()
        });
        let fleet = Arc::new(Fleet::new(pool.clone()));
        JobContext {
            pool,
            config,
            backends,
            retry,
            process_id,
            started: std::time::Instant::now(),
            http,
            fleet,
            rounds: OnceLock::new(),
        }
    }

    fn rounds(&self) -> &OpRounds {
        self.rounds.get_or_init(|| {
            let claimant = ClaimantOf {
                worker: self.process_id.clone(),
                lease: self.config.worker.op_lease,
                backends: self.backends.clone(),
            };
            let (pool, fleet) = (self.pool.clone(), self.fleet.clone());
            let claims = Rounds::spawn(move |deliveries: Vec<(Uuid, String)>| {
                let (pool, fleet, claimant) = (pool.clone(), fleet.clone(), claimant.clone());
                async move { claim_round(&pool, &fleet, &claimant, &deliveries).await }
            });
            let pool = self.pool.clone();
            let endings = Rounds::spawn(move |endings: Vec<Ending>| {
                let pool = pool.clone();
                async move {
                    match ops::finish_round(&pool, &endings).await {
                        Ok(finished) => finished.into_iter().map(Some).collect(),
                        Err(e) => {
                            // Nothing was written: each ending is recorded alone instead.
                            tracing::warn!(error = %e, endings = endings.len(), "could not record a round of op endings together");
                            endings.iter().map(|_| None).collect()
                        }
                    }
                }
            });
            OpRounds { claims, endings }
        })
    }

    /// The client for a push to `url`, whose addresses were checked against the agent-URL
    /// policy: a host name is pinned to those addresses, so a second lookup cannot lead
    /// somewhere the check refused.
    pub fn http_for(
        &self,
        url: &crate::domain::AgentUrl,
        addrs: &[std::net::SocketAddr],
    ) -> std::result::Result<reqwest::Client, String> {
        let parsed = url::Url::parse(url.as_str()).map_err(|e| e.to_string())?;
        match parsed.host() {
            Some(url::Host::Domain(name)) => push_client(&self.config, Some((name, addrs))),
            _ => Ok(self.http.clone()),
        }
    }

    /// This process as a claimant, with the backends it reaches now.
    pub fn claimant(&self) -> Claimant<'_> {
        claimant(&self.process_id, self.config.worker.op_lease, &self.backends)
    }
}

/// A worker process as a claimant, with the backends it reaches now.
fn claimant<'a>(worker: &'a str, lease: Duration, backends: &Backends) -> Claimant<'a> {
    Claimant {
        worker,
        lease,
        starts: backends.for_new_instance().is_some(),
        reaches: backends.all().iter().map(|b| b.kind()).collect(),
        engines: backends.docker_engine().into_iter().collect(),
        new_on_engine: backends.for_new_instance().and_then(|b| b.engine().map(str::to_owned)),
    }
}

/// What the claim round needs to make the process's [`Claimant`] when a round runs: the
/// backends come and go with their probes, so it is made afresh each round.
#[derive(Clone)]
struct ClaimantOf {
    worker: String,
    lease: Duration,
    backends: Backends,
}

fn push_client(
    config: &Config,
    pinned: Option<(&str, &[std::net::SocketAddr])>,
) -> std::result::Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.inbox.connect_timeout)
        .timeout(config.inbox.timeout);
    if let Some((name, addrs)) = pinned {
        b = b.resolve_to_addrs(name, addrs);
    }
    b.build().map_err(|e| e.to_string())
}

/// Runs the op delivered by apalis task `task_id`. Returns an error only when the database
/// cannot be reached to record anything; every other failure is recorded on the op.
///
/// Every line it logs carries the job, op and workspace ids: the span is opened before the
/// claim, and the workspace is filled in as soon as it is known.
pub async fn run_op(ctx: &JobContext, op_id: Uuid, task_id: &str) -> Result<()> {
    let span = tracing::info_span!("op", %op_id, job_id = task_id, workspace_id = tracing::field::Empty,
        kind = tracing::field::Empty, attempt = tracing::field::Empty);
    let result = claim_and_run(ctx, op_id, task_id).instrument(span.clone()).await;
    if let Err(e) = &result {
        span.in_scope(|| tracing::error!(error = %e, "could not record the op's outcome"));
    }
    result
}

async fn claim_and_run(ctx: &JobContext, op_id: Uuid, task_id: &str) -> Result<()> {
    let ttl = ctx.config.worker.op_lease;
    let span = tracing::Span::current();
    let direct = ctx.rounds().claims.submit((op_id, task_id.to_owned())).await.flatten();
    let claimed = match direct {
        Some(claim) => ClaimResult::Claimed(Box::new(claim)),
        None => ops::claim_exactly(&ctx.pool, op_id, task_id, &ctx.claimant()).await?,
    };
    let claim = match claimed {
        ClaimResult::Claimed(c) => c,
        ClaimResult::Skip(why) => {
            if let Some(ws) = workspace_ops::workspace_of(&ctx.pool, op_id).await? {
                span.record("workspace_id", tracing::field::display(ws));
            }
            tracing::info!(reason = %why, "nothing to do for task");
            return Ok(());
        }
    };
    let kind = claim.op.kind;
    let claimed_at = std::time::Instant::now();
    metrics::claimed(kind);
    span.record("workspace_id", tracing::field::display(claim.op.workspace_id));
    span.record("kind", kind.as_str());
    span.record("attempt", claim.op.attempts);
    tracing::info!(reason = %claim.op.reason, "op started");
    let work = AssertUnwindSafe(execute(ctx, &claim, kind)).catch_unwind();
    // The lease is renewed beside the work, not by it, so a handler blocked in a
    // backend call still holds its op; the renewal ends with the work.
    let outcome = tokio::select! {
        done = work => done,
        never = keep_lease(ctx, &claim, ttl) => match never {},
    };
    let outcome = match outcome {
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
    let end = outcome.job_end(&claim.op);
    let in_round = match Ending::of(&claim, &outcome) {
        Some(ending) => ctx.rounds().endings.submit(ending).await.flatten(),
        None => None,
    };
    let finished = match in_round {
        Some(finished) => finished,
        None => ops::finish(&ctx.pool, &claim, outcome, ctx.retry.for_kind(kind)).await?,
    };
    if finished == Finished::Fenced {
        // An operator's cancel fences like a takeover; the op row says which it was.
        match workspace_ops::get(&ctx.pool, op_id).await? {
            Some(op) if op.status == crate::domain::OpStatus::Canceled => tracing::warn!(
                why = op.last_error.as_deref().unwrap_or("canceled"),
                "op was canceled while this attempt ran; its outcome is dropped"
            ),
            _ => tracing::warn!("op was claimed by another worker meanwhile; this attempt's outcome is dropped"),
        }
        metrics::ended(kind, JobEnd::Other, claimed_at.elapsed());
    } else {
        metrics::ended(kind, end, claimed_at.elapsed());
    }
    Ok(())
}

/// Claims a round's deliveries in one statement; a delivery it did not take (or every one,
/// should the statement fail) goes the exact path, alone.
async fn claim_round(
    pool: &PgPool,
    fleet: &Fleet,
    of: &ClaimantOf,
    deliveries: &[(Uuid, String)],
) -> Vec<Option<Claim>> {
    let claimed = match fleet.snapshot().await {
        Ok(seen) => ops::claim_directly(pool, deliveries, &claimant(&of.worker, of.lease, &of.backends), &seen).await,
        Err(e) => Err(e),
    };
    match claimed {
        Ok(claims) => {
            // Keyed by task too: a stale delivery of an op in the same round gets nothing.
            let mut by_delivery: HashMap<(Uuid, String), Claim> =
                claims.into_iter().filter_map(|c| c.op.task_id.clone().map(|task| ((c.op.id, task), c))).collect();
            deliveries.iter().map(|d| by_delivery.remove(d)).collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, deliveries = deliveries.len(), "could not claim a round of ops together");
            deliveries.iter().map(|_| None).collect()
        }
    }
}

/// Renews the claim's lease every third of its length until dropped. A renewal that finds
/// the claim superseded stops renewing; the handler's writes are fenced anyway.
async fn keep_lease(ctx: &JobContext, claim: &Claim, ttl: Duration) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(ttl / 3).await;
        match workspace_ops::renew_lease(&ctx.pool, claim.op.id, claim.lease, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("lease lost: the op was taken over or ended; this attempt's writes will be fenced");
                return std::future::pending().await;
            }
            Err(e) => tracing::warn!(error = %e, "could not renew the op's lease; trying again"),
        }
    }
}

async fn execute(ctx: &JobContext, claim: &Claim, kind: OpKind) -> Result<Outcome> {
    match kind {
        OpKind::Provision => provision::run(ctx, claim).await,
        OpKind::Stop => stop::run(ctx, claim).await,
        OpKind::Restart => restart::run(ctx, claim).await,
    }
}
