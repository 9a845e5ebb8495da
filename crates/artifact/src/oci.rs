//! OCI images as model artifacts, over the OCI distribution API: KServe's modelcars (the model
//! files under `/models` in the image's layers) and artifacts pushed with ORAS (one file per
//! layer, named by its `org.opencontainers.image.title` annotation).
//!
//! # Verification
//!
//! `oci://<registry>/<repository>@sha256:<hex>` pins the image manifest's digest. The manifest
//! is hashed before it is read, and every blob it lists (an index's chosen manifest, each
//! layer) is hashed while it downloads and refused unless it matches its descriptor: what is
//! unpacked is exactly what the pinned digest covers. A tag (`:<tag>`, or none: `latest`) is
//! resolved to the manifest it names at fetch time, and that manifest's digest becomes the
//! revision's digest.
//!
//! # Unpacking
//!
//! Layers are applied in order, whiteouts (`.wh.<name>`, `.wh..wh..opq`) included. Only
//! directories and regular files are written: links, devices and paths that leave the
//! directory (`..`, absolute) are skipped. Unpacked bytes count against the size limit like
//! downloaded ones (a small layer cannot unpack into a large tree).
//!
//! # Registries
//!
//! Loopback registries (`localhost`, `127.0.0.1`, `[::1]`) are spoken to over plain HTTP,
//! others over HTTPS. A registry that answers 401 with a `Bearer` challenge gets an anonymous
//! token from the realm it names (public images on Docker Hub, GHCR, Quay); credentials are
//! not supported yet.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use manifest::Digest;
use sha2::{Digest as _, Sha256};

use crate::{Error, io};

/// Media types of image manifests and indexes this reads, best first.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TITLE: &str = "org.opencontainers.image.title";
/// A manifest larger than this is not an image manifest.
const MAX_MANIFEST: u64 = 4 << 20;

