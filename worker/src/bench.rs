//! `worker bench retention [--rows N]`: how the apalis fetch and the retention sweep's
//! panic-residue check behave with a table full of finished tasks, during the sweep's purge,
//! and after it. Writes and deletes rows: run it against a throwaway database (DATABASE_URL).

use std::time::{Duration, Instant};

use jobs::config::Config;
use jobs::store::apalis::bench;
use sqlx::PgPool;

const QUEUE: &str = "bench-fetch";
const WORKER: &str = "bench";
const SAMPLES: usize = 200;
const RESIDUE_SAMPLES: usize = 20;

pub async fn run(config: Config, args: &[String]) -> jobs::Result<()> {
    let mut rows: i64 = 100_000;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "retention" => {}
            "--rows" => {
                rows = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| jobs::Error::Config("--rows needs a number".into()))?
            }
            other => {
                return Err(jobs::Error::Config(format!(
                    "unknown bench argument {other:?}; use `worker bench retention [--rows N]`"
                )));
            }
        }
    }
    let pool = jobs::db::connect(&config.database_url, 4).await?;
    jobs::db::migrate(&pool).await?;
    bench::reset_queue(&pool, WORKER, QUEUE).await?;
    let started = Instant::now();
    bench::insert_finished(&pool, WORKER, QUEUE, rows).await?;
    println!("inserted {rows} finished tasks in {:?}", started.elapsed());

    let before = fetch_latency(&pool, SAMPLES).await?;
    let residue_before = residue_latency(&pool).await?;

    let mut settings = config.sweeps.retention.clone();
    settings.jobs = Duration::from_secs(24 * 3600);
    let batch = settings.batch;
    let purge_pool = pool.clone();
    let purge = tokio::spawn(async move {
        let t = Instant::now();
        let p = jobs::sweeps::retention::run(&purge_pool, &settings).await;
        (t.elapsed(), p)
    });
    // Fetches keep going while the purge runs: the queue must not stall.
    let mut during = vec![];
    while !purge.is_finished() {
        during.extend(fetch_latency(&pool, 10).await?.samples);
    }
    let (purge_time, purged) = purge.await.map_err(|e| jobs::Error::Internal(format!("purge task: {e}")))?;
    let purged = purged?;
    bench::analyze(&pool).await?;
    let after = fetch_latency(&pool, SAMPLES).await?;
    let residue_after = residue_latency(&pool).await?;
    let during = Latency::from(during);

    println!();
    println!("| phase | fetch p50 | fetch p99 | fetch max | samples |");
    println!("|---|---|---|---|---|");
    for (name, l) in [("before purge (table full)", &before), ("during purge", &during), ("after purge", &after)] {
        println!("| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {} |", l.p(0.5), l.p(0.99), l.p(1.0), l.samples.len());
    }
    println!();
    println!("| panic-residue check | p50 | max | samples |");
    println!("|---|---|---|---|");
    for (name, l) in [("before purge (table full)", &residue_before), ("after purge", &residue_after)] {
        println!("| {name} | {:.2} ms | {:.2} ms | {} |", l.p(0.5), l.p(1.0), l.samples.len());
    }
    println!();
    println!(
        "purge: {} tasks deleted in {} batches of {} in {:.2} s",
        purged.jobs,
        purged.batches,
        batch,
        purge_time.as_secs_f64()
    );
    Ok(())
}

struct Latency {
    samples: Vec<Duration>,
}

impl From<Vec<Duration>> for Latency {
    fn from(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Latency { samples }
    }
}

impl Latency {
    fn p(&self, q: f64) -> f64 {
        crate::percentile::of(&self.samples, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    }
}

/// Times the retention sweep's panic-residue check, which finds nothing here and so can be
/// repeated.
async fn residue_latency(pool: &PgPool) -> jobs::Result<Latency> {
    let mut samples = Vec::with_capacity(RESIDUE_SAMPLES);
    for _ in 0..RESIDUE_SAMPLES {
        let t = Instant::now();
        jobs::store::apalis::kill_panic_residue(pool, jobs::queue::LIFECYCLE_QUEUE).await?;
        samples.push(t.elapsed());
    }
    Ok(Latency::from(samples))
}

/// Times apalis' own fetch (`apalis.get_jobs`) claiming one pending task, `n` times.
async fn fetch_latency(pool: &PgPool, n: usize) -> jobs::Result<Latency> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        bench::insert_pending(pool, QUEUE, 1).await?;
        let t = Instant::now();
        let claimed = bench::fetch_one(pool, WORKER, QUEUE).await?;
        samples.push(t.elapsed());
        for id in claimed {
            bench::mark_done(pool, &id).await?;
        }
    }
    Ok(Latency::from(samples))
}
