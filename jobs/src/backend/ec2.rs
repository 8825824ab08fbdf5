//! EC2 backend (aws-sdk-ec2). One instance per workspace start, tagged so that inventory,
//! stop and the orphan sweep can always find it again, whatever the database says.
//!
//! Idempotency is keyed on the op alone, never on the claim: before `RunInstances` we look
//! for a live instance tagged with the op, and `RunInstances` carries the op id as its
//! `ClientToken`. A rescued op therefore adopts the instance its predecessor started. Where
//! `ClientToken` is not honoured (moto ignores it), a claim paused between its check and its
//! `RunInstances` can still start a second instance; every start therefore checks again
//! afterwards, and all claims keep the op's first-launched instance and terminate the rest.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, InstanceType, ResourceType, Tag, TagSpecification};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use uuid::Uuid;

use super::{Backend, BackendError, BackendKind, InstanceState, ManagedInstance, StartSpec, kept};
use crate::config::Ec2Config;

pub const TAG_WORKSPACE_ID: &str = "molecule:workspace_id";
pub const TAG_MANAGED: &str = "molecule:managed";
pub const TAG_PLATFORM: &str = "molecule:platform";
pub const TAG_OP_ID: &str = "molecule:op_id";
/// The op's sequence number: a stop keeps what its own op or a later one started.
pub const TAG_OP_SEQ: &str = "molecule:op_seq";

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
    /// (seconds, nanoseconds) since the epoch; orders the instances of one op.
    launched: (i64, u32),
    workspace_id: Option<Uuid>,
    op_seq: i64,
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
                    let tagged = |key: &str| i.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
                    out.push(Found {
                        id: id.to_string(),
                        state,
                        launched: i.launch_time().map(|t| (t.secs(), t.subsec_nanos())).unwrap_or((i64::MAX, 0)),
                        workspace_id: tagged(TAG_WORKSPACE_ID).and_then(|v| Uuid::parse_str(v).ok()),
                        op_seq: tagged(TAG_OP_SEQ).and_then(|v| v.parse().ok()).unwrap_or(0),
                    });
                }
            }
            match resp.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// The op's live instance, if it has any. Should claims of the op have started several,
    /// every claim keeps the same one (the first launched) and terminates the rest.
    async fn keep_one_of_op(&self, op: &str) -> Result<Option<String>, BackendError> {
        let mut live = self.ours();
        live.push(filter(&format!("tag:{TAG_OP_ID}"), &[op]));
        live.push(filter("instance-state-name", &["pending", "running"]));
        let mut found = self.find(live).await?;
        found.sort_by(|a, b| a.launched.cmp(&b.launched).then_with(|| a.id.cmp(&b.id)));
        let mut found = found.into_iter().map(|f| f.id);
        let Some(kept) = found.next() else { return Ok(None) };
        self.terminate(found.collect()).await?;
        Ok(Some(kept))
    }

    fn ours(&self) -> Vec<Filter> {
        vec![
            filter(&format!("tag:{TAG_MANAGED}"), &["true"]),
            filter(&format!("tag:{TAG_PLATFORM}"), &[&self.platform_id]),
        ]
    }

    fn user_data(spec: &StartSpec) -> String {
        // The AMI ships the runtime as a systemd unit reading this file. The bootstrap
        // secret goes where a container's goes; it is single-use and expires with the
        // provision timeout, so user data readable later on the instance holds nothing live.
        let script = format!(
            "#!/bin/sh\nset -eu\ncat > /etc/molecule-workspace.env <<'EOF'\nWORKSPACE_ID={}\nPLATFORM_URL={}\nRUNTIME={}\nMODEL={}\nTIER={}\nHEARTBEAT_INTERVAL_SECONDS={}\nWORKSPACE_CONFIG_PATH=/configs\n{}EOF\nmkdir -p /configs\n(umask 077 && printf '%s\\n' '{}' > /configs/.auth_token)\nsystemctl enable --now molecule-workspace.service\n",
            spec.workspace_id,
            spec.platform_url,
            spec.runtime,
            spec.model,
            spec.tier,
            spec.heartbeat_interval_secs,
            if spec.reset_session { "RESET_SESSION=1\n" } else { "" },
            spec.bootstrap_secret
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

    async fn start(&self, spec: &StartSpec) -> Result<super::Started, BackendError> {
        let op = spec.op_id.to_string();
        if let Some(existing) = self.keep_one_of_op(&op).await? {
            tracing::info!(instance = %existing, "reusing the instance an earlier attempt of this op started");
            // An earlier attempt of this same op launched it, from the AMI this one resolves.
            let image = spec.image.clone().or_else(|| self.config.ami_id.clone());
            return Ok(super::Started { instance_ref: existing.clone(), made: existing, image });
        }
        let ami = spec.image.as_deref().or(self.config.ami_id.as_deref()).ok_or_else(|| {
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
            tag(TAG_OP_SEQ, &spec.op_seq.to_string()),
        ];
        let resp = self
            .client
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::from(self.config.instance_types[tier - 1].as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(&op)
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
        let made = resp
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| BackendError::Transient("run instance: the response named no instance".into()))?
            .to_string();
        tracing::info!(instance = made, "started EC2 instance");
        // A claim that checked before ours but launched after it (paused in between) made
        // a second instance where ClientToken is not honoured: both claims keep the same one.
        let kept = self.keep_one_of_op(&op).await?.unwrap_or_else(|| made.clone());
        if kept != made {
            tracing::warn!(
                instance = kept,
                terminated = made,
                "another claim of this op started an instance first; adopting it"
            );
        }
        Ok(super::Started { instance_ref: kept, made, image: Some(ami.to_string()) })
    }

    /// Every claim of an op shares its instance (a rescue adopts it), so a superseded claim
    /// leaves it: the claim that superseded it records it, and an instance nobody records
    /// is reaped by the orphans sweep.
    async fn discard(&self, started: &super::Started) -> Result<(), BackendError> {
        tracing::debug!(instance = %started.made, "superseded start: the instance stays with its op");
        Ok(())
    }

    /// Terminates the recorded instance and any other live instance tagged with the
    /// workspace: a stop must leave nothing of it running.
    async fn stop(
        &self,
        workspace_id: Uuid,
        instance_ref: &str,
        keep_from_seq: Option<i64>,
    ) -> Result<(), BackendError> {
        if workspace_id.is_nil() {
            return self.terminate(vec![instance_ref.to_string()]).await;
        }
        let mut filters = self.ours();
        filters.push(filter(&format!("tag:{TAG_WORKSPACE_ID}"), &[&workspace_id.to_string()]));
        filters.push(filter("instance-state-name", &["pending", "running", "stopping", "stopped"]));
        let tagged = self.find(filters).await?;
        let recorded_tagged = tagged.iter().any(|t| t.id == instance_ref);
        let doomed: Vec<String> = tagged.into_iter().filter(|t| !kept(t.op_seq, keep_from_seq)).map(|t| t.id).collect();
        if !instance_ref.is_empty() && !recorded_tagged {
            self.terminate(vec![instance_ref.to_string()]).await?;
        }
        self.terminate(doomed).await
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

    async fn ping(&self) -> Result<(), BackendError> {
        self.client
            .describe_instances()
            .set_filters(Some(self.ours()))
            .max_results(5)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify("describe instances", e))
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
