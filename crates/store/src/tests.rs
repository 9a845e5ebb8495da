use serde_json::json;

use super::*;

fn sync(outcome: SyncOutcome, commit: &str) -> SyncRecord {
    SyncRecord {
        seq: 0,
        time: 1_700_000_000_000,
        repo: "file:///srv/git/models".into(),
        revision: "main".into(),
        commit: Some(commit.into()),
        author: Some("Ada <ada@example.com>".into()),
        commit_time: Some(1_700_000_000),
        signer: None,
        signer_key: None,
        outcome,
        message: None,
        diagnostics: vec![],
        services: vec!["default/iris".into()],
    }
}

#[test]
fn schema_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(Store::open(dir.path()), Err(Error::Locked { .. })));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    // A database from the future is refused.
    let txn = store.db.begin_write().unwrap();
    txn.open_table(META).unwrap().insert("schema", 99).unwrap();
    txn.commit().unwrap();
    drop(store);
    let err = Store::open(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Schema { found: 99, .. }), "{err}");
}

#[test]
fn sync_history_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store
                .record_sync(sync(SyncOutcome::Applied, "a"))
                .unwrap()
                .seq,
            1
        );
        assert_eq!(
            store
                .record_sync(sync(SyncOutcome::Invalid, "b"))
                .unwrap()
                .seq,
            2
        );
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store
            .record_sync(sync(SyncOutcome::Untrusted, "c"))
            .unwrap()
            .seq,
        3
    );
    let all = store.syncs(10).unwrap();
    let commits: Vec<_> = all.iter().map(|s| s.commit.clone().unwrap()).collect();
    assert_eq!(commits, ["c", "b", "a"]);
    assert_eq!(all[1].outcome, SyncOutcome::Invalid);
    assert_eq!(store.syncs(1).unwrap().len(), 1);
}

#[test]
fn revisions_are_numbered_per_service_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let r1 = store
            .revision_for("default", "iris", "h1", ("onnx", "file:///1"), 10)
            .unwrap();
        assert_eq!((r1.name.as_str(), r1.number), ("iris-predictor-00001", 1));
        assert_eq!(r1.state, RevisionState::Pending);
        let r2 = store
            .revision_for("default", "iris", "h2", ("onnx", "file:///2"), 20)
            .unwrap();
        assert_eq!(r2.name, "iris-predictor-00002");
        // The same spec again is the same revision.
        assert_eq!(
            store
                .revision_for("default", "iris", "h1", ("onnx", "file:///1"), 30)
                .unwrap(),
            r1
        );
        // Other services and namespaces count on their own.
        let other = store
            .revision_for("default", "iris-v2", "h1", ("onnx", "file:///1"), 40)
            .unwrap();
        assert_eq!(other.name, "iris-v2-predictor-00001");
        let staged = store
            .revision_for("staging", "iris", "h9", ("onnx", "file:///9"), 40)
            .unwrap();
        assert_eq!(staged.name, "iris-predictor-00001");
        let mut ready = r2.clone();
        ready.state = RevisionState::Ready;
        ready.digest = Some("abc".into());
        store.update_revision(&ready).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let all = store.revisions("default", "iris").unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].state, RevisionState::Ready);
    assert_eq!(all[1].digest.as_deref(), Some("abc"));
    let r3 = store
        .revision_for("default", "iris", "h3", ("onnx", "file:///3"), 50)
        .unwrap();
    assert_eq!(r3.name, "iris-predictor-00003");
}

#[test]
fn audit_chain_detects_edits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.verify_audit().unwrap(), Ok(0));
    let first = store
        .audit(
            1,
            "git:abc",
            "sync",
            "default/iris",
            json!({"commit": "abc"}),
        )
        .unwrap();
    assert_eq!(first.prev, GENESIS);
    let second = store
        .audit(2, "api:admin", "promote", "default/iris", json!({}))
        .unwrap();
    assert_eq!(second.prev, first.hash);
    store
        .audit(
            3,
            "controller",
            "set-traffic",
            "default/iris",
            json!({"canary": 10}),
        )
        .unwrap();
    assert_eq!(store.verify_audit().unwrap(), Ok(3));

    // Someone edits the second entry's detail.
    let mut edited = second.clone();
    edited.detail = json!({"forced": true});
    store.overwrite_audit_entry(&edited).unwrap();
    let broken = store.verify_audit().unwrap().unwrap_err();
    assert_eq!(broken.seq, 2);
    assert!(broken.reason.contains("edited"), "{broken}");

    // ... and recomputes its hash: now the third entry no longer points at it.
    edited.hash = entry_hash(&edited);
    store.overwrite_audit_entry(&edited).unwrap();
    let broken = store.verify_audit().unwrap().unwrap_err();
    assert_eq!(broken.seq, 3);

    store.overwrite_audit_entry(&second).unwrap();
    assert_eq!(store.verify_audit().unwrap(), Ok(3));
    assert_eq!(store.audit_log().unwrap().len(), 3);
}

#[test]
fn services_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let record = ServiceRecord {
        namespace: "default".into(),
        name: "iris".into(),
        application: "models".into(),
        rolled_out: Some("iris-predictor-00001".into()),
        traffic: vec![
            ("iris-predictor-00001".into(), 90),
            ("iris-predictor-00002".into(), 10),
        ],
        overridden: false,
    };
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_service(&record).unwrap();
        let mut other = record.clone();
        other.name = "gone".into();
        store.put_service(&other).unwrap();
        store.remove_service("default", "gone").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.services().unwrap(), [record]);
}

