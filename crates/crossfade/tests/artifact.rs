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

#[test]
fn push_to_an_oci_registry_verifies_and_a_tampered_layer_does_not() {
    let registry = test_support::Registry::start();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-sklearn");
    let target = format!("oci://{}/models/iris:v1", registry.host);
    let (code, out) = crossfade(&["artifact", "push", model.to_str().unwrap(), "--to", &target]);
    assert_eq!(code, 0, "{out}");
    let uri = out.trim().to_owned();
    let repo = format!("oci://{}/models/iris", registry.host);
    assert!(uri.starts_with(&format!("{repo}@sha256:")), "{uri}");

    let (code, out) = crossfade(&["artifact", "verify", &uri]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: "), "{out}");
    // The tag resolves to the pinned URI.
    let (code, out) = crossfade(&["artifact", "verify", &target]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("names {uri} (")), "{out}");

    // One byte of the layer changed in the registry's storage.
    let manifest_hex = uri.rsplit(':').next().unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.blob_path(manifest_hex)).unwrap()).unwrap();
    let layer = &doc["layers"][0]["digest"].as_str().unwrap()["sha256:".len()..];
    let blob = registry.blob_path(layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let (code, out) = crossfade(&["artifact", "verify", &uri]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("MISMATCH") && out.contains(&format!("expected sha256:{layer}")),
        "{out}"
    );
}
