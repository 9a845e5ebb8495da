//! Fixture builders shared by the tests of several crates: real Git repositories made with the
//! `git` command line (with really signed commits), in temporary directories, and servers the tests talk to for real.

mod git;
mod http_git;
mod registry;

pub use git::{GitRepo, SigningKey};
pub use http_git::{GitHttpServer, bare_clone};
pub use registry::Registry;
