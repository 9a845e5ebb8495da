//! What the audit log records: one action per entry, by a stable name. The names are a
//! contract of the hash-chained, user-facing log (add, never rename), listed in
//! ARCHITECTURE.md.

use engine::rollout::{Command, EventKind};

/// The action of an audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A commit's manifests became the desired state.
    Sync,
    /// A commit was refused (signature).
    RejectCommit,
    CreateRevision,
    RetireRevision,
    RemoveService,
    /// Traffic set by the reconcile.
    SetTraffic,
    /// Traffic set by hand through the API.
    OverrideTraffic,
    /// A revision became the one rolled out.
    RolledOut,
    /// Something a rollout did by itself.
    Rollout(EventKind),
    /// An operator's command to a rollout.
    Command(Command),
}

impl AuditAction {
    /// Every action with a name, for the contract test.
    #[cfg(test)]
    pub const ALL: [AuditAction; 18] = [
        Self::Sync,
        Self::RejectCommit,
        Self::CreateRevision,
        Self::RetireRevision,
        Self::RemoveService,
        Self::SetTraffic,
        Self::OverrideTraffic,
        Self::RolledOut,
        Self::Rollout(EventKind::StepStarted),
        Self::Rollout(EventKind::Paused),
        Self::Rollout(EventKind::Promoted),
        Self::Rollout(EventKind::Aborted),
        Self::Rollout(EventKind::AnalysisFinished),
        Self::Rollout(EventKind::AnalysisFailed),
        Self::Command(Command::Promote),
        Self::Command(Command::PromoteFull),
        Self::Command(Command::Abort),
        Self::Command(Command::Retry),
    ];

    /// The stable name, as the audit log holds it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::RejectCommit => "reject-commit",
            Self::CreateRevision => "create-revision",
            Self::RetireRevision => "retire-revision",
            Self::RemoveService => "remove-service",
            Self::SetTraffic => "set-traffic",
            Self::OverrideTraffic => "override-traffic",
            Self::RolledOut => "rolled-out",
            Self::Rollout(EventKind::StepStarted) => "rollout-step",
            Self::Rollout(EventKind::Paused) => "rollout-paused",
            Self::Rollout(EventKind::Promoted) => "rollout-promoted",
            Self::Rollout(EventKind::Aborted) => "rollout-aborted",
            Self::Rollout(EventKind::AnalysisFinished) => "rollout-analysis-succeeded",
            Self::Rollout(EventKind::AnalysisFailed) => "rollout-analysis-failed",
            Self::Command(Command::Promote) => "rollout-promote",
            Self::Command(Command::PromoteFull) => "rollout-promote-full",
            Self::Command(Command::Abort) => "rollout-abort",
            Self::Command(Command::Retry) => "rollout-retry",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names entries already in audit logs carry: changing one would make old entries
    /// mean something else.
    #[test]
    fn audit_action_names_are_the_ones_logs_already_hold() {
        let names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            names,
            [
                "sync",
                "reject-commit",
                "create-revision",
                "retire-revision",
                "remove-service",
                "set-traffic",
                "override-traffic",
                "rolled-out",
                "rollout-step",
                "rollout-paused",
                "rollout-promoted",
                "rollout-aborted",
                "rollout-analysis-succeeded",
                "rollout-analysis-failed",
                "rollout-promote",
                "rollout-promote-full",
                "rollout-abort",
                "rollout-retry",
            ]
        );
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "two actions share a name");
    }
}
