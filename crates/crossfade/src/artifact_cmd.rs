//! `crossfade artifact push|verify`: publish a model under its digest, check a pinned URI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Upload a model file or directory to `<prefix>/sha256-<hex>/...` (or as an OCI image)
    /// and print the pinned storageUri to paste into the manifest.
    Push {
        /// The file or directory to upload.
        path: PathBuf,
        /// Where to put it: `file:///srv/models/iris`, `s3://bucket/models/iris`, `gs://...`,
        /// or `oci://<registry>/<repository>[:<tag>]` (a one-layer image with the files under
        /// /models, KServe's modelcar layout, pinned by its manifest digest).
        #[arg(long = "to", value_name = "URI-PREFIX")]
        to: String,
    },
    /// Fetch a storageUri and check it against the digest it pins.
    Verify {
        /// The storageUri, as in the manifest.
        uri: String,
        /// Largest artifact to fetch, in bytes.
        #[arg(long, default_value_t = 4 << 30)]
        max_bytes: u64,
    },
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Push { path, to } => {
            let uri = artifact::push(path, to)?;
            println!("{uri}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { uri, max_bytes } => {
            let parsed = manifest::StorageUri::parse(uri).with_context(|| format!("`{uri}`"))?;
            let scratch =
                std::env::temp_dir().join(format!("crossfade-verify-{}", std::process::id()));
            let cache = artifact::Cache::new(&scratch, *max_bytes, Duration::from_secs(300))?;
            let result = cache.fetch(&parsed);
            let _ = std::fs::remove_dir_all(&scratch);
            match result {
                Ok(f) => {
                    match parsed.digest {
                        Some(_) => {
                            println!("ok: {uri} matches sha256:{} ({} bytes)", f.digest, f.bytes)
                        }
                        None if parsed.scheme == manifest::Scheme::Oci => {
                            // The repository without its tag (after the last `/`).
                            let slash = uri.rfind('/').unwrap_or(0);
                            let name = uri[slash..]
                                .find(':')
                                .map_or(uri.as_str(), |colon| &uri[..slash + colon]);
                            println!(
                                "{uri} pins no digest; it names {name}@sha256:{} ({} bytes)",
                                f.digest, f.bytes
                            )
                        }
                        None => println!(
                            "{uri} pins no digest; its content is sha256:{} ({} bytes)",
                            f.digest, f.bytes
                        ),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ artifact::Error::DigestMismatch { .. }) => {
                    println!("MISMATCH: {e}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
