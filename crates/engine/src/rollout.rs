//! The rollout state machine: Argo Rollouts' canary strategy for an InferenceService, as one
//! pure function.
//!
//! [`step`] takes the Rollout (steps, analysis, templates), its status, what is loaded, one
//! input (time passing, a measurement, an operator command) and the time, and returns the next
//! status, the effects to carry out and when to call again. The status is plain data: stored
//! after every transition, it is all a restart needs to resume at the same step, with the
//! same analysis runs and the same pause start.
//!
//! # Semantics
//!
//! - The first revision becomes stable at once, without steps (Argo does the same).
//! - A new revision (a change of the predictor in Git) is the canary; it waits at 0% until it
//!   is Ready, then the steps run: `setWeight`, `pause` (a duration, or until promoted),
//!   `analysis` (a run of templates that must succeed), `setHeaderRoute`, `setMirrorRoute`.
//!   Background analysis runs from `startingStep` until the end. After the last step the
//!   canary becomes stable.
//! - A Failed or Error analysis aborts: the canary's weight goes to 0 at once, the phase is
//!   Degraded, the stable revision keeps serving, and the aborted revision is not tried again
//!   until Git changes or `retry`. Inconclusive pauses until `promote` (or `abort`).
//! - A newer revision during a rollout replaces the canary and starts over; the stable one is
//!   never dropped. Editing the steps (another steps hash) starts the rollout over.
//! - Weights always sum to 100: the canary has `weight`, the stable the rest.

use std::collections::BTreeMap;
use std::time::Duration;

use analysis::{MetricSpec, Phase as RunPhase, ProviderSpec, Reading, Run};
use manifest::{
    AnalysisRef, AnalysisTemplate, BackgroundAnalysis, Manifests, RevisionSelector,
    RolloutArgValue, Step, StringMatch,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{RevisionState, ServiceId};

/// Finished analysis runs kept in a rollout's status, newest last.
const RUNS_KEPT: usize = 20;

/// A Rollout that drives an InferenceService, with the templates it may use.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    pub name: String,
    pub namespace: String,
    pub service: ServiceId,
    pub steps: Vec<Step>,
    pub background: Option<BackgroundAnalysis>,
    /// AnalysisTemplates of the rollout's namespace by name, and ClusterAnalysisTemplates
    /// (`true`).
    pub templates: BTreeMap<(bool, String), AnalysisTemplate>,
    /// The Rollout's own labels and annotations, for `fieldRef` arguments.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The rollouts of a set of manifests, sorted by service.
pub fn rollout_specs(manifests: &Manifests) -> Vec<RolloutSpec> {
    let mut out: Vec<RolloutSpec> = manifests
        .rollouts
        .iter()
        .map(|r| {
            let r = &r.value;
            let namespace = r.meta.namespace_or_default().to_owned();
            let templates = manifests
                .analysis_templates
                .iter()
                .map(|t| &t.value)
                .filter(|t| t.cluster_scoped || t.meta.namespace_or_default() == namespace)
                .map(|t| ((t.cluster_scoped, t.meta.name.clone()), t.clone()))
                .collect();
            RolloutSpec {
                name: r.meta.name.clone(),
                service: ServiceId::new(&namespace, &r.workload),
                namespace,
                steps: r.canary.steps.clone(),
                background: r.canary.analysis.clone(),
                templates,
                labels: r.meta.labels.clone(),
                annotations: r.meta.annotations.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

/// Argo's rollout phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutPhase {
    /// The stable revision serves everything; nothing is being rolled out.
    #[default]
    Healthy,
    /// A canary is loading, or its steps and analysis are running.
    Progressing,
    /// At a pause step, or an inconclusive analysis: waiting for time or `promote`.
    Paused,
    /// Aborted (by analysis or an operator), or the canary failed to load.
    Degraded,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Healthy => "Healthy",
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Degraded => "Degraded",
        }
    }
}

/// A header match of a `setHeaderRoute` or `setMirrorRoute`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeaderMatchStatus {
    pub header: String,
    pub kind: MatchKind,
    pub value: String,
}

/// How a header's value is matched (Argo Rollouts' `headerValue` keys). Stored by its name: the
/// names are a contract, add, never rename.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    #[default]
    Exact,
    Prefix,
    Regex,
}

impl MatchKind {
    /// The stable name: `exact`, `prefix` or `regex`.
    pub fn as_str(self) -> &'static str {
        match self {
            MatchKind::Exact => "exact",
            MatchKind::Prefix => "prefix",
            MatchKind::Regex => "regex",
        }
    }
}

