//! Source files, positions and the directory walk: the only IO this crate does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::Error;

/// Index of a file in a [`Sources`] set.
pub type FileId = usize;

/// One manifest file as read from disk.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The name shown in diagnostics: relative to the directory it was found under, or the path
    /// as given when a single file was named.
    pub name: String,
    /// Full text, or why it could not be read (not UTF-8, permission denied, ...).
    pub text: Result<String, String>,
    line_starts: Vec<usize>,
}

/// A set of manifest files, in a stable order (sorted by path within each root). Files are
/// shared: a reader that keeps the files of its last read (the Git mirror) hands the same file
/// to the next set when it did not change, and [`crate::parse_cached`] sees at once that it is
/// the same.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    files: Vec<std::sync::Arc<SourceFile>>,
}

/// A region of a source file: byte range plus the 1-based line and column (in characters) of its
/// start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub line: u32,
    pub column: u32,
}

// === impl SourceFile ===

impl SourceFile {
    /// A file held in memory (tests, or manifests read from a Git tree).
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        Self::with_text(name.into(), Ok(text.into()))
    }

    /// A file that could not be read, with the reason; [`crate::parse`] reports it.
    pub fn unreadable(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::with_text(name.into(), Err(reason.into()))
    }

    fn with_text(name: String, text: Result<String, String>) -> Self {
        // A byte-order mark is not content: editors do not count it as a column.
        let text = text.map(|t| match t.strip_prefix('\u{feff}') {
            Some(rest) => rest.to_owned(),
            None => t,
        });
        let line_starts = match &text {
            Ok(t) => std::iter::once(0)
                .chain(t.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
            Err(_) => vec![0],
        };
        Self {
            name,
            text,
            line_starts,
        }
    }

    /// The text, or "" for an unreadable file.
    pub fn text(&self) -> &str {
        self.text.as_deref().unwrap_or("")
    }

    /// The 0-based line of a byte offset (a binary search: rendering many diagnostics of a
    /// large file stays linear).
    pub(crate) fn line_index(&self, byte: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= byte) - 1
    }

    /// How many lines the text has (a last line without a newline counts; at least one).
    pub(crate) fn line_count(&self) -> usize {
        let text = self.text();
        let n = self.line_starts.len();
        if n > 1 && text.ends_with('\n') {
            n - 1
        } else {
            n
        }
    }

    /// Byte offset of the first byte of 1-based `line`.
    pub(crate) fn line_start(&self, line: u32) -> usize {
        let idx = (line.max(1) as usize - 1).min(self.line_starts.len() - 1);
        self.line_starts[idx]
    }

    /// The span of a 1-based line and 0-based character column, `len` characters long.
    pub(crate) fn span_at(&self, line: u32, col0: u32, len_chars: usize) -> Span {
        let text = self.text();
        let ls = self.line_start(line);
        let line_text = &text[ls..];
        let mut chars = line_text.char_indices();
        let start = chars
            .by_ref()
            .nth(col0 as usize)
            .map_or(text.len(), |(i, _)| ls + i);
        let end = text[start..]
            .char_indices()
            .nth(len_chars)
            .map_or(text.len(), |(i, _)| start + i);
        Span {
            start,
            end,
            line,
            column: col0 + 1,
        }
    }

    /// The span between two (line, 0-based column) positions.
    pub(crate) fn span_between(&self, start: (u32, u32), end: (u32, u32)) -> Span {
        let a = self.span_at(start.0, start.1, 0);
        let b = self.span_at(end.0, end.1, 0);
        Span {
            end: b.start.max(a.start),
            ..a
        }
    }
}

// === impl Sources ===

impl Sources {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file and returns its id.
    pub fn push(&mut self, file: SourceFile) -> FileId {
        self.push_shared(std::sync::Arc::new(file))
    }

    /// Adds a file another set holds too, and returns its id.
    pub fn push_shared(&mut self, file: std::sync::Arc<SourceFile>) -> FileId {
        self.files.push(file);
        self.files.len() - 1
    }

    /// The file `id`, shared.
    pub fn shared(&self, id: FileId) -> &std::sync::Arc<SourceFile> {
        &self.files[id]
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id]
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().map(|f| &**f).enumerate()
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Reads every `*.yaml` / `*.yml` file under each root, recursively, skipping directories
    /// whose name starts with a dot (`.git`, `.github`). A root may also be a single file.
    ///
    /// A root that does not exist is an [`Error`]; a file that cannot be read or is not UTF-8 is
    /// kept with its reason and reported as a diagnostic by [`crate::parse`].
    ///
    /// Inside a directory, symlinks are not followed (the same files `crossfade up` reads from
    /// a commit). A file reached twice (named directly and inside a directory) is read once.
    pub fn read(roots: &[PathBuf]) -> Result<Self, Error> {
        let mut sources = Self::new();
        let mut seen = HashSet::new();
        for root in roots {
            let root_error = |source| Error::Root {
                path: root.clone(),
                source,
            };
            let meta = std::fs::metadata(root).map_err(root_error)?;
            if meta.is_file() {
                if seen.insert(std::fs::canonicalize(root).map_err(root_error)?) {
                    sources.push(read_file(root, root.display().to_string()));
                }
                continue;
            }
            let mut found = Vec::new();
            let mut dirs = HashSet::new();
            walk(root, &mut dirs, &mut found).map_err(root_error)?;
            found.sort();
            for path in found {
                let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                if !seen.insert(canonical) {
                    continue;
                }
                let name = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                sources.push(read_file(&path, name));
            }
        }
        Ok(sources)
    }
}

/// Collects manifest files under `dir` exactly as `crossfade up` reads a commit's tree:
/// `*.yaml` and `*.yml` regular files, directories whose name starts with `.` skipped, and
/// symlinks never followed (Git stores a symlink as a link, not as what it points at; following
/// one could also lead out of the directory, to `/etc/passwd`, and print it in a CI log).
fn walk(
    dir: &Path,
    visited: &mut HashSet<PathBuf>,
    found: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    if !visited.insert(std::fs::canonicalize(dir)?) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // The entry itself, not what a symlink points at.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if !name.starts_with('.') {
                walk(&path, visited, found)?;
            }
        } else if kind.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            found.push(path);
        }
    }
    Ok(())
}

fn read_file(path: &Path, name: String) -> SourceFile {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|e| {
            format!(
                "the file is not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            )
        }),
        Err(e) => Err(format!("cannot read the file: {e}")),
    };
    SourceFile::with_text(name, text)
}

/// Splits a YAML stream into its documents at `---` lines, so that a syntax error in one
/// document does not hide the others. Returns (first line of the chunk, chunk text).
pub(crate) fn split_documents(text: &str) -> Vec<(u32, &str)> {
    let mut chunks = Vec::new();
    let mut chunk_start = 0;
    let mut chunk_line = 1u32;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let rest = line.strip_prefix("---");
        let is_marker =
            rest.is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t', '\n', '\r']));
        if is_marker && offset > chunk_start {
            chunks.push((chunk_line, &text[chunk_start..offset]));
            chunk_start = offset;
            chunk_line = i as u32 + 1;
        }
        offset += line.len();
    }
    chunks.push((chunk_line, &text[chunk_start..]));
    chunks
}
