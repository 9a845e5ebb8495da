//! The `crossfade` binary: command-line parsing and the wiring of the library crates.

mod lint;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// GitOps and progressive delivery for ML models, in one binary.
#[derive(Debug, Parser)]
#[command(name = "crossfade", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check manifests (Application, InferenceService, ServingRuntime, Rollout,
    /// AnalysisTemplate) and report every problem with its file, line and field.
    ///
    /// Exit status: 0 when there is no error (warnings allowed), 1 when there is one, 2 on a
    /// usage error.
    Lint(lint::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lint(args) => lint::run(&args),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`crossfade lint | head`): stop quietly, as SIGPIPE would.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(141)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
