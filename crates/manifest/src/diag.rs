//! Diagnostics: every problem found in a manifest set, with where it is and how to fix it.

use std::fmt;

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label, Severity as CsSeverity};
use codespan_reporting::files::{self, Files};
use codespan_reporting::term::{self, termcolor::WriteColor};

use crate::source::{FileId, Sources, Span};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// A stable diagnostic code. The string form (`Code::as_str`) is a public contract: scripts
/// match on it, so codes are only ever added, never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The file could not be read or is not UTF-8.
    UnreadableFile,
    /// The YAML itself does not parse.
    YamlSyntax,
    /// The same key appears twice in one mapping.
    DuplicateKey,
    /// A document is not a mapping, or lacks `apiVersion`/`kind`.
    NotAResource,
    /// A kind crossfade does not use; the document is skipped.
    UnknownKind,
    /// A known kind at an `apiVersion` crossfade does not read.
    UnsupportedVersion,
    /// A value of the wrong type (a string where a number belongs, ...).
    WrongType,
    /// A required field is absent.
    MissingField,
    /// A field the kind does not define (often a typo).
    UnknownField,
    /// A field the upstream kind defines but crossfade does not act on.
    IgnoredField,
    /// `metadata.name` or `metadata.namespace` is not a DNS-1123 label.
    InvalidName,
    /// A number outside its allowed range.
    OutOfRange,
    /// A value that is not one of the accepted ones, or is malformed.
    InvalidValue,
    /// A duration that does not parse (`30s`, `5m`, `1h`, or whole seconds).
    InvalidDuration,
    /// A `storageUri` scheme other than file, http, https, s3 and gs.
    UnsupportedScheme,
    /// A `storageUri` that does not pin a sha256 digest (with `--require-digest`).
    UnpinnedArtifact,
    /// A feature of the upstream kind that crossfade does not implement.
    Unsupported,
    /// The same kind/namespace/name is defined twice.
    DuplicateResource,
    /// A reference (workloadRef, templateName, runtime) that names nothing here.
    UnresolvedReference,
    /// A template argument that is required and not given, or used and not declared.
    MissingArgument,
    /// A success or failure condition that does not parse.
    InvalidCondition,
    /// Two Rollouts drive the same InferenceService.
    ConflictingRollouts,
    /// A ServingRuntime's container runs a command on the serving machine.
    RunsCommand,
}

/// Another place that explains a diagnostic (the first definition of a duplicate, an unclosed
/// bracket).
#[derive(Debug, Clone, PartialEq)]
pub struct Related {
    pub file: FileId,
    pub span: Span,
    pub message: String,
}

/// One problem in one place.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    pub file: FileId,
    pub span: Span,
    /// Dotted field path (`spec.strategy.canary.steps[1].setWeight`); empty when the problem is
    /// with the document as a whole.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
    pub related: Option<Related>,
}

// === impl Code ===

impl Code {
    pub const ALL: &'static [Code] = &[
        Code::UnreadableFile,
        Code::YamlSyntax,
        Code::DuplicateKey,
        Code::NotAResource,
        Code::UnknownKind,
        Code::UnsupportedVersion,
        Code::WrongType,
        Code::MissingField,
        Code::UnknownField,
        Code::IgnoredField,
        Code::InvalidName,
        Code::OutOfRange,
        Code::InvalidValue,
        Code::InvalidDuration,
        Code::UnsupportedScheme,
        Code::UnpinnedArtifact,
        Code::Unsupported,
        Code::DuplicateResource,
        Code::UnresolvedReference,
        Code::MissingArgument,
        Code::InvalidCondition,
        Code::ConflictingRollouts,
        Code::RunsCommand,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::UnreadableFile => "unreadable-file",
            Code::YamlSyntax => "yaml-syntax",
            Code::DuplicateKey => "duplicate-key",
            Code::NotAResource => "not-a-resource",
            Code::UnknownKind => "unknown-kind",
            Code::UnsupportedVersion => "unsupported-version",
            Code::WrongType => "wrong-type",
            Code::MissingField => "missing-field",
            Code::UnknownField => "unknown-field",
            Code::IgnoredField => "ignored-field",
            Code::InvalidName => "invalid-name",
            Code::OutOfRange => "out-of-range",
            Code::InvalidValue => "invalid-value",
            Code::InvalidDuration => "invalid-duration",
            Code::UnsupportedScheme => "unsupported-scheme",
            Code::UnpinnedArtifact => "unpinned-artifact",
            Code::Unsupported => "unsupported",
            Code::DuplicateResource => "duplicate-resource",
            Code::UnresolvedReference => "unresolved-reference",
            Code::MissingArgument => "missing-argument",
            Code::InvalidCondition => "invalid-condition",
            Code::ConflictingRollouts => "conflicting-rollouts",
            Code::RunsCommand => "runs-command",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

// === impl Diagnostic ===

impl Diagnostic {
    pub fn error(code: Code, file: FileId, span: Span, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, file, span, message)
    }

