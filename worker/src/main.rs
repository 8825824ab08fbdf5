//! The worker process: runs lifecycle and sweep jobs from the durable queue.
//!
//! `worker run` (default) starts the job runners and the sweep scheduler; `worker migrate`
//! applies migrations and exits (the Procfile's `release`); `worker admin ...` is the
//! operators' command line over the admin api (it needs no database).

mod admin_cli;
mod bench;
mod bench_cost;
mod bench_inbox;
mod bench_queue;
mod metrics_server;
mod percentile;
mod probe;
mod runners;
mod scheduler;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use jobs::backend::Backends;
use jobs::backend::ec2::Ec2Backend;
use jobs::config::{Config, DockerMode};
use jobs::kinds::JobContext;
use jobs::store::{platform, worker_processes};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("admin") {
        return admin_cli::main(std::env::args().skip(1).collect()).await;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("worker: {e}");
            return ExitCode::from(2);
        }
    };
    jobs::telemetry::init(config.log_format);
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "run".into());
    let result = match cmd.as_str() {
        "migrate" => migrate(&config).await,
        "run" => match metrics_server::addr_from_env() {
            Ok(metrics_addr) => run(config, metrics_addr).await,
            Err(e) => {
                eprintln!("worker: {e}");
                return ExitCode::from(2);
            }
        },
        "bench" => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            match args.first().map(String::as_str) {
                Some("inbox") => bench_inbox::run(config, &args).await,
                Some("queue") => bench_queue::run(config, &args).await,
                _ => bench::run(config, &args).await,
            }
        }
        other => {
            eprintln!(
                "worker: unknown command {other:?}; use `worker run`, `worker migrate`, `worker admin` or `worker bench retention|inbox|queue`"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker stopped");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(config: &Config) -> jobs::Result<()> {
    let pool = jobs::db::connect(&config.database_url, 2).await?;
    jobs::db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn connect_backends(config: &Config, platform_id: &str) -> jobs::Result<Backends> {
    let mut backends = Backends::default();
    if config.docker.mode != DockerMode::Off && !probe::once(&backends, &probe::settings(config, platform_id)).await {
        // Not fatal, even when Docker is required: the engine is probed again on a schedule.
        let level = if config.docker.mode == DockerMode::On { "DOCKER_ENABLED=true but " } else { "" };
        tracing::warn!(
            every_secs = config.docker.probe_every.as_secs_f64(),
            "{level}no Docker engine answers now; probing again until one does"
        );
    }
    if config.ec2_reachable() {
        backends.ec2 = Some(Arc::new(Ec2Backend::connect(config.ec2.clone(), platform_id.to_string()).await));
        backends.ec2_for_new = config.ec2.enabled;
    }
    Ok(backends)
}

async fn run(config: Config, metrics_addr: Option<std::net::SocketAddr>) -> jobs::Result<()> {
    let config = Arc::new(config);
    let pool =
        jobs::db::connect_with(&config.database_url, config.database_max_connections, Some(config.worker.op_lease))
            .await?;
    jobs::db::migrate(&pool).await?;
    let platform_id = match &config.platform_id {
        Some(id) => id.clone(),
        None => platform::id(&pool).await?,
    };
    let backends = connect_backends(&config, &platform_id).await?;
    tracing::info!(backends = ?backends.names(), platform_id, "worker starting");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let process_id = format!("{hostname}-{}-{}", std::process::id(), ulid::Ulid::new());
    let ctx = Arc::new(JobContext::new(pool.clone(), config.clone(), backends, process_id.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = metrics_addr {
        tasks.spawn(metrics_server::start(addr, stop_rx.clone()).await?);
    }
    let queue_pool = runners::queue_pool(&config).await?;
    tasks.spawn(runners::supervise_lifecycle(ctx.clone(), queue_pool.clone(), process_id.clone(), stop_rx.clone()));
    tasks.spawn(runners::supervise_sweeps(ctx.clone(), queue_pool.clone(), process_id.clone(), stop_rx.clone()));
    tasks.spawn(runners::supervise_inbox(ctx.clone(), queue_pool, process_id.clone(), stop_rx.clone()));
    tasks.spawn(scheduler::run(ctx.clone(), stop_rx.clone()));
    // The orphans sweep also runs once its start grace is over: a worker that comes up
    // after an outage reaps what was left without waiting for the next period.
    tasks.spawn({
        let ctx = ctx.clone();
        let mut stop = stop_rx.clone();
        async move {
            let grace = ctx.config.sweeps.orphans.start_grace;
            if !grace.is_zero() {
                tracing::info!(grace_secs = grace.as_secs_f64(), "orphans sweep at start waits for the grace period");
            }
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = stop.changed() => return,
            }
            match jobs::sweeps::orphans::run(&ctx.pool, &ctx.backends, &ctx.config.sweeps.orphans).await {
                Ok(outcome) if outcome.acted => tracing::info!(%outcome, "orphans sweep at start"),
                Ok(outcome) => tracing::debug!(%outcome, "orphans sweep at start"),
                Err(e) => tracing::warn!(error = %e, "orphans sweep at start failed"),
            }
        }
    });
    tasks.spawn(announce(ctx.clone(), process_id.clone(), hostname, stop_rx.clone()));
    tasks.spawn(probe::run(
        config.clone(),
        ctx.backends.clone(),
        probe::settings(&config, &platform_id),
        stop_rx.clone(),
    ));

    jobs::shutdown::signal().await;
    tracing::info!(
        grace_secs = config.worker.shutdown_grace.as_secs(),
        "shutting down: no new jobs; waiting for running ones"
    );
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(config.worker.shutdown_grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("grace period over; jobs still running are left for another worker to rescue");
    }
    let _ = worker_processes::remove(&pool, &process_id).await;
    Ok(())
}

/// Keeps this process's row in `worker_processes` fresh.
async fn announce(ctx: Arc<JobContext>, id: String, hostname: String, mut stop: watch::Receiver<bool>) {
    loop {
        // Read every time: the Docker probe changes what this process reaches.
        let names = ctx.backends.names();
        let engines: Vec<String> = ctx.backends.docker_engine().into_iter().collect();
        if let Err(e) =
            worker_processes::heartbeat(&ctx.pool, &id, &hostname, std::process::id(), &names, &engines).await
        {
            tracing::warn!(error = %e, "could not record worker heartbeat");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}
