//! Reconcile: from the desired state and the live state to effects, with Argo CD's sync policy
//! and KServe's canary semantics.
//!
//! # Flow
//!
//! For each desired service: make sure a revision exists for its spec, compute the traffic
//! split KServe would set, and compare it with the live split. For each live service Git no
//! longer declares: remove it (with `prune`) or report it out of sync.
//!
//! # Guarantees
//!
//! - Pure and deterministic: the same inputs give the same effects, in the same order.
//! - Idempotent: once the drivers have carried the effects out, reconciling again yields no
//!   traffic or revision effects.
//! - A revision that is not `Ready` never gets traffic; the last rolled-out revision keeps its
//!   share until the new one is Ready.
//! - Weights of a split always sum to 100, or the split is empty (nothing is ready).

use std::collections::BTreeMap;

use manifest::{ModelSpec, Percent};

use crate::{DesiredService, ServiceId};

/// Argo CD's `syncPolicy.automated` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncPolicy {
    /// Services deleted from Git are removed (otherwise they keep serving, out of sync).
    pub prune: bool,
    /// Traffic changed through the API is put back to what Git says.
    pub self_heal: bool,
}

/// What is running now, by service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    pub services: BTreeMap<ServiceId, LiveService>,
}

/// One service as it runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveService {
    /// Loaded (or loading, or failed) revisions, oldest first. Retired ones are left out.
    pub revisions: Vec<LiveRevision>,
    /// The last revision that was rolled out (KServe's "previous rolled-out revision").
    pub rolled_out: Option<String>,
    /// The current split.
    pub traffic: Vec<Split>,
    /// The split was last set through the API, not by reconcile.
    pub overridden: bool,
    /// The revisions the tags route to.
    pub tags: Tags,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRevision {
    pub name: String,
    pub spec_hash: String,
    pub state: RevisionState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevisionState {
    /// Being fetched, verified or loaded.
    Pending,
    /// Warmed up: may take traffic.
    Ready,
    /// Failed to fetch, verify or load: never takes traffic.
    Failed { reason: String },
}

/// A revision's share of a service's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub revision: String,
    pub percent: Percent,
}

/// Revisions reachable by tag (`latest-<name>`, `prev-<name>`) when tag routing is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub latest: Option<String>,
    pub prev: Option<String>,
}

/// Something for a driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Allocate (or find) the revision for this spec and load it.
    CreateRevision {
        service: ServiceId,
        spec_hash: String,
        model: ModelSpec,
    },
    /// Route the service's traffic.
    SetTraffic {
        service: ServiceId,
        splits: Vec<Split>,
        tags: Tags,
    },
    /// Record that `revision` is now the rolled-out one.
    MarkRolledOut {
        service: ServiceId,
        revision: String,
    },
    /// Unload a revision that neither serves nor backs a tag.
    RetireRevision {
        service: ServiceId,
        revision: String,
    },
    /// Drain and remove a service Git no longer declares (`prune`).
    RemoveService { service: ServiceId },
    /// Live and desired differ and reconcile will not change it: say why.
    ReportOutOfSync { service: ServiceId, reason: String },
}

/// The effects to carry out. Nothing is left for a timer: a revision that is loading is
/// announced by its load's result, which reconciles again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    pub effects: Vec<Effect>,
}

/// Computes the effects that bring `live` to `desired`.
pub fn reconcile(desired: &[DesiredService], live: &Live, policy: SyncPolicy) -> Decision {
    let mut decision = Decision::default();
    let declared: std::collections::BTreeSet<&ServiceId> = desired.iter().map(|d| &d.id).collect();
    for want in desired {
        merge(
            &mut decision,
            reconcile_one(&want.id, Some(want), live.services.get(&want.id), policy),
        );
    }
    for (id, have) in &live.services {
        if !declared.contains(id) {
            merge(&mut decision, reconcile_one(id, None, Some(have), policy));
        }
    }
    decision
}

/// The effects for one service: `want` is what Git declares (`None`: deleted from Git), `have`
/// what runs (`None`: nothing yet). [`reconcile`] is this over every service; a caller that
/// knows which services an event touched runs it for those only.
pub fn reconcile_one(
    id: &ServiceId,
    want: Option<&DesiredService>,
    have: Option<&LiveService>,
    policy: SyncPolicy,
) -> Decision {
    let mut decision = Decision::default();
    match (want, have) {
        (Some(want), have) => {
            let empty = LiveService::default();
            reconcile_service(want, have.unwrap_or(&empty), policy, &mut decision);
        }
        (None, Some(_)) => decision.effects.push(if policy.prune {
            Effect::RemoveService {
                service: id.clone(),
            }
        } else {
            Effect::ReportOutOfSync {
                service: id.clone(),
                reason: "deleted from Git; still serving because the sync policy does not prune"
                    .into(),
            }
        }),
        (None, None) => {}
    }
    decision
}

