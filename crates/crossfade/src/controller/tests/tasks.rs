//! The Application tasks in process: what carrying out the plans guarantees.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use api::dto::SyncOutcome;
use engine::SyncPolicy;

use super::support::{Flaky, InProcess, Repo, V1, V2, isvc};

fn store(dir: &std::path::Path) -> Arc<store::Store> {
    Arc::new(store::Store::open(&dir.join("data")).unwrap())
}

/// A controller on a fresh store, its repository holding one commit: `iris` at V1.
fn iris_v1() -> (tempfile::TempDir, Arc<Repo>, InProcess) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let up = InProcess::start(
        dir.path(),
        store(dir.path()),
        None,
        Arc::clone(&repo),
        SyncPolicy::default(),
    );
    (dir, repo, up)
}

#[tokio::test(start_paused = true)]
async fn a_sync_answers_once_the_data_plane_serves_what_it_applied() {
    let (_dir, _repo, mut up) = iris_v1();
    // The poll at start applied the commit while `crossfade sync` was on its way: the sync
    // finds it applied, waits for its revision, and is answered after the route table
    // holds it.
    let result = up.sync().await;
    assert_eq!(result.outcome, SyncOutcome::Unchanged);
    assert_eq!(
        up.routed("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );
    let status = up.controller.status();
    assert_eq!(
        status.services[0].revisions[0].state,
        api::dto::RevisionState::Ready
    );
    // Everything it did is in the store, audit chain intact.
    let actions: Vec<String> = up
        .store
        .audit_log()
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["sync", "create-revision", "rolled-out", "set-traffic"]
    );
    assert_eq!(up.store.verify_audit().unwrap(), Ok(4));
    up.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_poll_comes_from_the_clock() {
    let (_dir, repo, mut up) = iris_v1();
    // The first poll runs at start and loads the revision.
    up.loads.recv().await.unwrap().ready();
    up.sync().await;
    // A new commit is picked up by the poll 180 s later, not before.
    repo.commit(&[("iris.yaml", &isvc("iris", V2, ""))]);
    tokio::time::advance(Duration::from_secs(179)).await;
    tokio::task::yield_now().await;
    assert!(up.loads.try_recv().is_err(), "polled before the interval");
    let load = up.loads.recv().await.unwrap();
    assert_eq!(load.job.revision, "iris-predictor-00002");
    load.ready();
    up.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_write_the_store_refuses_holds_the_change_back_visibly_until_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new();
    repo.commit(&[("iris.yaml", &isvc("iris", V1, ""))]);
    let store = store(dir.path());
    let flaky = Arc::new(Flaky {
        store: Arc::clone(&store),
        failures: AtomicU32::new(0),
    });
    let mut up = InProcess::start(
        dir.path(),
        Arc::clone(&store),
        Some(Arc::clone(&flaky) as _),
        Arc::clone(&repo),
        SyncPolicy::default(),
    );
    up.loads.recv().await.unwrap().ready();
    up.sync().await;
    assert_eq!(
        up.routed("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );

    // The disk is full: the new commit's writes fail, twice.
    flaky.failures.store(2, Ordering::SeqCst);
    repo.commit(&[("iris.yaml", &isvc("iris", V2, ""))]);
    let controller = Arc::clone(&up.controller);
    let sync = tokio::spawn(controller.sync_all(api::Trigger::Manual));
    // Until the writes hold, nothing of the change is carried out: no load starts, the old
    // revision serves, and the status says why.
    let error = loop {
        tokio::task::yield_now().await;
        if let Some(e) = up.controller.status().source.error {
            break e;
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    };
    assert!(error.contains("No space left on device"), "{error}");
    assert!(up.loads.try_recv().is_err());
    assert_eq!(
        up.routed("iris"),
        [("iris-predictor-00001".to_owned(), 100)]
    );
    // Retried with backoff: once written, the change goes on.
    let load = up.loads.recv().await.unwrap();
    assert_eq!(load.job.revision, "iris-predictor-00002");
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0);
    load.ready();
    assert_eq!(sync.await.unwrap()[0].outcome, SyncOutcome::Applied);
    assert_eq!(up.controller.status().source.error, None);
    // Recorded once.
    let applied = store
        .syncs(10)
        .unwrap()
        .iter()
        .filter(|s| s.outcome == store::SyncOutcome::Applied)
        .count();
    assert_eq!(applied, 2);
    up.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_crash_mid_sync_a_restart_resumes_from_the_store() {
    let (dir, repo, mut up) = iris_v1();
    up.loads.recv().await.unwrap().ready();
    up.sync().await;
    // A canary commit: applied and written, then the process dies while its revision loads.
    repo.commit(&[(
        "iris.yaml",
        &isvc("iris", V2, "    canaryTrafficPercent: 20\n"),
    )]);
    let controller = Arc::clone(&up.controller);
    let _sync = tokio::spawn(controller.sync_all(api::Trigger::Manual));
    let load = up.loads.recv().await.unwrap();
    assert_eq!(load.job.revision, "iris-predictor-00002");
    drop(load);
    let store = up.stop().await;
    let history = store.syncs(10).unwrap().len();

    // Back up: the old revision serves at once, the canary loads again, and the commit
    // is not recorded a second time.
    let mut up = InProcess::start(
        dir.path(),
        Arc::clone(&store),
        None,
        repo,
        SyncPolicy::default(),
    );
    let mut reloads = Vec::new();
    for _ in 0..2 {
        reloads.push(up.loads.recv().await.unwrap());
    }
    let mut names: Vec<&str> = reloads.iter().map(|l| l.job.revision.as_str()).collect();
    names.sort();
    assert_eq!(names, ["iris-predictor-00001", "iris-predictor-00002"]);
    for l in reloads {
        l.ready();
    }
    let result = up.sync().await;
    assert_eq!(result.outcome, SyncOutcome::Unchanged);
    assert_eq!(
        up.routed("iris"),
        [
            ("iris-predictor-00001".to_owned(), 80),
            ("iris-predictor-00002".to_owned(), 20)
        ]
    );
    assert_eq!(store.syncs(10).unwrap().len(), history);
    assert_eq!(store.verify_audit().unwrap().map(|n| n > 0), Ok(true));
    up.stop().await;
}
