//! The native forests against the libraries' own predictions (`fixtures/trees/generate.py`).

use std::path::PathBuf;

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../fixtures/trees/{name}"))
}

/// The rows (NaN for null) and the library's predictions, flat.
fn expected(name: &str) -> (Vec<Vec<f32>>, Vec<f64>) {
    let text = std::fs::read_to_string(fixture(&format!("{name}.expected.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let rows = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect()
        })
        .collect();
    let mut predictions = Vec::new();
    fn flat(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| flat(i, out)),
            other => out.push(other.as_f64().unwrap()),
        }
    }
    flat(&v["predictions"], &mut predictions);
    (rows, predictions)
}

fn predict(forest: &Forest, rows: &[Vec<f32>]) -> Vec<f64> {
    let width = rows[0].len();
    let input = Tensor {
        name: "input-0".into(),
        shape: vec![rows.len(), width],
        data: TensorData::F32(rows.iter().flatten().copied().collect()),
    };
    // The scores: the only output, or a classifier's probabilities after its labels.
    forest
        .infer(&[input])
        .unwrap()
        .last()
        .unwrap()
        .data
        .to_f64()
}

fn check(forest: &Forest, name: &str, tolerance: f64) {
    let (rows, want) = expected(name);
    let got = predict(forest, &rows);
    assert_eq!(got.len(), want.len(), "{name}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance * w.abs().max(1.0),
            "{name}: prediction {i} is {g}, the library's {w}"
        );
    }
}

#[test]
fn xgboost_models_predict_as_xgboost() {
    for name in [
        "xgb-iris-softprob",
        "xgb-binary-large",
        "xgb-categorical-regression",
    ] {
        let forest = Forest::load_xgboost(&fixture(&format!("{name}.json"))).unwrap();
        // Single precision, as XGBoost computes.
        check(&forest, name, 2e-6);
    }
}

