//! Configuration from the environment. Every variable has a default where one is safe; a
//! malformed value stops the process at start with a message naming the variable. Each
//! section is read by its own function (or, for the sweeps, by the sweep's own module).

mod env;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use env::Env;

use crate::domain::AgentUrlPolicy;
use crate::sweeps::SweepSettings;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerMode {
    /// Use Docker when an engine answers a ping at start.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub database_max_connections: u32,
    pub api_addr: SocketAddr,
    pub admin_token: Option<String>,
    /// The URL agents are given to reach the api.
    pub platform_url: String,
    /// `PLATFORM_ID`: this deployment's id, labelled/tagged on every instance it starts.
    /// Inventory and the orphans sweep only look at instances of their own platform. Unset:
    /// the id created with the database (`store::platform::id`), so two deployments are
    /// never one platform by accident.
    pub platform_id: Option<String>,
    pub log_format: LogFormat,
    pub api: ApiConfig,
    pub worker: WorkerConfig,
    pub docker: DockerConfig,
    pub ec2: Ec2Config,
    pub sweeps: SweepSettings,
    /// How inbox items are pushed to push-mode agents.
    pub inbox: crate::inbox::PushSettings,
}

/// What the api accepts from agents.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub agent_urls: AgentUrlPolicy,
    /// Register and heartbeat calls per workspace: a bucket of `registry_burst` calls,
    /// refilled at `registry_per_second`.
    pub registry_burst: f64,
    pub registry_per_second: f64,
    /// `ORG_TOKEN_MINTS_PER_HOUR`: org tokens one client address may mint per hour.
    pub org_token_mints_per_hour: f64,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub concurrency: usize,
    /// `INBOX_CONCURRENCY`: workspaces whose inboxes this process pushes at once.
    pub inbox_concurrency: usize,
    /// apalis worker heartbeat; a worker silent for `heartbeat × missed_heartbeats` has its
    /// tasks rescued.
    pub heartbeat: Duration,
    pub missed_heartbeats: usize,
    pub poll_interval: Duration,
    /// `OP_LEASE_SECONDS`: how long a claim owns its op without renewing; the running
    /// handler renews it every third of this. A worker that dies is rescued after at most
    /// this long.
    pub op_lease: Duration,
    pub shutdown_grace: Duration,
    /// Multiplies every retry delay; below 1 shortens retries (tests), above 1 lengthens them.
    pub retry_delay_scale: f64,
    /// Test-only fault injection (`FAILPOINT_AFTER_START_SECONDS`): a provision pauses after
    /// the backend started the instance and before the outcome is recorded, so tests can
    /// kill a worker in the middle of a provision.
    pub failpoint_after_start: Option<Duration>,
    /// The newest task payload version this worker runs (`TASK_PAYLOAD_VERSION_MAX`,
    /// default the version it was built with). Newer tasks are left for newer workers.
    /// Only tests raise it, to stand in for a newer build during a rolling deploy.
    pub payload_version_max: u32,
}

#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub mode: DockerMode,
    pub network: Option<String>,
    /// Image per runtime (`WORKSPACE_IMAGE_<RUNTIME>`, runtime lower-cased, `_` → `-`).
    pub images: HashMap<String, String>,
    pub default_image: Option<String>,
    /// Per tier 1..=4: (memory bytes, CPU shares).
    pub tiers: [(i64, i64); 4],
    pub call_timeout: Duration,
    /// `DOCKER_PROBE_SECONDS`: how often the worker checks the engine still answers (or
    /// answers again).
    pub probe_every: Duration,
    /// `DOCKER_ENGINE_ID`: what this worker calls the engine it reaches; unset, the
    /// engine's own id. Workers on one host share it, workers on others must not.
    pub engine_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Ec2Config {
    /// `EC2_ENABLED`: new workspaces go to EC2. Existing EC2 workspaces are managed whenever
    /// EC2 is configured at all (see [`Config::ec2_reachable`]).
    pub enabled: bool,
    pub region: String,
    pub endpoint_url: Option<String>,
    pub ami_id: Option<String>,
    /// Instance type per tier 1..=4.
    pub instance_types: [String; 4],
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
}

impl Config {
    pub fn from_env() -> Result<Config> {
        Config::read(&Env::from_process())
    }

