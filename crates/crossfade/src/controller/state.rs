//! The state of one Application and the decision on each event: [`AppState::handle`], pure
//! (no IO, no clock; time is an argument), so that a sequence of events gives the same plans
//! every time.
//!
//! # Invariants
//!
//! - Only the Application's task holds an `AppState`; nothing else reads or writes it. Readers
//!   get the [`AppView`](super::view::AppView) the task publishes after each event.
//! - Everything an event changed that a restart needs is in the plan's writes; the task
//!   carries out nothing else of a plan before those writes are committed.
//! - At most one fetch runs; sync requests that arrive meanwhile wait for the next one, so a
//!   request is never answered with a fetch that started before it.
//! - A revision that is not Ready never gets traffic (the engine's reconcile decides splits).
//! - Work per event is proportional to what it touched: reconcile runs for the services the
//!   event changed, not for every service of the Application.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use api::dto;
use clock::Timestamp;
use engine::{
    DesiredService, Effect, LiveRevision, LiveService, RevisionState, ServiceId, SyncPolicy,
};

use super::AuditAction;
use super::plan::{Answer, Event, Fetched, LoadJob, LoadedRevision, Plan, ReplyId};
use super::{Application, choose_runtime};
use crate::notify::{self, Kind};

/// What an Application's decisions depend on besides its state.
#[derive(Clone)]
pub struct Rules {
    pub app: Application,
    /// The repository as the mirror names it (the history's `repo`).
    pub repo: String,
    pub trust: Option<Arc<source::TrustedKeys>>,
    pub require_digest: bool,
    pub poll_interval: Duration,
}

/// A sync request waiting for its fetch.
#[derive(Debug, Clone)]
struct Waiter {
    trigger: api::Trigger,
    reply: Option<ReplyId>,
}

/// What one Application has seen and applied.
pub struct AppState {
    pub(super) rules: Rules,
    /// The commit serving now, with who signed it.
    pub(super) commit: Option<String>,
    pub(super) verified: bool,
    pub(super) signer: Option<String>,
    pub(super) last_sync_at: Option<Timestamp>,
    /// Why the newest commit is not serving, or why fetching fails.
    pub(super) error: Option<String>,
    /// The last commit examined (applied or refused), so that it is recorded once.
    pub(super) examined: Option<String>,
    /// Consecutive failures to fetch, for backoff.
    failures: u32,
    pub(super) desired: BTreeMap<ServiceId, DesiredService>,
    pub(super) live: engine::Live,
    pub(super) out_of_sync: BTreeMap<ServiceId, String>,
    /// Every revision each service ever had (retired ones too: numbers are never reused).
    pub(super) records: BTreeMap<ServiceId, Vec<store::RevisionRecord>>,
    /// Loaded revisions, by service and revision name.
    pub(super) loaded: BTreeMap<(ServiceId, String), Arc<gateway::Revision>>,
    /// The ServingRuntimes of the applied commit.
    pub(super) runtimes: Vec<manifest::ServingRuntime>,
    /// The Rollouts of the applied commit.
    pub(super) rollout_specs: Vec<engine::rollout::RolloutSpec>,
    /// Where each Rollout stands, by the service it drives.
    pub(super) rollouts: BTreeMap<ServiceId, engine::rollout::RolloutStatus>,
    /// When the rollouts want to be stepped next (Unix seconds).
    pub(super) rollout_wake: Option<i64>,
    /// The next poll (when no fetch runs).
    next_poll: Timestamp,
    /// The requests the running fetch answers (`None`: no fetch runs).
    fetching: Option<Vec<Waiter>>,
    /// Requests that came while a fetch ran: the next fetch is theirs.
    queued: Vec<Waiter>,
    /// Applied syncs whose callers wait for the new revisions to settle.
    settling: Vec<(ReplyId, dto::SyncResult)>,
    /// Whether a sync has reconciled every service since the start (a resumed state may hold
    /// services Git deleted while the process was down).
    reconciled_all: bool,
    /// The number of the parse ([`manifest::Changes::generation`]) the desired state was made
    /// from (0: none yet).
    applied_parse: u64,
    /// Services whose view changed since the last [`AppState::take_dirty`].
    dirty: BTreeSet<ServiceId>,
    /// The Application-level part of the view changed.
    dirty_source: bool,
    /// Values this state let go of whose drop takes a while (a commit's manifests, the last
    /// desired state): the task drops them off its thread.
    garbage: Vec<Box<dyn std::any::Any + Send>>,
}

