//! A bare mirror of a remote repository, fetched incrementally, with manifests read straight
//! from the object database (no work tree).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gix::bstr::ByteSlice;
use manifest::{SourceFile, Sources};

use crate::Error;

/// The refs a fetch mirrors: every branch and tag, plus the remote's HEAD.
const REFSPECS: &[&str] = &[
    "+refs/heads/*:refs/heads/*",
    "+refs/tags/*:refs/tags/*",
    "+HEAD:refs/crossfade/remote-head",
];
const REMOTE_HEAD: &str = "refs/crossfade/remote-head";

/// A bare clone kept under the data directory.
#[derive(Clone)]
pub struct Mirror {
    url: String,
    dir: PathBuf,
    repo: gix::ThreadSafeRepository,
    /// The manifest files of the last read with their blob ids, in the order the tree walk met
    /// them: a file is read and checked once however many commits hold it, and the next read
    /// shares it.
    last: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

/// A manifest file a read met, and its blob.
type Seen = (gix::ObjectId, Arc<SourceFile>);

/// A commit, with what the audit trail needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full hex id.
    pub id: String,
    /// `Name <email>`.
    pub author: String,
    /// Author time, seconds since the Unix epoch.
    pub time: i64,
    /// First line of the message.
    pub summary: String,
    /// The signature and the exact bytes it signs, when the commit is signed.
    pub signature: Option<SignedCommit>,
}

/// A commit's signature (`gpgsig` header) and the commit bytes it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCommit {
    pub signature: Vec<u8>,
    pub payload: Vec<u8>,
}

// === impl Mirror ===

