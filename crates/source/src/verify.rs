//! Commit signature verification, in-process: SSH signatures (git's `gpg.format=ssh`) against an
//! `allowed_signers` file, and OpenPGP signatures against armored public keys. Nothing is shelled
//! out to `ssh-keygen` or `gpg`.

use std::fmt;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

use crate::{CommitInfo, Error};

/// The keys whose signatures are trusted.
#[derive(Debug, Default)]
pub struct TrustedKeys {
    ssh: Vec<AllowedSigner>,
    pgp: Vec<SignedPublicKey>,
}

/// One line of an `allowed_signers` file.
#[derive(Debug)]
struct AllowedSigner {
    principals: String,
    key: ssh_key::PublicKey,
    /// `namespaces="git,file"`: the key may only sign in these namespaces.
    namespaces: Option<Vec<String>>,
    /// `valid-after` / `valid-before`, as Unix seconds.
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

/// Who signed a commit whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The `allowed_signers` principals, or the OpenPGP user id.
    pub identity: String,
    /// `SHA256:...` for SSH keys, the hex fingerprint for OpenPGP keys.
    pub fingerprint: String,
}

/// Why a commit is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Unsigned,
    /// The signature is not SSH or OpenPGP (an X.509 signature, say), or is malformed.
    Malformed(String),
    /// Signed by a key that is not among the trusted ones.
    UntrustedKey(String),
    /// Signed by a trusted key, but the signature does not match the commit.
    BadSignature(String),
    /// A trusted key, outside its `valid-after`/`valid-before` window or namespaces.
    KeyNotValid(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Unsigned => f.write_str("the commit is not signed"),
            Rejection::Malformed(m) => write!(f, "the signature cannot be read: {m}"),
            Rejection::UntrustedKey(k) => write!(f, "signed by untrusted key {k}"),
            Rejection::BadSignature(k) => {
                write!(
                    f,
                    "the signature by {k} does not match the commit (tampered?)"
                )
            }
            Rejection::KeyNotValid(m) => write!(f, "the signing key is not valid here: {m}"),
        }
    }
}

// === impl TrustedKeys ===

impl TrustedKeys {
    pub fn is_empty(&self) -> bool {
        self.ssh.is_empty() && self.pgp.is_empty()
    }

