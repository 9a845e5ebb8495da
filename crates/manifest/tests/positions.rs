//! Lines and columns as an editor shows them, whatever the encoding details of the file.

use manifest::{Code, Options, SourceFile, Sources};

fn diagnostics(text: &str) -> Vec<(Code, u32, u32, String)> {
    let mut sources = Sources::new();
    sources.push(SourceFile::new("f.yaml", text));
    manifest::parse(&sources, Options::default())
        .diagnostics
        .into_iter()
        .map(|d| (d.code, d.line(), d.column(), d.field))
        .collect()
}

const ISVC: &str = "apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
spec:
  predictor:
    canaryTrafficPercent: 120
    onnx: {storageUri: \"file:///m.onnx\"}
";

fn out_of_range_at(line: u32, column: u32) -> Vec<(Code, u32, u32, String)> {
    vec![(
        Code::OutOfRange,
        line,
        column,
        "spec.predictor.canaryTrafficPercent".to_owned(),
    )]
}

#[test]
fn plain_file() {
    assert_eq!(diagnostics(ISVC), out_of_range_at(7, 27));
}

#[test]
fn byte_order_mark_is_not_content() {
    assert_eq!(
        diagnostics(&format!("\u{feff}{ISVC}")),
        out_of_range_at(7, 27)
    );
}

#[test]
fn crlf_line_endings() {
    assert_eq!(
        diagnostics(&ISVC.replace('\n', "\r\n")),
        out_of_range_at(7, 27)
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = ISVC.replace(
        "canaryTrafficPercent: 120",
        "canaryTrafficPercent: 120 # ünïcödé",
    );
    assert_eq!(diagnostics(&text), out_of_range_at(7, 27));
    let text = "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {labels: {a: \"é\"}, name: \"X\"}\nspec: {source: {repoURL: /r}}\n";
    let d = diagnostics(text);
    assert_eq!((d[0].0, d[0].1, d[0].2), (Code::InvalidName, 3, 36));
}

#[test]
fn later_documents_count_lines_from_the_start_of_the_file() {
    let text = format!("# leading comment\n---\n{ISVC}---\n{ISVC}");
    let expected = vec![
        out_of_range_at(9, 27).remove(0),
        (Code::DuplicateResource, 15, 9, "metadata.name".to_owned()),
        out_of_range_at(18, 27).remove(0),
    ];
    assert_eq!(diagnostics(&text), expected);
}

#[test]
fn a_predictor_without_a_model_points_at_the_predictor() {
    let text = "apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
spec:
  predictor:
    canaryTrafficPercent: 10
";
    assert_eq!(
        diagnostics(text),
        vec![(Code::MissingField, 6, 3, "spec.predictor.model".to_owned())]
    );
}

/// A flow sequence closed at the key's indentation (or further left), as go-yaml accepts:
/// parsed, and positions on and after the bracket's line are the file's.
#[test]
fn a_closing_bracket_left_of_its_key_is_accepted_where_it_stands() {
    for bracket_indent in ["  ", ""] {
        let text = format!(
            "apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  labels: {{team: ml}}
  finalizers: [
    \"a\"
{bracket_indent}]
spec:
  predictor:
    canaryTrafficPercent: 120
    onnx: {{storageUri: \"file:///m.onnx\"}}
"
        );
        assert_eq!(
            diagnostics(&text),
            out_of_range_at(11, 27),
            "with the bracket at column {}",
            bracket_indent.len() + 1
        );
    }
    // A bracket followed by more than a comment is still an error, where it is.
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  finalizers: [\n    \"a\"\n  ] x\n";
    let d = diagnostics(text);
    assert_eq!((d[0].0, d[0].1), (Code::YamlSyntax, 7), "{d:?}");
}
