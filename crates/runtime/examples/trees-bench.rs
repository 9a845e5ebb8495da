//! `cargo xtask bench` runs this: the native tree ensemble's time per `infer` call, at a
//! batch size, on the rows of a fixture's reference file (tiled to the batch).
//!
//!     trees-bench <xgboost|lightgbm|onnx> <model> <rows.expected.json> <batch> <seconds>
//!
//! Prints one JSON line: `{"batch": B, "calls": N, "ns_per_call": T}` (the median of five
//! timed rounds after a warm-up).

// A benchmark measures wall time: it reads the monotonic clock itself.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

use runtime::{Forest, Tensor, TensorData};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, format, model, rows, batch, seconds] = args.as_slice() else {
        eprintln!(
            "usage: trees-bench <xgboost|lightgbm|onnx> <model> <rows.expected.json> <batch> <seconds>"
        );
        std::process::exit(2);
    };
    let forest = match format.as_str() {
        "xgboost" => Forest::load_xgboost(Path::new(model)),
        "onnx" => Forest::load_onnx_ml(Path::new(model)).map(|f| {
            f.unwrap_or_else(|| {
                eprintln!("{model} is not a tree ensemble crossfade reads natively");
                std::process::exit(1)
            })
        }),
        _ => Forest::load_lightgbm(Path::new(model)),
    }
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let text = std::fs::read_to_string(rows).expect("the rows");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON rows");
    let rows: Vec<Vec<f32>> = v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("a row")
                .iter()
                .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect()
        })
        .collect();
    let batch: usize = batch.parse().expect("a batch size");
    let seconds: f64 = seconds.parse().expect("seconds");
    let width = rows[0].len();
    let data: Vec<f32> = rows.iter().cycle().take(batch).flatten().copied().collect();
    let input = Tensor {
        name: forest.inputs()[0].name.clone(),
        shape: vec![batch, width],
        data: TensorData::F32(data),
    };
    let call = || {
        std::hint::black_box(
            forest
                .infer(std::slice::from_ref(&input))
                .expect("inference"),
        );
    };
    // Warm up, and find how many calls fill a round.
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < Duration::from_secs_f64(seconds / 6.0) {
        call();
        calls += 1;
    }
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..calls {
            call();
        }
        rounds.push(t.elapsed().as_nanos() as f64 / calls as f64);
    }
    rounds.sort_by(f64::total_cmp);
    println!(
        "{{\"batch\": {batch}, \"calls\": {calls}, \"ns_per_call\": {:.1}}}",
        rounds[2]
    );
}
