//! `cargo xtask bench [--peers DIR] [--duration SECS] [--passes N]`: the gateway against the
//! peers a user would otherwise pick, in the same run, on this machine. `cargo xtask bench
//! --scale N`: the controller with N services instead (see `scale.rs`); `--trees`: the native
//! tree ensembles against onnxruntime (see `trees.rs`).
//!
//! Servers are pinned to core 0 and the load generator (wrk) to core 1. Each configuration
//! runs `passes` times (nginx and the gateway's proxy in turns); the median is reported, with the CPU time the server spent per request
//! (utime + stime from /proc over the run, divided by the requests served), which is steadier
//! than requests per second on a noisy machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

struct Options {
    peers: PathBuf,
    duration: u32,
    passes: usize,
}

/// One measured run.
#[derive(Clone, Copy, Debug)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut opts = Options {
        peers: PathBuf::from("../shared/peers"),
        duration: 5,
        passes: 5,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().context("missing value");
        match a.as_str() {
            "--peers" => opts.peers = PathBuf::from(value()?),
            "--duration" => opts.duration = value()?.parse()?,
            "--passes" => opts.passes = value()?.parse()?,
            "--scale" => return crate::scale::run(value()?.parse()?),
            "--trees" => return crate::trees::run(2.0),
            other => bail!("unknown option {other}"),
        }
    }
    if opts.passes == 0 || opts.duration == 0 {
        bail!("--passes and --duration must be at least 1");
    }
    for tool in ["nginx", "wrk", "taskset"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("{tool} is missing: apt-get install nginx wrk util-linux");
        }
    }
    let peers = opts.peers.canonicalize().with_context(|| {
        format!(
            "the peer configurations are not at {}",
            opts.peers.display()
        )
    })?;
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "gateway",
            "--features",
            "bench",
            "--bin",
            "gateway-bench",
        ],
    )?;
    let bench_bin = PathBuf::from("target/release/gateway-bench").canonicalize()?;
    let model = PathBuf::from("fixtures/models/iris-logreg-v1.onnx").canonicalize()?;
    let rundir = std::env::temp_dir().join(format!("crossfade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&rundir)?;
    let v1_script = peers.join("http_infer.lua");
    let v2_script = rundir.join("v2.lua");
    std::fs::write(
        &v2_script,
        "wrk.method = \"POST\"\nwrk.body = '{\"inputs\":[{\"name\":\"X\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[5.1,3.5,1.4,0.2]}]}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;

    // The two trivial upstreams, then each proxy in front of them.
    let _upstream = Server::nginx(&peers.join("upstream-nginx.conf"), &rundir, "upstream")?;
    let mut rows = Vec::new();
    // nginx and the gateway in front of the same upstreams, measured in turns so that a noisy
    // neighbour hits both alike; the ratio is the median of the ratios of each turn.
    let proxy_ratio = {
        let nginx = Server::nginx(&peers.join("proxy-nginx.conf"), &rundir, "proxy")?;
        wait_for_port(8081)?;
        let gw = Server::spawn(
            Command::new("taskset")
                .args(["-c", "0"])
                .arg(&bench_bin)
                .args([
                    "proxy",
                    "127.0.0.1:18082",
                    "127.0.0.1:9001",
                    "127.0.0.1:9002",
                ]),
        )?;
        wait_for_port(18082)?;
        let nginx_url = "http://127.0.0.1:8081/v1/models/iris:predict";
        let gw_url = "http://127.0.0.1:18082/v1/models/iris:predict";
        wrk(nginx_url, &v1_script, 2)?;
        wrk(gw_url, &v1_script, 2)?;
        let mut nginx_runs = Vec::new();
        let mut gw_runs = Vec::new();
        for _ in 0..opts.passes {
            nginx_runs.push(pass(&opts, nginx.pid, nginx_url, &v1_script)?);
            gw_runs.push(pass(&opts, gw.pid, gw_url, &v1_script)?);
        }
        let ratios = |f: fn(&Run) -> f64| {
            median_f64(
                nginx_runs
                    .iter()
                    .zip(&gw_runs)
                    .map(|(n, c)| f(c) / f(n))
                    .collect(),
            )
        };
        let ratio = (ratios(|r| r.rps), ratios(|r| r.cpu_us));
        rows.push(("nginx, 90/10 proxy", median(nginx_runs, nginx_url)));
        rows.push(("crossfade gateway, 90/10 proxy", median(gw_runs, gw_url)));
        ratio
    };
    {
        let gw = Server::spawn(
            Command::new("taskset")
                .args(["-c", "0"])
                .arg(&bench_bin)
                .args(["onnx", "127.0.0.1:18083"])
                .arg(&model),
        )?;
        wait_for_port(18083)?;
        let v1 = measure(
            &opts,
            gw.pid,
            "http://127.0.0.1:18083/v1/models/iris:predict",
            &v1_script,
        )?;
        rows.push(("crossfade, iris in-process, V1 :predict", v1));
        let v2 = measure(
            &opts,
            gw.pid,
            "http://127.0.0.1:18083/v2/models/iris/infer",
            &v2_script,
        )?;
        rows.push(("crossfade, iris in-process, V2 infer", v2));
    }
    if let Some(python) = python_with_fastapi() {
        // pyserve.py takes the arg-max of the model's first output: give it the same model with
        // the probabilities listed first.
        let reordered = rundir.join("iris-probabilities-first.onnx");
        crate::run(
            &python,
            &[
                "-c",
                "import onnx, sys; m = onnx.load(sys.argv[1]); o = list(m.graph.output); del m.graph.output[:]; m.graph.output.extend(o[::-1]); onnx.save(m, sys.argv[2])",
                model.to_str().unwrap_or_default(),
                reordered.to_str().unwrap_or_default(),
            ],
        )?;
        let py = Server::spawn(
            Command::new("taskset")
                .args(["-c", "0"])
                .arg(python)
                .args([
                    "-m",
                    "uvicorn",
                    "pyserve:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "18084",
                ])
                .args(["--log-level", "warning", "--no-access-log"])
                .current_dir(&peers)
                .env("MODEL", &reordered),
        )?;
        wait_for_port(18084)?;
        let r = measure(
            &opts,
            py.pid,
            "http://127.0.0.1:18084/v1/models/iris:predict",
            &v1_script,
        )?;
        rows.push(("FastAPI + onnxruntime (pyserve.py), V1 :predict", r));
    } else {
        eprintln!(
            "xtask: no Python with fastapi, uvicorn and onnxruntime: skipping the pyserve peer"
        );
    }

    let find = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.starts_with(name))
            .map(|(_, r)| *r)
    };
    println!();
    println!("| configuration | req/s | p50 ms | p99 ms | server CPU µs/request |");
    println!("|---|---|---|---|---|");
    for (name, r) in &rows {
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.1} |",
            r.rps, r.p50_ms, r.p99_ms, r.cpu_us
        );
    }
    println!();
    println!(
        "proxy, crossfade / nginx (median of {} turns): {:.2}x the requests per second, {:.2}x the CPU per request",
        opts.passes, proxy_ratio.0, proxy_ratio.1
    );
    if let (Some(p), Some(c)) = (find("FastAPI"), find("crossfade, iris in-process, V1")) {
        println!(
            "in-process iris, crossfade / FastAPI+onnxruntime: {:.1}x the requests per second, {:.2}x the CPU per request",
            c.rps / p.rps,
            c.cpu_us / p.cpu_us
        );
    }
    let _ = std::fs::remove_dir_all(&rundir);
    Ok(())
}

