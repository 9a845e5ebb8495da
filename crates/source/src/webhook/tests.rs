use super::{Push, Sender, WebhookError, authenticate, parse_push, sign};

const SECRET: &[u8] = b"It's a Secret to Everybody";
const BODY: &[u8] = b"Hello, World!";

fn check(headers: &[(&str, &str)], body: &[u8]) -> Result<Sender, WebhookError> {
    authenticate(
        SECRET,
        |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
        body,
    )
}

#[test]
fn github_documented_example() {
    // The example from GitHub's "Validating webhook deliveries" page.
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(sign(SECRET, BODY), &sig[7..]);
    assert_eq!(
        check(&[("x-hub-signature-256", sig)], BODY),
        Ok(Sender::GitHub)
    );
    assert_eq!(
        check(&[("x-hub-signature-256", sig)], b"Hello, World?"),
        Err(WebhookError::BadSignature("GitHub"))
    );
    assert_eq!(
        check(&[("x-hub-signature-256", &sig[7..])], BODY),
        Err(WebhookError::BadSignature("GitHub"))
    );
}

#[test]
fn every_sender() {
    let hex = sign(SECRET, BODY);
    let prefixed = format!("sha256={hex}");
    let secret = std::str::from_utf8(SECRET).unwrap();
    assert_eq!(
        check(&[("x-gitlab-token", secret)], BODY),
        Ok(Sender::GitLab)
    );
    assert_eq!(
        check(&[("x-gitlab-token", "wrong")], BODY),
        Err(WebhookError::BadSignature("GitLab"))
    );
    assert_eq!(
        check(&[("x-gitea-signature", &hex)], BODY),
        Ok(Sender::Gitea)
    );
    assert_eq!(check(&[("x-gogs-signature", &hex)], BODY), Ok(Sender::Gogs));
    assert_eq!(
        check(&[("x-crossfade-signature", &prefixed)], BODY),
        Ok(Sender::Generic)
    );
    assert_eq!(
        check(&[("x-gitea-signature", "zz")], BODY),
        Err(WebhookError::BadSignature("Gitea"))
    );
    assert_eq!(check(&[], BODY), Err(WebhookError::Unsigned));
}

#[test]
fn push_payloads() {
    let body = br#"{"ref":"refs/heads/main","after":"0123abcd","repository":{"name":"m"}}"#;
    assert_eq!(
        parse_push(body),
        Ok(Push {
            git_ref: Some("refs/heads/main".into()),
            after: Some("0123abcd".into())
        })
    );
    assert_eq!(parse_push(b""), Ok(Push::default()));
    assert_eq!(parse_push(b"{}"), Ok(Push::default()));
    assert!(matches!(
        parse_push(b"{not json"),
        Err(WebhookError::Malformed(_))
    ));
    assert!(matches!(
        parse_push(b"[1]"),
        Err(WebhookError::Malformed(_))
    ));
}
