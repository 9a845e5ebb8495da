//! A YAML tree with a source span on every node, built from `saphyr-parser` events.
//!
//! Type resolution of plain scalars (YAML 1.2 core schema) is left to the decoder, which knows
//! what type each field wants and can say so when it gets something else.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};

use crate::diag::{Code, Diagnostic, Related};
use crate::source::{FileId, SourceFile, Span};

/// Deeper nesting than this is refused (a manifest nests a dozen levels at most).
const MAX_DEPTH: usize = 128;
/// Total node budget per document, counting alias expansions (guards against "billion laughs").
const MAX_NODES: usize = 1_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    /// A scalar; `plain` is false for quoted and block scalars and for `!!str`-tagged ones,
    /// which are always strings.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in source order; duplicate keys are reported while building.
    Map(Vec<(Node, Node)>),
}

/// What a plain scalar resolves to under the YAML 1.2 core schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

// === impl Node ===

impl Node {
    pub fn resolve(&self) -> Option<Resolved<'_>> {
        match &self.kind {
            NodeKind::Scalar { value, plain: true } => Some(resolve_plain(value)),
            NodeKind::Scalar {
                value,
                plain: false,
            } => Some(Resolved::Str(value)),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.resolve(), Some(Resolved::Null))
    }

    /// The scalar's text, whatever type it resolves to.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// A short description of the node's type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
            NodeKind::Scalar { .. } => match self.resolve() {
                Some(Resolved::Null) => "null",
                Some(Resolved::Bool(_)) => "a boolean",
                Some(Resolved::Int(_)) => "an integer",
                Some(Resolved::Float(_)) => "a number",
                _ => "a string",
            },
        }
    }

    fn count(&self) -> usize {
        match &self.kind {
            NodeKind::Scalar { .. } => 1,
            NodeKind::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            NodeKind::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.count() + v.count())
                    .sum::<usize>()
            }
        }
    }
}

pub(crate) fn resolve_plain(s: &str) -> Resolved<'_> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(v) = i64::from_str_radix(hex, 16) {
            return Resolved::Int(v);
        }
    } else if let Some(oct) = s.strip_prefix("0o")
        && let Ok(v) = i64::from_str_radix(oct, 8)
    {
        return Resolved::Int(v);
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(v) = s.parse::<i64>() {
            return Resolved::Int(v);
        }
        return Resolved::Float(s.parse().unwrap_or(f64::NAN));
    }
    if is_core_float(digits)
        && let Ok(v) = s.parse::<f64>()
    {
        return Resolved::Float(v);
    }
    Resolved::Str(s)
}

/// `[0-9]*(\.[0-9]*)?([eE][-+]?[0-9]+)?` with at least one digit before the exponent.
fn is_core_float(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits_ok(int) && digits_ok(frac) && (int.len() + frac.len()) > 0;
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits_ok(e)
    });
    mantissa_ok && exp_ok
}

/// One YAML document of a file, with the line its text starts on.
#[derive(Debug)]
pub(crate) struct Document {
    pub root: Node,
}

/// Parses every document of a file. Syntax errors are reported per document, so one broken
/// document does not hide problems in the others.
pub(crate) fn parse_file(
    file_id: FileId,
    file: &SourceFile,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Document> {
    let mut docs = Vec::new();
    for (first_line, chunk) in crate::source::split_documents(file.text()) {
        parse_chunk(file_id, file, first_line, chunk, &mut docs, diags);
    }
    docs
}

enum Frame {
    Seq {
        span: Span,
        flow: bool,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        span: Span,
        flow: bool,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
    },
}

struct Builder<'f> {
    file_id: FileId,
    file: &'f SourceFile,
    line_offset: u32,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    /// Spaces put in front of a closing bracket, by the parser's (1-based) line (see
    /// [`parse_chunk`]): positions the parser reports on that line, from that column on, are
    /// that many columns to the right of where they are in the file.
    shifts: &'f HashMap<usize, usize>,
}

