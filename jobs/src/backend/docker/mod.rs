//! Runs each workspace as one container on a Docker engine. The container is named after
//! the workspace (`ws-<uuid>`), so the name itself is the idempotency key: a retried start
//! finds whatever an earlier attempt left behind and replaces it, and the engine's
//! name uniqueness guarantees there are never two.
//!
//! The container also carries the op, its sequence number and the claim that made it. A
//! start replaces only a container made by an older start, and removes it by id, never by
//! name: a worker that stalled past its lease and wakes up finds the newer container (or
//! loses the name to it) and gives up instead of replacing it.

mod archive;
mod engine;
mod settings;
mod token;

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, UploadToContainerOptionsBuilder,
};
use tracing::{debug, warn};
use uuid::Uuid;

use super::{
    Backend, BackendError, BackendKind, InstanceState, LABEL_DOCKER_ENGINE, LABEL_MANAGED, LABEL_OP_ID, LABEL_OP_LEASE,
    LABEL_OP_SEQ, LABEL_PLATFORM, LABEL_WORKSPACE_ID, ManagedInstance, StartSpec, Started, kept,
};
use archive::token_archive;
use engine::{bounded, engine_error, force_remove, is_no_such_image, status_of, vanished};
pub use settings::DockerSettings;
use token::CONFIG_DIR;

/// Prefix of every workspace container's name; shared so code outside this module that
/// looks containers up by name cannot drift from the names we create.
pub const CONTAINER_PREFIX: &str = "ws-";

const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Create attempts before giving up on a name that a concurrent start keeps re-taking.
const CREATE_ATTEMPTS: usize = 3;

pub struct DockerBackend {
    docker: Docker,
    settings: DockerSettings,
    /// The engine's id among workers: configured, else the engine's own.
    engine: String,
}

impl DockerBackend {
    /// Connects with bollard's defaults (honours `DOCKER_HOST`, else the local unix socket)
    /// and pings the engine.
    pub async fn connect(settings: DockerSettings) -> Result<Self, BackendError> {
        let timeout = settings.call_timeout;
        let docker = Docker::connect_with_defaults().map_err(|err| engine_error("connect", err))?;
        // bollard speaks a newer API than many deployed engines, and engines reject
        // requests stamped with a version they do not know.
        let docker = bounded(timeout, "negotiate the API version", docker.negotiate_version())
            .await?
            .map_err(|err| engine_error("negotiate the API version", err))?;
        bounded(timeout, "ping the Docker engine", docker.ping())
            .await?
            .map_err(|err| engine_error("ping the Docker engine", err))?;
        let engine = match settings.engine_id.clone() {
            Some(id) => id,
            None => bounded(timeout, "read the engine's id", docker.info())
                .await?
                .map_err(|err| engine_error("read the engine's id", err))?
                .id
                .filter(|id| !id.is_empty())
                .ok_or_else(|| {
                    BackendError::Permanent("the Docker engine reports no id: set DOCKER_ENGINE_ID".to_owned())
                })?,
        };
        debug!(api_version = %docker.client_version(), engine, "connected to the Docker engine");
        Ok(Self { docker, settings, engine })
    }

    /// Whether a container with these labels belongs to this engine's inventory. Containers
    /// made before engines were labelled carry no engine label: they are on whatever engine
    /// lists them, so they count as this one's.
    fn on_this_engine(&self, labels: Option<&HashMap<String, String>>) -> bool {
        labels.and_then(|l| l.get(LABEL_DOCKER_ENGINE)).is_none_or(|e| *e == self.engine)
    }

    pub fn container_name(workspace_id: Uuid) -> String {
        format!("{CONTAINER_PREFIX}{workspace_id}")
    }

