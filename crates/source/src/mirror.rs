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
    /// The manifest texts of the last read, by blob id: a blob is read and checked once
    /// however many commits hold it.
    texts: std::sync::Arc<std::sync::Mutex<Texts>>,
}

type Texts = std::collections::HashMap<gix::ObjectId, Result<String, String>>;

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
            texts: std::sync::Arc::default(),
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
        let mut files = Vec::new();
        let mut texts = self
            .texts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut known = std::mem::take(&mut *texts);
        collect(&repo, tree, "", &mut files, (&mut known, &mut texts)).map_err(|e| bad(&e))?;
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sources = Sources::new();
        for f in files {
            sources.push(f);
        }
        Ok(sources)
    }
}

/// Collects the manifest files under `tree`; `known` are the texts of the last read, `read`
/// gets those of this one.
fn collect(
    repo: &gix::Repository,
    tree: gix::Tree<'_>,
    prefix: &str,
    out: &mut Vec<SourceFile>,
    (known, read): (&mut Texts, &mut Texts),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    for entry in tree.iter() {
        let entry = entry?;
        let name = entry.filename().to_str_lossy().into_owned();
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let mode = entry.mode();
        if mode.is_tree() {
            if !name.starts_with('.') {
                let sub = repo.find_object(entry.oid())?.into_tree();
                collect(repo, sub, &full, out, (&mut *known, &mut *read))?;
            }
        } else if mode.is_blob() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            let oid = entry.oid().to_owned();
            let text = match known.remove(&oid).or_else(|| read.get(&oid).cloned()) {
                Some(text) => text,
                None => {
                    let blob = repo.find_object(oid)?;
                    String::from_utf8(blob.data.clone()).map_err(|e| {
                        format!(
                            "the file is not valid UTF-8 (byte {})",
                            e.utf8_error().valid_up_to()
                        )
                    })
                }
            };
            out.push(match &text {
                Ok(text) => SourceFile::new(full, text.clone()),
                Err(reason) => SourceFile::unreadable(full, reason.clone()),
            });
            read.insert(oid, text);
        }
    }
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
