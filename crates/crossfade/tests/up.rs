//! `crossfade up` as a user runs it: a real Git repository (local path and smart HTTP), commits
//! pushed while it runs, the CLI and the HTTP API, signed-only mode, `kill -9` and restart.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::rollouts::*;
use support::*;
use test_support::{GitHttpServer, GitRepo, SigningKey, bare_clone};

#[test]
fn local_repository_sync_history_restart() {
    let store = tempfile::tempdir().unwrap();
    let v1 = publish_model(store.path(), "iris-logreg-v1");
    let v2 = publish_model(store.path(), "iris-logreg-v2");
    let repo = GitRepo::new();
    repo.write("deploy/iris.yaml", &isvc("iris", &v1));
    let first = repo.commit("iris v1");
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Up::start(
            data.path(),
            &["--repo", repo.path().to_str().unwrap(), "--path", "deploy"],
        )
    };
    let up = start();

    let result = up.sync();
    assert_eq!(result[0]["commit"], first.as_str(), "{result:#}");
    let status = up.status();
    assert_eq!(status["source"]["commit"], first.as_str());
    assert_eq!(status["source"]["verified"], false);
    assert_eq!(status["source"]["error"], Value::Null);
    assert!(
        status["source"]["lastSyncAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let iris = service(&status, "iris");
    assert_eq!(iris["namespace"], "models");
    assert_eq!(iris["syncStatus"], "Synced");
    assert_eq!(iris["revisions"][0]["name"], "iris-predictor-00001");
    assert_eq!(iris["revisions"][0]["storageUri"], v1.as_str());

    // A commit that breaks a manifest: nothing of it applies, the status says why.
    repo.write("deploy/iris.yaml", &isvc("iris", "hf://nope"));
    let broken = repo.commit("broken manifest");
    let result = up.sync();
    assert_eq!(result[0]["outcome"], "Invalid");
    let status = up.status();
    assert_eq!(status["source"]["commit"], first.as_str());
    let error = status["source"]["error"].as_str().unwrap();
    assert!(
        error.contains(&broken[..12]) && error.contains(&first[..12]),
        "{error}"
    );
    let history = up.json(&["history", "iris"]);
    assert_eq!(history[0]["outcome"], "Invalid");
    let diagnostics = history[0]["diagnostics"].as_array().unwrap();
    assert!(
        diagnostics.iter().any(|d| d
            .as_str()
            .unwrap()
            .starts_with("iris.yaml:6:52: unsupported-scheme")),
        "{diagnostics:?}"
    );

    // A good commit replaces it: a second revision.
    repo.write("deploy/iris.yaml", &isvc("iris", &v2));
    let second = repo.commit("iris v2");
    assert_eq!(up.sync()[0]["outcome"], "Applied");
    let status = up.status();
    assert_eq!(status["source"]["commit"], second.as_str());
    assert_eq!(status["source"]["error"], Value::Null);
    assert_eq!(
        revision_names(&status, "iris"),
        ["iris-predictor-00001", "iris-predictor-00002"]
    );

    // kill -9, restart: history, audit chain and revision names survive.
    up.kill();
    let up = start();
    assert_eq!(up.sync()[0]["outcome"], "Unchanged");
    let status = up.status();
    assert_eq!(status["source"]["commit"], second.as_str());
    assert_eq!(
        revision_names(&status, "iris"),
        ["iris-predictor-00001", "iris-predictor-00002"]
    );
    let history = up.json(&["history"]);
    let outcomes: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["Applied", "Invalid", "Applied"]);
    let verdict = up.json(&["audit", "verify"]);
    assert_eq!(verdict["ok"], true, "{verdict:#}");
    assert!(verdict["entries"].as_u64().unwrap() >= 4);
    let (code, out) = up.cli(&["audit", "verify"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("audit log intact"), "{out}");

    // Restarting while the newest commit is a refused one: the last good commit is still the
    // one serving and the status says so, with the refusal.
    repo.write("deploy/iris.yaml", &isvc("iris", "hf://still-nope"));
    let broken = repo.commit("broken again");
    assert_eq!(up.sync()[0]["outcome"], "Invalid");
    up.kill();
    let up = start();
    assert_eq!(up.sync()[0]["outcome"], "Unchanged");
    let status = up.status();
    assert_eq!(status["source"]["commit"], second.as_str(), "{status:#}");
    let error = status["source"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&broken[..12]), "{status:#}");
    assert_eq!(
        service(&status, "iris")["syncStatus"],
        "Synced",
        "{status:#}"
    );
    let (code, head, body) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(code, 200, "{body}");
    assert_eq!(revision_of(&head), "iris-predictor-00002");

    // A second instance on the same data directory is refused.
    let other = Command::new(BIN)
        .args(["up", "--repo", repo.path().to_str().unwrap()])
        .args([
            "--data-dir",
            data.path().to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        stderr.contains("in use by another crossfade process"),
        "{stderr}"
    );
}

#[test]
fn smart_http_with_webhooks() {
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc("iris", "file:///models/iris-1.onnx"));
    let first = repo.commit("iris v1");
    let served = tempfile::tempdir().unwrap();
    let bare = bare_clone(repo.path(), served.path(), "models.git");
    let git = GitHttpServer::start(served.path());
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", &git.url("models.git")]);
    assert_eq!(up.sync()[0]["commit"], first.as_str());

    repo.write("iris.yaml", &isvc("iris", "file:///models/iris-2.onnx"));
    let second = repo.commit("iris v2");
    repo.push_to(&bare);

    // Webhooks: a wrong or missing signature is refused and triggers nothing; a malformed
    // body is a 400.
    let body = r#"{"ref":"refs/heads/main"}"#;
    let good = format!(
        "sha256={}",
        source::webhook::sign(HOOK_SECRET.as_bytes(), body.as_bytes())
    );
    let bad = format!(
        "sha256={}",
        source::webhook::sign(b"wrong", body.as_bytes())
    );
    assert_eq!(
        up.post(
            "/api/v1/webhook/git",
            &[("X-Hub-Signature-256", &bad)],
            body
        ),
        401
    );
    assert_eq!(up.post("/api/v1/webhook/git", &[], body), 401);
    assert_eq!(up.status()["source"]["commit"], first.as_str());
    let junk = "{oops";
    let junk_sig = format!(
        "sha256={}",
        source::webhook::sign(HOOK_SECRET.as_bytes(), junk.as_bytes())
    );
    assert_eq!(
        up.post(
            "/api/v1/webhook/git",
            &[("X-Hub-Signature-256", &junk_sig)],
            junk
        ),
        400
    );
    assert_eq!(
        up.post(
            "/api/v1/webhook/git",
            &[("X-Hub-Signature-256", &good)],
            body
        ),
        202
    );
    assert_eq!(
        up.post(
            "/api/v1/webhook/git",
            &[("X-Gitlab-Token", HOOK_SECRET)],
            "{}"
        ),
        202
    );
    // Syncs of one Application never overlap, so this one waits for the webhook's.
    up.sync();
    assert_eq!(up.status()["source"]["commit"], second.as_str());
    let applied: Vec<Value> = up.json(&["history"]).as_array().unwrap().clone();
    let for_second = applied
        .iter()
        .filter(|h| h["commit"] == second.as_str() && h["outcome"] == "Applied")
        .count();
    assert_eq!(for_second, 1, "{applied:#?}");

    // Mutating API calls need the token.
    assert_eq!(up.post("/api/v1/sync", &[], ""), 401);
    assert_eq!(
        up.post("/api/v1/sync", &[("Authorization", "Bearer nope")], ""),
        401
    );
}

#[test]
fn signed_only_mode() {
    let alice = SigningKey::ssh("alice@example.com");
    let mallory = SigningKey::ssh("mallory@example.com");
    let keys = tempfile::tempdir().unwrap();
    let signers: PathBuf = keys.path().join("allowed_signers");
    std::fs::write(&signers, alice.allowed_signers_line("alice@example.com")).unwrap();

    let mut repo = GitRepo::new();
    repo.sign_with(alice);
    repo.write("iris.yaml", &isvc("iris", "file:///models/iris-1.onnx"));
    let signed = repo.commit("iris v1, signed");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--allowed-signers",
            signers.to_str().unwrap(),
        ],
    );
    up.sync();
    let status = up.status();
    assert_eq!(status["source"]["commit"], signed.as_str());
    assert_eq!(status["source"]["verified"], true);
    assert_eq!(status["source"]["signer"], "alice@example.com");

    // Unsigned: refused, named in the status, the verified commit keeps serving.
    let alice = repo.unsigned().unwrap();
    repo.write("iris.yaml", &isvc("iris", "file:///models/iris-2.onnx"));
    let unsigned = repo.commit("iris v2, unsigned");
    assert_eq!(up.sync()[0]["outcome"], "Untrusted");
    let status = up.status();
    assert_eq!(status["source"]["commit"], signed.as_str());
    let error = status["source"]["error"].as_str().unwrap();
    assert!(
        error.contains(&unsigned[..12]) && error.contains("not signed"),
        "{error}"
    );

    // Signed by an untrusted key: refused too.
    repo.sign_with(mallory);
    repo.write("iris.yaml", &isvc("iris", "file:///models/iris-3.onnx"));
    let untrusted = repo.commit("iris v3, mallory");
    assert_eq!(up.sync()[0]["outcome"], "Untrusted");
    let error = up.status()["source"]["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(&untrusted[..12]) && error.contains("untrusted key"),
        "{error}"
    );
    assert_eq!(
        revision_names(&up.status(), "iris"),
        ["iris-predictor-00001"]
    );

    // Signed by alice again: synced.
    repo.sign_with(alice);
    repo.write("iris.yaml", &isvc("iris", "file:///models/iris-4.onnx"));
    let good = repo.commit("iris v4, signed");
    assert_eq!(up.sync()[0]["outcome"], "Applied");
    let status = up.status();
    assert_eq!(status["source"]["commit"], good.as_str());
    assert_eq!(status["source"]["error"], Value::Null);
    let history = up.json(&["history"]);
    let signers: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["signer"])
        .collect();
    assert_eq!(signers[0], "alice@example.com");
    assert_eq!(history[1]["outcome"], "Untrusted");
}

#[test]
fn an_argo_cd_application_file() {
    let repo = GitRepo::new();
    repo.write(
        "deploy/iris.yaml",
        &isvc("iris", "file:///models/iris-1.onnx"),
    );
    repo.write(
        "deploy/gone.yaml",
        &isvc("gone", "file:///models/gone.onnx"),
    );
    repo.commit("two services");
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("application.yaml");
    std::fs::write(
        &app,
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {{name: models, namespace: argocd}}\nspec:\n  source: {{repoURL: \"{}\", path: deploy, targetRevision: main}}\n  destination: {{namespace: models}}\n  syncPolicy:\n    automated: {{prune: true}}\n",
            repo.path().display()
        ),
    )
    .unwrap();
    let up = Up::start(&dir.path().join("data"), &["-f", app.to_str().unwrap()]);
    up.sync();
    let status = up.status();
    assert_eq!(status["applications"][0]["name"], "models");
    assert_eq!(status["applications"][0]["prune"], true);
    assert_eq!(status["source"]["revision"], "main");
    assert_eq!(status["services"].as_array().unwrap().len(), 2);

    // Deleted from Git with prune: removed.
    repo.remove("deploy/gone.yaml");
    repo.commit("remove gone");
    up.sync();
    let status = up.status();
    let names: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["iris"]);

    // A broken Application file is refused before anything starts.
    std::fs::write(
        &app,
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: x}\nspec: {}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["up", "-f", app.to_str().unwrap(), "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing required field `source`"),
        "{stderr}"
    );
}

