//! Ticks every second and claims each sweep's period as it begins. The claim is a unique
//! row in the database, so any number of workers produce one run per period.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobs::kinds::JobContext;
use jobs::sweeps::{self, SweepKind};
use tokio::sync::watch;

pub async fn run(ctx: Arc<JobContext>, mut stop: watch::Receiver<bool>) {
    let mut last_period: [Option<u128>; SweepKind::ALL.len()] = [None; SweepKind::ALL.len()];
    let mut last_engine_period: Option<u128> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        // This engine's orphans sweep runs here, in the background, when this worker wins it.
        let engine_period = ctx.config.sweeps.orphans.every;
        let index = now_ms / engine_period.as_millis().max(1);
        if last_engine_period != Some(index) && ctx.backends.docker_engine().is_some() {
            last_engine_period = Some(index);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = sweeps::claim_engine_orphans(&ctx).await {
                    tracing::warn!(error = %e, "could not run this engine's orphans sweep");
                }
            });
        }
        for (i, kind) in SweepKind::ALL.into_iter().enumerate() {
            let period = kind.period(&ctx.config.sweeps);
            let index = now_ms / period.as_millis().max(1);
            if last_period[i] == Some(index) {
                continue;
            }
            match sweeps::claim_period(&ctx.pool, kind, period).await {
                Ok(won) => {
                    last_period[i] = Some(index);
                    if won {
                        tracing::debug!(sweep = kind.name(), "claimed sweep period");
                    }
                }
                Err(e) => tracing::warn!(sweep = kind.name(), error = %e, "could not claim sweep period"),
            }
        }
    }
}