impl Mirror {
    /// Opens the mirror at `dir`, creating an empty bare repository there first if needed.
    /// `url` is a local path, `file://`, `http://` or `https://` URL. A local path must exist
    /// unless the mirror already does: then what it holds keeps serving, and fetches report
    /// the path as they fail.
    pub fn open(url: &str, dir: &Path) -> Result<Self, Error> {
        let existing = dir.join("HEAD").exists();
        let url = normalize_url(url, existing)?;
        let repo = if existing {
            gix::open(dir).map_err(|e| Error::Open {
                path: dir.to_owned(),
                message: e.to_string(),
            })?
        } else {
            std::fs::create_dir_all(dir).map_err(|e| Error::Open {
                path: dir.to_owned(),
                message: e.to_string(),
            })?;
            gix::init_bare(dir).map_err(|e| Error::Open {
                path: dir.to_owned(),
                message: e.to_string(),
            })?
        };
        Ok(Self {
            url,
            dir: dir.to_owned(),
            repo: repo.into_sync(),
            last: std::sync::Arc::default(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fetches every branch and tag (force-updating rewritten ones). Gives up after `timeout`;
    /// the mirror keeps what it had.
    pub fn fetch(&self, timeout: Duration) -> Result<(), Error> {
        if self.url.starts_with("http") {
            // One rustls provider for the whole process: ring. Installing twice is harmless.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let interrupt = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let repo = self.repo.clone();
        let url = self.url.clone();
        let flag = Arc::clone(&interrupt);
        std::thread::Builder::new()
            .name("git-fetch".into())
            .spawn(move || {
                let _ = tx.send(fetch_blocking(&repo.to_thread_local(), &url, &flag));
            })
            .map_err(|e| Error::Fetch {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => {
                interrupt.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(Error::Timeout {
                    url: self.url.clone(),
                    after: timeout,
                })
            }
        }
    }

    /// Resolves `targetRevision`: a branch, a tag, a full or abbreviated commit id, or `HEAD`
    /// (the remote's default branch).
    pub fn resolve(&self, revision: &str) -> Result<String, Error> {
        let repo = self.repo.to_thread_local();
        let spec = match revision {
            "" | "HEAD" => REMOTE_HEAD.to_owned(),
            other => other.to_owned(),
        };
        let candidates = [
            format!("refs/heads/{spec}"),
            format!("refs/tags/{spec}"),
            spec.clone(),
        ];
        for candidate in &candidates {
            if let Ok(id) = repo.rev_parse_single(candidate.as_str()) {
                let fail = |e: &dyn std::fmt::Display| Error::Resolve {
                    revision: revision.to_owned(),
                    message: e.to_string(),
                };
                let object = id.object().map_err(|e| fail(&e))?;
                let commit = object.peel_to_commit().map_err(|e| fail(&e))?;
                return Ok(commit.id.to_string());
            }
        }
        Err(Error::Resolve {
            revision: revision.to_owned(),
            message: "no branch, tag or commit of that name in the fetched repository".into(),
        })
    }

    /// The commit `id` with its author, time and signature.
    pub fn commit(&self, id: &str) -> Result<CommitInfo, Error> {
        let repo = self.repo.to_thread_local();
        let commit = find_commit(&repo, id)?;
        let bad = |e: &dyn std::fmt::Display| Error::Object {
            id: id.to_owned(),
            message: e.to_string(),
        };
        let author = commit.author().map_err(|e| bad(&e))?;
        let signature = commit
            .signature()
            .map_err(|e| bad(&e))?
            .map(|(sig, data)| SignedCommit {
                signature: sig.to_vec(),
                payload: data.to_bstring().to_vec(),
            });
        let message = commit.message_raw_sloppy();
        Ok(CommitInfo {
            id: commit.id.to_string(),
            author: format!("{} <{}>", author.name, author.email),
            time: author.time().map(|t| t.seconds).unwrap_or_default(),
            summary: message
                .lines()
                .next()
                .unwrap_or_default()
                .to_str_lossy()
                .into_owned(),
            signature,
        })
    }

    /// Reads every `*.yaml`/`*.yml` file under `path` in the tree of commit `id`, straight
    /// from the object database. File names are relative to `path`.
    pub fn read_manifests(&self, id: &str, path: &str) -> Result<Sources, Error> {
        let repo = self.repo.to_thread_local();
        let commit = find_commit(&repo, id)?;
        let bad = |e: &dyn std::fmt::Display| Error::Object {
            id: id.to_owned(),
            message: e.to_string(),
        };
        let root = commit.tree().map_err(|e| bad(&e))?;
        let path = path.trim_matches('/');
        let tree = if path.is_empty() || path == "." {
            root
        } else {
            let entry = root
                .lookup_entry_by_path(path)
                .map_err(|e| bad(&e))?
                .ok_or_else(|| Error::MissingPath {
                    commit: id.to_owned(),
                    path: path.to_owned(),
                })?;
            if !entry.mode().is_tree() {
                return Err(Error::MissingPath {
                    commit: id.to_owned(),
                    path: path.to_owned(),
                });
            }
            entry.object().map_err(|e| bad(&e))?.into_tree()
        };
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut files = Vec::with_capacity(last.len());
        let mut reuse = Reuse {
            last: &last,
            cursor: 0,
            by_path: None,
        };
        let mut path = String::new();
        collect(&repo, tree, &mut path, &mut files, &mut reuse).map_err(|e| bad(&e))?;
        drop(reuse);
        last.clone_from(&files);
        drop(last);
        files.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        let mut sources = Sources::new();
        for (_, f) in files {
            sources.push_shared(f);
        }
        Ok(sources)
    }
}

/// The files of the last read, looked up by path as a new read meets them. Most are where the
/// walk left off (the same tree, one file changed), so a lookup is usually a comparison with
/// the next one; the map by path is built only if the walk strays.
struct Reuse<'a> {
    last: &'a [Seen],
    cursor: usize,
    by_path: Option<std::collections::HashMap<&'a str, usize>>,
}

impl Reuse<'_> {
    /// The file last read at `path`, if it held blob `oid`.
    fn find(&mut self, path: &str, oid: &gix::ObjectId) -> Option<Arc<SourceFile>> {
        let at = match self.last.get(self.cursor) {
            Some((_, f)) if f.name == path => self.cursor,
            _ => {
                let last = self.last;
                let by_path = self.by_path.get_or_insert_with(|| {
                    last.iter()
                        .enumerate()
                        .map(|(i, (_, f))| (f.name.as_str(), i))
                        .collect()
                });
                *by_path.get(path)?
            }
        };
        self.cursor = at + 1;
        let (id, file) = &self.last[at];
        (id == oid).then(|| Arc::clone(file))
    }
}

/// Collects the manifest files under `tree`, whose path is `path` ("" at the root), with
/// their blob ids.
fn collect(
    repo: &gix::Repository,
    tree: gix::Tree<'_>,
    path: &mut String,
    out: &mut Vec<Seen>,
    reuse: &mut Reuse<'_>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let base = path.len();
    for entry in tree.iter() {
        let entry = entry?;
        let name = entry.filename().to_str_lossy();
        path.truncate(base);
        if base > 0 {
            path.push('/');
        }
        path.push_str(&name);
        let mode = entry.mode();
        if mode.is_tree() {
            if !name.starts_with('.') {
                let sub = repo.find_object(entry.oid())?.into_tree();
                collect(repo, sub, path, out, reuse)?;
            }
        } else if mode.is_blob() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            let oid = entry.oid().to_owned();
            let file = match reuse.find(path, &oid) {
                Some(file) => file,
                None => {
                    let blob = repo.find_object(oid)?;
                    let name = path.clone();
                    Arc::new(match String::from_utf8(blob.data.clone()) {
                        Ok(text) => SourceFile::new(name, text),
                        Err(e) => SourceFile::unreadable(
                            name,
                            format!(
                                "the file is not valid UTF-8 (byte {})",
                                e.utf8_error().valid_up_to()
                            ),
                        ),
                    })
                }
            };
            out.push((oid, file));
        }
    }
    path.truncate(base);
    Ok(())
}

fn find_commit<'r>(repo: &'r gix::Repository, id: &str) -> Result<gix::Commit<'r>, Error> {
    let bad = |message: String| Error::Object {
        id: id.to_owned(),
        message,
    };
    let oid = gix::ObjectId::from_hex(id.as_bytes()).map_err(|e| bad(e.to_string()))?;
    repo.find_object(oid)
        .map_err(|e| bad(e.to_string()))?
        .try_into_commit()
        .map_err(|e| bad(e.to_string()))
}

fn fetch_blocking(repo: &gix::Repository, url: &str, interrupt: &AtomicBool) -> Result<(), Error> {
    let fail = |e: &dyn std::fmt::Display| Error::Fetch {
        url: url.to_owned(),
        message: e.to_string(),
    };
    let remote = repo
        .remote_at(url)
        .map_err(|e| fail(&e))?
        .with_refspecs(REFSPECS.iter().copied(), gix::remote::Direction::Fetch)
        .map_err(|e| fail(&e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let connection = remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| fail(&e))?;
    connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| fail(&e))?
        .receive(gix::progress::Discard, interrupt)
        .map_err(|e| fail(&e))?;
    Ok(())
}

/// Local paths become absolute `file://` URLs; URLs pass through. A path that does not exist
/// is an error unless `allow_missing`.
fn normalize_url(url: &str, allow_missing: bool) -> Result<String, Error> {
    if url.contains("://") {
        return Ok(url.to_owned());
    }
    let path = match std::fs::canonicalize(url) {
        Ok(path) => path,
        Err(_) if allow_missing => std::path::absolute(url).map_err(|e| Error::Fetch {
            url: url.to_owned(),
            message: e.to_string(),
        })?,
        Err(e) => {
            return Err(Error::Fetch {
                url: url.to_owned(),
                message: format!("not a URL, and not a local path that exists: {e}"),
            });
        }
    };
    Ok(format!("file://{}", path.display()))
}