#[test]
fn serves_the_synced_models_with_kserve_canary_semantics() {
    let store = tempfile::tempdir().unwrap();
    let v1 = publish_model(store.path(), "iris-logreg-v1");
    let v2 = publish_model(store.path(), "iris-mlp-v1");
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.commit("iris v1");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &["--repo", repo.path().to_str().unwrap(), "--require-digest"],
    );

    // `sync` returns once the revision is loaded.
    up.sync();
    let status = up.status();
    let iris = service(&status, "iris");
    assert_eq!(iris["health"], "Healthy", "{status:#}");
    let rev = &iris["revisions"][0];
    assert_eq!(
        (rev["state"].as_str(), rev["trafficPercent"].as_u64()),
        (Some("Ready"), Some(100))
    );
    assert_eq!(rev["digest"].as_str().unwrap().len(), 64);

    let (code, head, body) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(code, 200, "{body}");
    assert_eq!(revision_of(&head), "iris-predictor-00001");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], "q1");
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([0, 2]));
    let (code, _, body) = up.infer(
        "/v1/models/iris:predict",
        &[],
        r#"{"instances": [[5.1, 3.5, 1.4, 0.2]]}"#,
    );
    assert_eq!((code, body.as_str()), (200, r#"{"predictions":[0]}"#));

    // canaryTrafficPercent: 10: the new revision gets a tenth of the requests.
    repo.write(
        "iris.yaml",
        &isvc_with("iris", &v2, "    canaryTrafficPercent: 10\n"),
    );
    repo.commit("iris v2 as a 10% canary");
    up.sync();
    let status = up.status();
    let traffic: Vec<(String, u64)> = service(&status, "iris")["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["trafficPercent"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        traffic,
        [
            ("iris-predictor-00001".to_owned(), 90),
            ("iris-predictor-00002".to_owned(), 10)
        ]
    );
    let mut canary = 0;
    for _ in 0..1000 {
        let (code, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
        assert_eq!(code, 200);
        match revision_of(&head).as_str() {
            "iris-predictor-00002" => canary += 1,
            "iris-predictor-00001" => {}
            other => panic!("answered by {other}"),
        }
    }
    // 10% of 1000, within five standard deviations (sd = 9.5).
    assert!((52..=148).contains(&canary), "{canary}");
    // kill -9 mid-canary: the restarted process resumes the same split.
    up.kill();
    let up = Up::start(
        data.path(),
        &["--repo", repo.path().to_str().unwrap(), "--require-digest"],
    );
    assert_eq!(up.sync()[0]["outcome"], "Unchanged");
    let status = up.status();
    let resumed: Vec<(String, u64)> = service(&status, "iris")["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["trafficPercent"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(resumed, traffic, "{status:#}");

    // Tags and pinned versions reach either revision on purpose.
    let (_, head, _) = up.infer(
        "/v2/models/iris/infer",
        &[("x-crossfade-tag", "latest")],
        IRIS_V2,
    );
    assert_eq!(revision_of(&head), "iris-predictor-00002");
    let (_, head, _) = up.infer(
        "/v2/models/iris/infer",
        &[("Host", "prev-iris.models.local")],
        IRIS_V2,
    );
    assert_eq!(revision_of(&head), "iris-predictor-00001");
    let (_, head, _) = up.infer(
        "/v2/models/iris/versions/iris-predictor-00002/infer",
        &[],
        IRIS_V2,
    );
    assert_eq!(revision_of(&head), "iris-predictor-00002");

    // A tampered artifact: the pinned digest does not match. It never gets traffic.
    let tampered = publish_model(store.path(), "iris-forest-v1");
    std::fs::write(
        tampered.trim_start_matches("file://"),
        b"not the model that was pinned",
    )
    .unwrap();
    repo.write(
        "iris.yaml",
        &isvc_with("iris", &tampered, "    canaryTrafficPercent: 50\n"),
    );
    repo.commit("iris v3, tampered");
    up.sync();
    let status = up.status();
    let iris = service(&status, "iris");
    assert_eq!(iris["health"], "Degraded", "{status:#}");
    let failed = iris["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "iris-predictor-00003")
        .unwrap();
    assert_eq!(failed["state"], "Failed");
    assert_eq!(failed["trafficPercent"], 0);
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("digest mismatch"),
        "{failed}"
    );
    for _ in 0..50 {
        let (code, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
        assert_eq!(code, 200);
        assert_ne!(revision_of(&head), "iris-predictor-00003");
    }

    // Promote v2: the field removed, all traffic to it.
    repo.write("iris.yaml", &isvc_with("iris", &v2, ""));
    repo.commit("promote iris v2");
    up.sync();
    for _ in 0..50 {
        let (_, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
        assert_eq!(revision_of(&head), "iris-predictor-00002");
    }
    let (code, _, body) = up.infer("/v2/models/nope/infer", &[], IRIS_V2);
    assert_eq!(code, 404, "{body}");

    // A real V2 client: tritonclient, JSON and binary tensors.
    let python = std::env::var("CROSSFADE_PYTHON").unwrap_or_else(|_| "python3".into());
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tritonclient_check.py");
    let out = Command::new(&python)
        .arg(&check)
        .arg(up.data.trim_start_matches("http://"))
        .arg("iris")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tritonclient ({python}; `cargo xtask test` installs it): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the kserve SDK's REST client (its own venv: it needs a newer FastAPI than MLServer).
    let python = std::env::var("CROSSFADE_KSERVE_PYTHON").expect(
        "CROSSFADE_KSERVE_PYTHON: the kserve SDK's Python (`cargo xtask test` installs it)",
    );
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kserve_check.py");
    let out = Command::new(&python)
        .arg(&check)
        .arg(&up.data)
        .arg("iris")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kserve SDK ({python}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Prometheus metrics on the admin listener.
    let metrics = http_get(&up.server, "/metrics");
    assert!(
        metrics.contains(r#"crossfade_requests_total{service="default/iris",revision="iris-predictor-00002",outcome="ok"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"crossfade_traffic_weight_percent{service="default/iris",revision="iris-predictor-00002"} 100"#), "{metrics}");
}

/// What the policy does with an override is the controller's (its scenario tests); this is the
/// way there and back: the CLI, the API, the data plane, and `--self-heal` reaching the policy.
#[test]
fn a_traffic_override_from_the_cli_serves_and_self_heal_reverts_it() {
    let (_store, _data, _repo, up) = canary_setup(&["--self-heal"]);
    assert_eq!(splits_of(&up.status(), "iris"), canary_split());
    let (code, out) = up.cli(&["traffic", "default/iris", "iris-predictor-00002=100"]);
    assert_eq!(code, 0, "{out}");
    let status = up.status();
    assert_eq!(
        splits_of(&status, "iris"),
        [
            ("iris-predictor-00001".into(), 0),
            ("iris-predictor-00002".into(), 100)
        ]
    );
    assert_eq!(service(&status, "iris")["syncStatus"], "OutOfSync");
    for _ in 0..20 {
        let (_, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
        assert_eq!(revision_of(&head), "iris-predictor-00002");
    }
    // Bad overrides are refused with the reason.
    let (code, out) = up.cli(&["traffic", "iris", "iris-predictor-00001=60"]);
    assert_eq!(code, 1);
    assert!(out.contains("sum to 60, not 100"), "{out}");
    let (code, out) = up.cli(&["traffic", "iris", "iris-predictor-00009=100"]);
    assert_eq!(code, 1);
    assert!(out.contains("no revision iris-predictor-00009"), "{out}");
    // The next reconcile puts Git's split back.
    up.json(&["refresh"]);
    let status = up.status();
    assert_eq!(splits_of(&status, "iris"), canary_split());
    assert_eq!(service(&status, "iris")["syncStatus"], "Synced");
    let audit = up.json(&["audit", "verify"]);
    assert_eq!(audit["ok"], true);
}

#[test]
fn an_unreachable_or_rewritten_remote_keeps_the_last_good_commit_serving() {
    let store = tempfile::tempdir().unwrap();
    let v1 = publish_model(store.path(), "iris-logreg-v1");
    let v2 = publish_model(store.path(), "iris-mlp-v1");
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    let first = repo.commit("iris v1");
    let served = tempfile::tempdir().unwrap();
    let bare = bare_clone(repo.path(), served.path(), "models.git");
    let git = GitHttpServer::start(served.path());
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", &git.url("models.git")]);
    up.sync();

    // The repository disappears from the server.
    let hidden = served.path().join("hidden.git");
    std::fs::rename(&bare, &hidden).unwrap();
    let result = up.sync();
    assert_eq!(result[0]["outcome"], "FetchFailed", "{result:#}");
    let status = up.status();
    assert_eq!(status["source"]["commit"], first.as_str());
    assert!(
        status["source"]["error"]
            .as_str()
            .unwrap()
            .contains("fetching"),
        "{status:#}"
    );
    let (code, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(
        (code, revision_of(&head).as_str()),
        (200, "iris-predictor-00001")
    );
    // A second failure with the same error is not recorded twice.
    up.sync();
    let failures = up
        .json(&["history"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["outcome"] == "FetchFailed")
        .count();
    assert_eq!(failures, 1);

    // It comes back with rewritten history (a force-push): the new head is applied.
    std::fs::rename(&hidden, &bare).unwrap();
    repo.git(&["commit", "--quiet", "--amend", "-m", "iris v1, reworded"]);
    repo.write("iris.yaml", &isvc_with("iris", &v2, ""));
    let rewritten = repo.commit("iris v2 on rewritten history");
    repo.push_to(&bare);
    assert_eq!(up.sync()[0]["outcome"], "Applied");
    let status = up.status();
    assert_eq!(status["source"]["commit"], rewritten.as_str());
    assert_eq!(status["source"]["error"], Value::Null);
    let (_, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(revision_of(&head), "iris-predictor-00002");
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let store = tempfile::tempdir().unwrap();
    let v1 = publish_model(store.path(), "iris-logreg-v1");
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.commit("iris v1");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();
    let status = up
        .terminate(std::time::Duration::from_secs(30))
        .expect("crossfade up did not stop on SIGTERM");
    assert!(status.success(), "{status}");
    // And it left the data directory usable: the next start opens it.
    let again = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    assert_eq!(again.sync()[0]["outcome"], "Unchanged");
}

#[test]
fn weight_changes_under_load_drop_no_request() {
    let store = tempfile::tempdir().unwrap();
    let v1 = publish_model(store.path(), "iris-logreg-v1");
    let v2 = publish_model(store.path(), "iris-mlp-v1");
    let v3 = publish_model(store.path(), "iris-forest-v1");
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.commit("iris v1");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();

    // Four clients send requests without pause while the split changes four times and two
    // revisions are retired.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let base = up.data.clone();
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut answers: std::collections::BTreeMap<String, usize> = Default::default();
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent == 0 {
                    let (code, head, body) =
                        http_post(&base, "/v2/models/iris/infer", &[], IRIS_V2);
                    assert_eq!(code, 200, "request {sent}: {body}");
                    *answers.entry(revision_of(&head)).or_default() += 1;
                    sent += 1;
                }
                (sent, answers)
            })
        })
        .collect();
    for (uri, extra) in [
        (&v2, "    canaryTrafficPercent: 10\n"),
        (&v2, "    canaryTrafficPercent: 60\n"),
        (&v2, ""),
        (&v3, "    canaryTrafficPercent: 50\n"),
        (&v3, ""),
    ] {
        repo.write("iris.yaml", &isvc_with("iris", uri, extra));
        repo.commit("change the split");
        assert_eq!(up.sync()[0]["outcome"], "Applied");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut seen = std::collections::BTreeSet::new();
    for c in clients {
        let (sent, answers) = c.join().unwrap();
        assert_eq!(answers.values().sum::<usize>(), sent);
        total += sent;
        seen.extend(answers.into_keys());
    }
    assert!(total >= 20, "{total}");
    // Every answer came from a revision that was serving at the time.
    assert!(
        seen.iter().all(|r| r.starts_with("iris-predictor-0000")),
        "{seen:?}"
    );
    // And the end state serves only the last revision.
    let (_, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(revision_of(&head), "iris-predictor-00003");
}

#[test]
fn models_from_an_oci_registry_and_a_claim_directory_are_served() {
    let registry = test_support::Registry::start();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-logreg-v1.onnx");
    let oci = artifact::push(&model, &format!("oci://{}/models/iris:v1", registry.host)).unwrap();
    // A claim's directory, as the operator mounts it, with a model published into it under
    // its digest (as `crossfade artifact push --to file://<claim dir>/iris` lays it out).
    let claim = tempfile::tempdir().unwrap();
    let v2 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-logreg-v2.onnx");
    let published =
        artifact::push(&v2, &format!("file://{}/iris", claim.path().display())).unwrap();
    let in_claim = published.trim_start_matches(&format!("file://{}/", claim.path().display()));
    let repo = GitRepo::new();
    repo.write("oci.yaml", &isvc_with("iris-oci", &oci, ""));
    repo.write(
        "pvc.yaml",
        &isvc_with("iris-pvc", &format!("pvc://models-pvc/{in_claim}"), ""),
    );
    repo.commit("iris from a registry and a claim");
    let data = tempfile::tempdir().unwrap();
    let pvc = format!("models-pvc={}", claim.path().display());
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--require-digest",
            "--pvc",
            &pvc,
        ],
    );
    up.sync();
    let status = up.status();
    for name in ["iris-oci", "iris-pvc"] {
        assert_eq!(
            service(&status, name)["revisions"][0]["state"],
            "Ready",
            "{status:#}"
        );
        let (code, _, body) = up.infer(&format!("/v2/models/{name}/infer"), &[], IRIS_V2);
        assert_eq!(code, 200, "{body}");
    }
    // The OCI revision's digest is the image manifest's, which the URI pins.
    let pinned = oci.rsplit(':').next().unwrap();
    assert_eq!(
        service(&status, "iris-oci")["revisions"][0]["digest"],
        pinned,
        "{status:#}"
    );

    // A claim the operator did not map (and a model the cache does not have already): the
    // revision fails and says how to map it.
    let other = artifact::digest_path(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-mlp-v1.onnx"),
    )
    .unwrap();
    repo.write(
        "pvc.yaml",
        &isvc_with(
            "iris-pvc",
            &format!("pvc://other-claim/iris/sha256-{other}/model.onnx"),
            "",
        ),
    );
    repo.commit("a claim nobody mapped");
    up.sync();
    let status = up.status();
    let revisions = service(&status, "iris-pvc")["revisions"]
        .as_array()
        .unwrap()
        .clone();
    let failed = revisions
        .iter()
        .find(|r| r["state"] == "Failed")
        .unwrap_or_else(|| panic!("{status:#}"));
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("--pvc other-claim=<directory>"),
        "{failed:#}"
    );
    // The first revision goes on serving.
    let (code, _, body) = up.infer("/v2/models/iris-pvc/infer", &[], IRIS_V2);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_serving_runtime_process_serves_a_scikit_learn_model() {
    let store = tempfile::tempdir().unwrap();
    let model_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-sklearn");
    let uri = artifact::push(
        &model_dir,
        &format!("file://{}/iris-sklearn", store.path().display()),
    )
    .unwrap();
    let repo = GitRepo::new();
    repo.write("runtime.yaml", &mlserver_runtime());
    repo.write(
        "iris.yaml",
        &format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: iris}}\nspec:\n  predictor:\n    model:\n      modelFormat: {{name: sklearn, version: \"1\"}}\n      protocolVersion: v2\n      storageUri: \"{uri}\"\n"
        ),
    );
    repo.commit("iris on MLServer");
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Up::start(
            data.path(),
            &[
                "--repo",
                repo.path().to_str().unwrap(),
                "--require-digest",
                "--allow-runtime-commands",
            ],
        )
    };
    let up = start();
    up.sync();
    let status = up.status();
    let iris = service(&status, "iris");
    assert_eq!(iris["health"], "Healthy", "{status:#}");
    assert_eq!(iris["revisions"][0]["state"], "Ready");

    let (code, head, body) = up.infer(
        "/v2/models/iris/infer",
        &[("Content-Type", "application/json")],
        IRIS_V2,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(revision_of(&head), "iris-predictor-00001");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model_name"], "iris");
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([0, 2]), "{v}");

    // kill -9, and the repository is gone when it comes back: the ServingRuntime the last
    // applied commit names (read from the local mirror) serves the revision again.
    up.kill();
    let moved = repo.path().with_extension("away");
    std::fs::rename(repo.path(), &moved).unwrap();
    let up = start();
    let result = up.sync();
    std::fs::rename(&moved, repo.path()).unwrap();
    assert_eq!(result[0]["outcome"], "FetchFailed", "{result:#}");
    let status = up.status();
    assert_eq!(
        service(&status, "iris")["revisions"][0]["state"],
        "Ready",
        "{status:#}"
    );
    let (code, head, body) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(code, 200, "{body}");
    assert_eq!(revision_of(&head), "iris-predictor-00001");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([0, 2]), "{v}");
}

// === Progressive delivery ===

#[test]
fn a_rollout_promotes_a_good_model_resumes_after_kill_and_aborts_a_bad_one() {
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2", "iris-fails-some"]);
    let [v1, v2, bad] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.write("rollout.yaml", &rollout_yaml(BUILTIN_TEMPLATE));
    repo.commit("iris v1 with a rollout");
    let data = tempfile::tempdir().unwrap();
    let args = ["--repo", repo.path().to_str().unwrap()];
    let up = Up::start(data.path(), &args);
    up.sync();
    // The first revision is stable at once.
    let r = up.rollout();
    assert_eq!(r["phase"], "Healthy", "{r:#}");
    assert_eq!(
        r["weights"],
        serde_json::json!({"iris-predictor-00001": 100})
    );
    assert_eq!(r["stepCount"], 5);

    // A good model: 20%, a pause, an analysis that passes, 50%, then paused until promoted.
    let load = Load::start(&up.data);
    commit_model(&repo, &v2, "iris v2");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00002", |r| {
        r["phase"] == "Paused" && r["currentStepIndex"] == 4
    });
    assert_eq!(max, 50);
    assert_eq!(
        r["weights"],
        serde_json::json!({"iris-predictor-00001": 50, "iris-predictor-00002": 50})
    );
    let run = &r["analysisRuns"][0];
    assert_eq!(run["phase"], "Successful", "{r:#}");
    let measurements = run["measurements"].as_array().unwrap();
    assert_eq!(measurements.len(), 3);
    for m in measurements {
        assert_eq!(m["phase"], "Successful");
        assert_eq!(m["value"], "1.0");
        assert!(m["startedAt"].as_str().unwrap().ends_with('Z'));
    }
    let paused_since = r["pausedSince"].clone();
    assert!(paused_since.is_string());

    // kill -9 in the middle of the pause: the rollout resumes where it stood.
    drop(load.finish());
    up.kill();
    let up = Up::start(data.path(), &args);
    let resumed = up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Paused");
    let r = resumed.0;
    assert_eq!(r["currentStepIndex"], 4);
    assert_eq!(r["pausedSince"], paused_since);
    assert_eq!(
        r["analysisRuns"][0]["measurements"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // The split it had is back once both revisions are loaded again.
    let (r, _) = up.wait_rollout("iris-predictor-00002", |r| {
        r["weights"]["iris-predictor-00002"] == 50
    });
    assert_eq!(r["stableRevision"], "iris-predictor-00001");

    // promote: past the last pause, the canary is stable.
    let (code, out) = up.cli(&["rollout", "promote", "iris", "--reason", "looks good"]);
    assert_eq!(code, 0, "{out}");
    let (r, _) = up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Healthy");
    assert_eq!(
        r["weights"],
        serde_json::json!({"iris-predictor-00002": 100})
    );
    let audit = up.json(&["audit", "verify"]);
    assert_eq!(audit["ok"], true);

    // A model that fails on half of the inputs: aborted by the analysis at 20%, before it
    // ever gets half of the traffic; everything returns to the stable revision.
    let load = Load::start(&up.data);
    commit_model(&repo, &bad, "iris v3, which fails on some inputs");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00003", |r| r["phase"] == "Degraded");
    let seen = load.finish();
    assert_eq!(max, 20, "{r:#}");
    assert_eq!(r["canaryRevision"], "iris-predictor-00003");
    aborted_back_to(&r, "iris-predictor-00002");
    assert!(
        r["message"].as_str().unwrap().contains("result >= 0.95"),
        "{r:#}"
    );
    // The bad canary did answer (and fail) some requests while it had its 20%.
    assert!(
        seen.contains_key(&("iris-predictor-00003".into(), 500)),
        "{seen:?}"
    );
    // After the abort, every request goes to the stable revision.
    for _ in 0..50 {
        let (code, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
        assert_eq!(
            (code, revision_of(&head).as_str()),
            (200, "iris-predictor-00002")
        );
    }
    // It is not tried again by itself; promote is refused, retry starts it over.
    let (code, out) = up.cli(&["rollout", "promote", "iris"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("use retry"), "{out}");
    let r = up.json(&["rollout", "retry", "iris"]);
    assert_ne!(r["phase"], "Degraded", "{r:#}");
    let r = up.json(&["rollout", "abort", "iris", "--reason", "still bad"]);
    assert_eq!(r["phase"], "Degraded");
    assert_eq!(
        r["weights"],
        serde_json::json!({"iris-predictor-00002": 100})
    );
    // The operators' commands are in the audit log, with who and why.
    let log = http_get(&up.server, "/api/v1/audit");
    for needle in [
        "rollout-promote",
        "looks good",
        "rollout-retry",
        "rollout-abort",
        "still bad",
        "rollout-aborted",
    ] {
        assert!(log.contains(needle), "{needle} not in the audit log");
    }
    let (code, out) = up.cli(&["rollout", "get", "iris"]);
    assert_eq!(code, 0);
    assert!(out.contains("Phase:     Degraded"), "{out}");
    assert!(out.contains("└──"), "{out}");
    // `status` shows the rollout and its measurements too.
    let status = up.status();
    assert_eq!(status["rollouts"][0]["phase"], "Degraded");
    assert!(
        status["rollouts"][0]["analysisRuns"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    let (code, out) = up.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("default/iris") && out.contains("Degraded") && out.contains("success-rate"),
        "{out}"
    );
}

/// The judge compares the canary with the stable revision: no threshold in the template. A
/// good model passes on the whole run's data and goes on; one that fails on half of the inputs
/// is stopped at 20%, the measurement saying why with the counts.
#[test]
fn a_rollout_judged_against_the_stable_revision_needs_no_threshold() {
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2", "iris-fails-some"]);
    let [v1, v2, bad] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.write("rollout.yaml", &rollout_yaml(JUDGE_TEMPLATE));
    repo.commit("iris v1 with a judged rollout");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();

    let load = Load::start(&up.data);
    commit_model(&repo, &v2, "iris v2");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00002", |r| {
        r["phase"] == "Paused" && r["currentStepIndex"] == 4
    });
    assert_eq!(max, 50, "{r:#}");
    let run = &r["analysisRuns"][0];
    assert_eq!(run["phase"], "Successful", "{r:#}");
    // Each look covers the whole run so far: the samples only grow.
    let samples: Vec<u64> = run["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(m["value"].as_str().unwrap()).unwrap();
            v["canarySample"].as_u64().unwrap()
        })
        .collect();
    assert!(samples.windows(2).all(|w| w[0] <= w[1]), "{samples:?}");
    let last = run["measurements"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let verdict: Value = serde_json::from_str(last["value"].as_str().unwrap()).unwrap();
    assert_eq!(verdict["verdict"], "Pass", "{verdict:#}");
    assert!(
        verdict["canarySample"].as_u64().unwrap() >= 20,
        "{verdict:#}"
    );
    assert!(verdict["stableSample"].as_u64().unwrap() > 0, "{verdict:#}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("within 1.5x stable"),
        "{last:#}"
    );
    // The CLI shows the verdict for people; the dashboard plots its effect against the
    // tolerance (1) in a browser.
    let (code, out) = up.cli(&["rollout", "get", "iris"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Pass (error-rate "), "{out}");
    // Both revisions side by side over time, from the API and on the dashboard.
    let series: Value =
        serde_json::from_str(&http_get(&up.server, "/api/v1/rollouts/iris/series")).unwrap();
    let roles: Vec<(&str, &str)> = series["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["role"].as_str().unwrap(), r["revision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [
            ("canary", "iris-predictor-00002"),
            ("stable", "iris-predictor-00001")
        ],
        "{series:#}"
    );
    for r in series["revisions"].as_array().unwrap() {
        let requests: u64 = r["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["requests"].as_u64().unwrap())
            .sum();
        assert!(requests > 0, "{series:#}");
    }
    let page = dom(&format!("{}/", up.server));
    assert!(
        page.contains(r#"data-metric="errors-vs-stable""#)
            && page.contains("1 = tolerated (effect)"),
        "{page}"
    );
    assert!(page.contains(r#"data-series="canary-vs-stable""#), "{page}");
    for chart in ["request-rate", "error-rate", "latency", "top-score"] {
        assert!(
            page.contains(&format!(r#"data-chart="{chart}""#)),
            "{chart}: {page}"
        );
    }
    let error_chart = page
        .split(r#"data-chart="error-rate""#)
        .nth(1)
        .unwrap()
        .split("</figure>")
        .next()
        .unwrap();
    for rev in ["iris-predictor-00001", "iris-predictor-00002"] {
        assert!(
            error_chart.contains(&format!(r#"data-revision="{rev}""#)),
            "{rev}: {error_chart}"
        );
    }
    assert!(
        page.contains(r#"data-verdict="Pass""#)
            && page.contains("sample ")
            && page.contains(" of at least 20"),
        "{page}"
    );
    let (code, out) = up.cli(&["rollout", "promote", "iris"]);
    assert_eq!(code, 0, "{out}");
    up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Healthy");

    commit_model(&repo, &bad, "iris v3, which fails on some inputs");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00003", |r| r["phase"] == "Degraded");
    drop(load.finish());
    assert_eq!(max, 20, "{r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00002");
    let failed = failed_measurement(&run);
    let why = failed["message"].as_str().unwrap();
    assert!(
        why.starts_with("error rate ") && why.contains("against stable's 0.00%"),
        "{why}"
    );
}

/// Every bad kind of model, committed in turn under steady traffic (about 50 requests a
/// second) with the Rollout and templates README.md recommends and no threshold: each is
/// stopped before 50%, the reason naming what was wrong; then a good retrained model is
/// promoted by itself with no client request failing. Looks come every 3 s instead of 10 s,
/// so an analysis may see too few requests for its minimum samples: capture is on, and
/// replays make up the difference, as the README says to do.
#[test]
fn every_bad_kind_of_model_is_stopped_and_a_good_one_promoted() {
    let models = Models::publish(&[
        "iris-logreg-v1",
        "iris-five-features",
        "iris-wrong",
        "iris-fails-some",
        "iris-nan-scores",
        "iris-flat-scores",
        "iris-logreg-v1-retrained",
    ]);
    let [v1, schema, wrong, fails, nan, flat, retrained] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.write("rollout.yaml", &readme_rollout("3s"));
    repo.commit("iris v1 with the README's rollout");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--capture-requests",
        ],
    );
    up.sync();
    let status = up.status();
    assert_eq!(service(&status, "iris")["health"], "Healthy", "{status:#}");
    let load = Load::at_rate(&up.data, 50, six_flowers);

    let bad = [
        (&schema, "expects other inputs", "input X"),
        (&wrong, "answers wrongly", "answers-agree"),
        (&fails, "fails on some inputs", "answers-agree"),
        (&nan, "has NaN scores on a third", "answers-agree"),
        (&flat, "has flattened scores", "predictions-drift"),
    ];
    for (n, (uri, what, named)) in bad.iter().enumerate() {
        let canary = format!("iris-predictor-{:05}", n + 2);
        commit_model(&repo, uri, &format!("a canary that {what}"));
        up.sync();
        let (r, max) = up.wait_rollout(&canary, |r| {
            r["phase"] == "Degraded" && r["canaryRevision"] == canary.as_str()
        });
        assert!(max < 50, "{what}: {max}% {r:#}");
        assert_eq!(max, 0, "{what}: stopped before any live traffic: {r:#}");
        assert_eq!(
            r["weights"],
            serde_json::json!({"iris-predictor-00001": 100}),
            "{r:#}"
        );
        let said = r.to_string();
        assert!(said.contains(named), "{what}: {r:#}");
    }

    commit_model(&repo, &retrained, "iris v1 retrained");
    up.sync();
    // Three analyses of 3 to 6 looks 3 s apart.
    let (r, max) = up.wait_rollout_for(120, "iris-predictor-00007", |r| {
        r["stableRevision"] == "iris-predictor-00007" || r["phase"] == "Degraded"
    });
    assert_eq!((r["phase"].as_str(), max), (Some("Healthy"), 100), "{r:#}");
    // Its three analyses (after the four that stopped the others: the schema change failed
    // as it loaded, before any), all passed.
    let runs = r["analysisRuns"].as_array().unwrap();
    assert_eq!(runs.len(), 4 + 3, "{r:#}");
    assert!(
        runs[4..].iter().all(|run| run["phase"] == "Successful"),
        "{r:#}"
    );
    let seen = load.finish();
    // Not one client request failed, and none was answered by a bad canary.
    assert!(seen.keys().all(|(_, code)| *code == 200), "{seen:?}");
    let answered: std::collections::BTreeSet<&str> = seen.keys().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        answered,
        ["iris-predictor-00001", "iris-predictor-00007"].into(),
        "{seen:?}"
    );
}

/// The README's Rollout at about one request a second, with capture on: every judged metric
/// is short of its minimum sample, and replays of earlier requests make it up, so a retrained
/// model is promoted with no client request failing and one that answers wrongly is stopped
/// before it serves anyone.
#[test]
fn the_readme_rollout_decides_at_one_request_a_second_with_replay() {
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v1-retrained", "iris-wrong"]);
    let [v1, retrained, wrong] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.write("rollout.yaml", &readme_rollout("3s"));
    repo.commit("iris v1 with the README's rollout");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--capture-requests",
        ],
    );
    up.sync();
    let status = up.status();
    assert_eq!(service(&status, "iris")["health"], "Healthy", "{status:#}");
    // Earlier traffic, captured; then about a request a second.
    for i in 0..400 {
        let (code, _, body) = http_post(&up.data, "/v2/models/iris/infer", &[], &six_flowers(i));
        assert_eq!(code, 200, "{body}");
    }
    let load = Load::at_rate(&up.data, 1, six_flowers);

    commit_model(&repo, &retrained, "iris v1 retrained");
    up.sync();
    let (r, max) = up.wait_rollout_for(120, "iris-predictor-00002", |r| {
        r["stableRevision"] == "iris-predictor-00002" || r["phase"] != "Progressing"
    });
    assert_eq!((r["phase"].as_str(), max), (Some("Healthy"), 100), "{r:#}");
    let runs = r["analysisRuns"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{r:#}");
    for run in runs {
        assert_eq!(run["phase"], "Successful", "{r:#}");
        let said = run.to_string();
        assert!(said.contains("; replaying "), "{run:#}");
    }

    commit_model(&repo, &wrong, "iris v3, which gets the species wrong");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00003", |r| r["phase"] == "Degraded");
    let seen = load.finish();
    assert_eq!(max, 0, "stopped before any live traffic: {r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00002");
    // Both shadow metrics see the wrong answers; either may report first.
    let failed = failed_measurement(&run);
    assert!(
        failed["metric"] == "answers-agree" || failed["metric"] == "predictions-drift",
        "{r:#}"
    );
    assert!(seen.keys().all(|(_, code)| *code == 200), "{seen:?}");
    assert!(
        !seen.keys().any(|(rev, _)| rev == "iris-predictor-00003"),
        "{seen:?}"
    );
}

/// At about one request a second the judge would wait minutes for its minimum sample: with
/// `--capture-requests`, requests captured earlier are replayed to the canary and its stable
/// revision, judged like mirrored ones. A good model is promoted with no client request
/// failing; one that fails on half the inputs is stopped before it gets any live traffic.
#[test]
fn thin_traffic_is_made_up_by_replaying_captured_requests() {
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2", "iris-fails-some"]);
    let [v1, v2, bad] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.write("rollout.yaml", &judged_before_traffic_yaml(JUDGE_TEMPLATE));
    repo.commit("iris v1, judged before any live traffic");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--capture-requests",
        ],
    );
    up.sync();
    let status = up.status();
    assert_eq!(service(&status, "iris")["health"], "Healthy", "{status:#}");
    // Earlier traffic, captured; then a trickle.
    for i in 0..60 {
        let (code, _, body) = http_post(&up.data, "/v2/models/iris/infer", &[], &mixed_flowers(i));
        assert_eq!(code, 200, "{body}");
    }
    let load = Load::at_rate(&up.data, 1, mixed_flowers);
    commit_model(&repo, &v2, "iris v2");
    up.sync();
    let (r, _) = up.wait_rollout("iris-predictor-00002", |r| {
        r["stableRevision"] == "iris-predictor-00002"
    });
    assert_eq!(r["phase"], "Healthy", "{r:#}");
    let before_traffic = &r["analysisRuns"][0];
    assert_eq!(before_traffic["phase"], "Successful", "{r:#}");
    let messages: Vec<&str> = before_traffic["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap())
        .collect();
    assert!(
        messages[0].contains("more needed before a verdict; replaying 20 captured requests"),
        "{messages:?}"
    );
    assert!(
        messages.last().unwrap().contains("within 1.5x stable"),
        "{messages:?}"
    );

    commit_model(&repo, &bad, "iris v3, which fails on some inputs");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00003", |r| r["phase"] == "Degraded");
    let seen = load.finish();
    assert_eq!(max, 0, "stopped before any live traffic: {r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00002");
    let why = failed_measurement(&run)["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.starts_with("error rate "), "{why}");
    // Every client request was answered, through both rollouts.
    assert!(seen.keys().all(|(_, code)| *code == 200), "{seen:?}");
    assert!(
        !seen.keys().any(|(rev, _)| rev == "iris-predictor-00003"),
        "{seen:?}"
    );
    let metrics = http_get(&up.server, "/metrics");
    assert!(
        metrics.contains(r#"crossfade_replayed_requests_total{service="default/iris",revision="iris-predictor-00003",outcome="server_error"}"#),
        "{metrics}"
    );
    // The capture is in the data directory, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let capture = data.path().join("capture");
    let mode = std::fs::metadata(&capture).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// A model ten times slower than stable (work no optimiser can fold away) is stopped at 20%
/// by the latency judge, which names both medians; the template has no number in seconds.
#[test]
fn a_slower_canary_is_stopped_by_the_latency_judge() {
    let models = Models::publish(&["iris-logreg-v1", "iris-slow"]);
    let [v1, slow] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.write("rollout.yaml", &rollout_yaml(LATENCY_JUDGE_TEMPLATE));
    repo.commit("iris v1 with a latency-judged rollout");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();
    let load = Load::sending(&up.data, |_| IRIS_V2.to_owned());
    commit_model(&repo, &slow, "iris v2, ten times slower");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Degraded");
    let seen = load.finish();
    assert_eq!(max, 20, "{r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00001");
    let failed = failed_measurement(&run);
    let why = failed["message"].as_str().unwrap();
    assert!(why.starts_with("p50 latency "), "{why}");
    // Slow, not failing: every client request was answered.
    assert!(seen.keys().all(|(_, code)| *code == 200), "{seen:?}");
}

/// A model server that runs one request at a time is as fast as stable alone, and slower
/// only when requests come together: with one client its canary passes the latency judge;
/// retried under eight concurrent clients, the same canary is stopped at 20%.
#[test]
fn a_canary_slower_only_under_concurrency_is_stopped_when_requests_come_together() {
    let store = tempfile::tempdir().unwrap();
    let push = |name: &str| push_queue_model(store.path(), name);
    let (parallel, serial) = (push("parallel"), push("one-at-a-time"));
    let repo = GitRepo::new();
    repo.write("runtime.yaml", &queue_runtime());
    repo.write("iris.yaml", &queue_isvc(&parallel));
    // Requests take 20 ms here: eight looks, so that a single client's 20% reaches the sample.
    repo.write(
        "rollout.yaml",
        &rollout_yaml(&LATENCY_JUDGE_TEMPLATE.replace("count: 4", "count: 8")),
    );
    repo.commit("iris on a model server, judged on latency");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--allow-runtime-commands",
        ],
    );
    up.sync();
    let status = up.status();
    assert_eq!(service(&status, "iris")["health"], "Healthy", "{status:#}");

    // One client: the canary is as fast as stable, and goes on to 50%.
    let load = Load::sending(&up.data, |_| IRIS_V2.to_owned());
    repo.write("iris.yaml", &queue_isvc(&serial));
    repo.commit("iris on a server that runs one request at a time");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00002", |r| {
        r["phase"] == "Paused" && r["currentStepIndex"] == 4
    });
    assert_eq!(max, 50, "{r:#}");
    assert_eq!(r["analysisRuns"][0]["phase"], "Successful", "{r:#}");
    let mut seen = load.finish();
    let (code, out) = up.cli(&["rollout", "abort", "iris", "--reason", "try it under load"]);
    assert_eq!(code, 0, "{out}");
    up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Degraded");

    // Eight clients at once: requests queue behind each other on the canary only.
    let loads: Vec<Load> = (0..8)
        .map(|_| Load::sending(&up.data, |_| IRIS_V2.to_owned()))
        .collect();
    let (code, out) = up.cli(&["rollout", "retry", "iris"]);
    assert_eq!(code, 0, "{out}");
    let (r, max) = up.wait_rollout("iris-predictor-00002", |r| {
        r["phase"] == "Degraded" && r["analysisRuns"].as_array().unwrap().len() == 2
    });
    for load in loads {
        for (k, n) in load.finish() {
            *seen.entry(k).or_default() += n;
        }
    }
    assert_eq!(max, 20, "{r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00001");
    let why = failed_measurement(&run)["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.starts_with("p50 latency "), "{why}");
    // Slower, never failing: every client request was answered.
    assert!(seen.keys().all(|(_, code)| *code == 200), "{seen:?}");
}

/// A model server canary that declares other inputs (V2 metadata) than its stable one is
/// Failed as it loads, naming the difference. Annotated as intended, it gets its 20%, where
/// every request it refuses and the stable model server takes is answered by stable and
/// charged to the canary: no client sees a refusal, and the judge stops it.
#[test]
fn a_model_server_canary_with_other_inputs_is_refused_or_charged_for_what_it_refuses() {
    let store = tempfile::tempdir().unwrap();
    let push = |name: &str| push_queue_model(store.path(), name);
    let (four, five) = (push("parallel"), push("five-features"));
    let repo = GitRepo::new();
    repo.write("runtime.yaml", &queue_runtime());
    repo.write("iris.yaml", &queue_isvc(&four));
    repo.write("rollout.yaml", &rollout_yaml(JUDGE_TEMPLATE));
    repo.commit("iris on a model server");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--allow-runtime-commands",
        ],
    );
    up.sync();
    let load = Load::sending(&up.data, |_| IRIS_V2.to_owned());

    repo.write("iris.yaml", &queue_isvc(&five));
    repo.commit("iris v2 takes five features");
    up.sync();
    let status = up.status();
    let v2 = &service(&status, "iris")["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "iris-predictor-00002")
        .unwrap()
        .clone();
    assert_eq!(v2["state"], "Failed", "{status:#}");
    let reason = v2["reason"].as_str().unwrap();
    assert!(
        reason.contains("input X has shape [N, 5] where stable's has [N, 4]"),
        "{reason}"
    );
    assert!(
        reason.contains("crossfade.dev/signature-change"),
        "{reason}"
    );

    repo.write(
        "iris.yaml",
        &queue_isvc_with(&five, r#"{crossfade.dev/signature-change: intended}"#),
    );
    repo.commit("iris v2 takes five features, on purpose");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00003", |r| {
        r["phase"] == "Degraded" && r["canaryRevision"] == "iris-predictor-00003"
    });
    let seen = load.finish();
    assert_eq!(max, 20, "{r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00001");
    let why = failed_measurement(&run)["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.starts_with("error rate "), "{why}");
    // Its refusals were answered by stable: every client got a 200.
    assert!(seen.keys().all(|(_, code)| *code == 200), "{seen:?}");
    assert!(
        !seen.keys().any(|(rev, _)| rev == "iris-predictor-00003"),
        "{seen:?}"
    );
}

/// The README's Rollout with model servers for both revisions: their answers are mirrored and
/// compared like in-process ones (read from their V2 answers), so a server that answers
/// wrongly is stopped in the shadow and a retrained one is promoted, at about 50 requests a
/// second, with capture on for the p99's sample.
#[test]
fn model_server_canaries_are_judged_in_the_shadow_too() {
    let store = tempfile::tempdir().unwrap();
    let push = |name: &str| push_queue_model(store.path(), name);
    let (v1, wrong, retrained) = (push("quick"), push("quick-wrong"), push("quick-retrained"));
    let repo = GitRepo::new();
    repo.write("runtime.yaml", &queue_runtime());
    repo.write("iris.yaml", &queue_isvc(&v1));
    repo.write("rollout.yaml", &readme_rollout("3s"));
    repo.commit("iris on a model server with the README's rollout");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--allow-runtime-commands",
            "--capture-requests",
        ],
    );
    up.sync();
    let load = Load::at_rate(&up.data, 50, six_flowers);

    repo.write("iris.yaml", &queue_isvc(&wrong));
    repo.commit("a model server that answers wrongly");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Degraded");
    assert_eq!(max, 0, "{r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00001");
    let failed = failed_measurement(&run);
    // Stopped by its mirrored answers: both shadow metrics see it (measured side by side,
    // either may report first).
    assert!(
        failed["metric"] == "answers-agree" || failed["metric"] == "predictions-drift",
        "{r:#}"
    );

    repo.write("iris.yaml", &queue_isvc(&retrained));
    repo.commit("the model server retrained");
    up.sync();
    let (r, max) = up.wait_rollout_for(120, "iris-predictor-00003", |r| {
        r["stableRevision"] == "iris-predictor-00003" || r["phase"] == "Degraded"
    });
    assert_eq!((r["phase"].as_str(), max), (Some("Healthy"), 100), "{r:#}");
    let seen = load.finish();
    assert!(seen.keys().all(|(_, code)| *code == 200), "{seen:?}");
    assert!(
        !seen.keys().any(|(rev, _)| rev == "iris-predictor-00002"),
        "{seen:?}"
    );
}

/// XGBoost and LightGBM models are served in-process with no ServingRuntime, answering as the
/// libraries predict (`fixtures/trees`), over V2 and V1, with V2 metadata from the model.
#[test]
fn xgboost_and_lightgbm_models_are_served_natively() {
    let store = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/trees");
    // As KServe's servers find them: a directory with `model.json` (XGBoost) or `model.bst`
    // (LightGBM, text).
    let staging = tempfile::tempdir().unwrap();
    let publish = |file: &str, as_name: &str| {
        let dir = staging.path().join(file);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(fixtures.join(file), dir.join(as_name)).unwrap();
        artifact::push(&dir, &format!("file://{}/{file}", store.path().display())).unwrap()
    };
    let xgb = publish("xgb-iris-softprob.json", "model.json");
    let lgb = publish("lgb-iris-multiclass.txt", "model.bst");
    let repo = GitRepo::new();
    let isvc = |name: &str, format: &str, uri: &str| {
        format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: {name}}}\nspec:\n  predictor:\n    model:\n      modelFormat: {{name: {format}}}\n      protocolVersion: v2\n      storageUri: \"{uri}\"\n"
        )
    };
    repo.write("xgb.yaml", &isvc("iris-xgb", "xgboost", &xgb));
    repo.write("lgb.yaml", &isvc("iris-lgb", "lightgbm", &lgb));
    repo.commit("iris as XGBoost and LightGBM");
    let (code, out) = {
        let out = Command::new(BIN)
            .args(["lint", repo.path().to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 error(s), 0 warning(s)"), "{out}");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();
    let status = up.status();
    for svc in ["iris-xgb", "iris-lgb"] {
        assert_eq!(service(&status, svc)["health"], "Healthy", "{status:#}");
    }
    let expected = |name: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(format!("{name}.expected.json"))).unwrap(),
        )
        .unwrap()
    };
    for (svc, fixture, datatype) in [
        ("iris-xgb", "xgb-iris-softprob", "FP32"),
        ("iris-lgb", "lgb-iris-multiclass", "FP64"),
    ] {
        let want = expected(fixture);
        // The rows without missing values (JSON has no NaN).
        let rows: Vec<(usize, Vec<f64>)> = want["rows"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                Some((
                    i,
                    r.as_array()?
                        .iter()
                        .map(Value::as_f64)
                        .collect::<Option<Vec<f64>>>()?,
                ))
            })
            .collect();
        assert!(rows.len() > 5);
        let data: Vec<f64> = rows.iter().flat_map(|(_, r)| r.clone()).collect();
        let body = serde_json::json!({"inputs": [{"name": "input-0", "shape": [rows.len(), 4], "datatype": "FP32", "data": data}]});
        let (code, _, answer) =
            up.infer(&format!("/v2/models/{svc}/infer"), &[], &body.to_string());
        assert_eq!(code, 200, "{answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        let output = &answer["outputs"][0];
        assert_eq!(output["name"], "predict", "{answer}");
        assert_eq!(output["datatype"], datatype, "{answer}");
        assert_eq!(
            output["shape"],
            serde_json::json!([rows.len(), 3]),
            "{answer}"
        );
        let got: Vec<f64> = output["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (k, (i, _)) in rows.iter().enumerate() {
            for c in 0..3 {
                let w = want["predictions"][*i][c].as_f64().unwrap();
                let g = got[k * 3 + c];
                assert!(
                    (g - w).abs() < 2e-6,
                    "{svc} row {i} class {c}: {g} against the library's {w}"
                );
            }
        }
        // Metadata from the model.
        let meta: Value =
            serde_json::from_str(&http_get(&up.data, &format!("/v2/models/{svc}"))).unwrap();
        assert_eq!(meta["inputs"][0]["name"], "input-0", "{meta}");
        assert_eq!(
            meta["inputs"][0]["shape"],
            serde_json::json!([-1, 4]),
            "{meta}"
        );
        // And V1.
        let (code, _, answer) = up.infer(
            &format!("/v1/models/{svc}:predict"),
            &[],
            &serde_json::json!({"instances": [rows[0].1]}).to_string(),
        );
        assert_eq!(code, 200, "{answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        let w = want["predictions"][rows[0].0][0].as_f64().unwrap();
        assert!(
            (answer["predictions"][0][0].as_f64().unwrap() - w).abs() < 2e-6,
            "{answer}"
        );
    }
}

/// KServe's stock scikit-learn and MLServer runtimes as its repository has them
/// (`config/runtimes/`): images, no command.
const KSERVE_STOCK_RUNTIMES: &str = r#"apiVersion: serving.kserve.io/v1alpha1
kind: ClusterServingRuntime
metadata:
  name: kserve-sklearnserver
spec:
  annotations:
    prometheus.kserve.io/port: '8080'
    prometheus.kserve.io/path: "/metrics"
  supportedModelFormats:
    - name: sklearn
      version: "1"
      autoSelect: true
      priority: 3
  protocolVersions:
    - v1
    - v2
  containers:
    - name: kserve-container
      image: kserve-sklearnserver:replace
      args:
        - --model_name={{.Name}}
        - --model_dir=/mnt/models
        - --http_port=8080
      securityContext:
        allowPrivilegeEscalation: false
        privileged: false
        runAsNonRoot: true
        capabilities:
          drop:
            - ALL
      resources:
        requests: {cpu: "1", memory: 2Gi}
        limits: {cpu: "1", memory: 2Gi}
---
apiVersion: serving.kserve.io/v1alpha1
kind: ClusterServingRuntime
metadata:
  name: kserve-mlserver
  annotations:
    serving.kserve.io/server-type: mlserver
spec:
  supportedModelFormats:
    - {name: sklearn, version: "1", autoSelect: true, priority: 2}
    - {name: xgboost, version: "2", autoSelect: true, priority: 2}
    - {name: lightgbm, version: "4", autoSelect: true, priority: 2}
    - {name: mlflow, version: "2", autoSelect: true, priority: 1}
  protocolVersions:
    - v2
  containers:
    - name: kserve-container
      image: mlserver:replace
      env:
        - name: "MLSERVER_MODEL_IMPLEMENTATION"
          value: "{{.Labels.modelClass}}"
        - name: "MLSERVER_HTTP_PORT"
          value: "8080"
        - name: "MLSERVER_GRPC_PORT"
          value: "9000"
"#;

#[test]
fn kserve_formats_serve_through_built_in_runtimes_with_nothing_of_the_users() {
    let store = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // A pickled scikit-learn forest as KServe's docs publish one: `model.pkl` alone.
    let pickle = artifact::push(
        &root.join("fixtures/models/iris-sklearn-pickle"),
        &format!("file://{}/sklearn", store.path().display()),
    )
    .unwrap();
    let staging = tempfile::tempdir().unwrap();
    std::fs::copy(
        root.join("fixtures/trees/xgb-iris-softprob.json"),
        staging.path().join("model.json"),
    )
    .unwrap();
    let xgb = artifact::push(
        staging.path(),
        &format!("file://{}/xgb", store.path().display()),
    )
    .unwrap();
    let isvc = |name: &str, format: &str, uri: &str, extra: &str| {
        format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: {name}}}\nspec:\n  predictor:\n{extra}    model:\n      modelFormat: {{name: {format}}}\n      protocolVersion: v2\n      storageUri: \"{uri}\"\n"
        )
    };
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc("iris", "xgboost", &xgb, ""));
    // As KServe's docs write it: no protocol (V1), the stock runtimes beside it.
    repo.write(
        "sklearn-iris.yaml",
        &format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: sklearn-iris\nspec:\n  predictor:\n    model:\n      modelFormat:\n        name: sklearn\n      storageUri: \"{pickle}\"\n"
        ),
    );
    repo.write("runtimes.yaml", KSERVE_STOCK_RUNTIMES);
    repo.commit("iris on XGBoost; sklearn-iris as KServe's docs have it");
    // Lint: the stock runtimes need no command here, and run nothing from Git.
    let out = Command::new(BIN)
        .args(["lint", repo.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("command"), "{text}");

    let data = tempfile::tempdir().unwrap();
    let runtimes = runtimes_dir();
    // No --allow-runtime-commands: the built-in runtimes' commands are crossfade's.
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--runtimes-dir",
            &runtimes,
        ],
    );
    up.sync();
    let status = up.status();
    for svc in ["iris", "sklearn-iris"] {
        assert_eq!(service(&status, svc)["health"], "Healthy", "{status:#}");
    }
    let rows = serde_json::json!([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]);
    let v2 = serde_json::json!({"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": rows}]}).to_string();

    // The V1 request of KServe's docs, to the scikit-learn model on MLServer.
    let (code, _, answer) = up.infer(
        "/v1/models/sklearn-iris:predict",
        &[],
        r#"{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}"#,
    );
    assert_eq!(code, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["predictions"], serde_json::json!([1, 1]), "{answer}");

    // The scikit-learn forest canaried against the native XGBoost revision of `iris`.
    repo.write(
        "iris.yaml",
        &isvc("iris", "sklearn", &pickle, "    canaryTrafficPercent: 50\n"),
    );
    repo.commit("iris: a scikit-learn forest, canaried");
    up.sync();
    let status = up.status();
    assert_eq!(
        splits_of(&status, "iris"),
        vec![
            ("iris-predictor-00001".into(), 50),
            ("iris-predictor-00002".into(), 50)
        ],
        "{status:#}"
    );
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (code, head, body) = up.infer("/v2/models/iris/infer", &[], &v2);
        assert_eq!(code, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let output = &answer["outputs"][0];
        let labels: Vec<u64> = match revision_of(&head).as_str() {
            // XGBoost: probabilities [2, 3], from the native evaluator.
            "iris-predictor-00001" => {
                let p: Vec<f64> = output["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                p.chunks(3)
                    .map(|r| (0..3).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap() as u64)
                    .collect()
            }
            // scikit-learn on MLServer: the labels.
            "iris-predictor-00002" => output["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect(),
            other => panic!("answered by {other}"),
        };
        // Both models call the rows setosa and virginica.
        assert_eq!(labels, [0, 2], "{body}");
        *seen.entry(revision_of(&head)).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Without the runtime installed, the revision fails and says what to install.
    drop(up);
    let data = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--runtimes-dir",
            empty.path().to_str().unwrap(),
        ],
    );
    up.sync();
    let status = up.status();
    let failed = &service(&status, "sklearn-iris")["revisions"][0];
    assert_eq!(failed["state"], "Failed", "{status:#}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("crossfade runtime install sklearn"),
        "{failed:#}"
    );
    // Installed (here: the tests' environment linked in), `crossfade sync` loads it again.
    std::os::unix::fs::symlink(
        Path::new(&runtimes).join("mlserver-sklearn"),
        empty.path().join("mlserver-sklearn"),
    )
    .unwrap();
    up.sync();
    let status = up.status();
    let revision = &service(&status, "sklearn-iris")["revisions"][0];
    assert_eq!(revision["state"], "Ready", "{status:#}");
    assert_eq!(
        revision["name"], "sklearn-iris-predictor-00001",
        "{status:#}"
    );
    let (code, _, answer) = up.infer(
        "/v1/models/sklearn-iris:predict",
        &[],
        r#"{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}"#,
    );
    assert_eq!(code, 200, "{answer}");
}

#[test]
fn an_mlflow_model_serves_on_the_built_in_runtime() {
    let store = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-mlflow");
    let uri = artifact::push(&model, &format!("file://{}/mlflow", store.path().display())).unwrap();
    let runtimes = runtimes_dir();
    assert!(
        Path::new(&runtimes)
            .join("mlserver-mlflow/bin/mlserver")
            .exists(),
        "the built-in runtime mlserver-mlflow is not installed in {runtimes}: run `cargo xtask test`"
    );
    // As KServe's docs write an MLflow InferenceService.
    let repo = GitRepo::new();
    repo.write(
        "mlflow.yaml",
        &format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: mlflow-iris\nspec:\n  predictor:\n    model:\n      modelFormat:\n        name: mlflow\n      protocolVersion: v2\n      storageUri: \"{uri}\"\n"
        ),
    );
    repo.commit("an MLflow model");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--runtimes-dir",
            &runtimes,
        ],
    );
    up.sync();
    let status = up.status();
    assert_eq!(
        service(&status, "mlflow-iris")["health"],
        "Healthy",
        "{status:#}"
    );
    // V2 as MLServer's MLflow runtime takes a model without a signature: a NumPy request.
    let (code, _, body) = up.infer(
        "/v2/models/mlflow-iris/infer",
        &[],
        r#"{"parameters": {"content_type": "np"}, "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [6.8, 2.8, 4.8, 1.4, 6.0, 3.4, 4.5, 1.6]}]}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([1, 1]), "{v}");
    // V1, translated (with the content type MLServer needs).
    let (code, _, body) = up.infer(
        "/v1/models/mlflow-iris:predict",
        &[],
        r#"{"instances": [[6.8, 2.8, 4.8, 1.4], [6.0, 3.4, 4.5, 1.6]]}"#,
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["predictions"], serde_json::json!([1, 1]), "{v}");
}

#[test]
fn a_rollout_judged_by_a_real_prometheus() {
    let models = Models::publish(&["iris-logreg-v1", "iris-mlp-v1", "iris-fails-some"]);
    let [v1, v2, bad] = models.uris();
    let repo = GitRepo::new();
    commit_model(&repo, &v1, "iris v1");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();
    let prometheus = Prometheus::start(&up.server);
    repo.write(
        "rollout.yaml",
        &rollout_yaml_ending(&prometheus_template(&prometheus.url), "{duration: 1s}"),
    );
    repo.commit("a rollout judged by Prometheus");
    up.sync();

    // A good model passes the analysis and is promoted to 100% with nobody's help.
    let load = Load::start(&up.data);
    commit_model(&repo, &v2, "iris v2");
    up.sync();
    let (r, _) = up.wait_rollout("iris-predictor-00002", |r| {
        r["stableRevision"] == "iris-predictor-00002"
    });
    assert_eq!(r["phase"], "Healthy", "{r:#}");
    assert_eq!(
        r["weights"],
        serde_json::json!({"iris-predictor-00002": 100})
    );
    let run = &r["analysisRuns"][0];
    assert_eq!(run["phase"], "Successful", "{r:#}");
    let last = run["measurements"].as_array().unwrap().last().unwrap();
    let ratio: Vec<f64> = serde_json::from_str(last["value"].as_str().unwrap()).unwrap();
    assert_eq!(ratio, [0.0], "{r:#}");

    // The model failing on half of its inputs: Prometheus sees the errors, the rollout aborts
    // at 20% and the stable revision takes everything back.
    commit_model(&repo, &bad, "iris v3, which fails on some inputs");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00003", |r| r["phase"] == "Degraded");
    drop(load.finish());
    assert_eq!(max, 20, "{r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00002");
    let failed = run["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["phase"] == "Failed")
        .unwrap();
    let ratio: Vec<f64> = serde_json::from_str(failed["value"].as_str().unwrap()).unwrap();
    assert!(ratio[0] > 0.2, "{failed}");
}

/// A metric endpoint on port 0 that answers `{"healthy": true}` to requests carrying
/// `authorization: Bearer <token>` and 401 to others; keeps every authorization it saw.
fn authorized_metric_server(
    token: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut auth = String::new();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("authorization:") {
                    auth = line[line.len() - v.len()..].trim().to_owned();
                }
                line.clear();
            }
            let ok = auth == format!("Bearer {token}");
            kept.lock().unwrap().push(auth);
            let answer: &[u8] = if ok {
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\nconnection: close\r\n\r\n{\"healthy\": true}"
            } else {
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            };
            let _ = stream.write_all(answer);
        }
    });
    (url, seen)
}

