//! Model artifacts: fetched from their `storageUri`, verified against the sha256 digest the URI
//! pins, and kept in a content-addressed cache under the data directory.
//!
//! # Digests
//!
//! A digest covers what the URI names. A file: the sha256 of its bytes. A directory: the sha256
//! of its *listing*, one line per regular file, sorted by path (bytewise), each line
//! `<sha256 of the file, 64 lower-case hex>  <path relative to the directory, '/'-separated>\n`
//! (the format of `sha256sum`), so `find . -type f | sort | xargs sha256sum` style tools can
//! reproduce it.
//!
//! # Guarantees
//!
//! - Nothing unverified is ever in the cache: downloads land in a temporary directory, are
//!   hashed, and are renamed into `sha256/<hex>` only when they match.
//! - A second revision with the same pinned digest is served from the cache without a download.
//! - An artifact over the size limit is refused while it downloads.
//!
//! Blocking: async callers run it on a blocking thread.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod oci;
mod s3;

pub use s3::{S3Config, create_bucket};

use manifest::{Digest, Scheme, StorageUri};
use sha2::{Digest as _, Sha256};

/// Errors of the artifact crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{uri}: digest mismatch: expected sha256:{expected}, got sha256:{actual}")]
    DigestMismatch {
        uri: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{uri}: larger than the limit of {limit} bytes")]
    TooLarge { uri: String, limit: u64 },
    #[error("{uri}: not found")]
    NotFound { uri: String },
    #[error("{uri}: {message}")]
    Fetch { uri: String, message: String },
    #[error("{uri}: {scheme} is not supported")]
    Unsupported { uri: String, scheme: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A verified artifact in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub digest: Digest,
    /// The file, or the directory, in the cache.
    pub path: PathBuf,
    pub bytes: u64,
    /// False when it came from the cache.
    pub downloaded: bool,
}

/// The content-addressed cache: `<root>/sha256/<hex>/<name>`.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    max_bytes: u64,
    timeout: Duration,
    s3: S3Config,
    gcs: S3Config,
    /// `pvc://<claim>/...`: the directory each claim stands for.
    claims: std::collections::BTreeMap<String, PathBuf>,
    /// One fetch at a time per pinned digest: the others wait and find it in the cache (10,000
    /// services of one model download it once).
    in_flight: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Digest, Turn>>>,
}

type Turn = std::sync::Arc<std::sync::Mutex<()>>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

// === impl Cache ===

impl Cache {
    /// A cache in `root`, refusing artifacts over `max_bytes`.
    pub fn new(root: &Path, max_bytes: u64, timeout: Duration) -> Result<Self, Error> {
        std::fs::create_dir_all(root.join("sha256")).map_err(io(root))?;
        remove_abandoned_staging(root);
        Ok(Self {
            root: root.to_owned(),
            max_bytes,
            timeout,
            s3: S3Config::from_env(),
            gcs: S3Config::gcs_from_env(),
            claims: Default::default(),
            in_flight: Default::default(),
        })
    }

    /// Uses this S3 configuration instead of the one from the environment.
    pub fn with_s3(mut self, config: S3Config) -> Self {
        self.s3 = config;
        self
    }

    /// Uses this configuration for `gs://` instead of the one from the environment.
    pub fn with_gcs(mut self, config: S3Config) -> Self {
        self.gcs = config;
        self
    }

    /// Maps `pvc://<claim>/<path>` to `<dir>/<path>`, for each `(claim, dir)`.
    pub fn with_claims(mut self, claims: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        self.claims = claims.into_iter().collect();
        self
    }

    /// Fetches and verifies `uri`, from the cache when its pinned digest is there already.
    pub fn fetch(&self, uri: &StorageUri) -> Result<Fetched, Error> {
        let Some(digest) = uri.digest else {
            return self.fetch_now(uri);
        };
        let turn = Turn::clone(
            self.in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(digest)
                .or_default(),
        );
        let result = {
            let _mine = turn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.fetch_now(uri)
        };
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's and this one: nobody else waits.
        if std::sync::Arc::strong_count(&turn) == 2 {
            in_flight.remove(&digest);
        }
        result
    }