impl Builder<'_> {
    fn col(&self, line: usize, col: usize) -> u32 {
        let shift = self.shifts.get(&line).copied().unwrap_or(0);
        col.saturating_sub(shift) as u32
    }

    fn span(&self, s: &YSpan) -> Span {
        let start = (
            s.start.line() as u32 + self.line_offset,
            self.col(s.start.line(), s.start.col()),
        );
        let end = (
            s.end.line() as u32 + self.line_offset,
            self.col(s.end.line(), s.end.col()),
        );
        self.file.span_between(start, end)
    }

    fn point(&self, line: usize, col: usize, len: usize) -> Span {
        self.file
            .span_at(line as u32 + self.line_offset, self.col(line, col), len)
    }

    /// The field path of the node being built at the top of the stack.
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Seq { items, .. } => path.push_str(&format!("[{}]", items.len())),
                Frame::Map { pending_key, .. } => {
                    if let Some(k) = pending_key.as_ref().and_then(Node::scalar_text) {
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(k);
                    }
                }
            }
        }
        path
    }

    /// Adds a finished node to its parent; returns the root when the document is complete.
    fn add(&mut self, node: Node, diags: &mut Vec<Diagnostic>) -> Option<Node> {
        // With a key pending, this is the path of the value being added.
        let path = self.path();
        match self.stack.last_mut() {
            None => Some(node),
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                None
            }
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => {
                match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => {
                        if let Some(text) = key.scalar_text()
                            && let Some((first, _)) =
                                entries.iter().find(|(k, _)| k.scalar_text() == Some(text))
                        {
                            diags.push(
                                Diagnostic::error(
                                    Code::DuplicateKey,
                                    self.file_id,
                                    key.span,
                                    format!("key `{text}` is defined twice in this mapping"),
                                )
                                .with_related(Related {
                                    file: self.file_id,
                                    span: first.span,
                                    message: "first defined here".into(),
                                })
                                .with_hint("keep one of the two; YAML does not merge them")
                                .with_field(&path),
                            );
                        }
                        entries.push((key, node));
                    }
                }
                None
            }
        }
    }
}

/// How many closing brackets of one document are re-indented at most (see [`parse_chunk`]).
const MAX_BRACKET_FIXES: usize = 64;

/// Parses one document. A closing `]` or `}` alone on its line, at or left of the indentation
/// of the key it belongs to (`scopes: [` ... `]` under the key), is an indentation error to
/// the YAML spec but accepted by libyaml and go-yaml, so by Kubernetes and Argo: the document
/// is parsed again with that bracket moved right, and positions mapped back to the file.
fn parse_chunk(
    file_id: FileId,
    file: &SourceFile,
    first_line: u32,
    chunk: &str,
    docs: &mut Vec<Document>,
    diags: &mut Vec<Diagnostic>,
) {
    let mut text = std::borrow::Cow::Borrowed(chunk);
    let mut shifts: HashMap<usize, usize> = HashMap::new();
    let (docs_before, diags_before) = (docs.len(), diags.len());
    for _ in 0..=MAX_BRACKET_FIXES {
        let Some(line) = parse_chunk_once(file_id, file, first_line, &text, &shifts, docs, diags)
        else {
            return;
        };
        if shifts.values().sum::<usize>() >= MAX_BRACKET_FIXES {
            break;
        }
        docs.truncate(docs_before);
        diags.truncate(diags_before);
        let mut fixed = String::with_capacity(text.len() + 1);
        for (i, l) in text.split_inclusive('\n').enumerate() {
            if i == line {
                fixed.push(' ');
            }
            fixed.push_str(l);
        }
        // The parser's lines are 1-based.
        *shifts.entry(line + 1).or_default() += 1;
        text = std::borrow::Cow::Owned(fixed);
    }
    // Out of fixes: report the document as it is.
    docs.truncate(docs_before);
    diags.truncate(diags_before);
    let none = HashMap::new();
    parse_chunk_once(file_id, file, first_line, chunk, &none, docs, diags);
}

/// Whether line `line` (0-based) of `text` holds only a closing bracket (with a comma or a
/// comment after it), starting at column `col`.
fn lone_closing_bracket(text: &str, line: usize, col: usize) -> bool {
    let Some(l) = text.lines().nth(line) else {
        return false;
    };
    let trimmed = l.trim_start();
    let indent = l.len() - trimmed.len();
    let rest = trimmed
        .strip_prefix(']')
        .or_else(|| trimmed.strip_prefix('}'))
        .map(str::trim_start);
    indent == col
        && rest.is_some_and(|r| {
            let r = r.strip_prefix(',').unwrap_or(r).trim_start();
            r.is_empty() || r.starts_with('#')
        })
}