#[test]
fn a_template_argument_from_a_secret_is_sent_and_never_shown() {
    const TOKEN_VALUE: &str = "s3cret-metrics-token-5b1e";
    let (url, seen) = authorized_metric_server(TOKEN_VALUE);
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2"]);
    let [v1, v2] = models.uris();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(secrets.path().join("metrics-auth")).unwrap();
    // As `echo` writes it, with a newline, which is not part of the value.
    std::fs::write(
        secrets.path().join("metrics-auth/token"),
        format!("{TOKEN_VALUE}\n"),
    )
    .unwrap();
    let template = format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: health}}
spec:
  args:
    - name: canary
    - name: api-token
      valueFrom:
        secretKeyRef: {{name: metrics-auth, key: token}}
  # Its failures do not count, and its error message quotes the URL, the token in its path.
  dryRun: [{{metricName: without-header}}]
  metrics:
    - name: authorized
      initialDelay: 1s              # after the other has its measurement
      successCondition: result == true
      provider:
        web:
          url: "{url}?revision={{{{args.canary}}}}&token={{{{args.api-token}}}}"
          headers:
            - {{key: Authorization, value: "Bearer {{{{args.api-token}}}}"}}
          jsonPath: "{{$.healthy}}"
    - name: without-header
      successCondition: result == true
      provider:
        web:
          url: "{url}/{{{{args.api-token}}}}"
          jsonPath: "{{$.healthy}}"
