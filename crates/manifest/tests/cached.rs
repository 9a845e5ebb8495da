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

/// The (namespace, name) of every InferenceService, sorted.
fn ids(p: &Parsed) -> Vec<(String, String)> {
    let mut ids: Vec<_> = p
        .manifests
        .inference_services
        .iter()
        .map(|i| {
            (
                i.value.meta.namespace_or_default().to_owned(),
                i.value.meta.name.clone(),
            )
        })
        .collect();
    ids.sort();
    ids
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
    let mut before: Option<Parsed> = None;
    for (i, step) in steps.iter().enumerate() {
        let s = sources(step);
        let cached = manifest::parse_cached(&s, options, &mut cache);
        let fresh = manifest::parse(&s, options);
        same(&cached, &fresh);
        // The changes turn the InferenceServices of the parse before into these.
        let c = &cached.changes;
        assert_eq!((c.base, c.generation), (2 * i as u64, 2 * i as u64 + 1));
        let mut expected = before.as_ref().map(ids).unwrap_or_default();
        for gone in &c.removed_inference_services {
            let at = expected
                .iter()
                .position(|id| id == gone)
                .expect("was there");
            expected.remove(at);
        }
        for &at in &c.inference_services {
            let isvc = &cached.manifests.inference_services[at].value;
            expected.push((
                isvc.meta.namespace_or_default().to_owned(),
                isvc.meta.name.clone(),
            ));
        }
        expected.sort();
        assert_eq!(expected, ids(&cached), "step {i}");
        if before
            .as_ref()
            .is_some_and(|b| b.manifests.rollouts != cached.manifests.rollouts)
        {
            assert!(c.rollouts, "step {i}: the Rollouts changed");
        }
        // Twice in a row: all from the cache, nothing changed.
        let again = manifest::parse_cached(&s, options, &mut cache);
        same(&again, &fresh);
        assert!(again.changes.inference_services.is_empty() && !again.changes.rollouts);
        assert!(again.changes.removed_inference_services.is_empty());
        before = Some(again);
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
