//! `worker bench queue [--ops N] [--items N] [--seconds S] [--pg-stat] [--only LIST]`: the
//! queue's throughput and latency beside two references measured in the same run on the
//! same database, so the ratios hold even on a noisy machine: pgbench one-row INSERTs (what
//! the database commits at all) and a raw apalis worker with a no-op handler (what the queue
//! machinery costs without our ops). Workers run as real `worker run` processes, the api as
//! the real `api` binary. Writes rows and leaves them: use a throwaway database
//! (DATABASE_URL); `dev/bench-queue` makes one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_postgres::{Config as PgConfig, PostgresStorage};
use jobs::config::Config;
use jobs::domain::workspace::default_model;
use jobs::domain::{CreateRequest, DeliveryMode};
use jobs::lifecycle::{self, Created};
use jobs::store::apalis::bench;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use uuid::Uuid;

use crate::bench_cost::{self, Counters, Spent, Window};
use crate::bench_inbox::{self, Measured, Reader};
use crate::{percentile, runners};

const RAW_QUEUE: &str = "bench-raw";
const ADMIN_TOKEN: &str = "bench-admin";
const RUNTIME: &str = "langgraph";
/// Concurrent creators when queueing the provision ops up front.
const CREATORS: usize = 8;
const ENQUEUE_CLIENTS: usize = 32;
const PICKUP_SAMPLES: usize = 200;
const WAIT_SAMPLES: usize = 100;
const INBOX_WORKSPACES: usize = 100;
const LONG: Duration = Duration::from_secs(600);
const PHASES: [&str; 7] = ["provision", "pickup", "wait", "enqueue", "messages", "inbox", "refs"];
const USAGE: &str = "use `worker bench queue [--ops N] [--items N] [--seconds S] [--pg-stat] \
                     [--only provision,pickup,wait,enqueue,messages,inbox,refs]`";

struct Args {
    ops: usize,
    items: usize,
    seconds: u64,
    pg_stat: bool,
    only: Vec<String>,
}

impl Args {
    fn parse(args: &[String]) -> jobs::Result<Args> {
        let mut a =
            Args { ops: 5000, items: 10_000, seconds: 10, pg_stat: false, only: PHASES.map(String::from).to_vec() };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value =
                |name: &str| it.next().cloned().ok_or_else(|| jobs::Error::Config(format!("{name} needs a value")));
            match arg.as_str() {
                "queue" => {}
                "--ops" => a.ops = positive("--ops", &value("--ops")?)?,
                "--items" => a.items = positive("--items", &value("--items")?)?,
                "--seconds" => a.seconds = positive("--seconds", &value("--seconds")?)? as u64,
                "--pg-stat" => a.pg_stat = true,
                "--only" => a.only = parse_phases(&value("--only")?)?,
                other => return Err(jobs::Error::Config(format!("unknown bench argument {other:?}; {USAGE}"))),
            }
        }
        Ok(a)
    }

    fn wants(&self, phase: &str) -> bool {
        self.only.iter().any(|p| p == phase)
    }
}

fn positive(name: &str, v: &str) -> jobs::Result<usize> {
    v.parse().ok().filter(|n| *n > 0).ok_or_else(|| jobs::Error::Config(format!("{name} needs a positive number")))
}

fn parse_phases(list: &str) -> jobs::Result<Vec<String>> {
    let names: Vec<String> = list.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
    match names.iter().find(|n| !PHASES.contains(&n.as_str())) {
        Some(bad) => Err(jobs::Error::Config(format!("unknown phase {bad:?}; {USAGE}"))),
        None => Ok(names),
    }
}

/// One line of the table; `rank` keeps the table in a fixed order whatever order the
/// phases ran in.
struct Row {
    rank: u8,
    what: String,
    workers: String,
    n: usize,
    per_sec: f64,
    p50: Option<f64>,
    p99: Option<f64>,
}

impl Row {
    fn new(rank: u8, what: impl Into<String>, workers: impl ToString, n: usize, per_sec: f64) -> Row {
        Row { rank, what: what.into(), workers: workers.to_string(), n, per_sec, p50: None, p99: None }
    }

    fn latencies(mut self, mut ms: Vec<f64>) -> Row {
        ms.sort_by(f64::total_cmp);
        self.p50 = percentile::of(&ms, 0.5);
        self.p99 = percentile::of(&ms, 0.99);
        self
    }

    fn inbox(rank: u8, what: &str, workers: impl ToString, items: usize, m: &Measured) -> Row {
        let what = if m.n < items { format!("{what} (only {} of {items} arrived)", m.n) } else { what.to_string() };
        Row { p50: Some(m.p50), p99: Some(m.p99), ..Row::new(rank, what, workers, m.n, m.per_sec) }
    }
}