    /// Adds the keys of an `allowed_signers` file (`man ssh-keygen`, "ALLOWED SIGNERS"):
    /// `principals [options] keytype base64 [comment]` per line. `file` names it in errors.
    pub fn add_allowed_signers(&mut self, text: &str, file: &str) -> Result<(), Error> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| Error::Keys {
                file: file.to_owned(),
                line: i + 1,
                message,
            };
            let (principals, rest) = split_token(line);
            let (options, key_text) = if is_key_type(first_token(rest)) {
                ("", rest)
            } else {
                split_token(rest)
            };
            let mut namespaces = None;
            let mut valid_after = None;
            let mut valid_before = None;
            for option in split_options(options) {
                let (name, value) = option.split_once('=').unwrap_or((option, ""));
                let value = value.trim_matches('"');
                match name.to_ascii_lowercase().as_str() {
                    "namespaces" => {
                        namespaces = Some(value.split(',').map(str::to_owned).collect());
                    }
                    "valid-after" => valid_after = Some(parse_time(value).map_err(bad)?),
                    "valid-before" => valid_before = Some(parse_time(value).map_err(bad)?),
                    "cert-authority" => {
                        return Err(bad("cert-authority keys are not supported".into()));
                    }
                    other => return Err(bad(format!("unknown option `{other}`"))),
                }
            }
            let signer = AllowedSigner {
                principals: principals.to_owned(),
                key: ssh_key::PublicKey::from_openssh(key_text.trim())
                    .map_err(|e| bad(format!("not an SSH public key: {e}")))?,
                namespaces,
                valid_after,
                valid_before,
            };
            self.ssh.push(signer);
        }
        Ok(())
    }

    /// Adds every key of an armored OpenPGP keyring (`gpg --armor --export`).
    pub fn add_keyring(&mut self, armored: &str, file: &str) -> Result<(), Error> {
        let bad = |message: String| Error::Keys {
            file: file.to_owned(),
            line: 0,
            message,
        };
        let (keys, _) = SignedPublicKey::from_armor_many(armored.as_bytes())
            .map_err(|e| bad(format!("not an armored OpenPGP key: {e}")))?;
        let before = self.pgp.len();
        for key in keys {
            self.pgp
                .push(key.map_err(|e| bad(format!("a key does not parse: {e}")))?);
        }
        if self.pgp.len() == before {
            return Err(bad("no public key in the file".into()));
        }
        Ok(())
    }

    /// Checks the signature of `commit`.
    pub fn verify(&self, commit: &CommitInfo) -> Result<Signer, Rejection> {
        let Some(signed) = &commit.signature else {
            return Err(Rejection::Unsigned);
        };
        let text = String::from_utf8_lossy(&signed.signature);
        if text.contains("-----BEGIN SSH SIGNATURE-----") {
            self.verify_ssh(&text, &signed.payload, commit.time)
        } else if text.contains("-----BEGIN PGP SIGNATURE-----") {
            self.verify_pgp(&text, &signed.payload)
        } else {
            Err(Rejection::Malformed(
                "only SSH and OpenPGP signatures are supported".into(),
            ))
        }
    }

    fn verify_ssh(&self, pem: &str, payload: &[u8], time: i64) -> Result<Signer, Rejection> {
        let sig = ssh_key::SshSig::from_pem(pem.trim())
            .map_err(|e| Rejection::Malformed(e.to_string()))?;
        let fingerprint = ssh_key::PublicKey::from(sig.public_key().clone())
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string();
        let Some(signer) = self
            .ssh
            .iter()
            .find(|s| s.key.key_data() == sig.public_key())
        else {
            return Err(Rejection::UntrustedKey(fingerprint));
        };
        if let Some(ns) = &signer.namespaces
            && !ns.iter().any(|n| n == "git")
        {
            return Err(Rejection::KeyNotValid(format!(
                "{fingerprint} may not sign in namespace git"
            )));
        }
        if signer.valid_after.is_some_and(|t| time < t)
            || signer.valid_before.is_some_and(|t| time > t)
        {
            return Err(Rejection::KeyNotValid(format!(
                "{fingerprint} is outside its valid-after/valid-before window at the commit's time"
            )));
        }
        signer
            .key
            .verify("git", payload, &sig)
            .map_err(|_| Rejection::BadSignature(fingerprint.clone()))?;
        Ok(Signer {
            identity: signer.principals.clone(),
            fingerprint,
        })
    }

    fn verify_pgp(&self, armored: &str, payload: &[u8]) -> Result<Signer, Rejection> {
        let (sig, _) = DetachedSignature::from_armor_single(armored.as_bytes())
            .map_err(|e| Rejection::Malformed(e.to_string()))?;
        let issuers: Vec<String> = sig
            .signature
            .issuer_fingerprint()
            .into_iter()
            .map(|f| hex(f.as_bytes()))
            .chain(
                sig.signature
                    .issuer_key_id()
                    .into_iter()
                    .map(|k| hex(k.as_ref())),
            )
            .collect();
        for key in &self.pgp {
            let identity = key
                .details
                .users
                .first()
                .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
                .unwrap_or_default();
            // A GPG signing subkey is the common case; the primary key may sign too.
            let mut candidates = vec![(
                hex(key.primary_key.fingerprint().as_bytes()),
                sig.verify(&key.primary_key, payload),
            )];
            for sub in &key.public_subkeys {
                candidates.push((
                    hex(sub.key.fingerprint().as_bytes()),
                    sig.verify(&sub.key, payload),
                ));
            }
            for (fingerprint, outcome) in candidates {
                let named = issuers.iter().any(|i| fingerprint.ends_with(i.as_str()));
                match outcome {
                    Ok(()) => {
                        return Ok(Signer {
                            identity,
                            fingerprint,
                        });
                    }
                    Err(_) if named => return Err(Rejection::BadSignature(fingerprint)),
                    Err(_) => {}
                }
            }
        }
        Err(Rejection::UntrustedKey(
            issuers
                .first()
                .cloned()
                .unwrap_or_else(|| "(unnamed)".into()),
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn first_token(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or_default()
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-")
}

/// Splits off the first whitespace-separated token, honouring double quotes.
fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&s[..i], &s[i..]),
            _ => {}
        }
    }
    (s, "")
}

/// Comma-separated options, commas inside quotes kept.
fn split_options(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
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
    if start < s.len() {
        out.push(&s[start..]);
    }
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

/// `YYYYMMDD[HHMM[SS]]` (UTC, as ssh-keygen reads it with a `Z` suffix) to Unix seconds.
fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim_end_matches(['Z', 'z']);
    let digits = |r: std::ops::Range<usize>| -> Result<i64, String> {
        s.get(r)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("`{s}` is not a time (YYYYMMDD[HHMM[SS]])"))
    };
    if !matches!(s.len(), 8 | 12 | 14) {
        return Err(format!("`{s}` is not a time (YYYYMMDD[HHMM[SS]])"));
    }
    // At most two digits each: the casts cannot truncate.
    let field = |r| digits(r).map(|v| v as u32);
    let t = civil::DateTime {
        year: digits(0..4)?,
        month: field(4..6)?,
        day: field(6..8)?,
        hour: if s.len() >= 12 { field(8..10)? } else { 0 },
        minute: if s.len() >= 12 { field(10..12)? } else { 0 },
        second: if s.len() == 14 { field(12..14)? } else { 0 },
    };
    if !t.is_valid() {
        return Err(format!("`{s}` is not a valid date and time"));
    }
    Ok(t.to_unix())
}

#[cfg(test)]
mod tests;
