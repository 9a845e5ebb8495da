//! S3 (and any S3-compatible store): GET, PUT and LIST with AWS Signature Version 4, configured
//! by the standard AWS environment variables.
//!
//! | variable | |
//! |---|---|
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | credentials (anonymous requests without them) |
//! | `AWS_SESSION_TOKEN` | for temporary credentials |
//! | `AWS_REGION` or `AWS_DEFAULT_REGION` | default `us-east-1` |
//! | `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` | an S3-compatible server; path-style addressing |

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use crate::Error;

/// Where and how to reach S3.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub region: String,
    /// `None`: AWS itself, virtual-hosted addressing.
    pub endpoint: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
}

impl S3Config {
    /// Google Cloud Storage through its S3-compatible XML API: HMAC keys from
    /// `GCS_ACCESS_KEY_ID` and `GCS_SECRET_ACCESS_KEY` (anonymous without them, for public
    /// buckets), endpoint `https://storage.googleapis.com` (or `CROSSFADE_GCS_ENDPOINT`).
    pub fn gcs_from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            region: "auto".into(),
            endpoint: Some(
                var("CROSSFADE_GCS_ENDPOINT")
                    .unwrap_or_else(|| "https://storage.googleapis.com".into()),
            ),
            access_key: var("GCS_ACCESS_KEY_ID"),
            secret_key: var("GCS_SECRET_ACCESS_KEY"),
            session_token: None,
        }
    }

    /// From the standard AWS environment variables.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            endpoint: var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")),
            access_key: var("AWS_ACCESS_KEY_ID"),
            secret_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
        }
    }
}

/// A client for one store.
pub struct S3 {
    config: S3Config,
    http: reqwest::blocking::Client,
}

/// `s3://bucket/key/path` (or `gs://...`) into (bucket, key).
pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri
        .strip_prefix("s3://")
        .or_else(|| uri.strip_prefix("gs://"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, key.trim_end_matches('/')))
}

impl S3 {
    pub fn new(config: S3Config, timeout: Duration) -> Result<Self, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Fetch {
                uri: "s3".into(),
                message: e.to_string(),
            })?;
        Ok(Self { config, http })
    }

    /// The object at `key`, streamed into `target`; `None` if there is no such object.
    /// Refuses objects over `limit` bytes.
    pub fn get(
        &self,
        bucket: &str,
        key: &str,
        target: &Path,
        limit: u64,
    ) -> Result<Option<u64>, Error> {
        let uri = format!("s3://{bucket}/{key}");
        let mut resp = self.send("GET", bucket, key, "", Vec::new(), &uri)?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(&mut resp, &uri)?;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(Error::TooLarge { uri, limit });
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(crate::io(parent))?;
        }
        let mut file = std::fs::File::create(target).map_err(crate::io(target))?;
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = resp.read(&mut buf).map_err(|e| Error::Fetch {
                uri: uri.clone(),
                message: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > limit {
                return Err(Error::TooLarge { uri, limit });
            }
            file.write_all(&buf[..n]).map_err(crate::io(target))?;
        }
        Ok(Some(total))
    }

    /// Keys under `prefix/` (ListObjectsV2, following continuation tokens).
    pub fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, Error> {
        let uri = format!("s3://{bucket}/{prefix}");
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type".to_owned(), "2".to_owned()),
                ("prefix".to_owned(), format!("{prefix}/")),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token".to_owned(), t.clone()));
            }
            query.sort();
            let qs: Vec<String> = query
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k, true), encode(v, true)))
                .collect();
            let mut resp = self.send("GET", bucket, "", &qs.join("&"), Vec::new(), &uri)?;
            check(&mut resp, &uri)?;
            let body = resp.text().map_err(|e| Error::Fetch {
                uri: uri.clone(),
                message: e.to_string(),
            })?;
            keys.extend(tags(&body, "Key").into_iter().map(unescape_xml));
            token = tags(&body, "NextContinuationToken")
                .into_iter()
                .next()
                .map(unescape_xml);
            let truncated = tags(&body, "IsTruncated")
                .first()
                .is_some_and(|t| t == "true");
            if !truncated || token.is_none() {
                break;
            }
        }
        Ok(keys)
    }

    /// Uploads `body` to `key`.
    pub fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<(), Error> {
        let uri = format!("s3://{bucket}/{key}");
        let mut resp = self.send("PUT", bucket, key, "", body, &uri)?;
        check(&mut resp, &uri)
    }

    fn send(
        &self,
        method: &str,
        bucket: &str,
        key: &str,
        query: &str,
        body: Vec<u8>,
        uri: &str,
    ) -> Result<reqwest::blocking::Response, Error> {
        let (host, path, base) = match &self.config.endpoint {
            Some(endpoint) => {
                let host = endpoint
                    .split("://")
                    .nth(1)
                    .unwrap_or(endpoint)
                    .trim_end_matches('/')
                    .to_owned();
                let path = format!("/{bucket}/{}", encode(key, false));
                (host, path, endpoint.trim_end_matches('/').to_owned())
            }
            None => {
                let host = format!("{bucket}.s3.{}.amazonaws.com", self.config.region);
                let path = format!("/{}", encode(key, false));
                (host.clone(), path, format!("https://{host}"))
            }
        };
        let path = if key.is_empty() && self.config.endpoint.is_some() {
            format!("/{bucket}")
        } else {
            path
        };
        let url = if query.is_empty() {
            format!("{base}{}", &path)
        } else {
            format!("{base}{path}?{query}")
        };
        let payload_hash = hex(&Sha256::digest(&body));
        let amz_date = amz_now();
        let mut headers = vec![
            ("host".to_owned(), host),
            ("x-amz-content-sha256".to_owned(), payload_hash.clone()),
            ("x-amz-date".to_owned(), amz_date.clone()),
        ];
        if let Some(t) = &self.config.session_token {
            headers.push(("x-amz-security-token".to_owned(), t.clone()));
        }
        headers.sort();
        let mut req = self
            .http
            .request(method.parse().expect("valid method"), &url)
            .body(body);
        for (k, v) in &headers {
            if k != "host" {
                req = req.header(k, v);
            }
        }
        if let (Some(ak), Some(sk)) = (&self.config.access_key, &self.config.secret_key) {
            let request = Canonical {
                method,
                path: &path,
                query,
                headers: &headers,
                payload_hash: &payload_hash,
            };
            req = req.header(
                "authorization",
                authorization(&request, &amz_date, &self.config.region, ak, sk),
            );
        }
        req.send().map_err(|e| Error::Fetch {
            uri: uri.to_owned(),
            message: crate::root_cause(&e),
        })
    }
}

