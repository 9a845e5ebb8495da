//! Model servers run as local child processes, from a ServingRuntime's container: started with
//! a free port, probed for readiness before they get traffic, restarted with backoff when they
//! crash, and stopped when the last reference goes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::Error;

/// What to run: `containers[0]` of a ServingRuntime, for one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// `{{.Name}}`: the model name the server must serve (the InferenceService's name).
    pub model_name: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Stands in for `/mnt/models`.
    pub model_dir: PathBuf,
}

/// A running model server.
pub struct ProcessRuntime {
    spec: ProcessSpec,
    port: u16,
    extra_ports: [u16; 2],
    child: Mutex<Option<Child>>,
    restarts: AtomicU32,
    stopping: AtomicBool,
    /// Restarts that came back ready, with a condition variable to wait on.
    recovered: (Mutex<u32>, Condvar),
}

// === impl ProcessRuntime ===

impl ProcessRuntime {
    /// Starts the server and waits until `GET /v2/models/<name>/ready` answers 200, at most
    /// `ready_timeout`. Blocking.
    ///
    /// The command line and environment get `{{.Name}}` and `{{.Port}}` substituted and
    /// `/mnt/models` replaced by the model directory; the port is also in `PORT`, `HTTP_PORT`
    /// and `MLSERVER_HTTP_PORT` (with free ports for MLServer's gRPC and metrics listeners).
    pub fn start(spec: ProcessSpec, ready_timeout: Duration) -> Result<Arc<Self>, Error> {
        if spec.command.is_empty() {
            return Err(Error::Process(
                "the ServingRuntime's container has no command: crossfade starts a local process, not an image".into(),
            ));
        }
        let runtime = Arc::new(Self {
            port: free_port()?,
            extra_ports: [free_port()?, free_port()?],
            spec,
            child: Mutex::new(None),
            restarts: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            recovered: (Mutex::new(0), Condvar::new()),
        });
        runtime.spawn()?;
        if let Err(e) = runtime.wait_ready(ready_timeout) {
            runtime.stop();
            return Err(e);
        }
        let watcher = Arc::downgrade(&runtime);
        std::thread::Builder::new()
            .name(format!("runtime-{}", runtime.spec.model_name))
            .spawn(move || supervise(watcher))
            .map_err(|e| Error::Process(e.to_string()))?;
        Ok(runtime)
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many times the server was restarted after exiting on its own.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Waits until the server has come back ready after `n` restarts in all; false if that did
    /// not happen within `timeout`.
    pub fn wait_recovered(&self, n: u32, timeout: Duration) -> bool {
        let (lock, cvar) = &self.recovered;
        let guard = lock.lock().expect("recovered");
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |count| *count < n)
            .expect("recovered");
        *guard >= n
    }

    /// Kills the server and every process it started (its whole process group), and keeps
    /// it down.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(mut child) = self.child.lock().expect("child").take() {
            kill_group(&mut child);
        }
    }

    fn substitute(&self, s: &str) -> String {
        s.replace("{{.Name}}", &self.spec.model_name)
            .replace("{{.Port}}", &self.port.to_string())
            .replace("/mnt/models", &self.spec.model_dir.display().to_string())
    }

    fn spawn(&self) -> Result<(), Error> {
        let argv: Vec<String> = self
            .spec
            .command
            .iter()
            .chain(&self.spec.args)
            .map(|a| self.substitute(a))
            .collect();
        let port = self.port.to_string();
        let mut cmd = sandboxed(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&self.spec.model_dir)
            .env("PORT", &port)
            .env("HTTP_PORT", &port)
            .env("MLSERVER_HTTP_PORT", &port)
            .env("MLSERVER_GRPC_PORT", self.extra_ports[0].to_string())
            .env("MLSERVER_METRICS_PORT", self.extra_ports[1].to_string())
            .env("MLSERVER_MODEL_NAME", &self.spec.model_name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &self.spec.env {
            cmd.env(k, self.substitute(v));
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Process(format!("cannot start {}: {e}", argv[0])))?;
        *self.child.lock().expect("child") = Some(child);
        Ok(())
    }

    /// Polls readiness until it answers, the process exits, or the time is up.
    fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let step = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        loop {
            if let Some(child) = self.child.lock().expect("child").as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::Process(format!(
                    "the model server exited ({status}) before it was ready"
                )));
            }
            if ready(self.port, &self.spec.model_name) {
                return Ok(());
            }
            if waited >= timeout {
                return Err(Error::Process(format!(
                    "the model server was not ready after {timeout:?} (GET /v2/models/{}/ready on port {})",
                    self.spec.model_name, self.port
                )));
            }
            // Readiness is polled: the server gives no other signal.
            std::thread::sleep(step);
            waited += step;
        }
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Restarts the server when it exits on its own, with backoff (0.5 s doubling to 30 s).
fn supervise(runtime: std::sync::Weak<ProcessRuntime>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let Some(rt) = runtime.upgrade() else { return };
        if rt.stopping.load(Ordering::Acquire) {
            return;
        }
        let exited = rt
            .child
            .lock()
            .expect("child")
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited && !rt.stopping.load(Ordering::Acquire) {
            rt.restarts.fetch_add(1, Ordering::Relaxed);
            drop(rt);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
            let Some(rt) = runtime.upgrade() else { return };
            if rt.stopping.load(Ordering::Acquire) {
                return;
            }
            if rt.spawn().is_ok() && rt.wait_ready(Duration::from_secs(120)).is_ok() {
                backoff = Duration::from_millis(500);
                let (lock, cvar) = &rt.recovered;
                *lock.lock().expect("recovered") += 1;
                cvar.notify_all();
            }
            continue;
        }
        drop(rt);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a runtime inherits of crossfade's environment: enough to find programs and run them
/// in the machine's locale, nothing else.
pub const INHERITED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR",
];

