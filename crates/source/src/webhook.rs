//! Authentication and parsing of push webhooks from GitHub, GitLab, Gitea, Gogs, or any sender
//! that signs the body with HMAC-SHA256.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Who sent a webhook, as told by the header that authenticated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
    GitHub,
    /// `X-Gitlab-Token: <secret>`.
    GitLab,
    /// `X-Gitea-Signature: <hex HMAC-SHA256>`.
    Gitea,
    /// `X-Gogs-Signature: <hex HMAC-SHA256>`.
    Gogs,
    /// `X-Crossfade-Signature: sha256=<hex HMAC-SHA256>`, for any other sender.
    Generic,
}

/// Why a webhook is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "no signature header (X-Hub-Signature-256, X-Gitlab-Token, X-Gitea-Signature, X-Gogs-Signature or X-Crossfade-Signature)"
    )]
    Unsigned,
    #[error("the {0} signature does not match the body and the configured secret")]
    BadSignature(&'static str),
    #[error("the body is not a JSON object: {0}")]
    Malformed(String),
}

/// What a push webhook says (the fields crossfade uses; all optional).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Push {
    /// `ref`, such as `refs/heads/main`.
    pub git_ref: Option<String>,
    /// `after`: the new commit.
    pub after: Option<String>,
}

const HEADERS: &[(&str, Sender)] = &[
    ("x-hub-signature-256", Sender::GitHub),
    ("x-gitlab-token", Sender::GitLab),
    ("x-gitea-signature", Sender::Gitea),
    ("x-gogs-signature", Sender::Gogs),
    ("x-crossfade-signature", Sender::Generic),
];

/// Checks a webhook against `secret`. `header` looks a header up by lower-case name.
/// Comparisons are constant-time.
pub fn authenticate<'h>(
    secret: &[u8],
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
) -> Result<Sender, WebhookError> {
    let Some((value, sender)) = HEADERS
        .iter()
        .find_map(|(name, sender)| header(name).map(|v| (v.trim(), *sender)))
    else {
        return Err(WebhookError::Unsigned);
    };
    let name = sender.name();
    let ok = match sender {
        Sender::GitLab => constant_time_eq(value.as_bytes(), secret),
        Sender::GitHub | Sender::Generic => value
            .strip_prefix("sha256=")
            .is_some_and(|hex| hmac_matches(secret, body, hex)),
        Sender::Gitea | Sender::Gogs => hmac_matches(secret, body, value),
    };
    if ok {
        Ok(sender)
    } else {
        Err(WebhookError::BadSignature(name))
    }
}

/// Reads the push fields of an authenticated body. An empty body is an empty push; anything
/// else must be a JSON object.
pub fn parse_push(body: &[u8]) -> Result<Push, WebhookError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Push::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| WebhookError::Malformed("expected an object".into()))?;
    let text = |key: &str| object.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(Push {
        git_ref: text("ref"),
        after: text("after"),
    })
}

impl Sender {
    pub fn name(self) -> &'static str {
        match self {
            Sender::GitHub => "GitHub",
            Sender::GitLab => "GitLab",
            Sender::Gitea => "Gitea",
            Sender::Gogs => "Gogs",
            Sender::Generic => "HMAC",
        }
    }
}

fn hmac_matches(secret: &[u8], body: &[u8], hex: &str) -> bool {
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// The hex HMAC-SHA256 of `body` (what a sender puts in its signature header).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