struct Statement {
    calls: i64,
    mean_ms: f64,
    total_ms: f64,
    query: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    /// Throughputs the ratios are made of, by key (`pgbench-8`, `provision-1`, ...).
    rates: HashMap<String, f64>,
    /// Top statements of the phases measured with `--pg-stat`, each with its title.
    statements: Vec<Statements>,
    /// What each phase spent per unit of work.
    spent: Vec<Spent>,
}

/// A phase's `pg_stat_statements`: the top 10 by total time. (Its calls per unit of work
/// are in the phase's row of [`Report::spent`].)
struct Statements {
    phase: String,
    top: Vec<Statement>,
}

/// `(label, numerator, denominator)`: each a key of [`Report::rates`].
const RATIOS: [(&str, &str, &str); 14] = [
    ("provision (1 worker) / pgbench INSERT (8 clients)", "provision-1", "pgbench-8"),
    ("pgbench INSERT + NOTIFY / pgbench INSERT (8 clients)", "pgbench-notify-8", "pgbench-8"),
    ("POST /workspaces / pgbench INSERT (8 clients)", "enqueue", "pgbench-8"),
    ("POST /workspaces / pgbench INSERT + NOTIFY (8 clients)", "enqueue", "pgbench-notify-8"),
    ("poll inbox, long poll / pgbench INSERT (8 clients)", "poll", "pgbench-8"),
    ("poll inbox, long poll / re-read every 20 ms", "poll", "poll-timer"),
    ("POST /workspaces/{id}/a2a / pgbench INSERT (8 clients)", "messages", "pgbench-8"),
    ("provision (1 worker) / raw apalis", "provision-1", "raw"),
    ("poll inbox, long poll / raw apalis", "poll", "raw"),
    ("push inbox (1 worker) / raw apalis", "push-1", "raw"),
    ("provision, 2 workers / 1 worker", "provision-2", "provision-1"),
    ("provision, 4 workers / 1 worker", "provision-4", "provision-1"),
    ("push inbox, 2 workers / 1 worker", "push-2", "push-1"),
    ("push inbox, 4 workers / 1 worker", "push-4", "push-1"),
];

impl Report {
    fn add(&mut self, key: Option<String>, row: Row) {
        if let Some(key) = key {
            self.rates.insert(key, row.per_sec);
        }
        self.rows.push(row);
    }

    fn print(&mut self) {
        self.rows.sort_by_key(|r| r.rank);
        println!("| what | workers | n | per second | p50 ms | p99 ms |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            let rate = if r.per_sec.is_finite() { format!("{:.0}", r.per_sec) } else { "-".into() };
            println!("| {} | {} | {} | {rate} | {} | {} |", r.what, r.workers, r.n, ms(r.p50), ms(r.p99));
        }
        println!();
        for (label, num, den) in RATIOS {
            if let (Some(n), Some(d)) = (self.rates.get(num), self.rates.get(den))
                && n.is_finite()
                && d.is_finite()
                && *d > 0.0
            {
                println!("- {label}: {:.3}", n / d);
            }
        }
        bench_cost::print(&self.spent);
        self.print_statements();
    }

    fn print_statements(&self) {
        for s in &self.statements {
            println!();
            println!(
                "Top statements by total time during the {} (pg_stat_statements; all its statements per unit of work \
                 are in the table above):",
                s.phase
            );
            println!();
            println!("| calls | mean ms | total ms | query |");
            println!("|---|---|---|---|");
            for t in &s.top {
                println!("| {} | {:.3} | {:.1} | `{}` |", t.calls, t.mean_ms, t.total_ms, t.query.replace('|', "\\|"));
            }
        }
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.1}"),
        _ => "-".into(),
    }
}

struct Bench {
    pool: PgPool,
    config: Config,
    args: Args,
}

impl Bench {
    async fn counters(&self) -> jobs::Result<Counters> {
        Counters::read(&self.pool, self.args.pg_stat).await
    }
}

pub async fn run(config: Config, args: &[String]) -> jobs::Result<()> {
    let mut args = Args::parse(args)?;
    let pool = jobs::db::connect(&config.database_url, 40).await?;
    jobs::db::migrate(&pool).await?;
    if args.pg_stat && !statements_available(&pool).await {
        eprintln!("warning: pg_stat_statements is not usable here (shared_preload_libraries?); no statement table");
        args.pg_stat = false;
    }
    let b = Bench { pool, config, args };
    let mut report = Report::default();
    // Dropping the phases on a signal drops their children, which kills them.
    tokio::select! {
        r = phases(&b, &mut report) => r?,
        _ = jobs::shutdown::signal() => return Err(jobs::Error::Internal("interrupted".into())),
    }
    print_header(&b);
    report.print();
    Ok(())
}