"#
    );
    let repo = GitRepo::new();
    commit_model(&repo, &v1, "iris v1");
    repo.write("rollout.yaml", &rollout_yaml(&template));
    repo.commit("a rollout judged by an endpoint that wants a token");
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("up.log");
    // crossfade's log, kept: it must not hold the secret either.
    let mut wrapped = Command::new("sh");
    wrapped.args([
        "-c",
        &format!("\"$0\" \"$@\" 2>&1 | tee {} >&2", log.display()),
        BIN,
    ]);
    let secrets_dir = secrets.path().to_str().unwrap();
    let up = Up::start_in(
        wrapped,
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--secrets-dir",
            secrets_dir,
        ],
    );
    up.sync();
    commit_model(&repo, &v2, "iris v2");
    up.sync();
    let (r, _) = up.wait_rollout("iris-predictor-00002", |r| {
        r["phase"] == "Paused" && r["currentStepIndex"] == 4
    });
    let run = &r["analysisRuns"][0];
    assert_eq!(run["phase"], "Successful", "{r:#}");
    let refused = run["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "without-header")
        .unwrap_or_else(|| panic!("{r:#}"));
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("401") && message.contains("/health/***"),
        "{run:#}"
    );
    // The endpoint got the secret's value, in the header and the query.
    let auths = seen.lock().unwrap().clone();
    assert!(
        auths.iter().any(|a| a == &format!("Bearer {TOKEN_VALUE}")),
        "{auths:?}"
    );

    let shown = [
        up.status().to_string(),
        up.rollout().to_string(),
        http_get(&up.server, "/api/v1/rollouts"),
        http_get(&up.server, "/api/v1/audit?limit=1000"),
        up.json(&["history"]).to_string(),
    ];
    for text in &shown {
        assert!(!text.contains(TOKEN_VALUE), "the secret is shown: {text}");
    }
    drop(up);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("crossfade is up"), "{logged}");
    assert!(!logged.contains(TOKEN_VALUE), "the secret is logged");
}

