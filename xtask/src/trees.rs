//! `cargo xtask bench --trees`: the native tree ensembles against onnxruntime on the same
//! models (their ONNX conversion by onnxmltools), per call at batch 1 and 1,000, in the same
//! run on this machine. The peer runs from Python, as a user of onnxruntime would call it.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// (name, format, the model crossfade reads, the ONNX file onnxruntime reads, the rows,
/// trees), paths under `fixtures/`.
const MODELS: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "sklearn-extra-trees-iris",
        "onnx",
        "onnx-ml/sklearn-extra-trees-iris.onnx",
        "onnx-ml/sklearn-extra-trees-iris.onnx",
        "onnx-ml/sklearn-extra-trees-iris.expected.json",
        "10 trees, depth 5, the same ONNX file",
    ),
    (
        "xgb-binary-small",
        "xgboost",
        "trees/xgb-binary-small.json",
        "trees/xgb-binary-small.onnx",
        "trees/xgb-binary-small.expected.json",
        "10 trees, depth 4",
    ),
    (
        "xgb-binary-large",
        "xgboost",
        "trees/xgb-binary-large.json",
        "trees/xgb-binary-large.onnx",
        "trees/xgb-binary-large.expected.json",
        "300 trees, depth 6",
    ),
    (
        "lgb-binary-large",
        "lightgbm",
        "trees/lgb-binary-large.txt",
        "trees/lgb-binary-large.onnx",
        "trees/lgb-binary-large.expected.json",
        "300 trees, 31 leaves",
    ),
];

pub fn run(seconds: f64) -> anyhow::Result<()> {
    let python = ["BENCH_PYTHON", ""]
        .iter()
        .map(|v| if v.is_empty() { "python3".to_owned() } else { std::env::var(v).unwrap_or_default() })
        .filter(|p| !p.is_empty())
        .find(|p| {
            Command::new(p)
                .args(["-c", "import onnxruntime, numpy"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .context("no Python with onnxruntime and numpy (set BENCH_PYTHON, or pip install onnxruntime numpy)")?;
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "runtime",
            "--example",
            "trees-bench",
        ],
    )?;
    let native = Path::new("target/release/examples/trees-bench").canonicalize()?;
    let fixtures = Path::new("fixtures");
    println!(
        "\n| model | batch | crossfade (native) | onnxruntime (Python) | onnxruntime / crossfade |"
    );
    println!("|---|---|---|---|---|");
    for (name, library, file, onnx, rows, what) in MODELS {
        let rows = fixtures.join(rows);
        for batch in ["1", "1000"] {
            let ours = measure(Command::new(&native).args([
                library,
                fixtures.join(file).to_str().unwrap_or_default(),
                rows.to_str().unwrap_or_default(),
                batch,
                &seconds.to_string(),
            ]))?;
            let peer = measure(Command::new(&python).args([
                "xtask/trees_peer.py",
                fixtures.join(onnx).to_str().unwrap_or_default(),
                rows.to_str().unwrap_or_default(),
                batch,
                &seconds.to_string(),
            ]))?;
            println!(
                "| {name} ({what}) | {batch} | {} | {} | {:.1}x |",
                time(ours),
                time(peer),
                peer / ours
            );
        }
    }
    Ok(())
}

/// The `ns_per_call` a benchmark program prints.
fn measure(cmd: &mut Command) -> anyhow::Result<f64> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running a benchmark")?;
    if !out.status.success() {
        bail!(
            "a benchmark failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("reading {}", String::from_utf8_lossy(&out.stdout)))?;
    v["ns_per_call"].as_f64().context("no ns_per_call")
}

fn time(ns: f64) -> String {
    if ns < 10_000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}
