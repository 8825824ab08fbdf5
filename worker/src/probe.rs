//! Keeps the Docker backend current: the engine is probed on a schedule, put in when it
//! answers and taken out when it stops. A worker started while dockerd was down picks it
//! up, and one whose engine went away stops taking Docker work (ops needing Docker are then
//! left to workers that advertise it; see `kinds::run_op`).

use std::sync::Arc;

use jobs::backend::Backends;
use jobs::backend::docker::{DockerBackend, DockerSettings};
use jobs::config::{Config, DockerMode};
use tokio::sync::watch;

pub fn settings(config: &Config, platform_id: &str) -> DockerSettings {
    let docker = &config.docker;
    DockerSettings {
        images: docker.images.clone(),
        default_image: docker.default_image.clone(),
        network: docker.network.clone(),
        tiers: docker.tiers,
        call_timeout: docker.call_timeout,
        platform_id: platform_id.to_string(),
        engine_id: docker.engine_id.clone(),
    }
}

/// One probe: connects when the slot is empty, pings when it is not; returns whether
/// Docker is usable now.
pub async fn once(backends: &Backends, settings: &DockerSettings) -> bool {
    match backends.docker() {
        Some(current) => match current.ping().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "the Docker engine stopped answering; no Docker work is taken until it is back");
                backends.set_docker(None);
                false
            }
        },
        None => match DockerBackend::connect(settings.clone()).await {
            Ok(d) => {
                tracing::info!("the Docker engine answers; the Docker backend is on");
                backends.set_docker(Some(Arc::new(d)));
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "no Docker engine reachable yet");
                false
            }
        },
    }
}

/// Probes every `every` until shutdown.
pub async fn run(config: Arc<Config>, backends: Backends, settings: DockerSettings, mut stop: watch::Receiver<bool>) {
    if config.docker.mode == DockerMode::Off {
        return;
    }
    let every = config.docker.probe_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        once(&backends, &settings).await;
    }
}
