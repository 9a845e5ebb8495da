//! The mirror against real repositories made with `git`.

use std::time::Duration;

use source::{Error, Mirror};
use test_support::GitRepo;

const TIMEOUT: Duration = Duration::from_secs(60);

fn isvc(name: &str, uri: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: {name}}}\nspec:\n  predictor:\n    model: {{modelFormat: {{name: onnx}}, storageUri: \"{uri}\"}}\n"
    )
}

fn names(sources: &manifest::Sources) -> Vec<String> {
    sources.files().map(|(_, f)| f.name.clone()).collect()
}

#[test]
fn local_path_branches_tags_and_commits() {
    let upstream = GitRepo::new();
    upstream
        .write("deploy/iris.yaml", &isvc("iris", "file:///m1.onnx"))
        .write("deploy/nested/rollout.yml", "# empty\n")
        .write("deploy/README.md", "not a manifest")
        .write("deploy/.hidden/x.yaml", "ignored: true\n")
        .write("other/outside.yaml", "ignored: true\n");
    let first = upstream.commit("first model");
    upstream.tag("v1");
    upstream.write("deploy/iris.yaml", &isvc("iris", "file:///m2.onnx"));
    let second = upstream.commit("second model\n\nwith a body");

    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(upstream.path().to_str().unwrap(), &dir.path().join("m")).unwrap();
    assert!(mirror.url().starts_with("file://"));
    mirror.fetch(TIMEOUT).unwrap();

    assert_eq!(mirror.resolve("main").unwrap(), second);
    assert_eq!(mirror.resolve("HEAD").unwrap(), second);
    assert_eq!(mirror.resolve("v1").unwrap(), first);
    assert_eq!(mirror.resolve(&first).unwrap(), first);
    assert_eq!(mirror.resolve(&first[..8]).unwrap(), first);
    assert!(matches!(
        mirror.resolve("no-such-branch"),
        Err(Error::Resolve { .. })
    ));

    let sources = mirror.read_manifests(&second, "deploy").unwrap();
    assert_eq!(names(&sources), ["iris.yaml", "nested/rollout.yml"]);
    assert!(sources.get(0).text().contains("m2.onnx"));
    let old = mirror.read_manifests(&first, "deploy/").unwrap();
    assert!(old.get(0).text().contains("m1.onnx"));
    let all = mirror.read_manifests(&second, ".").unwrap();
    assert_eq!(
        names(&all),
        [
            "deploy/iris.yaml",
            "deploy/nested/rollout.yml",
            "other/outside.yaml"
        ]
    );
    assert!(matches!(
        mirror.read_manifests(&second, "missing"),
        Err(Error::MissingPath { .. })
    ));
    assert!(matches!(
        mirror.read_manifests(&second, "deploy/iris.yaml"),
        Err(Error::MissingPath { .. })
    ));

    let info = mirror.commit(&second).unwrap();
    assert_eq!(info.author, "Ada Lovelace <ada@example.com>");
    assert_eq!(info.summary, "second model");
    assert!(info.time > 1_600_000_000);
    assert_eq!(info.signature, None);
}

/// A read shares the files that did not change with the read before (what `parse_cached`
/// relies on to skip them), and reads the others afresh: changed, added, moved and removed
/// files, in a tree and its subtrees.
#[test]
fn reads_share_unchanged_files_with_the_read_before() {
    let upstream = GitRepo::new();
    upstream
        .write("a.yaml", &isvc("a", "file:///a1.onnx"))
        .write("b.yaml", &isvc("b", "file:///b1.onnx"))
        .write("c.yaml", &isvc("c", "file:///c1.onnx"))
        .write("sub/d.yaml", &isvc("d", "file:///d1.onnx"))
        .write("sub/e.yaml", &isvc("e", "file:///e1.onnx"));
    let first = upstream.commit("five");
    upstream
        .write("b.yaml", &isvc("b", "file:///b2.onnx"))
        .write("aa.yaml", &isvc("aa", "file:///aa1.onnx"))
        .remove("c.yaml")
        .remove("sub/d.yaml")
        .write("sub/moved.yaml", &isvc("d", "file:///d1.onnx"));
    let second = upstream.commit("one changed, one added, one removed, one moved");

    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(upstream.path().to_str().unwrap(), &dir.path().join("m")).unwrap();
    mirror.fetch(TIMEOUT).unwrap();
    let before = mirror.read_manifests(&first, ".").unwrap();
    let after = mirror.read_manifests(&second, ".").unwrap();
    assert_eq!(
        names(&after),
        [
            "a.yaml",
            "aa.yaml",
            "b.yaml",
            "sub/e.yaml",
            "sub/moved.yaml"
        ]
    );
    let shared = |name: &str| {
        let find = |s: &manifest::Sources| {
            let (id, _) = s.files().find(|(_, f)| f.name == name).unwrap();
            std::sync::Arc::clone(s.shared(id))
        };
        std::sync::Arc::ptr_eq(&find(&before), &find(&after))
    };
    assert!(shared("a.yaml") && shared("sub/e.yaml"));
    assert!(!shared("b.yaml"));
    assert!(after.get(2).text().contains("b2.onnx"));
    assert!(after.get(4).text().contains("d1.onnx"));
    // Going back reads the old texts again, and the one after that shares with it.
    let again = mirror.read_manifests(&first, ".").unwrap();
    assert_eq!(names(&again), names(&before));
    assert!(again.get(1).text().contains("b1.onnx"));
    let texts = |s: &manifest::Sources| {
        s.files()
            .map(|(_, f)| f.text().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&again), texts(&before));
}

