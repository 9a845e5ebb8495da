//! The rollout driver: runs each Rollout's state machine ([`engine::rollout::step`]) on the
//! controller's state, carries out its effects (promotion, measurements, events), keeps its
//! status in the store after every transition, and wakes it when its next measurement or the
//! end of its pause is due.

use std::sync::Arc;
use std::time::Duration;

use analysis::ProviderSpec;
use engine::ServiceId;
use engine::rollout::{self, Command, Effect as RolloutEffect, Input, Observed, RolloutStatus};
use manifest::RevisionSelector;

use super::AuditAction;

use super::{AppState, Controller};
use crate::clock;

/// A reading that came back, for the rollout of `service` in Application `app`.
pub struct Measured {
    pub app: usize,
    pub service: ServiceId,
    pub input: Input,
}

impl Controller {
    /// Steps every rollout of Application `app` (with `input` for the one of `target`, a
    /// tick for the others), carries out the effects and stores the statuses. Sets each
    /// driven service's canary weight for reconcile. Returns why `input` was rejected, if it
    /// was a command that does not apply.
    pub(super) fn drive_rollouts(
        &self,
        app: usize,
        state: &mut AppState,
        target: Option<(&ServiceId, &Input)>,
        now_ms: i64,
    ) -> Option<String> {
        let now = now_ms / 1000;
        let mut rejected = None;
        let mut wake: Option<i64> = None;
        let specs = state.rollout_specs.clone();
        for spec in &specs {
            let id = &spec.service;
            let Some(desired) = state.desired.iter().find(|d| &d.id == id) else {
                continue;
            };
            let spec_hash = desired.spec_hash.clone();
            let live = state.live.services.get(id);
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
            let status = state.rollouts.get(id).cloned().unwrap_or_default();
            let t = rollout::step(spec, &status, observed, &input, now);
            if matches!(input, Input::Command(_)) {
                rejected = t.rejected.clone();
            }
            for effect in t.effects {
                match effect {
                    RolloutEffect::Promote { revision } => {
                        self.audit(
                            now_ms,
                            "controller",
                            AuditAction::RolledOut,
                            &id.to_string(),
                            serde_json::json!({"revision": revision, "rollout": spec.name}),
                        );
                        state
                            .live
                            .services
                            .entry(id.clone())
                            .or_default()
                            .rolled_out = Some(revision);
                    }
                    RolloutEffect::Measure {
                        run,
                        metric,
                        provider,
                        canary,
                        stable,
                    } => self.measure(app, id.clone(), run, metric, provider, canary, stable, now),
                    RolloutEffect::Event { kind, message } => {
                        tracing::info!(rollout = %spec.name, service = %id, ?kind, "{message}");
                        self.notifier.send(crate::notify::Event::new(
                            notification_name(kind),
                            &id.to_string(),
                            &message,
                            now_ms,
                            serde_json::json!({
                                "rollout": spec.name,
                                "canary": t.status.canary,
                                "stable": t.status.stable,
                                "weights": t.status.weights().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                            }),
                        ));
                        self.audit(
                            now_ms,
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
                let bytes = t.status.to_json();
                self.log_store(self.store.put_rollout(&id.namespace, &id.name, &bytes));
            }
            if let Some(d) = state.desired.iter_mut().find(|d| &d.id == id) {
                d.rollout_weight = manifest::Percent::new(
                    if t.status.canary.as_deref() == latest.as_ref().map(|(n, _)| n.as_str()) {
                        t.status.weight
                    } else {
                        0
                    },
                );
            }
            state.rollouts.insert(id.clone(), t.status);
        }
        state.rollout_wake = wake;
        self.rollout_wake.notify_one();
        rejected
    }

    /// Takes a reading in the background and hands it back to the rollout.
    #[allow(clippy::too_many_arguments)]
    fn measure(
        &self,
        app: usize,
        service: ServiceId,
        run: String,
        metric: String,
        provider: ProviderSpec,
        canary: String,
        stable: Option<String>,
        now: i64,
    ) {
        let tx = self.measured_tx.clone();
        let gateway = Arc::clone(&self.settings.gateway);
        let http = self.http.clone();
        tokio::spawn(async move {
            let reading = match &provider {
                ProviderSpec::Builtin(b) => {
                    let revision = match b.revision {
                        RevisionSelector::Canary => canary,
                        RevisionSelector::Stable => stable.unwrap_or(canary),
                    };
                    let seconds = b.window.as_secs().max(1);
                    let traffic = gateway
                        .summary(&service.to_string(), &revision, seconds)
                        .map(|s| analysis::builtin::Traffic {
                            seconds,
                            requests: s.requests,
                            ok: s.ok,
                            server_errors: s.server_errors,
                            latency: s.quantile(b.quantile),
                            mirrored: s.mirrored,
                            agreed: s.agreed,
                            mean_distance: s.mean_distance,
                        });
                    analysis::builtin::reading(b, &revision, traffic)
                }
                ProviderSpec::Prometheus {
                    address,
                    query,
                    timeout,
                } => analysis::providers::prometheus(&http.0, address, query, *timeout).await,
                ProviderSpec::Web {
                    url,
                    method,
                    headers,
                    body,
                    json_path,
                    timeout,
                    insecure,
                } => {
                    analysis::providers::web(
                        &http.0,
                        &http.1,
                        url,
                        *method,
                        headers,
                        body.as_deref(),
                        json_path.as_deref(),
                        *timeout,
                        *insecure,
                    )
                    .await
                }
            };
            let finished_at = clock::now_ms() / 1000;
            let _ = tx.send(Measured {
                app,
                service,
                input: Input::Measured {
                    run,
                    metric,
                    reading,
                    started_at: now,
                    finished_at,
                },
            });
        });
    }

    /// Runs the rollouts' clock: wakes each Application's rollouts when due, and feeds back
    /// readings as they come.
    pub(super) async fn rollout_loop(
        self: Arc<Self>,
        mut measured: tokio::sync::mpsc::UnboundedReceiver<Measured>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let now = clock::now_ms();
            let next = self
                .apps
                .iter()
                .filter_map(|s| s.state.lock().expect("state").rollout_wake)
                .min();
            let wait = next.map_or(Duration::from_secs(3600), |w| {
                Duration::from_millis((w * 1000 - now).clamp(0, 3_600_000) as u64)
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    let now = clock::now_ms();
                    for app in 0..self.apps.len() {
                        let due = self.apps[app]
                            .state
                            .lock()
                            .expect("state")
                            .rollout_wake
                            .is_some_and(|w| w * 1000 <= now);
                        if due {
                            self.step_app(app, None);
                        }
                    }
                }
                Some(m) = measured.recv() => {
                    self.step_app(m.app, Some((&m.service, &m.input)));
                }
                () = self.rollout_wake.notified() => {}
                _ = stop.changed() => break,
            }
        }
    }

    /// Drives the rollouts of one Application and applies what follows (traffic, routes).
    fn step_app(&self, app: usize, target: Option<(&ServiceId, &Input)>) -> Option<String> {
        let now = clock::now_ms();
        let rejected = {
            let mut state = self.apps[app].state.lock().expect("state");
            let rejected = self.drive_rollouts(app, &mut state, target, now);
            self.reconcile_only(app, &mut state, now);
            rejected
        };
        self.publish();
        rejected
    }

    /// The rollouts, with where each stands.
    pub fn rollouts(&self) -> Vec<(engine::rollout::RolloutSpec, RolloutStatus)> {
        let mut out = Vec::new();
        for slot in &self.apps {
            let state = slot.state.lock().expect("state");
            for spec in &state.rollout_specs {
                let status = state
                    .rollouts
                    .get(&spec.service)
                    .cloned()
                    .unwrap_or_default();
                out.push((spec.clone(), status));
            }
        }
        out
    }

    /// An operator's command to the rollout `name` (`name` or `namespace/name`). Recorded in
    /// the audit log with who and why.
    pub fn rollout_command(
        &self,
        namespace: Option<&str>,
        name: &str,
        command: Command,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<(engine::rollout::RolloutSpec, RolloutStatus), api::CommandError> {
        let found = self.apps.iter().enumerate().find_map(|(i, slot)| {
            let state = slot.state.lock().expect("state");
            state
                .rollout_specs
                .iter()
                .find(|s| name == s.name && namespace.is_none_or(|ns| ns == s.namespace))
                .map(|s| (i, s.service.clone()))
        });
        let Some((app, service)) = found else {
            return Err(api::CommandError::NotFound(format!("no rollout {name}")));
        };
        let input = Input::Command(command);
        if let Some(why) = self.step_app(app, Some((&service, &input))) {
            return Err(api::CommandError::Rejected(why));
        }
        self.audit(
            clock::now_ms(),
            actor,
            AuditAction::Command(command),
            &service.to_string(),
            serde_json::json!({"rollout": name, "reason": reason}),
        );
        self.rollouts()
            .into_iter()
            .find(|(s, _)| s.service == service)
            .ok_or_else(|| api::CommandError::NotFound(format!("no rollout {name}")))
    }
}

fn notification_name(kind: rollout::EventKind) -> &'static str {
    use rollout::EventKind::*;
    match kind {
        StepStarted => "rollout.step",
        Paused => "rollout.paused",
        Promoted => "rollout.promoted",
        Aborted => "rollout.aborted",
        AnalysisFinished => "analysis.succeeded",
        AnalysisFailed => "analysis.failed",
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
