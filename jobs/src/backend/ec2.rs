//! EC2 backend (aws-sdk-ec2). One instance per workspace start, tagged so that inventory,
//! stop and the orphan sweep can always find it again, whatever the database says.
//!
//! Idempotency: before `RunInstances` we look for a live instance tagged with the op, and
//! `RunInstances` carries a `ClientToken` derived from the op. The tag check is what makes a
//! retried provision safe on emulators that ignore `ClientToken` (moto does).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use uuid::Uuid;

use super::{Backend, BackendError, BackendKind, InstanceState, ManagedInstance, StartSpec};
use crate::config::Ec2Config;

pub const TAG_WORKSPACE_ID: &str = "molecule:workspace_id";
pub const TAG_MANAGED: &str = "molecule:managed";
pub const TAG_PLATFORM: &str = "molecule:platform";
pub const TAG_OP_ID: &str = "molecule:op_id";

/// Service error codes worth retrying; everything else 4xx is a configuration problem.
const TRANSIENT_CODES: [&str; 7] = [
    "RequestLimitExceeded",
    "Throttling",
    "InternalError",
    "ServiceUnavailable",
    "Unavailable",
    "InsufficientInstanceCapacity",
    "IdempotentParameterMismatch",
];

const NOT_FOUND_CODES: [&str; 2] = ["InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"];

pub struct Ec2Backend {
    client: Client,
    config: Ec2Config,
    platform_id: String,
}

struct Found {
    id: String,
    state: String,
    workspace_id: Option<Uuid>,
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder().name(name).set_values(Some(values.iter().map(|v| v.to_string()).collect())).build()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn classify<E, R>(action: &str, err: SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown error");
            let msg = se.err().message().unwrap_or_default();
            let text = format!("{action}: {code}: {msg}");
            if TRANSIENT_CODES.contains(&code) { BackendError::Transient(text) } else { BackendError::Permanent(text) }
        }
        SdkError::ConstructionFailure(_) => BackendError::Permanent(format!("{action}: {}", DisplayErrorContext(&err))),
        _ => BackendError::Transient(format!("{action}: EC2 API unreachable: {}", DisplayErrorContext(&err))),
    }
}

fn is_not_found<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    matches!(err, SdkError::ServiceError(se) if se.err().code().is_some_and(|c| NOT_FOUND_CODES.contains(&c)))
}

impl Ec2Backend {
    /// Builds the client from the standard AWS chain (credentials, region), with the
    /// endpoint override when configured. Nothing is called until the first operation.
    pub async fn connect(config: Ec2Config, platform_id: String) -> Ec2Backend {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            )
            // Our ops retry durably with backoff; the SDK only smooths over a blip.
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let shared = loader.load().await;
        Ec2Backend { client: Client::new(&shared), config, platform_id }
    }

    async fn find(&self, filters: Vec<Filter>) -> Result<Vec<Found>, BackendError> {
        let mut out = vec![];
        let mut next: Option<String> = None;
        loop {
            let resp = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| classify("describe instances", e))?;
            for r in resp.reservations() {
                for i in r.instances() {
                    let Some(id) = i.instance_id() else { continue };
                    let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
                    let workspace_id = i
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(TAG_WORKSPACE_ID))
                        .and_then(|t| t.value())
                        .and_then(|v| Uuid::parse_str(v).ok());
                    out.push(Found { id: id.to_string(), state, workspace_id });
                }
            }
            match resp.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    fn ours(&self) -> Vec<Filter> {
        vec![
            filter(&format!("tag:{TAG_MANAGED}"), &["true"]),
            filter(&format!("tag:{TAG_PLATFORM}"), &[&self.platform_id]),
        ]
    }

    fn user_data(spec: &StartSpec) -> String {
        // The AMI ships the runtime as a systemd unit reading this file; the token is not
        // here: the agent obtains it through the register bootstrap.
        let script = format!(
            "#!/bin/sh\nset -eu\ncat > /etc/molecule-workspace.env <<'EOF'\nWORKSPACE_ID={}\nPLATFORM_URL={}\nRUNTIME={}\nMODEL={}\nTIER={}\nHEARTBEAT_INTERVAL_SECONDS={}\nEOF\nsystemctl enable --now molecule-workspace.service\n",
            spec.workspace_id, spec.platform_url, spec.runtime, spec.model, spec.tier, spec.heartbeat_interval_secs
        );
        STANDARD.encode(script)
    }

    async fn terminate(&self, ids: Vec<String>) -> Result<(), BackendError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self.client.terminate_instances().set_instance_ids(Some(ids)).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(classify("terminate instances", e)),
        }
    }
}