/// `<registry>/<repository>` and the tag or digest of an `oci://` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// `oci://registry[:port]/repo/sitory[:tag][@sha256:<hex>]` (also `oci+native://`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let rest = raw
            .split_once("://")
            .map(|(_, r)| r)
            .ok_or("expected oci://<registry>/<repository>")?;
        let (name, digest) = match rest.rsplit_once('@') {
            Some((name, d)) => (
                name,
                Some(
                    d.strip_prefix("sha256:")
                        .and_then(Digest::from_hex)
                        .ok_or_else(|| format!("`{d}` is not sha256:<64 hex>"))?,
                ),
            ),
            None => (rest, None),
        };
        let (registry, path) = name
            .split_once('/')
            .filter(|(r, p)| !r.is_empty() && !p.is_empty())
            .ok_or("expected oci://<registry>/<repository>")?;
        // A tag is after the last `:` of the last segment (a registry's port is in the first).
        let last = path.rsplit('/').next().unwrap_or_default();
        let (repository, tag) = match last.rsplit_once(':') {
            Some((_, tag)) => (&path[..path.len() - tag.len() - 1], Some(tag.to_owned())),
            None => (path, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        };
        if !valid(repository) {
            return Err(format!(
                "`{repository}` is not a repository name (lower-case letters, digits, `._-/`)"
            ));
        }
        if let Some(t) = &tag
            && (t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return Err(format!("`{t}` is not a tag"));
        }
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    fn base(&self) -> String {
        let host = self
            .registry
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(self.registry.as_str(), |(h, _)| h);
        let loopback = matches!(host, "localhost" | "[::1]") || host.starts_with("127.");
        let scheme = if loopback { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.registry, self.repository)
    }

    /// What the manifest is asked for by: the digest when pinned, else the tag.
    fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("sha256:{d}"),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

/// A registry client: one repository, an anonymous bearer token once the registry asks.
struct Client {
    http: reqwest::blocking::Client,
    base: String,
    uri: String,
    token: Option<String>,
}

impl Client {
    fn new(reference: &Reference, uri: &str, timeout: Duration) -> Result<Self, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| fetch_error(uri, e.to_string()))?;
        Ok(Self {
            http,
            base: reference.base(),
            uri: uri.to_owned(),
            token: None,
        })
    }

    fn fail(&self, message: impl Into<String>) -> Error {
        fetch_error(&self.uri, message.into())
    }

    /// Sends the request `make` builds, once more with a token if the registry asks for one.
    fn send(
        &mut self,
        make: impl Fn(&reqwest::blocking::Client) -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response, Error> {
        for attempt in 0..2 {
            let mut request = make(&self.http);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .map_err(|e| self.fail(crate::root_cause(&e)))?;
            if response.status() != reqwest::StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            self.token = Some(self.anonymous_token(&challenge)?);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// A token from the realm of a `Bearer realm="...",service="...",scope="..."` challenge.
    fn anonymous_token(&self, challenge: &str) -> Result<String, Error> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(self.fail(
                "the registry requires authentication, and crossfade pulls anonymously (credentials are not supported yet)",
            ));
        };
        let mut realm = None;
        let mut query = Vec::new();
        for part in split_params(params) {
            let Some((k, v)) = part.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim() {
                "realm" => realm = Some(v),
                "service" | "scope" => query.push((k.trim().to_owned(), v)),
                _ => {}
            }
        }
        let realm = realm.ok_or_else(|| self.fail("the registry's challenge names no realm"))?;
        let mut url = reqwest::Url::parse(&realm)
            .map_err(|e| self.fail(format!("the registry's token realm `{realm}`: {e}")))?;
        for (k, v) in &query {
            url.query_pairs_mut().append_pair(k, v);
        }
        let response = self
            .http
            .get(url)
            .send()
            .map_err(|e| self.fail(crate::root_cause(&e)))?;
        if !response.status().is_success() {
            return Err(self.fail(format!(
                "the registry's token service answered {} (a private image: credentials are not supported yet)",
                response.status()
            )));
        }
        let text = response
            .text()
            .map_err(|e| self.fail(format!("the token service's answer: {e}")))?;
        let body: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| self.fail(format!("the token service's answer: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| self.fail("the token service's answer has no token"))
    }

    /// A manifest (or index) by tag or digest: its bytes, hashed, at most [`MAX_MANIFEST`].
    fn manifest(&mut self, reference: &str) -> Result<(Vec<u8>, Digest), Error> {
        let url = format!("{}/manifests/{reference}", self.base);
        let mut response = self.send(|c| c.get(&url).header(reqwest::header::ACCEPT, ACCEPT))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::NotFound {
                uri: self.uri.clone(),
            });
        }
        if !response.status().is_success() {
            return Err(self.fail(format!(
                "the registry answered {} for manifest {reference}",
                response.status()
            )));
        }
        let mut body = Vec::new();
        (&mut response)
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.fail(e.to_string()))?;
        if body.len() as u64 > MAX_MANIFEST {
            return Err(self.fail(format!("manifest {reference} is larger than 4 MiB")));
        }
        let digest = Digest(Sha256::digest(&body).into());
        Ok((body, digest))
    }

    /// Downloads a blob into `target`, refusing it unless it hashes to `expected`, and at most
    /// `limit` bytes.
    fn blob(&mut self, expected: &Digest, target: &Path, limit: u64) -> Result<u64, Error> {
        let url = format!("{}/blobs/sha256:{expected}", self.base);
        let mut response = self.send(|c| c.get(&url))?;
        if !response.status().is_success() {
            return Err(self.fail(format!(
                "the registry answered {} for blob sha256:{expected}",
                response.status()
            )));
        }
        let mut file = std::fs::File::create(target).map_err(io(target))?;
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = response
                .read(&mut buf)
                .map_err(|e| self.fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limit {
                return Err(Error::TooLarge {
                    uri: self.uri.clone(),
                    limit,
                });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io(target))?;
        }
        let actual = Digest(hasher.finalize().into());
        if actual != *expected {
            return Err(Error::DigestMismatch {
                uri: format!("{} (blob)", self.uri),
                expected: *expected,
                actual,
            });
        }
        Ok(total)
    }
}