async fn phases(b: &Bench, report: &mut Report) -> jobs::Result<()> {
    if b.args.wants("refs") {
        pgbench(b, report).await?;
        raw_apalis(b, report).await?;
    }
    if b.args.wants("provision") {
        provision(b, report).await?;
    }
    if b.args.wants("pickup") || b.args.wants("wait") {
        with_one_worker(b, report).await?;
    }
    if b.args.wants("inbox") {
        inbox(b, report).await?;
    }
    if b.args.wants("messages") {
        messages(b, report).await?;
    }
    // Last: it leaves its ops queued, which any later worker would drain.
    if b.args.wants("enqueue") {
        enqueue(b, report).await?;
    }
    Ok(())
}

/// Progress goes to stderr: stdout is the report alone.
fn progress(what: impl std::fmt::Display) {
    eprintln!("bench queue: {what}");
}

fn print_header(b: &Bench) {
    let a = &b.args;
    println!(
        "queue benchmark: --ops {} --items {} --seconds {}; worker processes with WORKER_CONCURRENCY={}, no backend",
        a.ops,
        a.items,
        a.seconds,
        worker_concurrency()
    );
    println!(
        "Provision rates run from the first op's start to the last op's finish (database clocks, so process \
         start-up is excluded); pickup is commit → started_at; ?wait is op finished_at → response received."
    );
    println!();
}

// ---------------------------------------------------------------------------------------------
// References: pgbench and raw apalis
// ---------------------------------------------------------------------------------------------

/// pgbench scripts: `(key, what, script)`. The second is the first plus a NOTIFY in the
/// same statement, as our writes announce theirs: PostgreSQL lets one transaction that
/// notified commit at a time (a global lock held through the commit's WAL flush), so it
/// measures what that serialisation costs on this machine.
const PGBENCH_SCRIPTS: [(&str, &str, &str); 2] = [
    ("pgbench", "pgbench one-row INSERT", "INSERT INTO bench_insert (v) VALUES (1);\n"),
    (
        "pgbench-notify",
        "pgbench one-row INSERT + NOTIFY",
        "WITH i AS (INSERT INTO bench_insert (v) VALUES (1) RETURNING id) SELECT pg_notify('bench', id::text) FROM i;\n",
    ),
];

async fn pgbench(b: &Bench, report: &mut Report) -> jobs::Result<()> {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, v int)").execute(&b.pool).await?;
    for (key, what, sql) in PGBENCH_SCRIPTS {
        let script = std::env::temp_dir().join(format!("bench-queue-{}-{key}.sql", std::process::id()));
        std::fs::write(&script, sql)
            .map_err(|e| jobs::Error::Internal(format!("writing {}: {e}", script.display())))?;
        let result = pgbench_rows(b, &script, key, what, report).await;
        let _ = std::fs::remove_file(&script);
        result?;
    }
    Ok(())
}

async fn pgbench_rows(b: &Bench, script: &Path, key: &str, what: &str, report: &mut Report) -> jobs::Result<()> {
    for (clients, threads) in [(1, 1), (8, 2)] {
        let what = format!("{what}, {clients} client{}", if clients == 1 { "" } else { "s" });
        progress(format_args!("{what}, {} s", b.args.seconds));
        let before = b.counters().await?;
        let row = match run_pgbench(&b.config.database_url, script, clients, threads, b.args.seconds).await? {
            Some((tps, n)) => {
                report.spent.push(before.until(&b.counters().await?, &what, n));
                Row::new(1, what, "-", n, tps)
            }
            None => Row::new(1, format!("{what}: pgbench not found"), "-", 0, f64::NAN),
        };
        report.add(Some(format!("{key}-{clients}")), row);
    }
    Ok(())
}

/// `(tps, transactions)`, or `None` when pgbench is not installed.
async fn run_pgbench(
    url: &str,
    script: &Path,
    clients: u32,
    threads: u32,
    seconds: u64,
) -> jobs::Result<Option<(f64, usize)>> {
    let out = Command::new("pgbench")
        .arg("-n")
        .arg("-f")
        .arg(script)
        .args(["-c", &clients.to_string(), "-j", &threads.to_string(), "-T", &seconds.to_string(), url])
        .kill_on_drop(true)
        .output()
        .await;
    let out = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(jobs::Error::Internal(format!("pgbench: {e}"))),
        Ok(out) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(jobs::Error::Internal(format!("pgbench failed ({}): {stderr}", out.status)));
    }
    let tps = pgbench_value(&stdout, "tps = ")
        .ok_or_else(|| jobs::Error::Internal(format!("no `tps = ` in pgbench's output: {stdout}")))?;
    let n = pgbench_value(&stdout, "number of transactions actually processed: ").unwrap_or(0.0);
    Ok(Some((tps, n as usize)))
}