/// A named header route to the canary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeaderRouteStatus {
    pub name: String,
    pub matches: Vec<HeaderMatchStatus>,
}

/// A named mirror route to the canary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MirrorStatus {
    pub name: String,
    pub percent: u8,
    /// Only requests whose headers all match are mirrored (every request when empty).
    pub matches: Vec<HeaderMatchStatus>,
}

/// The stored form of a route's header matches.
fn match_statuses(matches: &[manifest::HeaderMatch]) -> Vec<HeaderMatchStatus> {
    matches
        .iter()
        .map(|m| {
            let (kind, value) = string_match(&m.value);
            HeaderMatchStatus {
                header: m.header_name.clone(),
                kind,
                value,
            }
        })
        .collect()
}

/// Why a rollout is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// A `pause` step.
    Step,
    /// An analysis came back Inconclusive.
    Inconclusive,
}

/// The revision an abort was for: it is not tried again until Git changes or `retry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Aborted {
    pub revision: String,
    pub reason: String,
}

/// The format of a stored [`RolloutStatus`]: 0 is what builds before the field existed wrote
/// (2026-12-01 and earlier). Fields are only ever added, each with a default, so every older
/// format decodes; a status from a newer format than this build knows is refused, not misread.
pub const STATUS_FORMAT: u32 = 1;

/// Why a stored status cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("the stored rollout status is not valid JSON of a status: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "the stored rollout status has format {found}, newer than this build's {STATUS_FORMAT}: \
         it was written by a newer crossfade"
    )]
    Newer { found: u32 },
}

/// Where a rollout stands: everything a restart needs. Stored as JSON (see [`STATUS_FORMAT`]):
/// every field defaults when absent, so statuses written before a field was added decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RolloutStatus {
    /// [`STATUS_FORMAT`] when written by this build; 0 when written before formats existed.
    pub format: u32,
    pub phase: RolloutPhase,
    pub message: String,
    pub stable: Option<String>,
    pub canary: Option<String>,
    pub step_index: u32,
    /// Hash of the steps and background analysis the progress belongs to.
    pub steps_hash: String,
    /// The canary's share of traffic; the stable revision has the rest.
    pub weight: u8,
    pub header_routes: Vec<HeaderRouteStatus>,
    pub mirrors: Vec<MirrorStatus>,
    /// When the current pause began (Unix seconds).
    pub pause_started_at: Option<i64>,
    pub pause_reason: Option<PauseReason>,
    /// The analysis of the current `analysis` step.
    pub step_run: Option<Run>,
    /// The background analysis.
    pub background_run: Option<Run>,
    /// Finished runs, newest last.
    pub runs: Vec<Run>,
    pub aborted: Option<Aborted>,
    /// Runs started so far, for their names.
    pub run_seq: u32,
}

impl RolloutStatus {
    pub fn new() -> Self {
        RolloutStatus {
            format: STATUS_FORMAT,
            phase: RolloutPhase::Healthy,
            message: String::new(),
            stable: None,
            canary: None,
            step_index: 0,
            steps_hash: String::new(),
            weight: 0,
            header_routes: Vec::new(),
            mirrors: Vec::new(),
            pause_started_at: None,
            pause_reason: None,
            step_run: None,
            background_run: None,
            runs: Vec::new(),
            aborted: None,
            run_seq: 0,
        }
    }

    /// Decodes a stored status, of this format or any older one.
    pub fn from_json(bytes: &[u8]) -> Result<Self, StatusError> {
        #[derive(Deserialize)]
        struct Format {
            #[serde(default)]
            format: u32,
        }
        let found = serde_json::from_slice::<Format>(bytes)?.format;
        if found > STATUS_FORMAT {
            return Err(StatusError::Newer { found });
        }
        let mut status: Self = serde_json::from_slice(bytes)?;
        status.format = STATUS_FORMAT;
        Ok(status)
    }

    /// The status as it is stored.
    pub fn to_json(&self) -> Vec<u8> {
        let mut status = self.clone();
        status.format = STATUS_FORMAT;
        // A status is plain data (strings, numbers, lists): it always serializes.
        serde_json::to_vec(&status).unwrap_or_default()
    }

    /// The split: (revision, percent), summing to 100; empty when nothing is stable.
    pub fn weights(&self) -> Vec<(String, u8)> {
        let Some(stable) = &self.stable else {
            return Vec::new();
        };
        match &self.canary {
            Some(canary) if self.weight > 0 => vec![
                (stable.clone(), 100 - self.weight),
                (canary.clone(), self.weight),
            ],
            _ => vec![(stable.clone(), 100)],
        }
    }