/// Splits `a="x,y",b=c` at the commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn fetch_error(uri: &str, message: String) -> Error {
    Error::Fetch {
        uri: uri.to_owned(),
        message,
    }
}

/// A descriptor of a manifest: what a blob is, its digest and size.
struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    title: Option<String>,
    platform: Option<(String, String)>,
}

fn descriptors(doc: &serde_json::Value, key: &str, uri: &str) -> Result<Vec<Descriptor>, Error> {
    let Some(items) = doc.get(key).and_then(|v| v.as_array()) else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|d| {
            let digest = d
                .get("digest")
                .and_then(|v| v.as_str())
                .and_then(|s| s.strip_prefix("sha256:"))
                .and_then(Digest::from_hex)
                .ok_or_else(|| fetch_error(uri, format!("a {key} entry has no sha256 digest")))?;
            let text =
                |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
            Ok(Descriptor {
                media_type: text(d.get("mediaType")).unwrap_or_default(),
                digest,
                size: d
                    .get("size")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
                title: text(d.get("annotations").and_then(|a| a.get(TITLE))),
                platform: d.get("platform").map(|p| {
                    (
                        text(p.get("os")).unwrap_or_default(),
                        text(p.get("architecture")).unwrap_or_default(),
                    )
                }),
            })
        })
        .collect()
}

/// The architecture's name in OCI platforms.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What a fetch produced in `staging`: the model tree and the manifest digest it came from.
pub(crate) struct Pulled {
    pub digest: Digest,
    /// Downloaded bytes; `None` when `cached` had the image already.
    pub bytes: Option<u64>,
}

/// Pulls the image `uri` names into `staging/model`, verifying everything against the pinned
/// digest (or, for a tag, the digest of the manifest the tag names now), unless `cached` says
/// the cache has that manifest's image already.
pub(crate) fn pull(
    uri: &str,
    staging: &Path,
    max_bytes: u64,
    timeout: Duration,
    cached: impl Fn(&Digest) -> bool,
) -> Result<Pulled, Error> {
    let reference = Reference::parse(uri).map_err(|m| fetch_error(uri, m))?;
    let mut client = Client::new(&reference, uri, timeout)?;
    let (mut body, digest) = client.manifest(&reference.reference())?;
    if let Some(expected) = reference.digest
        && expected != digest
    {
        return Err(Error::DigestMismatch {
            uri: uri.to_owned(),
            expected,
            actual: digest,
        });
    }
    if cached(&digest) {
        return Ok(Pulled {
            digest,
            bytes: None,
        });
    }
    let mut doc: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| fetch_error(uri, format!("the manifest is not JSON: {e}")))?;
    // An index: the manifest for this platform, else the only one.
    if doc.get("manifests").is_some() {
        let entries = descriptors(&doc, "manifests", uri)?;
        let ours = entries
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|(os, arch)| os == "linux" && arch == oci_arch())
            })
            .or(match entries.as_slice() {
                [one] => Some(one),
                _ => None,
            })
            .ok_or_else(|| {
                fetch_error(
                    uri,
                    format!("the image index has no manifest for linux/{}", oci_arch()),
                )
            })?;
        let expected = ours.digest;
        let (inner, actual) = client.manifest(&format!("sha256:{expected}"))?;
        if actual != expected {
            return Err(Error::DigestMismatch {
                uri: format!("{uri} (platform manifest)"),
                expected,
                actual,
            });
        }
        body = inner;
        doc = serde_json::from_slice(&body)
            .map_err(|e| fetch_error(uri, format!("the manifest is not JSON: {e}")))?;
    }
    let layers = descriptors(&doc, "layers", uri)?;
    if layers.is_empty() {
        return Err(fetch_error(
            uri,
            "the image manifest lists no layers".into(),
        ));
    }
    let rootfs = staging.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;
    let mut budget = Budget {
        left: max_bytes,
        limit: max_bytes,
        uri,
    };
    let mut downloaded = 0;
    for (i, layer) in layers.iter().enumerate() {
        if layer.size > budget.left {
            return Err(budget.exceeded());
        }
        let blob = staging.join(format!("blob-{i}"));
        let n = client.blob(&layer.digest, &blob, budget.left)?;
        downloaded += n;
        budget.take(n)?;
        apply_layer(layer, &blob, &rootfs, &mut budget)?;
        std::fs::remove_file(&blob).map_err(io(&blob))?;
    }
    // A modelcar keeps the model under /models; an ORAS artifact is the files themselves.
    let models = rootfs.join("models");
    let dir = staging.join("model");
    let from = if models.is_dir() { &models } else { &rootfs };
    std::fs::rename(from, &dir).map_err(io(&dir))?;
    let _ = std::fs::remove_dir_all(&rootfs);
    Ok(Pulled {
        digest,
        bytes: Some(downloaded),
    })
}