/// The same booster saved as UBJSON predicts as its JSON; cut-short or garbled UBJSON is an
/// error, never a panic.
#[test]
fn an_xgboost_ubjson_model_predicts_as_its_json() {
    let forest = Forest::load_xgboost(&fixture("xgb-iris-softprob.ubj")).unwrap();
    check(&forest, "xgb-iris-softprob", 2e-6);
    let bytes = std::fs::read(fixture("xgb-iris-softprob.ubj")).unwrap();
    for cut in [1, 2, 10, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(ubjson(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut garbled = bytes.clone();
    for i in (0..garbled.len()).step_by(97) {
        garbled[i] ^= 0x5a;
        let _ = ubjson(&garbled);
    }
}

#[test]
fn lightgbm_models_predict_as_lightgbm() {
    for name in [
        "lgb-iris-multiclass",
        "lgb-binary-large",
        "lgb-categorical-regression",
    ] {
        let forest = Forest::load_lightgbm(&fixture(&format!("{name}.txt"))).unwrap();
        check(&forest, name, 1e-12);
    }
}

#[test]
fn a_forest_says_what_it_takes_and_gives() {
    let forest = Forest::load_xgboost(&fixture("xgb-iris-softprob.json")).unwrap();
    assert_eq!(forest.trees(), 30);
    let input = &forest.inputs()[0];
    assert_eq!(
        (input.name.as_str(), input.datatype, input.shape.clone()),
        ("input-0", DataType::F32, vec![None, Some(4)])
    );
    assert_eq!(forest.outputs()[0].shape, vec![None, Some(3)]);
    // A request of another width is the client's error, naming the input.
    let bad = Tensor {
        name: "input-0".into(),
        shape: vec![1, 3],
        data: TensorData::F32(vec![1.0; 3]),
    };
    let err = forest.infer(&[bad]).unwrap_err();
    assert!(matches!(err, Error::Input { .. }), "{err}");
    assert!(err.to_string().contains("[N, 4]"), "{err}");
}

#[test]
fn malformed_models_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    std::fs::write(
        &path,
        "{\"learner\": {\"gradient_booster\": {\"name\": \"gblinear\"}}}",
    )
    .unwrap();
    let err = Forest::load_xgboost(&path).unwrap_err().to_string();
    assert!(err.contains("gblinear"), "{err}");
    std::fs::write(&path, "not json").unwrap();
    let err = Forest::load_xgboost(&path).unwrap_err().to_string();
    assert!(err.contains("not an XGBoost JSON model"), "{err}");
    let path = dir.path().join("m.txt");
    std::fs::write(&path, "something else").unwrap();
    let err = Forest::load_lightgbm(&path).unwrap_err().to_string();
    assert!(err.contains("not a LightGBM text model"), "{err}");
    // A tree whose child points back at its parent would never end: refused.
    let text = std::fs::read_to_string(fixture("lgb-iris-multiclass.txt")).unwrap();
    let at = text.find("left_child=").unwrap() + "left_child=".len();
    let first = text[at..].split_whitespace().next().unwrap();
    let looped = format!("{}0{}", &text[..at], &text[at + first.len()..]);
    std::fs::write(&path, looped).unwrap();
    let err = Forest::load_lightgbm(&path).unwrap_err().to_string();
    assert!(err.contains("points back"), "{err}");
}

/// The flat, branch-free layout walks to the same leaves as the model read plainly, on random
/// rows with missing values and categories out of range, at every batch size around the lanes.
#[test]
fn the_flat_layout_predicts_as_the_plain_walk() {
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let models = [
        ("xgboost", "xgb-iris-softprob.json"),
        ("xgboost", "xgb-categorical-regression.json"),
        ("xgboost", "xgb-binary-small.json"),
        ("xgboost", "xgb-binary-large.json"),
        ("lightgbm", "lgb-iris-multiclass.txt"),
        ("lightgbm", "lgb-categorical-regression.txt"),
        // ONNX ensembles: leaves that add to every class, `<` and `<=`.
        ("onnx", "../onnx-ml/sklearn-extra-trees-iris.onnx"),
        ("onnx", "../onnx-ml/xgb-iris-onnx.onnx"),
        ("onnx", "../onnx-ml/sklearn-gb-regressor.onnx"),
    ];
    for (library, file) in models {
        let forest = match library {
            "xgboost" => Forest::load_xgboost(&fixture(file)).unwrap(),
            "onnx" => Forest::load_onnx_ml(&fixture(file)).unwrap().unwrap(),
            _ => Forest::load_lightgbm(&fixture(file)).unwrap(),
        };
        let width = forest.features;
        let thresholds: Vec<f32> = forest
            .nodes
            .iter()
            .filter(|n| n.left != LEAF && n.flags & CATEGORICAL == 0)
            .map(|n| n.value as f32)
            .collect();
        for batch in [1, 7, 8, 9, 17] {
            let rows: Vec<Vec<f32>> = (0..batch)
                .map(|_| {
                    (0..width)
                        .map(|_| match next() {
                            p if p < 0.1 => f32::NAN,
                            p if p < 0.15 => 0.0,
                            // Infinities stay on the leaf they reach.
                            p if p < 0.17 => f32::INFINITY,
                            p if p < 0.19 => f32::NEG_INFINITY,
                            // Often exactly on a threshold of the model.
                            p if p < 0.4 => thresholds[(p * 1e6) as usize % thresholds.len()],
                            p => ((p - 0.5) * 16.0).round() as f32 / 2.0,
                        })
                        .collect()
                })
                .collect();
            // And rows of one infinity throughout: down the rightmost (or leftmost) paths.
            let mut rows = rows;
            rows.push(vec![f32::INFINITY; width]);
            rows.push(vec![f32::NEG_INFINITY; width]);
            let got = predict(&forest, &rows);
            for (i, row) in rows.iter().enumerate() {
                let row: Vec<f64> = row.iter().map(|x| f64::from(*x)).collect();
                let mut want = vec![0.0; forest.groups];
                forest.margins(&row, &mut want);
                forest.transform(&mut want);
                for (g, w) in want.iter().enumerate() {
                    let v = got[i * forest.groups + g];
                    // ONNX outputs are FP32.
                    let w = if library == "onnx" {
                        f64::from(*w as f32)
                    } else {
                        *w
                    };
                    assert!(
                        (v - w).abs() <= 1e-12 * w.abs().max(1.0) || (v.is_nan() && w.is_nan()),
                        "{file}, batch {batch}, row {i}: {v} against {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_node_takes_sixteen_bytes() {
    assert_eq!(std::mem::size_of::<FlatNode>(), 16);
}

/// ONNX-ML ensembles read natively give onnxruntime's outputs (`fixtures/onnx-ml`, and the
/// scikit-learn forests of `fixtures/models`), row by row, label by label.
#[test]
fn onnx_ml_ensembles_answer_as_onnxruntime() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let cases = [
        "onnx-ml/sklearn-gb-iris",
        "onnx-ml/sklearn-extra-trees-iris",
        "onnx-ml/sklearn-gb-regressor",
        "onnx-ml/sklearn-rf-regressor",
        "onnx-ml/xgb-iris-onnx",
        "onnx-ml/lgb-iris-onnx",
        // Binary: weights for one class.
        "onnx-ml/sklearn-rf-binary",
        "onnx-ml/sklearn-gb-binary",
        "onnx-ml/xgb-binary-onnx",
        "onnx-ml/lgb-binary-onnx",
    ];
    for case in cases {
        let forest = Forest::load_onnx_ml(&root.join(format!("{case}.onnx")))
            .unwrap()
            .unwrap_or_else(|| panic!("{case} is not read natively"));
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(format!("{case}.expected.json"))).unwrap(),
        )
        .unwrap();
        let rows: Vec<f32> = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().clone())
            .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
            .collect();
        let n = v["rows"].as_array().unwrap().len();
        assert_eq!(forest.inputs()[0].name, v["input"], "{case}");
        let input = Tensor {
            name: forest.inputs()[0].name.clone(),
            shape: vec![n, rows.len() / n],
            data: TensorData::F32(rows),
        };
        let outputs = forest.infer(&[input]).unwrap();
        let want = v["outputs"].as_object().unwrap();
        assert_eq!(outputs.len(), want.len(), "{case}");
        for t in &outputs {
            let w: Vec<f64> = want[&t.name]
                .as_array()
                .unwrap_or_else(|| panic!("{case}: no output {}", t.name))
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let g = t.data.to_f64();
            assert_eq!(g.len(), w.len(), "{case} {}", t.name);
            for (i, (g, w)) in g.iter().zip(&w).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{case} {} [{i}]: {g} against onnxruntime's {w}",
                    t.name
                );
            }
        }
    }
    // The random forests of fixtures/models too, against their reference outputs.
    for name in ["iris-forest-v1", "iris-forest-v2"] {
        let forest = Forest::load_onnx_ml(&root.join(format!("models/{name}.onnx")))
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(format!("models/{name}.expected.json"))).unwrap(),
        )
        .unwrap();
        let x = &v["inputs"]["X"];
        let shape: Vec<usize> = x["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let data: Vec<f32> = x["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_f64().unwrap() as f32)
            .collect();
        let outputs = forest
            .infer(&[Tensor {
                name: "X".into(),
                shape,
                data: TensorData::F32(data),
            }])
            .unwrap();
        for t in &outputs {
            let want: Vec<f64> = v["outputs"][&t.name]["data"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: {}", v["outputs"]))
                .iter()
                .map(|d| d.as_f64().unwrap())
                .collect();
            for (g, w) in t.data.to_f64().iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6, "{name} {}: {g} against {w}", t.name);
            }
        }
    }
}

/// Models that are not one plain tree ensemble stay with tract.
#[test]
fn other_onnx_models_are_not_read_as_ensembles() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    for path in [
        "models/iris-logreg-v1.onnx",
        "models/iris-zipmap.onnx",
        "models/iris-mlp-v1.onnx",
        // A ZipMap after the ensemble.
        "trees/lgb-binary-large.onnx",
    ] {
        assert!(
            Forest::load_onnx_ml(&root.join(path)).unwrap().is_none(),
            "{path}"
        );
    }
}
