//! A delegation's status and the one rule it obeys: it only moves forward, and a terminal
//! status never changes.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum DelegationStatus {
    Queued,
    Dispatched,
    InProgress,
    Completed,
    Failed,
    Stuck,
}

/// What applying a status to a row comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The row has that status already: nothing is written.
    Same,
    Forward,
    /// Backward, or away from a terminal status.
    Refused,
}

impl DelegationStatus {
    pub const ALL: [DelegationStatus; 6] = [
        DelegationStatus::Queued,
        DelegationStatus::Dispatched,
        DelegationStatus::InProgress,
        DelegationStatus::Completed,
        DelegationStatus::Failed,
        DelegationStatus::Stuck,
    ];
    pub const IN_FLIGHT: [DelegationStatus; 3] =
        [DelegationStatus::Queued, DelegationStatus::Dispatched, DelegationStatus::InProgress];

    pub fn as_str(self) -> &'static str {
        match self {
            DelegationStatus::Queued => "queued",
            DelegationStatus::Dispatched => "dispatched",
            DelegationStatus::InProgress => "in_progress",
            DelegationStatus::Completed => "completed",
            DelegationStatus::Failed => "failed",
            DelegationStatus::Stuck => "stuck",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, DelegationStatus::Completed | DelegationStatus::Failed | DelegationStatus::Stuck)
    }

    fn rank(self) -> u8 {
        match self {
            DelegationStatus::Queued => 0,
            DelegationStatus::Dispatched => 1,
            DelegationStatus::InProgress => 2,
            _ => 3,
        }
    }

    /// The move from `self` to `to`. `stuck` is reached only from `in_progress`: a row
    /// that never started has no heartbeat to go stale, and waits for its deadline.
    pub fn to(self, to: DelegationStatus) -> Move {
        if self == to {
            Move::Same
        } else if self.is_terminal()
            || to.rank() <= self.rank()
            || (to == DelegationStatus::Stuck && self != DelegationStatus::InProgress)
        {
            Move::Refused
        } else {
            Move::Forward
        }
    }

    /// A status an agent may report with `update`.
    pub fn parse_reported(s: &str) -> Result<DelegationStatus> {
        match s {
            "in_progress" => Ok(DelegationStatus::InProgress),
            "completed" => Ok(DelegationStatus::Completed),
            "failed" => Ok(DelegationStatus::Failed),
            other => Err(Error::Invalid {
                field: "status",
                problem: format!("{other:?} is not one of in_progress, completed, failed"),
            }),
        }
    }
}

impl std::fmt::Display for DelegationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::DelegationStatus::*;
    use super::*;

    #[test]
    fn statuses_only_move_forward_and_terminal_ones_never_change() {
        assert_eq!(Queued.to(Dispatched), Move::Forward);
        assert_eq!(Queued.to(Completed), Move::Forward);
        assert_eq!(Dispatched.to(InProgress), Move::Forward);
        assert_eq!(InProgress.to(Stuck), Move::Forward);
        assert_eq!(Dispatched.to(Stuck), Move::Refused);
        assert_eq!(Queued.to(Stuck), Move::Refused);
        assert_eq!(InProgress.to(Dispatched), Move::Refused);
        for t in [Completed, Failed, Stuck] {
            assert_eq!(t.to(t), Move::Same);
            for other in DelegationStatus::ALL.into_iter().filter(|o| *o != t) {
                assert_eq!(t.to(other), Move::Refused, "{t} → {other}");
            }
        }
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
