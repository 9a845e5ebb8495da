//! The rollouts of an Application: each Rollout's state machine ([`engine::rollout::step`])
//! run on the Application's state, its effects turned into the plan (promotion, measurements
//! to take, events), its status written whenever it changes, and its next wake-up kept.

use std::collections::{BTreeMap, BTreeSet};

use clock::Timestamp;
use engine::ServiceId;
use engine::rollout::{self, Command, Effect as RolloutEffect, Input, Observed, RolloutStatus};

use super::AuditAction;
use super::plan::{MeasureJob, Plan};
use super::state::AppState;
use crate::notify::{self, Kind};

impl AppState {
    /// Steps every rollout (with `input` for the one of `target`, a tick for the others) and
    /// sets each driven service's canary weight for reconcile. Returns why `input` was
    /// rejected, if it was a command that does not apply, and the services whose rollout
    /// moved (to reconcile).
    pub(super) fn drive_rollouts(
        &mut self,
        target: Option<(&ServiceId, &Input)>,
        now_ts: Timestamp,
        plan: &mut Plan,
    ) -> (Option<String>, BTreeSet<ServiceId>) {
        let now = now_ts.as_secs();
        let mut rejected = None;
        let mut touched = BTreeSet::new();
        let mut wake: Option<i64> = None;
        let specs = std::mem::take(&mut self.rollout_specs);
        for spec in &specs {
            let id = &spec.service;
            let Some(desired) = self.desired.get(id) else {
                continue;
            };
            let spec_hash = desired.spec_hash.clone();
            let live = self.live.services.get(id);
            let latest = live
                .and_then(|l| l.revisions.iter().find(|r| r.spec_hash == spec_hash))
                .map(|r| (r.name.clone(), r.state.clone()));
            let rolled_out = live.and_then(|l| l.rolled_out.clone());
            let observed = Observed {
                latest: latest.as_ref().map(|(n, s)| (n.as_str(), s)),
                rolled_out: rolled_out.as_deref(),
            };
            let input = match target {
                Some((t, input)) if t == id => input.clone(),
                _ => Input::Tick,
            };
            let status = self.rollouts.get(id).cloned().unwrap_or_default();
            let t = rollout::step(spec, &status, observed, &input, now);
            if matches!(input, Input::Command(_)) {
                rejected = t.rejected.clone();
            }
            for effect in t.effects {
                match effect {
                    RolloutEffect::Promote { revision } => {
                        plan.audit(
                            now_ts,
                            "controller",
                            AuditAction::RolledOut,
                            &id.to_string(),
                            serde_json::json!({"revision": revision, "rollout": spec.name}),
                        );
                        self.live.services.entry(id.clone()).or_default().rolled_out =
                            Some(revision);
                    }
                    RolloutEffect::Measure {
                        run,
                        metric,
                        provider,
                        canary,
                        stable,
                        run_started_at,
                    } => plan.measures.push(MeasureJob {
                        service: id.clone(),
                        run,
                        metric,
                        provider,
                        canary,
                        stable,
                        started_at: now,
                        run_started_at,
                    }),
                    RolloutEffect::Event { kind, message } => {
                        plan.logs.push((
                            tracing::Level::INFO,
                            format!("rollout {} ({id}): {message}", spec.name),
                        ));
                        plan.notices.push(notify::Event::new(
                            notification_kind(kind),
                            &id.to_string(),
                            &message,
                            now_ts,
                            serde_json::json!({
                                "rollout": spec.name,
                                "canary": t.status.canary,
                                "stable": t.status.stable,
                                "weights": t.status.weights().into_iter().collect::<BTreeMap<_, _>>(),
                            }),
                        ));
                        plan.audit(
                            now_ts,
                            "controller",
                            AuditAction::Rollout(kind),
                            &id.to_string(),
                            serde_json::json!({"rollout": spec.name, "message": message}),
                        );
                    }
                }
            }
            if let Some(w) = t.wake_at {
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
            if t.status != status {
                plan.writes.push(store::Write::Rollout {
                    namespace: id.namespace.clone(),
                    service: id.name.clone(),
                    status: t.status.to_json(),
                });
                self.mark_dirty(id.clone());
            }
            let weight = manifest::Percent::new(
                if t.status.canary.as_deref() == latest.as_ref().map(|(n, _)| n.as_str()) {
                    t.status.weight
                } else {
                    0
                },
            );
            if let Some(d) = self.desired.get_mut(id)
                && (d.rollout_weight != weight || t.status != status)
            {
                d.rollout_weight = weight;
                touched.insert(id.clone());
            }
            self.rollouts.insert(id.clone(), t.status);
        }
        self.rollout_specs = specs;
        self.rollout_wake = wake;
        (rejected, touched)
    }

    /// An operator's command to the rollout driving `service`, recorded in the audit log with
    /// who and why.
    pub(super) fn rollout_command(
        &mut self,
        service: &ServiceId,
        command: Command,
        actor: &str,
        reason: Option<String>,
        now: Timestamp,
        plan: &mut Plan,
    ) -> Result<Box<api::dto::Rollout>, api::CommandError> {
        let Some(spec) = self.rollout_specs.iter().find(|s| &s.service == service) else {
            return Err(api::CommandError::NotFound(format!(
                "no rollout drives {service}"
            )));
        };
        let name = spec.name.clone();
        let input = Input::Command(command);
        let (rejected, mut touched) = self.drive_rollouts(Some((service, &input)), now, plan);
        if let Some(why) = rejected {
            touched.insert(service.clone());
            self.reconcile(touched, now, plan);
            return Err(api::CommandError::Rejected(why));
        }
        plan.audit(
            now,
            actor,
            AuditAction::Command(command),
            &service.to_string(),
            serde_json::json!({"rollout": name, "reason": reason}),
        );
        touched.insert(service.clone());
        self.reconcile(touched, now, plan);
        let spec = self
            .rollout_specs
            .iter()
            .find(|s| &s.service == service)
            .ok_or_else(|| api::CommandError::NotFound(format!("no rollout {name}")))?;
        let status = self.rollouts.get(service).cloned().unwrap_or_default();
        Ok(Box::new(rollout_dto(spec, &status)))
    }

    /// The rollouts, with where each stands.
    pub(super) fn rollout_list(&self) -> Vec<(rollout::RolloutSpec, RolloutStatus)> {
        self.rollout_specs
            .iter()
            .map(|spec| {
                let status = self
                    .rollouts
                    .get(&spec.service)
                    .cloned()
                    .unwrap_or_default();
                (spec.clone(), status)
            })
            .collect()
    }
}

fn notification_kind(kind: rollout::EventKind) -> Kind {
    use rollout::EventKind::*;
    match kind {
        StepStarted => Kind::RolloutStep,
        Paused => Kind::RolloutPaused,
        Promoted => Kind::RolloutPromoted,
        Aborted => Kind::RolloutAborted,
        AnalysisFinished => Kind::AnalysisSucceeded,
        AnalysisFailed => Kind::AnalysisFailed,
    }
}

/// A rollout as the API shows it.
pub fn rollout_dto(
    spec: &engine::rollout::RolloutSpec,
    status: &RolloutStatus,
) -> api::dto::Rollout {
    use api::dto;
    use manifest::{Step, StringMatch};
    let time = |secs: i64| dto::rfc3339_millis(secs * 1000);
    let steps = spec
        .steps
        .iter()
        .map(|step| match step {
            Step::SetWeight(p) => format!("setWeight: {}", p.get()),
            Step::Pause(Some(d)) => format!("pause: {}s", d.as_secs()),
            Step::Pause(None) => "pause: until promoted".into(),
            Step::Analysis(a) => format!(
                "analysis: {}",
                a.templates
                    .iter()
                    .map(|t| t.template_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Step::SetHeaderRoute(r) => format!(
                "setHeaderRoute: {} ({})",
                r.name,
                r.matches
                    .iter()
                    .map(|m| {
                        let (how, v) = match &m.value {
                            StringMatch::Exact(v) => ("=", v),
                            StringMatch::Prefix(v) => ("^=", v),
                            StringMatch::Regex(v) => ("~", v),
                        };
                        format!("{}{how}{v}", m.header_name)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Step::SetMirrorRoute(r) => match r.percentage {
                Some(p) => format!("setMirrorRoute: {} {}%", r.name, p.get()),
                None => format!("setMirrorRoute: {} removed", r.name),
            },
        })
        .collect();
    let condition = |metric: &str, success: bool| {
        spec.templates
            .values()
            .flat_map(|t| &t.metrics)
            .find(|m| m.name == metric)
            .and_then(|m| {
                if success {
                    m.success_condition.as_ref()
                } else {
                    m.failure_condition.as_ref()
                }
            })
            .map(|c| c.source.clone())
    };
    let analysis_runs = status
        .all_runs()
        .map(|run| {
            let mut measurements: Vec<dto::Measurement> = run
                .metrics
                .iter()
                .flat_map(|m| {
                    m.measurements.iter().map(|x| dto::Measurement {
                        metric: m.name.clone(),
                        value: x.value.clone(),
                        phase: x.phase.to_string(),
                        started_at: time(x.started_at),
                        finished_at: time(x.finished_at),
                        message: x.message.clone(),
                    })
                })
                .collect();
            measurements.sort_by(|a, b| a.finished_at.cmp(&b.finished_at));
            dto::AnalysisRun {
                name: run.name.clone(),
                phase: run.phase.to_string(),
                message: run.message.clone(),
                started_at: time(run.started_at),
                measurements,
                metrics: run
                    .metrics
                    .iter()
                    .map(|m| dto::MetricResult {
                        name: m.name.clone(),
                        phase: m.phase.to_string(),
                        dry_run: m.dry_run,
                        success_condition: condition(&m.name, true),
                        failure_condition: condition(&m.name, false),
                    })
                    .collect(),
            }
        })
        .collect();
    dto::Rollout {
        name: spec.name.clone(),
        namespace: spec.namespace.clone(),
        service: spec.service.to_string(),
        phase: status.phase.as_str().to_owned(),
        message: status.message.clone(),
        current_step_index: status.step_index,
        step_count: spec.steps.len() as u32,
        steps,
        stable_revision: status.stable.clone(),
        canary_revision: status.canary.clone(),
        weights: status.weights().into_iter().collect(),
        header_routes: status
            .header_routes
            .iter()
            .map(|h| h.name.clone())
            .collect(),
        mirrors: status
            .mirrors
            .iter()
            .map(|m| (m.name.clone(), m.percent))
            .collect(),
        paused_since: status.pause_started_at.map(time),
        aborted: status.aborted.as_ref().map(|a| a.reason.clone()),
        analysis_runs,
    }
}
