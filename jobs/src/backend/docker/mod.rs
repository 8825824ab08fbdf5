//! Runs each workspace as one container on a Docker engine. The container is named after
//! the workspace (`ws-<uuid>`), so the name itself is the idempotency key: a retried start
//! finds whatever an earlier attempt left behind and replaces it, and the engine's
//! name uniqueness guarantees there are never two.

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
    Backend, BackendError, BackendKind, InstanceState, LABEL_MANAGED, LABEL_PLATFORM, LABEL_WORKSPACE_ID,
    ManagedInstance, StartSpec, Started,
};
use archive::token_archive;
use engine::{bounded, engine_error, force_remove, is_no_such_image, status_of, vanished};
pub use settings::DockerSettings;
use token::CONFIG_DIR;

/// Prefix of every workspace container's name; shared so code outside this module that
/// looks containers up by name cannot drift from the names we create.
pub const CONTAINER_PREFIX: &str = "ws-";

/// Create attempts before giving up on a name that a concurrent start keeps re-taking.
const CREATE_ATTEMPTS: usize = 3;

pub struct DockerBackend {
    docker: Docker,
    settings: DockerSettings,
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
        debug!(api_version = %docker.client_version(), "connected to the Docker engine");
        Ok(Self { docker, settings })
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
        ]);
        let env = vec![
            format!("WORKSPACE_ID={}", spec.workspace_id),
            format!("PLATFORM_URL={}", spec.platform_url),
            format!("WORKSPACE_CONFIG_PATH={CONFIG_DIR}"),
            format!("TIER={tier}"),
            format!("MODEL={}", spec.model),
            format!("RUNTIME={}", spec.runtime),
            format!("HEARTBEAT_INTERVAL_SECONDS={}", spec.heartbeat_interval_secs),
        ];
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
    /// earlier or concurrent attempt left there. Returns the new container's id, which is
    /// used from here on so a concurrent replacement can never receive our token.
    async fn create_fresh(&self, name: &str, image: &str, body: &ContainerCreateBody) -> Result<String, BackendError> {
        for attempt in 1..=CREATE_ATTEMPTS {
            self.remove_leftover(name).await?;
            let options = CreateContainerOptionsBuilder::new().name(name).build();
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

    /// A leftover holds an older token and possibly an older spec, so it is replaced rather
    /// than reused.
    async fn remove_leftover(&self, name: &str) -> Result<(), BackendError> {
        let removed =
            self.call("remove the old container", self.docker.remove_container(name, Some(force_remove()))).await?;
        match removed {
            Ok(()) => {
                debug!(container = name, "removed leftover container");
                Ok(())
            }
            Err(err) if status_of(&err) == Some(404) => Ok(()),
            // Someone else is already removing it; the create that follows either succeeds
            // or conflicts and comes back here, within the attempt bound.
            Err(err) if status_of(&err) == Some(409) => {
                debug!(container = name, "leftover container already being removed");
                Ok(())
            }
            Err(err) => Err(engine_error("remove the old container", err)),
        }
    }

    async fn deliver_and_start(&self, id: &str, spec: &StartSpec) -> Result<(), BackendError> {
        if let Some(token) = &spec.token {
            let (uid, gid) = self.token_owner(id).await?;
            let archive = token_archive(token, uid, gid)
                .map_err(|err| BackendError::Permanent(format!("cannot package the workspace token: {err}")))?;
            // Rooted at `/` with a `configs/` entry so images need not ship the directory.
            let options = UploadToContainerOptionsBuilder::new().path("/").build();
            let uploaded = self
                .call(
                    "write the workspace token",
                    self.docker.upload_to_container(id, Some(options), bollard::body_full(archive.into())),
                )
                .await?;
            match uploaded {
                Ok(()) => debug!(id, uid, gid, "wrote workspace token"),
                Err(err) if status_of(&err) == Some(404) => return Err(vanished(id)),
                Err(err) => return Err(engine_error("write the workspace token", err)),
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
    async fn discard(&self, id: &str) {
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

    fn delivers_token(&self) -> bool {
        true
    }

    async fn start(&self, spec: &StartSpec) -> Result<Started, BackendError> {
        let image = self.settings.image_for(&spec.runtime)?;
        let name = Self::container_name(spec.workspace_id);
        debug!(
            workspace_id = %spec.workspace_id,
            op_id = %spec.op_id,
            container = %name,
            image,
            "starting workspace container"
        );
        let body = self.create_body(spec, image);
        let id = self.create_fresh(&name, image, &body).await?;
        if let Err(err) = self.deliver_and_start(&id, spec).await {
            self.discard(&id).await;
            return Err(err);
        }
        Ok(Started { instance_ref: name })
    }

    /// Removes the recorded container and any other container labelled with the workspace:
    /// a stop must leave nothing of it running.
    async fn stop(&self, workspace_id: Uuid, instance_ref: &str) -> Result<(), BackendError> {
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
            for c in labelled {
                // The recorded container is normally among the labelled ones: remove it once.
                let named = c.names.iter().flatten().any(|n| n.trim_start_matches('/') == recorded);
                recorded_listed |= named || c.id.as_deref() == Some(recorded.as_str());
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
        let instances: Vec<ManagedInstance> = containers.into_iter().map(managed_instance).collect();
        debug!(count = instances.len(), "listed managed containers");
        Ok(instances)
    }
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
