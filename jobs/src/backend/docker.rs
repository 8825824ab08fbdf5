//! Runs each workspace as one container on a Docker engine. The container is named after
//! the workspace (`ws-<uuid>`), so the name itself is the idempotency key: a retried start
//! finds whatever an earlier attempt left behind and replaces it, and the engine's
//! name uniqueness guarantees there are never two.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::TryStreamExt;
use tracing::{debug, warn};
use uuid::Uuid;

use super::{
    Backend, BackendError, BackendKind, InstanceState, LABEL_MANAGED, LABEL_PLATFORM, LABEL_WORKSPACE_ID,
    ManagedInstance, StartSpec, Started,
};

/// Where the agent finds its configuration; the token lands here before the agent starts.
const CONFIG_DIR: &str = "/configs";
const TOKEN_FILE: &str = ".auth_token";

/// Create attempts before giving up on a name that a concurrent start keeps re-taking.
const CREATE_ATTEMPTS: usize = 3;

/// Cap on account files read back out of an image, so a strange image cannot make us
/// buffer without limit while we only want a uid.
const MAX_ACCOUNT_FILE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// Image per runtime name (e.g. "langgraph" -> "myimg:1"); looked up first.
    pub images: HashMap<String, String>,
    /// Fallback image when the runtime has no entry.
    pub default_image: Option<String>,
    /// Network mode or network name for containers ("host", "bridge", "mynet"); `None`
    /// leaves the engine's default.
    pub network: Option<String>,
    /// Per tier 1..=4: (memory bytes, cpu shares).
    pub tiers: [(i64, i64); 4],
    /// Applied to every engine call, so a wedged engine surfaces as a retryable error
    /// instead of a job that never finishes.
    pub call_timeout: Duration,
    /// This deployment's id (`PLATFORM_ID`), labelled on every container: inventory and the
    /// orphan sweep only ever see their own platform's containers on a shared engine.
    pub platform_id: String,
}

impl DockerSettings {
    fn image_for(&self, runtime: &str) -> Result<&str, BackendError> {
        self.images.get(runtime).or(self.default_image.as_ref()).map(String::as_str).ok_or_else(|| {
            BackendError::Permanent(format!(
                "no container image configured for runtime \"{runtime}\": set {} or WORKSPACE_IMAGE_DEFAULT",
                image_env_var(runtime)
            ))
        })
    }

    fn resources(&self, tier: i32) -> (i64, i64) {
        // Clamped first, so the index is always 0..=3.
        self.tiers[(tier.clamp(1, 4) - 1) as usize]
    }
}