fn pgbench_value(out: &str, prefix: &str) -> Option<f64> {
    out.lines().find_map(|l| l.trim().strip_prefix(prefix)?.split([' ', '/']).next()?.parse().ok())
}

async fn noop(_: Value) -> Result<(), BoxDynError> {
    Ok(())
}

/// The same apalis fetch/ack machinery our runners use, with nothing behind it.
async fn raw_apalis(b: &Bench, report: &mut Report) -> jobs::Result<()> {
    let n = b.args.ops;
    progress(format_args!("raw apalis, {n} no-op tasks"));
    bench::reset_queue(&b.pool, "bench-raw-reset", RAW_QUEUE).await?;
    bench::insert_pending(&b.pool, RAW_QUEUE, n as i64).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    // A pool of its own, closed with it: stopping apalis drops its futures wherever they
    // are, and one dropped inside apalis' BEGIN would leave a pooled connection in an open
    // transaction that the later phases' statements would run in (jobs::db::begin).
    let own = jobs::db::connect(&b.config.database_url, 40).await?;
    let backend = PostgresStorage::<Value>::new(&own)
        .with_config(PgConfig::default().queue(RAW_QUEUE).batch_size(500))
        .with_pubsub()
        .poll_with_interval(Duration::from_millis(100));
    let worker = WorkerBuilder::new(format!("{RAW_QUEUE}-{}", Uuid::new_v4().simple()))
        .backend(backend)
        .concurrency(64)
        .build(noop);
    let before = b.counters().await?;
    let handle = tokio::spawn(worker.run_until(runners::stopped(stop_rx)));
    let deadline = Deadline::new(LONG, "the raw apalis tasks to be done");
    // The stop sender dropped on an early return stops the worker too.
    let span = loop {
        let (done, span) = bench::done_span(&b.pool, RAW_QUEUE).await?;
        if done >= n as i64 {
            break span;
        }
        deadline.tick(Duration::from_millis(20), &mut []).await?;
    };
    report.spent.push(before.until(&b.counters().await?, "raw apalis, no-op handler", n));
    let _ = stop_tx.send(true);
    let _ = handle.await;
    own.close().await;
    let rate = span.map_or(f64::NAN, |s| n as f64 / s);
    report.add(
        Some("raw".into()),
        Row::new(2, "raw apalis-postgres, no-op handler (batch 500, concurrency 64)", "1 (in process)", n, rate),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process; spawned with `kill_on_drop`, so an error path that drops it kills it.
struct Proc {
    name: String,
    child: Child,
}

fn worker_concurrency() -> String {
    std::env::var("WORKER_CONCURRENCY").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| "64".into())
}

fn sibling(name: &str) -> jobs::Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| jobs::Error::Internal(format!("current_exe: {e}")))?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        return Err(jobs::Error::Config(format!("{} not found; build it first", path.display())));
    }
    Ok(path)
}

/// Their logs go to our stderr: stdout is the report.
fn spawn(name: String, mut cmd: Command) -> jobs::Result<Proc> {
    cmd.env("RUST_LOG", "warn").stdin(Stdio::null()).stdout(std::io::stderr()).kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| jobs::Error::Internal(format!("spawning {name}: {e}")))?;
    Ok(Proc { name, child })
}

/// `k` `worker run` processes that reach no backend, so every provision fails at once.
fn spawn_workers(config: &Config, k: usize, extra: &[(&str, &str)]) -> jobs::Result<Vec<Proc>> {
    let exe = std::env::current_exe().map_err(|e| jobs::Error::Internal(format!("current_exe: {e}")))?;
    let mut procs = vec![];
    for i in 0..k {
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .env("DATABASE_URL", &config.database_url)
            .env("DOCKER_ENABLED", "false")
            .env("WORKER_CONCURRENCY", worker_concurrency())
            .env("PLATFORM_URL", "http://127.0.0.1:1")
            .env_remove("AWS_ENDPOINT_URL");
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("EC2_")) {
            cmd.env_remove(name);
        }
        cmd.envs(extra.iter().copied());
        procs.push(spawn(format!("worker {}/{k}", i + 1), cmd)?);
    }
    Ok(procs)
}

fn check_alive(procs: &mut [Proc]) -> jobs::Result<()> {
    for p in procs {
        if let Ok(Some(status)) = p.child.try_wait() {
            return Err(jobs::Error::Internal(format!("{} exited early ({status})", p.name)));
        }
    }
    Ok(())
}

/// SIGTERM to all (they drain in parallel), then wait for each; SIGKILL after 30 s.
async fn stop(procs: Vec<Proc>) {
    for p in &procs {
        if let Some(pid) = p.child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
    }
    for mut p in procs {
        if tokio::time::timeout(Duration::from_secs(30), p.child.wait()).await.is_err() {
            eprintln!("warning: {} did not stop within 30 s; killing it", p.name);
            let _ = p.child.kill().await;
        }
    }
}