    pub fn read(env: &Env) -> Result<Config> {
        let api_addr_raw = env.string("API_ADDR", "127.0.0.1:8080");
        let api_addr =
            api_addr_raw.parse().map_err(|_| Error::Config(format!("API_ADDR={api_addr_raw:?} is not host:port")))?;
        let log_format = match env.string("LOG_FORMAT", "pretty").as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => return Err(Error::Config(format!("LOG_FORMAT={other:?} must be json or pretty"))),
        };
        Ok(Config {
            database_url: env.string("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/workspace_server"),
            database_max_connections: env.num("DATABASE_MAX_CONNECTIONS", 20)?,
            api_addr,
            admin_token: env.get("ADMIN_TOKEN"),
            platform_url: env.string("PLATFORM_URL", "http://127.0.0.1:8080").trim_end_matches('/').to_string(),
            platform_id: platform_id(env)?,
            log_format,
            api: ApiConfig::read(env, api_addr)?,
            worker: WorkerConfig::read(env)?,
            docker: DockerConfig::read(env)?,
            ec2: Ec2Config::read(env)?,
            sweeps: SweepSettings::from_env(env)?,
            inbox: crate::inbox::PushSettings::from_env(env)?,
        })
    }

    /// EC2 must stay reachable for workspaces already running there even when new ones go
    /// elsewhere: it is whenever it is enabled or an AMI or endpoint is configured.
    pub fn ec2_reachable(&self) -> bool {
        self.ec2.enabled || self.ec2.ami_id.is_some() || self.ec2.endpoint_url.is_some()
    }
}

fn platform_id(env: &Env) -> Result<Option<String>> {
    let Some(id) = env.get("PLATFORM_ID") else { return Ok(None) };
    if id.len() > 63 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(Error::Config(format!("PLATFORM_ID={id:?} must be ≤63 letters, digits, - or _")));
    }
    Ok(Some(id))
}

impl ApiConfig {
    fn read(env: &Env, api_addr: SocketAddr) -> Result<ApiConfig> {
        let registry_burst: f64 = env.num("REGISTRY_RATE_BURST", 10.0)?;
        if !(registry_burst.is_finite() && registry_burst >= 1.0) {
            return Err(Error::Config("REGISTRY_RATE_BURST must be at least 1".into()));
        }
        let registry_per_second: f64 = env.num("REGISTRY_RATE_PER_SECOND", 5.0)?;
        if !(registry_per_second.is_finite() && registry_per_second > 0.0) {
            return Err(Error::Config("REGISTRY_RATE_PER_SECOND must be a positive number".into()));
        }
        let org_token_mints_per_hour: f64 = env.num("ORG_TOKEN_MINTS_PER_HOUR", 10.0)?;
        if !(org_token_mints_per_hour.is_finite() && org_token_mints_per_hour >= 1.0) {
            return Err(Error::Config("ORG_TOKEN_MINTS_PER_HOUR must be at least 1".into()));
        }
        Ok(ApiConfig {
            agent_urls: AgentUrlPolicy::read(env, api_addr)?,
            registry_burst,
            registry_per_second,
            org_token_mints_per_hour,
        })
    }
}

impl WorkerConfig {
    fn read(env: &Env) -> Result<WorkerConfig> {
        let concurrency: usize = env.num("WORKER_CONCURRENCY", 8)?;
        if concurrency == 0 {
            return Err(Error::Config("WORKER_CONCURRENCY must be at least 1".into()));
        }
        let inbox_concurrency: usize = env.num("INBOX_CONCURRENCY", 16)?;
        if inbox_concurrency == 0 {
            return Err(Error::Config("INBOX_CONCURRENCY must be at least 1".into()));
        }
        let missed_heartbeats: usize = env.num("WORKER_MISSED_HEARTBEATS", 3)?;
        if missed_heartbeats == 0 {
            return Err(Error::Config("WORKER_MISSED_HEARTBEATS must be at least 1".into()));
        }
        let retry_delay_scale: f64 = env.num("RETRY_DELAY_SCALE", 1.0)?;
        if !(retry_delay_scale > 0.0 && retry_delay_scale <= 1000.0) {
            return Err(Error::Config("RETRY_DELAY_SCALE must be a positive number, at most 1000".into()));
        }
        let payload_version_max: u32 = env.num("TASK_PAYLOAD_VERSION_MAX", crate::queue::PAYLOAD_VERSION)?;
        if payload_version_max < crate::queue::PAYLOAD_VERSION {
            // Such a worker would pass every task it enqueues itself back to the queue.
            return Err(Error::Config(format!(
                "TASK_PAYLOAD_VERSION_MAX must be at least {}, the version this build writes",
                crate::queue::PAYLOAD_VERSION
            )));
        }
        Ok(WorkerConfig {
            concurrency,
            inbox_concurrency,
            heartbeat: env.secs("WORKER_HEARTBEAT_SECONDS", 5)?,
            missed_heartbeats,
            poll_interval: env.secs("WORKER_POLL_INTERVAL_SECONDS", 1)?,
            op_lease: env.secs("OP_LEASE_SECONDS", 15)?,
            shutdown_grace: env.secs("SHUTDOWN_GRACE_SECONDS", 30)?,
            retry_delay_scale,
            failpoint_after_start: env.opt_secs("FAILPOINT_AFTER_START_SECONDS")?,
            payload_version_max,
        })
    }
}

