use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use manifest::{Digest, Scheme, StorageUri};

use super::*;

fn uri(raw: &str, scheme: Scheme, digest: Option<Digest>) -> StorageUri {
    StorageUri {
        raw: raw.to_owned(),
        scheme,
        digest,
    }
}

fn cache(dir: &Path, limit: u64) -> Cache {
    Cache::new(&dir.join("cache"), limit, Duration::from_secs(10)).unwrap()
}

/// sha256("hello model\n")
fn hello_digest() -> Digest {
    Digest(Sha256::digest(b"hello model\n").into())
}

#[test]
fn file_pinned_verified_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let d = hello_digest();
    let src = dir.path().join(format!("store/sha256-{d}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("model.onnx"), "hello model\n").unwrap();
    let c = cache(dir.path(), 1 << 20);
    let u = uri(
        &format!("file://{}/model.onnx", src.display()),
        Scheme::File,
        Some(d),
    );
    let first = c.fetch(&u).unwrap();
    assert!(first.downloaded);
    assert_eq!(first.digest, d);
    assert_eq!(
        std::fs::read_to_string(&first.path).unwrap(),
        "hello model\n"
    );
    assert!(first.path.starts_with(dir.path().join("cache/sha256")));
    // Same digest again: no download, even with the source gone.
    std::fs::remove_file(src.join("model.onnx")).unwrap();
    let second = c.fetch(&u).unwrap();
    assert!(!second.downloaded);
    assert_eq!(second.path, first.path);
}

/// Many loads of one model at once (10,000 services of one artifact start together): one
/// fetch copies it, the others wait for it and find it cached; none fails. Unpinned fetches of
/// the same bytes under other names race to the same entry, and all of them succeed too.
#[test]
fn concurrent_fetches_of_one_artifact_copy_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = hello_digest();
    let src = dir.path().join(format!("store/sha256-{d}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("model.onnx"), "hello model\n").unwrap();
    std::fs::write(src.join("other.onnx"), "hello model\n").unwrap();
    let c = cache(dir.path(), 1 << 20);
    let pinned = uri(
        &format!("file://{}/model.onnx", src.display()),
        Scheme::File,
        Some(d),
    );
    let results: Vec<Fetched> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| s.spawn(|| c.fetch(&pinned).unwrap()))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|f| f.downloaded).count(), 1);
    assert!(results.iter().all(|f| f.path == results[0].path));

    let fresh = cache(&dir.path().join("second"), 1 << 20);
    let names = ["model.onnx", "other.onnx"];
    let results: Vec<Fetched> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let fresh = &fresh;
                let u = uri(
                    &format!("file://{}/{}", src.display(), names[i % 2]),
                    Scheme::File,
                    None,
                );
                s.spawn(move || fresh.fetch(&u).unwrap())
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for f in &results {
        assert_eq!(f.digest, d);
        assert_eq!(std::fs::read_to_string(&f.path).unwrap(), "hello model\n");
    }
}

#[test]
fn tampered_artifact_is_refused_and_never_cached() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.onnx"), "tampered model\n").unwrap();
    let c = cache(dir.path(), 1 << 20);
    let expected = hello_digest();
    let u = uri(
        &format!("file://{}/model.onnx", dir.path().display()),
        Scheme::File,
        Some(expected),
    );
    let err = c.fetch(&u).unwrap_err();
    let Error::DigestMismatch {
        expected: e,
        actual,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*e, expected);
    assert_eq!(*actual, Digest(Sha256::digest(b"tampered model\n").into()));
    assert!(
        err.to_string()
            .contains(&format!("expected sha256:{expected}")),
        "{err}"
    );
    // Nothing but the (empty) digest index is left in the cache.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .collect();
    assert_eq!(leftovers.len(), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("cache/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn directory_digest_is_the_canonical_listing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::write(model.join("model.onnx"), "hello model\n").unwrap();
    std::fs::write(model.join("sub/labels.txt"), "setosa\n").unwrap();
    let listing = listing(&model).unwrap();
    assert_eq!(
        listing,
        format!(
            "{}  model.onnx\n{}  sub/labels.txt\n",
            hello_digest(),
            Digest(Sha256::digest(b"setosa\n").into())
        )
    );
    let want = Digest(Sha256::digest(listing.as_bytes()).into());
    assert_eq!(digest_path(&model).unwrap(), want);
    let c = cache(dir.path(), 1 << 20);
    let fetched = c
        .fetch(&uri(
            &format!("file://{}", model.display()),
            Scheme::File,
            Some(want),
        ))
        .unwrap();
    assert!(fetched.path.join("sub/labels.txt").exists());
    assert_eq!(fetched.bytes, 19);
}

#[test]
fn size_limit_and_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.onnx"), vec![0u8; 4096]).unwrap();
    let c = cache(dir.path(), 1000);
    let big = uri(
        &format!("file://{}/big.onnx", dir.path().display()),
        Scheme::File,
        None,
    );
    assert!(matches!(
        c.fetch(&big),
        Err(Error::TooLarge { limit: 1000, .. })
    ));
    let gone = uri(
        &format!("file://{}/gone.onnx", dir.path().display()),
        Scheme::File,
        None,
    );
    assert!(matches!(c.fetch(&gone), Err(Error::NotFound { .. })));
}