impl AppState {
    /// A state with nothing applied yet; its first poll is due at `now`.
    pub fn new(rules: Rules, now: Timestamp) -> Self {
        Self {
            rules,
            commit: None,
            verified: false,
            signer: None,
            last_sync_at: None,
            error: None,
            examined: None,
            failures: 0,
            desired: BTreeMap::new(),
            live: engine::Live::default(),
            out_of_sync: BTreeMap::new(),
            records: BTreeMap::new(),
            loaded: BTreeMap::new(),
            runtimes: Vec::new(),
            rollout_specs: Vec::new(),
            rollouts: BTreeMap::new(),
            rollout_wake: None,
            next_poll: now,
            fetching: None,
            queued: Vec::new(),
            settling: Vec::new(),
            reconciled_all: false,
            applied_parse: 0,
            dirty: BTreeSet::new(),
            dirty_source: true,
            garbage: Vec::new(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Decides what `event` means at `now`.
    pub fn handle(&mut self, event: Event, now: Timestamp) -> Plan {
        let mut plan = Plan::default();
        match event {
            Event::Sync { trigger, reply } => {
                self.queued.push(Waiter { trigger, reply });
                self.start_fetch(&mut plan);
            }
            Event::Wake => {
                if self.fetching.is_none() && now >= self.next_poll {
                    self.queued.push(Waiter {
                        trigger: api::Trigger::Poll,
                        reply: None,
                    });
                    self.start_fetch(&mut plan);
                }
                if self
                    .rollout_wake
                    .is_some_and(|w| w * 1000 <= now.as_millis())
                {
                    let touched = self.drive_rollouts(None, now, &mut plan).1;
                    self.reconcile(touched, now, &mut plan);
                }
            }
            Event::Fetched(fetched) => self.fetched(fetched, now, &mut plan),
            Event::Loaded {
                service,
                revision,
                outcome,
            } => self.loaded(service, revision, outcome, now, &mut plan),
            Event::Measured { service, input } => {
                let touched = self
                    .drive_rollouts(Some((&service, &input)), now, &mut plan)
                    .1;
                self.reconcile(touched, now, &mut plan);
            }
            Event::SetTraffic {
                service,
                splits,
                actor,
                reply,
            } => {
                let answer = self.set_traffic(&service, &splits, &actor, now, &mut plan);
                plan.replies.push((reply, Answer::Traffic(answer)));
            }
            Event::Rollout {
                service,
                command,
                actor,
                reason,
                reply,
            } => {
                let answer =
                    self.rollout_command(&service, command, &actor, reason, now, &mut plan);
                plan.replies.push((reply, Answer::Rollout(answer)));
            }
        }
        self.answer_settled(&mut plan);
        plan.wake = self.next_wake();
        plan
    }

    /// The earliest of the next poll and the rollouts' wake-up.
    fn next_wake(&self) -> Option<Timestamp> {
        let poll = self.fetching.is_none().then_some(self.next_poll);
        let rollouts = self.rollout_wake.map(Timestamp::from_secs);
        match (poll, rollouts) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn start_fetch(&mut self, plan: &mut Plan) {
        if self.fetching.is_none() && !self.queued.is_empty() {
            self.fetching = Some(std::mem::take(&mut self.queued));
            plan.fetch = true;
        }
    }

    /// Whether some revision is still loading.
    pub fn has_pending(&self) -> bool {
        self.live
            .services
            .values()
            .flat_map(|s| &s.revisions)
            .any(|r| r.state == RevisionState::Pending)
    }

    /// Answers the syncs that waited for their revisions, once none is loading.
    fn answer_settled(&mut self, plan: &mut Plan) {
        if !self.settling.is_empty() && !self.has_pending() {
            for (reply, result) in self.settling.drain(..) {
                plan.replies.push((reply, Answer::Synced(result)));
            }
        }
    }

    /// The poll interval, or a shorter backoff after failures (1 s, 2 s, 4 s, ... up to the
    /// poll interval).
    fn poll_wait(&self) -> Duration {
        if self.failures == 0 {
            return self.rules.poll_interval;
        }
        Duration::from_secs(1u64 << self.failures.min(10)).min(self.rules.poll_interval)
    }

    fn fetched(&mut self, fetched: Result<Fetched, String>, now: Timestamp, plan: &mut Plan) {
        let waiters = self.fetching.take().unwrap_or_default();
        let manual = waiters.iter().any(|w| w.trigger == api::Trigger::Manual);
        let result = self.sync(fetched, manual, now, plan);
        if manual {
            self.retry_failed(plan);
        }
        self.dirty_source = true;
        self.next_poll = now + self.poll_wait();
        let why = waiters
            .iter()
            .map(|w| match &w.trigger {
                api::Trigger::Webhook(what) => format!("webhook: {what}"),
                other => other.as_str().to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        if result.outcome != dto::SyncOutcome::Unchanged {
            plan.logs.push((
                tracing::Level::INFO,
                format!(
                    "sync: {} (commit {}, {why}){}",
                    result.outcome,
                    result.commit.as_deref().map_or("-", super::short),
                    result
                        .message
                        .as_deref()
                        .map_or(String::new(), |m| format!(": {m}"))
                ),
            ));
        }
        for waiter in waiters {
            let Some(reply) = waiter.reply else { continue };
            // `crossfade sync` and `refresh` return once the revisions are Ready or Failed.
            let waits = matches!(waiter.trigger, api::Trigger::Manual | api::Trigger::Refresh);
            if waits && self.has_pending() {
                self.settling.push((reply, result.clone()));
            } else {
                plan.replies.push((reply, Answer::Synced(result.clone())));
            }
        }
        // Requests that came during the fetch get one of their own.
        self.start_fetch(plan);
    }

    /// `crossfade sync` tries again every desired revision that failed to load: what failed
    /// may have been the machine's (a runtime not installed, a claim not mapped, a registry
    /// down), which the operator has fixed since. The revision keeps its name.
    fn retry_failed(&mut self, plan: &mut Plan) {
        let failed: Vec<(ServiceId, String)> = self
            .desired
            .iter()
            .filter_map(|(id, want)| {
                let live = self.live.services.get(id)?;
                let rev = live.revisions.iter().find(|r| {
                    r.spec_hash == want.spec_hash && matches!(r.state, RevisionState::Failed { .. })
                })?;
                Some((id.clone(), rev.name.clone()))
            })
            .collect();
        for (id, name) in failed {
            let model = self.desired[&id].model.clone();
            if let Some(rev) = self
                .live
                .services
                .get_mut(&id)
                .and_then(|l| l.revisions.iter_mut().find(|r| r.name == name))
            {
                rev.state = RevisionState::Pending;
            }
            if let Some(r) = self
                .records
                .get_mut(&id)
                .and_then(|rs| rs.iter_mut().find(|r| r.name == name))
            {
                r.state = store::RevisionState::Pending;
                r.reason = None;
                plan.writes.push(store::Write::Revision(r.clone()));
            }
            plan.logs.push((
                tracing::Level::INFO,
                format!("{id}: revision {name} failed before; loading it again"),
            ));
            plan.loads.push(LoadJob {
                service: id.clone(),
                revision: name,
                format: model.format.name.clone(),
                uri: model.storage_uri.clone(),
                runtime: choose_runtime(&self.runtimes, &id.namespace, &model),
            });
        }
    }

    // --- sync: from a fetched commit to the desired state ---

    /// Turns what was read from Git into history, status and effects.
    fn sync(
        &mut self,
        fetched: Result<Fetched, String>,
        manual: bool,
        now: Timestamp,
        plan: &mut Plan,
    ) -> dto::SyncResult {
        let mut result = dto::SyncResult {
            application: self.rules.app.name.clone(),
            outcome: dto::SyncOutcome::Unchanged,
            commit: None,
            message: None,
        };
        let base = store::SyncRecord {
            seq: 0,
            time: now.as_millis(),
            repo: self.rules.repo.clone(),
            revision: self.rules.app.revision.clone(),
            outcome: store::SyncOutcome::Applied,
            ..store::SyncRecord::default()
        };
        let fetched = match fetched {
            Ok(f) => f,
            Err(message) => {
                self.failures += 1;
                // Each distinct failure is recorded once, not every retry.
                if self.error.as_deref() != Some(message.as_str()) {
                    record(
                        plan,
                        store::SyncRecord {
                            outcome: store::SyncOutcome::FetchFailed,
                            message: Some(message.clone()),
                            ..base
                        },
                    );
                }
                self.error = Some(message.clone());
                result.outcome = dto::SyncOutcome::FetchFailed;
                result.message = Some(message);
                return result;
            }
        };
        self.failures = 0;
        let id = fetched.info.id.clone();
        result.commit = Some(id.clone());
        let unchanged = self.examined.as_deref() == Some(id.as_str());
        let base = store::SyncRecord {
            commit: Some(id.clone()),
            author: Some(fetched.info.author.clone()),
            commit_time: Some(fetched.info.time),
            ..base
        };
        let signer = match self.rules.trust.as_deref().map(|t| t.verify(&fetched.info)) {
            None => None,
            Some(Ok(signer)) => Some(signer),
            Some(Err(rejection)) => {
                if !unchanged {
                    plan.audit(
                        now,
                        &format!("git:{id}"),
                        AuditAction::RejectCommit,
                        &self.rules.app.name,
                        serde_json::json!({"reason": rejection.to_string()}),
                    );
                }
                let refusal = Refusal {
                    outcome: store::SyncOutcome::Untrusted,
                    why: rejection.to_string(),
                    diagnostics: Vec::new(),
                    services: Vec::new(),
                };
                return self.refuse(refusal, base, unchanged, plan, result);
            }
        };
        let base = store::SyncRecord {
            signer: signer.as_ref().map(|s| s.identity.clone()),
            signer_key: signer.as_ref().map(|s| s.fingerprint.clone()),
            ..base
        };
        let parsed = match parse(&fetched) {
            Ok(parsed) => parsed,
            Err(refusal) => return self.refuse(refusal, base, unchanged, plan, result),
        };

        let is_new = self.commit.as_deref() != Some(id.as_str());
        if is_new && !self.rules.app.automated && !manual {
            let message = format!(
                "commit {} is available; the Application has no automated sync policy, so run `crossfade sync` to apply it",
                super::short(&id)
            );
            self.error = Some(message.clone());
            result.message = Some(message);
            return result;
        }
        let first = self.desired.is_empty();
        // The new desired state, and what differs from the last (`None`: compare them all).
        let (previous, changed) = self.next_desired(parsed);
        let mut touched: BTreeSet<ServiceId> = BTreeSet::new();
        if is_new || manual || first {
            let services: Vec<String> = self.desired.keys().map(ToString::to_string).collect();
            if !unchanged {
                record(
                    plan,
                    store::SyncRecord {
                        services: services.clone(),
                        ..base
                    },
                );
                plan.audit(
                    now,
                    &format!("git:{id}"),
                    AuditAction::Sync,
                    &self.rules.app.name,
                    serde_json::json!({
                        "commit": id,
                        "author": fetched.info.author,
                        "signer": signer.as_ref().map(|s| &s.identity),
                        "signerKey": signer.as_ref().map(|s| &s.fingerprint),
                        "services": services,
                    }),
                );
            }
            if is_new || manual {
                // A new commit, or an explicit sync, is the new truth: traffic set through the
                // API gives way (Argo CD syncs it whether or not selfHeal is on).
                for (id, svc) in &mut self.live.services {
                    if svc.overridden {
                        svc.overridden = false;
                        touched.insert(id.clone());
                    }
                }
            }
            self.commit = Some(id.clone());
            self.verified = signer.is_some();
            self.signer = signer.map(|s| s.identity);
            self.last_sync_at = Some(now);
        }
        self.examined = Some(id);
        self.error = None;
        self.runtimes = parsed
            .manifests
            .serving_runtimes
            .iter()
            .map(|r| r.value.clone())
            .collect();
        self.rollout_specs = engine::rollout::rollout_specs(&parsed.manifests);
        // A Rollout deleted from Git: its status goes too; the service keeps what it serves.
        let driven: BTreeSet<&ServiceId> = self.rollout_specs.iter().map(|r| &r.service).collect();
        let gone: Vec<ServiceId> = self
            .rollouts
            .keys()
            .filter(|id| !driven.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.rollouts.remove(&id);
            plan.writes.push(store::Write::RemoveRollout {
                namespace: id.namespace.clone(),
                service: id.name.clone(),
            });
            touched.insert(id);
        }
        let driven_now = self.drive_rollouts(None, now, plan).1;
        touched.extend(driven_now);
        // Drift is looked at on every sync: traffic set through the API (reverted with
        // selfHeal, reported without) and services reported out of sync before.
        touched.extend(
            self.live
                .services
                .iter()
                .filter(|(_, s)| s.overridden)
                .map(|(id, _)| id.clone()),
        );
        touched.extend(self.out_of_sync.keys().cloned());
        if self.reconciled_all
            && let Some(changed) = changed
        {
            touched.extend(changed);
        } else if self.reconciled_all {
            // What the commit changed: services added, removed or declared differently (both
            // maps are sorted: one walk over the two).
            let mut old = previous.iter().peekable();
            for (id, want) in &self.desired {
                while let Some((gone, _)) = old.next_if(|(o, _)| *o < id) {
                    touched.insert(gone.clone());
                }
                match old.next_if(|(o, _)| *o == id) {
                    Some((_, was)) if was == want => {}
                    _ => {
                        touched.insert(id.clone());
                    }
                }
            }
            touched.extend(old.map(|(gone, _)| gone.clone()));
        } else {
            touched.extend(self.desired.keys().cloned());
            touched.extend(self.live.services.keys().cloned());
            self.reconciled_all = true;
        }
        // The last desired state and the commit's files go at a low priority, off this task.
        self.garbage.push(Box::new(previous));
        self.garbage.push(Box::new(fetched));
        self.reconcile(touched, now, plan);
        result.outcome = if unchanged {
            dto::SyncOutcome::Unchanged
        } else {
            dto::SyncOutcome::Applied
        };
        result
    }

    /// Makes the desired state that of `parsed`. When `parsed` was compared with the parse
    /// applied last (its changes' base), only the services it changed are worked out again,
    /// and their ids come back; otherwise every service is, and the last desired state comes
    /// back to compare with.
    fn next_desired(
        &mut self,
        parsed: &manifest::Parsed,
    ) -> (
        BTreeMap<ServiceId, DesiredService>,
        Option<BTreeSet<ServiceId>>,
    ) {
        let changes = &parsed.changes;
        let manifests = &parsed.manifests;
        let drivers = engine::Drivers::new(manifests);
        let applied = std::mem::replace(&mut self.applied_parse, changes.generation);
        if changes.base == 0 || changes.base != applied || changes.rollouts {
            let desired = manifests
                .inference_services
                .iter()
                .map(|isvc| {
                    let d = engine::desired_service(&isvc.value, &drivers);
                    (d.id.clone(), d)
                })
                .collect();
            return (std::mem::replace(&mut self.desired, desired), None);
        }
        let mut changed = BTreeSet::new();
        let mut removed: BTreeMap<ServiceId, DesiredService> = BTreeMap::new();
        for (namespace, name) in &changes.removed_inference_services {
            let id = ServiceId::new(namespace, name);
            if let Some(was) = self.desired.remove(&id) {
                removed.insert(id, was);
            }
        }
        for &at in &changes.inference_services {
            let want = engine::desired_service(&manifests.inference_services[at].value, &drivers);
            // Declared as before (a file edited elsewhere): kept with the share its Rollout set.
            let keep = removed.remove(&want.id).filter(|was| {
                let same = DesiredService {
                    rollout_weight: was.rollout_weight,
                    ..want.clone()
                };
                same == *was
            });
            if keep.is_none() {
                changed.insert(want.id.clone());
            }
            self.desired.insert(want.id.clone(), keep.unwrap_or(want));
        }
        // Declared before and not any more.
        changed.extend(removed.into_keys());
        (BTreeMap::new(), Some(changed))
    }

    /// A commit that is not synced: recorded once, and the last good commit keeps serving.
    fn refuse(
        &mut self,
        refusal: Refusal,
        base: store::SyncRecord,
        unchanged: bool,
        plan: &mut Plan,
        mut result: dto::SyncResult,
    ) -> dto::SyncResult {
        let commit = base.commit.clone().unwrap_or_default();
        let message = super::refused(&commit, &refusal.why, self.commit.as_deref());
        // A commit examined before was recorded then.
        if !unchanged {
            record(
                plan,
                store::SyncRecord {
                    outcome: refusal.outcome,
                    message: Some(message.clone()),
                    diagnostics: refusal.diagnostics,
                    services: refusal.services,
                    ..base
                },
            );
            result.outcome = refusal.outcome.into();
        }
        self.examined = Some(commit);
        self.error = Some(message.clone());
        result.message = Some(message);
        result
    }

    // --- reconcile: from the desired state to effects ---

    /// Runs the engine's reconcile for `touched` and turns its effects into state changes and
    /// writes; stores the routing of every touched service that still exists.
    pub(super) fn reconcile(
        &mut self,
        touched: BTreeSet<ServiceId>,
        now: Timestamp,
        plan: &mut Plan,
    ) {
        let policy: SyncPolicy = self.rules.app.policy;
        for id in touched {
            let decision = engine::reconcile_one(
                &id,
                self.desired.get(&id),
                self.live.services.get(&id),
                policy,
            );
            self.out_of_sync.remove(&id);
            for effect in decision.effects {
                self.effect(effect, now, plan);
            }
            if let Some(live) = self.live.services.get(&id) {
                plan.writes.push(store::Write::Service(service_record(
                    &self.rules.app.name,
                    &id,
                    live,
                )));
            }
            self.dirty.insert(id);
        }
    }

    fn effect(&mut self, effect: Effect, now: Timestamp, plan: &mut Plan) {
        match effect {
            Effect::CreateRevision {
                service,
                spec_hash,
                model,
            } => {
                let records = self.records.entry(service.clone()).or_default();
                let record = match records.iter_mut().find(|r| r.spec_hash == spec_hash) {
                    Some(existing) => {
                        if existing.state == store::RevisionState::Retired {
                            existing.state = store::RevisionState::Pending;
                            plan.writes.push(store::Write::Revision(existing.clone()));
                        }
                        existing.clone()
                    }
                    None => {
                        let number = records.iter().map(|r| r.number).max().unwrap_or(0) + 1;
                        let r = store::RevisionRecord {
                            namespace: service.namespace.clone(),
                            service: service.name.clone(),
                            name: format!("{}-predictor-{number:05}", service.name),
                            number,
                            spec_hash: spec_hash.clone(),
                            storage_uri: model.storage_uri.raw.clone(),
                            model_format: model.format.name.clone(),
                            digest: None,
                            state: store::RevisionState::Pending,
                            reason: None,
                            created_at: now.as_millis(),
                        };
                        plan.writes.push(store::Write::Revision(r.clone()));
                        records.push(r.clone());
                        r
                    }
                };
                plan.audit(
                    now,
                    "controller",
                    AuditAction::CreateRevision,
                    &service.to_string(),
                    serde_json::json!({"revision": record.name, "storageUri": manifest::redact_uri(&record.storage_uri)}),
                );
                plan.loads.push(LoadJob {
                    service: service.clone(),
                    revision: record.name.clone(),
                    format: model.format.name.clone(),
                    uri: model.storage_uri.clone(),
                    runtime: choose_runtime(&self.runtimes, &service.namespace, &model),
                });
                let live = self.live.services.entry(service).or_default();
                live.revisions.push(LiveRevision {
                    name: record.name,
                    spec_hash,
                    state: RevisionState::Pending,
                });
            }
            Effect::SetTraffic {
                service,
                splits,
                tags,
            } => {
                let detail = serde_json::json!(
                    splits
                        .iter()
                        .map(|s| (s.revision.clone(), s.percent.get()))
                        .collect::<BTreeMap<_, _>>()
                );
                plan.audit(
                    now,
                    "controller",
                    AuditAction::SetTraffic,
                    &service.to_string(),
                    detail,
                );
                let live = self.live.services.entry(service).or_default();
                live.traffic = splits;
                live.overridden = false;
                live.tags = tags;
            }
            Effect::MarkRolledOut { service, revision } => {
                plan.audit(
                    now,
                    "controller",
                    AuditAction::RolledOut,
                    &service.to_string(),
                    serde_json::json!({"revision": revision}),
                );
                self.live.services.entry(service).or_default().rolled_out = Some(revision);
            }
            Effect::RetireRevision { service, revision } => {
                if let Some(records) = self.records.get_mut(&service) {
                    for r in records.iter_mut().filter(|r| r.name == revision) {
                        r.state = store::RevisionState::Retired;
                        plan.writes.push(store::Write::Revision(r.clone()));
                    }
                }
                plan.audit(
                    now,
                    "controller",
                    AuditAction::RetireRevision,
                    &service.to_string(),
                    serde_json::json!({"revision": revision}),
                );
                if let Some(live) = self.live.services.get_mut(&service) {
                    live.revisions.retain(|r| r.name != revision);
                }
                // Requests in flight keep their reference until they finish.
                self.loaded.remove(&(service, revision));
            }
            Effect::RemoveService { service } => {
                plan.writes.push(store::Write::RemoveService {
                    namespace: service.namespace.clone(),
                    name: service.name.clone(),
                });
                plan.audit(
                    now,
                    "controller",
                    AuditAction::RemoveService,
                    &service.to_string(),
                    serde_json::json!({"application": self.rules.app.name}),
                );
                self.live.services.remove(&service);
                self.loaded.retain(|(s, _), _| *s != service);
            }
            Effect::ReportOutOfSync { service, reason } => {
                self.out_of_sync.insert(service, reason);
            }
        }
    }

    // --- loads ---

    fn loaded(
        &mut self,
        service: ServiceId,
        revision: String,
        outcome: Result<LoadedRevision, String>,
        now: Timestamp,
        plan: &mut Plan,
    ) {
        let Some(live) = self.live.services.get(&service) else {
            return; // removed meanwhile; dropping the model unloads it
        };
        if !live.revisions.iter().any(|r| r.name == revision) {
            return; // retired meanwhile
        }
        // The revision that serves now, which the new one must stay compatible with.
        let rev_stable = live.rolled_out.clone().filter(|s| *s != revision);
        let outcome = outcome.and_then(|loaded| {
            let intended = self
                .desired
                .get(&service)
                .is_some_and(|d| d.signature_change);
            let stable = rev_stable.as_ref().and_then(|s| self.loaded.get(&(service.clone(), s.clone())));
            match (stable, intended) {
                (Some(stable), false) => match contract_broken(stable, &loaded.revision) {
                    Some(why) => Err(format!(
                        "its signature is not {}'s: {why}; clients of the stable revision would be refused (annotate the InferenceService `{}: intended` if the change is meant)",
                        rev_stable.as_deref().unwrap_or_default(),
                        engine::SIGNATURE_CHANGE
                    )),
                    None => Ok(loaded),
                },
                _ => Ok(loaded),
            }
        });
        let Some(rev) = self
            .live
            .services
            .get_mut(&service)
            .and_then(|l| l.revisions.iter_mut().find(|r| r.name == revision))
        else {
            return;
        };
        let record = self
            .records
            .get_mut(&service)
            .and_then(|rs| rs.iter_mut().find(|r| r.name == revision));
        match outcome {
            Ok(loaded) => {
                rev.state = RevisionState::Ready;
                plan.logs.push((
                    tracing::Level::INFO,
                    format!("{service}: revision {revision} ready ({})", loaded.digest),
                ));
                if let Some(r) = record {
                    r.state = store::RevisionState::Ready;
                    r.digest = Some(loaded.digest);
                    r.reason = None;
                    plan.writes.push(store::Write::Revision(r.clone()));
                }
                self.loaded
                    .insert((service.clone(), revision), loaded.revision);
            }
            Err(reason) => {
                plan.logs.push((
                    tracing::Level::WARN,
                    format!("{service}: revision {revision} failed: {reason}"),
                ));
                rev.state = RevisionState::Failed {
                    reason: reason.clone(),
                };
                if let Some(r) = record {
                    r.state = store::RevisionState::Failed;
                    r.reason = Some(reason);
                    plan.writes.push(store::Write::Revision(r.clone()));
                }
            }
        }
        let mut touched = self.drive_rollouts(None, now, plan).1;
        touched.insert(service);
        self.reconcile(touched, now, plan);
    }

    // --- commands ---

    /// Sets a split by hand. Every revision must be Ready; the percents must sum to 100.
    fn set_traffic(
        &mut self,
        id: &ServiceId,
        splits: &BTreeMap<String, u8>,
        actor: &str,
        now: Timestamp,
        plan: &mut Plan,
    ) -> Result<(), String> {
        let total: u32 = splits.values().map(|p| u32::from(*p)).sum();
        if total != 100 {
            return Err(format!("the percents sum to {total}, not 100"));
        }
        let Some(live) = self.live.services.get_mut(id) else {
            return Err(format!("no service {id}"));
        };
        let mut traffic = Vec::new();
        for (revision, pct) in splits {
            let Some(rev) = live.revisions.iter().find(|r| &r.name == revision) else {
                return Err(format!("{id} has no revision {revision}"));
            };
            if rev.state != RevisionState::Ready {
                return Err(format!("revision {revision} is not Ready"));
            }
            if *pct > 0 {
                traffic.push(engine::Split {
                    revision: revision.clone(),
                    percent: manifest::Percent::new(*pct).ok_or("a percent is over 100")?,
                });
            }
        }
        live.traffic = traffic;
        live.overridden = true;
        plan.writes.push(store::Write::Service(service_record(
            &self.rules.app.name,
            id,
            live,
        )));
        self.out_of_sync
            .insert(id.clone(), "traffic was changed through the API".into());
        plan.audit(
            now,
            actor,
            AuditAction::OverrideTraffic,
            &id.to_string(),
            serde_json::json!(splits),
        );
        plan.logs.push((
            tracing::Level::INFO,
            format!("{id}: traffic set through the API: {splits:?}"),
        ));
        self.dirty.insert(id.clone());
        Ok(())
    }

    // --- views ---

    /// The services whose view changed since the last call, and whether the Application's did.
    pub fn take_dirty(&mut self) -> (BTreeSet<ServiceId>, bool) {
        let source = std::mem::replace(&mut self.dirty_source, false);
        (std::mem::take(&mut self.dirty), source)
    }

    /// What to drop off the task's thread.
    pub fn take_garbage(&mut self) -> Vec<Box<dyn std::any::Any + Send>> {
        std::mem::take(&mut self.garbage)
    }

    pub(super) fn mark_dirty(&mut self, id: ServiceId) {
        self.dirty.insert(id);
    }
}

/// Why a commit is refused.
struct Refusal {
    outcome: store::SyncOutcome,
    why: String,
    diagnostics: Vec<String>,
    services: Vec<String>,
}

/// A commit's manifests, decoded and checked by the fetch, or why they are refused.
fn parse(fetched: &Fetched) -> Result<&manifest::Parsed, Refusal> {
    let invalid = |why: String, diagnostics, services| Refusal {
        outcome: store::SyncOutcome::Invalid,
        why,
        diagnostics,
        services,
    };
    let (sources, parsed) = match (&fetched.sources, &fetched.parsed) {
        (Err(e), _) => return Err(invalid(e.clone(), Vec::new(), Vec::new())),
        (Ok(_), None) => {
            return Err(invalid(
                "the manifests were not decoded".into(),
                Vec::new(),
                Vec::new(),
            ));
        }
        (Ok(s), Some(p)) => (s, p),
    };
    if !parsed.has_errors() {
        return Ok(parsed);
    }
    // Name the services the broken commit declares, for `history SERVICE`.
    let services = parsed
        .resources
        .iter()
        .filter(|r| r.kind == "InferenceService")
        .map(|r| format!("{}/{}", r.namespace.as_deref().unwrap_or("default"), r.name))
        .collect();
    Err(invalid(
        "its manifests have errors".to_owned(),
        super::render_diagnostics(sources, parsed),
        services,
    ))
}

/// A history entry and its notification.
fn record(plan: &mut Plan, record: store::SyncRecord) {
    let commit = record.commit.as_deref().map_or("-", super::short);
    let (kind, message) = match record.outcome {
        store::SyncOutcome::Applied => (Kind::SyncSucceeded, format!("applied commit {commit}")),
        other => (
            Kind::SyncFailed,
            record
                .message
                .clone()
                .unwrap_or_else(|| dto::SyncOutcome::from(other).to_string()),
        ),
    };
    plan.notices.push(notify::Event::new(
        kind,
        &record.repo,
        &message,
        Timestamp::from_millis(record.time),
        serde_json::json!({
            "commit": record.commit,
            "author": record.author,
            "signer": record.signer,
            "outcome": dto::SyncOutcome::from(record.outcome).as_str(),
            "diagnostics": record.diagnostics,
        }),
    ));
    plan.writes.push(store::Write::Sync(record));
}

/// A service's routing as stored.
pub(super) fn service_record(
    application: &str,
    id: &ServiceId,
    live: &LiveService,
) -> store::ServiceRecord {
    store::ServiceRecord {
        namespace: id.namespace.clone(),
        name: id.name.clone(),
        application: application.to_owned(),
        rolled_out: live.rolled_out.clone(),
        traffic: live
            .traffic
            .iter()
            .map(|s| (s.revision.clone(), s.percent.get()))
            .collect(),
        overridden: live.overridden,
    }
}

/// Why `canary` breaks the contract of `stable`, if it does: both signatures must be known
/// (an in-process model's always is; a model server's when its V2 metadata declares it).
fn contract_broken(stable: &gateway::Revision, canary: &gateway::Revision) -> Option<String> {
    if !stable.signature_known() || !canary.signature_known() {
        return None;
    }
    let broken = runtime::contract_breaks(
        (stable.inputs(), stable.outputs()),
        (canary.inputs(), canary.outputs()),
    );
    (!broken.is_empty()).then(|| broken.join("; "))
}
