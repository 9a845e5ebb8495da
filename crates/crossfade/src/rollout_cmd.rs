//! `crossfade rollout`: list, inspect (live, with `--watch`) and command Rollouts through the
//! control API of a running `crossfade up`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use api::dto;

use crate::client::{self, Connection};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every Rollout: phase, step, weights.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// One Rollout: its steps as a tree with the current one marked, the weights and every
    /// analysis measurement.
    Get {
        /// The Rollout's name.
        name: String,
        /// Redraw every two seconds until interrupted.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Skip the current pause or analysis (`--full`: every remaining step).
    Promote {
        name: String,
        /// Skip every remaining step and analysis: the canary becomes stable now.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        why: Reason,
    },
    /// Stop the rollout: the canary's weight goes to 0, the stable revision serves all.
    Abort {
        name: String,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        why: Reason,
    },
    /// Roll an aborted canary out again from the first step.
    Retry {
        name: String,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        why: Reason,
    },
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The Rollout's namespace, when several have its name.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, clap::Args)]
pub struct Reason {
    /// Why, for the audit log.
    #[arg(long)]
    reason: Option<String>,
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List { connection } => list(connection),
        Command::Get {
            name,
            watch,
            target,
        } => get(target, name, *watch),
        Command::Promote {
            name,
            full,
            target,
            why,
        } => act(target, name, "promote", *full, why),
        Command::Abort { name, target, why } => act(target, name, "abort", false, why),
        Command::Retry { name, target, why } => act(target, name, "retry", false, why),
    }
}

fn list(c: &Connection) -> anyhow::Result<ExitCode> {
    let (raw, rollouts): (String, Vec<dto::Rollout>) = client::get(c, "/api/v1/rollouts")?;
    if c.json() {
        println!("{raw}");
        return Ok(ExitCode::SUCCESS);
    }
    if rollouts.is_empty() {
        println!("no rollouts");
    }
    for r in &rollouts {
        println!(
            "{}/{}  {}  step {}  {}",
            r.namespace,
            r.name,
            r.phase,
            step_text(r),
            weights(r)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn path(t: &Target, name: &str, action: Option<&str>) -> String {
    let mut p = format!("/api/v1/rollouts/{}", client::encode(name));
    if let Some(a) = action {
        p.push('/');
        p.push_str(a);
    }
    if let Some(ns) = &t.namespace {
        p.push_str(&format!("?namespace={}", client::encode(ns)));
    }
    p
}

fn get(t: &Target, name: &str, watch: bool) -> anyhow::Result<ExitCode> {
    loop {
        let (raw, rollout): (String, dto::Rollout) =
            client::get(&t.connection, &path(t, name, None))?;
        if t.connection.json() {
            println!("{raw}");
        } else {
            if watch {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&rollout));
        }
        if !watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn act(t: &Target, name: &str, action: &str, full: bool, why: &Reason) -> anyhow::Result<ExitCode> {
    let body = dto::RolloutAction {
        full,
        reason: why.reason.clone(),
    };
    let url = format!(
        "{}{}",
        t.connection.server().trim_end_matches('/'),
        path(t, name, Some(action))
    );
    let token = client::token(&t.connection)?;
    let raw = client::request(&t.connection, |c| {
        c.post(&url).bearer_auth(&token).json(&body)
    })?;
    let rollout: dto::Rollout =
        serde_json::from_str(&raw).context("reading the server's answer")?;
    if t.connection.json() {
        println!("{raw}");
    } else {
        print!("{}", render(&rollout));
    }
    Ok(ExitCode::SUCCESS)
}

/// The step being run, 1-based as in the tree (`-` when nothing is being rolled out).
pub fn step_text(r: &dto::Rollout) -> String {
    if r.canary_revision.is_none() || r.aborted.is_some() {
        return "-".into();
    }
    format!(
        "{}/{}",
        (r.current_step_index + 1).min(r.step_count),
        r.step_count
    )
}

fn weights(r: &dto::Rollout) -> String {
    r.weights
        .iter()
        .map(|(rev, p)| format!("{rev} {p}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rollout as `kubectl argo rollouts get` shows one: a summary, the steps with the
/// current one marked, then the analysis runs and their measurements.
pub fn render(r: &dto::Rollout) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("Name:      {}/{}", r.namespace, r.name));
    line(format!("Service:   {}", r.service));
    line(format!("Phase:     {}", r.phase));
    line(format!("Message:   {}", r.message));
    line(format!(
        "Stable:    {}",
        r.stable_revision.as_deref().unwrap_or("-")
    ));
    line(format!(
        "Canary:    {}",
        r.canary_revision.as_deref().unwrap_or("-")
    ));
    line(format!("Traffic:   {}", weights(r)));
    for (name, p) in &r.mirrors {
        line(format!(
            "Mirror:    {name} {p}% of requests copied to the canary"
        ));
    }
    for h in &r.header_routes {
        line(format!("Header:    route {h} to the canary"));
    }
    line(format!("Step:      {}", step_text(r)));
    if let Some(since) = &r.paused_since {
        line(format!("Paused:    since {since}"));
    }
    line("Steps:".into());
    let in_progress = r.canary_revision.is_some() && r.aborted.is_none();
    for (i, step) in r.steps.iter().enumerate() {
        let i = i as u32;
        let mark = if !in_progress {
            "  "
        } else if i < r.current_step_index {
            "✔ "
        } else if i == r.current_step_index {
            "▶ "
        } else {
            "  "
        };
        let branch = if i + 1 == r.step_count {
            "└──"
        } else {
            "├──"
        };
        line(format!("  {branch} {mark}{}. {step}", i + 1));
    }
    if !r.analysis_runs.is_empty() {
        line("Analysis:".into());
    }
    for run in &r.analysis_runs {
        line(format!("  {}  {}", run.name, run.phase));
        if let Some(m) = &run.message {
            line(format!("    {m}"));
        }
        for m in &run.measurements {
            line(format!(
                "    {}  {}  {:<12} {}{}",
                m.finished_at,
                m.metric,
                m.phase,
                m.value
                    .as_deref()
                    .map_or("-".into(), analysis::compare::display),
                m.message
                    .as_deref()
                    .map(|x| format!("  ({x})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