/// An image may be pinned by digest (`name@sha256:<64 hex>`); a malformed digest would only
/// fail at the first provision, so it stops the process at start instead.
fn check_image_reference(var: &str, image: &str) -> Result<()> {
    if image.trim().is_empty() {
        return Err(Error::Config(format!("{var} is empty; give an image reference")));
    }
    if let Some((_, digest)) = image.split_once('@') {
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::Config(format!(
                "{var}={image:?}: a pinned image must end in @sha256: and 64 lower-case hex digits"
            )));
        }
    }
    Ok(())
}

impl DockerConfig {
    fn read(env: &Env) -> Result<DockerConfig> {
        let raw = env.string("DOCKER_ENABLED", "auto");
        let mode = if raw.trim().eq_ignore_ascii_case("auto") {
            DockerMode::Auto
        } else {
            match env::parse_bool(&raw) {
                Some(true) => DockerMode::On,
                Some(false) => DockerMode::Off,
                None => return Err(Error::Config(format!("DOCKER_ENABLED={raw:?} must be auto, true or false"))),
            }
        };
        let images = env
            .with_prefix("WORKSPACE_IMAGE_")
            .filter(|(runtime, _)| *runtime != "DEFAULT")
            .map(|(runtime, image)| {
                check_image_reference(&format!("WORKSPACE_IMAGE_{runtime}"), image)?;
                Ok((runtime.to_ascii_lowercase().replace('_', "-"), image.to_string()))
            })
            .collect::<Result<_>>()?;
        let default_image = env.get("WORKSPACE_IMAGE_DEFAULT");
        if let Some(image) = &default_image {
            check_image_reference("WORKSPACE_IMAGE_DEFAULT", image)?;
        }
        let default_tiers: [(i64, i64); 4] = [(256, 512), (512, 1024), (2048, 2048), (4096, 4096)];
        let mut tiers = [(0i64, 0i64); 4];
        for (i, (mem, cpu)) in default_tiers.iter().enumerate() {
            let n = i + 1;
            let mem_mb: i64 = env.num(&format!("TIER{n}_MEMORY_MB"), *mem)?;
            let shares: i64 = env.num(&format!("TIER{n}_CPU_SHARES"), *cpu)?;
            if mem_mb < 6 || shares < 2 {
                return Err(Error::Config(format!("TIER{n}_MEMORY_MB must be ≥ 6 and TIER{n}_CPU_SHARES ≥ 2")));
            }
            tiers[i] = (mem_mb * 1024 * 1024, shares);
        }
        Ok(DockerConfig {
            mode,
            network: env.get("DOCKER_NETWORK"),
            images,
            default_image,
            tiers,
            call_timeout: env.secs("DOCKER_CALL_TIMEOUT_SECONDS", 60)?,
            probe_every: env.secs("DOCKER_PROBE_SECONDS", 10)?,
            engine_id: env.get("DOCKER_ENGINE_ID").map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()),
        })
    }
}

