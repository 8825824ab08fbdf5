//! The chaos harness, shared by the backends' chaos suites (`tests/tests/chaos/`): a seeded
//! workload of lifecycle verbs sent to a real stack while workers are SIGKILLed or SIGSTOPped
//! and PostgreSQL restarts, then a settle phase, the checks every backend shares and the
//! printed figures. The backend's own checks (containers and the engine's event stream, EC2
//! instances) are made by each suite.
//!
//! Everything random comes from one seed (`CHAOS_SEED`, printed at the start): the verbs,
//! their times and the faults are planned from it before the run, so a run is replayed by
//! setting the seed again. What the processes do in between is of course not replayed.
//!
//! The stack runs against its own PostgreSQL cluster ([`ThrowawayPg`]) so that restarting
//! it disturbs no other test.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::{ADMIN, Stack, eventually};

// ---------------------------------------------------------------------------------------------
// Knobs and the seeded generator
// ---------------------------------------------------------------------------------------------

/// The value of variable `name`, or `default` when it is unset or empty.
/// A stack on the chaos suite's own PostgreSQL server, with rescue timings short enough for
/// a run to converge in minutes: a dead worker's jobs are re-queued after 3 × 2 s, and an
/// op's lease lasts 6 s.
pub fn chaos_stack(database_server: &str) -> crate::StackBuilder {
    Stack::builder()
        .database_server(database_server)
        .env("WORKER_HEARTBEAT_SECONDS", "2")
        .env("WORKER_MISSED_HEARTBEATS", "3")
        .env("OP_LEASE_SECONDS", "6")
}

pub fn knob<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value"))
        }
        _ => default,
    }
}

pub fn knob_secs(name: &str, default: f64) -> Duration {
    let s: f64 = knob(name, default);
    assert!(s >= 0.0 && s.is_finite(), "{name}={s} must be a non-negative number of seconds");
    Duration::from_secs_f64(s)
}

/// `CHAOS_SEED`, or a new seed from the clock.
pub fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| panic!("CHAOS_SEED={v:?} is not a u64")),
        _ => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (nanos.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
        }
    }
}

/// xorshift64*, seeded through splitmix64 (nearby seeds give unrelated streams). Small, fast
/// and reproducible everywhere; nothing here needs more.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// An independent stream, so one plan's knobs do not shift another plan's draws.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }

    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut r = self.below(u64::from(total)) as u32;
        for (item, w) in items {
            if r < *w {
                return *item;
            }
            r -= w;
        }
        items[items.len() - 1].0
    }
}

// ---------------------------------------------------------------------------------------------
// A PostgreSQL cluster of our own, which the suite may restart
// ---------------------------------------------------------------------------------------------

const PG_SETTINGS: [&str; 3] = ["fsync=off", "synchronous_commit=off", "full_page_writes=off"];