#[test]
fn a_job_metric_runs_as_a_local_process_and_its_exit_status_decides() {
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2", "iris-mlp-v1"]);
    let [v1, v2, v3] = models.uris();
    // As Argo's docs write a job metric; the check fails for the third revision.
    let template = r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: health}
spec:
  args: [{name: canary}]
  metrics:
    - name: smoke-test
      provider:
        job:
          metadata:
            labels: {team: ml}
          spec:
            backoffLimit: 1
            template:
              spec:
                restartPolicy: Never
                containers:
                  - name: smoke
                    image: alpine:3
                    command: [/bin/sh, -c]
                    args: ['case "{{args.canary}}" in *00003) exit 3;; esac']
"#;
    let repo = GitRepo::new();
    commit_model(&repo, &v1, "iris v1");
    repo.write(
        "rollout.yaml",
        &rollout_yaml_ending(template, "{duration: 1s}"),
    );
    repo.commit("a rollout judged by a smoke-test job");
    let out = Command::new(BIN)
        .args(["lint", repo.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("runs-command"), "{text}");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--allow-runtime-commands",
        ],
    );
    up.sync();

    commit_model(&repo, &v2, "iris v2");
    up.sync();
    let (r, _) = up.wait_rollout("iris-predictor-00002", |r| {
        r["stableRevision"] == "iris-predictor-00002"
    });
    assert_eq!(r["phase"], "Healthy", "{r:#}");
    let m = &r["analysisRuns"][0]["measurements"][0];
    assert_eq!(m["phase"], "Successful", "{r:#}");
    let value: Value = serde_json::from_str(m["value"].as_str().unwrap()).unwrap();
    assert_eq!(value["exitCode"], 0, "{value}");

    commit_model(&repo, &v3, "iris v3");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00003", |r| r["phase"] == "Degraded");
    assert_eq!(max, 20, "{r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00002");
    let failed = failed_measurement(&run);
    let value: Value = serde_json::from_str(failed["value"].as_str().unwrap()).unwrap();
    // backoffLimit 1: tried twice.
    assert_eq!(value["exitCode"], 3, "{value}");
    assert_eq!(value["attempts"], 2, "{value}");
}

