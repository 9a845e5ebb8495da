//! `crossfade artifact push` and `verify` as a user runs them.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_crossfade");

fn crossfade(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn push_prints_a_pinned_uri_that_verifies_and_lints() {
    let store = tempfile::tempdir().unwrap();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-mlp-v1.onnx");
    let prefix = format!("file://{}/iris", store.path().display());
    let (code, out) = crossfade(&["artifact", "push", model.to_str().unwrap(), "--to", &prefix]);
    assert_eq!(code, 0, "{out}");
    let uri = out.trim().to_owned();
    assert!(
        uri.starts_with(&format!("{prefix}/sha256-")) && uri.ends_with("/iris-mlp-v1.onnx"),
        "{uri}"
    );

    let (code, out) = crossfade(&["artifact", "verify", &uri]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");

    // The printed URI satisfies lint --require-digest.
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("iris.yaml"),
        format!("apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: iris}}\nspec:\n  predictor:\n    model: {{modelFormat: {{name: onnx}}, storageUri: \"{uri}\"}}\n"),
    )
    .unwrap();
    let (code, out) = crossfade(&[
        "lint",
        manifests.path().to_str().unwrap(),
        "--require-digest",
    ]);
    assert_eq!(code, 0, "{out}");

    // Someone overwrites the stored model: verify says so, with both digests.
    std::fs::write(uri.trim_start_matches("file://"), b"tampered").unwrap();
    let (code, out) = crossfade(&["artifact", "verify", &uri]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("MISMATCH")
            && out.contains("expected sha256:")
            && out.contains("got sha256:"),
        "{out}"
    );

    let (code, out) = crossfade(&[
        "artifact",
        "push",
        model.to_str().unwrap(),
        "--to",
        "https://example.com/iris",
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("uploading over http(s) is not supported"),
        "{out}"
    );
}
