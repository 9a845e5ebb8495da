//! Which ServingRuntime commands `crossfade up` may start.
//!
//! A ServingRuntime's `command` comes from Git and runs on the serving machine as crossfade's
//! user. It runs only when the operator said so: `--allow-runtime-commands` (any runtime), or a
//! `--runtime-allowlist` file the operator owns, one `<runtime> <program>` pair a line:
//!
//! ```text
//! # ServingRuntime name, then the program its container.command starts (as written there)
//! mlserver-sklearn /opt/venv/bin/mlserver
//! kserve-*         /usr/local/bin/tritonserver
//! ```
//!
//! `*` alone matches any runtime or program; a trailing `*` matches a prefix. Arguments are not
//! matched: an allowed program gets the arguments Git gives it, so allow only programs that do
//! not run arbitrary code from their arguments (not `sh`, `python`, `bash`).

use std::path::Path;

use anyhow::{Context, bail};

/// The operator's decision about ServingRuntime commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RuntimeCommands {
    /// None runs (the default).
    #[default]
    Refused,
    /// Every ServingRuntime's command runs (`--allow-runtime-commands`).
    All,
    /// The pairs of a `--runtime-allowlist` file.
    Listed {
        file: String,
        entries: Vec<(String, String)>,
    },
}

impl RuntimeCommands {
    /// Reads an allow-list file; errors name the file and line.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the runtime allow-list {}", path.display()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let [runtime, program] = words[..] else {
                bail!(
                    "{}:{}: expected `<ServingRuntime name> <program>`, found {line:?}",
                    path.display(),
                    i + 1
                );
            };
            entries.push((runtime.to_owned(), program.to_owned()));
        }
        Ok(Self::Listed {
            file: path.display().to_string(),
            entries,
        })
    }

    /// `Ok` when `runtime` may start `program`; otherwise why not, and how to allow it.
    pub fn check(&self, runtime: &str, program: &str) -> Result<(), String> {
        let how = format!(
            "start crossfade up with --allow-runtime-commands, or list `{runtime} {program}` \
             in a --runtime-allowlist file"
        );
        // An analysis job is checked as `job/<AnalysisTemplate name>`.
        let who = match runtime.strip_prefix("job/") {
            Some(template) => format!("The job of AnalysisTemplate {template}"),
            None => format!("ServingRuntime {runtime}"),
        };
        match self {
            Self::All => Ok(()),
            Self::Listed { entries, .. }
                if entries
                    .iter()
                    .any(|(r, p)| matches(r, runtime) && matches(p, program)) =>
            {
                Ok(())
            }
            Self::Listed { file, .. } => Err(format!(
                "{who} would run {program:?} on this machine, and {file} does not allow it: {how}"
            )),
            Self::Refused => Err(format!(
                "{who} would run {program:?} on this machine, and crossfade runs a command \
                 from Git only when the operator allows it: {how}"
            )),
        }
    }
}

fn matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_operator_allowed_runs() {
        let refused = RuntimeCommands::Refused
            .check("mlserver", "mlserver")
            .unwrap_err();
        assert!(refused.contains("--allow-runtime-commands"), "{refused}");
        assert!(RuntimeCommands::All.check("x", "/bin/sh").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("allow");
        std::fs::write(
            &file,
            "# ours\nmlserver-sklearn /opt/venv/bin/mlserver\nkserve-* tritonserver # triton\n",
        )
        .unwrap();
        let listed = RuntimeCommands::from_file(&file).unwrap();
        assert!(
            listed
                .check("mlserver-sklearn", "/opt/venv/bin/mlserver")
                .is_ok()
        );
        assert!(listed.check("kserve-triton", "tritonserver").is_ok());
        let err = listed.check("mlserver-sklearn", "/bin/sh").unwrap_err();
        assert!(err.contains("does not allow it"), "{err}");
        assert!(listed.check("other", "tritonserver").is_err());
        std::fs::write(&file, "just-one-word\n").unwrap();
        let err = RuntimeCommands::from_file(&file).unwrap_err().to_string();
        assert!(err.contains(":1: expected"), "{err}");
    }
}
