//! Reconcile scenarios, each rendered as one line per effect.

use manifest::{ModelFormat, ModelSpec, Percent, PredictorForm, Scheme, StorageUri};

use super::*;
use crate::{DesiredService, ServiceId, spec_hash};

fn model(uri: &str) -> ModelSpec {
    ModelSpec {
        format: ModelFormat {
            name: "onnx".into(),
            version: None,
        },
        storage_uri: StorageUri {
            raw: uri.into(),
            scheme: Scheme::File,
            digest: None,
        },
        runtime: None,
        protocol_version: None,
        form: PredictorForm::Model,
    }
}

fn want(name: &str, uri: &str, canary: Option<u8>) -> DesiredService {
    let model = model(uri);
    DesiredService {
        id: ServiceId::new("default", name),
        spec_hash: spec_hash(&model),
        model,
        canary_traffic_percent: canary.map(|p| Percent::new(p).unwrap()),
        tag_routing: false,
        request_timeout: None,
        rollout: None,
        rollout_weight: None,
        signature_change: false,
    }
}

/// A live revision named `<service>-predictor-0000<n>` for the spec at `uri`.
fn rev(service: &str, n: u32, uri: &str, state: RevisionState) -> LiveRevision {
    LiveRevision {
        name: format!("{service}-predictor-{n:05}"),
        spec_hash: spec_hash(&model(uri)),
        state,
    }
}

fn traffic(splits: &[(&str, u8)]) -> Vec<Split> {
    splits
        .iter()
        .map(|(r, p)| Split {
            revision: (*r).into(),
            percent: Percent::new(*p).unwrap(),
        })
        .collect()
}

fn live(name: &str, service: LiveService) -> Live {
    let mut l = Live::default();
    l.services.insert(ServiceId::new("default", name), service);
    l
}

fn render(d: &Decision) -> Vec<String> {
    let splits = |s: &[Split]| {
        s.iter()
            .map(|s| format!("{}={}", s.revision, s.percent.get()))
            .collect::<Vec<_>>()
            .join(",")
    };
    d.effects
        .iter()
        .map(|e| match e {
            Effect::CreateRevision { service, model, .. } => {
                format!("create {service} {}", model.storage_uri.raw)
            }
            Effect::SetTraffic {
                service,
                splits: s,
                tags,
            } => {
                let mut line = format!("traffic {service} [{}]", splits(s));
                if tags.latest.is_some() || tags.prev.is_some() {
                    line += &format!(
                        " latest={} prev={}",
                        tags.latest.as_deref().unwrap_or("-"),
                        tags.prev.as_deref().unwrap_or("-")
                    );
                }
                line
            }
            Effect::MarkRolledOut { service, revision } => {
                format!("rolled-out {service} {revision}")
            }
            Effect::RetireRevision { service, revision } => format!("retire {service} {revision}"),
            Effect::RemoveService { service } => format!("remove {service}"),
            Effect::ReportOutOfSync { service, reason } => {
                format!("out-of-sync {service}: {reason}")
            }
        })
        .collect()
}

use RevisionState::{Pending, Ready};

#[test]
fn first_revision_gets_everything_once_ready() {
    let d = [want("iris", "file:///1", None)];
    let r = reconcile(&d, &Live::default(), SyncPolicy::default());
    assert_eq!(render(&r), ["create default/iris file:///1"]);

    let loading = live(
        "iris",
        LiveService {
            revisions: vec![rev("iris", 1, "file:///1", Pending)],
            ..Default::default()
        },
    );
    assert_eq!(
        render(&reconcile(&d, &loading, SyncPolicy::default())),
        Vec::<String>::new()
    );

    let ready = live(
        "iris",
        LiveService {
            revisions: vec![rev("iris", 1, "file:///1", Ready)],
            ..Default::default()
        },
    );
    let r = reconcile(&d, &ready, SyncPolicy::default());
    assert_eq!(
        render(&r),
        [
            "rolled-out default/iris iris-predictor-00001",
            "traffic default/iris [iris-predictor-00001=100]"
        ]
    );

    // Once applied, nothing more to do.
    let settled = live(
        "iris",
        LiveService {
            revisions: vec![rev("iris", 1, "file:///1", Ready)],
            rolled_out: Some("iris-predictor-00001".into()),
            traffic: traffic(&[("iris-predictor-00001", 100)]),
            overridden: false,
            tags: Tags::default(),
        },
    );
    assert!(
        reconcile(&d, &settled, SyncPolicy::default())
            .effects
            .is_empty()
    );
}

