//! Workspaces stuck in `provisioning` past their runtime's timeout become `failed`, with a
//! reason that says what to look at. The clock starts when the instance is started, not
//! when the request was queued: a backlog or a worker outage fails nothing.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use super::Report;
use crate::Result;
use crate::config::Env;
use crate::domain::Status;
use crate::store::{workspace_ops, workspaces};
use crate::transition;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `SWEEP_PROVISION_TIMEOUT_SECONDS`.
    pub every: Duration,
    /// `PROVISION_TIMEOUT_SECONDS`: overrides every runtime's own timeout when set.
    pub timeout_override: Option<Duration>,
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Settings> {
        Ok(Settings {
            every: env.secs("SWEEP_PROVISION_TIMEOUT_SECONDS", 30)?,
            timeout_override: env.opt_secs("PROVISION_TIMEOUT_SECONDS")?,
        })
    }

    /// How long a workspace of this runtime may stay `provisioning`.
    pub fn timeout(&self, runtime: &str) -> Duration {
        if let Some(d) = self.timeout_override {
            return d;
        }
        match runtime {
            // hermes installs its toolchain on first boot.
            "hermes" => Duration::from_secs(30 * 60),
            _ => Duration::from_secs(10 * 60),
        }
    }
}

/// `platform_url` is named in the reason: an agent that cannot reach it never registers.
pub async fn run(pool: &PgPool, settings: &Settings, platform_url: &str) -> Result<Report> {
    let mut failed = 0;
    for (id, runtime, since, started_for) in workspaces::provisioning(pool).await? {
        let timeout = settings.timeout(&runtime);
        if started_for < timeout {
            continue;
        }
        let mut tx = crate::db::begin(pool).await?;
        let Some(ws) = workspaces::lock(&mut tx, id).await? else { continue };
        // Re-check under the lock: the agent may have registered since the scan.
        if ws.status != Status::Provisioning || ws.status_changed_at != since {
            continue;
        }
        let secs = timeout.as_secs();
        // A start still retrying knows better than "the agent never called".
        let reason = match workspace_ops::last_start_error(&mut tx, id).await? {
            Some(e) => format!("provisioning timed out after {secs}s; the last start attempt failed: {e}"),
            None => format!(
                "provisioning timed out after {secs}s: the agent never called /registry/register; \
                 check the workspace's logs and that {platform_url} is reachable from it"
            ),
        };
        transition::set_status(
            &mut tx,
            &ws,
            Status::Failed,
            Some(&reason),
            json!({"timeout_secs": secs, "runtime": runtime, "source": "provision_timeout_sweep"}),
        )
        .await?;
        tx.commit().await?;
        failed += 1;
    }
    Ok(Report::new(format!("{failed} workspace(s) failed by timeout"), failed > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_have_their_own_timeout_unless_overridden() {
        let mut s = Settings { every: Duration::from_secs(30), timeout_override: None };
        assert_eq!(s.timeout("langgraph"), Duration::from_secs(600));
        assert_eq!(s.timeout("hermes"), Duration::from_secs(1800));
        s.timeout_override = Some(Duration::from_secs(3));
        assert_eq!(s.timeout("hermes"), Duration::from_secs(3));
    }
}
