//! Typed decoding of the YAML tree: one helper per value shape, each reporting what is wrong
//! with the field path and location, and carrying on so that every problem is reported.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::{Code, Diagnostic};
use crate::duration::parse_duration;
use crate::source::{FileId, Span};
use crate::types::Percent;
use crate::yaml::{Node, NodeKind, Resolved};

/// The decoding context of one document.
pub(crate) struct Cx<'d> {
    pub file: FileId,
    pub diags: &'d mut Vec<Diagnostic>,
}

/// A node together with its field path and the span of the key that led to it.
#[derive(Clone)]
pub(crate) struct At<'n> {
    pub node: &'n Node,
    pub path: String,
    pub key_span: Option<Span>,
}

/// The fields a mapping may hold.
pub(crate) struct Fields {
    /// Fields crossfade reads.
    pub known: &'static [&'static str],
    /// Fields the upstream kind defines and crossfade accepts without acting on them
    /// (resources, replicas, service accounts, ...): kept silent, they matter on Kubernetes.
    pub tolerated: &'static [&'static str],
}

/// A mapping being decoded.
pub(crate) struct Map<'n> {
    pub at: At<'n>,
    entries: &'n [(Node, Node)],
}

// === impl At ===

impl<'n> At<'n> {
    pub fn root(node: &'n Node) -> Self {
        Self {
            node,
            path: String::new(),
            key_span: None,
        }
    }

    pub fn span(&self) -> Span {
        self.node.span
    }

