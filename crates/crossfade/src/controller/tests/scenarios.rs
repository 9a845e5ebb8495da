//! Scenarios of one Application's decisions, as traces of plans.

use std::time::Duration;

use api::Trigger;
use engine::SyncPolicy;

use super::super::plan::Event;
use super::support::{Repo, Scenario, V1, V2, app, id, isvc};

const AUTOMATED: bool = true;

fn policy(prune: bool, self_heal: bool) -> SyncPolicy {
    SyncPolicy { prune, self_heal }
}

#[test]
fn a_first_commit_is_recorded_then_served_once_its_revision_is_ready() {
    let repo = Repo::new();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let mut s = Scenario::new(app(AUTOMATED, SyncPolicy::default()));
    assert_eq!(s.sync(Trigger::Manual), ["fetch"]);
    // The commit is the desired state; the sync waits for its revision to load.
    assert_eq!(
        s.fetched(&repo),
        [
            "history Applied c01",
            "audit sync models by git:c01",
            "revision iris-predictor-00001 Pending",
            "audit create-revision models/iris by controller",
            "service models/iris []",
            "load models/iris iris-predictor-00001",
            "notify sync.succeeded file:///repo",
        ]
    );
    // Ready: all traffic to it, rolled out, and the sync answered.
    assert_eq!(
        s.ready("iris", "iris-predictor-00001"),
        [
            "revision iris-predictor-00001 Ready",
            "audit rolled-out models/iris by controller",
            "audit set-traffic models/iris by controller",
            "service models/iris [iris-predictor-00001=100]",
            "reply 1: Applied",
        ]
    );
    // The same commit again: nothing to write.
    assert_eq!(s.sync(Trigger::Refresh), ["fetch"]);
    assert_eq!(s.fetched(&repo), ["reply 2: Unchanged"]);
}