    pub fn warning(code: Code, file: FileId, span: Span, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, file, span, message)
    }

    fn new(
        severity: Severity,
        code: Code,
        file: FileId,
        span: Span,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity,
            code,
            file,
            span,
            field: String::new(),
            message: message.into(),
            hint: None,
            related: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_related(mut self, related: Related) -> Self {
        self.related = Some(related);
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// 1-based line of the start of the problem.
    pub fn line(&self) -> u32 {
        self.span.line
    }

    /// 1-based column (in characters) of the start of the problem.
    pub fn column(&self) -> u32 {
        self.span.column
    }

    /// Writes the diagnostic with the source line(s) it points at, as rustc does.
    pub fn emit(&self, out: &mut dyn WriteColor, sources: &Sources) -> Result<(), files::Error> {
        let mut labels = vec![Label::primary(self.file, self.span.start..self.span.end)];
        if !self.field.is_empty() {
            labels[0].message = self.field.clone();
        }
        if let Some(r) = &self.related {
            labels
                .push(Label::secondary(r.file, r.span.start..r.span.end).with_message(&r.message));
        }
        let severity = match self.severity {
            Severity::Error => CsSeverity::Error,
            Severity::Warning => CsSeverity::Warning,
        };
        let mut d = CsDiagnostic::new(severity)
            .with_code(self.code.as_str())
            .with_message(&self.message)
            .with_labels(labels);
        if let Some(h) = &self.hint {
            d = d.with_notes(vec![format!("hint: {h}")]);
        }
        let config = term::Config::default();
        term::emit(out, &config, &SourcesView(sources), &d)
    }

    /// [`Diagnostic::emit`] into a plain string (no colour).
    pub fn render(&self, sources: &Sources) -> String {
        let mut out = term::termcolor::NoColor::new(Vec::new());
        // Writing to a Vec cannot fail, and every span comes from the file it names.
        let _ = self.emit(&mut out, sources);
        String::from_utf8_lossy(&out.into_inner()).into_owned()
    }
}

/// Adapts [`Sources`] to codespan's file database.
struct SourcesView<'a>(&'a Sources);

impl<'a> Files<'a> for SourcesView<'a> {
    type FileId = FileId;
    type Name = &'a str;
    type Source = &'a str;

    fn name(&'a self, id: FileId) -> Result<&'a str, files::Error> {
        self.check(id)?;
        Ok(&self.0.get(id).name)
    }

    fn source(&'a self, id: FileId) -> Result<&'a str, files::Error> {
        self.check(id)?;
        Ok(self.0.get(id).text())
    }

    fn line_index(&'a self, id: FileId, byte_index: usize) -> Result<usize, files::Error> {
        self.check(id)?;
        let file = self.0.get(id);
        Ok(file.line_index(byte_index.min(file.text().len())))
    }

    fn line_range(
        &'a self,
        id: FileId,
        line_index: usize,
    ) -> Result<std::ops::Range<usize>, files::Error> {
        self.check(id)?;
        let file = self.0.get(id);
        let text = file.text();
        let lines = file.line_count();
        if line_index > lines {
            return Err(files::Error::LineTooLarge {
                given: line_index,
                max: lines,
            });
        }
        let start = file.line_start(line_index as u32 + 1);
        let end = if line_index + 1 >= lines {
            text.len()
        } else {
            file.line_start(line_index as u32 + 2)
        };
        Ok(start..end)
    }
}

impl SourcesView<'_> {
    fn check(&self, id: FileId) -> Result<(), files::Error> {
        if id < self.0.len() {
            Ok(())
        } else {
            Err(files::Error::FileMissing)
        }
    }
}