    fn fetch_now(&self, uri: &StorageUri) -> Result<Fetched, Error> {
        if uri.scheme == Scheme::Oci {
            return self.fetch_oci(uri);
        }
        if let Some(digest) = uri.digest
            && let Some(hit) = self.lookup(&digest)?
        {
            return Ok(hit);
        }
        let staging = Staging(tempdir_in(&self.root)?);
        let staging = &staging.0;
        let name = leaf_name(&uri.raw);
        let target = staging.join(&name);
        let bytes = match uri.scheme {
            Scheme::File => self.copy_local(
                uri,
                Path::new(uri.raw.trim_start_matches("file://")),
                &target,
            )?,
            Scheme::Pvc => self.copy_local(uri, &self.claim_path(uri)?, &target)?,
            Scheme::Oci => unreachable!("fetched by fetch_oci"),
            Scheme::Http | Scheme::Https => self.download(uri, &target)?,
            Scheme::S3 => self.download_s3(uri, &target, &self.s3)?,
            Scheme::Gs => self.download_s3(uri, &target, &self.gcs)?,
        };
        let actual = digest_path(&target)?;
        if let Some(expected) = uri.digest
            && expected != actual
        {
            return Err(Error::DigestMismatch {
                uri: uri.raw.clone(),
                expected,
                actual,
            });
        }
        let slot = self.root.join("sha256").join(actual.to_string());
        // Atomic: the verified staging directory becomes the cache entry. If another fetch
        // of the same content (an unpinned URI, another process) got there first, its entry
        // is the same bytes.
        if !slot.exists()
            && let Err(e) = std::fs::rename(staging, &slot)
            && !slot.exists()
        {
            return Err(io(&slot)(e));
        }
        let path = slot.join(&name);
        if !path.exists() {
            // The entry holds the same content under another name.
            if let Some(hit) = self.lookup(&actual)? {
                return Ok(Fetched {
                    downloaded: true,
                    ..hit
                });
            }
        }
        Ok(Fetched {
            digest: actual,
            path,
            bytes,
            downloaded: true,
        })
    }

    /// An image: its manifest digest names the cache entry `oci/<hex>/model`, made only from
    /// blobs that matched the manifest (see the `oci` module).
    fn fetch_oci(&self, uri: &StorageUri) -> Result<Fetched, Error> {
        let entry = |digest: &Digest| self.root.join("oci").join(digest.to_string());
        if let Some(digest) = uri.digest {
            let path = entry(&digest).join("model");
            if path.is_dir() {
                return Ok(Fetched {
                    digest,
                    bytes: size(&path)?,
                    path,
                    downloaded: false,
                });
            }
        }
        let staging = Staging(tempdir_in(&self.root)?);
        let pulled = oci::pull(&uri.raw, &staging.0, self.max_bytes, self.timeout, |d| {
            entry(d).join("model").is_dir()
        })?;
        let slot = entry(&pulled.digest);
        let Some(bytes) = pulled.bytes else {
            // A tag that names an image the cache has.
            let path = slot.join("model");
            return Ok(Fetched {
                digest: pulled.digest,
                bytes: size(&path)?,
                path,
                downloaded: false,
            });
        };
        let parent = self.root.join("oci");
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        // As for other entries: an entry that is there already is the same verified image.
        if !slot.exists()
            && let Err(e) = std::fs::rename(&staging.0, &slot)
            && !slot.exists()
        {
            return Err(io(&slot)(e));
        }
        Ok(Fetched {
            digest: pulled.digest,
            path: slot.join("model"),
            bytes,
            downloaded: true,
        })
    }

    /// The directory `pvc://<claim>/<path>` stands for.
    fn claim_path(&self, uri: &StorageUri) -> Result<PathBuf, Error> {
        let rest = uri.raw.split_once("://").map_or("", |(_, r)| r);
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(dir) = self.claims.get(claim) else {
            return Err(Error::Fetch {
                uri: uri.raw.clone(),
                message: format!(
                    "claim `{claim}` is not mapped to a directory: start crossfade with --pvc {claim}=<directory>"
                ),
            });
        };
        let mut out = dir.clone();
        for segment in path.split('/').filter(|s| !s.is_empty() && *s != ".") {
            if segment == ".." {
                return Err(Error::Fetch {
                    uri: uri.raw.clone(),
                    message: "the path leaves the claim's directory".into(),
                });
            }
            out.push(segment);
        }
        Ok(out)
    }

    fn lookup(&self, digest: &Digest) -> Result<Option<Fetched>, Error> {
        let slot = self.root.join("sha256").join(digest.to_string());
        let Ok(mut entries) = std::fs::read_dir(&slot) else {
            return Ok(None);
        };
        let Some(entry) = entries.next() else {
            return Ok(None);
        };
        let path = entry.map_err(io(&slot))?.path();
        Ok(Some(Fetched {
            digest: *digest,
            bytes: size(&path)?,
            path,
            downloaded: false,
        }))
    }

