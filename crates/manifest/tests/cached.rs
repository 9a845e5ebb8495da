//! `parse_cached` gives what `parse` gives, whatever changed between two parses.

use std::path::Path;

use manifest::{Options, ParseCache, Parsed, SourceFile, Sources};

/// Every fixture, valid and invalid, as (name, text).
fn fixtures() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["valid", "invalid"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(dir);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read_to_string(&p).unwrap()));
        }
    }
    out
}

fn sources(files: &[(String, String)]) -> Sources {
    let mut s = Sources::new();
    for (n, t) in files {
        s.push(SourceFile::new(n.clone(), t.clone()));
    }
    s
}

fn same(a: &Parsed, b: &Parsed) {
    assert_eq!(a.manifests, b.manifests);
    assert_eq!(a.diagnostics, b.diagnostics);
    assert_eq!(a.resources, b.resources);
}

#[test]
fn a_cached_parse_equals_a_fresh_one_across_edits_additions_and_removals() {
    let all = fixtures();
    let options = Options {
        require_digest: false,
    };
    let mut cache = ParseCache::default();
    // Start from every other fixture, then edit, add and remove files.
    let mut files: Vec<(String, String)> = all.iter().step_by(2).cloned().collect();
    let mut steps: Vec<Vec<(String, String)>> = vec![files.clone()];
    files[0].1.push_str("\n# edited\n");
    steps.push(files.clone());
    files.extend(all.iter().skip(1).step_by(2).cloned());
    steps.push(files.clone());
    files.remove(1);
    steps.push(files.clone());
    files.truncate(3);
    steps.push(files.clone());
    steps.push(all.clone());
    for (i, step) in steps.iter().enumerate() {
        let s = sources(step);
        let cached = manifest::parse_cached(&s, options, &mut cache);
        let fresh = manifest::parse(&s, options);
        same(&cached, &fresh);
        // Twice in a row: all from the cache.
        same(&manifest::parse_cached(&s, options, &mut cache), &fresh);
        if i + 1 == steps.len() {
            assert!(fresh.has_errors(), "the invalid fixtures are in");
        }
    }
    // The option is part of what a file decodes to.
    let s = sources(&all);
    let strict = Options {
        require_digest: true,
    };
    same(
        &manifest::parse_cached(&s, strict, &mut cache),
        &manifest::parse(&s, strict),
    );
}
