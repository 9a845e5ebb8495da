//! Rollout scenarios as data on simulated time: a list of events fed through [`step`], the
//! trace of phases, weights and effects compared with a snapshot.

use std::fmt::Write;

use manifest::{Options, SourceFile, Sources};
use proptest::prelude::*;

use super::*;

/// The Rollout of the scenarios, with `{steps}` and `{background}` to fill in.
const ROLLOUT: &str = r#"
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris, namespace: models}
spec:
  predictor:
    model:
      modelFormat: {name: onnx}
      storageUri: file:///models/iris
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: iris, namespace: models}
spec:
  workloadRef: {apiVersion: serving.kserve.io/v1beta1, kind: InferenceService, name: iris}
  strategy:
    canary:
{background}
      steps:
{steps}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: success-rate, namespace: models}
spec:
  args:
    - name: revision
  metrics:
    - name: success-rate
      interval: 30s
      count: 2
      successCondition: result >= 0.95
      failureCondition: result < 0.5
      provider:
        crossfade: {metric: success-rate}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: errors, namespace: models}
spec:
  metrics:
    - name: error-rate
      interval: 20s
      failureLimit: 1
      successCondition: result[0] <= 0.01
      provider:
        prometheus:
          address: http://127.0.0.1:9090
          query: sum(rate(errors[1m]))
"#;

const STEPS: &str = r#"
        - setWeight: 10
        - pause: {duration: 60s}
        - analysis:
            templates: [{templateName: success-rate}]
            args: [{name: revision, valueFrom: {podTemplateHashValue: Latest}}]
        - setHeaderRoute:
            name: team
            match: [{headerName: x-team, headerValue: {exact: ml}}]
        - setMirrorRoute: {name: shadow, percentage: 20}
        - setWeight: 50
        - pause: {}
"#;

fn spec(steps: &str, background: &str) -> RolloutSpec {
    let text = ROLLOUT
        .replace("{steps}", steps.trim_matches('\n'))
        .replace("{background}", background.trim_matches('\n'));
    let mut sources = Sources::new();
    sources.push(SourceFile::new("rollout.yaml", text));
    let parsed = manifest::parse(&sources, Options::default());
    assert!(!parsed.has_errors(), "{:#?}", parsed.diagnostics);
    rollout_specs(&parsed.manifests).remove(0)
}

/// The world around the rollout, as the drivers would keep it.
struct World {
    spec: RolloutSpec,
    status: RolloutStatus,
    latest: Option<(String, RevisionState)>,
    rolled_out: Option<String>,
    now: i64,
    /// Measurements asked for and not answered yet: (run, metric).
    asked: Vec<(String, String)>,
    trace: String,
}

