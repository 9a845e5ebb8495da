//! The parser never panics, whatever the input: arbitrary bytes, YAML-like noise, and
//! random edits of the valid fixtures (which reach deep into the typed decoders).

use manifest::{Options, SourceFile, Sources};
use proptest::prelude::*;

fn parse_text(text: String) -> manifest::Parsed {
    let mut sources = Sources::new();
    sources.push(SourceFile::new("input.yaml", text));
    let parsed = manifest::parse(
        &sources,
        Options {
            require_digest: true,
        },
    );
    // Rendering must not panic either, and every span must lie inside the file.
    let len = sources.get(0).text().len();
    for d in &parsed.diagnostics {
        assert!(
            d.span.start <= d.span.end && d.span.end <= len,
            "span out of bounds: {d:?}"
        );
        assert!(d.line() >= 1 && d.column() >= 1);
        let _ = d.render(&sources);
    }
    parsed
}

fn fixtures() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/valid");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out
}

/// Tokens that matter to YAML and to the decoders.
const TOKENS: &[&str] = &[
    "\n",
    "  ",
    "- ",
    ": ",
    "---\n",
    "...\n",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "|",
    ">",
    "&a ",
    "*a",
    "!!str ",
    "# c",
    "\t",
    "~",
    "null",
    "true",
    "-1",
    "101",
    "1e9",
    "0x1f",
    "name",
    "spec",
    "kind: Rollout",
    "kind: InferenceService",
    "apiVersion: argoproj.io/v1alpha1",
    "apiVersion: serving.kserve.io/v1beta1",
    "setWeight",
    "pause",
    "{{args.x}}",
    "é",
    "\u{feff}",
    "\r\n",
];

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Edit::Insert { at, token }),
    ]
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut text: String, edits: &[Edit]) -> String {
    for e in edits {
        match e {
            Edit::Delete { at, len } => {
                let a = floor_char_boundary(&text, at % (text.len() + 1));
                let b = floor_char_boundary(&text, a + len);
                text.replace_range(a..b, "");
            }
            Edit::Insert { at, token } => {
                let a = floor_char_boundary(&text, at % (text.len() + 1));
                text.insert_str(a, TOKENS[*token]);
            }
        }
    }
    text
}

proptest! {
    // 256 cases each by default; set PROPTEST_CASES for a longer run.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_text(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn yaml_like_noise(tokens in proptest::collection::vec(0..TOKENS.len(), 0..120)) {
        parse_text(tokens.iter().map(|&t| TOKENS[t]).collect());
    }

    #[test]
    fn edited_fixtures(which in any::<usize>(), edits in proptest::collection::vec(edit(), 1..6)) {
        let all = fixtures();
        let text = apply(all[which % all.len()].clone(), &edits);
        parse_text(text);
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let parsed = parse_text(deep);
    assert!(parsed.has_errors());
    let deep_block: String = (0..5_000)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    assert!(parse_text(deep_block).has_errors());
}

#[test]
fn alias_expansion_is_bounded() {
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..12 {
        let prev = if i == 0 {
            "a".to_owned()
        } else {
            format!("b{}", i - 1)
        };
        bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let parsed = parse_text(bomb);
    assert!(
        parsed
            .diagnostics
            .iter()
            .any(|d| d.message.contains("more than"))
    );
}