/// Runs `script` in bash with `dev/lib.sh` sourced and `args` as `$1...`; its stdout, trimmed.
fn lib_sh(script: &str, args: &[String]) -> Result<String, String> {
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/../dev/lib.sh");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail; source '{lib}'; {script}"))
        .arg("lib.sh")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run bash: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("`{script}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

/// A PostgreSQL cluster made by `dev/lib.sh`'s `start_throwaway_pg`: its directory and port.
#[derive(Debug, Clone)]
pub struct PgCluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl PgCluster {
    /// Starts the cluster (initialising it the first time); returns its URL.
    pub fn start(&self) -> Result<String, String> {
        let mut args = vec![self.dir.display().to_string(), self.port.to_string()];
        args.extend(PG_SETTINGS.iter().map(|s| s.to_string()));
        lib_sh(r#"start_throwaway_pg "$@""#, &args)
    }

    /// Stops the cluster (`pg_ctl stop -m fast`); its data stays.
    pub fn stop(&self) -> Result<(), String> {
        lib_sh(r#"stop_throwaway_pg "$1""#, &[self.dir.display().to_string()]).map(|_| ())
    }
}

/// A throwaway PostgreSQL cluster on a free port, in a directory of its own; stopped when
/// dropped, and its directory removed unless the test is failing (then its path is printed,
/// for `postgres.log`).
pub struct ThrowawayPg {
    pub cluster: PgCluster,
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
}

impl ThrowawayPg {
    pub fn start() -> ThrowawayPg {
        let dir = std::env::temp_dir().join(format!("ws-chaos-pg-{}", Uuid::new_v4().simple()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let cluster = PgCluster { dir, port };
        let url = cluster.start().unwrap_or_else(|e| panic!("cannot start a PostgreSQL cluster: {e}"));
        ThrowawayPg { cluster, url }
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        let dir = self.cluster.dir.display();
        if let Err(e) = self.cluster.stop() {
            eprintln!("could not stop the PostgreSQL cluster in {dir}: {e}");
        }
        if std::thread::panicking() {
            eprintln!("PostgreSQL cluster kept for inspection: {dir} (log: postgres.log)");
        } else {
            let _ = std::fs::remove_dir_all(&self.cluster.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plans: verbs and faults, drawn from the seed before the run
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Create,
    Restart,
    Pause,
    Resume,
    Delete,
}

impl Verb {
    pub const ALL: [Verb; 5] = [Verb::Create, Verb::Restart, Verb::Pause, Verb::Resume, Verb::Delete];

    pub fn name(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Restart => "restart",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::Delete => "delete",
        }
    }
}

/// One verb of the plan: at `at` after the start, on the workspace in `slot`.
#[derive(Debug, Clone)]
pub struct PlannedVerb {
    pub at: Duration,
    pub slot: usize,
    pub verb: Verb,
    /// `?wait=` seconds (create, restart, resume only).
    pub wait: Option<u32>,
}

/// Every slot is created in the first tenth of the run; the other verbs fall uniformly over
/// the rest. The plan follows a rough model of each slot (paused? deleted?) so that most
/// verbs make sense (resume mostly after pause, create after delete) while some still
/// conflict (409) as real clients' would.
pub fn plan_verbs(rng: &mut Rng, seconds: f64, slots: usize, verbs: usize, wait_share: f64) -> Vec<PlannedVerb> {
    let mut plan = Vec::with_capacity(verbs.max(slots));
    let wait = |rng: &mut Rng, verb: Verb| {
        (matches!(verb, Verb::Create | Verb::Restart | Verb::Resume) && rng.chance(wait_share))
            .then(|| rng.range(2, 15) as u32)
    };
    for slot in 0..slots {
        let at = Duration::from_secs_f64(rng.unit() * seconds * 0.1);
        let w = wait(rng, Verb::Create);
        plan.push(PlannedVerb { at, slot, verb: Verb::Create, wait: w });
    }
    let mut times: Vec<f64> = (0..verbs.saturating_sub(slots)).map(|_| seconds * (0.1 + 0.9 * rng.unit())).collect();
    times.sort_by(f64::total_cmp);
    let (mut paused, mut deleted) = (vec![false; slots], vec![false; slots]);
    for t in times {
        let slot = rng.below(slots as u64) as usize;
        let verb = if deleted[slot] {
            Verb::Create
        } else if paused[slot] {
            rng.weighted(&[(Verb::Resume, 60), (Verb::Delete, 15), (Verb::Restart, 10), (Verb::Pause, 15)])
        } else {
            rng.weighted(&[(Verb::Restart, 40), (Verb::Pause, 30), (Verb::Delete, 15), (Verb::Resume, 15)])
        };
        match verb {
            Verb::Create => (deleted[slot], paused[slot]) = (false, false),
            Verb::Pause => paused[slot] = true,
            Verb::Resume => paused[slot] = false,
            Verb::Delete => deleted[slot] = true,
            Verb::Restart => {}
        }
        let w = wait(rng, verb);
        plan.push(PlannedVerb { at: Duration::from_secs_f64(t), slot, verb, wait: w });
    }
    plan.sort_by_key(|v| v.at);
    plan
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL; a replacement worker starts at once.
    Kill,
    /// SIGSTOP, and SIGCONT `stop_for` later.
    Stop,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL",
            Fault::Stop => "SIGSTOP",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    /// `slot` is the planned victim; `choice` picks another when that one is stopped at the
    /// time, or, when the workload targets busy workers, among those holding a running op.
    /// A stopped worker is continued `stop_for` after its stop.
    Fault {
        fault: Fault,
        slot: usize,
        choice: u64,
    },
    RestartPg,
}

/// A fault every `every` (kill or stop, even odds) on a worker that is not stopped, and one
/// PostgreSQL restart somewhere in the middle of the run when `restart_pg`.
pub fn plan_faults(
    rng: &mut Rng,
    seconds: f64,
    every: Duration,
    stop_for: Duration,
    workers: usize,
    restart_pg: bool,
) -> Vec<(Duration, Action)> {
    let mut plan = vec![];
    let mut stopped_until = vec![Duration::ZERO; workers];
    if !every.is_zero() {
        let mut at = every;
        while at.as_secs_f64() < seconds {
            let fault = if rng.chance(0.5) { Fault::Kill } else { Fault::Stop };
            let free: Vec<usize> = (0..workers).filter(|s| stopped_until[*s] <= at).collect();
            let choice = rng.next_u64();
            if !free.is_empty() {
                let slot = free[rng.below(free.len() as u64) as usize];
                plan.push((at, Action::Fault { fault, slot, choice }));
                if fault == Fault::Stop {
                    stopped_until[slot] = at + stop_for;
                }
            }
            at += every;
        }
    }
    if restart_pg {
        plan.push((Duration::from_secs_f64(seconds * (0.3 + 0.4 * rng.unit())), Action::RestartPg));
    }
    plan.sort_by_key(|(at, _)| *at);
    plan
}

// ---------------------------------------------------------------------------------------------
// The workload's description
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Workload {
    /// Printed with every line of the report (`docker`, `ec2`).
    pub name: &'static str,
    pub seed: u64,
    pub seconds: f64,
    pub workspaces: usize,
    pub verbs: usize,
    /// Concurrent verb senders; the verbs of one slot are always sent by the same one, in order.
    pub senders: usize,
    /// Share of create/restart/resume verbs sent with `?wait=`.
    pub wait_share: f64,
    pub tier: u8,
    pub fault_every: Duration,
    pub stop_for: Duration,
    pub restart_pg: bool,
    /// How long PostgreSQL stays down during its restart.
    pub pg_down: Duration,
    /// After PostgreSQL is back, how long 5xx answers and worker exits are still blamed on it.
    pub pg_grace: Duration,
    /// Faults hit a worker that holds a running op when there is one (else the planned one).
    pub target_busy: bool,
    /// One environment per worker slot (added to the stack's worker environment).
    pub worker_envs: Vec<Vec<(String, String)>>,
    /// Deadline of the settle phase.
    pub settle: Duration,
}

/// The defaults of a workload's knobs.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub seconds: f64,
    pub workspaces: usize,
    pub verbs: usize,
    pub fault_every: f64,
    pub stop_for: f64,
    pub pg_down: f64,
    pub target_busy: bool,
}

impl Workload {
    /// Reads `<prefix>_SECONDS`, `_WORKSPACES`, `_VERBS`, `_FAULT_EVERY_SECONDS`,
    /// `_STOP_SECONDS`, `_PG_DOWN_SECONDS`, `_TARGET_BUSY`, `_SETTLE_SECONDS` (default 300)
    /// and `CHAOS_SEED`.
    pub fn from_env(name: &'static str, prefix: &str, d: Defaults) -> Workload {
        let k = |suffix: &str| format!("{prefix}_{suffix}");
        Workload {
            name,
            seed: seed(),
            seconds: knob(&k("SECONDS"), d.seconds),
            workspaces: knob(&k("WORKSPACES"), d.workspaces),
            verbs: knob(&k("VERBS"), d.verbs),
            senders: 8,
            wait_share: 0.2,
            tier: 1,
            fault_every: knob_secs(&k("FAULT_EVERY_SECONDS"), d.fault_every),
            stop_for: knob_secs(&k("STOP_SECONDS"), d.stop_for),
            restart_pg: true,
            pg_down: knob_secs(&k("PG_DOWN_SECONDS"), d.pg_down),
            pg_grace: Duration::from_secs(10),
            target_busy: knob(&k("TARGET_BUSY"), d.target_busy),
            worker_envs: vec![],
            settle: knob_secs(&k("SETTLE_SECONDS"), 300.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records of the run
// ---------------------------------------------------------------------------------------------

/// The api's answer to one verb.
#[derive(Debug, Clone)]
pub struct Answer {
    pub verb: Verb,
    pub slot: usize,
    pub method: &'static str,
    pub path: String,
    /// `None`: no HTTP answer (connection refused, reset, timeout).
    pub status: Option<u16>,
    pub body: String,
    pub sent: Instant,
    pub answered: Instant,
    /// The plan said another verb, but the slot had no workspace (its create had failed).
    pub substituted: bool,
}

impl Answer {
    pub fn class(&self) -> &'static str {
        match self.status {
            None => "no answer",
            Some(202) => "202 wait timed out",
            Some(s) if (200..300).contains(&s) => "2xx",
            Some(404) => "404",
            Some(409) => "409",
            Some(s) if (400..500).contains(&s) => "other 4xx",
            Some(_) => "5xx",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgWindow {
    pub down_at: Instant,
    pub up_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub n: usize,
    pub at: Duration,
    pub fault: Fault,
    pub slot: usize,
    pub pid: u32,
    pub worker_id: Option<String>,
    /// The ops the worker held (running, claimed by it) when it was hit, with their lease then.
    pub ops: Vec<(Uuid, String, i64)>,
}

/// What became of an op held by a worker that was hit.
#[derive(Debug, Clone)]
pub struct Rescue {
    pub fault: usize,
    pub op: Uuid,
    pub kind: String,
    pub lease_at_fault: i64,
    /// "claimed by <worker> (lease n)" or "became <status>", or "unresolved".
    pub outcome: String,
    pub reclaimed: bool,
    pub after: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct RunningOp {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub kind: String,
    pub lease: i64,
    pub claimed_by: Option<String>,
}

#[derive(Debug, Clone)]
struct PendingRescue {
    fault: usize,
    op: Uuid,
    kind: String,
    victim: Option<String>,
    lease: i64,
    since: Instant,
}

#[derive(Default)]
struct MonitorState {
    running: Vec<RunningOp>,
    pending: Vec<PendingRescue>,
    rescues: Vec<Rescue>,
    polls: u64,
    failed_polls: u64,
}

/// Who holds a running op, as SQL over `workspace_ops o`: the `claimed_by` column when the
/// schema has one, else the worker process whose apalis worker fetched the op's task
/// (apalis names it `lifecycle-<process id>-<generation>`).
async fn claimed_by_sql(pool: &PgPool) -> &'static str {
    let has: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                         WHERE table_schema = current_schema() AND table_name = 'workspace_ops'
                           AND column_name = 'claimed_by')",
    )
    .fetch_one(pool)
    .await
    .expect("read the schema");
    if has {
        "o.claimed_by::text"
    } else {
        "(SELECT wp.id FROM apalis.jobs j JOIN worker_processes wp ON j.lock_by LIKE 'lifecycle-' || wp.id || '-%'
           WHERE j.id = o.task_id LIMIT 1)"
    }
}

/// Polls the database every 200 ms: which ops are running and who holds them, and what
/// became of the ops held by workers that were hit.
struct Monitor {
    state: Arc<Mutex<MonitorState>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    claimed_by: &'static str,
}

impl Monitor {
    async fn start(pool: PgPool) -> Monitor {
        let claimed_by = claimed_by_sql(&pool).await;
        let state = Arc::new(Mutex::new(MonitorState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(Self::poll_loop(pool, claimed_by, state.clone(), stop.clone()));
        Monitor { state, stop, task: Some(task), claimed_by }
    }

    async fn poll_loop(pool: PgPool, claimed_by: &'static str, state: Arc<Mutex<MonitorState>>, stop: Arc<AtomicBool>) {
        let running_sql = format!(
            "SELECT o.id, o.workspace_id, o.kind, o.lease, {claimed_by} FROM workspace_ops o WHERE o.status = 'running'"
        );
        let pending_sql =
            format!("SELECT o.id, o.status, o.lease, {claimed_by} FROM workspace_ops o WHERE o.id = ANY($1)");
        // A sampler, not a wait: it looks every 200 ms until told to stop.
        let mut ticks = tokio::time::interval(Duration::from_millis(200));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            ticks.tick().await;
            let polled = tokio::time::timeout(Duration::from_secs(2), async {
                let running: Vec<(Uuid, Uuid, String, i64, Option<String>)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(running_sql.clone())).fetch_all(&pool).await?;
                let ids: Vec<Uuid> = state.lock().expect("monitor").pending.iter().map(|p| p.op).collect();
                let pending: Vec<(Uuid, String, i64, Option<String>)> = if ids.is_empty() {
                    vec![]
                } else {
                    sqlx::query_as(sqlx::AssertSqlSafe(pending_sql.clone())).bind(&ids).fetch_all(&pool).await?
                };
                Ok::<_, sqlx::Error>((running, pending, ids))
            })
            .await;
            let now = Instant::now();
            {
                let mut s = state.lock().expect("monitor");
                s.polls += 1;
                match polled {
                    Ok(Ok((running, pending, asked))) => {
                        s.running = running
                            .into_iter()
                            .map(|(id, workspace_id, kind, lease, claimed_by)| RunningOp {
                                id,
                                workspace_id,
                                kind,
                                lease,
                                claimed_by,
                            })
                            .collect();
                        let now_of: HashMap<Uuid, (String, i64, Option<String>)> =
                            pending.into_iter().map(|(id, st, lease, by)| (id, (st, lease, by))).collect();
                        let mut still = vec![];
                        for p in std::mem::take(&mut s.pending) {
                            if !asked.contains(&p.op) {
                                // Tracked while this poll ran: the next poll asks about it.
                                still.push(p);
                                continue;
                            }
                            let resolved = match now_of.get(&p.op) {
                                Some((st, lease, _)) if matches!(st.as_str(), "succeeded" | "failed" | "canceled") => {
                                    Some((format!("became {st} (lease {lease})"), false))
                                }
                                Some((_, lease, by)) if *lease > p.lease => Some((
                                    format!("claimed by {} (lease {lease})", short_worker(by.as_deref())),
                                    by.is_some() && by != &p.victim,
                                )),
                                None => Some(("op row gone".to_string(), false)),
                                _ => None,
                            };
                            match resolved {
                                Some((outcome, reclaimed)) => s.rescues.push(Rescue {
                                    fault: p.fault,
                                    op: p.op,
                                    kind: p.kind.clone(),
                                    lease_at_fault: p.lease,
                                    outcome,
                                    reclaimed,
                                    after: Some(now - p.since),
                                }),
                                None => still.push(p),
                            }
                        }
                        s.pending = still;
                    }
                    _ => s.failed_polls += 1,
                }
            }
        }
    }

    fn running(&self) -> Vec<RunningOp> {
        self.state.lock().expect("monitor").running.clone()
    }

    fn track(&self, fault: usize, victim: Option<String>, ops: &[(Uuid, String, i64)], since: Instant) {
        let mut s = self.state.lock().expect("monitor");
        for (op, kind, lease) in ops {
            s.pending.push(PendingRescue {
                fault,
                op: *op,
                kind: kind.clone(),
                victim: victim.clone(),
                lease: *lease,
                since,
            });
        }
    }

    /// Stops polling; ops still pending are reported unresolved.
    async fn finish(&mut self) -> (Vec<Rescue>, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let mut s = self.state.lock().expect("monitor");
        let pending = std::mem::take(&mut s.pending);
        for p in pending {
            s.rescues.push(Rescue {
                fault: p.fault,
                op: p.op,
                kind: p.kind,
                lease_at_fault: p.lease,
                outcome: "unresolved".into(),
                reclaimed: false,
                after: None,
            });
        }
        s.rescues.sort_by_key(|r| (r.fault, r.op));
        (s.rescues.clone(), s.polls, s.failed_polls)
    }
}

fn short_worker(id: Option<&str>) -> String {
    // `<hostname>-<pid>-<ulid>`: the pid is what the report's other columns show.
    match id {
        None => "?".into(),
        Some(id) => {
            let parts: Vec<&str> = id.rsplitn(3, '-').collect();
            if parts.len() == 3 { format!("pid {}", parts[1]) } else { id.to_string() }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rows the checks read
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpRow {
    pub id: Uuid,
    pub seq: i64,
    pub workspace_id: Uuid,
    pub kind: String,
    pub reason: String,
    pub status: String,
    pub attempts: i32,
    pub lease: i64,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl OpRow {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "canceled")
    }

    /// One line for evidence: `#seq kind/reason status attempts lease created→started→finished: result or error`.
    pub fn line(&self) -> String {
        let t =
            |d: Option<DateTime<Utc>>| d.map(|d| d.format("%H:%M:%S%.3f").to_string()).unwrap_or_else(|| "-".into());
        format!(
            "#{} op {} {}/{} {} attempts={} lease={} {}→{}→{}: {}",
            self.seq,
            self.id,
            self.kind,
            self.reason,
            self.status,
            self.attempts,
            self.lease,
            t(Some(self.created_at)),
            t(self.started_at),
            t(self.finished_at),
            self.result.as_deref().or(self.last_error.as_deref()).unwrap_or("")
        )
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkspaceRow {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub backend: Option<String>,
    pub instance_ref: Option<String>,
    pub last_sample_error: Option<String>,
    pub status_changed_at: DateTime<Utc>,
}

pub async fn op_rows(pool: &PgPool) -> Vec<OpRow> {
    sqlx::query_as(
        "SELECT id, seq, workspace_id, kind, reason, status, attempts, lease, last_error, result, requested_by,
                created_at, started_at, finished_at
           FROM workspace_ops ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .expect("read workspace_ops")
}

pub async fn workspace_rows(pool: &PgPool) -> Vec<WorkspaceRow> {
    sqlx::query_as(
        "SELECT id, name, status, backend, instance_ref, last_sample_error, status_changed_at FROM workspaces ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
    .expect("read workspaces")
}

/// Every op of `workspace`, one line each, for evidence.
pub fn history(ops: &[OpRow], workspace: Uuid) -> String {
    ops.iter().filter(|o| o.workspace_id == workspace).map(|o| format!("\n        {}", o.line())).collect()
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

struct WorkerSlot {
    /// Index into `Stack::workers`.
    proc: usize,
    env: Vec<(String, String)>,
    /// SIGSTOPped; continued at this time.
    stopped_until: Option<Instant>,
    /// Its `worker_processes.id`, once it announced itself.
    worker_id: Option<String>,
}

/// One chaos run on a started stack: [`Chaos::start`], [`Chaos::run_workload`],
/// [`Chaos::settle`], the backend's checks, [`Chaos::conclude`].
pub struct Chaos {
    pub w: Workload,
    pub pool: PgPool,
    pub started: Instant,
    pub answers: Vec<Answer>,
    pub faults: Vec<FaultRecord>,
    pub pg_windows: Arc<Mutex<Vec<PgWindow>>>,
    /// Worker processes that exited without being killed by us: (when, slot, status, log).
    pub worker_exits: Vec<(Instant, usize, String, PathBuf)>,
    pub rescues: Vec<Rescue>,
    /// Invariant violations found so far; `conclude` fails the test when there is any.
    pub violations: Vec<String>,
    /// Printed with the report; not failures.
    pub notes: Vec<String>,
    pub settle_took: Option<Duration>,
    pub claimed_by_source: &'static str,
    /// `structure_events` of the types that tell of repairs: orphans, leaks.
    pub event_counts: BTreeMap<String, i64>,
    slots: Vec<WorkerSlot>,
    monitor: Monitor,
    polls: (u64, u64),
    settle_deadline: Option<Instant>,
    settle_began: Option<Instant>,
}

impl Chaos {
    /// Starts one worker per `w.worker_envs` and waits until each announced itself.
    pub async fn start(w: Workload, stack: &mut Stack) -> Chaos {
        println!(
            "== chaos {}: seed {} (replay with CHAOS_SEED={}), {:.0} s, {} workspaces, {} verbs, {} workers, platform {}",
            w.name,
            w.seed,
            w.seed,
            w.seconds,
            w.workspaces,
            w.verbs,
            w.worker_envs.len(),
            stack.db.name
        );
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&stack.db.url)
            .await
            .expect("connect the chaos pool");
        let mut slots = vec![];
        for env in &w.worker_envs {
            let e: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let proc = stack.add_worker_with(&e);
            slots.push(WorkerSlot { proc, env: env.clone(), stopped_until: None, worker_id: None });
        }
        let pids: Vec<i32> = slots.iter().map(|s| stack.workers[s.proc].pid() as i32).collect();
        eventually(Duration::from_secs(60), "every worker to announce itself", || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM worker_processes WHERE pid = ANY($1)")
                .bind(&pids)
                .fetch_one(&pool)
                .await
                .ok()?;
            (n as usize == pids.len()).then_some(())
        })
        .await;
        let monitor = Monitor::start(pool.clone()).await;
        let claimed_by_source = if monitor.claimed_by.starts_with("o.claimed_by") {
            "workspace_ops.claimed_by"
        } else {
            "apalis.jobs.lock_by of the op's task"
        };
        Chaos {
            w,
            pool,
            started: Instant::now(),
            answers: vec![],
            faults: vec![],
            pg_windows: Arc::new(Mutex::new(vec![])),
            worker_exits: vec![],
            rescues: vec![],
            violations: vec![],
            notes: vec![],
            settle_took: None,
            claimed_by_source,
            event_counts: BTreeMap::new(),
            slots,
            monitor,
            polls: (0, 0),
            settle_deadline: None,
            settle_began: None,
        }
    }

    pub fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.started).as_secs_f64()
    }

    /// Sends the planned verbs and executes the planned faults; returns when both are done,
    /// every stopped worker is continued and every slot has a live worker.
    pub async fn run_workload(&mut self, stack: &mut Stack, pg: &ThrowawayPg) {
        let mut root = Rng::new(self.w.seed);
        let mut verb_rng = root.fork();
        let mut fault_rng = root.fork();
        let verbs = plan_verbs(&mut verb_rng, self.w.seconds, self.w.workspaces, self.w.verbs, self.w.wait_share);
        let faults = plan_faults(
            &mut fault_rng,
            self.w.seconds,
            self.w.fault_every,
            self.w.stop_for,
            self.slots.len(),
            self.w.restart_pg,
        );
        let mut by_verb: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &verbs {
            *by_verb.entry(v.verb.name()).or_default() += 1;
        }
        println!(
            "== chaos {}: plan: {} verbs {:?} ({} with ?wait), {} faults, PostgreSQL restart at {}",
            self.w.name,
            verbs.len(),
            by_verb,
            verbs.iter().filter(|v| v.wait.is_some()).count(),
            faults.iter().filter(|(_, a)| matches!(a, Action::Fault { .. })).count(),
            faults
                .iter()
                .find(|(_, a)| matches!(a, Action::RestartPg))
                .map(|(at, _)| format!("{:.1} s", at.as_secs_f64()))
                .unwrap_or_else(|| "never".into())
        );

        self.started = Instant::now();
        let answers = Arc::new(Mutex::new(Vec::<Answer>::new()));
        let mut senders = tokio::task::JoinSet::new();
        for r in 0..self.w.senders {
            let mine: Vec<PlannedVerb> = verbs.iter().filter(|v| v.slot % self.w.senders == r).cloned().collect();
            senders.spawn(send_verbs(
                stack.client.clone(),
                stack.url.clone(),
                mine,
                self.started,
                self.w.tier,
                answers.clone(),
            ));
        }

        let mut plan = faults.into_iter().peekable();
        let mut pg_task: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            self.check_processes(stack);
            self.refresh_worker_ids(stack).await;
            let now = Instant::now();
            for slot in 0..self.slots.len() {
                if self.slots[slot].stopped_until.is_some_and(|t| t <= now) {
                    self.continue_slot(stack, slot);
                }
            }
            while let Some((at, _)) = plan.peek() {
                if self.started + *at > Instant::now() {
                    break;
                }
                let (at, action) = plan.next().expect("peeked");
                match action {
                    Action::Fault { fault, slot, choice } => self.fault(stack, fault, slot, choice, at).await,
                    Action::RestartPg => pg_task = Some(self.restart_pg(pg)),
                }
            }
            while let Some(done) = senders.try_join_next() {
                done.expect("a verb sender panicked");
            }
            let stopped = self.slots.iter().filter_map(|s| s.stopped_until).min();
            if plan.peek().is_none() && senders.is_empty() && stopped.is_none() {
                break;
            }
            let mut next = Instant::now() + Duration::from_secs(1);
            if let Some((at, _)) = plan.peek() {
                next = next.min(self.started + *at);
            }
            if let Some(t) = stopped {
                next = next.min(t);
            }
            // The plan's next event, or a second from now to look at the workers again.
            tokio::time::sleep_until(next.into()).await;
        }
        if let Some(t) = pg_task {
            t.await.expect("the PostgreSQL restart task panicked");
        }
        self.check_processes(stack);
        self.answers = std::mem::take(&mut *answers.lock().expect("answers"));
        self.answers.sort_by_key(|a| a.sent);
        println!(
            "== chaos {}: workload done after {:.1} s ({} answers)",
            self.w.name,
            self.started.elapsed().as_secs_f64(),
            self.answers.len()
        );
    }

    /// Replaces worker processes that exited on their own; records an exit outside the
    /// PostgreSQL restart as a violation. An api that exited is always one.
    fn check_processes(&mut self, stack: &mut Stack) {
        for slot in 0..self.slots.len() {
            let idx = self.slots[slot].proc;
            if let Some(status) = stack.workers[idx].exited() {
                let now = Instant::now();
                let log = stack.workers[idx].log.clone();
                let blamed_on_pg = self.in_pg_window(now, now);
                let msg = format!(
                    "worker slot {slot} (pid {}) exited on its own with {status} at {:.1} s{}; log {}",
                    stack.workers[idx].pid(),
                    self.at(now),
                    if blamed_on_pg { " (during the PostgreSQL restart)" } else { "" },
                    log.display()
                );
                if blamed_on_pg {
                    self.notes.push(msg);
                } else {
                    self.violations.push(msg);
                }
                self.worker_exits.push((now, slot, status.to_string(), log));
                self.replace(stack, slot);
            }
        }
        if let Some(api) = stack.api.as_mut()
            && let Some(status) = api.exited()
        {
            let msg = format!("the api exited with {status}; log {}", api.log.display());
            if !self.violations.contains(&msg) {
                self.violations.push(msg);
            }
        }
    }

    fn replace(&mut self, stack: &mut Stack, slot: usize) {
        let env: Vec<(&str, String)> = self.slots[slot].env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        self.slots[slot].proc = stack.add_worker_with(&env);
        self.slots[slot].stopped_until = None;
        self.slots[slot].worker_id = None;
    }

    /// Learns the `worker_processes.id` of slots whose worker announced itself since.
    async fn refresh_worker_ids(&mut self, stack: &Stack) {
        if self.slots.iter().all(|s| s.worker_id.is_some()) {
            return;
        }
        let rows: Option<Vec<(String, i32)>> = tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query_as("SELECT id, pid FROM worker_processes").fetch_all(&self.pool),
        )
        .await
        .ok()
        .and_then(|r| r.ok());
        for (id, pid) in rows.unwrap_or_default() {
            for s in &mut self.slots {
                if s.worker_id.is_none() && stack.workers[s.proc].pid() as i32 == pid {
                    s.worker_id = Some(id.clone());
                }
            }
        }
    }

    fn held_by<'a>(running: &'a [RunningOp], worker_id: Option<&str>, pid: u32) -> impl Iterator<Item = &'a RunningOp> {
        let pattern = format!("-{pid}-");
        let worker_id = worker_id.map(str::to_string);
        running.iter().filter(move |o| match (&o.claimed_by, &worker_id) {
            (Some(by), Some(id)) => by == id,
            (Some(by), None) => by.contains(&pattern),
            (None, _) => false,
        })
    }

    async fn fault(&mut self, stack: &mut Stack, fault: Fault, planned: usize, choice: u64, at: Duration) {
        let running = self.monitor.running();
        let free: Vec<usize> = (0..self.slots.len()).filter(|s| self.slots[*s].stopped_until.is_none()).collect();
        if free.is_empty() {
            return;
        }
        let busy: Vec<usize> = free
            .iter()
            .copied()
            .filter(|s| {
                let pid = stack.workers[self.slots[*s].proc].pid();
                Self::held_by(&running, self.slots[*s].worker_id.as_deref(), pid).any(|o| o.kind != "stop")
            })
            .collect();
        let slot = if self.w.target_busy && !busy.is_empty() {
            busy[(choice % busy.len() as u64) as usize]
        } else if free.contains(&planned) {
            planned
        } else {
            free[(choice % free.len() as u64) as usize]
        };
        let idx = self.slots[slot].proc;
        let pid = stack.workers[idx].pid();
        stack.workers[idx].signal(match fault {
            Fault::Kill => "KILL",
            Fault::Stop => "STOP",
        });
        let hit = Instant::now();
        let worker_id = self.slots[slot].worker_id.clone();
        // What it held: a fresh look is exact (the worker can change nothing any more); while
        // PostgreSQL is down, the latest poll (at most 200 ms old) has to do.
        let fresh = match &worker_id {
            Some(id) => {
                let sql = format!(
                    "SELECT o.id, o.kind, o.lease FROM workspace_ops o WHERE o.status = 'running' AND {} = $1",
                    self.monitor.claimed_by
                );
                tokio::time::timeout(
                    Duration::from_secs(2),
                    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_all(&self.pool),
                )
                .await
                .ok()
                .and_then(|r| r.ok())
            }
            None => None,
        };
        let ops: Vec<(Uuid, String, i64)> = fresh.unwrap_or_else(|| {
            Self::held_by(&running, worker_id.as_deref(), pid).map(|o| (o.id, o.kind.clone(), o.lease)).collect()
        });
        let n = self.faults.len() + 1;
        self.monitor.track(n, worker_id.clone(), &ops, hit);
        println!(
            "== chaos {}: {:>6.1} s  fault {n}: {} worker slot {slot} (pid {pid}) holding {} op(s)",
            self.w.name,
            self.at(hit),
            fault.name(),
            ops.len()
        );
        self.faults.push(FaultRecord { n, at, fault, slot, pid, worker_id, ops });
        match fault {
            Fault::Kill => self.replace(stack, slot),
            Fault::Stop => self.slots[slot].stopped_until = Some(hit + self.w.stop_for),
        }
    }

    fn continue_slot(&mut self, stack: &mut Stack, slot: usize) {
        if self.slots[slot].stopped_until.take().is_none() {
            return;
        }
        let idx = self.slots[slot].proc;
        stack.workers[idx].signal("CONT");
        println!(
            "== chaos {}: {:>6.1} s  SIGCONT worker slot {slot} (pid {})",
            self.w.name,
            self.at(Instant::now()),
            stack.workers[idx].pid()
        );
    }

    fn restart_pg(&self, pg: &ThrowawayPg) -> tokio::task::JoinHandle<()> {
        let windows = self.pg_windows.clone();
        let cluster = pg.cluster.clone();
        let (down, name, started) = (self.w.pg_down, self.w.name, self.started);
        tokio::spawn(async move {
            let down_at = Instant::now();
            windows.lock().expect("pg windows").push(PgWindow { down_at, up_at: None });
            println!("== chaos {name}: {:>6.1} s  stopping PostgreSQL", (down_at - started).as_secs_f64());
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.stop())
                .await
                .expect("stop PostgreSQL")
                .unwrap_or_else(|e| panic!("stop PostgreSQL: {e}"));
            // The fault itself: PostgreSQL stays down for the planned time.
            tokio::time::sleep_until((down_at + down).into()).await;
            tokio::task::spawn_blocking(move || cluster.start())
                .await
                .expect("start PostgreSQL")
                .unwrap_or_else(|e| panic!("start PostgreSQL again: {e}"));
            let up_at = Instant::now();
            if let Some(w) = windows.lock().expect("pg windows").last_mut() {
                w.up_at = Some(up_at);
            }
            println!(
                "== chaos {name}: {:>6.1} s  PostgreSQL is back (down {:.1} s)",
                (up_at - started).as_secs_f64(),
                (up_at - down_at).as_secs_f64()
            );
        })
    }

    /// Whether [from, to] overlaps a PostgreSQL restart (plus the grace after it).
    pub fn in_pg_window(&self, from: Instant, to: Instant) -> bool {
        self.pg_windows.lock().expect("pg windows").iter().any(|w| {
            let end = w.up_at.map(|u| u + self.w.pg_grace);
            from <= end.unwrap_or(to) && to >= w.down_at
        })
    }

    /// Polls until every op is final and no workspace is provisioning, within the settle
    /// deadline (counted from the first call). Records a violation when the deadline passes.
    pub async fn settle(&mut self, phase: &str) -> bool {
        let first = Instant::now();
        let deadline = *self.settle_deadline.get_or_insert(first + self.w.settle);
        let began = *self.settle_began.get_or_insert(first);
        let pool = self.pool.clone();
        let last = std::cell::Cell::new(None);
        let settled = crate::poll_until(deadline, Duration::from_millis(500), || {
            let pool = pool.clone();
            let last = &last;
            async move {
                let counts: Option<(i64, i64)> = tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::query_as(
                        "SELECT (SELECT count(*) FROM workspace_ops WHERE status IN ('queued', 'running')),
                                (SELECT count(*) FROM workspaces WHERE status = 'provisioning')",
                    )
                    .fetch_one(&pool),
                )
                .await
                .ok()
                .and_then(|r| r.ok());
                last.set(counts);
                (counts == Some((0, 0))).then_some(())
            }
        })
        .await;
        if settled.is_none() {
            self.violations.push(format!(
                "did not settle ({phase}) within {:?}: {:?} (unfinished ops, provisioning workspaces)",
                self.w.settle,
                last.get()
            ));
            return false;
        }
        self.settle_took = Some(began.elapsed());
        println!("== chaos {}: settled ({phase}) after {:.1} s", self.w.name, first.elapsed().as_secs_f64());
        true
    }

    /// Settles, waits for an orphans sweep that starts after that, and settles again: the
    /// state then includes whatever that sweep repaired.
    pub async fn settle_through_orphans_sweep(&mut self) -> bool {
        let since: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&self.pool).await.expect("now()");
        let deadline = self.settle_deadline.unwrap_or_else(|| Instant::now() + self.w.settle);
        let pool = self.pool.clone();
        let swept = crate::poll_until(deadline, Duration::from_millis(500), || {
            let pool = pool.clone();
            async move {
                // Every orphans sweep seen (the platform-wide one and each Docker engine's)
                // has finished a run that started after `since`.
                let swept: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sweep_runs WHERE sweep LIKE 'orphans%' AND claimed_at > $1 AND finished_at IS NOT NULL)
                        AND NOT EXISTS (SELECT 1 FROM sweep_runs s WHERE s.sweep LIKE 'orphans%'
                              AND NOT EXISTS (SELECT 1 FROM sweep_runs r WHERE r.sweep = s.sweep AND r.claimed_at > $1
                                                AND r.finished_at IS NOT NULL))",
                )
                .bind(since)
                .fetch_one(&pool)
                .await
                .unwrap_or(false);
                swept.then_some(())
            }
        })
        .await;
        if swept.is_none() {
            self.violations.push("no orphans sweep ran after the settle phase, within its deadline".into());
            return false;
        }
        self.settle("after an orphans sweep").await
    }

    /// The checks every backend shares: ops final, nothing provisioning, the api's answers.
    /// Call after settling; the backend's own checks go in `violations` too.
    pub async fn common_checks(&mut self) -> (Vec<OpRow>, Vec<WorkspaceRow>) {
        let (rescues, polls, failed) = self.monitor.finish().await;
        self.rescues = rescues;
        self.polls = (polls, failed);
        let ops = op_rows(&self.pool).await;
        let workspaces = workspace_rows(&self.pool).await;
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT event_type, count(*) FROM structure_events
              WHERE event_type IN ('ORPHAN_FOUND', 'ORPHAN_REAPED', 'LEAK_SUSPECT', 'WORKSPACE_PROVISION_FAILED', 'WORKSPACE_OFFLINE')
              GROUP BY event_type",
        )
        .fetch_all(&self.pool)
        .await
        .expect("count events");
        self.event_counts = counts.into_iter().collect();
        // What the sweeps repaired or suspected during the run, for the notes.
        type Repair = (DateTime<Utc>, String, Option<Uuid>, Option<String>, Value);
        let repairs: Vec<Repair> = sqlx::query_as(
            "SELECT e.created_at, e.event_type, e.workspace_id, w.status, e.payload
               FROM structure_events e LEFT JOIN workspaces w ON w.id = e.workspace_id
              WHERE e.event_type IN ('ORPHAN_FOUND', 'ORPHAN_REAPED', 'LEAK_SUSPECT')
              ORDER BY e.id LIMIT 40",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read repair events");
        for (at, kind, ws, status, payload) in repairs {
            self.notes.push(format!(
                "{} {kind} workspace {} (now {}): {payload}",
                at.format("%H:%M:%S%.3f"),
                ws.map(|w| w.to_string()).unwrap_or_else(|| "-".into()),
                status.unwrap_or_else(|| "-".into())
            ));
        }
        for o in ops.iter().filter(|o| !o.is_final()) {
            self.violations.push(format!(
                "op not final: workspace {} {}{}",
                o.workspace_id,
                o.line(),
                history(&ops, o.workspace_id)
            ));
        }
        for ws in workspaces.iter().filter(|w| w.status == "provisioning") {
            self.violations.push(format!(
                "workspace {} ({}) stuck in provisioning since {}; its ops:{}",
                ws.id,
                ws.name,
                ws.status_changed_at.format("%H:%M:%S%.3f"),
                history(&ops, ws.id)
            ));
        }
        let mut bad = vec![];
        for a in &self.answers {
            let windowed = self.in_pg_window(a.sent, a.answered);
            let problem = match a.status {
                None if !windowed => Some("no answer outside the PostgreSQL restart"),
                Some(s) if s >= 500 && !windowed => Some("5xx outside the PostgreSQL restart"),
                Some(400 | 401 | 403 | 405 | 413 | 415 | 422) => Some("a request the harness should not make"),
                _ => None,
            };
            if let Some(p) = problem {
                bad.push(format!(
                    "{p}: {} {} → {} at {:.1}–{:.1} s: {}",
                    a.method,
                    a.path,
                    a.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into()),
                    self.at(a.sent),
                    self.at(a.answered),
                    a.body.chars().take(300).collect::<String>()
                ));
            }
        }
        self.violations.extend(bad);
        for r in self.rescues.iter().filter(|r| r.after.is_none()) {
            self.notes.push(format!(
                "op {} held by a worker hit by fault {} was never re-claimed nor finished",
                r.op, r.fault
            ));
        }
        (ops, workspaces)
    }

    /// The figures every backend shares, as text.
    pub fn report(&self, ops: &[OpRow], workspaces: &[WorkspaceRow]) -> String {
        let mut out = String::new();
        let name = self.w.name;
        let _ = writeln!(out, "\n==== chaos {name}: figures (seed {}) ====", self.w.seed);

        // Verbs by kind and answer class.
        let classes = ["2xx", "202 wait timed out", "404", "409", "other 4xx", "5xx (PG restart)", "5xx", "no answer"];
        let mut table: BTreeMap<Verb, BTreeMap<&str, usize>> = BTreeMap::new();
        for a in &self.answers {
            let mut c = a.class();
            if matches!(c, "5xx" | "no answer") && self.in_pg_window(a.sent, a.answered) {
                c = if c == "5xx" { "5xx (PG restart)" } else { "no answer" };
            }
            *table.entry(a.verb).or_default().entry(c).or_default() += 1;
        }
        let _ = writeln!(
            out,
            "verbs sent: {} ({} substituted by a create)",
            self.answers.len(),
            self.answers.iter().filter(|a| a.substituted).count()
        );
        let _ = write!(out, "  {:<8}", "verb");
        for c in classes {
            let _ = write!(out, " {c:>18}");
        }
        let _ = writeln!(out);
        for verb in Verb::ALL {
            let row = table.get(&verb).cloned().unwrap_or_default();
            let _ = write!(out, "  {:<8}", verb.name());
            for c in classes {
                let _ = write!(out, " {:>18}", row.get(c).copied().unwrap_or(0));
            }
            let _ = writeln!(out);
        }

        // How long the api took, verbs without ?wait only (a wait holds the answer on purpose).
        let _ = writeln!(out, "answer times without ?wait (PostgreSQL restart excluded):");
        for verb in Verb::ALL {
            let mut ms: Vec<f64> = self
                .answers
                .iter()
                .filter(|a| a.verb == verb && !a.path.contains("wait=") && !self.in_pg_window(a.sent, a.answered))
                .map(|a| (a.answered - a.sent).as_secs_f64() * 1000.0)
                .collect();
            ms.sort_by(f64::total_cmp);
            if let (Some(first), Some(last)) = (ms.first(), ms.last()) {
                let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
                let _ = writeln!(
                    out,
                    "  {:<8} {:>4} sent, min {first:.0} ms, median {:.0} ms, p99 {:.0} ms, max {last:.0} ms",
                    verb.name(),
                    ms.len(),
                    p(0.5),
                    p(0.99)
                );
            }
        }
        let mut slow: Vec<&Answer> = self
            .answers
            .iter()
            .filter(|a| !a.path.contains("wait=") && !self.in_pg_window(a.sent, a.answered))
            .filter(|a| a.answered - a.sent > Duration::from_secs(2))
            .collect();
        slow.sort_by_key(|a| std::cmp::Reverse(a.answered - a.sent));
        for a in slow.iter().take(5) {
            let _ = writeln!(
                out,
                "  slow: {} {} → {} in {:.1} s (sent at {:.1} s)",
                a.method,
                a.path,
                a.status.map(|s| s.to_string()).unwrap_or_else(|| "no answer".into()),
                (a.answered - a.sent).as_secs_f64(),
                self.at(a.sent)
            );
        }

        // Faults.
        let kills = self.faults.iter().filter(|f| f.fault == Fault::Kill).count();
        let stops = self.faults.iter().filter(|f| f.fault == Fault::Stop).count();
        let windows = self.pg_windows.lock().expect("pg windows").clone();
        let _ = writeln!(
            out,
            "faults: {kills} SIGKILL, {stops} SIGSTOP ({:.0} s each), {} PostgreSQL restart(s){}; {} worker exit(s) on their own",
            self.w.stop_for.as_secs_f64(),
            windows.len(),
            windows
                .iter()
                .map(|w| format!(
                    " [down at {:.1} s for {:.1} s]",
                    self.at(w.down_at),
                    w.up_at.map(|u| (u - w.down_at).as_secs_f64()).unwrap_or(f64::NAN)
                ))
                .collect::<String>(),
            self.worker_exits.len()
        );

        // Ops by kind and status; claims.
        let mut by: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for o in ops {
            *by.entry((o.kind.as_str(), o.status.as_str())).or_default() += 1;
        }
        let statuses = ["succeeded", "failed", "canceled", "queued", "running"];
        let _ = writeln!(out, "ops: {} in all", ops.len());
        let _ = write!(out, "  {:<10}", "kind");
        for s in statuses {
            let _ = write!(out, " {s:>10}");
        }
        let _ = writeln!(out);
        for kind in ["provision", "restart", "stop"] {
            let _ = write!(out, "  {kind:<10}");
            for s in statuses {
                let _ = write!(out, " {:>10}", by.get(&(kind, s)).copied().unwrap_or(0));
            }
            let _ = writeln!(out);
        }
        let reasons: BTreeMap<&str, usize> = ops.iter().fold(BTreeMap::new(), |mut m, o| {
            *m.entry(o.reason.as_str()).or_default() += 1;
            m
        });
        let _ = writeln!(out, "  by reason: {reasons:?}");
        let multi = ops.iter().filter(|o| o.lease > 1).count();
        let extra: i64 = ops.iter().map(|o| (o.lease - 1).max(0)).sum();
        let rescued = self.rescues.iter().filter(|r| r.reclaimed).count();
        let _ = writeln!(
            out,
            "claims: {multi} op(s) claimed more than once, {extra} extra claim(s) in all (retries and rescues); {rescued} rescue(s): an op held by a hit worker claimed by another (holder from {})",
            self.claimed_by_source
        );

        // Workspaces by status.
        let ws_by: BTreeMap<&str, usize> = workspaces.iter().fold(BTreeMap::new(), |mut m, w| {
            *m.entry(w.status.as_str()).or_default() += 1;
            m
        });
        let _ = writeln!(out, "workspaces: {} in all, by status {ws_by:?}", workspaces.len());
        if let Some(t) = self.settle_took {
            let _ = writeln!(out, "settle: {:.1} s after the workload", t.as_secs_f64());
        }
        let _ = writeln!(out, "events: {:?}", self.event_counts);
        let _ = writeln!(out, "monitor: {} polls, {} failed (PostgreSQL down)", self.polls.0, self.polls.1);

        // Rescue times.
        let _ =
            writeln!(out, "after each fault, the ops the worker held (time until claimed by another worker or final):");
        let _ = writeln!(
            out,
            "  {:>3} {:>7} {:<7} {:>7}  {:<36} {:<9} {:>5}  {:>8}  outcome",
            "#", "at (s)", "fault", "pid", "op", "kind", "lease", "after"
        );
        for f in &self.faults {
            let rs: Vec<&Rescue> = self.rescues.iter().filter(|r| r.fault == f.n).collect();
            if rs.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:>3} {:>7.1} {:<7} {:>7}  (no running op)",
                    f.n,
                    f.at.as_secs_f64(),
                    f.fault.name(),
                    f.pid
                );
            }
            for r in rs {
                let _ = writeln!(
                    out,
                    "  {:>3} {:>7.1} {:<7} {:>7}  {:<36} {:<9} {:>5}  {:>8}  {}",
                    f.n,
                    f.at.as_secs_f64(),
                    f.fault.name(),
                    f.pid,
                    r.op.to_string(),
                    r.kind,
                    r.lease_at_fault,
                    r.after.map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_else(|| "-".into()),
                    r.outcome
                );
            }
        }
        for fault in [Fault::Kill, Fault::Stop] {
            let mut times: Vec<f64> = self
                .rescues
                .iter()
                .filter(|r| self.faults.iter().any(|f| f.n == r.fault && f.fault == fault))
                .filter_map(|r| r.after.map(|d| d.as_secs_f64()))
                .collect();
            times.sort_by(f64::total_cmp);
            if !times.is_empty() {
                let _ = writeln!(
                    out,
                    "  after {}: {} op(s), min {:.1} s, median {:.1} s, max {:.1} s",
                    fault.name(),
                    times.len(),
                    times[0],
                    times[times.len() / 2],
                    times[times.len() - 1]
                );
            }
        }
        out
    }

    /// Prints the report, the notes and the violations; fails the test when there is any
    /// violation.
    pub fn conclude(&self, report: &str) {
        println!("{report}");
        if !self.notes.is_empty() {
            println!("notes ({}):", self.notes.len());
            for n in &self.notes {
                println!("  - {n}");
            }
        }
        if self.violations.is_empty() {
            println!("==== chaos {}: every invariant holds (seed {}) ====", self.w.name, self.w.seed);
            return;
        }
        println!("==== chaos {}: {} VIOLATION(S) (seed {}) ====", self.w.name, self.violations.len(), self.w.seed);
        for v in &self.violations {
            println!("  - {v}");
        }
        panic!(
            "chaos {}: {} invariant violation(s), listed above; replay with CHAOS_SEED={}",
            self.w.name,
            self.violations.len(),
            self.w.seed
        );
    }
}