#[async_trait]
impl Backend for Ec2Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ec2
    }

    fn delivers_token(&self) -> bool {
        false
    }

    async fn start(&self, spec: &StartSpec) -> Result<super::Started, BackendError> {
        let op = spec.op_id.to_string();
        let mut live = self.ours();
        live.push(filter(&format!("tag:{TAG_OP_ID}"), &[&op]));
        live.push(filter("instance-state-name", &["pending", "running"]));
        if let Some(existing) = self.find(live).await?.into_iter().next() {
            tracing::info!(instance = %existing.id, "reusing the instance an earlier attempt of this op started");
            return Ok(super::Started { instance_ref: existing.id });
        }
        let ami = self.config.ami_id.as_deref().ok_or_else(|| {
            BackendError::Permanent("EC2_AMI_ID is not set: configure the image EC2 workspaces boot from".into())
        })?;
        let tier = spec.tier.clamp(1, 4) as usize;
        let ws = spec.workspace_id.to_string();
        let tags = vec![
            tag("Name", &format!("ws-{ws}")),
            tag(TAG_WORKSPACE_ID, &ws),
            tag(TAG_MANAGED, "true"),
            tag(TAG_PLATFORM, &self.platform_id),
            tag(TAG_OP_ID, &op),
        ];
        let resp = self
            .client
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::from(self.config.instance_types[tier - 1].as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(format!("{op}-{}", spec.attempt))
            .user_data(Self::user_data(spec))
            .tag_specifications(
                TagSpecification::builder().resource_type(ResourceType::Instance).set_tags(Some(tags)).build(),
            )
            .set_subnet_id(self.config.subnet_id.clone())
            .set_security_group_ids(
                (!self.config.security_group_ids.is_empty()).then(|| self.config.security_group_ids.clone()),
            )
            .send()
            .await
            .map_err(|e| classify("run instance", e))?;
        let id = resp
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| BackendError::Transient("run instance: the response named no instance".into()))?;
        tracing::info!(instance = id, "started EC2 instance");
        Ok(super::Started { instance_ref: id.to_string() })
    }

    /// Terminates the recorded instance and any other live instance tagged with the
    /// workspace: a stop must leave nothing of it running.
    async fn stop(&self, workspace_id: Uuid, instance_ref: &str) -> Result<(), BackendError> {
        if workspace_id.is_nil() {
            return self.terminate(vec![instance_ref.to_string()]).await;
        }
        let mut filters = self.ours();
        filters.push(filter(&format!("tag:{TAG_WORKSPACE_ID}"), &[&workspace_id.to_string()]));
        filters.push(filter("instance-state-name", &["pending", "running", "stopping", "stopped"]));
        let tagged: Vec<String> = self.find(filters).await?.into_iter().map(|f| f.id).collect();
        if !instance_ref.is_empty() && !tagged.iter().any(|t| t == instance_ref) {
            self.terminate(vec![instance_ref.to_string()]).await?;
        }
        self.terminate(tagged).await
    }

    async fn status(&self, instance_ref: &str) -> Result<InstanceState, BackendError> {
        if instance_ref.is_empty() {
            return Ok(InstanceState::Missing);
        }
        let resp = match self.client.describe_instances().instance_ids(instance_ref).send().await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(InstanceState::Missing),
            Err(e) => return Err(classify("describe instance", e)),
        };
        let state = resp
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()));
        Ok(match state.as_deref() {
            Some("pending" | "running") => InstanceState::Running,
            Some("stopping" | "stopped") => InstanceState::Stopped,
            _ => InstanceState::Missing,
        })
    }

    async fn list_managed(&self) -> Result<Vec<ManagedInstance>, BackendError> {
        let mut filters = self.ours();
        filters.push(filter("instance-state-name", &["pending", "running", "stopping", "stopped"]));
        Ok(self
            .find(filters)
            .await?
            .into_iter()
            .map(|f| ManagedInstance {
                running: matches!(f.state.as_str(), "pending" | "running"),
                instance_ref: f.id,
                workspace_id: f.workspace_id,
            })
            .collect())
    }
}
