//! `worker bench inbox [--items N] [--workspaces W]`: the inbox path end to end, in process.
//!
//! - **poll**: producers write N items to W poll-mode workspaces while one poller per
//!   workspace reads them with `since_id`, as agents do, first re-reading every 20 ms, then
//!   with the long poll; no job is involved.
//! - **push**: the same N items to W push-mode workspaces whose URL is a local receiver,
//!   drained by InboxPush workers (apalis runners, as `worker run` starts them): 1 worker,
//!   then 2.
//!
//! Each phase reports items/s (first write to last arrival) and the p50/p99 from write to
//! arrival. Writes rows: run it against a throwaway database (DATABASE_URL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use jobs::backend::Backends;
use jobs::config::Config;
use jobs::domain::{AgentUrl, CreateRequest, DeliveryMode, Status};
use jobs::inbox;
use jobs::kinds::JobContext;
use jobs::long_poll::{self, Readers};
use jobs::store::activity_logs::{self, NewActivity};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::bench_cost::{Counters, Window};

const PRODUCERS: usize = 8;

pub(crate) type Arrivals = Arc<Mutex<HashMap<i64, Instant>>>;

pub async fn run(config: Config, args: &[String]) -> jobs::Result<()> {
    let (mut items, mut spaces) = (20_000usize, 100usize);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| {
            it.next().and_then(|v| v.parse().ok()).ok_or_else(|| jobs::Error::Config(format!("{name} needs a number")))
        };
        match a.as_str() {
            "inbox" => {}
            "--items" => items = num("--items")?,
            "--workspaces" => spaces = num("--workspaces")?.max(1),
            other => {
                return Err(jobs::Error::Config(format!(
                    "unknown bench argument {other:?}; use `worker bench inbox [--items N] [--workspaces W]`"
                )));
            }
        }
    }
    let pool = jobs::db::connect(&config.database_url, 40).await?;
    jobs::db::migrate(&pool).await?;
    println!("inbox benchmark: {items} items over {spaces} workspaces, {PRODUCERS} producers");
    println!("| phase | workers | items | seconds | items/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");

    for reader in [Reader::Timer, Reader::LongPoll] {
        let (row, _) = poll_phase(&pool, spaces, items, reader, false).await?;
        println!("| poll ({reader:?}) | 0 (no job) | {} |", row.cells());
    }

    let (url, received) = receiver().await?;
    let config = Arc::new(config);
    for workers in [1usize, 2] {
        clear(&received)?;
        let push_ws = workspaces(&pool, spaces, DeliveryMode::Push, Some(url.clone())).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let queue_pool = crate::runners::queue_pool(&config).await?;
        let mut runners = vec![];
        for n in 0..workers {
            let id = format!("bench-inbox-{n}-{}", Uuid::new_v4().simple());
            let ctx = Arc::new(JobContext::new(pool.clone(), config.clone(), Backends::default(), id.clone()));
            runners.push(tokio::spawn(crate::runners::supervise_inbox(ctx, queue_pool.clone(), id, stop_rx.clone())));
        }
        let sent = produce(&pool, &push_ws, DeliveryMode::Push, items).await?;
        let row = wait_for(&sent, &received, items).await;
        let _ = stop_tx.send(true);
        for r in runners {
            let _ = r.await;
        }
        queue_pool.close().await;
        println!("| push | {workers} | {} |", row.cells());
    }
    Ok(())
}

/// How a poll-mode agent reads its inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// Re-reads every 20 ms while nothing is new.
    Timer,
    /// The long poll (`GET /workspaces/{id}/activity?since_id=..&wait=..`), woken by the
    /// append notices through this process's listener, as the api is.
    LongPoll,
}

/// Poll mode: one poller per workspace reads what the producers write; no job is involved.
/// Also returns the counters around the writes and reads (`statements`: whether
/// `pg_stat_statements` is usable).
pub(crate) async fn poll_phase(
    pool: &PgPool,
    spaces: usize,
    items: usize,
    reader: Reader,
    statements: bool,
) -> jobs::Result<(Measured, Window)> {
    let poll_ws = workspaces(pool, spaces, DeliveryMode::Poll, None).await?;
    let arrivals: Arrivals = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let readers = (reader == Reader::LongPoll).then(|| Readers::spawn(&jobs::notify::spawn_listener(pool.clone())));
    let pollers: Vec<_> = poll_ws
        .iter()
        .map(|ws| tokio::spawn(poll(pool.clone(), readers.clone(), *ws, arrivals.clone(), stop_rx.clone())))
        .collect();
    let before = Counters::read(pool, statements).await?;
    let sent = produce(pool, &poll_ws, DeliveryMode::Poll, items).await?;
    let measured = wait_for(&sent, &arrivals, items).await;
    let window = Window { before, after: Counters::read(pool, statements).await? };
    let _ = stop_tx.send(true);
    for p in pollers {
        let _ = p.await;
    }
    Ok((measured, window))
}

