//! Configuration from the environment. Every variable has a default where one is safe; a
//! malformed value stops the process at start with a message naming the variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

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

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub database_max_connections: u32,
    pub api_addr: SocketAddr,
    pub admin_token: Option<String>,
    pub platform_url: String,
    pub worker_concurrency: usize,
    pub docker: DockerMode,
    pub docker_network: Option<String>,
    /// Image per runtime (`WORKSPACE_IMAGE_<RUNTIME>`, runtime lower-cased, `_` → `-`).
    pub images: HashMap<String, String>,
    pub default_image: Option<String>,
    /// Per tier 1..=4: (memory bytes, CPU shares).
    pub tiers: [(i64, i64); 4],
    pub docker_call_timeout: Duration,
    /// `PROVISION_TIMEOUT_SECONDS`: overrides every runtime's own timeout when set.
    pub provision_timeout_override: Option<Duration>,
    pub heartbeat_stale_after: Duration,
    pub sweep_provision_timeout_every: Duration,
    pub sweep_liveness_every: Duration,
    /// apalis worker heartbeat; a worker silent for `interval × missed` has its tasks rescued.
    pub worker_heartbeat: Duration,
    pub worker_missed_heartbeats: usize,
    pub worker_poll_interval: Duration,
    pub shutdown_grace: Duration,
    /// Multiplies every retry delay; below 1 shortens retries (tests), above 1 lengthens them.
    pub retry_delay_scale: f64,
    /// Test-only fault injection (`FAILPOINT_AFTER_START_SECONDS`): a provision pauses after
    /// the backend started the instance and before the outcome is recorded, so tests can
    /// kill a worker in the middle of a provision.
    pub failpoint_after_start: Option<Duration>,
    /// This deployment's id, labelled/tagged on every instance it starts. Inventory and the
    /// orphan sweep only look at instances of their own platform.
    pub platform_id: String,
    pub ec2: Ec2Config,
    pub sweep_orphans_every: Duration,
    pub sweep_retention_every: Duration,
    /// A live token of a workspace with no running instance is revoked after this long unused.
    pub stale_token_after: Duration,
    pub retention_jobs: Duration,
    pub retention_ops: Duration,
    pub retention_events: Duration,
    /// Rows deleted per statement by the retention sweep: small enough never to hold locks
    /// the queue's fetch waits on for long.
    pub retention_batch: i64,
    pub log_format: LogFormat,
}

impl Config {
    pub fn policies(&self) -> crate::lifecycle::Policies {
        crate::lifecycle::Policies { delay_scale: self.retry_delay_scale }
    }

