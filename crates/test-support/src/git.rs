//! A Git repository built with the `git` command line, isolated from the user's configuration.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A non-bare repository in a temporary directory, on branch `main`.
pub struct GitRepo {
    dir: tempfile::TempDir,
    signing: Option<SigningKey>,
}

/// A key to sign commits with, made by `ssh-keygen` or `gpg` in its own temporary directory.
pub struct SigningKey {
    home: tempfile::TempDir,
    kind: KeyKind,
}

enum KeyKind {
    Ssh {
        private: PathBuf,
        public: String,
    },
    Gpg {
        fingerprint: String,
        armored: String,
    },
}

// === impl GitRepo ===

impl GitRepo {
    pub fn new() -> Self {
        let repo = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            signing: None,
        };
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sign every following commit with `key`.
    pub fn sign_with(&mut self, key: SigningKey) {
        self.signing = Some(key);
    }

    /// Stop signing.
    pub fn unsigned(&mut self) -> Option<SigningKey> {
        self.signing.take()
    }

    /// Writes a file (creating directories).
    pub fn write(&self, path: &str, content: &str) -> &Self {
        let full = self.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
        self
    }

    pub fn remove(&self, path: &str) -> &Self {
        std::fs::remove_file(self.path().join(path)).unwrap();
        self
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        let mut args = vec!["commit", "--quiet", "--allow-empty", "-m", message];
        if self.signing.is_some() {
            args.push("-S");
        }
        self.git(&args);
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Pushes every branch and tag to the repository at `remote`, forcing rewritten ones.
    pub fn push_to(&self, remote: &Path) {
        let remote = remote.to_str().unwrap();
        self.git(&[
            "push",
            "--quiet",
            "--force",
            remote,
            "refs/heads/*:refs/heads/*",
        ]);
        self.git(&["push", "--quiet", "--force", "--tags", remote]);
    }

    pub fn tag(&self, name: &str) {
        self.git(&["tag", name]);
    }

    pub fn branch(&self, name: &str) {
        self.git(&["checkout", "--quiet", "-B", name]);
    }

    /// Runs `git` in the repository with a clean configuration; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        cmd.current_dir(self.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Ada Lovelace")
            .env("GIT_AUTHOR_EMAIL", "ada@example.com")
            .env("GIT_COMMITTER_NAME", "Ada Lovelace")
            .env("GIT_COMMITTER_EMAIL", "ada@example.com");
        if let Some(key) = &self.signing {
            key.configure(&mut cmd);
        }
        cmd.args(args);
        let out = cmd.output().expect("run git");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Default for GitRepo {
    fn default() -> Self {
        Self::new()
    }
}

// === impl SigningKey ===

impl SigningKey {
    /// An ed25519 SSH key made by `ssh-keygen`.
    pub fn ssh(comment: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let private = home.path().join("id_ed25519");
        run(Command::new("ssh-keygen").args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            private.to_str().unwrap(),
        ]));
        let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
        Self {
            home,
            kind: KeyKind::Ssh {
                private,
                public: public.trim().to_owned(),
            },
        }
    }

    /// An OpenPGP key made by `gpg` in a private home, with a signing subkey (the common case:
    /// the primary key certifies, the subkey signs).
    pub fn gpg(email: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let gpg = |args: &[&str]| {
            let out = Command::new("gpg")
                .env("GNUPGHOME", home.path())
                .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args)
                .output()
                .expect("run gpg");
            assert!(
                out.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let uid = format!("Signer <{email}>");
        gpg(&["--quick-generate-key", &uid, "ed25519", "cert", "never"]);
        let listing = gpg(&["--with-colons", "--list-keys", email]);
        let fingerprint = listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .unwrap()
            .to_owned();
        gpg(&["--quick-add-key", &fingerprint, "ed25519", "sign", "never"]);
        let armored = gpg(&["--armor", "--export", &fingerprint]);
        Self {
            home,
            kind: KeyKind::Gpg {
                fingerprint,
                armored,
            },
        }
    }

    /// The public key: an `allowed_signers` key (`ssh-ed25519 AAAA... comment`) or an armored
    /// OpenPGP public key block.
    pub fn public(&self) -> &str {
        match &self.kind {
            KeyKind::Ssh { public, .. } => public,
            KeyKind::Gpg { armored, .. } => armored,
        }
    }

    /// A line for git's `allowed_signers` file naming `principal`.
    pub fn allowed_signers_line(&self, principal: &str) -> String {
        format!("{principal} {}", self.public())
    }

    fn configure(&self, cmd: &mut Command) {
        match &self.kind {
            KeyKind::Ssh { private, .. } => {
                cmd.args(["-c", "gpg.format=ssh", "-c"])
                    .arg(format!("user.signingkey={}", private.display()));
            }
            KeyKind::Gpg { fingerprint, .. } => {
                cmd.env("GNUPGHOME", self.home.path())
                    .args(["-c", "gpg.format=openpgp", "-c"])
                    .arg(format!("user.signingkey={fingerprint}"));
            }
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
