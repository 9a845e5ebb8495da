//! Commits really signed by `git commit -S`, with keys made by `ssh-keygen` and `gpg`.

use std::time::Duration;

use source::{Mirror, Rejection, TrustedKeys};
use test_support::{GitRepo, SigningKey};

/// Mirrors `repo` and returns the commit info of `id`.
fn fetched(repo: &GitRepo, id: &str) -> (tempfile::TempDir, source::CommitInfo) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(repo.path().to_str().unwrap(), &dir.path().join("m")).unwrap();
    mirror.fetch(Duration::from_secs(60)).unwrap();
    let info = mirror.commit(id).unwrap();
    (dir, info)
}

/// A copy of commit `id` with its message changed but its signature kept, on branch `tampered`.
fn tamper(repo: &GitRepo, id: &str) -> String {
    let raw = repo.git(&["cat-file", "commit", id]);
    let forged = raw.replace("signed change", "forged change");
    assert_ne!(raw, forged);
    let path = repo.path().join(".git/forged");
    std::fs::write(&path, forged).unwrap();
    let new = repo
        .git(&["hash-object", "-t", "commit", "-w", path.to_str().unwrap()])
        .trim()
        .to_owned();
    repo.git(&["update-ref", "refs/heads/tampered", &new]);
    new
}

#[test]
fn ssh_signatures() {
    let alice = SigningKey::ssh("alice@example.com");
    let mallory = SigningKey::ssh("mallory@example.com");
    let mut trusted = TrustedKeys::default();
    trusted
        .add_allowed_signers(
            &format!(
                "# trusted signers\n{}\n",
                alice.allowed_signers_line("alice@example.com")
            ),
            "allowed_signers",
        )
        .unwrap();

    let mut repo = GitRepo::new();
    repo.write("a.yaml", "a: 1\n");
    let unsigned = repo.commit("unsigned change");
    repo.sign_with(alice);
    repo.write("a.yaml", "a: 2\n");
    let good = repo.commit("signed change");
    let forged = tamper(&repo, &good);
    repo.sign_with(mallory);
    repo.write("a.yaml", "a: 3\n");
    let untrusted = repo.commit("mallory's change");

    let (_d, info) = fetched(&repo, &good);
    let signer = trusted.verify(&info).unwrap();
    assert_eq!(signer.identity, "alice@example.com");
    assert!(
        signer.fingerprint.starts_with("SHA256:"),
        "{}",
        signer.fingerprint
    );

    let (_d, info) = fetched(&repo, &unsigned);
    assert_eq!(trusted.verify(&info), Err(Rejection::Unsigned));

    let (_d, info) = fetched(&repo, &untrusted);
    assert!(
        matches!(trusted.verify(&info), Err(Rejection::UntrustedKey(k)) if k.starts_with("SHA256:"))
    );

    let (_d, info) = fetched(&repo, &forged);
    assert!(info.signature.is_some());
    assert!(matches!(
        trusted.verify(&info),
        Err(Rejection::BadSignature(_))
    ));
}

#[test]
fn ssh_key_options_are_honoured() {
    let alice = SigningKey::ssh("alice@example.com");
    let mut repo = GitRepo::new();
    let line = alice.allowed_signers_line("alice@example.com");
    repo.sign_with(alice);
    repo.write("a.yaml", "a: 1\n");
    let id = repo.commit("signed change");
    let (_d, info) = fetched(&repo, &id);

    let with_options = |options: &str| {
        let (principal, key) = line.split_once(' ').unwrap();
        let mut keys = TrustedKeys::default();
        keys.add_allowed_signers(&format!("{principal} {options} {key}"), "allowed_signers")
            .unwrap();
        keys.verify(&info)
    };
    assert!(with_options(r#"namespaces="git""#).is_ok());
    assert!(with_options(r#"namespaces="file,git""#).is_ok());
    assert!(matches!(
        with_options(r#"namespaces="file""#),
        Err(Rejection::KeyNotValid(_))
    ));
    assert!(matches!(
        with_options("valid-before=20000101"),
        Err(Rejection::KeyNotValid(_))
    ));
    assert!(matches!(
        with_options("valid-after=29990101"),
        Err(Rejection::KeyNotValid(_))
    ));
    assert!(with_options("valid-after=20000101,valid-before=29990101").is_ok());
}

#[test]
fn bad_allowed_signers_name_the_line() {
    let mut keys = TrustedKeys::default();
    let err = keys
        .add_allowed_signers(
            "# ok\n\nalice@example.com ssh-ed25519 not-base64\n",
            "signers",
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("signers:3: not an SSH public key"),
        "{err}"
    );
    let err = keys
        .add_allowed_signers("a@b bogus-option=1 ssh-ed25519 AAAA\n", "signers")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("signers:1: unknown option `bogus-option`"),
        "{err}"
    );
    let err = keys.add_keyring("not a key", "keyring.asc").unwrap_err();
    assert!(err.to_string().starts_with("keyring.asc:"), "{err}");
}

#[test]
fn openpgp_signatures_from_a_signing_subkey() {
    let signer = SigningKey::gpg("signer@example.com");
    let stranger = SigningKey::gpg("stranger@example.com");
    let mut trusted = TrustedKeys::default();
    trusted.add_keyring(signer.public(), "keyring.asc").unwrap();

    let mut repo = GitRepo::new();
    repo.sign_with(signer);
    repo.write("a.yaml", "a: 1\n");
    let good = repo.commit("signed change");
    let forged = tamper(&repo, &good);
    repo.sign_with(stranger);
    repo.write("a.yaml", "a: 2\n");
    let untrusted = repo.commit("stranger's change");

    let (_d, info) = fetched(&repo, &good);
    let who = trusted.verify(&info).unwrap();
    assert_eq!(who.identity, "Signer <signer@example.com>");
    assert_eq!(who.fingerprint.len(), 40);

    let (_d, info) = fetched(&repo, &forged);
    assert!(matches!(
        trusted.verify(&info),
        Err(Rejection::BadSignature(_))
    ));

    let (_d, info) = fetched(&repo, &untrusted);
    assert!(matches!(
        trusted.verify(&info),
        Err(Rejection::UntrustedKey(_))
    ));
}