    fn copy_local(&self, uri: &StorageUri, source: &Path, target: &Path) -> Result<u64, Error> {
        let source = source.to_owned();
        let meta = std::fs::metadata(&source).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                uri: uri.raw.clone(),
            },
            _ => Error::Io {
                path: source.clone(),
                source: e,
            },
        })?;
        let limit = |n: u64| -> Result<(), Error> {
            if n > self.max_bytes {
                Err(Error::TooLarge {
                    uri: uri.raw.clone(),
                    limit: self.max_bytes,
                })
            } else {
                Ok(())
            }
        };
        if meta.is_dir() {
            limit(size(&source)?)?;
            copy_dir(&source, target)
        } else if meta.is_file() {
            limit(meta.len())?;
            std::fs::copy(&source, target).map_err(io(&source))
        } else {
            // A FIFO or a device would be read forever.
            Err(Error::Fetch {
                uri: uri.raw.clone(),
                message: "not a regular file or a directory".into(),
            })
        }
    }

    /// An object, or every object under the key as a directory.
    fn download_s3(
        &self,
        uri: &StorageUri,
        target: &Path,
        config: &S3Config,
    ) -> Result<u64, Error> {
        let (bucket, key) = s3::split_uri(&uri.raw).ok_or_else(|| Error::Fetch {
            uri: uri.raw.clone(),
            message: "expected s3://<bucket>/<key>".into(),
        })?;
        let client = s3::S3::new(config.clone(), self.timeout)?;
        if !key.is_empty()
            && let Some(n) = client.get(bucket, key, target, self.max_bytes)?
        {
            return Ok(n);
        }
        let keys = client.list(bucket, key)?;
        if keys.is_empty() {
            return Err(Error::NotFound {
                uri: uri.raw.clone(),
            });
        }
        let mut total = 0;
        for k in keys {
            let rel = k.strip_prefix(&format!("{key}/")).unwrap_or(&k);
            if rel.is_empty() || rel.split('/').any(|s| s == ".." || s.is_empty()) {
                continue;
            }
            let left = self.max_bytes.saturating_sub(total);
            total += client
                .get(bucket, &k, &target.join(rel), left)?
                .unwrap_or(0);
        }
        Ok(total)
    }

    fn download(&self, uri: &StorageUri, target: &Path) -> Result<u64, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let fail = |message: String| Error::Fetch {
            uri: uri.raw.clone(),
            message,
        };
        let client = reqwest::blocking::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut response = client
            .get(&uri.raw)
            .send()
            .map_err(|e| fail(root_cause(&e)))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::NotFound {
                uri: uri.raw.clone(),
            });
        }
        if !response.status().is_success() {
            return Err(fail(format!("the server answered {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(Error::TooLarge {
                uri: uri.raw.clone(),
                limit: self.max_bytes,
            });
        }
        let mut file = std::fs::File::create(target).map_err(io(target))?;
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = response.read(&mut buf).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > self.max_bytes {
                return Err(Error::TooLarge {
                    uri: uri.raw.clone(),
                    limit: self.max_bytes,
                });
            }
            file.write_all(&buf[..n]).map_err(io(target))?;
        }
        file.sync_all().map_err(io(target))?;
        Ok(total)
    }
}

/// Uploads a file or directory under `prefix` at `<prefix>/sha256-<hex>/<name>` (a directory:
/// `<prefix>/sha256-<hex>/`, its tree below) and returns the pinned `storageUri` to write in
/// the manifest. Uploading what is there already changes nothing. To `oci://<registry>/<repo>
/// [:<tag>]`: an image with the files under `/models` (a KServe modelcar), pinned by its
/// manifest digest (`oci://<registry>/<repo>@sha256:<hex>`).
pub fn push(path: &Path, prefix: &str) -> Result<String, Error> {
    let config = if prefix.starts_with("gs://") {
        S3Config::gcs_from_env()
    } else {
        S3Config::from_env()
    };
    push_with(path, prefix, &config)
}

