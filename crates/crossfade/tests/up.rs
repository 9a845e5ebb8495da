//! `crossfade up` as a user runs it: a real Git repository (local path and smart HTTP), commits
//! pushed while it runs, the CLI and the HTTP API, signed-only mode, `kill -9` and restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use test_support::{GitHttpServer, GitRepo, SigningKey, bare_clone};

const BIN: &str = env!("CARGO_BIN_EXE_crossfade");
const TOKEN: &str = "test-admin-token";
const HOOK_SECRET: &str = "hook-secret-for-the-tests";

/// A running `crossfade up`, killed when dropped.
struct Up {
    child: Option<Child>,
    server: String,
    /// The inference endpoint.
    data: String,
}

impl Up {
    /// Starts `crossfade up` with `args` and waits for its "crossfade is up" log line, which
    /// names the port it bound (the tests ask for port 0).
    fn start(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_in(Command::new(BIN), data_dir, args)
    }

    /// [`Up::start`], from a command prepared by the caller (environment, a shell wrapper).
    fn start_in(mut command: Command, data_dir: &Path, args: &[&str]) -> Self {
        let mut child = command
            // Its own process group, so that dropping it also stops the model servers it
            // started, even after `kill -9`.
            .process_group(0)
            .arg("up")
            .args(args)
            .args(["--data-dir", data_dir.to_str().unwrap()])
            .args(["--admin-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(["--admin-token", TOKEN, "--webhook-secret", HOOK_SECRET])
            // Polls stay out of the way: the tests trigger every sync themselves.
            .args(["--poll-interval", "1h"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("start crossfade up");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let (admin, data) = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("crossfade up exited before it was up:\n{}", seen.join("\n"));
            };
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["fields"]["message"] == "crossfade is up" {
                let field = |k: &str| v["fields"][k].as_str().unwrap().to_owned();
                break (field("admin"), field("listen"));
            }
            seen.push(line);
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child: Some(child),
            server: format!("http://{admin}"),
            data: format!("http://{data}"),
        }
    }

    /// Runs a client command against this server; returns (exit code, stdout).
    fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(BIN)
            .args(args)
            .args(["--server", &self.server, "--token", TOKEN])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let (code, out) = self.cli(&all);
        assert_eq!(code, 0, "{args:?}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    fn sync(&self) -> Value {
        self.json(&["sync"])
    }

    fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// Sends a raw HTTP POST to the control API; returns the status code.
    fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
        http_post(&self.server, path, headers, body).0
    }

    /// Sends a raw HTTP POST to the inference endpoint; returns (status, headers, body).
    fn infer(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
        http_post(&self.data, path, headers, body)
    }

    /// `kill -9` (of the whole group: model servers go too).
    fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        kill_group(child.id());
        child.wait().unwrap();
    }

    /// SIGTERM; returns how the process exited, or `None` if it is still running after
    /// `timeout` (then it is killed).
    fn terminate(mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            (child, status)
        });
        match rx.recv_timeout(timeout) {
            Ok(()) => waiter.join().unwrap().1.ok(),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                None
            }
        }
    }
}

/// A raw HTTP/1.1 GET; returns the body.
fn http_get(base: &str, path: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// A raw HTTP/1.1 POST; returns (status, header block, body).
fn http_post(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    {
        let addr = base.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        // A caller-supplied Host replaces the default; two Host headers would
        // leave routing to whichever one the server reads first.
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        stream.read_to_string(&mut resp).unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        (status, head.to_ascii_lowercase(), body.to_owned())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            kill_group(child.id());
            let _ = child.wait();
        }
    }
}

/// SIGKILL to a whole process group.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

fn isvc(name: &str, uri: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: {name}, namespace: models}}\nspec:\n  predictor:\n    model: {{modelFormat: {{name: onnx}}, storageUri: \"{uri}\"}}\n"
    )
}

fn service<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {status:#}"))
}