/// The variable an operator sets to give `runtime` its own image.
fn image_env_var(runtime: &str) -> String {
    let suffix: String =
        runtime.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("WORKSPACE_IMAGE_{suffix}")
}

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
        format!("ws-{workspace_id}")
    }

    async fn call<T>(
        &self,
        action: &str,
        fut: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<Result<T, EngineError>, BackendError> {
        bounded(self.settings.call_timeout, action, fut).await
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

    /// The uid/gid the image runs as, so a 0600 token stays readable by a non-root agent.
    /// Resolves names the way the engine does, through the image's own passwd/group files.
    async fn token_owner(&self, id: &str) -> Result<(u64, u64), BackendError> {
        let inspected = self.call("inspect the container", self.docker.inspect_container(id, None)).await?;
        let info = match inspected {
            Ok(info) => info,
            Err(err) if status_of(&err) == Some(404) => return Err(vanished(id)),
            Err(err) => return Err(engine_error("inspect the container", err)),
        };
        let user = info.config.and_then(|c| c.user).unwrap_or_default();
        let user = user.trim();
        if user.is_empty() {
            return Ok((0, 0));
        }
        let (user_part, group_part) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let numeric_uid = user_part.parse::<u64>().ok();

        let account = if numeric_uid.is_none() || group_part.is_none() {
            self.read_file(id, "/etc/passwd").await?.and_then(|passwd| find_account(&passwd, user_part))
        } else {
            None
        };
        let uid = match (numeric_uid, account) {
            (Some(uid), _) => uid,
            (None, Some((uid, _))) => uid,
            (None, None) => {
                // Starting will fail on the same lookup and say so; who owns the token
                // no longer matters.
                warn!(id, user, "image user unknown; token left root-owned");
                return Ok((0, 0));
            }
        };
        let gid = match group_part {
            None => account.map(|(_, gid)| gid).unwrap_or(0),
            Some(group) => match group.parse::<u64>() {
                Ok(gid) => gid,
                Err(_) => {
                    let found = self.read_file(id, "/etc/group").await?.and_then(|groups| find_group(&groups, group));
                    found.unwrap_or_else(|| {
                        warn!(id, user, "image group not found in /etc/group; using gid 0");
                        0
                    })
                }
            },
        };
        Ok((uid, gid))
    }

    /// Reads one small text file from the container's filesystem; `None` when absent or
    /// not a regular file.
    async fn read_file(&self, id: &str, path: &str) -> Result<Option<String>, BackendError> {
        let options = DownloadFromContainerOptionsBuilder::new().path(path).build();
        let stream = self.docker.download_from_container(id, Some(options));
        let collect = async move {
            let mut stream = std::pin::pin!(stream);
            let mut archive = Vec::new();
            while let Some(chunk) = stream.try_next().await? {
                archive.extend_from_slice(&chunk);
                if archive.len() > MAX_ACCOUNT_FILE {
                    break;
                }
            }
            Ok(archive)
        };
        let archive = match self.call("read the image's account files", collect).await? {
            Ok(archive) => archive,
            Err(err) if status_of(&err) == Some(404) => return Ok(None),
            Err(err) => return Err(engine_error("read the image's account files", err)),
        };
        Ok(first_regular_file(&archive))
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

fn force_remove() -> bollard::query_parameters::RemoveContainerOptions {
    RemoveContainerOptionsBuilder::new().force(true).v(true).build()
}

async fn bounded<T>(
    timeout: Duration,
    action: &str,
    fut: impl Future<Output = Result<T, EngineError>>,
) -> Result<Result<T, EngineError>, BackendError> {
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        BackendError::Transient(format!("Docker engine did not answer within {timeout:?} while trying to {action}"))
    })
}

fn status_of(err: &EngineError) -> Option<u16> {
    match err {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Some engines report a missing image with a 5xx rather than a 404, so the message decides.
fn is_no_such_image(err: &EngineError) -> bool {
    match err {
        EngineError::DockerResponseServerError { message, .. } => {
            let message = message.to_ascii_lowercase();
            message.contains("no such image") || message.contains("image not known")
        }
        _ => false,
    }
}

fn vanished(id: &str) -> BackendError {
    BackendError::Transient(format!("container {} was removed while it was being started", short_id(id)))
}

fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Maps an engine error to the retry decision lifecycle jobs act on. Conflicts are
/// transient because they describe a state (removal in progress, name in use) that passes.
fn engine_error(action: &str, err: EngineError) -> BackendError {
    match err {
        EngineError::DockerResponseServerError { status_code, message } => {
            // Proxies and non-Docker endpoints answer with empty bodies; the status is
            // then all there is to show.
            let detail = match message.trim() {
                "" => format!("HTTP {status_code}"),
                message => message.to_owned(),
            };
            if status_code >= 500 || status_code == 409 || status_code == 429 {
                BackendError::Transient(format!("Docker engine could not {action}: {detail}"))
            } else {
                BackendError::Permanent(format!("Docker engine refused to {action}: {detail}"))
            }
        }
        EngineError::RequestTimeoutError => {
            BackendError::Transient(format!("Docker engine timed out trying to {action}"))
        }
        err @ (EngineError::IOError { .. }
        | EngineError::HyperResponseError { .. }
        | EngineError::HyperLegacyError { .. }
        | EngineError::SocketNotFoundError(_)
        | EngineError::DockerStreamError { .. }) => {
            BackendError::Transient(format!("cannot reach the Docker engine to {action}: {}", root_cause(&err)))
        }
        err => BackendError::Permanent(format!("Docker engine error trying to {action}: {err}")),
    }
}

/// Client errors wrap the useful part ("Connection refused") several layers down.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A tar archive, extracted at `/`, holding `configs/` and `configs/.auth_token` (0600),
/// both owned by the image's user.
fn token_archive(token: &str, uid: u64, gid: u64) -> std::io::Result<Vec<u8>> {
    let mtime = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let dir_name = CONFIG_DIR.trim_start_matches('/');
    let mut builder = tar::Builder::new(Vec::new());

    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(uid);
    dir.set_gid(gid);
    dir.set_mtime(mtime);
    dir.set_size(0);
    builder.append_data(&mut dir, format!("{dir_name}/"), std::io::empty())?;

    let mut file = tar::Header::new_gnu();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o600);
    file.set_uid(uid);
    file.set_gid(gid);
    file.set_mtime(mtime);
    file.set_size(token.len() as u64);
    builder.append_data(&mut file, format!("{dir_name}/{TOKEN_FILE}"), token.as_bytes())?;

    builder.into_inner()
}

/// The contents of the first entry of a (copy API) tar archive, if it is a regular file.
fn first_regular_file(archive: &[u8]) -> Option<String> {
    let mut archive = tar::Archive::new(archive);
    let mut entries = archive.entries().ok()?;
    let mut entry = entries.next()?.ok()?;
    if entry.header().entry_type() != tar::EntryType::Regular {
        return None;
    }
    let mut text = String::new();
    entry.by_ref().take(MAX_ACCOUNT_FILE as u64).read_to_string(&mut text).ok()?;
    Some(text)
}

/// `(uid, primary gid)` of the passwd entry whose name, or uid, is `user`.
fn find_account(passwd: &str, user: &str) -> Option<(u64, u64)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let uid = fields.nth(1)?;
        let gid = fields.next()?;
        if name == user || uid == user { Some((uid.parse().ok()?, gid.parse().ok()?)) } else { None }
    })
}

