//! Helpers of the end-to-end tests: `crossfade up` as a child process, HTTP and the CLI
//! against it, manifests and fixture models.

#![allow(dead_code)]

pub mod rollouts;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use test_support::GitRepo;

pub const BIN: &str = env!("CARGO_BIN_EXE_crossfade");
pub const TOKEN: &str = "test-admin-token";
pub const HOOK_SECRET: &str = "hook-secret-for-the-tests";

/// A running `crossfade up`, killed when dropped.
pub struct Up {
    pub child: Option<Child>,
    pub server: String,
    /// The inference endpoint.
    pub data: String,
}

impl Up {
    /// Starts `crossfade up` with `args` and waits for its "crossfade is up" log line, which
    /// names the port it bound (the tests ask for port 0).
    pub fn start(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_in(Command::new(BIN), data_dir, args)
    }

    /// [`Up::start`], from a command prepared by the caller (environment, a shell wrapper).
    pub fn start_in(mut command: Command, data_dir: &Path, args: &[&str]) -> Self {
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
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
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

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let (code, out) = self.cli(&all);
        assert_eq!(code, 0, "{args:?}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    pub fn sync(&self) -> Value {
        self.json(&["sync"])
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// Sends a raw HTTP POST to the control API; returns the status code.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> u16 {
        http_post(&self.server, path, headers, body).0
    }

    /// Sends a raw HTTP POST to the inference endpoint; returns (status, headers, body).
    pub fn infer(&self, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
        http_post(&self.data, path, headers, body)
    }

    /// `kill -9` (of the whole group: model servers go too).
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        kill_group(child.id());
        child.wait().unwrap();
    }

    /// SIGTERM; returns how the process exited, or `None` if it is still running after
    /// `timeout` (then it is killed).
    pub fn terminate(mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
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
pub fn http_get(base: &str, path: &str) -> String {
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
pub fn http_post(
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
pub fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

pub fn isvc(name: &str, uri: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: {name}, namespace: models}}\nspec:\n  predictor:\n    model: {{modelFormat: {{name: onnx}}, storageUri: \"{uri}\"}}\n"
    )
}

pub fn service<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {status:#}"))
}

pub fn revision_names(status: &Value, svc: &str) -> Vec<String> {
    service(status, svc)["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Copies a fixture model into `store/<name>/sha256-<digest>/model.onnx` and returns its
/// pinned `file://` URI.
pub fn publish_model(store: &Path, fixture: &str) -> String {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/models/{fixture}.onnx"));
    let digest = artifact::digest_path(&src).unwrap();
    let dir = store.join(fixture).join(format!("sha256-{digest}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&src, dir.join("model.onnx")).unwrap();
    format!("file://{}/model.onnx", dir.display())
}

pub fn isvc_with(name: &str, uri: &str, extra: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata:\n  name: {name}\n  annotations: {{serving.kserve.io/enable-tag-routing: \"true\"}}\nspec:\n  predictor:\n{extra}    model: {{modelFormat: {{name: onnx}}, storageUri: \"{uri}\"}}\n"
    )
}

pub const IRIS_V2: &str = r#"{"id": "q1", "inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}]}"#;

pub fn revision_of(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("x-crossfade-revision: "))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub fn splits_of(status: &Value, svc: &str) -> Vec<(String, u64)> {
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
pub fn canary_setup(extra: &[&str]) -> (tempfile::TempDir, tempfile::TempDir, GitRepo, Up) {
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

pub fn canary_split() -> Vec<(String, u64)> {
    vec![
        ("iris-predictor-00001".into(), 90),
        ("iris-predictor-00002".into(), 10),
    ]
}

/// Where `cargo xtask test` installs the built-in runtimes (`crossfade runtime install`).
pub fn runtimes_dir() -> String {
    let dir = std::env::var("CROSSFADE_RUNTIMES").unwrap_or_else(|_| "target/test-runtimes".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(dir);
    assert!(
        dir.join("mlserver-sklearn/bin/mlserver").exists(),
        "the built-in runtime mlserver-sklearn is not installed in {}: run `cargo xtask test`",
        dir.display()
    );
    dir.display().to_string()
}

/// A ServingRuntime of the user's that starts MLServer (the one `crossfade runtime install
/// sklearn` installed for the tests) for scikit-learn models.
pub fn mlserver_runtime() -> String {
    let bin = Path::new(&runtimes_dir()).join("mlserver-sklearn/bin/mlserver");
    format!(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: ServingRuntime\nmetadata: {{name: mlserver-sklearn}}\nspec:\n  supportedModelFormats:\n    - {{name: sklearn, version: \"1\", autoSelect: true, priority: 1}}\n  protocolVersions: [v2]\n  containers:\n    - name: kserve-container\n      command: [\"{}\", start, /mnt/models]\n      env:\n        - {{name: MLSERVER_PARALLEL_WORKERS, value: \"0\"}}\n",
        bin.display()
    )
}

/// `fixtures/runtimes/queue/<name>` pushed into `store` (digest pinned); its storage URI.
pub fn push_queue_model(store: &Path, name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/runtimes/queue");
    artifact::push(
        &dir.join(name),
        &format!("file://{}/{name}", store.display()),
    )
    .unwrap()
}

/// A ServingRuntime of `fixtures/runtimes/queue_server.py` (format `queue`): a model server
/// whose concurrency its model file sets.
pub fn queue_runtime() -> String {
    let python = std::env::var("CROSSFADE_PYTHON").unwrap_or_else(|_| "python3".into());
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/runtimes/queue_server.py");
    format!(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: ServingRuntime\nmetadata: {{name: queue}}\nspec:\n  supportedModelFormats:\n    - {{name: queue, autoSelect: true}}\n  protocolVersions: [v2]\n  containers:\n    - name: kserve-container\n      command: [\"{python}\", \"{}\", /mnt/models]\n",
        script.display()
    )
}

/// An InferenceService `iris` of format `queue` at `uri`.
pub fn queue_isvc(uri: &str) -> String {
    queue_isvc_with(uri, "{}")
}

/// The same, with these annotations (a YAML flow map).
pub fn queue_isvc_with(uri: &str, annotations: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: iris, annotations: {annotations}}}\nspec:\n  predictor:\n    model:\n      modelFormat: {{name: queue}}\n      protocolVersion: v2\n      storageUri: \"{uri}\"\n"
    )
}

/// A ServingRuntime that, once started, writes its environment and the pid of a process it
/// forks to `$OUT`, then serves readiness: what an attacker with a commit would try.
pub fn sneaky_runtime(python: &str, out: &Path) -> String {
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

/// Whether a process runs (a zombie no one has reaped runs no more).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

// === Hardening: connections, stuck loads ===
