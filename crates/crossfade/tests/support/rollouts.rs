//! Helpers of the rollout tests: models, Rollout manifests, load, Prometheus, a notification
//! receiver and the dashboard in a browser.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use test_support::GitRepo;

/// Fixture models published under their digests (`publish_model`), kept while it lives.
pub struct Models {
    pub _store: tempfile::TempDir,
    pub uris: Vec<String>,
}

impl Models {
    pub fn publish(names: &[&str]) -> Self {
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

    pub fn uris<const N: usize>(&self) -> [String; N] {
        self.uris.clone().try_into().unwrap()
    }
}

/// Points `iris` at `uri` and commits it.
pub fn commit_model(repo: &GitRepo, uri: &str, message: &str) {
    repo.write("iris.yaml", &isvc_with("iris", uri, ""));
    repo.commit(message);
}

/// A Rollout of `iris` with an analysis step over `template`, and that template. The last step
/// waits for `promote`.
pub fn rollout_yaml(template: &str) -> String {
    rollout_yaml_ending(template, "{}")
}

/// The same, with the last pause given (`{duration: 1s}`: promoted by itself).
pub fn rollout_yaml_ending(template: &str, last_pause: &str) -> String {
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

/// A Rollout of `iris` whose canary is judged over `template` before it gets any live
/// traffic (its first step is the analysis, at 0%), again at 20%, then promoted by itself.
pub fn judged_before_traffic_yaml(template: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: iris}}
spec:
  workloadRef: {{apiVersion: serving.kserve.io/v1beta1, kind: InferenceService, name: iris}}
  strategy:
    canary:
      steps:
        - analysis: &judged
            templates: [{{templateName: health}}]
            args: [{{name: canary, valueFrom: {{podTemplateHashValue: Latest}}}}]
        - setWeight: 20
        - analysis: *judged
        - setWeight: 50
        - pause: {{duration: 1s}}
---
{template}"#
    )
}

/// The Rollout and templates README.md recommends, as written there, with every `interval`
/// made `interval` (the README's 10 s makes a rollout take minutes).
pub fn readme_rollout(interval: &str) -> String {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split_once("```").map(|(yaml, _)| yaml))
        .find(|yaml| yaml.contains("kind: Rollout") && yaml.contains("name: canary-vs-stable"))
        .expect("README.md shows the Rollout to start from");
    block.replace("interval: 10s", &format!("interval: {interval}"))
}

/// Six iris flowers, two of each species (the last two with petals wider than 1.6), in turn.
pub fn six_flowers(i: u64) -> String {
    const FLOWERS: [&str; 6] = [
        "5.1, 3.5, 1.4, 0.2",
        "6.4, 3.2, 4.5, 1.5",
        "6.3, 3.3, 6.0, 2.5",
        "4.9, 3.0, 1.4, 0.2",
        "5.9, 3.0, 4.2, 1.5",
        "6.5, 3.0, 5.8, 2.2",
    ];
    format!(
        r#"{{"inputs": [{{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [{}]}}]}}"#,
        FLOWERS[(i % 6) as usize]
    )
}

/// Half the flowers have a sepal length that `iris-fails-some` cannot look up.
pub fn mixed_flowers(i: u64) -> String {
    let sepal = if i.is_multiple_of(2) { 5.1 } else { 0.5 };
    format!(
        r#"{{"inputs": [{{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [{sepal}, 3.5, 1.4, 0.2]}}]}}"#
    )
}

/// The built-in provider: the canary's success rate over the last 3 s, three times.
pub const BUILTIN_TEMPLATE: &str = r#"apiVersion: argoproj.io/v1alpha1
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

/// The judge: the canary's error rate against the stable revision's over the run, with no
/// threshold, looked at every second; the last look decides.
pub const JUDGE_TEMPLATE: &str = r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: health}
spec:
  args: [{name: canary}]
  metrics:
    - name: errors-vs-stable
      initialDelay: 1s
      interval: 1s
      count: 4
      successCondition: result.verdict == "Pass"
      failureCondition: result.verdict == "Fail"
      provider:
        crossfade: {metric: error-rate, compare: stable, minSample: 20}
"#;