/// `program` with a scrubbed environment (what a program needs to run, [`INHERITED_ENV`];
/// never crossfade's tokens, webhook secrets or cloud credentials; the caller adds its own
/// `env`) in a process group of its own, so that stopping it stops what it started too.
fn sandboxed(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Stops a child's process group: SIGTERM, up to 5 s to exit, then SIGKILL to whatever of the
/// group is left.
fn kill_group(child: &mut Child) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let group = Pid::from_child(child);
    let _ = kill_process_group(group, Signal::TERM);
    let mut waited = Duration::ZERO;
    while waited < Duration::from_secs(5) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        // The child gives no other signal of its exit.
        std::thread::sleep(Duration::from_millis(20));
        waited += Duration::from_millis(20);
    }
    // The leader may be gone while what it started is not: the group goes either way.
    let _ = kill_process_group(group, Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
    // A signal is delivered when its process next runs: return once nothing of the group
    // runs any more (at most 2 s), so that "stopped" means stopped.
    let mut waited = Duration::ZERO;
    while group_runs(group.as_raw_nonzero().get()) && waited < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
        waited += Duration::from_millis(10);
    }
}

/// Whether a process of process group `pgid` still runs (zombies, dead but not yet reaped, do
/// not count), from `/proc`.
fn group_runs(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        matches!(fields.as_slice(), [state, _ppid, pgrp, ..] if *state != "Z" && *state != "X" && pgrp.parse() == Ok(pgid))
    })
}

fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Process(format!("no free port: {e}")))
}

/// `GET /v2/models/<name>/ready` answers 200.
fn ready(port: u16, model: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "GET /v2/models/{model}/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // "HTTP/1.x 200": servers answer in 1.0 or 1.1.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// A check to run once, as an analysis `job`: a command line and its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The program, then its arguments.
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Retries after a failure.
    pub backoff_limit: u32,
    /// The longest all attempts together may take.
    pub deadline: Duration,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobOutcome {
    /// The last attempt's exit code (`None`: killed by a signal, or at the deadline).
    pub exit_code: Option<i32>,
    pub succeeded: bool,
    /// Attempts made.
    pub attempts: u32,
    /// It was stopped at the deadline.
    pub timed_out: bool,
}

/// Runs `spec` as a ServingRuntime's command runs: a scrubbed environment (`INHERITED_ENV` and
/// the job's `env`), its own process group (stopped whole at the deadline), no input, output
/// discarded, in a fresh working directory under `work`, removed afterwards. A failed attempt
/// is retried up to `backoff_limit` times, as a Kubernetes Job is. Blocking.
pub fn run_job(
    spec: &JobSpec,
    work: &std::path::Path,
    clock: &clock::Clock,
) -> Result<JobOutcome, Error> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(Error::Process("the job has no command".into()));
    };
    let started = clock.instant();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let dir = tempfile_dir(work)?;
        let mut cmd = sandboxed(program);
        cmd.args(args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| Error::Process(format!("cannot start {program}: {e}")));
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let left = spec.deadline.saturating_sub(clock.since(started));
        let (status, timed_out) = wait_until(child, left);
        let _ = std::fs::remove_dir_all(&dir);
        let succeeded = status.is_some_and(|s| s.success());
        let outcome = JobOutcome {
            exit_code: status.and_then(|s| s.code()),
            succeeded,
            attempts,
            timed_out,
        };
        if succeeded || timed_out || attempts > spec.backoff_limit {
            return Ok(outcome);
        }
    }
}

/// Waits for `child` at most `left`; past it, stops its whole group. The exit status, if it
/// exited by itself, and whether the time ran out.
fn wait_until(mut child: Child, left: Duration) -> (Option<std::process::ExitStatus>, bool) {
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        (child, status)
    });
    match rx.recv_timeout(left) {
        Ok(()) => {
            let (_, status) = waiter.join().expect("the waiting thread");
            (status.ok(), false)
        }
        Err(_) => {
            // Past the deadline: the whole group, and back once none of it runs (at most 2 s).
            if let Some(group) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = waiter.join();
            let mut waited = Duration::ZERO;
            while group_runs(pid as i32) && waited < Duration::from_secs(2) {
                // A signal takes effect when its process next runs; nothing else tells.
                std::thread::sleep(Duration::from_millis(10));
                waited += Duration::from_millis(10);
            }
            (None, true)
        }
    }
}

/// A fresh directory under `work` for one attempt.
fn tempfile_dir(work: &std::path::Path) -> Result<PathBuf, Error> {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(work)
        .map_err(|e| Error::Process(format!("{}: {e}", work.display())))?;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = work.join(format!("job-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::Process(format!("{}: {e}", dir.display()))),
        }
    }
}