fn find_group(groups: &str, group: &str) -> Option<u64> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?;
        if name == group { gid.parse().ok() } else { None }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DockerSettings {
        DockerSettings {
            images: HashMap::from([("langgraph".to_owned(), "lg:1".to_owned())]),
            default_image: None,
            network: None,
            tiers: [(1, 10), (2, 20), (3, 30), (4, 40)],
            call_timeout: Duration::from_secs(5),
            platform_id: "unit".to_owned(),
        }
    }

    #[test]
    fn image_lookup_prefers_runtime_then_default() {
        let mut s = settings();
        assert_eq!(s.image_for("langgraph").unwrap(), "lg:1");
        let err = s.image_for("claude-code").unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "no container image configured for runtime \"claude-code\": set WORKSPACE_IMAGE_CLAUDE_CODE or WORKSPACE_IMAGE_DEFAULT"
        );
        s.default_image = Some("base:2".to_owned());
        assert_eq!(s.image_for("claude-code").unwrap(), "base:2");
        assert_eq!(s.image_for("langgraph").unwrap(), "lg:1");
    }

    #[test]
    fn tiers_are_clamped() {
        let s = settings();
        assert_eq!(s.resources(-3), (1, 10));
        assert_eq!(s.resources(1), (1, 10));
        assert_eq!(s.resources(3), (3, 30));
        assert_eq!(s.resources(99), (4, 40));
    }

    #[test]
    fn token_archive_holds_dir_and_private_file() {
        let bytes = token_archive("secret-token", 1000, 1001).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut body = String::new();
            entry.read_to_string(&mut body).unwrap();
            seen.push((
                path,
                header.entry_type(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                body,
            ));
        }
        assert_eq!(
            seen,
            vec![
                ("configs/".to_owned(), tar::EntryType::Directory, 0o755, 1000, 1001, String::new()),
                (
                    "configs/.auth_token".to_owned(),
                    tar::EntryType::Regular,
                    0o600,
                    1000,
                    1001,
                    "secret-token".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn accounts_resolve_by_name_or_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# comment\nagent:x:1001:1002::/home/agent:/bin/sh\n";
        assert_eq!(find_account(passwd, "agent"), Some((1001, 1002)));
        assert_eq!(find_account(passwd, "1001"), Some((1001, 1002)));
        assert_eq!(find_account(passwd, "nobody"), None);
        let groups = "root:x:0:\nagents:x:1002:agent\n";
        assert_eq!(find_group(groups, "agents"), Some(1002));
        assert_eq!(find_group(groups, "staff"), None);
    }

    #[test]
    fn engine_errors_are_classified() {
        let server = |status_code: u16, message: &str| EngineError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        };
        assert!(engine_error("x", server(500, "boom")).is_transient());
        assert!(engine_error("x", server(409, "removal in progress")).is_transient());
        assert!(!engine_error("x", server(400, "bad memory")).is_transient());
        assert_eq!(
            engine_error("ping the Docker engine", server(404, " ")).to_string(),
            "Docker engine refused to ping the Docker engine: HTTP 404"
        );
        assert!(engine_error("x", EngineError::RequestTimeoutError).is_transient());
        let io = EngineError::IOError { err: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused") };
        let err = engine_error("list containers", io);
        assert!(err.is_transient());
        assert_eq!(err.to_string(), "cannot reach the Docker engine to list containers: refused");
        assert!(is_no_such_image(&server(404, "No such image: foo:1")));
        assert!(is_no_such_image(&server(500, "no such image: foo:1")));
        assert!(!is_no_such_image(&server(404, "No such container: ws-1")));
    }

    #[test]
    fn container_names_use_the_full_uuid() {
        let id = Uuid::nil();
        assert_eq!(DockerBackend::container_name(id), "ws-00000000-0000-0000-0000-000000000000");
    }
}
