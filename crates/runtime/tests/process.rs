//! Model server processes: substitutions, readiness, restart after a crash.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use runtime::{ProcessRuntime, ProcessSpec};

/// A tiny server in Python: answers `/v2/models/<name>/ready`, echoes what it was started with
/// at `/info`, and exits on `/crash`.
const SERVER: &str = r#"
import http.server, json, os, sys
name, port, model_dir = sys.argv[1], int(os.environ["PORT"]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == f"/v2/models/{name}/ready":
            self.send_response(200); self.end_headers(); return
        if self.path == "/info":
            body = json.dumps({"name": name, "dir": model_dir, "flag": os.environ.get("FLAG"), "cwd": os.getcwd()}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body); return
        if self.path == "/crash":
            os._exit(3)
        self.send_response(404); self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn start_substitute_probe_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let python = std::env::var("CROSSFADE_PYTHON").unwrap_or_else(|_| "python3".into());
    let spec = ProcessSpec {
        model_name: "iris".into(),
        command: vec![python, "-c".into(), SERVER.into()],
        args: vec!["{{.Name}}".into(), "/mnt/models".into()],
        env: vec![("FLAG".into(), "port-{{.Port}}".into())],
        model_dir: dir.path().to_owned(),
    };
    let rt = ProcessRuntime::start(spec, Duration::from_secs(30)).unwrap();
    let info = get(rt.port(), "/info").unwrap();
    assert!(info.contains(r#""name": "iris""#), "{info}");
    assert!(
        info.contains(&format!(r#""dir": "{}""#, dir.path().display())),
        "{info}"
    );
    assert!(
        info.contains(&format!(r#""flag": "port-{}""#, rt.port())),
        "{info}"
    );

    // It crashes: the supervisor starts it again and it becomes ready.
    let _ = get(rt.port(), "/crash");
    assert!(
        rt.wait_recovered(1, Duration::from_secs(30)),
        "not restarted"
    );
    assert_eq!(rt.restarts(), 1);
    assert!(
        get(rt.port(), "/info")
            .is_some_and(|i| i.starts_with("HTTP/1.0 200") || i.starts_with("HTTP/1.1 200"))
    );

    // Stopped: the port goes quiet and stays so.
    rt.stop();
    assert!(get(rt.port(), "/info").is_none());
}

#[test]
fn start_failures_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |command: Vec<&str>| ProcessSpec {
        model_name: "iris".into(),
        command: command.into_iter().map(str::to_owned).collect(),
        args: vec![],
        env: vec![],
        model_dir: dir.path().to_owned(),
    };
    let err = ProcessRuntime::start(spec(vec![]), Duration::from_secs(5))
        .err()
        .unwrap();
    assert!(err.to_string().contains("no command"), "{err}");
    let err = ProcessRuntime::start(spec(vec!["/no/such/server"]), Duration::from_secs(5))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("cannot start /no/such/server"),
        "{err}"
    );
    let err = ProcessRuntime::start(spec(vec!["sh", "-c", "exit 7"]), Duration::from_secs(5))
        .err()
        .unwrap();
    assert!(err.to_string().contains("exited"), "{err}");
}

/// A server that forks a long-lived grandchild and reports it with its environment.
const FORKING: &str = r#"
import http.server, json, os, subprocess, sys
name, port = sys.argv[1], int(os.environ["PORT"])
child = subprocess.Popen(["sleep", "1000"])
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == f"/v2/models/{name}/ready":
            self.send_response(200); self.end_headers(); return
        body = json.dumps({"env": sorted(os.environ), "grandchild": child.pid}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// Whether a process is gone (or a zombie no one has reaped yet: it runs no more).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_runtime_gets_a_scrubbed_environment_and_is_stopped_with_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    // The interpreter itself, not a shell wrapper (pyenv's shims set variables of their own).
    let python = std::env::var("CROSSFADE_PYTHON").unwrap_or_else(|_| "python3".into());
    let python = std::process::Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap().trim().to_owned();
    // The test's own environment has variables a runtime must not see (cargo's, at least).
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let spec = ProcessSpec {
        model_name: "iris".into(),
        command: vec![python, "-c".into(), FORKING.into()],
        args: vec!["{{.Name}}".into()],
        env: vec![("GIVEN".into(), "1".into())],
        model_dir: dir.path().to_owned(),
    };
    let rt = ProcessRuntime::start(spec, Duration::from_secs(30)).unwrap();
    let info = get(rt.port(), "/info").unwrap();
    let body: serde_json::Value =
        serde_json::from_str(info.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let own = [
        "GIVEN",
        "PORT",
        "HTTP_PORT",
        "MLSERVER_HTTP_PORT",
        "MLSERVER_GRPC_PORT",
        "MLSERVER_METRICS_PORT",
        "MLSERVER_MODEL_NAME",
    ];
    for name in body["env"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            runtime::INHERITED_ENV.contains(&name) || own.contains(&name),
            "the runtime saw {name}"
        );
    }
    assert!(body["env"].as_array().unwrap().iter().any(|n| n == "GIVEN"));
    let grandchild = body["grandchild"].as_u64().unwrap();
    assert!(!gone(grandchild));
    rt.stop();
    assert!(gone(grandchild), "the runtime's own child survived it");
}

fn job(
    script: &str,
    env: &[(&str, &str)],
    backoff_limit: u32,
    deadline: Duration,
) -> runtime::JobSpec {
    runtime::JobSpec {
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        backoff_limit,
        deadline,
    }
}

#[test]
fn a_job_passes_on_exit_zero_and_fails_after_its_retries() {
    let work = tempfile::tempdir().unwrap();
    let minute = Duration::from_secs(60);
    // Its own environment only: what it is given, nothing of the parent's (cargo sets
    // CARGO_MANIFEST_DIR for this test).
    let ok = runtime::run_job(
        &job(
            r#"test "$GIVEN" = yes && test -z "$CARGO_MANIFEST_DIR" && test -n "$PATH""#,
            &[("GIVEN", "yes")],
            0,
            minute,
        ),
        work.path(),
        &clock::Clock::system(),
    )
    .unwrap();
    assert!(
        ok.succeeded && ok.exit_code == Some(0) && ok.attempts == 1,
        "{ok:?}"
    );

    // Each attempt appends to a file; two retries make three attempts, then the failure.
    let tally = work.path().join("tally");
    let script = format!("echo x >> {}; exit 3", tally.display());
    let failed = runtime::run_job(
        &job(&script, &[], 2, minute),
        work.path(),
        &clock::Clock::system(),
    )
    .unwrap();
    assert_eq!(
        (failed.succeeded, failed.exit_code, failed.attempts),
        (false, Some(3), 3)
    );
    assert_eq!(std::fs::read_to_string(&tally).unwrap().lines().count(), 3);
    // Working directories are removed.
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "tally")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_job_past_its_deadline_is_stopped_with_what_it_started() {
    let work = tempfile::tempdir().unwrap();
    let pid_file = work.path().join("child.pid");
    // A child of the job's shell, in its process group: stopped too.
    let script = format!("sleep 600 & echo $! > {}; wait", pid_file.display());
    let out = runtime::run_job(
        &job(&script, &[], 5, Duration::from_millis(300)),
        work.path(),
        &clock::Clock::system(),
    )
    .unwrap();
    assert!(
        out.timed_out && !out.succeeded && out.attempts == 1,
        "{out:?}"
    );
    let pid: u64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SIGKILL is delivered when the process next runs: it is gone or a zombie of init by now,
    // never running.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = state
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with(['R', 'S', 'D']));
    assert!(!running, "the job's child {pid} still runs: {state}");
}
