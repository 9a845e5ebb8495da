//! `cargo xtask bench --scale N`: one commit of N InferenceServices of one small ONNX model,
//! served by the release binary on this machine.
//!
//! Prints: the time from the process's start until every revision is Ready; then, for each of
//! several commits changing one service's model, the time from `POST /api/v1/sync` until the
//! data plane answers from the new revision; the latency of `GET /api/v1/status` and `GET /metrics`
//! sampled every 250 ms throughout (median and worst); and the resident memory (now and peak).
//!
//! There is no peer here: Flux's published figure (1,000 Kustomizations in 4 min 16 s on a
//! 16-core runner) was measured elsewhere, so the figures are absolute, with the machine named.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

const TOKEN: &str = "scale-bench-token";
/// How many one-service changes are timed.
const CHANGES: usize = 7;

/// Wall time for the benchmark's own measurements (xtask is outside the clock rule's scope:
/// it times processes from the outside).
#[allow(clippy::disallowed_methods)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

#[allow(clippy::disallowed_methods)]
fn since(t: std::time::Instant) -> Duration {
    t.elapsed()
}

pub fn run(n: usize) -> anyhow::Result<()> {
    if n == 0 {
        bail!("--scale needs at least 1 service");
    }
    crate::run("cargo", &["build", "--release", "-p", "crossfade"])?;
    let bin = PathBuf::from("target/release/crossfade").canonicalize()?;
    let dir = std::env::temp_dir().join(format!("crossfade-scale-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = bench(&bin, &dir, n);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<()> {
    let v1 = publish(dir, "iris-logreg-v1")?;
    let v2 = publish(dir, "iris-logreg-v2")?;
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q"])?;
    for i in 0..n {
        std::fs::write(repo.join(format!("m{i:05}.yaml")), isvc(i, &v1))?;
    }
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", &format!("{n} services")])?;

    println!(
        "scale: {n} InferenceServices of one ONNX model (iris logistic regression), one commit"
    );
    let started = now();
    let mut up = Up::start(bin, &repo, &dir.join("data"))?;
    let probe = Probe::start(up.admin.clone(), n);
    let ready = all_ready(&mut up, &probe, started)?;
    let ready_after = ready.saturating_duration_since(started);
    let (rss, _) = memory(up.child.id())?;

    // Changes, one service each, one after the other: each a commit, `POST /api/v1/sync`, and
    // inference requests until the new revision answers.
    let mut served = Vec::new();
    let mut answered = Vec::new();
    for round in 0..CHANGES {
        let changed = (n / 2 + round * 7) % n;
        std::fs::write(repo.join(format!("m{changed:05}.yaml")), isvc(changed, &v2))?;
        git(&repo, &["commit", "-q", "-am", "one model changes"])?;
        let model = format!("m{changed:05}");
        let want = format!("{model}-predictor-00002");
        let synced = now();
        let (code, body) = http(&up.admin, "POST", "/api/v1/sync?wait=false", "")?;
        if code >= 300 {
            bail!("sync: {code} {body}");
        }
        answered.push(since(synced));
        loop {
            let (_, head) = infer(&up.data, &model)?;
            if head.contains(&want) {
                served.push(since(synced));
                break;
            }
            if since(synced) > Duration::from_secs(60) {
                bail!("{want} did not serve within a minute");
            }
        }
        // The probe keeps reading meanwhile, as a dashboard would.
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    let samples = probe.stop();
    let (rss_after, hwm) = memory(up.child.id())?;
    up.stop();

    // A restart on the same data directory: everything comes back from the store.
    let restarted = now();
    let mut up = Up::start(bin, &repo, &dir.join("data"))?;
    let probe = Probe::start(up.admin.clone(), n);
    let ready_again = all_ready(&mut up, &probe, restarted)?.saturating_duration_since(restarted);
    probe.stop();
    up.stop();

    let summary = |name: &str, v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            "{name:<26} {:>5} samples   median {:>8.1} ms   worst {:>8.1} ms",
            v.len(),
            v.get(v.len() / 2).copied().map_or(0.0, ms),
            v.last().copied().map_or(0.0, ms)
        )
    };
    println!();
    println!(
        "every revision Ready       {:>8.2} s after the process started",
        ready_after.as_secs_f64()
    );
    println!(
        "every revision Ready again {:>8.2} s after a restart",
        ready_again.as_secs_f64()
    );
    println!("{}", summary("change: sync answered", &answered));
    println!("{}", summary("change: new revision", &served));
    println!(
        "  each, in order (the first loads the new model; the others share it): {}",
        served
            .iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{}", summary("GET /api/v1/status", &samples.status));
    println!("{}", summary("GET /metrics", &samples.metrics));
    println!(
        "resident memory            {:>8.1} MiB when all Ready, {:.1} MiB after the changes, peak {:.1} MiB",
        rss as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}

/// Waits until the probe saw every revision Ready; returns when.
fn all_ready(
    up: &mut Up,
    probe: &Probe,
    started: std::time::Instant,
) -> anyhow::Result<std::time::Instant> {
    loop {
        if let Some(at) = *probe.all_ready.lock().expect("probe") {
            return Ok(at);
        }
        if since(started) > Duration::from_secs(600) {
            bail!("not every revision was Ready within 10 minutes");
        }
        if let Some(status) = up.child.try_wait()? {
            bail!("crossfade exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies a fixture model where a digest-pinned `file://` URI names it.
fn publish(dir: &Path, fixture: &str) -> anyhow::Result<String> {
    let src = PathBuf::from(format!("fixtures/models/{fixture}.onnx"));
    let out = Command::new("sha256sum").arg(&src).output()?;
    let text = String::from_utf8(out.stdout)?;
    let digest = text.split_whitespace().next().context("sha256sum")?;
    let target = dir
        .join("models")
        .join(fixture)
        .join(format!("sha256-{digest}"));
    std::fs::create_dir_all(&target)?;
    std::fs::copy(&src, target.join("model.onnx"))?;
    Ok(format!("file://{}/model.onnx", target.display()))
}

fn isvc(i: usize, uri: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: m{i:05}, namespace: default}}\nspec:\n  predictor:\n    model: {{modelFormat: {{name: onnx}}, storageUri: \"{uri}\"}}\n"
    )
}

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(repo)
        .status()?;
    if !status.success() {
        bail!("git {}", args.join(" "));
    }
    Ok(())
}

/// The release binary running `crossfade up` on the repository.
struct Up {
    child: Child,
    admin: String,
    data: String,
}

impl Up {
    fn start(bin: &Path, repo: &Path, data_dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("up")
            .arg("--repo")
            .arg(format!("file://{}", repo.display()))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--admin-listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--poll-interval", "1h"])
            .args(["--admin-token", TOKEN])
            .env("RUST_LOG", "warn,crossfade=info")
            .stderr(Stdio::piped())
            .spawn()
            .context("starting crossfade up")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let (admin, data) = loop {
            let Some(Ok(line)) = lines.next() else {
                bail!("crossfade up exited before it was up");
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "crossfade is up" {
                let field = |k: &str| v["fields"][k].as_str().unwrap_or_default().to_owned();
                break (field("admin"), field("listen"));
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, admin, data })
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Samples {
    status: Vec<Duration>,
    metrics: Vec<Duration>,
}

/// Reads status every 250 ms and metrics every second, timing each, and notes when every
/// revision is Ready.
struct Probe {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    all_ready: Arc<Mutex<Option<std::time::Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(admin: String, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let all_ready = Arc::new(Mutex::new(None));
        let (s, m, r) = (
            Arc::clone(&stop),
            Arc::clone(&samples),
            Arc::clone(&all_ready),
        );
        let thread = std::thread::spawn(move || {
            let mut round = 0u64;
            while !s.load(Ordering::Relaxed) {
                let t = now();
                if let Ok((200, body)) = http(&admin, "GET", "/api/v1/status", "") {
                    m.lock().expect("samples").status.push(since(t));
                    if r.lock().expect("ready").is_none() && ready_count(&body) >= n {
                        *r.lock().expect("ready") = Some(now());
                    }
                }
                // Metrics once a second (a scraper reads them every 15 s or so).
                if round.is_multiple_of(4) {
                    let t = now();
                    if let Ok((200, _)) = http(&admin, "GET", "/metrics", "") {
                        m.lock().expect("samples").metrics.push(since(t));
                    }
                }
                round += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self {
            stop,
            samples,
            all_ready,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().expect("samples"))
    }
}

/// Services whose every revision is Ready (retired ones aside).
fn ready_count(status: &str) -> usize {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(status) else {
        return 0;
    };
    v["services"].as_array().map_or(0, |services| {
        services
            .iter()
            // Every revision that is not retired is Ready, and there is one.
            .filter(|s| {
                s["revisions"].as_array().is_some_and(|r| {
                    r.iter().any(|r| r["state"] == "Ready")
                        && r.iter()
                            .all(|r| r["state"] == "Ready" || r["state"] == "Retired")
                })
            })
            .count()
    })
}

/// One HTTP/1.1 request with the admin token; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let (code, _, body) = request(
        addr,
        method,
        path,
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        body,
    )?;
    Ok((code, body))
}

fn infer(addr: &str, model: &str) -> anyhow::Result<(u16, String)> {
    let body = r#"{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}"#;
    let (code, head, _) = request(
        addr,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &[("Content-Type", "application/json")],
        body,
    )?;
    Ok((code, head))
}

fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, head.to_owned(), body.to_owned()))
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}