#[test]
fn rollout_status_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.rollouts().unwrap().is_empty());
        store
            .put_rollout("models", "iris", br#"{"step":1}"#)
            .unwrap();
        store
            .put_rollout("models", "iris", br#"{"step":2}"#)
            .unwrap();
        store.put_rollout("models", "other", b"{}").unwrap();
        store.remove_rollout("models", "other").unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.rollouts().unwrap(),
        vec![("models".into(), "iris".into(), br#"{"step":2}"#.to_vec())]
    );
}

#[test]
fn the_data_directory_and_the_database_are_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A directory the operator made with the usual 0755.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(&data).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(FILE_NAME)), 0o600);
    drop(store);
    let fresh = dir.path().join("a/b");
    let _store = Store::open(&fresh).unwrap();
    assert_eq!(mode(&fresh), 0o700);
}

#[test]
fn the_audit_log_reads_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..10 {
        store
            .audit(i, "test", "act", &format!("s{i}"), serde_json::json!({}))
            .unwrap();
    }
    let seqs = |page: Vec<AuditEntry>| page.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.audit_page(None, 3).unwrap()), [8, 9, 10]);
    assert_eq!(seqs(store.audit_page(Some(8), 3).unwrap()), [5, 6, 7]);
    assert_eq!(seqs(store.audit_page(Some(3), 5).unwrap()), [1, 2]);
    assert_eq!(store.audit_page(Some(1), 5).unwrap(), vec![]);
}

#[test]
fn records_from_older_builds_decode_with_defaults() {
    // A revision as builds before `model_format` and `reason` wrote it.
    let old = br#"{"namespace": "default", "service": "iris", "name": "iris-predictor-00001",
        "number": 1, "spec_hash": "ab", "storage_uri": "file:///m.onnx", "digest": null,
        "state": "Ready", "created_at": 5}"#;
    let r: RevisionRecord = serde_json::from_slice(old).unwrap();
    assert_eq!(
        (r.model_format.as_str(), r.state, r.reason),
        ("onnx", RevisionState::Ready, None)
    );
    // A sync record without the later `services` and `seq`.
    let old = br#"{"time": 1, "repo": "r", "revision": "HEAD", "commit": null, "author": null,
        "commit_time": null, "signer": null, "signer_key": null, "outcome": "Invalid",
        "message": "m", "diagnostics": []}"#;
    let s: SyncRecord = serde_json::from_slice(old).unwrap();
    assert_eq!(
        (s.outcome, s.services.len(), s.seq),
        (SyncOutcome::Invalid, 0, 0)
    );
}

#[test]
fn a_batch_is_written_whole_and_chains_its_audit_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .audit(1, "test", "before", "s", serde_json::json!({}))
        .unwrap();
    let revision = RevisionRecord {
        namespace: "default".into(),
        service: "iris".into(),
        name: "iris-predictor-00001".into(),
        number: 1,
        spec_hash: "ab".into(),
        storage_uri: "file:///m.onnx".into(),
        ..RevisionRecord::default()
    };
    let audit = |action: &str| Write::Audit {
        time: 2,
        actor: "controller".into(),
        action: action.into(),
        subject: "default/iris".into(),
        detail: serde_json::json!({"n": action}),
    };
    store
        .commit(&[
            Write::Sync(SyncRecord {
                repo: "r".into(),
                ..SyncRecord::default()
            }),
            Write::Revision(revision.clone()),
            audit("create-revision"),
            Write::Service(ServiceRecord {
                namespace: "default".into(),
                name: "iris".into(),
                ..ServiceRecord::default()
            }),
            Write::Rollout {
                namespace: "default".into(),
                service: "iris".into(),
                status: b"{}".to_vec(),
            },
            audit("set-traffic"),
            Write::Sync(SyncRecord {
                repo: "r2".into(),
                ..SyncRecord::default()
            }),
        ])
        .unwrap();
    let syncs = store.syncs(10).unwrap();
    assert_eq!(
        syncs
            .iter()
            .map(|s| (s.seq, s.repo.as_str()))
            .collect::<Vec<_>>(),
        [(2, "r2"), (1, "r")]
    );
    assert_eq!(
        store.revisions("default", "iris").unwrap(),
        store.all_revisions().unwrap()
    );
    assert_eq!(store.all_revisions().unwrap(), [revision]);
    assert_eq!(store.services().unwrap().len(), 1);
    assert_eq!(store.rollouts().unwrap().len(), 1);
    let log = store.audit_log().unwrap();
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["before", "create-revision", "set-traffic"]
    );
    assert_eq!(store.verify_audit().unwrap(), Ok(3));

    store
        .commit(&[
            Write::RemoveService {
                namespace: "default".into(),
                name: "iris".into(),
            },
            Write::RemoveRollout {
                namespace: "default".into(),
                service: "iris".into(),
            },
        ])
        .unwrap();
    assert!(store.services().unwrap().is_empty());
    assert!(store.rollouts().unwrap().is_empty());
    store.commit(&[]).unwrap();
    assert_eq!(store.verify_audit().unwrap(), Ok(3));
}