    pub fn from_env() -> Result<Self> {
        // An empty variable counts as unset.
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let parse = |k: &str, default: &str| -> Result<String> { Ok(get(k).unwrap_or_else(|| default.to_string())) };
        fn num<T: FromStr>(get: &dyn Fn(&str) -> Option<String>, k: &str, default: T) -> Result<T> {
            match get(k) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| Error::Config(format!("{k}={v:?} is not a valid number"))),
            }
        }
        let secs = |k: &str, default: u64| -> Result<Duration> {
            let s: f64 = num(&get, k, default as f64)?;
            // Ten years bounds every period; beyond it Duration arithmetic would overflow.
            if !(s > 0.0 && s <= 315_360_000.0) {
                return Err(Error::Config(format!("{k} must be a positive number of seconds, at most ten years")));
            }
            Ok(Duration::from_secs_f64(s))
        };

        let api_addr_raw = parse("API_ADDR", "127.0.0.1:8080")?;
        let api_addr =
            api_addr_raw.parse().map_err(|_| Error::Config(format!("API_ADDR={api_addr_raw:?} is not host:port")))?;

        let docker = match parse("DOCKER_ENABLED", "auto")?.to_ascii_lowercase().as_str() {
            "auto" => DockerMode::Auto,
            "true" | "1" | "yes" | "on" => DockerMode::On,
            "false" | "0" | "no" | "off" => DockerMode::Off,
            other => return Err(Error::Config(format!("DOCKER_ENABLED={other:?} must be auto, true or false"))),
        };
        let log_format = match parse("LOG_FORMAT", "pretty")?.as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => return Err(Error::Config(format!("LOG_FORMAT={other:?} must be json or pretty"))),
        };

        let mut images = HashMap::new();
        for (k, v) in std::env::vars() {
            if let Some(rt) = k.strip_prefix("WORKSPACE_IMAGE_")
                && rt != "DEFAULT"
                && !v.trim().is_empty()
            {
                images.insert(rt.to_ascii_lowercase().replace('_', "-"), v);
            }
        }

        let default_tiers: [(i64, i64); 4] = [(256, 512), (512, 1024), (2048, 2048), (4096, 4096)];
        let mut tiers = [(0i64, 0i64); 4];
        for (i, (mem, cpu)) in default_tiers.iter().enumerate() {
            let n = i + 1;
            let mem_mb: i64 = num(&get, &format!("TIER{n}_MEMORY_MB"), *mem)?;
            let shares: i64 = num(&get, &format!("TIER{n}_CPU_SHARES"), *cpu)?;
            if mem_mb < 6 || shares < 2 {
                return Err(Error::Config(format!("TIER{n}_MEMORY_MB must be ≥ 6 and TIER{n}_CPU_SHARES ≥ 2")));
            }
            tiers[i] = (mem_mb * 1024 * 1024, shares);
        }

        let provision_timeout_override = match get("PROVISION_TIMEOUT_SECONDS") {
            None => None,
            Some(_) => Some(secs("PROVISION_TIMEOUT_SECONDS", 600)?),
        };

        let worker_concurrency: usize = num(&get, "WORKER_CONCURRENCY", 8)?;
        if worker_concurrency == 0 {
            return Err(Error::Config("WORKER_CONCURRENCY must be at least 1".into()));
        }
        let worker_missed_heartbeats: usize = num(&get, "WORKER_MISSED_HEARTBEATS", 3)?;
        if worker_missed_heartbeats == 0 {
            return Err(Error::Config("WORKER_MISSED_HEARTBEATS must be at least 1".into()));
        }

        Ok(Config {
            database_url: parse("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/workspace_server")?,
            database_max_connections: num(&get, "DATABASE_MAX_CONNECTIONS", 20)?,
            api_addr,
            admin_token: get("ADMIN_TOKEN"),
            platform_url: parse("PLATFORM_URL", "http://127.0.0.1:8080")?.trim_end_matches('/').to_string(),
            worker_concurrency,
            docker,
            docker_network: get("DOCKER_NETWORK"),
            images,
            default_image: get("WORKSPACE_IMAGE_DEFAULT"),
            tiers,
            docker_call_timeout: secs("DOCKER_CALL_TIMEOUT_SECONDS", 60)?,
            provision_timeout_override,
            heartbeat_stale_after: secs("HEARTBEAT_STALE_AFTER_SECONDS", 90)?,
            sweep_provision_timeout_every: secs("SWEEP_PROVISION_TIMEOUT_SECONDS", 30)?,
            sweep_liveness_every: secs("SWEEP_LIVENESS_SECONDS", 15)?,
            worker_heartbeat: secs("WORKER_HEARTBEAT_SECONDS", 5)?,
            worker_missed_heartbeats,
            worker_poll_interval: secs("WORKER_POLL_INTERVAL_SECONDS", 1)?,
            shutdown_grace: secs("SHUTDOWN_GRACE_SECONDS", 30)?,
            retry_delay_scale: {
                let f: f64 = num(&get, "RETRY_DELAY_SCALE", 1.0)?;
                if !(f > 0.0 && f <= 1000.0) {
                    return Err(Error::Config("RETRY_DELAY_SCALE must be a positive number, at most 1000".into()));
                }
                f
            },
            failpoint_after_start: match get("FAILPOINT_AFTER_START_SECONDS") {
                None => None,
                Some(_) => Some(secs("FAILPOINT_AFTER_START_SECONDS", 1)?),
            },
            platform_id: {
                let id = parse("PLATFORM_ID", "default")?;
                if id.len() > 63 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    return Err(Error::Config(format!("PLATFORM_ID={id:?} must be ≤63 letters, digits, - or _")));
                }
                id
            },
            ec2: Ec2Config {
                enabled: match parse("EC2_ENABLED", "false")?.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" => true,
                    "false" | "0" | "no" | "off" => false,
                    other => return Err(Error::Config(format!("EC2_ENABLED={other:?} must be true or false"))),
                },
                region: parse("AWS_REGION", "us-east-1")?,
                endpoint_url: get("AWS_ENDPOINT_URL"),
                ami_id: get("EC2_AMI_ID"),
                instance_types: [
                    parse("EC2_INSTANCE_TYPE_TIER1", "t3.small")?,
                    parse("EC2_INSTANCE_TYPE_TIER2", "t3.medium")?,
                    parse("EC2_INSTANCE_TYPE_TIER3", "t3.large")?,
                    parse("EC2_INSTANCE_TYPE_TIER4", "t3.xlarge")?,
                ],
                subnet_id: get("EC2_SUBNET_ID"),
                security_group_ids: get("EC2_SECURITY_GROUP_IDS")
                    .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                    .unwrap_or_default(),
            },
            sweep_orphans_every: secs("SWEEP_ORPHANS_SECONDS", 60)?,
            sweep_retention_every: secs("SWEEP_RETENTION_SECONDS", 3600)?,
            stale_token_after: secs("STALE_TOKEN_AFTER_SECONDS", 300)?,
            retention_jobs: secs("RETENTION_JOBS_SECONDS", 24 * 3600)?,
            retention_ops: secs("RETENTION_OPS_SECONDS", 30 * 24 * 3600)?,
            retention_events: secs("RETENTION_EVENTS_SECONDS", 30 * 24 * 3600)?,
            retention_batch: {
                let n: i64 = num(&get, "RETENTION_BATCH", 1000)?;
                if !(1..=100_000).contains(&n) {
                    return Err(Error::Config("RETENTION_BATCH must be between 1 and 100000".into()));
                }
                n
            },
            log_format,
        })
    }

    /// EC2 must stay reachable for workspaces already running there even when new ones go
    /// elsewhere: it is whenever it is enabled or an AMI or endpoint is configured.
    pub fn ec2_reachable(&self) -> bool {
        self.ec2.enabled || self.ec2.ami_id.is_some() || self.ec2.endpoint_url.is_some()
    }

    /// How long a workspace of this runtime may stay `provisioning` before the sweep fails it.
    pub fn provision_timeout(&self, runtime: &str) -> Duration {
        if let Some(d) = self.provision_timeout_override {
            return d;
        }
        match runtime {
            // hermes installs its toolchain on first boot.
            "hermes" => Duration::from_secs(30 * 60),
            _ => Duration::from_secs(10 * 60),
        }
    }
}