#[test]
fn a_canary_that_answers_differently_is_caught_in_the_shadow() {
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2", "iris-wrong"]);
    let [v1, v2, wrong] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    // Every request is copied to the canary while it has no traffic of its own, and its
    // answers must agree with the stable revision's before it gets any.
    repo.write(
        "rollout.yaml",
        r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: iris}
spec:
  workloadRef: {apiVersion: serving.kserve.io/v1beta1, kind: InferenceService, name: iris}
  strategy:
    canary:
      steps:
        - setMirrorRoute: {name: shadow, percentage: 100}
        - analysis: {templates: [{templateName: agree}]}
        - setWeight: 50
        - pause: {}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: agree}
spec:
  metrics:
    - name: agreement
      initialDelay: 2s
      interval: 1s
      count: 3
      successCondition: result >= 0.9
      provider:
        crossfade: {metric: mirror-agreement, window: 3s}
"#,
    );
    repo.commit("iris v1 with a shadow rollout");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();
    let load = Load::sending(&up.data, |_| IRIS_V2.to_owned());

    // A retrained model that agrees: on to 50%.
    commit_model(&repo, &v2, "iris v2");
    up.sync();
    let (r, _) = up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Paused");
    assert_eq!(r["weights"]["iris-predictor-00002"], 50, "{r:#}");
    assert_eq!(r["analysisRuns"][0]["phase"], "Successful", "{r:#}");
    up.json(&["rollout", "promote", "iris", "--full"]);
    up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Healthy");

    // A model that answers confidently and wrongly (no errors, no latency): aborted before it
    // answers a single client.
    commit_model(&repo, &wrong, "iris v3, which gets the species wrong");
    up.sync();
    let (r, max) = up.wait_rollout("iris-predictor-00003", |r| r["phase"] == "Degraded");
    let seen = load.finish();
    assert_eq!(max, 0, "{r:#}");
    let run = aborted_back_to(&r, "iris-predictor-00002");
    assert_eq!(run["measurements"][0]["value"], "0.0", "{r:#}");
    // Clients only ever got the stable revisions' answers, all of them 200.
    assert!(
        seen.keys()
            .all(|(rev, code)| *code == 200 && rev != "iris-predictor-00003"),
        "{seen:?}"
    );
}

