//! `worker bench retention [--rows N]`: how the apalis fetch behaves with a table full of
//! finished tasks, during the retention sweep's purge, and after it. Writes and deletes
//! rows: run it against a throwaway database (DATABASE_URL).

use std::time::{Duration, Instant};

use jobs::config::Config;
use sqlx::PgPool;

const QUEUE: &str = "bench-fetch";
const SAMPLES: usize = 200;

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
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen) VALUES ('bench', $1, 'bench', now())
         ON CONFLICT (id) DO UPDATE SET last_seen = now()",
    )
    .bind(QUEUE)
    .execute(&pool)
    .await?;
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1").bind(QUEUE).execute(&pool).await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, done_at, lock_by)
         SELECT apalis.generate_ulid(), $1, '\\x7b7d', 'Done', 1, 5, now() - interval '2 days', now() - interval '2 days', 'bench'
           FROM generate_series(1, $2)",
    )
    .bind(QUEUE)
    .bind(rows)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE apalis.jobs").execute(&pool).await?;
    println!("inserted {rows} finished tasks in {:?}", started.elapsed());

    let before = fetch_latency(&pool, SAMPLES).await?;

    let mut cfg = config.clone();
    cfg.retention_jobs = Duration::from_secs(24 * 3600);
    let purge_pool = pool.clone();
    let purge = tokio::spawn(async move {
        let t = Instant::now();
        let p = jobs::kinds::retention::purge(&purge_pool, &cfg).await;
        (t.elapsed(), p)
    });
    // Fetches keep going while the purge runs: the queue must not stall.
    let mut during = vec![];
    while !purge.is_finished() {
        during.extend(fetch_latency(&pool, 10).await?.samples);
    }
    let (purge_time, purged) = purge.await.map_err(|e| jobs::Error::Config(format!("purge task: {e}")))?;
    let purged = purged?;
    sqlx::query("ANALYZE apalis.jobs").execute(&pool).await?;
    let after = fetch_latency(&pool, SAMPLES).await?;
    let during = Latency::from(during);

    println!();
    println!("| phase | fetch p50 | fetch p99 | fetch max | samples |");
    println!("|---|---|---|---|---|");
    for (name, l) in [("before purge (table full)", &before), ("during purge", &during), ("after purge", &after)] {
        println!("| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {} |", l.p(0.5), l.p(0.99), l.p(1.0), l.samples.len());
    }
    println!();
    println!(
        "purge: {} tasks deleted in {} batches of {} in {:.2} s",
        purged.jobs,
        purged.batches,
        config.retention_batch,
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
        if self.samples.is_empty() {
            return f64::NAN;
        }
        let i = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
        self.samples[i].as_secs_f64() * 1000.0
    }
}

/// Times apalis' own fetch (`apalis.get_jobs`) claiming one pending task, `n` times.
async fn fetch_latency(pool: &PgPool, n: usize) -> jobs::Result<Latency> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at)
             VALUES (apalis.generate_ulid(), $1, '\\x7b7d', 'Pending', 0, 5, now() - interval '1 second')",
        )
        .bind(QUEUE)
        .execute(pool)
        .await?;
        let t = Instant::now();
        let claimed: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM apalis.get_jobs('bench', $1, 1)").bind(QUEUE).fetch_all(pool).await?;
        samples.push(t.elapsed());
        for (id,) in claimed {
            sqlx::query("UPDATE apalis.jobs SET status = 'Done', done_at = now() WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?;
        }
    }
    Ok(Latency::from(samples))
}