fn revision_names(status: &Value, svc: &str) -> Vec<String> {
    service(status, svc)["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

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
    repo.write("deploy/iris.yaml", &isvc("iris", "pvc://nope"));
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
    repo.write("deploy/iris.yaml", &isvc("iris", "pvc://still-nope"));
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

/// Copies a fixture model into `store/<name>/sha256-<digest>/model.onnx` and returns its
/// pinned `file://` URI.
fn publish_model(store: &Path, fixture: &str) -> String {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/models/{fixture}.onnx"));
    let digest = artifact::digest_path(&src).unwrap();
    let dir = store.join(fixture).join(format!("sha256-{digest}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&src, dir.join("model.onnx")).unwrap();
    format!("file://{}/model.onnx", dir.display())
}

fn isvc_with(name: &str, uri: &str, extra: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: {name}\n  annotations: {{serving.kserve.io/enable-tag-routing: \"true\"}}\nspec:\n  predictor:\n{extra}    model: {{modelFormat: {{name: onnx}}, storageUri: \"{uri}\"}}\n"
    )
}

const IRIS_V2: &str = r#"{"id": "q1", "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}]}"#;

fn revision_of(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("x-crossfade-revision: "))
        .unwrap_or_default()
        .trim()
        .to_owned()
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

fn splits_of(status: &Value, svc: &str) -> Vec<(String, u64)> {
    service(status, svc)["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["trafficPercent"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Starts `up` on a repo whose iris is a 90/10 canary, with `extra` flags.
fn canary_setup(extra: &[&str]) -> (tempfile::TempDir, tempfile::TempDir, GitRepo, Up) {
    let store = tempfile::tempdir().unwrap();
    let v1 = publish_model(store.path(), "iris-logreg-v1");
    let v2 = publish_model(store.path(), "iris-logreg-v2");
    let repo = GitRepo::new();
    repo.write("iris.yaml", &isvc_with("iris", &v1, ""));
    repo.commit("iris v1");
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["--repo", repo.path().to_str().unwrap()];
    args.extend(extra);
    let up = Up::start(data.path(), &args);
    up.sync();
    repo.write(
        "iris.yaml",
        &isvc_with("iris", &v2, "    canaryTrafficPercent: 10\n"),
    );
    repo.commit("iris v2, 10%");
    up.sync();
    (store, data, repo, up)
}

fn canary_split() -> Vec<(String, u64)> {
    vec![
        ("iris-predictor-00001".into(), 90),
        ("iris-predictor-00002".into(), 10),
    ]
}

#[test]
fn api_overrides_without_self_heal_are_kept_until_a_sync() {
    let (_store, _data, _repo, up) = canary_setup(&[]);
    assert_eq!(splits_of(&up.status(), "iris"), canary_split());
    let (code, out) = up.cli(&["traffic", "iris", "iris-predictor-00002=100"]);
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
    // A reconcile under the policy keeps the change and reports the drift.
    up.json(&["refresh"]);
    let status = up.status();
    assert_eq!(splits_of(&status, "iris")[1].1, 100);
    let iris = service(&status, "iris");
    assert_eq!(iris["syncStatus"], "OutOfSync");
    assert!(
        iris["message"]
            .as_str()
            .unwrap()
            .contains("does not self-heal"),
        "{iris}"
    );
    // An explicit sync applies Git again.
    up.sync();
    let status = up.status();
    assert_eq!(splits_of(&status, "iris"), canary_split());
    assert_eq!(service(&status, "iris")["syncStatus"], "Synced");
    // Bad overrides are refused with the reason.
    let (code, out) = up.cli(&["traffic", "iris", "iris-predictor-00001=60"]);
    assert_eq!(code, 1);
    assert!(out.contains("sum to 60, not 100"), "{out}");
    let (code, out) = up.cli(&["traffic", "iris", "iris-predictor-00009=100"]);
    assert_eq!(code, 1);
    assert!(out.contains("no revision iris-predictor-00009"), "{out}");
    let audit = up.json(&["audit", "verify"]);
    assert_eq!(audit["ok"], true);
}

#[test]
fn self_heal_reverts_api_overrides_at_the_next_reconcile() {
    let (_store, _data, _repo, up) = canary_setup(&["--self-heal"]);
    let (code, out) = up.cli(&["traffic", "default/iris", "iris-predictor-00001=100"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(splits_of(&up.status(), "iris")[0].1, 100);
    up.json(&["refresh"]);
    let status = up.status();
    assert_eq!(splits_of(&status, "iris"), canary_split());
    assert_eq!(service(&status, "iris")["syncStatus"], "Synced");
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

/// A ServingRuntime that starts MLServer (from the test venv) for scikit-learn models.
fn mlserver_runtime() -> String {
    let python = std::env::var("CROSSFADE_PYTHON").unwrap_or_else(|_| "python3".into());
    let bin = Path::new(&python).parent().unwrap().join("mlserver");
    assert!(
        bin.exists(),
        "MLServer is not installed next to {python}: run `cargo xtask test`"
    );
    format!(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: ServingRuntime\nmetadata: {{name: mlserver-sklearn}}\nspec:\n  supportedModelFormats:\n    - {{name: sklearn, version: \"1\", autoSelect: true, priority: 1}}\n  protocolVersions: [v2]\n  containers:\n    - name: kserve-container\n      command: [\"{}\", start, /mnt/models]\n      env:\n        - {{name: MLSERVER_PARALLEL_WORKERS, value: \"0\"}}\n",
        bin.display()
    )
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

/// Fixture models published under their digests (`publish_model`), kept while it lives.
struct Models {
    _store: tempfile::TempDir,
    uris: Vec<String>,
}

impl Models {
    fn publish(names: &[&str]) -> Self {
        let store = tempfile::tempdir().unwrap();
        let uris = names
            .iter()
            .map(|n| publish_model(store.path(), n))
            .collect();
        Self {
            _store: store,
            uris,
        }
    }

    fn uris<const N: usize>(&self) -> [String; N] {
        self.uris.clone().try_into().unwrap()
    }
}

/// Points `iris` at `uri` and commits it.
fn commit_model(repo: &GitRepo, uri: &str, message: &str) {
    repo.write("iris.yaml", &isvc_with("iris", uri, ""));
    repo.commit(message);
}

/// A Rollout of `iris` with an analysis step over `template`, and that template. The last step
/// waits for `promote`.
fn rollout_yaml(template: &str) -> String {
    rollout_yaml_ending(template, "{}")
}

/// The same, with the last pause given (`{duration: 1s}`: promoted by itself).
fn rollout_yaml_ending(template: &str, last_pause: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: iris}}
spec:
  workloadRef: {{apiVersion: serving.kserve.io/v1beta1, kind: InferenceService, name: iris}}
  strategy:
    canary:
      steps:
        - setWeight: 20
        - pause: {{duration: 2s}}
        - analysis:
            templates: [{{templateName: health}}]
            args: [{{name: canary, valueFrom: {{podTemplateHashValue: Latest}}}}]
        - setWeight: 50
        - pause: {last_pause}
---
{template}"#
    )
}

/// The built-in provider: the canary's success rate over the last 3 s, three times.
const BUILTIN_TEMPLATE: &str = r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: health}
spec:
  args: [{name: canary}]
  metrics:
    - name: success-rate
      initialDelay: 1s
      interval: 1s
      count: 3
      successCondition: result >= 0.95
      provider:
        crossfade: {metric: success-rate, window: 3s}
"#;

/// Requests from a thread until stopped: half of them flowers whose sepal length the
/// `iris-fails` model cannot look up (it answers 500 for those), half it can.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::collections::BTreeMap<(String, u16), usize>>,
}

impl Load {
    fn start(base: &str) -> Self {
        Self::sending(base, |i| {
            let sepal = if i.is_multiple_of(2) { 5.1 } else { 0.5 };
            format!(
                r#"{{"inputs": [{{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [{sepal}, 3.5, 1.4, 0.2]}}]}}"#
            )
        })
    }

    /// Sends `body(i)` as the i-th request.
    fn sending(base: &str, body: fn(u64) -> String) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let base = base.to_owned();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::new();
            let mut i = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, head, _) = http_post(&base, "/v2/models/iris/infer", &[], &body(i));
                *seen.entry((revision_of(&head), code)).or_default() += 1;
                i += 1;
            }
            seen
        });
        Self { stop, thread }
    }

    fn finish(self) -> std::collections::BTreeMap<(String, u16), usize> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Checks that the rollout `r` aborted its canary and gave `stable` all the traffic back;
/// returns the analysis run that failed.
fn aborted_back_to(r: &Value, stable: &str) -> Value {
    assert_eq!(r["phase"], "Degraded", "{r:#}");
    assert_eq!(r["weights"], serde_json::json!({ stable: 100 }), "{r:#}");
    let run = r["analysisRuns"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(run["phase"], "Failed", "{r:#}");
    run
}

impl Up {
    fn rollout(&self) -> Value {
        serde_json::from_str(&http_get(&self.server, "/api/v1/rollouts/iris")).unwrap()
    }

    /// Polls the rollout until `done` holds (30 s at most); returns it, with the largest
    /// weight `canary` had on the way.
    fn wait_rollout(&self, canary: &str, done: impl Fn(&Value) -> bool) -> (Value, u64) {
        let mut max = 0;
        for _ in 0..300 {
            let r = self.rollout();
            max = max.max(r["weights"][canary].as_u64().unwrap_or(0));
            if done(&r) {
                return (r, max);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the rollout did not get there: {:#}", self.rollout());
    }
}

#[test]
fn a_rollout_promotes_a_good_model_resumes_after_kill_and_aborts_a_bad_one() {
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2", "iris-fails"]);
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

/// A Prometheus server on port 0 scraping `target` every second, stopped when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: crossfade\n    static_configs: [{{targets: ['{}']}}]\n",
                target.trim_start_matches("http://")
            ),
        )
        .unwrap();
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stderr(Stdio::piped())
            .spawn()
            .expect("prometheus is not installed: run `cargo xtask test`, which installs it");
        // It names the port it bound in its log: `msg="Listening on" address=127.0.0.1:NNNNN`.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("prometheus exited:\n{}", seen.join("\n"));
            };
            if line.contains("msg=\"Listening on\"") {
                let addr = line.rsplit("address=").next().unwrap().trim().to_owned();
                break addr;
            }
            seen.push(line);
        };
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            url: format!("http://{addr}"),
            _dir: dir,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Argo's prometheus provider: the canary's share of failed requests over 5 s, as Prometheus
/// computes it from crossfade's own `/metrics`.
fn prometheus_template(address: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: health}}
spec:
  args: [{{name: canary}}]
  metrics:
    - name: error-ratio
      initialDelay: 3s
      interval: 2s
      count: 3
      successCondition: result[0] <= 0.05
      failureCondition: result[0] > 0.2
      provider:
        prometheus:
          address: {address}
          query: >-
            sum(rate(crossfade_requests_total{{service="default/iris",revision="{{{{args.canary}}}}",outcome="server_error"}}[5s]))
            / sum(rate(crossfade_requests_total{{service="default/iris",revision="{{{{args.canary}}}}"}}[5s]))
"#
    )
}

#[test]
fn a_rollout_judged_by_a_real_prometheus() {
    let models = Models::publish(&["iris-logreg-v1", "iris-mlp-v1", "iris-fails"]);
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
      initialDelay: 1s
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

/// A notification receiver on port 0: keeps every JSON body POSTed to it, answering 503 to the
/// very first request (the sender must retry) and 200 to the rest.
struct Receiver {
    url: String,
    events: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&events);
        let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let kept = std::sync::Arc::clone(&kept);
                let first = std::sync::Arc::clone(&first);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let refuse = first.swap(false, std::sync::atomic::Ordering::SeqCst);
                        if refuse {
                            let _ = stream.write_all(
                                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
                            );
                            continue;
                        }
                        kept.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                    }
                });
            }
        });
        Self { url, events }
    }

    fn count(&self, event: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == event)
            .count()
    }

    /// Waits (30 s at most) until `done` holds for the counts.
    fn wait(&self, done: impl Fn(&Self) -> bool) {
        for _ in 0..300 {
            if done(self) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "not all notifications arrived: {:#?}",
            self.events.lock().unwrap()
        );
    }
}