#[test]
fn notifications_follow_a_rollout_and_a_rollback() {
    let receiver = Receiver::start();
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2", "iris-fails-some"]);
    let [v1, v2, bad] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.write(
        "rollout.yaml",
        &rollout_yaml_ending(BUILTIN_TEMPLATE, "{duration: 1s}"),
    );
    repo.commit("iris v1 with a rollout");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--notify",
            &receiver.url,
        ],
    );
    up.sync();
    let load = Load::start(&up.data);
    commit_model(&repo, &v2, "iris v2");
    up.sync();
    up.wait_rollout("iris-predictor-00002", |r| {
        r["stableRevision"] == "iris-predictor-00002"
    });
    commit_model(&repo, &bad, "iris v3, which fails on some inputs");
    up.sync();
    up.wait_rollout("iris-predictor-00003", |r| r["phase"] == "Degraded");
    drop(load.finish());

    receiver.wait(|r| r.count("rollout.aborted") == 1 && r.count("analysis.failed") == 1);
    // Three commits applied (the first event was refused once, and delivered on retry); the
    // first revision and v2 promoted; v2's analysis passed; the steps announced.
    receiver.wait(|r| r.count("sync.succeeded") == 3 && r.count("rollout.promoted") == 2);
    assert_eq!(receiver.count("analysis.succeeded"), 1);
    // setWeight 20 and 50 for v2, setWeight 20 for v3.
    assert_eq!(receiver.count("rollout.step"), 3);
    let events = receiver.events.lock().unwrap();
    let first = &events[0];
    assert_eq!(first["event"], "sync.succeeded", "{events:#?}");
    for e in events.iter() {
        assert!(
            e["text"].as_str().unwrap().starts_with("crossfade: "),
            "{e}"
        );
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    let aborted = events
        .iter()
        .find(|e| e["event"] == "rollout.aborted")
        .unwrap();
    assert_eq!(aborted["subject"], "default/iris");
    assert_eq!(
        aborted["detail"]["weights"],
        serde_json::json!({"iris-predictor-00002": 100})
    );
}

#[test]
fn the_demo_tells_the_whole_story_and_leaves_nothing_behind() {
    // Kept where asked: the repository with its three commits.
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--data-dir", data.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "iris-predictor-00001 serves all traffic",
        "step 3: analysing iris-predictor-00002 at 20%",
        "iris-predictor-00002 passed every step and now serves all traffic",
        "The analysis caught it at 20% and rolled it back",
        "iris-predictor-00002 serves all traffic again",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    let log = Command::new("git")
        .args(["log", "--oneline"])
        .current_dir(data.path().join("repo"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&log.stdout).lines().count(), 3);
    // Without --data-dir, its temporary directory is gone when it ends.
    let child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert!(status.success());
    assert!(
        !std::env::temp_dir()
            .join(format!("crossfade-demo-{pid}"))
            .exists()
    );
}