/// [`push`] with an explicit S3 (or, for `gs://`, GCS) configuration.
pub fn push_with(path: &Path, prefix: &str, s3_config: &S3Config) -> Result<String, Error> {
    let uri = StorageUri::parse(prefix.trim_end_matches('/')).map_err(|e| Error::Fetch {
        uri: prefix.to_owned(),
        message: e.to_string(),
    })?;
    if uri.scheme == Scheme::Oci {
        return oci::push(path, &uri.raw, Duration::from_secs(300));
    }
    let digest = digest_path(path)?;
    let base = format!("{}/sha256-{digest}", uri.raw);
    let is_dir = path.is_dir();
    let target_uri = if is_dir {
        base.clone()
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "artifact".into());
        format!("{base}/{name}")
    };
    match uri.scheme {
        Scheme::File => {
            let dest_dir = PathBuf::from(base.trim_start_matches("file://"));
            if dest_dir.exists() {
                // Content-addressed: the same digest is the same content.
                return Ok(target_uri);
            }
            let parent = dest_dir.parent().ok_or_else(|| Error::Fetch {
                uri: prefix.to_owned(),
                message: "no parent directory".into(),
            })?;
            std::fs::create_dir_all(parent).map_err(io(parent))?;
            let staging = tempdir_in(parent)?;
            if is_dir {
                copy_dir(path, &staging)?;
            } else {
                let dest = staging.join(target_uri.rsplit('/').next().unwrap_or("artifact"));
                std::fs::copy(path, &dest).map_err(io(&dest))?;
            }
            // A publish of the same content that got there first left the same bytes.
            if let Err(e) = std::fs::rename(&staging, &dest_dir) {
                let _ = std::fs::remove_dir_all(&staging);
                if !dest_dir.exists() {
                    return Err(io(&dest_dir)(e));
                }
            }
            Ok(target_uri)
        }
        Scheme::Http | Scheme::Https => Err(Error::Unsupported {
            uri: prefix.to_owned(),
            scheme: "uploading over http(s)",
        }),
        Scheme::Pvc => Err(Error::Unsupported {
            uri: prefix.to_owned(),
            scheme: "uploading to a claim (copy into the claim's directory and push to file://)",
        }),
        Scheme::Oci => unreachable!("pushed by oci::push"),
        Scheme::S3 | Scheme::Gs => {
            let (bucket, key) = s3::split_uri(&target_uri).ok_or_else(|| Error::Fetch {
                uri: prefix.to_owned(),
                message: "expected s3://<bucket>/<prefix>".into(),
            })?;
            let client = s3::S3::new(s3_config.clone(), Duration::from_secs(300))?;
            if is_dir {
                let mut files = Vec::new();
                walk(path, "", &mut files)?;
                for rel in files {
                    let file = path.join(&rel);
                    let body = std::fs::read(&file).map_err(io(&file))?;
                    client.put(bucket, &format!("{key}/{rel}"), body)?;
                }
            } else {
                let body = std::fs::read(path).map_err(io(path))?;
                client.put(bucket, key, body)?;
            }
            Ok(target_uri)
        }
    }
}

/// The digest of a file (its bytes) or a directory (its listing; see the crate docs).
pub fn digest_path(path: &Path) -> Result<Digest, Error> {
    if path.is_dir() {
        let listing = listing(path)?;
        Ok(Digest(Sha256::digest(listing.as_bytes()).into()))
    } else {
        digest_file(path)
    }
}

/// The canonical listing of a directory: `<sha256 hex>  <relative path>\n` per file, sorted.
pub fn listing(dir: &Path) -> Result<String, Error> {
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort();
    let mut out = String::new();
    for rel in files {
        let d = digest_file(&dir.join(&rel))?;
        out.push_str(&format!("{d}  {rel}\n"));
    }
    Ok(out)
}

fn digest_file(path: &Path) -> Result<Digest, Error> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest(hasher.finalize().into()))
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), Error> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let ty = entry.file_type().map_err(io(dir))?;
        if ty.is_dir() {
            walk(&entry.path(), &rel, out)?;
        } else if ty.is_file() {
            out.push(rel);
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<u64, Error> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    let mut total = 0;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let ty = entry.file_type().map_err(io(from))?;
        let dest = to.join(entry.file_name());
        if ty.is_dir() {
            total += copy_dir(&entry.path(), &dest)?;
        } else if ty.is_file() {
            total += std::fs::copy(entry.path(), &dest).map_err(io(&dest))?;
        }
    }
    Ok(total)
}

fn size(path: &Path) -> Result<u64, Error> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(io(path))? {
        total += size(&entry.map_err(io(path))?.path())?;
    }
    Ok(total)
}

/// The last path segment of a URI (`model.onnx`), or `artifact` when there is none.
fn leaf_name(uri: &str) -> String {
    uri.split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty() && !s.contains(':'))
        .unwrap_or("artifact")
        .to_owned()
}

/// A download in progress: removed, with whatever it holds, unless it became a cache entry.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Removes the staging directories of processes that are gone (a download cut by a crash or a
/// `kill -9`): a failed download leaves nothing behind, across restarts too.
fn remove_abandoned_staging(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("tmp-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let running = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !running {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh directory under `root` for a download in progress.
fn tempdir_in(root: &Path) -> Result<PathBuf, Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = root.join(format!("tmp-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&dir)(e)),
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests;