fn two_revisions(new_state: RevisionState) -> Live {
    live(
        "iris",
        LiveService {
            revisions: vec![
                rev("iris", 1, "file:///1", Ready),
                rev("iris", 2, "file:///2", new_state),
            ],
            rolled_out: Some("iris-predictor-00001".into()),
            traffic: traffic(&[("iris-predictor-00001", 100)]),
            overridden: false,
            tags: Tags::default(),
        },
    )
}

#[test]
fn kserve_canary_semantics() {
    let p = SyncPolicy::default();
    // canaryTrafficPercent: 10 -> 90/10 once the new revision is Ready.
    let d = [want("iris", "file:///2", Some(10))];
    assert_eq!(
        render(&reconcile(&d, &two_revisions(Pending), p)),
        Vec::<String>::new()
    );
    assert_eq!(
        render(&reconcile(&d, &two_revisions(Ready), p)),
        ["traffic default/iris [iris-predictor-00001=90,iris-predictor-00002=10]"]
    );
    // Removing the field promotes.
    let d = [want("iris", "file:///2", None)];
    assert_eq!(
        render(&reconcile(&d, &two_revisions(Ready), p)),
        [
            "rolled-out default/iris iris-predictor-00002",
            "traffic default/iris [iris-predictor-00002=100]",
            "retire default/iris iris-predictor-00001"
        ]
    );
    // 100 promotes too.
    let d = [want("iris", "file:///2", Some(100))];
    assert_eq!(
        render(&reconcile(&d, &two_revisions(Ready), p))[0],
        "rolled-out default/iris iris-predictor-00002"
    );
    // 0 pins the previous revision.
    let d = [want("iris", "file:///2", Some(0))];
    assert_eq!(
        render(&reconcile(&d, &two_revisions(Ready), p)),
        Vec::<String>::new()
    );
}

#[test]
fn a_failed_revision_never_gets_traffic() {
    let d = [want("iris", "file:///2", Some(50))];
    let failed = RevisionState::Failed {
        reason: "digest mismatch: expected sha256:aa, got sha256:bb".into(),
    };
    assert_eq!(
        render(&reconcile(
            &d,
            &two_revisions(failed),
            SyncPolicy::default()
        )),
        [
            "out-of-sync default/iris: revision iris-predictor-00002 failed and gets no traffic: digest mismatch: expected sha256:aa, got sha256:bb"
        ]
    );
}

#[test]
fn a_rollout_holds_the_canary_at_zero_until_its_steps_run() {
    let mut d = want("iris", "file:///2", Some(30));
    d.rollout = Some("iris".into());
    assert_eq!(
        render(&reconcile(
            &[d],
            &two_revisions(Ready),
            SyncPolicy::default()
        )),
        Vec::<String>::new()
    );
}

#[test]
fn tag_routing_names_latest_and_previous() {
    let mut d = want("iris", "file:///2", Some(10));
    d.tag_routing = true;
    assert_eq!(
        render(&reconcile(
            &[d],
            &two_revisions(Ready),
            SyncPolicy::default()
        )),
        [
            "traffic default/iris [iris-predictor-00001=90,iris-predictor-00002=10] latest=iris-predictor-00002 prev=iris-predictor-00001"
        ]
    );
}

