//! The Git side of crossfade: a bare mirror of the repository named by an Application,
//! resolution of `targetRevision`, manifests read straight from the object database, commit
//! signature verification, and webhook authentication.
//!
//! Everything here is blocking; async callers run it on a blocking thread.

mod mirror;
mod verify;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

pub use mirror::{CommitInfo, Mirror, SignedCommit};
pub use verify::{Rejection, Signer, TrustedKeys};

/// Errors of the source crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the mirror at {}: {message}", path.display())]
    Open { path: PathBuf, message: String },
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("fetching {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("cannot resolve revision `{revision}`: {message}")]
    Resolve { revision: String, message: String },
    #[error("cannot read object {id}: {message}")]
    Object { id: String, message: String },
    #[error("commit {commit} has no directory `{path}`")]
    MissingPath { commit: String, path: String },
    #[error("{file}:{line}: {message}")]
    Keys {
        file: String,
        line: usize,
        message: String,
    },
}