/// Sends `plan` (the verbs of some slots, in time order), each at its time or as soon as
/// the previous one returned.
async fn send_verbs(
    client: reqwest::Client,
    base: String,
    plan: Vec<PlannedVerb>,
    started: Instant,
    tier: u8,
    answers: Arc<Mutex<Vec<Answer>>>,
) {
    let mut ids: HashMap<usize, String> = HashMap::new();
    let mut incarnation: HashMap<usize, usize> = HashMap::new();
    for v in plan {
        tokio::time::sleep_until((started + v.at).into()).await;
        let id = ids.get(&v.slot).cloned();
        let substituted = id.is_none() && v.verb != Verb::Create;
        let verb = if substituted { Verb::Create } else { v.verb };
        let wait = v.wait.map(|s| format!("?wait={s}")).unwrap_or_default();
        let (method, path, body) = match (verb, &id) {
            (Verb::Create, _) | (_, None) => {
                let n = incarnation.entry(v.slot).or_default();
                *n += 1;
                (
                    "POST",
                    format!("/workspaces{wait}"),
                    Some(json!({"name": format!("chaos-{}-{n}", v.slot), "tier": tier})),
                )
            }
            (Verb::Restart, Some(id)) => ("POST", format!("/workspaces/{id}/restart{wait}"), None),
            (Verb::Pause, Some(id)) => ("POST", format!("/workspaces/{id}/pause"), None),
            (Verb::Resume, Some(id)) => ("POST", format!("/workspaces/{id}/resume{wait}"), None),
            (Verb::Delete, Some(id)) => ("DELETE", format!("/workspaces/{id}"), None),
        };
        let sent = Instant::now();
        let mut req = client
            .request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), format!("{base}{path}"))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, text) = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (Some(status), resp.text().await.unwrap_or_default())
            }
            Err(e) => (None, e.to_string()),
        };
        let answered = Instant::now();
        match (verb, status) {
            (Verb::Create, Some(201 | 202)) => {
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if let Some(id) = body["id"].as_str() {
                    ids.insert(v.slot, id.to_string());
                }
            }
            (Verb::Delete, Some(200 | 404)) | (_, Some(404)) => {
                ids.remove(&v.slot);
            }
            _ => {}
        }
        answers.lock().expect("answers").push(Answer {
            verb,
            slot: v.slot,
            method,
            path,
            status,
            body: text,
            sent,
            answered,
            substituted,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_reproducible_from_the_seed() {
        let a = plan_verbs(&mut Rng::new(7), 60.0, 10, 100, 0.2);
        let b = plan_verbs(&mut Rng::new(7), 60.0, 10, 100, 0.2);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(a.len(), 100);
        // Each slot's first verb is its create.
        for slot in 0..10 {
            assert_eq!(a.iter().find(|v| v.slot == slot).map(|v| v.verb), Some(Verb::Create));
        }
        let f = plan_faults(&mut Rng::new(7), 60.0, Duration::from_secs(10), Duration::from_secs(20), 3, true);
        assert_eq!(f.iter().filter(|(_, a)| matches!(a, Action::RestartPg)).count(), 1);
        assert_eq!(f.iter().filter(|(_, a)| matches!(a, Action::Fault { .. })).count(), 5);
    }
}