    /// Where to point for a problem with a field's presence: the key if there is one.
    pub fn key_or_node_span(&self) -> Span {
        self.key_span.unwrap_or(self.node.span)
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

// === impl Map ===

impl<'n> Map<'n> {
    /// The field `key`, unless it is absent or null.
    pub fn get(&self, key: &str) -> Option<At<'n>> {
        self.get_raw(key).filter(|a| !a.node.is_null())
    }

    /// The field `key`, even when null.
    pub fn get_raw(&self, key: &str) -> Option<At<'n>> {
        self.entries
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(key))
            .map(|(k, v)| At {
                node: v,
                path: self.at.child(key),
                key_span: Some(k.span),
            })
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The one field of a union (`exact|prefix|regex`) that is present, even when null.
    /// Reports `none` when there is none and `several` at the second when there are more.
    pub fn exactly_one(
        &self,
        cx: &mut Cx<'_>,
        keys: &[&'static str],
        none: &str,
        several: &str,
    ) -> Option<(&'static str, At<'n>)> {
        let mut present = keys.iter().filter_map(|k| self.get_raw(k).map(|a| (*k, a)));
        let first = present.next();
        if let Some((_, second)) = present.next() {
            cx.error(Code::InvalidValue, &second, several);
            return None;
        }
        if first.is_none() {
            cx.error(Code::MissingField, &self.at, none);
        }
        first
    }

    /// The field `key`; reports `missing-field` when it is absent or null.
    pub fn req(&self, cx: &mut Cx<'_>, key: &str) -> Option<At<'n>> {
        let got = self.get(key);
        if got.is_none() {
            cx.missing(&self.at, key, format!("missing required field `{key}`"));
        }
        got
    }
}

// === impl Cx ===

impl Cx<'_> {
    pub fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    /// Reports a problem with the value at `at`.
    /// Reports the field `key` of the mapping at `at` as missing: pointed at the mapping's
    /// key, named by the field's path.
    pub fn missing(
        &mut self,
        at: &At<'_>,
        key: &str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::error(
            Code::MissingField,
            self.file,
            at.key_or_node_span(),
            message,
        )
        .with_field(at.child(key));
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    pub fn error(
        &mut self,
        code: Code,
        at: &At<'_>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::error(code, self.file, at.span(), message).with_field(&at.path);
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    pub fn warning(
        &mut self,
        code: Code,
        at: &At<'_>,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let d = Diagnostic::warning(code, self.file, at.span(), message).with_field(&at.path);
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    fn wrong_type(&mut self, at: &At<'_>, expected: &str) {
        let found = at.node.type_name();
        let d = self.error(
            Code::WrongType,
            at,
            format!("expected {expected}, found {found}"),
        );
        let text = at.node.scalar_text().unwrap_or_default();
        if expected == "a string" && matches!(at.node.kind, NodeKind::Scalar { .. }) {
            d.hint = Some(format!("quote the value to make it a string: \"{text}\""));
        } else if found == "a string"
            && (expected.starts_with("an integer")
                || expected.starts_with("a number")
                || expected.starts_with("a boolean"))
        {
            let unquoted = crate::yaml::resolve_plain(text.trim());
            if !matches!(unquoted, Resolved::Str(_) | Resolved::Null) {
                d.hint = Some(format!("remove the quotes: {}", text.trim()));
            }
        }
    }

    /// A mapping with the given fields; warns about any other key, suggesting the closest
    /// known one.
    pub fn map<'n>(&mut self, at: &At<'n>, fields: &Fields) -> Option<Map<'n>> {
        let NodeKind::Map(entries) = &at.node.kind else {
            self.wrong_type(at, "a mapping");
            return None;
        };
        let map = Map {
            at: at.clone(),
            entries,
        };
        for (k, _) in entries {
            let Some(key) = k.scalar_text() else {
                self.push(
                    Diagnostic::error(
                        Code::WrongType,
                        self.file,
                        k.span,
                        "mapping keys must be strings",
                    )
                    .with_field(&at.path),
                );
                continue;
            };
            if fields.known.contains(&key) || fields.tolerated.contains(&key) {
                continue;
            }
            let mut d = Diagnostic::warning(
                Code::UnknownField,
                self.file,
                k.span,
                format!("unknown field `{key}`; it is ignored"),
            )
            .with_field(at.child(key));
            if let Some(best) = closest(key, fields.known.iter().chain(fields.tolerated)) {
                d = d.with_hint(format!("did you mean `{best}`?"));
            }
            self.push(d);
        }
        Some(map)
    }

    /// A mapping whose keys are checked later (the top level of a document).
    pub fn map_any<'n>(&mut self, at: &At<'n>) -> Map<'n> {
        let entries: &'n [(Node, Node)] = match &at.node.kind {
            NodeKind::Map(entries) => entries,
            _ => &[],
        };
        Map {
            at: at.clone(),
            entries,
        }
    }

    /// A mapping whose keys and values are free-form strings (labels, annotations).
    pub fn string_map(&mut self, at: &At<'_>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let NodeKind::Map(entries) = &at.node.kind else {
            self.wrong_type(at, "a mapping of strings");
            return out;
        };
        for (k, v) in entries {
            let key = k.scalar_text().unwrap_or_default().to_owned();
            let vat = At {
                node: v,
                path: at.child(&key),
                key_span: Some(k.span),
            };
            if let Some(v) = self.string(&vat) {
                out.insert(key, v);
            }
        }
        out
    }

    /// The mappings in an optional list field (absent: none). Items that are not mappings are
    /// reported and left out.
    pub fn maps_in<'n>(&mut self, list: Option<At<'n>>, fields: &Fields) -> Vec<Map<'n>> {
        let Some(list) = list else {
            return Vec::new();
        };
        self.seq(&list)
            .iter()
            .filter_map(|item| self.map(item, fields))
            .collect()
    }

    /// The items of a list.
    pub fn seq<'n>(&mut self, at: &At<'n>) -> Vec<At<'n>> {
        let NodeKind::Seq(items) = &at.node.kind else {
            self.wrong_type(at, "a list");
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .map(|(i, node)| At {
                node,
                path: format!("{}[{i}]", at.path),
                key_span: Some(node.span),
            })
            .collect()
    }

    pub fn string(&mut self, at: &At<'_>) -> Option<String> {
        match at.node.resolve() {
            Some(Resolved::Str(s)) => Some(s.to_owned()),
            _ => {
                self.wrong_type(at, "a string");
                None
            }
        }
    }

    /// A string that must not be empty.
    pub fn nonempty_string(&mut self, at: &At<'_>) -> Option<String> {
        let s = self.string(at)?;
        if s.trim().is_empty() {
            self.error(Code::InvalidValue, at, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A list of strings.
    pub fn strings(&mut self, at: &At<'_>) -> Vec<String> {
        self.seq(at).iter().filter_map(|a| self.string(a)).collect()
    }

    pub fn bool(&mut self, at: &At<'_>) -> Option<bool> {
        match at.node.resolve() {
            Some(Resolved::Bool(b)) => Some(b),
            _ => {
                self.wrong_type(at, "a boolean (true or false)");
                None
            }
        }
    }

    pub fn int(&mut self, at: &At<'_>) -> Option<i64> {
        match at.node.resolve() {
            Some(Resolved::Int(i)) => Some(i),
            _ => {
                self.wrong_type(at, "an integer");
                None
            }
        }
    }

    pub fn number(&mut self, at: &At<'_>) -> Option<f64> {
        match at.node.resolve() {
            Some(Resolved::Int(i)) => Some(i as f64),
            Some(Resolved::Float(f)) if f.is_finite() => Some(f),
            _ => {
                self.wrong_type(at, "a number");
                None
            }
        }
    }

    /// An integer in `lo..=hi`.
    pub fn int_in(&mut self, at: &At<'_>, lo: i64, hi: i64) -> Option<i64> {
        let v = self.int(at)?;
        if v < lo || v > hi {
            self.error(
                Code::OutOfRange,
                at,
                format!("{v} is out of range: must be between {lo} and {hi}"),
            );
            return None;
        }
        Some(v)
    }

    pub fn percent(&mut self, at: &At<'_>) -> Option<Percent> {
        self.int_in(at, 0, 100)
            .map(|v| Percent::new(v as u8).expect("range checked"))
    }

    /// A duration as Argo writes it: an integer number of seconds, or a string such as `30s`,
    /// `5m`, `1h30m`, `500ms`.
    pub fn duration(&mut self, at: &At<'_>) -> Option<Duration> {
        let text = match at.node.resolve() {
            Some(Resolved::Int(i)) if i >= 0 => return Some(Duration::from_secs(i as u64)),
            Some(Resolved::Str(s)) => s,
            Some(Resolved::Int(_)) => "-",
            _ => {
                self.wrong_type(at, "a duration such as 30s, 5m or 1h");
                return None;
            }
        };
        match parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                let d = self.error(Code::InvalidDuration, at, format!("invalid duration: {e}"));
                d.hint = Some(
                    "write a number with a unit (`30s`, `5m`, `1h`, `1h30m`) or whole seconds"
                        .into(),
                );
                None
            }
        }
    }

    /// One of a fixed set of string values.
    pub fn one_of<T: Copy>(&mut self, at: &At<'_>, choices: &[(&str, T)]) -> Option<T> {
        let s = self.string(at)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<_> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
        self.error(
            Code::InvalidValue,
            at,
            format!("`{s}` is not one of {}", names.join(", ")),
        );
        None
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(&word.to_lowercase(), &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