    fn create_body(&self, spec: &StartSpec, image: &str) -> ContainerCreateBody {
        let tier = spec.tier.clamp(1, 4);
        let (memory, cpu_shares) = self.settings.resources(tier);
        let labels = HashMap::from([
            (LABEL_WORKSPACE_ID.to_owned(), spec.workspace_id.to_string()),
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_PLATFORM.to_owned(), self.settings.platform_id.clone()),
            (LABEL_OP_ID.to_owned(), spec.op_id.to_string()),
            (LABEL_OP_SEQ.to_owned(), spec.op_seq.to_string()),
            (LABEL_OP_LEASE.to_owned(), spec.lease.to_string()),
            (LABEL_DOCKER_ENGINE.to_owned(), self.engine.clone()),
        ]);
        let mut env = vec![
            format!("WORKSPACE_ID={}", spec.workspace_id),
            format!("PLATFORM_URL={}", spec.platform_url),
            format!("WORKSPACE_CONFIG_PATH={CONFIG_DIR}"),
            format!("TIER={tier}"),
            format!("MODEL={}", spec.model),
            format!("RUNTIME={}", spec.runtime),
            format!("HEARTBEAT_INTERVAL_SECONDS={}", spec.heartbeat_interval_secs),
        ];
        if spec.reset_session {
            env.push("RESET_SESSION=1".to_owned());
        }
        ContainerCreateBody {
            image: Some(image.to_owned()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                memory: Some(memory),
                cpu_shares: Some(cpu_shares),
                network_mode: self.settings.network.clone(),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the workspace's container under its fixed name, replacing any container an
    /// older start left there. Returns the new container's id, which is used from here on so
    /// a concurrent replacement can never receive our secret.
    async fn create_fresh(
        &self,
        spec: &StartSpec,
        image: &str,
        body: &ContainerCreateBody,
    ) -> Result<String, BackendError> {
        let name = Self::container_name(spec.workspace_id);
        for attempt in 1..=CREATE_ATTEMPTS {
            self.clear_name(&name, spec).await?;
            let options = CreateContainerOptionsBuilder::new().name(&name).build();
            let created =
                self.call("create the container", self.docker.create_container(Some(options), body.clone())).await?;
            match created {
                Ok(created) => {
                    debug!(container = name, id = %created.id, attempt, "created container");
                    return Ok(created.id);
                }
                Err(err) if is_no_such_image(&err) => {
                    return Err(BackendError::Permanent(format!("image {image} not found on the Docker engine")));
                }
                Err(err) if status_of(&err) == Some(409) => {
                    debug!(attempt, container = name, "name taken by a concurrent start");
                }
                Err(err) => return Err(engine_error("create the container", err)),
            }
        }
        Err(BackendError::Transient(format!("container {name} kept being re-created by a concurrent start")))
    }

    /// The content id of the image this start runs: the workspace's pinned one, else the
    /// one configured for its runtime now. Containers are created from the id, so retagging
    /// the configured name later moves no workspace until it is restarted with an upgrade.
    async fn image_id(&self, spec: &StartSpec) -> Result<String, BackendError> {
        let (image, pinned) = match &spec.image {
            Some(pinned) => (pinned.as_str(), true),
            None => (self.settings.image_for(&spec.runtime)?, false),
        };
        let inspected = self.call("inspect the image", self.docker.inspect_image(image)).await?;
        match inspected {
            Ok(info) => info
                .id
                .ok_or_else(|| BackendError::Transient(format!("the Docker engine gave no id for image {image}"))),
            Err(err) if status_of(&err) == Some(404) || is_no_such_image(&err) => {
                Err(BackendError::Permanent(if pinned {
                    format!(
                        "image {image}, which this workspace is pinned to, is no longer on the Docker engine; \
                         restart it with upgrade=true to move it to the image configured now"
                    )
                } else {
                    format!("image {image} not found on the Docker engine")
                }))
            }
            Err(err) => Err(engine_error("inspect the image", err)),
        }
    }

    /// Frees the name of a container made by an older start: it holds an older secret and
    /// possibly an older spec, so it is replaced rather than reused. A container made by a
    /// newer start is left alone and this start is superseded.
    async fn clear_name(&self, name: &str, spec: &StartSpec) -> Result<(), BackendError> {
        let inspected = self.call("inspect the old container", self.docker.inspect_container(name, None)).await?;
        let info = match inspected {
            Ok(info) => info,
            Err(err) if status_of(&err) == Some(404) => return Ok(()),
            Err(err) => return Err(engine_error("inspect the old container", err)),
        };
        let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
        let made_by = start_order(&labels);
        if made_by > (spec.op_seq, spec.lease) {
            return Err(BackendError::Superseded(format!(
                "container {name} was made by a newer start (op {}, claim {}); this start (claim {}) leaves it alone",
                labels.get(LABEL_OP_ID).map(String::as_str).unwrap_or("?"),
                made_by.1,
                spec.lease
            )));
        }
        let Some(id) = info.id else { return Ok(()) };
        let removed =
            self.call("remove the old container", self.docker.remove_container(&id, Some(force_remove()))).await?;
        match removed {
            Ok(()) => {
                debug!(container = name, id, "removed the container of an older start");
                Ok(())
            }
            Err(err) if status_of(&err) == Some(404) => Ok(()),
            // Someone else is already removing it; the create that follows either succeeds
            // or conflicts and comes back here, within the attempt bound.
            Err(err) if status_of(&err) == Some(409) => {
                debug!(container = name, "old container already being removed");
                Ok(())
            }
            Err(err) => Err(engine_error("remove the old container", err)),
        }
    }

    async fn deliver_and_start(&self, id: &str, spec: &StartSpec) -> Result<(), BackendError> {
        {
            let (uid, gid) = self.token_owner(id).await?;
            let archive = token_archive(&spec.bootstrap_secret, uid, gid)
                .map_err(|err| BackendError::Permanent(format!("cannot package the bootstrap secret: {err}")))?;
            // Rooted at `/` with a `configs/` entry so images need not ship the directory.
            let options = UploadToContainerOptionsBuilder::new().path("/").build();
            let uploaded = self
                .call(
                    "write the bootstrap secret",
                    self.docker.upload_to_container(id, Some(options), bollard::body_full(archive.into())),
                )
                .await?;
            match uploaded {
                Ok(()) => debug!(id, uid, gid, "wrote the bootstrap secret"),
                Err(err) if status_of(&err) == Some(404) => return Err(vanished(id)),
                Err(err) => return Err(engine_error("write the bootstrap secret", err)),
            }
        }

        let started = self.call("start the container", self.docker.start_container(id, None)).await?;
        match started {
            Ok(()) => {
                debug!(id, "started container");
                Ok(())
            }
            Err(EngineError::DockerResponseServerError { status_code: 404, message }) => match &self.settings.network {
                Some(network) if message.contains("network") => {
                    Err(BackendError::Permanent(format!("Docker network {network} not found on the Docker engine")))
                }
                _ => Err(vanished(id)),
            },
            Err(err) => Err(engine_error("start the container", err)),
        }
    }

    /// Best effort: a container we could not finish starting is removed so it is not
    /// mistaken for a running workspace. Failure is only logged because the next start or
    /// the orphan sweep removes it anyway.
    async fn remove_half_started(&self, id: &str) {
        let removed = self
            .call("remove the half-started container", self.docker.remove_container(id, Some(force_remove())))
            .await;
        match removed {
            Ok(Ok(())) => debug!(id, "removed half-started container"),
            Ok(Err(err)) if status_of(&err) == Some(404) => {}
            Ok(Err(err)) => warn!(id, error = %err, "could not remove half-started container"),
            Err(err) => warn!(id, error = %err, "could not remove half-started container"),
        }
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Docker
    }

    fn engine(&self) -> Option<&str> {
        Some(&self.engine)
    }

    async fn start(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        let image = self.image_id(spec).await?;
        let image = image.as_str();
        let name = Self::container_name(spec.workspace_id);
        debug!(
            workspace_id = %spec.workspace_id,
            op_id = %spec.op_id,
            container = %name,
            image,
            "starting workspace container"
        );
        let body = self.create_body(spec, image);
        let id = self.create_fresh(spec, image, &body).await?;
        if let Err(err) = self.deliver_and_start(&id, spec).await {
            self.remove_half_started(&id).await;
            return Err(err);
        }
        Ok(Started { instance_ref: name, made: id, image: Some(image.to_owned()) })
    }

    async fn discard(&self, started: &Started) -> Result<(), BackendError> {
        let id = &started.made;
        let removed =
            self.call("remove a superseded container", self.docker.remove_container(id, Some(force_remove()))).await?;
        match removed {
            Ok(()) => {
                debug!(id, "removed a superseded start's container");
                Ok(())
            }
            Err(err) if status_of(&err) == Some(404) => Ok(()),
            Err(err) => Err(engine_error("remove a superseded container", err)),
        }
    }

    /// Removes the recorded container and any other container labelled with the workspace:
    /// a stop must leave nothing of it running.
    async fn stop(
        &self,
        workspace_id: Uuid,
        instance_ref: &str,
        keep_from_seq: Option<i64>,
    ) -> Result<(), BackendError> {
        let recorded =
            if instance_ref.is_empty() { Self::container_name(workspace_id) } else { instance_ref.to_owned() };
        let mut targets = vec![];
        let mut recorded_listed = false;
        if !workspace_id.is_nil() {
            let filters = HashMap::from([(
                "label",
                vec![
                    format!("{LABEL_WORKSPACE_ID}={workspace_id}"),
                    format!("{LABEL_PLATFORM}={}", self.settings.platform_id),
                ],
            )]);
            let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
            let labelled = self
                .call("list containers", self.docker.list_containers(Some(options)))
                .await?
                .map_err(|err| engine_error("list containers", err))?;
            // Another engine's container of the workspace is not ours to remove: that
            // engine's workers stop it.
            for c in labelled.into_iter().filter(|c| self.on_this_engine(c.labels.as_ref())) {
                // The recorded container is normally among the labelled ones: remove it once.
                let named = c.names.iter().flatten().any(|n| n.trim_start_matches('/') == recorded);
                recorded_listed |= named || c.id.as_deref() == Some(recorded.as_str());
                let made_by = c.labels.as_ref().map(start_order).unwrap_or_default().0;
                if kept(made_by, keep_from_seq) {
                    debug!(%workspace_id, container = ?c.id, made_by, "sparing a container this op or a later one made");
                    continue;
                }
                targets.extend(c.id);
            }
        }
        if !recorded_listed {
            targets.push(recorded);
        }
        for target in targets {
            debug!(%workspace_id, container = %target, "removing workspace container");
            let removed =
                self.call("remove the container", self.docker.remove_container(&target, Some(force_remove()))).await?;
            match removed {
                Ok(()) => {}
                Err(err) if status_of(&err) == Some(404) => debug!(container = %target, "container already gone"),
                Err(err) => return Err(engine_error("remove the container", err)),
            }
        }
        Ok(())
    }

    async fn status(&self, instance_ref: &str) -> Result<InstanceState, BackendError> {
        if instance_ref.is_empty() {
            return Ok(InstanceState::Missing);
        }
        let inspected = self.call("inspect the container", self.docker.inspect_container(instance_ref, None)).await?;
        let state = match inspected {
            Ok(info) => {
                if info.state.and_then(|s| s.running).unwrap_or(false) {
                    InstanceState::Running
                } else {
                    InstanceState::Stopped
                }
            }
            Err(err) if status_of(&err) == Some(404) => InstanceState::Missing,
            Err(err) => return Err(engine_error("inspect the container", err)),
        };
        debug!(container = instance_ref, ?state, "container status");
        Ok(state)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        // A probe must not hang for a whole call timeout on a half-dead engine.
        let bound = self.settings.call_timeout.min(PING_TIMEOUT);
        bounded(bound, "ping the Docker engine", self.docker.ping())
            .await?
            .map(|_| ())
            .map_err(|err| engine_error("ping the Docker engine", err))
    }

    async fn list_managed(&self) -> Result<Vec<ManagedInstance>, BackendError> {
        let filters = HashMap::from([(
            "label",
            vec![format!("{LABEL_MANAGED}=true"), format!("{LABEL_PLATFORM}={}", self.settings.platform_id)],
        )]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let containers = self
            .call("list containers", self.docker.list_containers(Some(options)))
            .await?
            .map_err(|err| engine_error("list containers", err))?;
        let instances: Vec<ManagedInstance> =
            containers.into_iter().filter(|c| self.on_this_engine(c.labels.as_ref())).map(managed_instance).collect();
        debug!(count = instances.len(), "listed managed containers");
        Ok(instances)
    }
}

/// `(op sequence, claim)` of the start that made a container; containers without the labels
/// (made before they existed) come before every labelled one.
fn start_order(labels: &HashMap<String, String>) -> (i64, i64) {
    let num = |key: &str| labels.get(key).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    (num(LABEL_OP_SEQ), num(LABEL_OP_LEASE))
}

fn managed_instance(container: ContainerSummary) -> ManagedInstance {
    let names = container.names.unwrap_or_default();
    // Legacy links add extra names such as "/other/alias"; the container's own name is
    // the one without an inner slash.
    let name = names
        .iter()
        .map(|n| n.trim_start_matches('/'))
        .find(|n| !n.contains('/'))
        .map(str::to_owned)
        .or(container.id)
        .unwrap_or_default();
    let workspace_id = container
        .labels
        .as_ref()
        .and_then(|labels| labels.get(LABEL_WORKSPACE_ID))
        .and_then(|value| Uuid::parse_str(value).ok());
    ManagedInstance {
        instance_ref: name,
        workspace_id,
        running: container.state == Some(ContainerSummaryStateEnum::RUNNING),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_use_the_full_uuid() {
        let id = Uuid::nil();
        assert_eq!(DockerBackend::container_name(id), "ws-00000000-0000-0000-0000-000000000000");
    }
}