#[test]
fn the_dashboard_shows_the_split_change_during_a_rollout() {
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2"]);
    let [v1, v2] = models.uris();
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.write("rollout.yaml", &rollout_yaml(BUILTIN_TEMPLATE));
    repo.commit("iris v1 with a rollout");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();
    let shots = tempfile::tempdir().unwrap();
    let url = format!("{}/", up.server);

    // Before: the stable revision has the whole bar (the dashboard's first colour).
    let before = shots.path().join("before.png");
    screenshot(&url, &before);
    let (blue, green) = first_bar(&before);
    assert!(blue > 400 && green == 0, "{blue} {green}");
    let page = dom(&url);
    assert!(
        page.contains(r#"data-revision="iris-predictor-00001" data-percent="100""#),
        "{page}"
    );

    // During the rollout: half and half, the canary in the second colour.
    let load = Load::start(&up.data);
    commit_model(&repo, &v2, "iris v2");
    up.sync();
    up.wait_rollout("iris-predictor-00002", |r| {
        r["phase"] == "Paused" && r["currentStepIndex"] == 4
    });
    drop(load.finish());
    let during = shots.path().join("during.png");
    screenshot(&url, &during);
    let (blue, green) = first_bar(&during);
    assert!(
        blue > 200 && green > 200 && blue.abs_diff(green) < (blue + green) / 10,
        "{blue} {green}"
    );
    let page = dom(&url);
    assert!(
        page.contains(r#"data-revision="iris-predictor-00002" data-percent="50""#),
        "{page}"
    );
    assert!(
        page.contains(r#"<li class="current">5. pause: until promoted</li>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"data-metric="success-rate""#),
        "no plot: {page}"
    );

    // Promoted: the new revision has the whole bar.
    up.json(&["rollout", "promote", "iris"]);
    up.wait_rollout("iris-predictor-00002", |r| r["phase"] == "Healthy");
    let after = shots.path().join("after.png");
    screenshot(&url, &after);
    let (blue, green) = first_bar(&after);
    assert!(green > 400 && blue == 0, "{blue} {green}");
}

// === Hardening: nothing from Git runs unasked ===

#[test]
fn a_serving_runtime_from_git_runs_only_when_allowed_and_without_crossfades_secrets() {
    let python = std::env::var("CROSSFADE_PYTHON").unwrap_or_else(|_| "python3".into());
    let store = tempfile::tempdir().unwrap();
    let uri = publish_model(store.path(), "iris-logreg-v1");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("seen.json");
    let repo = GitRepo::new();
    repo.write("runtime.yaml", &sneaky_runtime(&python, &out));
    repo.write(
        "iris.yaml",
        &format!(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: iris}}\nspec:\n  predictor:\n    model:\n      modelFormat: {{name: sneaky}}\n      protocolVersion: v2\n      storageUri: \"{uri}\"\n"
        ),
    );
    repo.commit("a runtime that reads the environment and forks");

    // Lint says what the runtime does.
    let lint = Command::new(BIN)
        .args(["lint", repo.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&lint.stdout).into_owned() + &String::from_utf8_lossy(&lint.stderr);
    assert!(
        text.contains("runs a command on the serving machine"),
        "{text}"
    );

    // Not allowed: Failed, with how to allow it, and the command never ran.
    let data = tempfile::tempdir().unwrap();
    let with_secrets = || {
        let mut command = Command::new(BIN);
        command
            .env("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
            .env("CROSSFADE_TOKEN", TOKEN);
        command
    };
    let up = Up::start_in(
        with_secrets(),
        data.path(),
        &["--repo", repo.path().to_str().unwrap()],
    );
    up.sync();
    let status = up.status();
    let rev = &service(&status, "iris")["revisions"][0];
    assert_eq!(rev["state"], "Failed", "{status:#}");
    let reason = rev["reason"].as_str().unwrap();
    assert!(
        reason.contains("--allow-runtime-commands") && reason.contains("--runtime-allowlist"),
        "{reason}"
    );
    assert!(
        !out.exists(),
        "the runtime's command ran without being allowed"
    );
    up.terminate(std::time::Duration::from_secs(20)).unwrap();

    // Allowed by an allow-list: it runs, sees none of crossfade's secrets, and what it forked
    // is stopped with it.
    let allow = out_dir.path().join("allowed-runtimes");
    std::fs::write(&allow, format!("sneaky {python}\n")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let up = Up::start_in(
        with_secrets(),
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--runtime-allowlist",
            allow.to_str().unwrap(),
        ],
    );
    up.sync();
    let status = up.status();
    assert_eq!(
        service(&status, "iris")["revisions"][0]["state"],
        "Ready",
        "{status:#}"
    );
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let env = seen["env"].as_object().unwrap();
    for secret in [
        "AWS_SECRET_ACCESS_KEY",
        "CROSSFADE_TOKEN",
        "CROSSFADE_WEBHOOK_SECRET",
    ] {
        assert!(!env.contains_key(secret), "the runtime saw {secret}");
    }
    assert!(
        !env.values()
            .any(|v| v == "aws-secret-value" || v == TOKEN || v == HOOK_SECRET),
        "a secret's value reached the runtime"
    );
    assert_eq!(env["OUT"], out.display().to_string());
    let child = seen["child"].as_u64().unwrap();
    assert!(alive(child));
    up.terminate(std::time::Duration::from_secs(20)).unwrap();
    assert!(!alive(child), "the runtime's child outlived crossfade");
}

#[test]
fn idle_connections_beyond_the_file_limit_do_not_take_serving_down() {
    let store = tempfile::tempdir().unwrap();
    let v1 = publish_model(store.path(), "iris-logreg-v1");
    let v2 = publish_model(store.path(), "iris-logreg-v2");
    let repo = GitRepo::new();
    commit_model(&repo, &v1, "v1");
    let data = tempfile::tempdir().unwrap();
    // The process's own file limit, lowered: 128 descriptors, so a few hundred idle sockets
    // exhaust it unless crossfade caps its connections.
    let mut wrapped = Command::new("sh");
    wrapped.args(["-c", "ulimit -n 128 && exec \"$0\" \"$@\"", BIN]);
    let up = Up::start_in(
        wrapped,
        data.path(),
        &["--repo", repo.path().to_str().unwrap()],
    );
    up.sync();
    let admin = up.server.trim_start_matches("http://").to_owned();
    let plane = up.data.trim_start_matches("http://").to_owned();
    // 200 connections to the data plane and 100 to the control API that send nothing.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&plane).unwrap());
    }
    for _ in 0..100 {
        idle.push(TcpStream::connect(&admin).unwrap());
    }
    // Inference, the control API and a Git sync all go on.
    for _ in 0..5 {
        let (code, _, body) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
        assert_eq!(code, 200, "{body}");
    }
    let status = up.status();
    assert_eq!(service(&status, "iris")["health"], "Healthy", "{status:#}");
    commit_model(&repo, &v2, "v2");
    let result = up.sync();
    assert_eq!(result[0]["outcome"], "Applied", "{result:#}");
    let (code, head, _) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(
        (code, revision_of(&head).as_str()),
        (200, "iris-predictor-00002")
    );
    drop(idle);
}

#[test]
fn a_load_that_never_ends_does_not_block_the_syncs_after_it() {
    let store = tempfile::tempdir().unwrap();
    let good = publish_model(store.path(), "iris-logreg-v1");
    let dir = tempfile::tempdir().unwrap();
    // A FIFO as the artifact: read, it would never end.
    let fifo = dir.path().join("model.onnx");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // And a server that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_at = silent.local_addr().unwrap();
    let repo = GitRepo::new();
    commit_model(&repo, &format!("file://{}", fifo.display()), "a FIFO");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(
        data.path(),
        &[
            "--repo",
            repo.path().to_str().unwrap(),
            "--load-timeout",
            "3s",
        ],
    );
    up.sync();
    let status = up.status();
    let rev = &service(&status, "iris")["revisions"][0];
    assert_eq!(rev["state"], "Failed", "{status:#}");
    assert!(
        rev["reason"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{rev}"
    );
    // A download that hangs: Failed at the load deadline; a sync meanwhile is not held up.
    commit_model(
        &repo,
        &format!("http://{silent_at}/model.onnx"),
        "a hanging download",
    );
    let waiting = {
        let (server, token) = (up.server.clone(), TOKEN);
        std::thread::spawn(move || {
            Command::new(BIN)
                .args([
                    "sync", "--output", "json", "--server", &server, "--token", token,
                ])
                .output()
                .unwrap()
        })
    };
    // The fix, synced while the hanging load is still in progress.
    let (accepted, _) = silent.accept().unwrap();
    commit_model(&repo, &good, "the fix");
    up.sync();
    let status = up.status();
    assert_eq!(service(&status, "iris")["health"], "Healthy", "{status:#}");
    // The hanging download was still in progress: its connection is open (its request
    // unread, or nothing), not closed.
    accepted.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open = match accepted.peek(&mut byte) {
        Ok(n) => n > 0,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    };
    assert!(
        open,
        "the hanging download had ended before the fix was synced"
    );
    let waited = waiting.join().unwrap();
    assert!(waited.status.success(), "{waited:?}");
    let status = up.status();
    let revisions = service(&status, "iris")["revisions"]
        .as_array()
        .unwrap()
        .clone();
    let ready = revisions.iter().find(|r| r["state"] == "Ready");
    assert!(ready.is_some(), "{status:#}");
    let (code, _, body) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn right_after_a_restart_a_served_model_is_503_until_ready_never_404() {
    let store = tempfile::tempdir().unwrap();
    let v1 = publish_model(store.path(), "iris-mlp-v1");
    let repo = GitRepo::new();
    commit_model(&repo, &v1, "v1");
    let data = tempfile::tempdir().unwrap();
    let args = ["--repo", repo.path().to_str().unwrap()];
    let up = Up::start(data.path(), &args);
    up.sync();
    up.kill();
    let up = Up::start(data.path(), &args);
    // The first request after the listener opens: the restored model is loading or loaded.
    let (code, _, body) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert!(code == 200 || code == 503, "{code}: {body}");
    up.sync();
    let (code, _, body) = up.infer("/v2/models/iris/infer", &[], IRIS_V2);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_short_or_empty_webhook_secret_is_refused_at_start_and_files_hold_secrets() {
    let repo = GitRepo::new();
    let data = tempfile::tempdir().unwrap();
    for secret in ["", "short"] {
        let out = Command::new(BIN)
            .args(["up", "--repo", repo.path().to_str().unwrap()])
            .args(["--data-dir", data.path().to_str().unwrap()])
            .args(["--webhook-secret", secret])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("give at least 16"), "{stderr}");
    }
    // The file forms: the token from a file authorizes, the secret from a file authenticates.
    let files = tempfile::tempdir().unwrap();
    let token = files.path().join("token");
    let secret = files.path().join("secret");
    std::fs::write(&token, "token-from-a-file\n").unwrap();
    std::fs::write(&secret, "a-webhook-secret-from-a-file\n").unwrap();
    let empty = files.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let out = Command::new(BIN)
        .args(["up", "--repo", repo.path().to_str().unwrap()])
        .args(["--data-dir", data.path().to_str().unwrap()])
        .args(["--webhook-secret-file", empty.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is empty"), "{stderr}");
    let mut child = Command::new(BIN)
        .process_group(0)
        .args(["up", "--repo", repo.path().to_str().unwrap()])
        .args(["--data-dir", data.path().to_str().unwrap()])
        .args(["--admin-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .args(["--log-format", "json", "--poll-interval", "1h"])
        .args(["--admin-token-file", token.to_str().unwrap()])
        .args(["--webhook-secret-file", secret.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let admin = loop {
        let line = lines.next().expect("crossfade up exited").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["fields"]["message"] == "crossfade is up" {
            break format!("http://{}", v["fields"]["admin"].as_str().unwrap());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let (code, _, _) = http_post(
        &admin,
        "/api/v1/sync",
        &[("Authorization", "Bearer token-from-a-file")],
        "",
    );
    assert_eq!(code, 200);
    let (code, _, _) = http_post(
        &admin,
        "/api/v1/sync",
        &[("Authorization", "Bearer wrong")],
        "",
    );
    assert_eq!(code, 401);
    kill_group(child.id());
    child.wait().unwrap();
}

#[test]
fn credentials_in_a_storage_uri_are_shown_nowhere() {
    let repo = GitRepo::new();
    let uri =
        "http://reader:hunter2-password@127.0.0.1:1/iris/model.onnx?X-Amz-Signature=sig-SECRET";
    commit_model(&repo, uri, "a pre-signed URL with userinfo");
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path(), &["--repo", repo.path().to_str().unwrap()]);
    up.sync();
    let status = up.status();
    let rev = &service(&status, "iris")["revisions"][0];
    assert_eq!(rev["state"], "Failed", "{status:#}");
    assert_eq!(
        rev["storageUri"], "http://***@127.0.0.1:1/iris/model.onnx?***",
        "{rev}"
    );
    let shown = [
        status.to_string(),
        up.json(&["history"]).to_string(),
        http_get(&up.server, "/api/v1/audit"),
        up.cli(&["status"]).1,
    ];
    for text in shown {
        assert!(
            !text.contains("hunter2") && !text.contains("sig-SECRET"),
            "a secret is shown: {text}"
        );
    }
}