/// One parse of a document's text; `Some(line)` instead of reporting an indentation error at
/// a lone closing bracket on that line of the chunk, which [`parse_chunk`] fixes.
fn parse_chunk_once(
    file_id: FileId,
    file: &SourceFile,
    first_line: u32,
    chunk: &str,
    shifts: &HashMap<usize, usize>,
    docs: &mut Vec<Document>,
    diags: &mut Vec<Diagnostic>,
) -> Option<usize> {
    let mut b = Builder {
        file_id,
        file,
        line_offset: first_line - 1,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        shifts,
    };
    let mut doc_diags = Vec::new();
    for event in Parser::new_from_str(chunk) {
        let (event, yspan) = match event {
            Ok(e) => e,
            Err(err) => {
                let m = err.marker();
                // saphyr's lines are 1-based, its columns 0-based.
                let chunk_line = m.line().saturating_sub(1);
                if err.info() == "invalid indentation"
                    && lone_closing_bracket(chunk, chunk_line, m.col())
                {
                    return Some(chunk_line);
                }
                let span = b.point(m.line(), m.col(), 1);
                let mut d = Diagnostic::error(
                    Code::YamlSyntax,
                    file_id,
                    span,
                    format!("YAML syntax error: {}", err.info()),
                );
                // The parser reports where it noticed; point at an unclosed bracket as well.
                let open = b.stack.iter().rev().find_map(|f| match f {
                    Frame::Seq {
                        span, flow: true, ..
                    }
                    | Frame::Map {
                        span, flow: true, ..
                    } => Some(*span),
                    _ => None,
                });
                if let Some(open) = open.filter(|o| o.line < span.line) {
                    let text = &file.text()[open.start..open.end.max(open.start + 1)];
                    d = d.with_related(Related {
                        file: file_id,
                        span: open,
                        message: format!("this `{text}` is not closed"),
                    });
                }
                diags.push(d);
                return None;
            }
        };
        let span = b.span(&yspan);
        let finished = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                b.stack.clear();
                b.anchors.clear();
                b.nodes = 0;
                None
            }
            Event::DocumentEnd => None,
            Event::Alias(id) => match b.anchors.get(&id).cloned() {
                Some(mut node) => {
                    b.nodes += node.count();
                    node.span = span;
                    b.add(node, &mut doc_diags)
                }
                None => {
                    doc_diags.push(Diagnostic::error(
                        Code::YamlSyntax,
                        file_id,
                        span,
                        "alias refers to an unknown anchor",
                    ));
                    diags.append(&mut doc_diags);
                    return None;
                }
            },
            Event::Scalar(value, style, anchor, tag) => {
                b.nodes += 1;
                let str_tag = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                let node = Node {
                    kind: NodeKind::Scalar {
                        value: value.into_owned(),
                        plain: style == ScalarStyle::Plain && !str_tag,
                    },
                    span,
                };
                if anchor > 0 {
                    b.anchors.insert(anchor, node.clone());
                }
                b.add(node, &mut doc_diags)
            }
            Event::SequenceStart(anchor, _) => {
                b.nodes += 1;
                b.stack.push(Frame::Seq {
                    span,
                    flow: span.end > span.start,
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                b.nodes += 1;
                b.stack.push(Frame::Map {
                    span,
                    flow: span.end > span.start,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match b.stack.pop() {
                    Some(Frame::Seq {
                        span: s,
                        anchor,
                        items,
                        ..
                    }) => (
                        Node {
                            kind: NodeKind::Seq(items),
                            span: Span {
                                end: span.end.max(s.start),
                                ..s
                            },
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        span: s,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            kind: NodeKind::Map(entries),
                            span: Span {
                                end: span.end.max(s.start),
                                ..s
                            },
                        },
                        anchor,
                    ),
                    None => continue,
                };
                if anchor > 0 {
                    b.anchors.insert(anchor, node.clone());
                }
                b.add(node, &mut doc_diags)
            }
        };
        if b.stack.len() > MAX_DEPTH || b.nodes > MAX_NODES {
            let what = if b.nodes > MAX_NODES {
                format!("the document expands to more than {MAX_NODES} nodes (aliases included)")
            } else {
                format!("the document nests deeper than {MAX_DEPTH} levels")
            };
            diags.push(Diagnostic::error(Code::YamlSyntax, file_id, span, what));
            return None;
        }
        if let Some(root) = finished {
            diags.append(&mut doc_diags);
            docs.push(Document { root });
        }
    }
    diags.append(&mut doc_diags);
    None
}
