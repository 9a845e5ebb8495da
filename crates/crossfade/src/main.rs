//! The `crossfade` binary: command-line parsing and the wiring of the library crates.

mod artifact_cmd;
mod builtin;
mod client;
mod controller;
mod datadir;
mod demo;
mod lint;
mod notify;
mod rollout_cmd;
mod runtime_policy;
mod up;

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
    /// See the whole idea work on this machine: a Git repository, a good model promoted step by
    /// step, a bad one caught and rolled back. No network, nothing to prepare.
    Demo(demo::Args),
    /// Check manifests (Application, InferenceService, ServingRuntime, Rollout,
    /// AnalysisTemplate) and report every problem with its file, line and field.
    ///
    /// Exit status: 0 when there is no error (warnings allowed), 1 when there is one, 2 on a
    /// usage error.
    Lint(lint::Args),
    /// Sync a Git repository of manifests continuously and serve the control API.
    Up(Box<up::Args>),
    /// Show what serves: source commit, services, revisions and traffic.
    Status(client::Connection),
    /// Show the sync history (newest first), optionally of one service.
    History {
        /// A service, as `namespace/name` or `name`.
        service: Option<String>,
        /// How many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Fetch and sync now, and show what happened.
    Sync {
        /// Return at once instead of waiting for the result.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Fetch and reconcile under the sync policy (as a poll would), and show what happened.
    Refresh {
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Set a service's traffic split by hand: `crossfade traffic models/iris iris-predictor-00001=100`.
    Traffic {
        /// The service, as `namespace/name` or `name` (namespace default).
        service: String,
        /// `REVISION=PERCENT`, summing to 100.
        #[arg(required = true)]
        splits: Vec<String>,
        #[command(flatten)]
        connection: client::Connection,
    },
    /// Progressive delivery: list, inspect and command Rollouts.
    #[command(subcommand)]
    Rollout(rollout_cmd::Command),
    /// Inspect the audit log.
    #[command(subcommand)]
    Audit(client::AuditCommand),
    /// Publish model artifacts under their digest, and check pinned URIs.
    #[command(subcommand)]
    Artifact(artifact_cmd::Command),
    /// crossfade's own model servers (MLServer from PyPI) for scikit-learn, MLflow and Hugging
    /// Face models: install their environments, list them.
    #[command(subcommand)]
    Runtime(builtin::RuntimeCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `lint` reports its own usage errors (a missing directory) with status 2.
    let lint_usage = matches!(cli.command, Command::Lint(_));
    // One rustls provider for the whole process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Lint(args) => lint::run(&args),
        Command::Up(args) => up::run(*args).map(|()| ExitCode::SUCCESS),
        Command::Status(c) => client::status(&c),
        Command::History {
            service,
            limit,
            connection,
        } => client::history(&connection, service.as_deref(), limit),
        Command::Sync {
            no_wait,
            connection,
        } => client::sync(&connection, !no_wait, false),
        Command::Refresh { connection } => client::sync(&connection, true, true),
        Command::Traffic {
            service,
            splits,
            connection,
        } => client::traffic(&connection, &service, &splits),
        Command::Rollout(command) => rollout_cmd::run(&command),
        Command::Audit(command) => client::audit(&command),
        Command::Artifact(command) => artifact_cmd::run(&command),
        Command::Runtime(command) => builtin::run(&command),
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
            ExitCode::from(if lint_usage { 2 } else { 1 })
        }
    }
}