enum Ev<'a> {
    /// A new revision in Git, loading.
    Commit(&'a str),
    Ready,
    LoadFailed(&'a str),
    Advance(i64),
    /// The answer to the pending measurement of a metric.
    Measure(&'a str, Reading),
    Cmd(Command),
    Steps(RolloutSpec),
    /// Kill -9 and start again: the status goes through JSON.
    Restart,
}

impl World {
    fn new(spec: RolloutSpec) -> Self {
        World {
            spec,
            status: RolloutStatus::new(),
            latest: None,
            rolled_out: None,
            now: 1_000_000,
            asked: Vec::new(),
            trace: String::new(),
        }
    }

    fn call(&mut self, input: Input) {
        let observed = Observed {
            latest: self.latest.as_ref().map(|(n, s)| (n.as_str(), s)),
            rolled_out: self.rolled_out.as_deref(),
        };
        let t = step(&self.spec, &self.status, observed, &input, self.now);
        // Weights always sum to 100 once something is stable.
        let total: u32 = t.status.weights().iter().map(|(_, p)| u32::from(*p)).sum();
        assert!(
            total == 100 || t.status.stable.is_none(),
            "{:?}",
            t.status.weights()
        );
        self.status = t.status;
        if let Some(r) = t.rejected {
            writeln!(self.trace, "    rejected: {r}").unwrap();
        }
        for e in t.effects {
            match e {
                Effect::Promote { revision } => {
                    writeln!(self.trace, "    promote {revision}").unwrap();
                    self.rolled_out = Some(revision);
                }
                Effect::Measure {
                    run,
                    metric,
                    provider,
                    canary,
                    ..
                } => {
                    let what = match provider {
                        ProviderSpec::Prometheus { query, .. } => format!("prometheus {query}"),
                        ProviderSpec::Web { url, .. } => format!("web {url}"),
                        ProviderSpec::Builtin(b) => format!("builtin {:?} of {canary}", b.metric),
                        ProviderSpec::Job { command, .. } => format!("job {command:?}"),
                    };
                    writeln!(self.trace, "    measure {run}/{metric}: {what}").unwrap();
                    self.asked.push((run, metric));
                }
                Effect::Event { kind, message } => {
                    writeln!(self.trace, "    event {kind:?}: {message}").unwrap();
                }
            }
        }
        let s = &self.status;
        let weights = s
            .weights()
            .iter()
            .map(|(r, p)| format!("{r}={p}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut routes = String::new();
        for h in &s.header_routes {
            write!(routes, " header-route {}", h.name).unwrap();
        }
        for m in &s.mirrors {
            write!(routes, " mirror {}={}%", m.name, m.percent).unwrap();
        }
        writeln!(
            self.trace,
            "  = {} index {}/{} [{weights}]{routes} {}{}",
            s.phase.as_str(),
            s.step_index,
            self.spec.steps.len(),
            s.message,
            t.wake_at
                .map(|w| format!(" (wake +{}s)", w - self.now))
                .unwrap_or_default()
        )
        .unwrap();
    }

    fn run(mut self, events: Vec<Ev<'_>>) -> String {
        for ev in events {
            self.feed(ev);
        }
        self.trace
    }

    fn feed(&mut self, ev: Ev<'_>) {
        {
            let input = match ev {
                Ev::Commit(name) => {
                    writeln!(self.trace, "commit {name}").unwrap();
                    self.latest = Some((name.to_owned(), RevisionState::Pending));
                    Input::Tick
                }
                Ev::Ready => {
                    writeln!(self.trace, "ready").unwrap();
                    if let Some((_, s)) = &mut self.latest {
                        *s = RevisionState::Ready;
                    }
                    Input::Tick
                }
                Ev::LoadFailed(why) => {
                    writeln!(self.trace, "load failed").unwrap();
                    if let Some((_, s)) = &mut self.latest {
                        *s = RevisionState::Failed {
                            reason: why.to_owned(),
                        };
                    }
                    Input::Tick
                }
                Ev::Advance(secs) => {
                    self.now += secs;
                    writeln!(self.trace, "advance {secs}s").unwrap();
                    Input::Tick
                }
                Ev::Measure(metric, reading) => {
                    let i = self
                        .asked
                        .iter()
                        .position(|(_, m)| m == metric)
                        .unwrap_or_else(|| panic!("no measurement of {metric} was asked for"));
                    let (run, metric) = self.asked.remove(i);
                    writeln!(self.trace, "measured {metric} = {reading:?}").unwrap();
                    Input::Measured {
                        run,
                        metric,
                        reading,
                        started_at: self.now,
                        finished_at: self.now,
                    }
                }
                Ev::Cmd(c) => {
                    writeln!(self.trace, "command {c:?}").unwrap();
                    Input::Command(c)
                }
                Ev::Steps(spec) => {
                    writeln!(self.trace, "steps edited").unwrap();
                    self.spec = spec;
                    Input::Tick
                }
                Ev::Restart => {
                    writeln!(self.trace, "restart").unwrap();
                    let json = serde_json::to_string(&self.status).unwrap();
                    self.status = serde_json::from_str(&json).unwrap();
                    // What was being measured is asked for again; nothing is loaded yet.
                    self.status.restarted();
                    self.asked.clear();
                    Input::Tick
                }
            };
            self.call(input);
        }
    }
}

/// A first revision made stable, then a second one Ready as the canary, followed by `rest`.
fn canary_ready<'a, const N: usize>(rest: [Ev<'a>; N]) -> Vec<Ev<'a>> {
    let mut events = vec![
        Ev::Commit("iris-predictor-00001"),
        Ev::Ready,
        Ev::Commit("iris-predictor-00002"),
        Ev::Ready,
    ];
    events.extend(rest);
    events
}

fn num(x: f64) -> Reading {
    Reading::Value(serde_json::json!(x))
}

fn vector(x: f64) -> Reading {
    Reading::Value(serde_json::json!([x]))
}

/// A first revision and a good second one, promoted to 100% through every step.
#[test]
fn a_good_model_is_promoted_step_by_step() {
    use Ev::*;
    let trace = World::new(spec(STEPS, "")).run(canary_ready([
        Advance(30),
        Advance(30),
        Advance(1),
        Measure("success-rate", num(0.99)),
        Advance(30),
        Measure("success-rate", num(0.97)),
        Advance(5),
        Cmd(Command::Promote),
    ]));
    insta::assert_snapshot!(trace);
}

/// A model that fails on a share of inputs is aborted by the analysis; `retry` tries it
/// again; a new commit replaces it.
#[test]
fn a_bad_model_is_aborted_and_retried() {
    use Ev::*;
    let trace = World::new(spec(STEPS, "")).run(canary_ready([
        Advance(60),
        Measure("success-rate", num(0.3)),
        Advance(600),
        Cmd(Command::Promote),
        Cmd(Command::Retry),
        Commit("iris-predictor-00003"),
        Ready,
    ]));
    insta::assert_snapshot!(trace);
}

/// Neither condition met: the rollout pauses; promote goes on.
#[test]
fn an_inconclusive_analysis_pauses_until_promoted() {
    use Ev::*;
    let trace = World::new(spec(STEPS, "")).run(canary_ready([
        Advance(60),
        Measure("success-rate", num(0.8)),
        Advance(120),
        Cmd(Command::Promote),
        Cmd(Command::Abort),
    ]));
    insta::assert_snapshot!(trace);
}

/// Background analysis from step 1 catches errors at 10%; no data is never a pass.
#[test]
fn background_analysis_aborts_before_half_the_traffic() {
    use Ev::*;
    let background = r#"
      analysis:
        templates: [{templateName: errors}]
        startingStep: 1
"#;
    let trace = World::new(spec(STEPS, background)).run(canary_ready([Measure(
        "error-rate",
        Reading::NoData("empty vector".into()),
    )]));
    insta::assert_snapshot!("background_no_data", trace);
    let trace = World::new(spec(STEPS, background)).run(canary_ready([
        Measure("error-rate", vector(0.0)),
        Advance(20),
        Measure("error-rate", vector(0.2)),
        Advance(20),
        Measure("error-rate", vector(0.3)),
    ]));
    insta::assert_snapshot!("background_errors", trace);
}

/// A newer commit replaces the canary; editing the steps starts over; a failed load never
/// gets traffic; `promote --full` skips everything; restarts resume mid-pause.
#[test]
fn commits_edits_failures_full_promotion_and_restarts() {
    use Ev::*;
    let edited = spec(
        r#"
        - setWeight: 20
        - pause: {duration: 60s}
"#,
        "",
    );
    let trace = World::new(spec(STEPS, "")).run(canary_ready([
        Advance(20),
        Restart,
        Advance(20),
        Commit("iris-predictor-00003"),
        LoadFailed("digest mismatch"),
        Commit("iris-predictor-00004"),
        Ready,
        Advance(30),
        Steps(edited),
        Advance(30),
        Cmd(Command::PromoteFull),
        Cmd(Command::Promote),
    ]));
    insta::assert_snapshot!(trace);
}

/// Restarting (the status through JSON) at any point gives the same trace as not.
#[test]
fn a_restart_anywhere_changes_nothing() {
    use Ev::*;
    let events = || {
        vec![
            Commit("iris-predictor-00001"),
            Ready,
            Commit("iris-predictor-00002"),
            Ready,
            Advance(30),
            Advance(31),
            Measure("success-rate", num(0.99)),
            Advance(30),
            Measure("success-rate", num(0.97)),
            Cmd(Command::Promote),
        ]
    };
    let plain = World::new(spec(STEPS, "")).run(events());
    for at in 0..events().len() {
        let mut with_restart = events();
        with_restart.insert(at + 1, Restart);
        let trace = World::new(spec(STEPS, "")).run(with_restart);
        // The restart adds its own lines (and asks again for a measurement that was being
        // taken); everything else is the same.
        let mut lines: Vec<&str> = trace.lines().collect();
        let i = lines.iter().position(|l| *l == "restart").unwrap();
        let end = i + lines[i..]
            .iter()
            .position(|l| l.starts_with("  = "))
            .unwrap();
        lines.drain(i..=end);
        assert_eq!(
            lines.join("\n"),
            plain.trim_end(),
            "restart after event {at}"
        );
    }
}

proptest! {
    /// Whatever happens, weights sum to 100, and an aborted rollout stays aborted until a new
    /// commit or `retry`.
    #[test]
    fn weights_sum_to_100_and_aborts_stick(events in proptest::collection::vec(0u8..9, 1..60)) {
        let mut w = World::new(spec(STEPS, r#"
      analysis:
        templates: [{templateName: errors}]
        startingStep: 2
"#));
        w.call_ev(Ev::Commit("iris-predictor-00001"));
        w.call_ev(Ev::Ready);
        let mut n = 2;
        for e in events {
            let was_aborted = w.status.aborted.clone();
            let ev = match e {
                0 => Ev::Advance(15),
                1 => Ev::Advance(90),
                2 => Ev::Ready,
                3 if !w.asked.is_empty() => Ev::Measure("error-rate", vector(0.5)),
                4 if !w.asked.is_empty() => Ev::Measure("success-rate", num(0.99)),
                5 => Ev::Cmd(Command::Promote),
                6 => Ev::Cmd(Command::Abort),
                7 => Ev::Cmd(Command::Retry),
                _ => {
                    n += 1;
                    Ev::Commit(Box::leak(format!("iris-predictor-{n:05}").into_boxed_str()))
                }
            };
            let new_commit = matches!(ev, Ev::Commit(_));
            let retry = matches!(ev, Ev::Cmd(Command::Retry));
            w.call_ev(ev);
            let total: u32 = w.status.weights().iter().map(|(_, p)| u32::from(*p)).sum();
            prop_assert!(total == 100);
            if let Some(a) = was_aborted && !new_commit && !retry {
                prop_assert_eq!(w.status.aborted.as_ref(), Some(&a));
                prop_assert_eq!(w.status.phase, RolloutPhase::Degraded);
                prop_assert_eq!(w.status.weight, 0);
            }
        }
    }
}

impl World {
    /// Feeds one event; a measurement nobody asked for is skipped.
    fn call_ev(&mut self, ev: Ev<'_>) {
        if let Ev::Measure(metric, _) = &ev
            && !self.asked.iter().any(|(_, m)| m == metric)
        {
            return;
        }
        self.feed(ev);
    }
}

/// A mirror route's header match reaches the status the gateway's route is built from, and
/// survives a restart.
#[test]
fn a_mirror_route_keeps_its_header_match() {
    let steps = "
        - setMirrorRoute:
            name: shadow
            percentage: 50
            match:
              - headers: {x-team: {exact: ml}}
        - pause: {}
";
    let mut world = World::new(spec(steps, ""));
    for ev in canary_ready([Ev::Restart]) {
        world.feed(ev);
    }
    let mirror = &world.status.mirrors[0];
    assert_eq!((mirror.name.as_str(), mirror.percent), ("shadow", 50));
    assert_eq!(
        mirror.matches,
        [HeaderMatchStatus {
            header: "x-team".into(),
            kind: crate::rollout::MatchKind::Exact,
            value: "ml".into(),
        }]
    );
}

/// A restart while the canary is paused at 50%: the canary has no share while it loads again,
/// and its 50% comes back, at the same step, once it is Ready.
#[test]
fn after_a_restart_the_canary_gets_its_share_back_once_it_is_loaded_again() {
    use Ev::*;
    let mut world = World::new(spec(STEPS, ""));
    for ev in canary_ready([Advance(30), Advance(30)]) {
        world.feed(ev);
    }
    let before = (world.status.step_index, world.status.weight);
    assert!(before.1 > 0, "{before:?}");
    // The controller restarts: the revisions load again.
    world.feed(Restart);
    world.latest = Some(("iris-predictor-00002".into(), RevisionState::Pending));
    world.feed(Advance(1));
    assert_eq!(
        world.status.weight, 0,
        "a canary that is not loaded has no share"
    );
    world.feed(Ready);
    assert_eq!((world.status.step_index, world.status.weight), before);
}

/// A template composed of others (`spec.templates`) runs their metrics too, each template
/// once, the composition's argument defaults serving them all.
#[test]
fn a_composed_template_runs_the_metrics_of_its_parts() {
    let text =
        include_str!("../../../manifest/tests/data/valid/argo-rollouts-composed-template.yaml");
    let mut sources = Sources::new();
    sources.push(SourceFile::new("composed.yaml", text.to_owned()));
    let parsed = manifest::parse(&sources, Options::default());
    assert!(!parsed.has_errors(), "{:#?}", parsed.diagnostics);
    let spec = rollout_specs(&parsed.manifests).remove(0);
    let Step::Analysis(analysis) = &spec.steps[1] else {
        panic!("{:?}", spec.steps[1]);
    };
    let metrics = metric_specs(
        &spec,
        analysis,
        Some("iris-predictor-00001"),
        "iris-predictor-00002",
    )
    .unwrap();
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["agreement", "errors", "latency"]);

    // A template that includes itself, or one included twice, runs once.
    let looped = text.replace(
        "    - templateName: canary-health\n  metrics:",
        "    - templateName: canary-health\n    - templateName: canary-health-and-agreement\n    - templateName: errors\n  metrics:",
    );
    let mut sources = Sources::new();
    sources.push(SourceFile::new("composed.yaml", looped));
    let parsed = manifest::parse(&sources, Options::default());
    assert!(!parsed.has_errors(), "{:#?}", parsed.diagnostics);
    let spec = rollout_specs(&parsed.manifests).remove(0);
    let Step::Analysis(analysis) = &spec.steps[1] else {
        panic!();
    };
    let metrics = metric_specs(&spec, analysis, None, "iris-predictor-00002").unwrap();
    assert_eq!(metrics.len(), 3);
}

/// A Rollout argument from the Rollout's own labels and annotations (`fieldRef`), as Argo
/// resolves it; a label that is not set is an error naming the argument.
#[test]
fn field_ref_arguments_come_from_the_rollouts_labels_and_annotations() {
    let text = r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: checks}
spec:
  args: [{name: app}, {name: team}]
  metrics:
    - name: budget
      successCondition: result == true
      provider:
        web: {url: "http://metrics.example.com/budget?app={{args.app}}&team={{args.team}}", jsonPath: "{$.ok}"}
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: iris
  labels: {app.kubernetes.io/name: iris-app}
  annotations: {example.com/team: ml}
spec:
  workloadRef: {apiVersion: serving.kserve.io/v1beta1, kind: InferenceService, name: iris}
  strategy:
    canary:
      steps:
        - analysis:
            templates: [{templateName: checks}]
            args:
              - {name: app, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app.kubernetes.io/name']"}}}
              - {name: team, valueFrom: {fieldRef: {fieldPath: "metadata.annotations[\"example.com/team\"]"}}}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: iris}
spec:
  predictor:
    model: {modelFormat: {name: onnx}, storageUri: "file:///m/iris.onnx"}
"#;
    let parse = |text: &str| {
        let mut sources = Sources::new();
        sources.push(SourceFile::new("r.yaml", text.to_owned()));
        manifest::parse(&sources, Options::default())
    };
    let parsed = parse(text);
    assert!(!parsed.has_errors(), "{:#?}", parsed.diagnostics);
    let spec = rollout_specs(&parsed.manifests).remove(0);
    let Step::Analysis(analysis) = &spec.steps[0] else {
        panic!();
    };
    let metrics = metric_specs(&spec, analysis, None, "iris-predictor-00002").unwrap();
    let said = format!("{:?}", metrics[0]);
    assert!(said.contains("app=iris-app&team=ml"), "{said}");

    // A label the Rollout does not carry: the run says which argument.
    let unlabelled = text.replace("labels: {app.kubernetes.io/name: iris-app}", "labels: {}");
    let parsed = parse(&unlabelled);
    let spec = rollout_specs(&parsed.manifests).remove(0);
    let Step::Analysis(analysis) = &spec.steps[0] else {
        panic!();
    };
    let err = metric_specs(&spec, analysis, None, "iris-predictor-00002").unwrap_err();
    assert!(err.to_string().contains("app (fieldRef"), "{err}");

    // A path crossfade does not resolve is refused by lint, with the ones it does.
    let parsed = parse(&text.replace("metadata.labels['app.kubernetes.io/name']", "spec.replicas"));
    let d = parsed
        .diagnostics
        .iter()
        .find(|d| d.message.contains("spec.replicas"))
        .expect("a diagnostic");
    assert_eq!(d.code, manifest::Code::Unsupported);
}