#[test]
fn incremental_fetch_follows_new_and_rewritten_history() {
    let upstream = GitRepo::new();
    upstream.write("a.yaml", &isvc("a", "file:///1.onnx"));
    let first = upstream.commit("one");
    upstream.write("a.yaml", &isvc("a", "file:///2.onnx"));
    upstream.commit("two");

    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", upstream.path().display());
    let mirror = Mirror::open(&url, &dir.path().join("m")).unwrap();
    mirror.fetch(TIMEOUT).unwrap();

    // A force-push: main rewritten from the first commit.
    upstream.git(&["reset", "--quiet", "--hard", &first]);
    upstream.write("a.yaml", &isvc("a", "file:///3.onnx"));
    let rewritten = upstream.commit("three, rewritten");
    upstream.branch("feature");
    upstream.write("b.yaml", &isvc("b", "file:///b.onnx"));
    let feature = upstream.commit("feature work");

    // A second open of the same directory reuses the mirror.
    let again = Mirror::open(&url, &dir.path().join("m")).unwrap();
    again.fetch(TIMEOUT).unwrap();
    assert_eq!(again.resolve("main").unwrap(), rewritten);
    assert_eq!(again.resolve("feature").unwrap(), feature);
    let sources = again.read_manifests(&rewritten, ".").unwrap();
    assert!(sources.get(0).text().contains("3.onnx"));
}

#[test]
fn a_silent_server_times_out() {
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut open = Vec::new();
        for s in listener.incoming() {
            open.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(&format!("http://127.0.0.1:{port}/repo.git"), dir.path()).unwrap();
    let err = mirror.fetch(Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[test]
fn an_unreachable_remote_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    assert!(Mirror::open(gone.to_str().unwrap(), &dir.path().join("m")).is_err());
    let mirror =
        Mirror::open(&format!("file://{}", gone.display()), &dir.path().join("m")).unwrap();
    assert!(matches!(mirror.fetch(TIMEOUT), Err(Error::Fetch { .. })));
}

#[test]
fn smart_http_server() {
    let upstream = GitRepo::new();
    upstream.write("deploy/iris.yaml", &isvc("iris", "file:///1.onnx"));
    let first = upstream.commit("first");
    upstream.tag("v1");
    let served = tempfile::tempdir().unwrap();
    let bare = test_support::bare_clone(upstream.path(), served.path(), "models.git");
    let server = test_support::GitHttpServer::start(served.path());

    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(&server.url("models.git"), &dir.path().join("m")).unwrap();
    mirror.fetch(TIMEOUT).unwrap();
    assert_eq!(mirror.resolve("HEAD").unwrap(), first);
    assert_eq!(mirror.resolve("v1").unwrap(), first);
    let sources = mirror.read_manifests(&first, "deploy").unwrap();
    assert_eq!(names(&sources), ["iris.yaml"]);

    // A push while the mirror exists: the next fetch is incremental.
    upstream.write("deploy/iris.yaml", &isvc("iris", "file:///2.onnx"));
    let second = upstream.commit("second");
    upstream.push_to(&bare);
    mirror.fetch(TIMEOUT).unwrap();
    assert_eq!(mirror.resolve("main").unwrap(), second);

    // A repository the server does not have.
    let missing = Mirror::open(&server.url("nope.git"), &dir.path().join("n")).unwrap();
    assert!(matches!(missing.fetch(TIMEOUT), Err(Error::Fetch { .. })));
}