#[test]
fn a_commit_with_errors_is_refused_once_and_the_last_good_one_keeps_serving() {
    let repo = Repo::new();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let mut s = Scenario::new(app(AUTOMATED, SyncPolicy::default()));
    s.sync_and_load(Trigger::Manual, &repo);
    repo.commit(&[(
        "iris.yaml",
        &isvc("iris", V2, "    canaryTrafficPercent: 300\n"),
    )]);
    let trace = s.sync_and_load(Trigger::Poll, &repo);
    assert_eq!(trace.len(), 4, "{trace:#?}");
    assert_eq!(trace[0], "fetch");
    assert!(
        trace[1].starts_with("history Invalid c02: commit c02000000000 is not synced: its manifests have errors; commit c01000000000 keeps serving"),
        "{trace:#?}"
    );
    assert_eq!(trace[2], "notify sync.failed file:///repo");
    assert!(
        trace[3].starts_with("reply 2: Invalid: commit"),
        "{trace:#?}"
    );
    assert_eq!(
        s.traffic("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );
    assert!(s.state.error.as_deref().unwrap().contains("is not synced"));
    // Looked at again: not recorded twice, still refused.
    assert_eq!(s.sync(Trigger::Refresh), ["fetch"]);
    let again = s.fetched(&repo);
    assert_eq!(again.len(), 1, "{again:#?}");
    assert!(
        again[0].starts_with("reply 3: Unchanged: commit"),
        "{again:#?}"
    );
}

#[test]
fn without_an_automated_policy_a_new_commit_waits_for_crossfade_sync() {
    let repo = Repo::new();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let mut s = Scenario::new(app(!AUTOMATED, SyncPolicy::default()));
    // A poll sees the commit and applies nothing.
    assert_eq!(s.handle(Event::Wake), ["fetch"]);
    assert_eq!(s.fetched(&repo), Vec::<String>::new());
    assert!(
        s.state
            .error
            .as_deref()
            .unwrap()
            .contains("run `crossfade sync` to apply it")
    );
    assert!(s.traffic("iris").is_empty());
    // `crossfade sync` applies it.
    let trace = s.sync_and_load(Trigger::Manual, &repo);
    assert!(
        trace.contains(&"history Applied c01".to_owned()),
        "{trace:#?}"
    );
    assert_eq!(
        s.traffic("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );
    assert_eq!(s.state.error, None);
}

/// Two revisions Ready under a 10% canary: `iris-predictor-00001=90`, `-00002=10`.
fn canary(policy: SyncPolicy) -> (Repo, Scenario) {
    let repo = Repo::default();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let mut s = Scenario::new(app(AUTOMATED, policy));
    s.sync_and_load(Trigger::Manual, &repo);
    repo.commit(&[(
        "iris.yaml",
        &isvc("iris", V2, "    canaryTrafficPercent: 10\n"),
    )]);
    s.sync_and_load(Trigger::Manual, &repo);
    assert_eq!(
        s.traffic("iris"),
        [
            ("iris-predictor-00001".to_owned(), 90),
            ("iris-predictor-00002".to_owned(), 10)
        ]
    );
    (repo, s)
}

#[test]
fn an_override_without_self_heal_is_kept_and_reported_until_a_sync() {
    let (repo, mut s) = canary(policy(false, false));
    assert_eq!(
        s.set_traffic(
            "iris",
            &[("iris-predictor-00001", 0), ("iris-predictor-00002", 100)]
        ),
        [
            "service models/iris [iris-predictor-00002=100] overridden",
            "audit override-traffic models/iris by api:admin",
            "reply 3: traffic set",
        ]
    );
    // A refresh under the policy keeps it and says why.
    assert_eq!(s.sync(Trigger::Refresh), ["fetch"]);
    assert_eq!(
        s.fetched(&repo),
        [
            "service models/iris [iris-predictor-00002=100] overridden",
            "reply 4: Unchanged"
        ]
    );
    assert!(
        s.state.out_of_sync[&id("iris")].contains("does not self-heal"),
        "{:?}",
        s.state.out_of_sync
    );
    // An explicit sync applies Git again.
    let trace = s.sync_and_load(Trigger::Manual, &repo);
    assert!(
        trace.contains(&"audit set-traffic models/iris by controller".to_owned()),
        "{trace:#?}"
    );
    assert_eq!(
        s.traffic("iris"),
        [
            ("iris-predictor-00001".to_owned(), 90),
            ("iris-predictor-00002".to_owned(), 10)
        ]
    );
    assert!(s.state.out_of_sync.is_empty());
    // Bad overrides are refused with the reason, and change nothing.
    assert_eq!(
        s.set_traffic("iris", &[("iris-predictor-00001", 60)]),
        ["reply 6: refused: the percents sum to 60, not 100"]
    );
    assert_eq!(
        s.set_traffic("iris", &[("iris-predictor-00009", 100)]),
        ["reply 7: refused: models/iris has no revision iris-predictor-00009"]
    );
}

#[test]
fn with_self_heal_an_override_is_reverted_at_the_next_reconcile() {
    let (repo, mut s) = canary(policy(false, true));
    s.set_traffic("iris", &[("iris-predictor-00001", 100)]);
    assert_eq!(
        s.traffic("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );
    s.after(Duration::from_secs(180));
    // The poll is due.
    assert_eq!(s.handle(Event::Wake), ["fetch"]);
    assert_eq!(
        s.fetched(&repo),
        [
            "audit set-traffic models/iris by controller",
            "service models/iris [iris-predictor-00001=90 iris-predictor-00002=10]",
        ]
    );
    assert!(s.state.out_of_sync.is_empty());
}

#[test]
fn prune_removes_a_service_deleted_from_git_and_without_it_the_service_keeps_serving() {
    for prune in [true, false] {
        let repo = Repo::new();
        repo.commit(&[
            ("iris.yaml", &isvc("iris", V1, "")),
            ("wine.yaml", &isvc("wine", V1, "")),
        ]);
        let mut s = Scenario::new(app(AUTOMATED, policy(prune, false)));
        s.sync_and_load(Trigger::Manual, &repo);
        repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
        let trace = s.sync_and_load(Trigger::Poll, &repo);
        if prune {
            assert_eq!(
                trace,
                [
                    "fetch",
                    "history Applied c02",
                    "audit sync models by git:c02",
                    "remove service models/wine",
                    "audit remove-service models/wine by controller",
                    "notify sync.succeeded file:///repo",
                    "reply 2: Applied",
                ]
            );
            assert!(!s.state.live.services.contains_key(&id("wine")));
        } else {
            assert_eq!(
                trace,
                [
                    "fetch",
                    "history Applied c02",
                    "audit sync models by git:c02",
                    "service models/wine [wine-predictor-00001=100]",
                    "notify sync.succeeded file:///repo",
                    "reply 2: Applied",
                ]
            );
            assert!(s.state.out_of_sync[&id("wine")].contains("deleted from Git"));
            assert_eq!(
                s.traffic("wine"),
                [("wine-predictor-00001".to_owned(), 100)]
            );
        }
    }
}

#[test]
fn a_traffic_override_that_comes_after_a_prune_is_refused() {
    let repo = Repo::new();
    repo.commit(&[
        ("iris.yaml", &isvc("iris", V1, "")),
        ("wine.yaml", &isvc("wine", V1, "")),
    ]);
    let mut s = Scenario::new(app(AUTOMATED, policy(true, false)));
    s.sync_and_load(Trigger::Manual, &repo);
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    s.sync_and_load(Trigger::Poll, &repo);
    // The operator's command was sent before the prune and arrives after it.
    assert_eq!(
        s.set_traffic("wine", &[("wine-predictor-00001", 100)]),
        ["reply 3: refused: no service models/wine"]
    );
}

#[test]
fn syncs_never_overlap_and_a_request_during_a_fetch_gets_a_fetch_of_its_own() {
    let repo = Repo::new();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let mut s = Scenario::new(app(AUTOMATED, SyncPolicy::default()));
    assert_eq!(s.sync(Trigger::Manual), ["fetch"]);
    // A webhook while the fetch runs: no second fetch yet.
    assert_eq!(
        s.sync(Trigger::Webhook("push to main".into())),
        Vec::<String>::new()
    );
    // The first fetch read commit 1; the webhook may be about a later one, so it is
    // answered by the next fetch, which starts now.
    repo.commit(&[("iris.yaml", &isvc("iris", V2, ""))]);
    let first = s.handle(Event::Fetched(Ok(repo_at(&repo, 1))));
    assert!(first.contains(&"fetch".to_owned()), "{first:#?}");
    assert!(
        !first.iter().any(|l| l.starts_with("reply 2")),
        "{first:#?}"
    );
    let second = s.fetched(&repo);
    assert!(
        second.contains(&"history Applied c02".to_owned()),
        "{second:#?}"
    );
    assert!(
        second.contains(&"reply 2: Applied".to_owned()),
        "{second:#?}"
    );
}

/// Commit `n` (1-based) of `repo`, as a fetch would have read it then.
fn repo_at(repo: &Repo, n: usize) -> super::super::plan::Fetched {
    use super::super::task::Fetcher;
    let head = repo.head().unwrap();
    let mut info = head.info;
    info.id = format!("c{n:02}{}", "0".repeat(37));
    let sources = repo.manifests_at(&info.id).unwrap();
    super::super::plan::Fetched::new(
        info,
        Ok(sources),
        manifest::Options {
            require_digest: true,
        },
        &mut manifest::ParseCache::default(),
    )
}

#[test]
fn fetch_failures_are_recorded_once_each_and_back_off() {
    let repo = Repo::new();
    repo.fail(Some("the remote hung up"));
    let mut s = Scenario::new(app(AUTOMATED, SyncPolicy::default()));
    assert_eq!(s.handle(Event::Wake), ["fetch"]);
    let start = s.now;
    let plan = s.state.handle(Event::Fetched(repo.head()), s.now);
    assert_eq!(
        super::support::render(&plan),
        [
            "history FetchFailed -: the remote hung up",
            "notify sync.failed file:///repo",
        ]
    );
    // 2 s after the first failure, then 4 s, 8 s, ...: the same error is not recorded again.
    assert_eq!(plan.wake, Some(start + Duration::from_secs(2)));
    s.after(Duration::from_secs(2));
    assert_eq!(s.handle(Event::Wake), ["fetch"]);
    let plan = s.state.handle(Event::Fetched(repo.head()), s.now);
    assert!(plan.writes.is_empty());
    assert_eq!(plan.wake, Some(s.now + Duration::from_secs(4)));
    // A wake-up before the poll is due fetches nothing.
    s.after(Duration::from_secs(1));
    assert_eq!(s.handle(Event::Wake), Vec::<String>::new());
    // Back: the poll interval again.
    repo.fail(None);
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    s.after(Duration::from_secs(3));
    assert_eq!(s.handle(Event::Wake), ["fetch"]);
    let plan = s.state.handle(Event::Fetched(repo.head()), s.now);
    assert_eq!(plan.wake, Some(s.now + Duration::from_secs(180)));
    assert_eq!(s.state.error, None);
}

#[test]
fn a_revision_that_fails_to_load_never_gets_traffic_and_the_sync_says_so() {
    let repo = Repo::new();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let mut s = Scenario::new(app(AUTOMATED, SyncPolicy::default()));
    s.sync_and_load(Trigger::Manual, &repo);
    repo.commit(&[("iris.yaml", &isvc("iris", V2, ""))]);
    s.sync(Trigger::Manual);
    s.fetched(&repo);
    assert_eq!(
        s.failed("iris", "iris-predictor-00002", "the digest does not match"),
        [
            "revision iris-predictor-00002 Failed",
            "service models/iris [iris-predictor-00001=100]",
            "reply 2: Applied",
        ]
    );
    assert_eq!(
        s.traffic("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );
}

#[test]
fn a_header_match_that_cannot_be_built_drops_its_route_rather_than_widen_it() {
    use engine::rollout::{HeaderMatchStatus, MatchKind};
    let m = |kind, value: &str| HeaderMatchStatus {
        header: "X-Team".into(),
        kind,
        value: value.into(),
    };
    // The manifest refuses such a regex; should one reach the data plane anyway, the whole
    // route goes: with the condition left out it would take every request.
    assert!(
        super::super::header_matches(
            &id("iris"),
            "testers",
            &[m(MatchKind::Exact, "ml"), m(MatchKind::Regex, "ml[")]
        )
        .is_none()
    );
    let built = super::super::header_matches(
        &id("iris"),
        "testers",
        &[m(MatchKind::Exact, "ml"), m(MatchKind::Regex, "^ml-.*")],
    )
    .unwrap();
    assert_eq!(built.len(), 2);
    assert_eq!(built[0].0, "x-team");
    assert!(matches!(&built[1].1, gateway::Match::Regex(r) if r.is_match("ml-platform")));
}

/// Each commit after the first is decoded against the one before; the desired state is then
/// updated from what changed, and only the services it changed are reconciled. Whatever the
/// edits (in place, added, removed, renamed, after a refused commit), the result equals the
/// desired state worked out from the whole commit.
#[test]
fn a_commit_reconciles_only_the_services_it_changes() {
    let repo = Repo::new();
    let file = |name: &str, uri: &str| (format!("{name}.yaml"), isvc(name, uri, ""));
    let commit = |files: &[(String, String)]| {
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        repo.commit(&files);
    };
    let mut s = Scenario::new(app(AUTOMATED, policy(true, false)));
    // Decoded on its own, not through the repository's cache.
    let whole = |s: &Scenario, repo: &Repo| {
        use super::super::task::Fetcher;
        let commit = s.state.commit.clone().unwrap();
        let sources = repo.manifests_at(&commit).unwrap();
        let options = manifest::Options {
            require_digest: true,
        };
        let want = engine::desired_state(&manifest::parse(&sources, options).manifests);
        let have: Vec<_> = s.state.desired.values().cloned().collect();
        assert_eq!(have, want);
    };
    commit(&[file("a", V1), file("b", V1), file("c", V1)]);
    s.sync_and_load(Trigger::Manual, &repo);
    whole(&s, &repo);

    // One file edited: one service reconciled.
    commit(&[file("a", V1), file("b", V2), file("c", V1)]);
    let trace = s.sync_and_load(Trigger::Manual, &repo);
    assert!(
        trace.contains(&"load models/b b-predictor-00002".to_owned()),
        "{trace:#?}"
    );
    let services: Vec<_> = trace.iter().filter(|l| l.starts_with("service ")).collect();
    assert_eq!(
        services,
        [
            "service models/b [b-predictor-00001=100]",
            "service models/b [b-predictor-00002=100]"
        ]
    );
    whole(&s, &repo);

    // A refused commit, then one that adds, removes and keeps files: compared with the
    // refused parse, so the desired state is worked out again in full.
    commit(&[
        file("a", V1),
        file("b", V2),
        ("c.yaml".into(), "kind: [".into()),
    ]);
    let trace = s.sync_and_load(Trigger::Manual, &repo);
    assert!(
        trace.iter().any(|l| l.starts_with("history Invalid")),
        "{trace:#?}"
    );
    commit(&[file("b", V2), file("c", V1), file("d", V1)]);
    let trace = s.sync_and_load(Trigger::Manual, &repo);
    assert!(
        trace.contains(&"load models/d d-predictor-00001".to_owned()),
        "{trace:#?}"
    );
    assert!(
        trace.iter().any(|l| l == "remove service models/a"),
        "{trace:#?}"
    );
    whole(&s, &repo);

    // The same service in a file of another name: nothing to reconcile.
    commit(&[
        file("b", V2),
        ("c-renamed.yaml".into(), isvc("c", V1, "")),
        file("d", V1),
    ]);
    let trace = s.sync_and_load(Trigger::Manual, &repo);
    assert!(
        !trace
            .iter()
            .any(|l| l.starts_with("service ") || l.starts_with("load ")),
        "{trace:#?}"
    );
    whole(&s, &repo);

    // A file removed from the end, and one added in front.
    commit(&[
        file("a0", V1),
        file("b", V2),
        ("c-renamed.yaml".into(), isvc("c", V1, "")),
    ]);
    let trace = s.sync_and_load(Trigger::Manual, &repo);
    assert!(
        trace.iter().any(|l| l == "remove service models/d"),
        "{trace:#?}"
    );
    assert!(
        trace.contains(&"load models/a0 a0-predictor-00001".to_owned()),
        "{trace:#?}"
    );
    whole(&s, &repo);
}

/// A new revision that takes other inputs than the one serving is refused before it gets any
/// traffic, with the difference named; an added output is compatible; the annotation says a
/// change is meant.
#[test]
fn a_canary_whose_signature_breaks_clients_never_gets_traffic() {
    use super::support::onnx;
    let repo = Repo::new();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let mut s = Scenario::new(app(AUTOMATED, SyncPolicy::default()));
    s.sync(Trigger::Manual);
    s.fetched(&repo);
    let loaded = |s: &mut Scenario, revision: &str, model: &str| {
        s.handle(Event::Loaded {
            service: id("iris"),
            revision: revision.into(),
            outcome: Ok(onnx(revision, model)),
        })
    };
    loaded(&mut s, "iris-predictor-00001", "iris-logreg-v1");
    assert_eq!(
        s.traffic("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );

    repo.commit(&[("iris.yaml", &isvc("iris", V2, ""))]);
    s.sync(Trigger::Manual);
    s.fetched(&repo);
    let trace = loaded(&mut s, "iris-predictor-00002", "iris-five-features");
    assert!(
        trace.contains(&"revision iris-predictor-00002 Failed".to_owned()),
        "{trace:#?}"
    );
    let reason = s.state.live.services[&id("iris")]
        .revisions
        .iter()
        .find_map(|r| match &r.state {
            engine::RevisionState::Failed { reason } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        reason,
        "its signature is not iris-predictor-00001's: input X has shape [N, 5] where stable's has [N, 4]; clients of the stable revision would be refused (annotate the InferenceService `crossfade.dev/signature-change: intended` if the change is meant)"
    );
    assert_eq!(
        s.traffic("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );

    // An output added: compatible.
    let v3 = V2.replace("v2", "v3");
    repo.commit(&[("iris.yaml", &isvc("iris", &v3, ""))]);
    s.sync(Trigger::Manual);
    s.fetched(&repo);
    loaded(&mut s, "iris-predictor-00003", "iris-extra-output");
    assert_eq!(
        s.traffic("iris"),
        [("iris-predictor-00003".to_owned(), 100)]
    );

    // The five-feature model again, said to be meant: it serves.
    let annotated = isvc("iris", V2, "").replace(
        "namespace: models}",
        "namespace: models, annotations: {crossfade.dev/signature-change: intended}}",
    );
    repo.commit(&[("iris.yaml", &annotated)]);
    s.sync(Trigger::Manual);
    let trace = s.fetched(&repo);
    let revision = trace
        .iter()
        .find_map(|l| l.strip_prefix("load models/iris "))
        .unwrap_or_else(|| panic!("{trace:#?}"))
        .to_owned();
    loaded(&mut s, &revision, "iris-five-features");
    assert_eq!(s.traffic("iris"), [(revision, 100)]);
}
