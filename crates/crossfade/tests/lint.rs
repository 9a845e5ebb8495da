//! `crossfade lint` as a user runs it: exit status, text and JSON output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn lint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crossfade"))
        .arg("lint")
        .args(args)
        .current_dir(root())
        .output()
        .expect("run crossfade")
}

fn json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = lint(&all);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap(), v)
}

#[test]
fn bundled_example_is_clean() {
    let out = lint(&["examples/iris"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("0 error(s), 0 warning(s)"), "{stdout}");
    assert!(
        stdout.contains("InferenceService  models/iris "),
        "{stdout}"
    );
}

#[test]
fn valid_fixtures_exit_zero_and_list_every_resource() {
    // Each fixture alone: several are variants of the same KServe docs example, so together
    // they define `sklearn-iris` more than once (which lint rightly reports).
    let dir = root().join("crates/manifest/tests/data/valid");
    let mut resources = Vec::new();
    let mut diagnostics = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let (code, v) = json(&[path.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {v:#}", path.display());
        resources.extend(v["resources"].as_array().unwrap().iter().cloned());
        diagnostics.extend(v["diagnostics"].as_array().unwrap().iter().cloned());
    }
    let names: Vec<String> = resources
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["kind"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "Application/guestbook",
        "InferenceService/sklearn-iris",
        "ClusterServingRuntime/kserve-sklearnserver",
        "Rollout/iris",
        "AnalysisTemplate/success-rate",
        "ClusterAnalysisTemplate/latency",
        "ConfigMap/settings",
    ] {
        assert!(
            names.contains(&expected.to_owned()),
            "{expected} missing from {names:?}"
        );
    }
    // Every resource has the public fields, `file` relative to the directory given.
    for r in resources {
        for key in ["apiVersion", "kind", "namespace", "name", "file", "line"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
        assert!(r["file"].as_str().unwrap().ends_with(".yaml"));
        assert!(r["line"].as_u64().unwrap() >= 1);
    }
    assert!(diagnostics.iter().all(|d| d["severity"] == "warning"));

    // `file` is relative to the directory given.
    let (code, v) = json(&["crates/manifest/tests/data/valid/../valid/"]);
    assert_eq!(
        code, 1,
        "the fixtures together define sklearn-iris three times"
    );
    let guestbook = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "guestbook" && r["kind"] == "Application")
        .unwrap();
    assert_eq!(guestbook["file"], "argocd-guestbook.yaml");
    assert_eq!(guestbook["line"], 2);
    assert_eq!(guestbook["namespace"], "argocd");
}

#[test]
fn invalid_manifests_exit_one_with_file_line_and_field() {
    let (code, v) = json(&["crates/manifest/tests/data/invalid"]);
    assert_eq!(code, 1);
    let diagnostics = v["diagnostics"].as_array().unwrap();
    let find = |file: &str, code: &str| {
        diagnostics
            .iter()
            .find(|d| d["file"] == file && d["code"] == code && d["severity"] == "error")
            .unwrap_or_else(|| panic!("no {code} in {file}: {v:#}"))
    };
    let d = find("ranges.yaml", "out-of-range");
    assert_eq!(d["severity"], "error");
    assert_eq!(d["line"], 7);
    assert_eq!(d["column"], 27);
    assert_eq!(d["field"], "spec.predictor.canaryTrafficPercent");
    assert!(d["message"].as_str().unwrap().contains("101"));

    let d = find("storage-uri.yaml", "unsupported-scheme");
    assert_eq!(
        (d["line"].as_u64(), d["field"].as_str()),
        (Some(9), Some("spec.predictor.model.storageUri"))
    );
    assert!(d["hint"].as_str().unwrap().contains("s3"));

    let (_, alone) = json(&["crates/manifest/tests/data/invalid/duplicates.yaml"]);
    let d = &alone["diagnostics"][0];
    assert_eq!(d["code"], "duplicate-resource");
    assert_eq!(d["line"], 12);
    assert!(
        d["message"].as_str().unwrap().contains("duplicates.yaml:4"),
        "{d}"
    );
    // Across files, both places are named too.
    let d = find("names.yaml", "invalid-name");
    assert_eq!(d["field"], "metadata.name");

    let d = find("references.yaml", "unresolved-reference");
    assert_eq!(
        d["field"],
        "spec.strategy.canary.steps[1].analysis.templates[0].templateName"
    );

    let d = find("yaml-syntax.yaml", "yaml-syntax");
    assert_eq!(d["line"], 11);

    for d in diagnostics {
        for key in [
            "severity", "code", "file", "line", "column", "field", "message", "hint",
        ] {
            assert!(d.get(key).is_some(), "{key} missing in {d}");
        }
    }
}

#[test]
fn require_digest_flag() {
    let file = "crates/manifest/tests/data/valid/kserve-canary.yaml";
    assert_eq!(json(&[file]).0, 0);
    let (code, v) = json(&[file, "--require-digest"]);
    assert_eq!(code, 1);
    let unpinned = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "unpinned-artifact")
        .unwrap_or_else(|| panic!("{v:#}"));
    // A single file keeps the path as given.
    assert_eq!(unpinned["file"], file);
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(lint(&["--output", "xml"]).status.code(), Some(2));
    assert_eq!(lint(&["--no-such-flag"]).status.code(), Some(2));
    let out = lint(&["does/not/exist"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does/not/exist"));
}

#[test]
fn unreadable_file_is_reported_and_others_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("binary.yaml"), [0xff, 0xfe, 0x00, 0x41]).unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/ignored.yaml"), "not: [valid").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not: [yaml").unwrap();
    std::fs::write(
        dir.path().join("nested/app.yml"),
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: app}\nspec: {source: {repoURL: /srv/git/m}}\n",
    )
    .unwrap();
    let (code, v) = json(&[dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["diagnostics"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["diagnostics"][0]["code"], "unreadable-file");
    assert_eq!(v["diagnostics"][0]["file"], "binary.yaml");
    assert_eq!(v["resources"][0]["file"], "nested/app.yml");
}

#[test]
fn symlink_cycles_and_repeated_paths_read_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.yaml");
    std::fs::write(
        &app,
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: app}\nspec: {source: {repoURL: /srv/git/m}}\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("loop")).unwrap();
    let (code, v) = json(&[dir.path().to_str().unwrap(), app.to_str().unwrap()]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["resources"].as_array().unwrap().len(), 1, "{v:#}");
}

#[test]
fn symlinks_are_not_followed_out_of_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(
        repo.join("iris.yaml"),
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {name: iris}\nspec:\n  predictor:\n    model: {modelFormat: {name: onnx}, storageUri: \"s3://b/iris\"}\n",
    )
    .unwrap();
    // What an attacker's pull request would add: links to files outside the repository.
    std::os::unix::fs::symlink("/etc/passwd", repo.join("passwd.yaml")).unwrap();
    std::os::unix::fs::symlink("/proc/self/environ", repo.join("environ.yml")).unwrap();
    std::os::unix::fs::symlink("/etc", repo.join("etc")).unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.yaml"), "token: outside-secret-value\n").unwrap();
    std::os::unix::fs::symlink(&outside, repo.join("linked")).unwrap();
    let out = lint(&[repo.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for leak in [
        "root:",
        "outside-secret-value",
        "PATH=",
        "passwd.yaml",
        "environ.yml",
    ] {
        assert!(!text.contains(leak), "{leak} in:\n{text}");
    }
    // Exactly the one file `crossfade up` would read from a commit of this tree.
    assert!(text.contains("1 file(s), 1 resource(s)"), "{text}");
}
