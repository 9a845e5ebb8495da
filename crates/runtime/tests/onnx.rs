//! The iris fixtures against onnxruntime's reference outputs.

use std::path::PathBuf;

use runtime::{DataType, Error, OnnxModel, Tensor, TensorData};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models")
}

fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.expected.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn input_x(reference: &Value) -> Tensor {
    let x = &reference["inputs"]["X"];
    Tensor {
        name: "X".into(),
        shape: x["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect(),
        data: TensorData::F32(
            x["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect(),
        ),
    }
}

#[test]
fn outputs_match_onnxruntime() {
    for name in [
        "iris-logreg-v1",
        "iris-logreg-v2",
        "iris-mlp-v1",
        "iris-mlp-v2",
        "iris-forest-v1",
        "iris-forest-v2",
        "iris-wrong",
    ] {
        let model = OnnxModel::load(&fixtures().join(format!("{name}.onnx"))).unwrap();
        let x = &model.inputs()[0];
        assert_eq!(
            (x.name.as_str(), x.datatype, x.shape_i64()),
            ("X", DataType::F32, vec![-1, 4]),
            "{name}"
        );
        let outputs: Vec<(&str, DataType)> = model
            .outputs()
            .iter()
            .map(|o| (o.name.as_str(), o.datatype))
            .collect();
        assert_eq!(
            outputs,
            [("label", DataType::I64), ("probabilities", DataType::F32)],
            "{name}"
        );
        model.warm_up().unwrap();

        let reference = reference(name);
        let outputs = model.infer(&[input_x(&reference)]).unwrap();
        let label = &outputs[0];
        let want_labels: Vec<i64> = reference["outputs"]["label"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(label.data, TensorData::I64(want_labels), "{name}");
        let probs = outputs[1].data.to_f64();
        let want: Vec<f64> = reference["outputs"]["probabilities"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(outputs[1].shape, [want.len() / 3, 3]);
        let worst = probs
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "{name}: max difference {worst}");
    }
}

/// The judge's fixtures (`generate_judge.py`): the iris signature, the logistic regression's
/// labels, and scores as onnxruntime computes them (a NaN in the reference is a null).
#[test]
fn the_judge_fixtures_match_onnxruntime() {
    for name in [
        "iris-nan-scores",
        "iris-flat-scores",
        "iris-logreg-v1-retrained",
    ] {
        let model = OnnxModel::load(&fixtures().join(format!("{name}.onnx"))).unwrap();
        let reference = reference(name);
        let outputs = model.infer(&[input_x(&reference)]).unwrap();
        assert_eq!(
            outputs[0].data,
            TensorData::I64(vec![0, 0, 1, 1, 2, 2]),
            "{name}"
        );
        let want = reference["outputs"]["probabilities"]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap_or(f64::NAN));
        for (got, want) in outputs[1].data.to_f64().into_iter().zip(want) {
            assert!(
                (got.is_nan() && want.is_nan()) || (got - want).abs() < 1e-5,
                "{name}: {got} against {want}"
            );
        }
    }
}

#[test]
fn bad_inputs_name_the_input() {
    let model = OnnxModel::load(&fixtures().join("iris-logreg-v1.onnx")).unwrap();
    let x = |shape: Vec<usize>, data: TensorData| Tensor {
        name: "X".into(),
        shape,
        data,
    };
    let err = model
        .infer(&[x(vec![1, 3], TensorData::F32(vec![1.0; 3]))])
        .unwrap_err();
    assert!(
        matches!(&err, Error::Input { input, .. } if input == "X"),
        "{err}"
    );
    assert!(err.to_string().contains("dimension 1"), "{err}");
    let err = model
        .infer(&[x(vec![1, 4], TensorData::F64(vec![1.0; 4]))])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("FP64 does not match the model's FP32"),
        "{err}"
    );
    let err = model
        .infer(&[x(vec![2, 4], TensorData::F32(vec![1.0; 4]))])
        .unwrap_err();
    assert!(
        err.to_string().contains("holds 8 values but 4 were given"),
        "{err}"
    );
    let err = model.infer(&[]).unwrap_err();
    assert_eq!(err.to_string(), "input X: missing");
    let y = Tensor {
        name: "Y".into(),
        shape: vec![1],
        data: TensorData::F32(vec![1.0]),
    };
    let err = model
        .infer(&[x(vec![1, 4], TensorData::F32(vec![1.0; 4])), y])
        .unwrap_err();
    assert!(err.to_string().contains("no such input"), "{err}");
}

#[test]
fn a_model_that_fails_on_some_inputs() {
    let model = OnnxModel::load(&fixtures().join("iris-fails.onnx")).unwrap();
    let ok = model.infer(&[input_x(&reference("iris-fails"))]).unwrap();
    assert_eq!(ok[0].data, TensorData::F32(vec![0.25, 0.75]));
    let bad = Tensor {
        name: "X".into(),
        shape: vec![1, 4],
        data: TensorData::F32(vec![5.0, 3.0, 1.0, 0.2]),
    };
    assert!(matches!(model.infer(&[bad]), Err(Error::Inference(_))));
}

#[test]
fn load_errors() {
    let dir = std::env::temp_dir();
    let junk = dir.join(format!("crossfade-junk-{}.onnx", std::process::id()));
    std::fs::write(&junk, b"not a model").unwrap();
    assert!(matches!(OnnxModel::load(&junk), Err(Error::Load { .. })));
    std::fs::remove_file(&junk).unwrap();
    let zipmap = OnnxModel::load(&fixtures().join("iris-zipmap.onnx")).unwrap_err();
    assert!(
        matches!(&zipmap, Error::UnsupportedOperator { operator, .. } if operator == "ZipMap"),
        "{zipmap}"
    );
}