#[test]
fn reverting_the_spec_returns_to_the_old_revision() {
    // Git goes back to the first model while the second is rolled out.
    let d = [want("iris", "file:///1", None)];
    let l = live(
        "iris",
        LiveService {
            revisions: vec![
                rev("iris", 1, "file:///1", Ready),
                rev("iris", 2, "file:///2", Ready),
            ],
            rolled_out: Some("iris-predictor-00002".into()),
            traffic: traffic(&[("iris-predictor-00002", 100)]),
            overridden: false,
            tags: Tags::default(),
        },
    );
    assert_eq!(
        render(&reconcile(&d, &l, SyncPolicy::default())),
        [
            "rolled-out default/iris iris-predictor-00001",
            "traffic default/iris [iris-predictor-00001=100]",
            "retire default/iris iris-predictor-00002"
        ]
    );
}

#[test]
fn prune_and_out_of_sync() {
    let l = two_revisions(Ready);
    assert_eq!(
        render(&reconcile(&[], &l, SyncPolicy::default())),
        [
            "out-of-sync default/iris: deleted from Git; still serving because the sync policy does not prune"
        ]
    );
    let prune = SyncPolicy {
        prune: true,
        self_heal: false,
    };
    assert_eq!(render(&reconcile(&[], &l, prune)), ["remove default/iris"]);
}

#[test]
fn self_heal_reverts_api_overrides() {
    let d = [want("iris", "file:///2", Some(10))];
    let mut l = two_revisions(Ready);
    let svc = l.services.values_mut().next().unwrap();
    svc.traffic = traffic(&[("iris-predictor-00002", 100)]);
    svc.overridden = true;
    assert_eq!(
        render(&reconcile(&d, &l, SyncPolicy::default())),
        [
            "out-of-sync default/iris: traffic was changed through the API; kept because the sync policy does not self-heal"
        ]
    );
    let heal = SyncPolicy {
        prune: false,
        self_heal: true,
    };
    assert_eq!(
        render(&reconcile(&d, &l, heal)),
        ["traffic default/iris [iris-predictor-00001=90,iris-predictor-00002=10]"]
    );
}

#[test]
fn spec_hash_ignores_spelling_and_traffic() {
    let mut a = model("file:///1");
    let mut b = a.clone();
    b.form = PredictorForm::Framework("onnx");
    assert_eq!(spec_hash(&a), spec_hash(&b));
    a.runtime = Some("x".into());
    assert_ne!(spec_hash(&a), spec_hash(&b));
    // Field boundaries matter: "ab" + "" differs from "a" + "b".
    let mut c = model("file:///1");
    c.format.name = "onnxfile:///1".into();
    c.storage_uri.raw = String::new();
    assert_ne!(spec_hash(&c), spec_hash(&model("file:///1")));
}

#[test]
fn allowing_a_signature_change_makes_another_revision_and_nothing_else_does() {
    let m = model("file:///1");
    // Without the annotation, a revision is named as it always was.
    assert_eq!(crate::desired::revision_hash(&m, false), spec_hash(&m));
    assert_ne!(crate::desired::revision_hash(&m, true), spec_hash(&m));
}

#[test]
fn a_restart_waits_for_the_rolled_out_revision() {
    // After a restart both revisions load again; the new one happens to finish first.
    let d = [want("iris", "file:///2", Some(10))];
    let l = live(
        "iris",
        LiveService {
            revisions: vec![
                rev("iris", 1, "file:///1", Pending),
                rev("iris", 2, "file:///2", Ready),
            ],
            rolled_out: Some("iris-predictor-00001".into()),
            traffic: traffic(&[("iris-predictor-00001", 90), ("iris-predictor-00002", 10)]),
            overridden: false,
            tags: Tags::default(),
        },
    );
    let r = reconcile(&d, &l, SyncPolicy::default());
    assert_eq!(render(&r), Vec::<String>::new());
}