impl Ec2Config {
    fn read(env: &Env) -> Result<Ec2Config> {
        Ok(Ec2Config {
            enabled: env.flag("EC2_ENABLED", false)?,
            region: env.string("AWS_REGION", "us-east-1"),
            endpoint_url: env.get("AWS_ENDPOINT_URL"),
            ami_id: env.get("EC2_AMI_ID"),
            instance_types: [
                env.string("EC2_INSTANCE_TYPE_TIER1", "t3.small"),
                env.string("EC2_INSTANCE_TYPE_TIER2", "t3.medium"),
                env.string("EC2_INSTANCE_TYPE_TIER3", "t3.large"),
                env.string("EC2_INSTANCE_TYPE_TIER4", "t3.xlarge"),
            ],
            subnet_id: env.get("EC2_SUBNET_ID"),
            security_group_ids: env
                .get("EC2_SECURITY_GROUP_IDS")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_variable_and_sections_read_their_own() {
        let c = Config::read(&Env::from_pairs([
            ("WORKSPACE_IMAGE_CLAUDE_CODE", "cc:1"),
            ("WORKSPACE_IMAGE_DEFAULT", "base:1"),
            ("RETENTION_BATCH", "50"),
        ]))
        .unwrap();
        assert_eq!(c.worker.concurrency, 8);
        assert_eq!(c.docker.mode, DockerMode::Auto);
        assert_eq!(c.docker.images.get("claude-code").map(String::as_str), Some("cc:1"));
        assert_eq!(c.docker.default_image.as_deref(), Some("base:1"));
        assert_eq!(c.sweeps.retention.batch, 50);
        assert_eq!(c.sweeps.liveness.stale_after, Duration::from_secs(90));
        assert!(!c.ec2_reachable());
        assert_eq!(c.api.agent_urls, AgentUrlPolicy { allow_private: false, allow_loopback: true });
        assert_eq!((c.api.registry_burst, c.api.registry_per_second), (10.0, 5.0));
        assert_eq!(c.api.org_token_mints_per_hour, 10.0);
    }

    #[test]
    fn images_may_be_pinned_by_digest_and_a_bad_digest_stops_the_start() {
        let pinned = format!("registry.example/lg@sha256:{}", "a1".repeat(32));
        let c = Config::read(&Env::from_pairs([("WORKSPACE_IMAGE_LANGGRAPH", pinned.as_str())])).unwrap();
        assert_eq!(c.docker.images.get("langgraph"), Some(&pinned));
        for bad in ["lg@sha256:abc", "lg@md5:0123", &format!("lg@sha256:{}", "A1".repeat(32))] {
            let err = Config::read(&Env::from_pairs([("WORKSPACE_IMAGE_GEMINI_CLI", bad)])).unwrap_err().to_string();
            assert!(err.contains("WORKSPACE_IMAGE_GEMINI_CLI") && err.contains("sha256"), "{bad}: {err}");
        }
        let err = Config::read(&Env::from_pairs([("WORKSPACE_IMAGE_DEFAULT", "x@y")])).unwrap_err().to_string();
        assert!(err.contains("WORKSPACE_IMAGE_DEFAULT"), "{err}");
    }

    #[test]
    fn docker_and_ec2_switches_take_the_same_words() {
        let mode = |v: &str| Config::read(&Env::from_pairs([("DOCKER_ENABLED", v)])).unwrap().docker.mode;
        assert_eq!(mode("AUTO"), DockerMode::Auto);
        assert_eq!(mode("yes"), DockerMode::On);
        assert_eq!(mode("off"), DockerMode::Off);
        let ec2 = |v: &str| Config::read(&Env::from_pairs([("EC2_ENABLED", v)])).unwrap().ec2.enabled;
        assert!(ec2("on") && !ec2("0"));
    }

    #[test]
    fn the_docker_engine_id_is_optional_and_trimmed() {
        assert_eq!(Config::read(&Env::from_pairs([("DOCKER_ENGINE_ID", " ")])).unwrap().docker.engine_id, None);
        let c = Config::read(&Env::from_pairs([("DOCKER_ENGINE_ID", " host-a ")])).unwrap();
        assert_eq!(c.docker.engine_id.as_deref(), Some("host-a"));
    }

    #[test]
    fn a_malformed_value_names_its_variable() {
        for (k, v) in [
            ("RETENTION_BATCH", "0"),
            ("DOCKER_ENABLED", "maybe"),
            ("PLATFORM_ID", "a b"),
            ("AGENT_URL_ALLOW_PRIVATE", "perhaps"),
            ("REGISTRY_RATE_BURST", "0"),
            ("REGISTRY_RATE_PER_SECOND", "-1"),
            ("ORG_TOKEN_MINTS_PER_HOUR", "0"),
            ("TASK_PAYLOAD_VERSION_MAX", "0"),
        ] {
            let err = Config::read(&Env::from_pairs([(k, v)])).unwrap_err().to_string();
            assert!(err.contains(k), "{k}={v}: {err}");
        }
    }
}