/// Bytes left under the size limit, downloaded and unpacked alike.
struct Budget<'a> {
    left: u64,
    limit: u64,
    uri: &'a str,
}

impl Budget<'_> {
    fn take(&mut self, n: u64) -> Result<(), Error> {
        self.left = self.left.checked_sub(n).ok_or_else(|| self.exceeded())?;
        Ok(())
    }

    fn exceeded(&self) -> Error {
        Error::TooLarge {
            uri: self.uri.to_owned(),
            limit: self.limit,
        }
    }
}

fn apply_layer(
    layer: &Descriptor,
    blob: &Path,
    rootfs: &Path,
    budget: &mut Budget<'_>,
) -> Result<(), Error> {
    let uri = budget.uri;
    let media = layer.media_type.as_str();
    let file = std::fs::File::open(blob).map_err(io(blob))?;
    if media.contains("tar") {
        if media.contains("zstd") {
            return Err(fetch_error(
                uri,
                format!(
                    "layer sha256:{} is zstd-compressed, which crossfade does not unpack yet: push it with gzip",
                    layer.digest
                ),
            ));
        }
        let reader: Box<dyn Read> = if media.contains("gzip") {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        return untar(reader, rootfs, budget);
    }
    // An ORAS artifact's file: its title names it.
    let Some(title) = &layer.title else {
        return Err(fetch_error(
            uri,
            format!(
                "layer sha256:{} ({media}) is neither a tar archive nor a titled file",
                layer.digest
            ),
        ));
    };
    let rel = safe_relative(Path::new(title))
        .ok_or_else(|| fetch_error(uri, format!("layer title `{title}` leaves the artifact")))?;
    let target = rootfs.join(rel);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::copy(blob, &target).map_err(io(&target))?;
    Ok(())
}

/// The path made of `path`'s normal components, `None` when it would leave the directory.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Applies one layer's tar stream to `rootfs`.
fn untar(reader: impl Read, rootfs: &Path, budget: &mut Budget<'_>) -> Result<(), Error> {
    let uri = budget.uri;
    let bad =
        |e: std::io::Error| fetch_error(uri, format!("a layer is not a valid tar archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(rel) = safe_relative(&path) else {
            continue;
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = rootfs.join(rel.parent().unwrap_or(Path::new("")));
        // Whiteouts: what lower layers put here is gone.
        if name == ".wh..wh..opq" {
            if let Ok(children) = std::fs::read_dir(&parent) {
                for child in children.flatten() {
                    remove_any(&child.path())?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&parent.join(hidden))?;
            continue;
        }
        let target = rootfs.join(&rel);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                if !target.is_dir() {
                    remove_any(&target)?;
                }
                std::fs::create_dir_all(&target).map_err(io(&target))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                budget.take(size)?;
                std::fs::create_dir_all(&parent).map_err(io(&parent))?;
                remove_any(&target)?;
                let mut out = std::fs::File::create(&target).map_err(io(&target))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out).map_err(bad)?;
                if copied != size {
                    return Err(fetch_error(
                        uri,
                        "a layer's tar archive is cut short".into(),
                    ));
                }
            }
            // Links, devices, FIFOs: nothing a model needs, and links could point outside.
            _ => {}
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), Error> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(io(path))
    } else {
        std::fs::remove_file(path).map_err(io(path))
    }
}