/// Waits until each worker announced itself in `worker_processes`.
async fn wait_registered(pool: &PgPool, procs: &mut [Proc]) -> jobs::Result<()> {
    let pids: Vec<i32> = procs.iter().filter_map(|p| p.child.id()).map(|pid| pid as i32).collect();
    let deadline = Deadline::new(Duration::from_secs(60), "the workers to announce themselves");
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM worker_processes WHERE pid = ANY($1)")
            .bind(&pids)
            .fetch_one(pool)
            .await?;
        if n >= pids.len() as i64 {
            return Ok(());
        }
        deadline.tick(Duration::from_millis(20), procs).await?;
    }
}

struct Api {
    proc: Proc,
    base: String,
}

impl Api {
    async fn start(config: &Config, client: &reqwest::Client) -> jobs::Result<Api> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| jobs::Error::Internal(format!("finding a free port: {e}")))?
            .port();
        let mut cmd = Command::new(sibling("api")?);
        cmd.env("DATABASE_URL", &config.database_url)
            .env("API_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_TOKEN", ADMIN_TOKEN);
        let mut api = Api { proc: spawn("api".into(), cmd)?, base: format!("http://127.0.0.1:{port}") };
        let deadline = Deadline::new(Duration::from_secs(60), "the api to answer /health");
        loop {
            let health = client.get(format!("{}/health", api.base)).send().await;
            if health.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return Ok(api);
            }
            deadline.tick(Duration::from_millis(50), std::slice::from_mut(&mut api.proc)).await?;
        }
    }

    async fn stop(self) {
        stop(vec![self.proc]).await
    }
}

fn http_client() -> jobs::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(2 * ENQUEUE_CLIENTS)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| jobs::Error::Internal(format!("http client: {e}")))
}

struct Deadline {
    at: Instant,
    what: &'static str,
}

impl Deadline {
    fn new(limit: Duration, what: &'static str) -> Deadline {
        Deadline { at: Instant::now() + limit, what }
    }

    /// Fails when the deadline passed or a child died (waiting on would be pointless);
    /// else sleeps `every`.
    async fn tick(&self, every: Duration, procs: &mut [Proc]) -> jobs::Result<()> {
        if Instant::now() > self.at {
            return Err(jobs::Error::Internal(format!("timed out waiting for {}", self.what)));
        }
        check_alive(procs)?;
        tokio::time::sleep(every).await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------------

fn create_request(name: String) -> CreateRequest {
    CreateRequest {
        name,
        role: None,
        runtime: RUNTIME.into(),
        tier: 1,
        model: default_model(RUNTIME).into(),
        parent_id: None,
        external: false,
        url: None,
        delivery_mode: DeliveryMode::Push,
        max_concurrent_tasks: 1,
        canvas: None,
    }
}

/// Creates a workspace as `POST /workspaces` does; returns its provision op.
async fn create_one(pool: &PgPool, name: String) -> jobs::Result<Uuid> {
    match lifecycle::create(pool, create_request(name), "bench").await? {
        Created::Provisioning { op, .. } => Ok(op.id),
        Created::External { .. } => Err(jobs::Error::Internal("the bench workspace came out external".into())),
    }
}

async fn create_many(pool: &PgPool, n: usize, tag: &str) -> jobs::Result<Vec<Uuid>> {
    let mut tasks = vec![];
    for c in 0..CREATORS {
        let (pool, tag) = (pool.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut ids = vec![];
            for i in (c..n).step_by(CREATORS) {
                ids.push(create_one(&pool, format!("{tag}-{i}")).await?);
            }
            Ok::<_, jobs::Error>(ids)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.map_err(|e| jobs::Error::Internal(format!("creator: {e}")))??);
    }
    Ok(all)
}

/// Whether any op is still to run. The drain's database holds only the ops being drained,
/// and this check runs seldom and without their ids: the bench must not load the database
/// it measures (the rate comes from the ops' own timestamps, not from this check).
async fn unfinished(pool: &PgPool) -> jobs::Result<bool> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM workspace_ops WHERE status IN ('queued', 'running'))")
        .fetch_one(pool)
        .await?)
}

/// `(ops, of which failed, seconds from the first start to the last finish)`.
async fn drained(pool: &PgPool, ids: &[Uuid]) -> jobs::Result<(i64, i64, Option<f64>)> {
    Ok(sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'failed'),
                extract(epoch FROM max(finished_at) - min(started_at))::float8
           FROM workspace_ops WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?)
}

