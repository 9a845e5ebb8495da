//! Golden tests: every file under `data/valid` parses without errors and every file under
//! `data/invalid` has at least one; the full output of each is kept as an insta snapshot.
//! Update snapshots with `cargo insta review` (or `INSTA_UPDATE=always cargo test`).

use std::fmt::Write;
use std::path::Path;

use manifest::{Options, Parsed, SourceFile, Sources};

/// Parses one fixture; files whose name contains `require-digest` get that option.
fn parse_fixture(path: &Path) -> (Sources, Parsed) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let mut sources = Sources::new();
    sources.push(SourceFile::new(&name, text));
    let options = Options {
        require_digest: name.contains("require-digest"),
    };
    let parsed = manifest::parse(&sources, options);
    (sources, parsed)
}

/// A compact line per diagnostic, the shape `crossfade lint --output json` carries.
fn summary(sources: &Sources, parsed: &Parsed) -> String {
    let mut out = String::new();
    for d in &parsed.diagnostics {
        writeln!(
            out,
            "{}[{}] {}:{}:{} {} | {}{}",
            d.severity.as_str(),
            d.code,
            sources.get(d.file).name,
            d.line(),
            d.column(),
            if d.field.is_empty() { "-" } else { &d.field },
            d.message,
            d.hint
                .as_deref()
                .map(|h| format!(" | hint: {h}"))
                .unwrap_or_default(),
        )
        .unwrap();
    }
    out
}

fn rendered(sources: &Sources, parsed: &Parsed) -> String {
    parsed
        .diagnostics
        .iter()
        .map(|d| d.render(sources))
        .collect::<Vec<_>>()
        .join("")
}

fn resources(sources: &Sources, parsed: &Parsed) -> String {
    let mut out = String::new();
    for r in parsed.resources.iter() {
        writeln!(
            out,
            "{} {} {}/{} {}:{}{}",
            r.api_version,
            r.kind,
            r.namespace.as_deref().unwrap_or("-"),
            r.name,
            sources.get(r.file).name,
            r.line,
            if r.used { "" } else { " (skipped)" }
        )
        .unwrap();
    }
    out
}

#[test]
fn valid() {
    insta::glob!("data/valid/*.yaml", |path| {
        let (sources, parsed) = parse_fixture(path);
        assert!(
            !parsed.has_errors(),
            "{} has errors:\n{}",
            path.display(),
            rendered(&sources, &parsed)
        );
        assert!(
            !parsed.resources.is_empty(),
            "{} lists no resource",
            path.display()
        );
        let snapshot = format!(
            "# resources\n{}\n# diagnostics\n{}\n{}\n# manifests\n{:#?}\n",
            resources(&sources, &parsed),
            summary(&sources, &parsed),
            rendered(&sources, &parsed),
            parsed.manifests
        );
        insta::assert_snapshot!(snapshot);
    });
}

#[test]
fn invalid() {
    insta::glob!("data/invalid/*.yaml", |path| {
        let (sources, parsed) = parse_fixture(path);
        assert!(parsed.has_errors(), "{} has no error", path.display());
        let snapshot = format!(
            "# resources\n{}\n# diagnostics\n{}\n{}",
            resources(&sources, &parsed),
            summary(&sources, &parsed),
            rendered(&sources, &parsed),
        );
        insta::assert_snapshot!(snapshot);
    });
}