/// The local agent every push-mode workspace points at, served until the process ends.
pub(crate) async fn receiver() -> jobs::Result<(AgentUrl, Arrivals)> {
    let listener =
        tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| jobs::Error::Internal(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| jobs::Error::Internal(e.to_string()))?;
    let received: Arrivals = Arc::default();
    let app = axum::Router::new().route("/a2a", axum::routing::post(receive)).with_state(received.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((AgentUrl::parse(&format!("http://{addr}/a2a"))?, received))
}

pub(crate) fn clear(arrivals: &Arrivals) -> jobs::Result<()> {
    arrivals.lock().map_err(|_| jobs::Error::Internal("poisoned".into()))?.clear();
    Ok(())
}

async fn receive(State(received): State<Arrivals>, Json(body): Json<Value>) -> Json<Value> {
    let id = body.pointer("/params/message/messageId").and_then(Value::as_str).and_then(|s| s.parse().ok());
    if let (Some(id), Ok(mut r)) = (id, received.lock()) {
        r.entry(id).or_insert_with(Instant::now);
    }
    Json(json!({"jsonrpc": "2.0", "id": body.get("id"), "result": {"kind": "message", "role": "agent"}}))
}

pub(crate) async fn workspaces(
    pool: &PgPool,
    n: usize,
    mode: DeliveryMode,
    url: Option<AgentUrl>,
) -> jobs::Result<Vec<Uuid>> {
    let mut ids = vec![];
    let mut tx = jobs::db::begin(pool).await?;
    for i in 0..n {
        let id = Uuid::new_v4();
        let req = CreateRequest::external(format!("bench-{i}"), mode, url.clone());
        jobs::store::workspaces::insert(&mut tx, id, Status::Online, &req).await?;
        ids.push(id);
    }
    tx.commit().await?;
    Ok(ids)
}

/// Writes `items` messages round-robin over the workspaces from several producers; returns
/// when each was written.
pub(crate) async fn produce(
    pool: &PgPool,
    ws: &[Uuid],
    mode: DeliveryMode,
    items: usize,
) -> jobs::Result<HashMap<i64, Instant>> {
    // As the api appends: concurrent items share rounds.
    let appends = Arc::new(inbox::Appends::spawn(pool.clone()));
    let mut tasks = vec![];
    for p in 0..PRODUCERS {
        let (appends, ws) = (appends.clone(), ws.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut sent = HashMap::new();
            for n in (p..items).step_by(PRODUCERS) {
                let w = ws[n % ws.len()];
                let at = Instant::now();
                let id = appends
                    .append(
                        mode,
                        NewActivity {
                            workspace_id: w,
                            activity_type: inbox::INBOX_TYPE.into(),
                            method: Some("message/send".into()),
                            request_body: Some(inbox::message_send(&n.to_string(), "bench", json!({}))),
                            status: "ok".into(),
                            ..Default::default()
                        },
                    )
                    .await?;
                sent.insert(id, at);
            }
            Ok::<_, jobs::Error>(sent)
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| jobs::Error::Internal(e.to_string()))??);
    }
    Ok(all)
}

async fn poll(pool: PgPool, readers: Option<Arc<Readers>>, ws: Uuid, seen: Arrivals, stop: watch::Receiver<bool>) {
    let mut cursor = 0i64;
    while !*stop.borrow() {
        let read = match &readers {
            Some(readers) => {
                let wakes = long_poll::Wakes { readers, stopping: stop.clone() };
                let kind = Some(inbox::INBOX_TYPE);
                long_poll::read_waiting(&pool, wakes, ws, kind, cursor, 500, Duration::from_secs(30)).await
            }
            None => activity_logs::list(&pool, ws, Some(inbox::INBOX_TYPE), Some(cursor), 500).await,
        };
        match read {
            Ok(rows) if !rows.is_empty() => {
                let now = Instant::now();
                if let Ok(mut s) = seen.lock() {
                    for r in &rows {
                        s.entry(r.id).or_insert(now);
                    }
                }
                cursor = rows.last().map_or(cursor, |r| r.id);
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// What one inbox phase delivered: items/s from the first write to the last arrival, and
/// write-to-arrival latency.
pub(crate) struct Measured {
    pub n: usize,
    pub secs: f64,
    pub per_sec: f64,
    pub p50: f64,
    pub p99: f64,
}

impl Measured {
    fn cells(&self) -> String {
        format!("{} | {:.1} | {:.0} | {:.0} | {:.0}", self.n, self.secs, self.per_sec, self.p50, self.p99)
    }
}

/// Waits until every item arrived (deadline 10 minutes) and measures what did.
pub(crate) async fn wait_for(sent: &HashMap<i64, Instant>, arrived: &Arrivals, items: usize) -> Measured {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n = arrived.lock().map(|a| sent.keys().filter(|k| a.contains_key(k)).count()).unwrap_or(0);
        if n >= items || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Ok(a) = arrived.lock() else {
        return Measured { n: 0, secs: f64::NAN, per_sec: f64::NAN, p50: f64::NAN, p99: f64::NAN };
    };
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| a.get(id).map(|got| got.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    lat.sort_by(f64::total_cmp);
    let first = sent.values().min().copied();
    let last = sent.keys().filter_map(|k| a.get(k)).max().copied();
    let secs = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => f64::NAN,
    };
    let pct = |p: f64| crate::percentile::of(&lat, p).unwrap_or(f64::NAN);
    Measured { n: lat.len(), secs, per_sec: lat.len() as f64 / secs, p50: pct(0.5), p99: pct(0.99) }
}