/// The judge on latency: the canary's median against 1.2x the stable revision's, no
/// threshold in seconds.
pub const LATENCY_JUDGE_TEMPLATE: &str = r#"apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: health}
spec:
  args: [{name: canary}]
  metrics:
    - name: latency-vs-stable
      initialDelay: 1s
      interval: 1s
      count: 4
      successCondition: result.verdict == "Pass"
      failureCondition: result.verdict == "Fail"
      provider:
        crossfade: {metric: latency, quantile: 0.5, compare: stable, minSample: 20}
"#;

/// Requests from a thread until stopped: half of them flowers whose sepal length the
/// `iris-fails-some` model cannot look up (it answers 500 for those), half it can.
pub struct Load {
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub thread: std::thread::JoinHandle<std::collections::BTreeMap<(String, u16), usize>>,
}

impl Load {
    pub fn start(base: &str) -> Self {
        Self::sending(base, mixed_flowers)
    }

    /// Sends `body(i)` as the i-th request, about `per_second` requests a second (a pause of
    /// 1 / per_second after each answer).
    pub fn at_rate(base: &str, per_second: u32, body: fn(u64) -> String) -> Self {
        Self::paced(
            base,
            Some(std::time::Duration::from_secs(1) / per_second),
            body,
        )
    }

    /// Sends `body(i)` as the i-th request, each as soon as the one before was answered.
    pub fn sending(base: &str, body: fn(u64) -> String) -> Self {
        Self::paced(base, None, body)
    }

    fn paced(base: &str, pause: Option<std::time::Duration>, body: fn(u64) -> String) -> Self {
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
                if let Some(pause) = pause {
                    // Pacing the load, not waiting for anything.
                    std::thread::sleep(pause);
                }
            }
            seen
        });
        Self { stop, thread }
    }

    pub fn finish(self) -> std::collections::BTreeMap<(String, u16), usize> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Checks that the rollout `r` aborted its canary and gave `stable` all the traffic back;
/// returns the analysis run that failed.
pub fn aborted_back_to(r: &Value, stable: &str) -> Value {
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

/// The first measurement of `run` that failed.
pub fn failed_measurement(run: &Value) -> Value {
    run["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["phase"] == "Failed")
        .unwrap_or_else(|| panic!("{run:#}"))
        .clone()
}

impl Up {
    pub fn rollout(&self) -> Value {
        serde_json::from_str(&http_get(&self.server, "/api/v1/rollouts/iris")).unwrap()
    }

    /// Polls the rollout until `done` holds (30 s at most); returns it, with the largest
    /// weight `canary` had on the way.
    pub fn wait_rollout(&self, canary: &str, done: impl Fn(&Value) -> bool) -> (Value, u64) {
        self.wait_rollout_for(30, canary, done)
    }

    /// [`Up::wait_rollout`], giving up after `seconds`.
    pub fn wait_rollout_for(
        &self,
        seconds: u64,
        canary: &str,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, u64) {
        let mut max = 0;
        for _ in 0..seconds * 10 {
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

/// A Prometheus server on port 0 scraping `target` every second, stopped when dropped.
pub struct Prometheus {
    pub child: Child,
    pub url: String,
    pub _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(target: &str) -> Self {
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
pub fn prometheus_template(address: &str) -> String {
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

/// A notification receiver on port 0: keeps every JSON body POSTed to it, answering 503 to the
/// very first request (the sender must retry) and 200 to the rest.
pub struct Receiver {
    pub url: String,
    pub events: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Receiver {
    pub fn start() -> Self {
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

    pub fn count(&self, event: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == event)
            .count()
    }

    /// Waits (30 s at most) until `done` holds for the counts.
    pub fn wait(&self, done: impl Fn(&Self) -> bool) {
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

/// A screenshot of `url` by headless Chromium, once the page's scripts have run.
pub fn screenshot(url: &str, path: &Path) {
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
pub fn dom(url: &str) -> String {
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
pub const BLUE: [u8; 3] = [0x3b, 0x7d, 0xdd];
pub const GREEN: [u8; 3] = [0x1f, 0x9d, 0x55];

/// The first traffic bar in a screenshot (the first row of pixels with more than 400 in the
/// revision colours): how many of its pixels are blue and green.
pub fn first_bar(path: &Path) -> (usize, usize) {
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