/// Serves `body` at every path except `/missing` (404), for `requests` requests.
fn http_server(body: &'static [u8], requests: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
            }
            if line.contains("/missing") {
                write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                )
                .unwrap();
            } else {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .unwrap();
                stream.write_all(body).unwrap();
            }
        }
    });
    port
}

#[test]
fn http_download() {
    let port = http_server(b"hello model\n", 3);
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path(), 1 << 20);
    let base = format!("http://127.0.0.1:{port}");
    let good = uri(
        &format!("{base}/iris/sha256-{}/model.onnx", hello_digest()),
        Scheme::Http,
        Some(hello_digest()),
    );
    let fetched = c.fetch(&good).unwrap();
    assert_eq!(std::fs::read(&fetched.path).unwrap(), b"hello model\n");
    assert!(fetched.path.ends_with("model.onnx"));
    let wrong = uri(
        &format!("{base}/other.onnx"),
        Scheme::Http,
        Some(Digest([7; 32])),
    );
    assert!(matches!(c.fetch(&wrong), Err(Error::DigestMismatch { .. })));
    let missing = uri(&format!("{base}/missing"), Scheme::Http, None);
    assert!(matches!(c.fetch(&missing), Err(Error::NotFound { .. })));
}

#[test]
fn push_then_fetch_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.onnx"), "hello model\n").unwrap();
    let prefix = format!("file://{}/store/iris", dir.path().display());
    let uri = push(&dir.path().join("model.onnx"), &prefix).unwrap();
    assert_eq!(
        uri,
        format!("{prefix}/sha256-{}/model.onnx", hello_digest())
    );
    // Pushing again is a no-op with the same answer.
    assert_eq!(push(&dir.path().join("model.onnx"), &prefix).unwrap(), uri);
    let parsed = StorageUri::parse(&uri).unwrap();
    assert_eq!(parsed.digest, Some(hello_digest()));
    let fetched = cache(dir.path(), 1 << 20).fetch(&parsed).unwrap();
    assert_eq!(std::fs::read(fetched.path).unwrap(), b"hello model\n");

    // A directory: the URI ends at the digest.
    let model = dir.path().join("model-dir");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("model.onnx"), "hello model\n").unwrap();
    let uri = push(&model, &prefix).unwrap();
    let want = digest_path(&model).unwrap();
    assert_eq!(uri, format!("{prefix}/sha256-{want}"));
    let fetched = cache(dir.path(), 1 << 20)
        .fetch(&StorageUri::parse(&uri).unwrap())
        .unwrap();
    assert!(fetched.path.join("model.onnx").exists());
    assert!(matches!(
        push(&model, "http://example.com/iris"),
        Err(Error::Unsupported { .. })
    ));
}

/// The staging directories left under the cache's root.
fn staging_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp-"))
        .collect()
}

#[test]
fn failed_downloads_leave_nothing_behind_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // A download cut off by the size limit halfway through.
    static BIG: [u8; 64 * 1024] = [7u8; 64 * 1024];
    let port = http_server(&BIG, 1);
    let c = cache(dir.path(), 16 * 1024);
    let over = uri(
        &format!("http://127.0.0.1:{port}/big.onnx"),
        Scheme::Http,
        None,
    );
    assert!(matches!(c.fetch(&over), Err(Error::TooLarge { .. })));
    assert_eq!(staging_left(dir.path()), Vec::<String>::new());
    // A digest that does not match.
    std::fs::write(dir.path().join("m.onnx"), b"not the model").unwrap();
    let wrong = uri(
        &format!("file://{}/m.onnx", dir.path().display()),
        Scheme::File,
        Some(hello_digest()),
    );
    assert!(matches!(c.fetch(&wrong), Err(Error::DigestMismatch { .. })));
    assert_eq!(staging_left(dir.path()), Vec::<String>::new());
    // A process killed in the middle of a download left its staging directory: the next
    // cache on this root removes it (its process is gone), and keeps a live one's.
    let dead = dir.path().join("cache/tmp-4294967294-0");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("partial.onnx"), vec![0u8; 1000]).unwrap();
    let live = dir
        .path()
        .join(format!("cache/tmp-{}-999", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let _ = cache(dir.path(), 1000);
    assert_eq!(
        staging_left(dir.path()),
        vec![format!("tmp-{}-999", std::process::id())]
    );
}

#[test]
fn a_fifo_is_refused_rather_than_read_forever() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.onnx");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let c = cache(dir.path(), 1 << 20);
    let err = c
        .fetch(&uri(
            &format!("file://{}", fifo.display()),
            Scheme::File,
            None,
        ))
        .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert_eq!(staging_left(dir.path()), Vec::<String>::new());
}