/// Pushes a file or directory to `target` (`oci://<registry>/<repository>[:<tag>]`) as a
/// one-layer image with the files under `/models` (the modelcar layout), and returns the
/// pinned URI (`oci://<registry>/<repository>@sha256:<manifest digest>`). The layer is
/// reproducible (sorted entries, no timestamps or owners), so the same files give the same
/// digest.
pub(crate) fn push(path: &Path, target: &str, timeout: Duration) -> Result<String, Error> {
    let reference = Reference::parse(target).map_err(|m| fetch_error(target, m))?;
    if reference.digest.is_some() {
        return Err(fetch_error(
            target,
            "push to a repository or a tag; the digest is what the push prints".into(),
        ));
    }
    let tar = layer_tar(path)?;
    let diff_id = Digest(Sha256::digest(&tar).into());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).map_err(io(path))?;
    let layer = gz.finish().map_err(io(path))?;
    let layer_digest = Digest(Sha256::digest(&layer).into());
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    })
    .to_string()
    .into_bytes();
    let config_digest = Digest(Sha256::digest(&config).into());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": OCI_LAYER_GZIP,
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = Digest(Sha256::digest(&manifest).into());
    let mut client = Client::new(&reference, target, timeout)?;
    upload_blob(&mut client, &config_digest, config)?;
    upload_blob(&mut client, &layer_digest, layer)?;
    let name = reference
        .tag
        .clone()
        .unwrap_or_else(|| format!("sha256:{manifest_digest}"));
    let url = format!("{}/manifests/{name}", client.base);
    let response = client.send(|c| {
        c.put(&url)
            .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest.clone())
    })?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().unwrap_or_default();
        return Err(client.fail(format!(
            "the registry refused the manifest ({status}): {}",
            text.trim()
        )));
    }
    Ok(format!(
        "oci://{}/{}@sha256:{manifest_digest}",
        reference.registry, reference.repository
    ))
}

fn upload_blob(client: &mut Client, digest: &Digest, body: Vec<u8>) -> Result<(), Error> {
    let blob = format!("{}/blobs/sha256:{digest}", client.base);
    if client.send(|c| c.head(&blob))?.status().is_success() {
        return Ok(());
    }
    let start = format!("{}/blobs/uploads/", client.base);
    let response = client.send(|c| c.post(&start))?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        return Err(client.fail(format!(
            "the registry did not start an upload ({})",
            response.status()
        )));
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| client.fail("the registry's upload has no Location"))?;
    // The location may be relative to the registry.
    let location = match reqwest::Url::parse(location) {
        Ok(url) => url,
        Err(_) => reqwest::Url::parse(&client.base)
            .and_then(|base| base.join(location))
            .map_err(|e| client.fail(format!("the upload location: {e}")))?,
    };
    let mut url = location;
    url.query_pairs_mut()
        .append_pair("digest", &format!("sha256:{digest}"));
    let response = client.send(|c| {
        c.put(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body.clone())
    })?;
    if response.status() != reqwest::StatusCode::CREATED {
        return Err(client.fail(format!(
            "the registry refused blob sha256:{digest} ({})",
            response.status()
        )));
    }
    Ok(())
}