/// Runs wrk `passes` times against `url`; returns the median run.
fn measure(opts: &Options, pid: u32, url: &str, script: &Path) -> anyhow::Result<Run> {
    // Warm up connections and caches.
    wrk(url, script, 2)?;
    let mut runs = Vec::new();
    for _ in 0..opts.passes {
        runs.push(pass(opts, pid, url, script)?);
    }
    Ok(median(runs, url))
}

/// One measured wrk run against the server `pid`.
fn pass(opts: &Options, pid: u32, url: &str, script: &Path) -> anyhow::Result<Run> {
    let before = cpu_ticks(pid)?;
    let (rps, requests, p50_ms, p99_ms) = wrk(url, script, opts.duration)?;
    let ticks = cpu_ticks(pid)? - before;
    let cpu_us = ticks as f64 * 1e6 / clock_ticks() / requests.max(1) as f64;
    Ok(Run {
        rps,
        p50_ms,
        p99_ms,
        cpu_us,
    })
}

/// The run with the median requests per second.
fn median(mut runs: Vec<Run>, url: &str) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let median = runs[runs.len() / 2];
    eprintln!("xtask: {url}: {median:?}");
    median
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One wrk run: (requests per second, requests, p50 ms, p99 ms).
fn wrk(url: &str, script: &Path, seconds: u32) -> anyhow::Result<(f64, u64, f64, f64)> {
    let out = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c32", "--latency"])
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") {
        bail!("wrk against {url} failed or saw errors:\n{text}");
    }
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
    };
    let rps: f64 = field("Requests/sec:").context("no Requests/sec")?.parse()?;
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .context("no request count")?
        .parse()?;
    let p50 = millis(field("50%").context("no p50")?)?;
    let p99 = millis(field("99%").context("no p99")?)?;
    Ok((rps, requests, p50, p99))
}

fn millis(s: &str) -> anyhow::Result<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse()?;
    Ok(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        other => bail!("unknown latency unit {other}"),
    })
}

/// utime + stime of a process and its threads, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').context("bad stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn wait_for_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port}")
}

fn python_with_fastapi() -> Option<String> {
    let candidates = [
        std::env::var("BENCH_PYTHON").unwrap_or_default(),
        "python3".into(),
    ];
    candidates.into_iter().filter(|p| !p.is_empty()).find(|p| {
        Command::new(p)
            .args(["-c", "import fastapi, uvicorn, onnxruntime, numpy, onnx"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A server process, stopped when dropped.
struct Server {
    child: Child,
    pid: u32,
}

impl Server {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .stdout(Stdio::null())
            .spawn()
            .context("starting a server")?;
        Ok(Self {
            pid: child.id(),
            child,
        })
    }

    /// nginx from a peer configuration, with `RUNDIR` replaced, in the foreground on core 0.
    fn nginx(conf: &Path, rundir: &Path, name: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(conf)
            .with_context(|| format!("reading {}", conf.display()))?
            .replace("RUNDIR", &rundir.display().to_string());
        let path = rundir.join(format!("{name}.conf"));
        std::fs::write(&path, text)?;
        let child = Command::new("taskset")
            .args([
                "-c",
                "0",
                "nginx",
                "-g",
                "daemon off; master_process off;",
                "-c",
            ])
            .arg(&path)
            .arg("-p")
            .arg(rundir)
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        Ok(Self {
            pid: child.id(),
            child,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
