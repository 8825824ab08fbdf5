//! What an operator configures for the Docker backend, and the lookups that turn a
//! workspace's runtime and tier into an image and resource limits.

use std::collections::HashMap;
use std::time::Duration;

use crate::backend::BackendError;

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
    /// `DOCKER_ENGINE_ID`: the name this engine goes by among workers on several hosts;
    /// `None` takes the engine's own id (`docker info`).
    pub engine_id: Option<String>,
}

impl DockerSettings {
    pub(super) fn image_for(&self, runtime: &str) -> Result<&str, BackendError> {
        self.images.get(runtime).or(self.default_image.as_ref()).map(String::as_str).ok_or_else(|| {
            BackendError::Permanent(format!(
                "no container image configured for runtime \"{runtime}\": set {} or WORKSPACE_IMAGE_DEFAULT",
                image_env_var(runtime)
            ))
        })
    }

    pub(super) fn resources(&self, tier: i32) -> (i64, i64) {
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
            engine_id: None,
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
}