/// Creates a bucket (path-style `PUT /<bucket>`), for setting up an S3-compatible server.
pub fn create_bucket(config: &S3Config, bucket: &str) -> Result<(), Error> {
    S3::new(config.clone(), Duration::from_secs(30))?.put(bucket, "", Vec::new())
}

/// The parts of a request that SigV4 signs. `headers` are lower-case and sorted.
struct Canonical<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(String, String)],
    payload_hash: &'a str,
}

/// The `Authorization` header of AWS Signature Version 4 for S3.
fn authorization(
    r: &Canonical<'_>,
    amz_date: &str,
    region: &str,
    access_key: &str,
    secret_key: &str,
) -> String {
    let date = &amz_date[..8];
    let signed: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        r.method,
        r.path,
        r.query,
        r.headers
            .iter()
            .map(|(k, v)| format!("{k}:{}\n", v.trim()))
            .collect::<String>(),
        signed.join(";"),
        r.payload_hash
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={}, Signature={signature}",
        signed.join(";")
    )
}

fn check(resp: &mut reqwest::blocking::Response, uri: &str) -> Result<(), Error> {
    if resp.status().is_success() {
        return Ok(());
    }
    let status = resp.status();
    let mut body = String::new();
    let _ = resp.read_to_string(&mut body);
    let code = tags(&body, "Code").into_iter().next().unwrap_or_default();
    Err(Error::Fetch {
        uri: uri.to_owned(),
        message: format!("S3 answered {status} {code}").trim().to_owned(),
    })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 encoding as SigV4 wants it; `/` kept in keys, encoded in query values.
fn encode(s: &str, slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The text of every `<tag>...</tag>` in a small XML document.
fn tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    out
}

fn unescape_xml(s: String) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `x-amz-date` (`20261126T133000Z`), from the wall clock: S3 checks it.
fn amz_now() -> String {
    let secs = clock::Clock::system().now().as_secs();
    let t = civil::DateTime::from_unix(secs);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of AWS's Signature Version 4 documentation for S3.
    #[test]
    fn aws_documented_signature() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let headers = vec![
            (
                "host".to_owned(),
                "examplebucket.s3.amazonaws.com".to_owned(),
            ),
            ("range".to_owned(), "bytes=0-9".to_owned()),
            ("x-amz-content-sha256".to_owned(), empty.to_owned()),
            ("x-amz-date".to_owned(), "20130524T000000Z".to_owned()),
        ];
        let auth = authorization(
            &Canonical {
                method: "GET",
                path: "/test.txt",
                query: "",
                headers: &headers,
                payload_hash: empty,
            },
            "20130524T000000Z",
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }
}