fn merge(into: &mut Decision, one: Decision) {
    into.effects.extend(one.effects);
}

fn reconcile_service(
    want: &DesiredService,
    have: &LiveService,
    policy: SyncPolicy,
    decision: &mut Decision,
) {
    let id = &want.id;
    let latest = have
        .revisions
        .iter()
        .find(|r| r.spec_hash == want.spec_hash);
    if latest.is_none() {
        decision.effects.push(Effect::CreateRevision {
            service: id.clone(),
            spec_hash: want.spec_hash.clone(),
            model: want.model.clone(),
        });
    }
    let rolled_out_any = have
        .rolled_out
        .as_deref()
        .and_then(|name| have.revisions.iter().find(|r| r.name == name));
    let rolled_out = rolled_out_any.filter(|r| r.state == RevisionState::Ready);
    let latest_ready = latest.filter(|r| r.state == RevisionState::Ready);
    // The rolled-out revision is loading again (after a restart): the split it had stands
    // until it is back, so that nothing is promoted or dropped on a loading order.
    if rolled_out_any.is_some_and(|r| r.state == RevisionState::Pending) {
        return;
    }

    // KServe: the new revision gets canaryTrafficPercent, the rolled-out one the rest. A
    // Rollout drives its service's canary share instead; until its steps run, the new
    // revision waits at 0% (the rollout state machine sets `rollout_weight`).
    let canary_percent = if want.rollout.is_some() {
        Some(want.rollout_weight.unwrap_or(Percent::ZERO))
    } else {
        want.canary_traffic_percent
    };
    let (splits, promote) = match (rolled_out, latest_ready) {
        // The first revision gets everything.
        (None, Some(l)) => (vec![split(&l.name, Percent::FULL)], true),
        (Some(r), Some(l)) if r.name == l.name => (vec![split(&l.name, Percent::FULL)], false),
        (Some(r), Some(l)) => match canary_percent {
            None | Some(Percent::FULL) => (vec![split(&l.name, Percent::FULL)], true),
            Some(Percent::ZERO) => (vec![split(&r.name, Percent::FULL)], false),
            Some(p) => (
                vec![
                    split(&r.name, Percent::new(100 - p.get()).expect("0..100")),
                    split(&l.name, p),
                ],
                false,
            ),
        },
        (Some(r), None) => (vec![split(&r.name, Percent::FULL)], false),
        (None, None) => (Vec::new(), false),
    };
    if promote && let Some(l) = latest_ready {
        decision.effects.push(Effect::MarkRolledOut {
            service: id.clone(),
            revision: l.name.clone(),
        });
    }
    let stable = if promote {
        latest_ready
    } else {
        rolled_out.or(latest_ready)
    };
    let tags = if want.tag_routing {
        Tags {
            latest: latest_ready.map(|l| l.name.clone()),
            prev: stable
                .filter(|s| latest_ready.is_some_and(|l| l.name != s.name))
                .map(|s| s.name.clone()),
        }
    } else {
        Tags::default()
    };

    if let Some(LiveRevision {
        name,
        state: RevisionState::Failed { reason },
        ..
    }) = latest
    {
        decision.effects.push(Effect::ReportOutOfSync {
            service: id.clone(),
            reason: format!("revision {name} failed and gets no traffic: {reason}"),
        });
    }

    if splits != have.traffic || tags != have.tags || (have.overridden && policy.self_heal) {
        if have.overridden && !policy.self_heal {
            decision.effects.push(Effect::ReportOutOfSync {
                service: id.clone(),
                reason: "traffic was changed through the API; kept because the sync policy does not self-heal".into(),
            });
        } else {
            decision.effects.push(Effect::SetTraffic {
                service: id.clone(),
                splits: splits.clone(),
                tags: tags.clone(),
            });
        }
    }

    // Keep what serves, what backs a tag, and what is loading; unload the rest.
    let keep = |name: &str| {
        splits.iter().any(|s| s.revision == name)
            || tags.prev.as_deref() == Some(name)
            || latest.is_some_and(|l| l.name == name)
            || (have.overridden
                && !policy.self_heal
                && have.traffic.iter().any(|s| s.revision == name))
            || stable.is_some_and(|s| s.name == name)
    };
    for r in &have.revisions {
        if !keep(&r.name) {
            decision.effects.push(Effect::RetireRevision {
                service: id.clone(),
                revision: r.name.clone(),
            });
        }
    }
}

fn split(revision: &str, percent: Percent) -> Split {
    Split {
        revision: revision.to_owned(),
        percent,
    }
}

#[cfg(test)]
mod tests;
