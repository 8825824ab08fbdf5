//! Where workspaces run. Every backend answers the same four questions (start, stop,
//! status, inventory) so lifecycle jobs never test for one backend in particular: the
//! backend that started a workspace is recorded on its row and used for everything after.

pub mod docker;
pub mod ec2;

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Label/tag values shared by every backend, so inventory and orphan sweeps recognise ours.
pub const LABEL_WORKSPACE_ID: &str = "molecule.workspace_id";
pub const LABEL_MANAGED: &str = "molecule.platform.managed";
pub const LABEL_PLATFORM: &str = "molecule.platform.id";
/// The op whose start made the container, and that start's claim: with the op's sequence
/// number they order every start ever made, so a start never replaces a newer one's
/// container (the backend's own fence; the database's is the op lease).
pub const LABEL_OP_ID: &str = "molecule.op_id";
pub const LABEL_OP_SEQ: &str = "molecule.op_seq";
pub const LABEL_OP_LEASE: &str = "molecule.op_lease";
/// The Docker engine a container was made on (`DOCKER_ENGINE_ID`): each engine's orphan
/// sweep and stops see only their own engine's containers.
pub const LABEL_DOCKER_ENGINE: &str = "molecule.docker_engine";

/// Whether an instance made by op sequence `made_by` (0: unknown, older than all) is spared
/// by a stop keeping what ops from `keep_from_seq` on started.
pub fn kept(made_by: i64, keep_from_seq: Option<i64>) -> bool {
    keep_from_seq.is_some_and(|from| made_by >= from)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, Hash, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum BackendKind {
    Docker,
    Ec2,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Docker => "docker",
            BackendKind::Ec2 => "ec2",
        }
    }
}

/// What a backend needs to start one workspace.
#[derive(Debug, Clone)]
pub struct StartSpec {
    pub workspace_id: Uuid,
    /// The lifecycle op doing the start; backends that need an idempotency key derive it
    /// from this alone, so a rescued op adopts what its predecessor started.
    pub op_id: Uuid,
    /// The op's sequence number (`workspace_ops.seq`): later ops have higher ones.
    pub op_seq: i64,
    /// The claim of the op doing the start (`workspace_ops.lease`): later claims of the
    /// same op have higher ones.
    pub lease: i64,
    pub runtime: String,
    pub tier: i32,
    pub model: String,
    /// URL the agent uses to reach the platform (`PLATFORM_URL` in its environment).
    pub platform_url: String,
    /// The single-use bootstrap secret the agent registers with, written into the instance
    /// (`/configs/.auth_token`) before its agent starts.
    pub bootstrap_secret: String,
    /// How often the agent should heartbeat: a fraction of the staleness threshold, so one
    /// lost heartbeat never makes a workspace look dead.
    pub heartbeat_interval_secs: u64,
    /// Tell the agent to start a fresh session instead of resuming its last one
    /// (`RESET_SESSION=1` in its environment).
    pub reset_session: bool,
    /// The image the workspace is pinned to (what [`Started::image`] said last time); `None`
    /// takes the one configured now.
    pub image: Option<String>,
}

/// The reference a backend gives back for a started instance; stored on the workspace row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub instance_ref: String,
    /// What this start made and nothing else (a container id; for EC2 the instance, which
    /// every claim of the op shares), for [`Backend::discard`].
    pub made: String,
    /// The image the instance runs, as an immutable reference (Docker: the image's content
    /// id, whatever tag named it; EC2: the AMI). `None` leaves the recorded one as it is.
    pub image: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Running,
    Stopped,
    Missing,
}

/// One instance found by inventory, with the workspace its labels/tags name.
#[derive(Debug, Clone)]
pub struct ManagedInstance {
    pub instance_ref: String,
    /// `None` when the label/tag is missing or not a UUID.
    pub workspace_id: Option<Uuid>,
    pub running: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Worth retrying: the engine/API was unreachable, busy or answered 5xx.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (bad image, bad configuration); the message is shown to users.
    #[error("{0}")]
    Permanent(String),
    /// A newer start (a later op, or a later claim of this one) owns the instance: this
    /// start must not touch it.
    #[error("{0}")]
    Superseded(String),
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// The engine this backend drives, for backends that live on one host (Docker); its
    /// instances can only be reached through it.
    fn engine(&self) -> Option<&str> {
        None
    }

