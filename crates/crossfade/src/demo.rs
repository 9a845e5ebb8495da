//! `crossfade demo`: the whole idea in one command, with no network and nothing to prepare.
//!
//! It makes a Git repository with an InferenceService, a Rollout and an AnalysisTemplate that
//! uses the built-in provider, writes the bundled iris models under their digests, starts
//! crossfade on it, sends steady traffic, then commits a good new model (which earns its
//! traffic step by step and becomes stable) and a bad one (which fails on some inputs, and is
//! caught by the analysis and rolled back), explaining each step as it happens.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use engine::rollout::{RolloutPhase, RolloutStatus};
use indicatif::{ProgressBar, ProgressStyle};

use crate::controller::{Application, Controller, Settings};
use crate::{datadir, up};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the repository, models and database here (default: a temporary directory, removed
    /// at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stay up after the story, serving, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

const MODELS: [(&str, &[u8]); 3] = [
    (
        "iris-logreg-v1",
        include_bytes!("../../../fixtures/models/iris-logreg-v1.onnx"),
    ),
    (
        "iris-logreg-v2",
        include_bytes!("../../../fixtures/models/iris-logreg-v2.onnx"),
    ),
    (
        "iris-fails-some",
        include_bytes!("../../../fixtures/models/iris-fails-some.onnx"),
    ),
];

const ROLLOUT: &str = r#"# Each new model earns its traffic: 20% first, judged against the stable revision by
# crossfade's own measurements (no threshold to guess), then 50%, then all of it.
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: iris, namespace: demo}
spec:
  workloadRef: {apiVersion: serving.kserve.io/v1beta1, kind: InferenceService, name: iris}
  strategy:
    canary:
      steps:
        - setWeight: 20
        - pause: {duration: 4s}
        - analysis:
            templates: [{templateName: errors-vs-stable}]
        - setWeight: 50
        - pause: {duration: 4s}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: errors-vs-stable, namespace: demo}
spec:
  metrics:
    - name: errors-vs-stable       # the canary's 5xx rate at most 1.5x stable's
      initialDelay: 2s
      interval: 2s
      count: 3
      successCondition: result.verdict == "Pass"
      failureCondition: result.verdict == "Fail"
      provider:
        crossfade: {metric: error-rate, compare: stable, minSample: 40}
"#;

fn isvc(uri: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: iris, namespace: demo}}\nspec:\n  predictor:\n    model:\n      modelFormat: {{name: onnx}}\n      storageUri: \"{uri}\"\n"
    )
}

