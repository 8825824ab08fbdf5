//! The workspace status machine (drawn in `docs/state-machine.md`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Status {
    Provisioning,
    Online,
    Offline,
    Degraded,
    Failed,
    Paused,
    AwaitingAgent,
    Removed,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Provisioning,
        Status::Online,
        Status::Offline,
        Status::Degraded,
        Status::Failed,
        Status::Paused,
        Status::AwaitingAgent,
        Status::Removed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Provisioning => "provisioning",
            Status::Online => "online",
            Status::Offline => "offline",
            Status::Degraded => "degraded",
            Status::Failed => "failed",
            Status::Paused => "paused",
            Status::AwaitingAgent => "awaiting_agent",
            Status::Removed => "removed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// `removed` is final; `paused` only leaves through resume (provisioning, or
    /// awaiting_agent for an external workspace, which is never started) or delete; only an
    /// agent brings a workspace `online`, which the callers of `Online` guarantee.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        match (self, to) {
            (Removed, _) => false,
            (_, Removed) => true,
            (Paused, Provisioning | AwaitingAgent) => true,
            (Paused, _) => false,
            (_, Paused) => true,
            (AwaitingAgent, Provisioning) => false,
            (_, Provisioning) => true,
            (_, Online) => true,
            (Online | Degraded, Offline | Degraded | AwaitingAgent) => true,
            (Provisioning | Online | Offline | Degraded | AwaitingAgent, Failed) => true,
            (Failed, Failed) => true,
            _ => false,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_is_final_and_paused_only_resumes() {
        for s in Status::ALL {
            assert!(!Status::Removed.can_become(s));
        }
        assert!(Status::Paused.can_become(Status::Provisioning));
        assert!(Status::Paused.can_become(Status::AwaitingAgent));
        assert!(!Status::Paused.can_become(Status::Online));
        assert!(Status::Online.can_become(Status::Paused));
    }

    #[test]
    fn text_round_trips() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!(s.as_str()));
        }
        assert_eq!(Status::parse("hibernating"), None);
    }
}