    /// Start the workspace's instance. Must be idempotent: a retried start finds and reuses
    /// or replaces the instance an earlier attempt made, never leaving two, and never
    /// replaces one a newer start made ([`BackendError::Superseded`]).
    async fn start(&self, spec: &StartSpec) -> Result<Started, BackendError>;

    /// Removes what a start made once its claim turned out to be superseded, unless other
    /// claims share it (an EC2 instance belongs to its op, which a rescue adopts): then it
    /// is left to the orphans sweep, which knows whether it is the recorded one.
    async fn discard(&self, started: &Started) -> Result<(), BackendError>;

    /// Stop and remove the instance, and every other instance labelled/tagged with the
    /// workspace (the nil id: the named instance only), except those made by ops whose
    /// sequence number is `keep_from_seq` or more: a stop or restart never removes what its
    /// own op or a later one started, however late the call comes (a retried restart keeps
    /// its own instance for adoption; a stale stop leaves its successor's). One that does
    /// not exist is success.
    async fn stop(
        &self,
        workspace_id: Uuid,
        instance_ref: &str,
        keep_from_seq: Option<i64>,
    ) -> Result<(), BackendError>;

    async fn status(&self, instance_ref: &str) -> Result<InstanceState, BackendError>;

    /// Every instance this backend runs for us (found by label/tag), running or not.
    async fn list_managed(&self) -> Result<Vec<ManagedInstance>, BackendError>;

    /// Whether the backend answers now (a cheap call, bounded in time).
    async fn ping(&self) -> Result<(), BackendError>;
}

/// The backends this process can reach. Selection for new instances happens here and only
/// here: EC2 when enabled, else Docker, else none.
///
/// The Docker slot changes while the worker runs: the engine is probed on a schedule, put in
/// when it answers and taken out when it stops answering, so a worker started while dockerd
/// was down picks it up, and one whose engine went away stops taking Docker work.
#[derive(Clone, Default)]
pub struct Backends {
    docker: Arc<RwLock<Option<Arc<dyn Backend>>>>,
    /// Reachable for the workspaces already on EC2 even when new ones go elsewhere.
    pub ec2: Option<Arc<dyn Backend>>,
    /// `EC2_ENABLED`: new instances go to EC2.
    pub ec2_for_new: bool,
}

impl Backends {
    /// Puts the Docker backend in (`Some`, the engine answers) or takes it out (`None`).
    pub fn set_docker(&self, docker: Option<Arc<dyn Backend>>) {
        // A poisoned lock only means a panic elsewhere mid-write of an Option: take it over.
        *self.docker.write().unwrap_or_else(|e| e.into_inner()) = docker;
    }

    pub fn docker(&self) -> Option<Arc<dyn Backend>> {
        self.docker.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn for_new_instance(&self) -> Option<Arc<dyn Backend>> {
        match (&self.ec2, self.ec2_for_new) {
            (Some(ec2), true) => Some(ec2.clone()),
            _ => self.docker(),
        }
    }

    /// The id of the Docker engine this process reaches now, if any.
    pub fn docker_engine(&self) -> Option<String> {
        self.docker().and_then(|d| d.engine().map(str::to_owned))
    }

    /// Every reachable backend, for inventory.
    pub fn all(&self) -> Vec<Arc<dyn Backend>> {
        self.ec2.iter().cloned().chain(self.docker()).collect()
    }

    /// The backend recorded on a workspace, whatever is configured for new ones.
    pub fn get(&self, kind: BackendKind) -> Option<Arc<dyn Backend>> {
        match kind {
            BackendKind::Docker => self.docker(),
            BackendKind::Ec2 => self.ec2.clone(),
        }
    }

    /// The backends new workspaces can be started on (what the api's 503 check needs), as
    /// reachable now.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec![];
        if self.ec2.is_some() && self.ec2_for_new {
            v.push(BackendKind::Ec2.as_str());
        }
        if self.docker().is_some() {
            v.push(BackendKind::Docker.as_str());
        }
        v
    }
}

/// Shown when a start is asked of a process with no backend at all.
pub const NO_BACKEND_MESSAGE: &str = "no provisioning backend is configured: start the worker where a Docker engine \
     is reachable (DOCKER_HOST, DOCKER_ENABLED) or enable EC2 (EC2_ENABLED=true with AWS_REGION and EC2_AMI_ID)";