    /// After a restart: the measurements that were being taken were lost with the process,
    /// so they are asked for again rather than awaited.
    pub fn forget_in_flight(&mut self) {
        for run in self
            .step_run
            .iter_mut()
            .chain(self.background_run.iter_mut())
        {
            for metric in &mut run.metrics {
                metric.in_flight_since = None;
            }
        }
    }

    /// The status as a restarted controller takes it up: what was being measured is asked
    /// for again, and nothing is loaded yet, so the canary has no share until it is Ready
    /// again (its share then follows from the progress, see [`step`]).
    pub fn restarted(&mut self) {
        self.forget_in_flight();
        self.weight = 0;
    }

    /// Every analysis run, finished ones first, then the current ones.
    pub fn all_runs(&self) -> impl Iterator<Item = &Run> {
        self.runs
            .iter()
            .chain(self.step_run.iter())
            .chain(self.background_run.iter())
    }
}

impl Default for RolloutStatus {
    fn default() -> Self {
        Self::new()
    }
}

/// What is loaded for the rollout's service.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The revision of the spec Git declares now.
    pub latest: Option<(&'a str, &'a RevisionState)>,
    /// The last rolled-out revision.
    pub rolled_out: Option<&'a str>,
}

/// An operator's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Skip the current pause (or inconclusive analysis, or running analysis step).
    Promote,
    /// Skip every remaining step and analysis: the canary becomes stable now.
    PromoteFull,
    Abort,
    Retry,
}

/// What happened since the last call.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Time passed, or what is loaded changed.
    Tick,
    /// A reading asked for by [`Effect::Measure`].
    Measured {
        run: String,
        metric: String,
        reading: Reading,
        started_at: i64,
        finished_at: i64,
    },
    Command(Command),
}

/// Something for a driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Take a reading and give it back as [`Input::Measured`].
    Measure {
        run: String,
        metric: String,
        provider: ProviderSpec,
        /// The revisions the built-in provider's `canary` and `stable` mean.
        canary: String,
        stable: Option<String>,
        /// When the run started (Unix seconds): a judged metric covers the run so far.
        run_started_at: i64,
    },
    /// Mark this revision rolled out (stable).
    Promote { revision: String },
    /// Something worth recording and telling people.
    Event { kind: EventKind, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    StepStarted,
    Paused,
    Promoted,
    Aborted,
    AnalysisFinished,
    AnalysisFailed,
}

/// The result of one call of [`step`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub status: RolloutStatus,
    pub effects: Vec<Effect>,
    /// Call again with [`Input::Tick`] at this time (Unix seconds) at the latest.
    pub wake_at: Option<i64>,
    /// A command that does not apply now, and why.
    pub rejected: Option<String>,
}