/// Removes a temporary directory when the demo ends, however it ends.
struct TempDir(Option<PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if Command::new("git").arg("--version").output().is_err() {
        bail!("the demo keeps its manifests in a Git repository and needs `git`: install git");
    }
    let (dir, _cleanup) = match &args.data_dir {
        Some(d) => (d.clone(), TempDir(None)),
        None => {
            let d = std::env::temp_dir().join(format!("crossfade-demo-{}", std::process::id()));
            (d.clone(), TempDir(Some(d)))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let repo = dir.join("repo");
    if repo.exists() {
        bail!(
            "{} already holds a demo repository: give another --data-dir",
            repo.display()
        );
    }

    println!("crossfade demo: GitOps and progressive delivery for a model, on this machine.\n");
    let mut uris = Vec::new();
    for (name, bytes) in MODELS {
        uris.push(publish(&dir.join("models"), name, bytes)?);
    }
    std::fs::create_dir_all(&repo)?;
    git(&repo, &["init", "-q"])?;
    std::fs::write(repo.join("iris.yaml"), isvc(&uris[0]))?;
    std::fs::write(repo.join("rollout.yaml"), ROLLOUT)?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "iris v1 with a rollout"])?;
    println!(
        "1. A Git repository at {} holds an InferenceService `iris`",
        repo.display()
    );
    println!(
        "   (a logistic regression, pinned by its sha256), a Rollout and an AnalysisTemplate."
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(story(&dir, &repo, &uris, args.keep_running))?;
    Ok(ExitCode::SUCCESS)
}

/// Writes a model under `<root>/<name>/sha256-<digest>/model.onnx`; returns its pinned URI.
fn publish(root: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<String> {
    let staging = root.join(format!("{name}.onnx"));
    std::fs::create_dir_all(root)?;
    std::fs::write(&staging, bytes)?;
    let digest = artifact::digest_path(&staging)?;
    let dir = root.join(name).join(format!("sha256-{digest}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::rename(&staging, dir.join("model.onnx"))?;
    Ok(format!("file://{}/model.onnx", dir.display()))
}

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=crossfade demo",
            "-c",
            "user.email=demo@localhost",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(repo)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn story(dir: &Path, repo: &Path, uris: &[String], keep_running: bool) -> anyhow::Result<()> {
    let store = store::Store::open(dir)?;
    let settings = Settings {
        data_dir: dir.to_owned(),
        poll_interval: Duration::from_secs(3600),
        fetch_timeout: Duration::from_secs(30),
        trust: None,
        require_digest: true,
        admin_token: datadir::admin_token(dir, None)?,
        webhook_secret: None,
        notify: Vec::new(),
        gateway: gateway::Gateway::new(gateway::Config::default()),
        artifacts: artifact::Cache::new(&dir.join("artifacts"), 1 << 30, Duration::from_secs(30))?,
        admin_limits: gateway::Limits::default(),
        upstream: gateway::Timeouts::default(),
        runtime_commands: crate::runtime_policy::RuntimeCommands::Refused,
        runtimes_dir: crate::builtin::default_dir(dir),
        secrets_dir: None,
        load_timeout: Duration::from_secs(300),
        admin_hosts: Vec::new(),
        clock: clock::Clock::system(),
    };
    let app = Application {
        name: "demo".into(),
        repo: repo.display().to_string(),
        revision: "HEAD".into(),
        path: ".".into(),
        automated: true,
        policy: engine::SyncPolicy::default(),
    };
    let local = "127.0.0.1:0".parse()?;
    let running = up::start(store, settings, vec![app], local, local).await?;
    let c = Arc::clone(&running.controller);
    c.clone().sync_all(api::Trigger::Manual).await;
    println!("2. crossfade synced it: iris-predictor-00001 serves all traffic.");
    println!("   Dashboard:   http://{}/", running.admin);
    println!(
        "   Inference:   http://{}/v2/models/iris/infer",
        running.data
    );
    println!(
        "   Control API: http://{}/api/v1/rollouts/iris  (or: crossfade rollout get iris --server http://{})",
        running.admin, running.admin
    );

    let traffic = Traffic::start(running.data.to_string());
    println!("3. Steady traffic starts: real flowers, and some odd ones (a sepal of 0.5 cm).\n");

    println!(
        "4. A better model is committed. It gets 20% of the traffic, is judged against the stable one, then 50%, then all."
    );
    commit(repo, &uris[1], "iris v2: retrained")?;
    c.clone().sync_all(api::Trigger::Manual).await;
    follow(&c, "iris-predictor-00002", |s| {
        s.stable.as_deref() == Some("iris-predictor-00002") && s.phase == RolloutPhase::Healthy
    })
    .await?;
    println!("   iris-predictor-00002 passed every step and now serves all traffic.\n");

    println!("5. A bad model is committed: it fails on ordinary flowers (sepals of 3 cm or more).");
    commit(repo, &uris[2], "iris v3: broken")?;
    c.clone().sync_all(api::Trigger::Manual).await;
    let status = follow(&c, "iris-predictor-00003", |s| {
        s.phase == RolloutPhase::Degraded
    })
    .await?;
    println!("   The analysis caught it at 20% and rolled it back:");
    if let Some(a) = &status.aborted {
        println!("   {}", a.reason);
    }
    println!(
        "   iris-predictor-00002 serves all traffic again; v3 is not retried until Git changes.\n"
    );

    let (ok, failed) = traffic.stop().await;
    println!(
        "6. {ok} requests answered, {failed} failed, all of the failures from the bad canary while it had its 20%."
    );
    println!("   Every step is in the audit log (GET /api/v1/audit) and the sync history.");
    if keep_running {
        println!("\nStill serving (--keep-running). Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    running.stop().await
}

fn commit(repo: &Path, uri: &str, message: &str) -> anyhow::Result<()> {
    std::fs::write(repo.join("iris.yaml"), isvc(uri))?;
    git(repo, &["commit", "-q", "-am", message])
}

/// Shows the rollout of `canary` as it goes, until `done`.
async fn follow(
    c: &Controller,
    canary: &str,
    done: impl Fn(&RolloutStatus) -> bool,
) -> anyhow::Result<RolloutStatus> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("   {bar:30.cyan/blue} {pos:>3}% to {prefix}  {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(canary.to_owned());
    let mut last = String::new();
    for _ in 0..600 {
        let status = c
            .rollouts()
            .into_iter()
            .map(|(_, s)| s)
            .next()
            .context("the demo's rollout is gone")?;
        let weight = status
            .weights()
            .iter()
            .find(|(r, _)| r == canary)
            .map_or(0, |(_, p)| *p);
        bar.set_position(u64::from(weight));
        if status.message != last {
            let line = format!("   - {}", status.message);
            // Without a terminal the bar is hidden, and so would be what it prints.
            if bar.is_hidden() {
                println!("{line}");
            } else {
                bar.println(line);
            }
            last = status.message.clone();
        }
        bar.set_message(status.phase.as_str());
        if done(&status) {
            bar.finish_and_clear();
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.abandon();
    bail!("the rollout did not finish in two minutes")
}

/// Requests sent in the background, counted.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, o, f) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let url = Arc::new(format!("http://{addr}/v2/models/iris/infer"));
            // About 50 requests a second, on a schedule rather than after each answer, so that
            // a busy machine (slower answers) still gives every measurement its data; at most
            // a few in flight.
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let in_flight = Arc::new(tokio::sync::Semaphore::new(8));
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                    break;
                };
                let sepal = if i.is_multiple_of(3) {
                    0.5
                } else {
                    5.1 + (i % 20) as f64 / 10.0
                };
                let body = format!(
                    r#"{{"inputs": [{{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [{sepal}, 3.2, 1.5, 0.3]}}]}}"#
                );
                let (client, url, o, f) = (
                    client.clone(),
                    Arc::clone(&url),
                    Arc::clone(&o),
                    Arc::clone(&f),
                );
                tokio::spawn(async move {
                    match client.post(url.as_str()).body(body).send().await {
                        Ok(r) if r.status().is_success() => o.fetch_add(1, Ordering::Relaxed),
                        _ => f.fetch_add(1, Ordering::Relaxed),
                    };
                    drop(permit);
                });
                i += 1;
            }
            // The last ones in flight finish before the counts are read.
            let _ = in_flight.acquire_many(8).await;
        });
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
