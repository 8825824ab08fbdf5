//! Where workspaces run. Every backend answers the same four questions (start, stop,
//! status, inventory) so lifecycle jobs never test for one backend in particular: the
//! backend that started a workspace is recorded on its row and used for everything after.

pub mod docker;
pub mod ec2;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Label/tag values shared by every backend, so inventory and orphan sweeps recognise ours.
pub const LABEL_WORKSPACE_ID: &str = "molecule.workspace_id";
pub const LABEL_MANAGED: &str = "molecule.platform.managed";
pub const LABEL_PLATFORM: &str = "molecule.platform.id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, sqlx::Type)]
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
    /// The lifecycle op doing the start; backends that need an idempotency key derive it from this.
    pub op_id: Uuid,
    /// The claim (lease) of the op doing the start: a later claim of the same op may need a
    /// new instance (a restart's stop terminated the earlier one), so it needs a new token.
    pub attempt: i64,
    pub runtime: String,
    pub tier: i32,
    pub model: String,
    /// URL the agent uses to reach the platform (`PLATFORM_URL` in its environment).
    pub platform_url: String,
    /// Plaintext workspace token to hand to the agent, for backends that can write files
    /// into the instance before it starts (see [`Backend::delivers_token`]).
    pub token: Option<String>,
    /// How often the agent should heartbeat: a fraction of the staleness threshold, so one
    /// lost heartbeat never makes a workspace look dead.
    pub heartbeat_interval_secs: u64,
}

/// The reference a backend gives back for a started instance; stored on the workspace row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub instance_ref: String,
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
}

impl BackendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Whether `start` writes `StartSpec::token` into the instance. Backends that cannot
    /// (EC2) leave the agent to obtain its token through the register bootstrap.
    fn delivers_token(&self) -> bool;

    /// Start the workspace's instance. Must be idempotent: a retried start finds and reuses
    /// or replaces the instance an earlier attempt made, never leaving two.
    async fn start(&self, spec: &StartSpec) -> Result<Started, BackendError>;

    /// Stop and remove the instance, and every other instance labelled/tagged with the
    /// workspace (the nil id: the named instance only). One that does not exist is success.
    async fn stop(&self, workspace_id: Uuid, instance_ref: &str) -> Result<(), BackendError>;

    async fn status(&self, instance_ref: &str) -> Result<InstanceState, BackendError>;

    /// Every instance this backend runs for us (found by label/tag), running or not.
    async fn list_managed(&self) -> Result<Vec<ManagedInstance>, BackendError>;
}

/// The backends this process can reach. Selection for new instances happens here and only
/// here: EC2 when enabled, else Docker, else none.
#[derive(Clone, Default)]
pub struct Backends {
    pub docker: Option<std::sync::Arc<dyn Backend>>,
    /// Reachable for the workspaces already on EC2 even when new ones go elsewhere.
    pub ec2: Option<std::sync::Arc<dyn Backend>>,
    /// `EC2_ENABLED`: new instances go to EC2.
    pub ec2_for_new: bool,
}

impl Backends {
    pub fn for_new_instance(&self) -> Option<&std::sync::Arc<dyn Backend>> {
        match (&self.ec2, self.ec2_for_new) {
            (Some(ec2), true) => Some(ec2),
            _ => self.docker.as_ref(),
        }
    }

    /// Every reachable backend, for inventory.
    pub fn all(&self) -> impl Iterator<Item = &std::sync::Arc<dyn Backend>> {
        self.ec2.iter().chain(self.docker.iter())
    }

    /// The backend recorded on a workspace, whatever is configured for new ones.
    pub fn get(&self, kind: BackendKind) -> Option<&std::sync::Arc<dyn Backend>> {
        match kind {
            BackendKind::Docker => self.docker.as_ref(),
            BackendKind::Ec2 => self.ec2.as_ref(),
        }
    }

    /// The backends new workspaces can be started on (what the api's 503 check needs).
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = vec![];
        if self.ec2.is_some() && self.ec2_for_new {
            v.push(BackendKind::Ec2.as_str());
        }
        if self.docker.is_some() {
            v.push(BackendKind::Docker.as_str());
        }
        v
    }
}

/// Shown when a start is asked of a process with no backend at all.
pub const NO_BACKEND_MESSAGE: &str = "no provisioning backend is configured: start the worker where a Docker engine \
     is reachable (DOCKER_HOST, DOCKER_ENABLED) or enable EC2 (EC2_ENABLED=true with AWS_REGION and EC2_AMI_ID)";
