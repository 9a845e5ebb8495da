//! `oci://` artifacts against a real registry on loopback: pushed, pulled by digest and by tag,
//! cached by digest, and refused when the registry's bytes are tampered with.

use std::path::Path;
use std::time::Duration;

use artifact::{Cache, Error, push};
use manifest::StorageUri;
use test_support::Registry;

fn model_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-sklearn")
}

fn cache(dir: &Path) -> Cache {
    Cache::new(dir, 1 << 24, Duration::from_secs(30)).unwrap()
}

fn parse(uri: &str) -> StorageUri {
    StorageUri::parse(uri).unwrap()
}

/// The hex digests of the layer blobs a pinned manifest lists, read from the registry.
fn layer_digests(registry: &Registry, manifest_hex: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(registry.blob_path(manifest_hex)).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    doc["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap()["sha256:".len()..].to_owned())
        .collect()
}

#[test]
fn an_image_is_pushed_pulled_by_digest_and_tag_and_cached() {
    let registry = Registry::start();
    let target = format!("oci://{}/models/iris:v1", registry.host);
    let uri = push(&model_dir(), &target).unwrap();
    let prefix = format!("oci://{}/models/iris@sha256:", registry.host);
    assert!(uri.starts_with(&prefix), "{uri}");
    // Reproducible: the same files push to the same digest.
    assert_eq!(push(&model_dir(), &target).unwrap(), uri);

    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let pinned = parse(&uri);
    assert_eq!(pinned.scheme, manifest::Scheme::Oci);
    let fetched = cache.fetch(&pinned).unwrap();
    assert!(fetched.downloaded);
    assert_eq!(Some(fetched.digest), pinned.digest);
    // The files under /models, exactly.
    assert_eq!(
        artifact::listing(&fetched.path).unwrap(),
        artifact::listing(&model_dir()).unwrap()
    );
    // Again: from the cache, by digest.
    let again = cache.fetch(&pinned).unwrap();
    assert!(!again.downloaded);
    assert_eq!(again.path, fetched.path);
    // By tag: resolved to the same manifest, which the cache has.
    let tagged = cache.fetch(&parse(&target)).unwrap();
    assert_eq!(tagged.digest, fetched.digest);
    assert!(!tagged.downloaded);

    // The tag moves to other files; the pinned URI still names the first image.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("model.joblib"), b"another model").unwrap();
    let moved = push(other.path(), &target).unwrap();
    assert_ne!(moved, uri);
    let fresh = tempfile::tempdir().unwrap();
    let cache = self::cache(fresh.path());
    let first = cache.fetch(&pinned).unwrap();
    assert_eq!(
        artifact::listing(&first.path).unwrap(),
        artifact::listing(&model_dir()).unwrap()
    );
    let now = cache.fetch(&parse(&target)).unwrap();
    assert_eq!(
        std::fs::read(now.path.join("model.joblib")).unwrap(),
        b"another model"
    );

    // A repository that is not there.
    let missing = format!("oci://{}/models/absent:v1", registry.host);
    let err = cache.fetch(&parse(&missing)).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn tampered_blobs_and_manifests_are_refused() {
    let registry = Registry::start();
    let uri = push(
        &model_dir(),
        &format!("oci://{}/models/iris", registry.host),
    )
    .unwrap();
    let pinned = parse(&uri);
    let manifest_hex = pinned.digest.unwrap().to_string();

    // A layer's bytes changed in the registry's storage: same size, one byte off.
    let layer = &layer_digests(&registry, &manifest_hex)[0];
    let blob = registry.blob_path(layer);
    let original = std::fs::read(&blob).unwrap();
    let mut bad = original.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = cache(dir.path()).fetch(&pinned).unwrap_err();
    match &err {
        Error::DigestMismatch { expected, .. } => assert_eq!(expected.to_string(), *layer),
        other => panic!("expected a digest mismatch, got {other}"),
    }
    // Nothing unverified was kept: no cache entry, no staging left behind.
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "sha256" && n != "oci")
        .collect();
    assert!(entries.is_empty(), "{entries:?}");
    assert!(!dir.path().join("oci").join(&manifest_hex).exists());
    std::fs::write(&blob, &original).unwrap();

    // The manifest itself rewritten (the same length: its layer swapped for another image's).
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("model.joblib"), b"not the reviewed model").unwrap();
    let other_uri = push(
        other.path(),
        &format!("oci://{}/models/iris", registry.host),
    )
    .unwrap();
    let other_layer = &layer_digests(&registry, &parse(&other_uri).digest.unwrap().to_string())[0];
    let manifest = registry.blob_path(&manifest_hex);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace(layer.as_str(), other_layer)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = cache(dir.path()).fetch(&pinned).unwrap_err();
    match &err {
        Error::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected.to_string(), manifest_hex);
            assert_ne!(actual.to_string(), manifest_hex);
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    std::fs::write(&manifest, text).unwrap();
    assert!(cache(dir.path()).fetch(&pinned).is_ok());
}

#[test]
fn an_image_larger_than_the_limit_is_refused() {
    let registry = Registry::start();
    let big = tempfile::tempdir().unwrap();
    // Zeros compress well: the layer is small, what it unpacks to is not.
    std::fs::write(big.path().join("weights.bin"), vec![0u8; 4 << 20]).unwrap();
    let uri = push(big.path(), &format!("oci://{}/models/big", registry.host)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path(), 1 << 20, Duration::from_secs(30)).unwrap();
    let err = cache.fetch(&parse(&uri)).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}
