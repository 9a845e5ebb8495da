//! S3 against a real S3-compatible server (moto) started on loopback.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use artifact::{Cache, Error, S3Config, create_bucket, push_with};
use manifest::StorageUri;

/// moto's server, stopped (stdin closed, then killed) when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Self {
        let python = std::env::var("CROSSFADE_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/moto_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {python}: {e}; `cargo xtask test` installs moto")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!("moto did not start (is `moto[server]` installed for {python}? `cargo xtask test` installs it)")
        });
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    fn config(&self, secret: &str) -> S3Config {
        S3Config {
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint.clone()),
            access_key: Some("AKIDEXAMPLE".into()),
            secret_key: Some(secret.into()),
            session_token: None,
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn push_fetch_verify_through_s3() {
    let moto = Moto::start();
    let config = moto.config("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
    create_bucket(&config, "models").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/iris-logreg-v1.onnx");

    // A file.
    let uri = push_with(&model, "s3://models/iris", &config).unwrap();
    assert!(
        uri.starts_with("s3://models/iris/sha256-") && uri.ends_with("/iris-logreg-v1.onnx"),
        "{uri}"
    );
    let cache = Cache::new(&dir.path().join("cache"), 1 << 20, Duration::from_secs(30))
        .unwrap()
        .with_s3(config.clone());
    let fetched = cache.fetch(&StorageUri::parse(&uri).unwrap()).unwrap();
    assert_eq!(
        std::fs::read(&fetched.path).unwrap(),
        std::fs::read(&model).unwrap()
    );
    assert!(fetched.downloaded);

    // A directory, fetched by listing its prefix.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub dir")).unwrap();
    std::fs::copy(&model, tree.join("model.onnx")).unwrap();
    std::fs::write(tree.join("sub dir/labels & names.txt"), "setosa\n").unwrap();
    let uri = push_with(&tree, "s3://models/iris-dir", &config).unwrap();
    let fetched = cache.fetch(&StorageUri::parse(&uri).unwrap()).unwrap();
    assert_eq!(
        std::fs::read_to_string(fetched.path.join("sub dir/labels & names.txt")).unwrap(),
        "setosa\n"
    );
    assert_eq!(fetched.digest, artifact::digest_path(&tree).unwrap());

    // Tampered in the store: refused.
    let tampered = uri.replace("iris-dir", "iris-evil");
    std::fs::write(tree.join("model.onnx"), b"not the model").unwrap();
    let evil_prefix = tampered.rsplit_once('/').unwrap().0.to_owned();
    push_with(&tree, &evil_prefix, &config).unwrap();
    let pinned_to_original = format!("{evil_prefix}/{}", uri.rsplit('/').next().unwrap());
    let err = Cache::new(
        &dir.path().join("other-cache"),
        1 << 20,
        Duration::from_secs(30),
    )
    .unwrap()
    .with_s3(config.clone())
    .fetch(&StorageUri::parse(&pinned_to_original).unwrap());
    assert!(
        matches!(
            err,
            Err(Error::NotFound { .. }) | Err(Error::DigestMismatch { .. })
        ),
        "{err:?}"
    );

    // gs:// speaks the same protocol (GCS's XML API): the same server stands in for it.
    let gs = push_with(&model, "gs://models/iris-gs", &config).unwrap();
    assert!(gs.starts_with("gs://models/iris-gs/sha256-"), "{gs}");
    let fetched = Cache::new(
        &dir.path().join("gs-cache"),
        1 << 20,
        Duration::from_secs(30),
    )
    .unwrap()
    .with_gcs(config.clone())
    .fetch(&StorageUri::parse(&gs).unwrap())
    .unwrap();
    assert_eq!(
        std::fs::read(&fetched.path).unwrap(),
        std::fs::read(&model).unwrap()
    );

    // Missing objects and wrong credentials are errors that say so.
    let missing = cache.fetch(&StorageUri::parse("s3://models/nothing/here.onnx").unwrap());
    assert!(
        matches!(missing, Err(Error::NotFound { .. })),
        "{missing:?}"
    );
    let denied = push_with(&model, "s3://no-such-bucket/iris", &config);
    assert!(matches!(denied, Err(Error::Fetch { .. })), "{denied:?}");
}