/// A tar of `path` under `models/`: entries sorted, mode 0644 (directories 0755), owner 0, no
/// timestamp.
fn layer_tar(path: &Path) -> Result<Vec<u8>, Error> {
    let mut files = Vec::new();
    let is_dir = path.is_dir();
    if is_dir {
        crate::walk(path, "", &mut files)?;
        files.sort();
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        files.push(name);
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    let header = |kind: tar::EntryType, size: u64, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    let mut add_dir = |builder: &mut tar::Builder<Vec<u8>>, dir: String| -> Result<(), Error> {
        if dirs.insert(dir.clone()) {
            let mut h = header(tar::EntryType::Directory, 0, 0o755);
            builder
                .append_data(&mut h, format!("{dir}/"), std::io::empty())
                .map_err(io(path))?;
        }
        Ok(())
    };
    add_dir(&mut builder, "models".into())?;
    for rel in &files {
        let mut prefix = String::from("models");
        let segments: Vec<&str> = rel.split('/').collect();
        for segment in &segments[..segments.len() - 1] {
            prefix = format!("{prefix}/{segment}");
            add_dir(&mut builder, prefix.clone())?;
        }
        let source = if is_dir {
            path.join(rel)
        } else {
            path.to_owned()
        };
        let bytes = std::fs::read(&source).map_err(io(&source))?;
        let mut h = header(tar::EntryType::Regular, bytes.len() as u64, 0o644);
        builder
            .append_data(&mut h, format!("models/{rel}"), bytes.as_slice())
            .map_err(io(&source))?;
    }
    builder.into_inner().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_reads_them() {
        let r = Reference::parse("oci://localhost:5000/models/iris:v1").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "models/iris");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest, None);
        assert_eq!(r.base(), "http://localhost:5000/v2/models/iris");
        assert_eq!(r.reference(), "v1");

        let hex = "ab".repeat(32);
        let r = Reference::parse(&format!("oci://ghcr.io/org/iris@sha256:{hex}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().to_string(), hex);
        assert_eq!(r.base(), "https://ghcr.io/v2/org/iris");
        assert_eq!(r.reference(), format!("sha256:{hex}"));

        let r = Reference::parse("oci+native://127.0.0.1:1/iris").unwrap();
        assert_eq!(r.reference(), "latest");
        assert!(r.base().starts_with("http://"));

        assert!(Reference::parse("oci://registry/Iris").is_err());
        assert!(Reference::parse("oci://registry/iris:bad tag").is_err());
        assert!(Reference::parse("oci://registry").is_err());
        assert!(Reference::parse("oci://registry/iris@sha256:abc").is_err());
    }

    #[test]
    fn challenge_parameters_split_outside_quotes() {
        assert_eq!(
            split_params(r#"realm="https://a/token",service="r",scope="repository:x:pull,push""#),
            [
                r#"realm="https://a/token""#,
                r#"service="r""#,
                r#"scope="repository:x:pull,push""#
            ]
        );
    }

    #[test]
    fn layers_unpack_safely_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(&root).unwrap();
        let tar_of = |entries: &[(&str, tar::EntryType, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, kind, data) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(*kind);
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                if *kind == tar::EntryType::Symlink {
                    h.set_link_name("/etc/passwd").unwrap();
                }
                // The tar crate refuses to write `..`; set the raw name.
                let raw = &mut h.as_old_mut().name;
                raw[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let mut budget = Budget {
            left: 1 << 20,
            limit: 1 << 20,
            uri: "oci://r/x",
        };
        let first = tar_of(&[
            ("models/", tar::EntryType::Directory, b""),
            ("models/model.onnx", tar::EntryType::Regular, b"weights"),
            ("models/old.txt", tar::EntryType::Regular, b"old"),
            ("models/link", tar::EntryType::Symlink, b""),
            ("../escape", tar::EntryType::Regular, b"x"),
        ]);
        untar(first.as_slice(), &root, &mut budget).unwrap();
        let second = tar_of(&[("models/.wh.old.txt", tar::EntryType::Regular, b"")]);
        untar(second.as_slice(), &root, &mut budget).unwrap();
        assert_eq!(
            std::fs::read(root.join("models/model.onnx")).unwrap(),
            b"weights"
        );
        assert!(!root.join("models/old.txt").exists());
        assert!(std::fs::symlink_metadata(root.join("models/link")).is_err());
        assert!(!dir.path().join("escape").exists());
        assert_eq!(budget.left, (1 << 20) - 10);

        // A layer that unpacks past the limit is refused.
        let mut small = Budget {
            left: 3,
            limit: 3,
            uri: "oci://r/x",
        };
        let err = untar(first.as_slice(), &root, &mut small).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 3, .. }), "{err}");
    }
}