/// The hash that ties progress to the steps: editing them starts over.
pub fn steps_hash(spec: &RolloutSpec) -> String {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    for step in &spec.steps {
        match step {
            Step::SetWeight(p) => put(&format!("setWeight:{}", p.get())),
            Step::Pause(d) => put(&format!("pause:{:?}", d.map(|d| d.as_millis()))),
            Step::Analysis(a) => {
                put("analysis");
                hash_analysis(&mut put, a);
            }
            Step::SetHeaderRoute(r) => {
                put(&format!("setHeaderRoute:{}", r.name));
                for m in &r.matches {
                    put(&m.header_name);
                    put(string_match(&m.value).0.as_str());
                    put(&string_match(&m.value).1);
                }
            }
            Step::SetMirrorRoute(r) => {
                put(&format!(
                    "setMirrorRoute:{}:{:?}",
                    r.name,
                    r.percentage.map(|p| p.get())
                ));
                for m in &r.matches {
                    put(&m.header_name);
                    put(&string_match(&m.value).1);
                }
            }
        }
    }
    if let Some(b) = &spec.background {
        put(&format!("background:{}", b.starting_step));
        hash_analysis(&mut put, &b.analysis);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_analysis(put: &mut impl FnMut(&str), a: &AnalysisRef) {
    for t in &a.templates {
        put(&format!("{}:{}", t.cluster_scope, t.template_name));
    }
    for arg in &a.args {
        put(&arg.name);
        put(&format!("{:?}", arg.value));
    }
}

fn string_match(m: &StringMatch) -> (MatchKind, String) {
    match m {
        StringMatch::Exact(v) => (MatchKind::Exact, v.clone()),
        StringMatch::Prefix(v) => (MatchKind::Prefix, v.clone()),
        StringMatch::Regex(v) => (MatchKind::Regex, v.clone()),
    }
}

/// Which run a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Step,
    Background,
}

/// The metrics of an analysis, with the rollout's arguments.
pub fn metric_specs(
    spec: &RolloutSpec,
    analysis: &AnalysisRef,
    stable: Option<&str>,
    canary: &str,
) -> Result<Vec<MetricSpec>, analysis::Error> {
    let mut args = BTreeMap::new();
    for arg in &analysis.args {
        let value = match &arg.value {
            RolloutArgValue::Value(v) => v.clone(),
            RolloutArgValue::RevisionName(RevisionSelector::Canary) => canary.to_owned(),
            RolloutArgValue::RevisionName(RevisionSelector::Stable) => {
                stable.unwrap_or(canary).to_owned()
            }
            RolloutArgValue::FieldRef(path) => {
                let found = match manifest::field_ref(path) {
                    Some(manifest::FieldRef::Name) => Some(spec.name.clone()),
                    Some(manifest::FieldRef::Namespace) => Some(spec.namespace.clone()),
                    Some(manifest::FieldRef::WorkloadName) => Some(spec.service.name.clone()),
                    Some(manifest::FieldRef::Label(k)) => spec.labels.get(&k).cloned(),
                    Some(manifest::FieldRef::Annotation(k)) => spec.annotations.get(&k).cloned(),
                    None => None,
                };
                match found {
                    Some(v) => v,
                    None => {
                        return Err(analysis::Error::MissingArgument {
                            template: analysis
                                .templates
                                .first()
                                .map(|t| t.template_name.clone())
                                .unwrap_or_default(),
                            arg: format!("{} (fieldRef {path} has no value here)", arg.name),
                        });
                    }
                }
            }
        };
        args.insert(arg.name.clone(), value);
    }
    let mut templates = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for t in &analysis.templates {
        compose(spec, t, &mut seen, &mut templates)?;
    }
    // As Argo merges a composition's args: a default any of its templates gives serves all
    // of them, after the Rollout's own.
    for t in &templates {
        for arg in &t.args {
            if let Some(v) = &arg.value {
                args.entry(arg.name.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    analysis::resolve(&templates, &args)
}

/// `t` and the templates it is composed of (`spec.templates`), depth first, each once (a
/// template included twice, or including itself, counts once).
fn compose<'a>(
    spec: &'a RolloutSpec,
    t: &manifest::TemplateRef,
    seen: &mut std::collections::BTreeSet<(bool, String)>,
    out: &mut Vec<&'a AnalysisTemplate>,
) -> Result<(), analysis::Error> {
    let key = (t.cluster_scope, t.template_name.clone());
    if !seen.insert(key.clone()) {
        return Ok(());
    }
    let found = spec
        .templates
        .get(&key)
        .ok_or_else(|| analysis::Error::MissingTemplate(t.template_name.clone()))?;
    out.push(found);
    for inner in &found.templates {
        compose(spec, inner, seen, out)?;
    }
    Ok(())
}

/// The next state of a rollout. See the module documentation for the semantics.
pub fn step(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    observed: Observed<'_>,
    input: &Input,
    now: i64,
) -> Transition {
    let mut m = Machine {
        spec,
        s: status.clone(),
        effects: Vec::new(),
        wake_at: None,
        rejected: None,
        now,
    };
    m.run(observed, input);
    Transition {
        status: m.s,
        effects: m.effects,
        wake_at: m.wake_at,
        rejected: m.rejected,
    }
}

struct Machine<'a> {
    spec: &'a RolloutSpec,
    s: RolloutStatus,
    effects: Vec<Effect>,
    wake_at: Option<i64>,
    rejected: Option<String>,
    now: i64,
}

impl Machine<'_> {
    fn run(&mut self, observed: Observed<'_>, input: &Input) {
        self.s.stable = observed.rolled_out.map(str::to_owned);
        let Some((latest, state)) = observed.latest else {
            self.s.phase = RolloutPhase::Healthy;
            self.s.message = "no revision declared".into();
            self.reject_command(input, "there is nothing to roll out");
            return;
        };
        // Git declares the stable revision: nothing to roll out (a revert lands here too).
        if self.s.stable.as_deref() == Some(latest) {
            if self.s.canary.is_some() {
                self.stop_runs();
                self.reset_progress();
                self.s.canary = None;
            }
            self.s.aborted = None;
            self.s.phase = RolloutPhase::Healthy;
            self.s.message = format!("{latest} is stable and serves all traffic");
            self.reject_command(input, &format!("{latest} is already stable"));
            return;
        }
        // The first revision: stable at once, no steps.
        if self.s.stable.is_none() {
            match state {
                RevisionState::Ready => {
                    self.reject_command(input, "the first revision is promoted without steps");
                    self.promote(latest, "the first revision serves all traffic");
                }
                RevisionState::Pending => {
                    self.s.phase = RolloutPhase::Progressing;
                    self.s.message = format!("waiting for {latest} to load");
                    self.reject_command(input, &format!("{latest} is still loading"));
                }
                RevisionState::Failed { reason } => {
                    self.s.phase = RolloutPhase::Degraded;
                    self.s.message = format!("{latest} failed to load: {reason}");
                    self.reject_command(input, &format!("{latest} failed to load"));
                }
            }
            return;
        }

        // A new canary, or new steps: start over.
        let hash = steps_hash(self.spec);
        if self.s.canary.as_deref() != Some(latest) {
            self.stop_runs();
            self.reset_progress();
            if let Some(old) = self.s.canary.replace(latest.to_owned()) {
                self.event(
                    EventKind::StepStarted,
                    format!("{latest} replaces {old} as the canary; the rollout starts over"),
                );
            }
            if self
                .s
                .aborted
                .as_ref()
                .is_some_and(|a| a.revision != latest)
            {
                self.s.aborted = None;
            }
            self.s.steps_hash = hash;
        } else if self.s.steps_hash != hash {
            self.stop_runs();
            self.reset_progress();
            self.s.steps_hash = hash;
            self.event(
                EventKind::StepStarted,
                "the steps changed; the rollout starts over".into(),
            );
        }

        self.apply_input(input, latest, state);
        if self.s.canary.as_deref() != Some(latest) {
            // Promoted in full by the command.
            return;
        }

        if let Some(a) = &self.s.aborted {
            self.s.weight = 0;
            self.s.phase = RolloutPhase::Degraded;
            self.s.message = format!(
                "{} was aborted: {}; {} serves all traffic (retry, or change Git, to try again)",
                a.revision,
                a.reason,
                self.s.stable.as_deref().unwrap_or_default()
            );
            return;
        }
        match state {
            RevisionState::Pending => {
                self.s.weight = 0;
                self.s.phase = RolloutPhase::Progressing;
                self.s.message = format!("waiting for {latest} to load");
                return;
            }
            RevisionState::Failed { reason } => {
                self.s.weight = 0;
                self.s.phase = RolloutPhase::Degraded;
                self.s.message = format!("{latest} failed to load and gets no traffic: {reason}");
                return;
            }
            RevisionState::Ready => {}
        }
        // Back from a reload (a restart, a canary loaded again): the share the progress gives,
        // which the last `setWeight` before the current step set.
        if self.s.weight == 0 {
            self.s.weight = self.spec.steps
                [..(self.s.step_index as usize).min(self.spec.steps.len())]
                .iter()
                .rev()
                .find_map(|step| match step {
                    Step::SetWeight(p) => Some(p.get()),
                    _ => None,
                })
                .unwrap_or(0);
        }
        self.advance();
    }

    fn reject_command(&mut self, input: &Input, why: &str) {
        if let Input::Command(_) = input {
            self.rejected = Some(why.to_owned());
        }
    }

    fn apply_input(&mut self, input: &Input, latest: &str, state: &RevisionState) {
        match input {
            Input::Tick => {}
            Input::Measured {
                run,
                metric,
                reading,
                started_at,
                finished_at,
            } => {
                for kind in [RunKind::Step, RunKind::Background] {
                    if self.run_ref(kind).is_some_and(|r| &r.name == run) {
                        let Ok(specs) = self.specs(kind) else {
                            continue;
                        };
                        if let Some(r) = self.run_mut(kind) {
                            r.record(&specs, metric, reading, *started_at, *finished_at);
                        }
                    }
                }
            }
            Input::Command(Command::Retry) => {
                if self.s.aborted.take().is_some() {
                    self.reset_progress();
                    self.event(
                        EventKind::StepStarted,
                        format!("retry: {latest} starts over from the first step"),
                    );
                } else {
                    self.rejected = Some("the rollout is not aborted: nothing to retry".into());
                }
            }
            Input::Command(_) if self.s.aborted.is_some() => {
                self.rejected = Some(format!(
                    "{latest} was aborted; use retry to roll it out again"
                ));
            }
            Input::Command(_) if *state != RevisionState::Ready => {
                self.rejected = Some(format!("{latest} is not ready"));
            }
            Input::Command(Command::Abort) => {
                self.abort("aborted by an operator".into());
            }
            Input::Command(Command::PromoteFull) => {
                self.promote(
                    latest,
                    &format!(
                        "promote --full: {latest} is stable, remaining steps and analysis skipped"
                    ),
                );
            }
            Input::Command(Command::Promote) => self.promote_step(),
        }
    }

    /// `promote`: the current pause, inconclusive analysis or analysis step is skipped.
    fn promote_step(&mut self) {
        let idx = self.s.step_index as usize;
        if self.s.pause_reason == Some(PauseReason::Inconclusive) {
            self.s.pause_reason = None;
            self.s.pause_started_at = None;
            // An inconclusive background run is started afresh; an inconclusive step is done.
            if self
                .s
                .background_run
                .as_ref()
                .is_some_and(|r| r.phase == RunPhase::Inconclusive)
                && let Some(r) = self.s.background_run.take()
            {
                self.keep_run(r);
            }
            if let Some(r) = self.s.step_run.take() {
                self.keep_run(r);
                self.s.step_index += 1;
            }
            self.event(
                EventKind::StepStarted,
                "promoted past an inconclusive analysis".into(),
            );
            return;
        }
        match self.spec.steps.get(idx) {
            Some(Step::Pause(_)) | Some(Step::Analysis(_)) => {
                if let Some(mut r) = self.s.step_run.take() {
                    if let Ok(specs) = self.specs(RunKind::Step) {
                        r.stop(&specs, self.now);
                    }
                    self.keep_run(r);
                }
                self.s.pause_started_at = None;
                self.s.pause_reason = None;
                self.s.step_index += 1;
                self.event(
                    EventKind::StepStarted,
                    format!("promoted past step {}", idx + 1),
                );
            }
            _ => {
                self.rejected =
                    Some("the rollout is not paused or analysing: nothing to skip".into());
            }
        }
    }

    /// Runs the steps from the current one as far as they go now.
    fn advance(&mut self) {
        let canary = self.s.canary.clone().unwrap_or_default();
        loop {
            self.start_background();
            if self.check_background() {
                return;
            }
            let idx = self.s.step_index as usize;
            let Some(step) = self.spec.steps.get(idx).cloned() else {
                // Every step done: the canary becomes stable.
                if let Some(mut r) = self.s.background_run.take() {
                    if let Ok(specs) = self.specs(RunKind::Background) {
                        r.stop(&specs, self.now);
                    }
                    let failed = matches!(r.phase, RunPhase::Failed | RunPhase::Error);
                    let message = r.message.clone();
                    self.keep_run(r);
                    if failed {
                        self.abort(message.unwrap_or_else(|| "background analysis failed".into()));
                        return;
                    }
                }
                self.promote(
                    &canary,
                    &format!("{canary} passed every step and is now stable"),
                );
                return;
            };
            match step {
                Step::SetWeight(p) => {
                    self.s.weight = p.get();
                    self.event(
                        EventKind::StepStarted,
                        format!("step {}: {canary} gets {}% of traffic", idx + 1, p.get()),
                    );
                }
                Step::SetHeaderRoute(r) => {
                    self.s.header_routes.retain(|h| h.name != r.name);
                    if !r.matches.is_empty() {
                        self.s.header_routes.push(HeaderRouteStatus {
                            name: r.name.clone(),
                            matches: match_statuses(&r.matches),
                        });
                    }
                }
                Step::SetMirrorRoute(r) => {
                    self.s.mirrors.retain(|h| h.name != r.name);
                    if let Some(p) = r.percentage {
                        self.s.mirrors.push(MirrorStatus {
                            name: r.name.clone(),
                            percent: p.get(),
                            matches: match_statuses(&r.matches),
                        });
                    }
                }
                Step::Pause(duration) => {
                    let started = *self.s.pause_started_at.get_or_insert(self.now);
                    if self.s.pause_reason.is_none() {
                        self.s.pause_reason = Some(PauseReason::Step);
                        self.event(EventKind::Paused, pause_message(idx, duration));
                    }
                    match duration {
                        Some(d) if self.now >= started + d.as_secs() as i64 => {
                            self.s.pause_started_at = None;
                            self.s.pause_reason = None;
                        }
                        _ => {
                            self.s.phase = RolloutPhase::Paused;
                            self.s.message = pause_message(idx, duration);
                            if let Some(d) = duration {
                                self.wake(started + d.as_secs() as i64);
                            }
                            self.measure_runs(&canary);
                            return;
                        }
                    }
                }
                Step::Analysis(a) => {
                    if self.s.step_run.is_none() {
                        match metric_specs(self.spec, &a, self.s.stable.as_deref(), &canary) {
                            Ok(specs) => {
                                let name = self.run_name("step", idx);
                                self.s.step_run = Some(Run::start(name, &specs, self.now));
                            }
                            Err(e) => {
                                self.abort(format!(
                                    "the analysis of step {} cannot run: {e}",
                                    idx + 1
                                ));
                                return;
                            }
                        }
                    }
                    let phase = self.s.step_run.as_ref().map(|r| r.phase);
                    match phase {
                        Some(RunPhase::Successful) => {
                            if let Some(r) = self.s.step_run.take() {
                                self.event(
                                    EventKind::AnalysisFinished,
                                    format!("analysis {} succeeded", r.name),
                                );
                                self.keep_run(r);
                            }
                        }
                        Some(RunPhase::Failed | RunPhase::Error) => {
                            let r = self.s.step_run.take();
                            let why = r
                                .as_ref()
                                .and_then(|r| r.message.clone())
                                .unwrap_or_else(|| "analysis failed".into());
                            if let Some(r) = r {
                                self.event(
                                    EventKind::AnalysisFailed,
                                    format!("analysis {} failed: {why}", r.name),
                                );
                                self.keep_run(r);
                            }
                            self.abort(why);
                            return;
                        }
                        Some(RunPhase::Inconclusive) => {
                            self.pause_inconclusive(idx);
                            return;
                        }
                        _ => {
                            self.s.phase = RolloutPhase::Progressing;
                            self.s.message = format!(
                                "step {}: analysing {canary} at {}%",
                                idx + 1,
                                self.s.weight
                            );
                            self.measure_runs(&canary);
                            return;
                        }
                    }
                }
            }
            self.s.step_index += 1;
        }
    }

    /// Starts the background analysis once its starting step is reached.
    fn start_background(&mut self) {
        let Some(bg) = &self.spec.background else {
            return;
        };
        if self.s.background_run.is_some() || self.s.step_index < bg.starting_step {
            return;
        }
        let canary = self.s.canary.clone().unwrap_or_default();
        match metric_specs(self.spec, &bg.analysis, self.s.stable.as_deref(), &canary) {
            Ok(specs) => {
                let name = self.run_name("background", 0);
                self.s.background_run = Some(Run::start(name, &specs, self.now));
            }
            Err(e) => self.abort(format!("the background analysis cannot run: {e}")),
        }
    }

    /// Acts on a finished background run; `true` when the rollout stops here.
    fn check_background(&mut self) -> bool {
        if self.s.aborted.is_some() {
            return true;
        }
        let Some(phase) = self.s.background_run.as_ref().map(|r| r.phase) else {
            return false;
        };
        match phase {
            RunPhase::Failed | RunPhase::Error => {
                let why = self
                    .s
                    .background_run
                    .as_ref()
                    .and_then(|r| r.message.clone())
                    .unwrap_or_else(|| "background analysis failed".into());
                if let Some(r) = self.s.background_run.take() {
                    self.event(
                        EventKind::AnalysisFailed,
                        format!("analysis {} failed: {why}", r.name),
                    );
                    self.keep_run(r);
                }
                self.abort(why);
                true
            }
            RunPhase::Inconclusive => {
                self.pause_inconclusive(self.s.step_index as usize);
                true
            }
            _ => false,
        }
    }

    fn pause_inconclusive(&mut self, idx: usize) {
        if self.s.pause_reason != Some(PauseReason::Inconclusive) {
            self.s.pause_reason = Some(PauseReason::Inconclusive);
            self.s.pause_started_at = Some(self.now);
            self.event(
                EventKind::Paused,
                format!(
                    "step {}: the analysis is inconclusive; waiting for promote or abort",
                    idx + 1
                ),
            );
        }
        let why = self
            .s
            .step_run
            .iter()
            .chain(self.s.background_run.iter())
            .find(|r| r.phase == RunPhase::Inconclusive)
            .and_then(|r| r.message.clone())
            .unwrap_or_default();
        self.s.phase = RolloutPhase::Paused;
        self.s.message = format!(
            "step {}: inconclusive ({why}); promote to go on, abort to stop",
            idx + 1
        );
    }

    /// Asks for the measurements now due, and wakes for the next ones.
    fn measure_runs(&mut self, canary: &str) {
        for kind in [RunKind::Step, RunKind::Background] {
            let Ok(specs) = self.specs(kind) else {
                continue;
            };
            let now = self.now;
            let Some(run) = self.run_mut(kind) else {
                continue;
            };
            if run.is_done() {
                continue;
            }
            let due = run.take_due(&specs, now);
            let name = run.name.clone();
            let run_started_at = run.started_at;
            let next = run.next_due(&specs);
            for i in due {
                self.effects.push(Effect::Measure {
                    run: name.clone(),
                    metric: specs[i].name.clone(),
                    provider: specs[i].provider.clone(),
                    canary: canary.to_owned(),
                    stable: self.s.stable.clone(),
                    run_started_at,
                });
            }
            if let Some(at) = next {
                self.wake(at);
            }
        }
    }

    fn specs(&self, kind: RunKind) -> Result<Vec<MetricSpec>, analysis::Error> {
        let canary = self.s.canary.as_deref().unwrap_or_default();
        let analysis = match kind {
            RunKind::Background => match &self.spec.background {
                Some(b) => &b.analysis,
                None => return Ok(Vec::new()),
            },
            RunKind::Step => match self.spec.steps.get(self.s.step_index as usize) {
                Some(Step::Analysis(a)) => a,
                _ => return Ok(Vec::new()),
            },
        };
        metric_specs(self.spec, analysis, self.s.stable.as_deref(), canary)
    }

    fn run_ref(&self, kind: RunKind) -> Option<&Run> {
        match kind {
            RunKind::Step => self.s.step_run.as_ref(),
            RunKind::Background => self.s.background_run.as_ref(),
        }
    }

    fn run_mut(&mut self, kind: RunKind) -> Option<&mut Run> {
        match kind {
            RunKind::Step => self.s.step_run.as_mut(),
            RunKind::Background => self.s.background_run.as_mut(),
        }
    }

    fn run_name(&mut self, what: &str, idx: usize) -> String {
        self.s.run_seq += 1;
        let canary = self.s.canary.as_deref().unwrap_or_default();
        match what {
            "step" => format!("{canary}-{}-step-{}", self.s.run_seq, idx + 1),
            _ => format!("{canary}-{}-{what}", self.s.run_seq),
        }
    }

    fn keep_run(&mut self, run: Run) {
        self.s.runs.push(run);
        let excess = self.s.runs.len().saturating_sub(RUNS_KEPT);
        self.s.runs.drain(..excess);
    }

    /// Stops the current runs and keeps them in the history.
    fn stop_runs(&mut self) {
        for kind in [RunKind::Step, RunKind::Background] {
            let specs = self.specs(kind).unwrap_or_default();
            let run = match kind {
                RunKind::Step => self.s.step_run.take(),
                RunKind::Background => self.s.background_run.take(),
            };
            if let Some(mut r) = run {
                r.stop(&specs, self.now);
                self.keep_run(r);
            }
        }
    }

    fn reset_progress(&mut self) {
        self.s.step_index = 0;
        self.s.weight = 0;
        self.s.header_routes.clear();
        self.s.mirrors.clear();
        self.s.pause_started_at = None;
        self.s.pause_reason = None;
    }

    fn abort(&mut self, reason: String) {
        self.stop_runs();
        let canary = self.s.canary.clone().unwrap_or_default();
        self.reset_progress();
        self.event(
            EventKind::Aborted,
            format!("{canary} aborted: {reason}; all traffic back to the stable revision"),
        );
        self.s.aborted = Some(Aborted {
            revision: canary.clone(),
            reason: reason.clone(),
        });
        self.s.phase = RolloutPhase::Degraded;
        self.s.message = format!(
            "{canary} was aborted: {reason}; {} serves all traffic (retry, or change Git, to try again)",
            self.s.stable.as_deref().unwrap_or_default()
        );
    }

    fn promote(&mut self, revision: &str, message: &str) {
        self.stop_runs();
        self.reset_progress();
        self.s.stable = Some(revision.to_owned());
        self.s.canary = None;
        self.s.aborted = None;
        self.s.phase = RolloutPhase::Healthy;
        self.s.message = message.to_owned();
        self.effects.push(Effect::Promote {
            revision: revision.to_owned(),
        });
        self.event(EventKind::Promoted, message.to_owned());
    }

    fn event(&mut self, kind: EventKind, message: String) {
        self.effects.push(Effect::Event { kind, message });
    }

    fn wake(&mut self, at: i64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// The message of a pause; the time left is not in it (it would be stale as soon as written):
/// the pause's start is in the status.
fn pause_message(idx: usize, duration: Option<Duration>) -> String {
    match duration {
        Some(d) => format!("step {}: paused for {}s", idx + 1, d.as_secs()),
        None => format!("step {}: paused until promoted", idx + 1),
    }
}

#[cfg(test)]
mod tests;