/// `(started_at, finished_at)` of an op, as Unix seconds.
async fn op_times(pool: &PgPool, op: Uuid) -> jobs::Result<(Option<f64>, Option<f64>)> {
    Ok(sqlx::query_as(
        "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8
           FROM workspace_ops WHERE id = $1",
    )
    .bind(op)
    .fetch_optional(pool)
    .await?
    .unwrap_or((None, None)))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Provision drains
// ---------------------------------------------------------------------------------------------

async fn provision(b: &Bench, report: &mut Report) -> jobs::Result<()> {
    for k in [1usize, 2, 4] {
        progress(format_args!("provision: queueing {} ops, then draining them with {k} worker(s)", b.args.ops));
        let ids = create_many(&b.pool, b.args.ops, &format!("bench-prov{k}")).await?;
        let stats = k == 1 && b.args.pg_stat;
        if stats {
            sqlx::query("SELECT pg_stat_statements_reset()").execute(&b.pool).await?;
        }
        let before = b.counters().await?;
        let mut procs = spawn_workers(&b.config, k, &[])?;
        let deadline = Deadline::new(LONG, "the provision ops to finish");
        while unfinished(&b.pool).await? {
            deadline.tick(Duration::from_millis(50), &mut procs).await?;
        }
        let phase = format!("provision drain, {k} worker{} (start-up included)", if k == 1 { "" } else { "s" });
        report.spent.push(before.until(&b.counters().await?, phase, ids.len()));
        if stats {
            report.statements.push(statements("1-worker provision drain", &b.pool).await?);
        }
        stop(procs).await;
        let (n, failed, span) = drained(&b.pool, &ids).await?;
        let mut what = "provision op, no backend (claim → fail)".to_string();
        if failed != n {
            eprintln!("warning: {} of {n} provision ops did not end failed", n - failed);
            what.push_str(&format!(" ({} of {n} not failed!)", n - failed));
        }
        let rate = span.map_or(f64::NAN, |s| n as f64 / s);
        report.add(Some(format!("provision-{k}")), Row::new(3, what, k, n as usize, rate));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Latency with one idle worker: pickup and ?wait
// ---------------------------------------------------------------------------------------------

async fn with_one_worker(b: &Bench, report: &mut Report) -> jobs::Result<()> {
    progress("pickup and ?wait latency, 1 idle worker");
    let mut procs = spawn_workers(&b.config, 1, &[])?;
    // One op through proves the lifecycle runner is up, not just the process.
    let warm = create_one(&b.pool, "bench-warm-up".into()).await?;
    let deadline = Deadline::new(Duration::from_secs(120), "the warm-up op to finish");
    while op_times(&b.pool, warm).await?.1.is_none() {
        deadline.tick(Duration::from_millis(20), &mut procs).await?;
    }
    if b.args.wants("pickup") {
        let samples = pickup(&b.pool, &mut procs).await?;
        let row = Row::new(4, "pickup latency, idle worker (commit → started_at)", 1, samples.len(), f64::NAN);
        report.add(None, row.latencies(samples));
    }
    if b.args.wants("wait") {
        let samples = wait_latency(b).await?;
        let row = Row::new(5, "POST /workspaces?wait=10: op finished_at → response", 1, samples.len(), f64::NAN);
        report.add(None, row.latencies(samples));
    }
    stop(procs).await;
    Ok(())
}

async fn pickup(pool: &PgPool, procs: &mut [Proc]) -> jobs::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(PICKUP_SAMPLES);
    for i in 0..PICKUP_SAMPLES {
        let op = create_one(pool, format!("bench-pickup-{i}")).await?;
        let created = unix_now();
        let deadline = Deadline::new(Duration::from_secs(10), "a pickup op to start");
        let started = loop {
            if let (Some(s), _) = op_times(pool, op).await? {
                break s;
            }
            deadline.tick(Duration::from_millis(1), procs).await?;
        };
        samples.push(((started - created) * 1000.0).max(0.0));
        // Each sample meets an idle worker: the previous op is over before the next.
        while op_times(pool, op).await?.1.is_none() {
            deadline.tick(Duration::from_millis(5), procs).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(samples)
}

async fn wait_latency(b: &Bench) -> jobs::Result<Vec<f64>> {
    let client = http_client()?;
    let api = Api::start(&b.config, &client).await?;
    let mut samples = Vec::with_capacity(WAIT_SAMPLES);
    for i in 0..WAIT_SAMPLES {
        samples.push(wait_sample(&b.pool, &client, &api.base, i).await?);
    }
    api.stop().await;
    Ok(samples)
}

fn create_body(name: String) -> Value {
    json!({"name": name, "runtime": RUNTIME, "tier": 1})
}

async fn wait_sample(pool: &PgPool, client: &reqwest::Client, base: &str, i: usize) -> jobs::Result<f64> {
    let resp = client
        .post(format!("{base}/workspaces?wait=10"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&create_body(format!("bench-wait-{i}")))
        .send()
        .await
        .map_err(|e| jobs::Error::Internal(format!("POST /workspaces?wait: {e}")))?;
    let received = unix_now();
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| jobs::Error::Internal(format!("?wait response: {e}")))?;
    if status != reqwest::StatusCode::CREATED {
        return Err(jobs::Error::Internal(format!("POST /workspaces?wait answered {status}: {body}")));
    }
    let op = body
        .get("op_id")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Uuid>().ok())
        .ok_or_else(|| jobs::Error::Internal(format!("no op_id in {body}")))?;
    match op_times(pool, op).await? {
        (_, Some(finished)) => Ok(((received - finished) * 1000.0).max(0.0)),
        _ => Err(jobs::Error::Internal(format!("op {op} is not finished though ?wait answered 201"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Enqueue and messages through the api, no worker
// ---------------------------------------------------------------------------------------------

async fn enqueue(b: &Bench, report: &mut Report) -> jobs::Result<()> {
    progress(format_args!("enqueue: {ENQUEUE_CLIENTS} clients POST /workspaces for {} s, no worker", b.args.seconds));
    let measured =
        through_api(b, |base, c, i| (format!("{base}/workspaces"), create_body(format!("bench-enq-{c}-{i}")))).await?;
    report.spent.push(measured.spent("POST /workspaces, 32 clients"));
    let what = format!("POST /workspaces (enqueue only), {ENQUEUE_CLIENTS} clients, non-2xx: {}", measured.errors);
    report.add(Some("enqueue".into()), measured.row(6, what));
    Ok(())
}

/// `POST /workspaces/{id}/a2a` from 32 clients for the run's seconds, to poll-mode
/// workspaces: each message is an inbox item its agent would poll; no job is involved.
async fn messages(b: &Bench, report: &mut Report) -> jobs::Result<()> {
    progress(format_args!("messages: {ENQUEUE_CLIENTS} clients POST /workspaces/{{id}}/a2a for {} s", b.args.seconds));
    let ws = bench_inbox::workspaces(&b.pool, INBOX_WORKSPACES, DeliveryMode::Poll, None).await?;
    let measured = through_api(b, move |base, c, i| {
        let target = ws[(c + i * ENQUEUE_CLIENTS) % ws.len()];
        (format!("{base}/workspaces/{target}/a2a"), jobs::inbox::message_send(&format!("{c}-{i}"), "bench", json!({})))
    })
    .await?;
    report.spent.push(measured.spent("POST /workspaces/{id}/a2a, 32 clients"));
    let what = format!(
        "POST /workspaces/{{id}}/a2a to poll-mode agents, {ENQUEUE_CLIENTS} clients, non-2xx: {}",
        measured.errors
    );
    report.add(Some("messages".into()), measured.row(7, what));
    Ok(())
}

/// What the clients of one api phase measured.
struct ThroughApi {
    samples: Vec<f64>,
    errors: usize,
    secs: f64,
    /// From the clients' start to their end, the api's start-up and stop left out.
    window: Window,
}

impl ThroughApi {
    fn accepted(&self) -> usize {
        self.samples.len() - self.errors
    }

    /// What the accepted requests cost each.
    fn spent(&self, phase: &str) -> Spent {
        self.window.spent(phase, self.accepted())
    }

    /// The rate counts only what was accepted; the latencies are of every request.
    fn row(self, rank: u8, what: String) -> Row {
        let ok = self.accepted();
        Row::new(rank, what, "0", ok, ok as f64 / self.secs).latencies(self.samples)
    }
}

/// Starts the api (no worker) and has `ENQUEUE_CLIENTS` clients post for the run's
/// seconds, client `c`'s `i`th request being `request(api base url, c, i)`.
async fn through_api(
    b: &Bench,
    request: impl Fn(&str, usize, usize) -> (String, Value) + Send + Sync + 'static,
) -> jobs::Result<ThroughApi> {
    let client = http_client()?;
    let api = Api::start(&b.config, &client).await?;
    let request = std::sync::Arc::new(request);
    let before = b.counters().await?;
    let started = Instant::now();
    let until = started + Duration::from_secs(b.args.seconds);
    let mut tasks = vec![];
    for c in 0..ENQUEUE_CLIENTS {
        let (client, base, request) = (client.clone(), api.base.clone(), request.clone());
        tasks.push(tokio::spawn(async move { post_until(&client, until, |i| request(&base, c, i)).await }));
    }
    let (mut samples, mut errors) = (vec![], 0usize);
    for t in tasks {
        let (s, e) = t.await.map_err(|e| jobs::Error::Internal(format!("api client: {e}")))?;
        samples.extend(s);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let window = Window { before, after: b.counters().await? };
    api.stop().await;
    Ok(ThroughApi { samples, errors, secs, window })
}

/// Posts the `i`th `(url, body)` after another until `until`; returns each request's
/// latency (ms) and how many were not 2xx.
async fn post_until(
    client: &reqwest::Client,
    until: Instant,
    request: impl Fn(usize) -> (String, Value),
) -> (Vec<f64>, usize) {
    let (mut samples, mut errors) = (vec![], 0);
    for i in 0.. {
        if Instant::now() >= until {
            break;
        }
        let (url, body) = request(i);
        let t = Instant::now();
        let sent = client.post(url).bearer_auth(ADMIN_TOKEN).json(&body).send().await;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        if !sent.is_ok_and(|r| r.status().is_success()) {
            errors += 1;
        }
    }
    (samples, errors)
}

// ---------------------------------------------------------------------------------------------
// Inbox
// ---------------------------------------------------------------------------------------------

async fn inbox(b: &Bench, report: &mut Report) -> jobs::Result<()> {
    let items = b.args.items;
    progress(format_args!("inbox: {items} items, poll mode, re-read every 20 ms"));
    let (m, window) = bench_inbox::poll_phase(&b.pool, INBOX_WORKSPACES, items, Reader::Timer, b.args.pg_stat).await?;
    let what = "inbox item, poll mode, re-read every 20 ms (write → read)";
    report.spent.push(window.spent(what, m.n));
    report.add(Some("poll-timer".into()), Row::inbox(7, what, "0 (no job)", items, &m));
    progress(format_args!("inbox: {items} items, poll mode, long poll"));
    let (m, window) =
        bench_inbox::poll_phase(&b.pool, INBOX_WORKSPACES, items, Reader::LongPoll, b.args.pg_stat).await?;
    let what = "inbox item, poll mode, long poll (write → read)";
    report.spent.push(window.spent(what, m.n));
    report.add(Some("poll".into()), Row::inbox(7, what, "0 (no job)", items, &m));
    let (url, received) = bench_inbox::receiver().await?;
    for k in [1usize, 2, 4] {
        progress(format_args!("inbox: {items} items, push mode, {k} worker(s)"));
        bench_inbox::clear(&received)?;
        let ws = bench_inbox::workspaces(&b.pool, INBOX_WORKSPACES, DeliveryMode::Push, Some(url.clone())).await?;
        let extra = [("AGENT_URL_ALLOW_PRIVATE", "true"), ("INBOX_CONCURRENCY", "16")];
        let mut procs = spawn_workers(&b.config, k, &extra)?;
        wait_registered(&b.pool, &mut procs).await?;
        let stats = k != 2 && b.args.pg_stat;
        if stats {
            sqlx::query("SELECT pg_stat_statements_reset()").execute(&b.pool).await?;
        }
        let before = b.counters().await?;
        let sent = bench_inbox::produce(&b.pool, &ws, DeliveryMode::Push, items).await?;
        let m = bench_inbox::wait_for(&sent, &received, items).await;
        let phase = format!("inbox item, push mode, {k} worker{}", if k == 1 { "" } else { "s" });
        report.spent.push(before.until(&b.counters().await?, phase, m.n));
        if stats {
            let phase = format!("push inbox with {k} worker(s), writes included");
            report.statements.push(statements(&phase, &b.pool).await?);
        }
        stop(procs).await;
        report.add(Some(format!("push-{k}")), Row::inbox(8, "inbox item, push mode (write → received)", k, items, &m));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pg_stat_statements
// ---------------------------------------------------------------------------------------------

async fn statements_available(pool: &PgPool) -> bool {
    let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(pool).await;
    let present: Result<Option<i32>, _> =
        sqlx::query_scalar("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
            .fetch_optional(pool)
            .await;
    // The extension can exist while the library is not preloaded; then reading fails.
    matches!(present, Ok(Some(_))) && sqlx::query("SELECT pg_stat_statements_reset()").execute(pool).await.is_ok()
}

/// The phase's top statements since the last reset.
async fn statements(phase: &str, pool: &PgPool) -> jobs::Result<Statements> {
    Ok(Statements { phase: phase.into(), top: top_statements(pool).await? })
}

async fn top_statements(pool: &PgPool) -> jobs::Result<Vec<Statement>> {
    let rows: Vec<(i64, f64, f64, String)> = sqlx::query_as(
        "SELECT calls, mean_exec_time, total_exec_time, query FROM pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          ORDER BY total_exec_time DESC LIMIT 10",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(calls, mean_ms, total_ms, query)| Statement {
            calls,
            mean_ms,
            total_ms,
            query: query.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(120).collect(),
        })
        .collect())
}