#[test]
fn notifications_follow_a_rollout_and_a_rollback() {
    let receiver = Receiver::start();
    let models = Models::publish(&["iris-logreg-v1", "iris-logreg-v2", "iris-fails"]);
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

/// A screenshot of `url` by headless Chromium, once the page's scripts have run.
fn screenshot(url: &str, path: &Path) {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(["--window-size=1200,900", "--virtual-time-budget=4000"])
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .expect("chromium is not installed: run `cargo xtask test`, which installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The page as Chromium has it after its scripts ran.
fn dom(url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=4000",
        ])
        .args(["--dump-dom", url])
        .output()
        .expect("chromium is not installed: run `cargo xtask test`, which installs it");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dashboard's first two revision colours.
const BLUE: [u8; 3] = [0x3b, 0x7d, 0xdd];
const GREEN: [u8; 3] = [0x1f, 0x9d, 0x55];

/// The first traffic bar in a screenshot (the first row of pixels with more than 400 in the
/// revision colours): how many of its pixels are blue and green.
fn first_bar(path: &Path) -> (usize, usize) {
    let mut decoder =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut buf).unwrap();
    let step = frame.color_type.samples();
    let width = frame.width as usize * step;
    for row in buf[..frame.buffer_size()].chunks(width) {
        let px: Vec<[u8; 3]> = row.chunks(step).map(|c| [c[0], c[1], c[2]]).collect();
        let blue = px.iter().filter(|p| **p == BLUE).count();
        let green = px.iter().filter(|p| **p == GREEN).count();
        if blue + green > 400 {
            return (blue, green);
        }
    }
    panic!("no traffic bar in {}", path.display());
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

/// A ServingRuntime that, once started, writes its environment and the pid of a process it
/// forks to `$OUT`, then serves readiness: what an attacker with a commit would try.
fn sneaky_runtime(python: &str, out: &Path) -> String {
    let script = "import http.server, json, os, subprocess, sys\\n\
        child = subprocess.Popen(['sleep', '1000'])\\n\
        json.dump({'env': dict(os.environ), 'child': child.pid}, open(os.environ['OUT'], 'w'))\\n\
        class H(http.server.BaseHTTPRequestHandler):\\n\
        \\x20   def log_message(self, *a): pass\\n\
        \\x20   def do_GET(self):\\n\
        \\x20       self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()\\n\
        http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\\n";
    format!(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: ServingRuntime\nmetadata: {{name: sneaky}}\nspec:\n  supportedModelFormats:\n    - {{name: sneaky, autoSelect: true}}\n  protocolVersions: [v2]\n  containers:\n    - name: kserve-container\n      command: [\"{python}\", -c, \"{script}\"]\n      env:\n        - {{name: OUT, value: \"{}\"}}\n",
        out.display()
    )
}

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

/// Whether a process runs (a zombie no one has reaped runs no more).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

// === Hardening: connections, stuck loads ===

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
    let synced = up.sync();
    assert_eq!(synced[0]["outcome"], "Applied", "{synced:#}");
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
