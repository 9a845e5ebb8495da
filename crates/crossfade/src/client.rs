//! Client commands that talk to a running `crossfade up`: status, history, sync, audit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use api::dto;
use serde::de::DeserializeOwned;

use crate::datadir;

#[derive(Debug, clap::Args)]
pub struct Connection {
    /// The control API of `crossfade up`.
    #[arg(
        long,
        env = "CROSSFADE_SERVER",
        default_value = "http://127.0.0.1:8081"
    )]
    server: String,
    /// Admin token (default: the one `crossfade up` wrote into the default data directory).
    #[arg(long, env = "CROSSFADE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

impl Connection {
    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    pub fn server(&self) -> &str {
        &self.server
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit log; name the first broken entry.
    Verify {
        #[command(flatten)]
        connection: Connection,
        /// Check this data directory directly instead of asking the server (when
        /// `crossfade up` is not running).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

// === commands ===

pub fn status(c: &Connection) -> anyhow::Result<ExitCode> {
    let (raw, status): (String, dto::Status) = get(c, "/api/v1/status")?;
    if c.output == Output::Json {
        println!("{raw}");
        return Ok(ExitCode::SUCCESS);
    }
    for app in &status.applications {
        let s = &app.source;
        println!(
            "application {}  {} {} (path {})",
            app.name, s.repo, s.revision, s.path
        );
        match &s.commit {
            Some(commit) => println!(
                "  serving commit {}{}{}",
                &commit[..commit.len().min(12)],
                match (&s.signer, s.verified) {
                    (Some(who), true) => format!(", signed by {who}"),
                    _ => String::new(),
                },
                s.last_sync_at
                    .as_deref()
                    .map(|t| format!(", synced {t}"))
                    .unwrap_or_default()
            ),
            None => println!("  serving nothing yet"),
        }
        if let Some(e) = &s.error {
            println!("  ! {e}");
        }
    }
    if status.services.is_empty() {
        println!("no services");
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!(
        "{:<28} {:<10} {:<12} {:<28} {:>7}  {:<8} TAG",
        "SERVICE", "SYNC", "HEALTH", "REVISION", "TRAFFIC", "STATE"
    );
    for svc in &status.services {
        let id = format!("{}/{}", svc.namespace, svc.name);
        let sync = format!("{:?}", svc.sync_status);
        let health = format!("{:?}", svc.health);
        if svc.revisions.is_empty() {
            println!("{id:<28} {sync:<10} {health:<12}");
        }
        for (i, r) in svc.revisions.iter().enumerate() {
            let (id, sync, health) = if i == 0 {
                (id.as_str(), sync.as_str(), health.as_str())
            } else {
                ("", "", "")
            };
            println!(
                "{id:<28} {sync:<10} {health:<12} {:<28} {:>6}%  {:<8} {}",
                r.name,
                r.traffic_percent,
                r.state,
                r.tag.as_deref().unwrap_or("")
            );
        }
        if let Some(m) = &svc.message {
            println!("  ! {m}");
        }
    }
    if !status.rollouts.is_empty() {
        println!();
        println!("{:<28} {:<12} {:<7} MESSAGE", "ROLLOUT", "PHASE", "STEP");
    }
    for r in &status.rollouts {
        println!(
            "{:<28} {:<12} {:<7} {}",
            format!("{}/{}", r.namespace, r.name),
            r.phase,
            format!(
                "{}/{}",
                r.current_step_index.min(r.step_count),
                r.step_count
            ),
            r.message
        );
        // The newest measurement of each run still running or just decided.
        for run in r.analysis_runs.iter().rev().take(2) {
            if let Some(m) = run.measurements.last() {
                println!(
                    "  analysis {} {}: {} = {} ({}){}",
                    run.name,
                    run.phase,
                    m.metric,
                    m.value
                        .as_deref()
                        .map_or("-".into(), analysis::compare::display),
                    m.phase,
                    m.message
                        .as_deref()
                        .map(|x| format!(": {x}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn history(c: &Connection, service: Option<&str>, limit: usize) -> anyhow::Result<ExitCode> {
    let mut path = format!("/api/v1/history?limit={limit}");
    if let Some(s) = service {
        path.push_str(&format!("&service={}", encode(s)));
    }
    let (raw, entries): (String, Vec<dto::SyncEntry>) = get(c, &path)?;
    if c.output == Output::Json {
        println!("{raw}");
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("no syncs yet");
    }
    for e in &entries {
        let commit = e.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]);
        println!(
            "#{:<4} {}  {:<11} {commit}  {}{}",
            e.seq,
            e.time,
            e.outcome,
            e.author.as_deref().unwrap_or(""),
            e.signer
                .as_deref()
                .map(|s| format!("  signed by {s}"))
                .unwrap_or_default()
        );
        if let Some(m) = &e.message {
            println!("      {m}");
        }
        for d in &e.diagnostics {
            println!("      {d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sync(c: &Connection, wait: bool, refresh: bool) -> anyhow::Result<ExitCode> {
    let token = token(c)?;
    let url = if refresh {
        format!("{}/api/v1/refresh", c.server.trim_end_matches('/'))
    } else {
        format!("{}/api/v1/sync?wait={wait}", c.server.trim_end_matches('/'))
    };
    let raw = request(c, |client| client.post(&url).bearer_auth(&token))?;
    if c.output == Output::Json {
        println!("{raw}");
        return Ok(ExitCode::SUCCESS);
    }
    if !wait {
        println!("sync triggered");
        return Ok(ExitCode::SUCCESS);
    }
    let results: Vec<dto::SyncResult> =
        serde_json::from_str(&raw).context("reading the server's answer")?;
    let mut failed = false;
    for r in &results {
        let commit = r.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]);
        println!("{}: {} {commit}", r.application, r.outcome);
        if let Some(m) = &r.message {
            println!("  {m}");
        }
        failed |= !r.outcome.is_ok();
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn traffic(c: &Connection, service: &str, splits: &[String]) -> anyhow::Result<ExitCode> {
    let token = token(c)?;
    let (namespace, name) = service.split_once('/').unwrap_or(("default", service));
    let mut map = serde_json::Map::new();
    for s in splits {
        let (rev, pct) = s
            .split_once('=')
            .with_context(|| format!("`{s}`: write REVISION=PERCENT"))?;
        let pct: u8 = pct
            .trim_end_matches('%')
            .parse()
            .with_context(|| format!("`{s}`: the percent is not a number from 0 to 100"))?;
        map.insert(rev.to_owned(), pct.into());
    }
    let url = format!(
        "{}/api/v1/services/{}/{}/traffic",
        c.server.trim_end_matches('/'),
        encode(namespace),
        encode(name)
    );
    let body = serde_json::json!({ "splits": map });
    let raw = request(c, |client| {
        client.post(&url).bearer_auth(&token).json(&body)
    })?;
    if c.output == Output::Json {
        println!("{raw}");
    } else {
        println!(
            "traffic of {namespace}/{name} set by hand; Git takes it back at the next sync (or reconcile, with selfHeal)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(command: &AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify {
        connection: c,
        data_dir,
    } = command;
    let (raw, verdict) = match data_dir {
        Some(dir) => {
            let store =
                store::Store::open(dir).with_context(|| format!("opening {}", dir.display()))?;
            let verdict = crate::controller::audit_verdict(store.verify_audit()?);
            (serde_json::to_string_pretty(&verdict)?, verdict)
        }
        None => get::<dto::AuditVerify>(c, "/api/v1/audit/verify")?,
    };
    if c.output == Output::Json {
        println!("{raw}");
    } else if verdict.ok {
        println!("audit log intact: {} entries", verdict.entries);
    } else {
        println!(
            "audit log BROKEN at entry {}: {}",
            verdict.broken_at.unwrap_or_default(),
            verdict.reason.as_deref().unwrap_or("")
        );
    }
    Ok(if verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// === HTTP ===

pub fn get<T: DeserializeOwned>(c: &Connection, path: &str) -> anyhow::Result<(String, T)> {
    let url = format!("{}{path}", c.server.trim_end_matches('/'));
    let raw = request(c, |client| client.get(&url))?;
    let value = serde_json::from_str(&raw).context("reading the server's answer")?;
    Ok((raw, value))
}

/// Sends a request on a small runtime of its own; errors name the server and the cause.
pub fn request(
    c: &Connection,
    build: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?;
        let response = build(&client).send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach crossfade at {}: {} (is `crossfade up` running?)",
                c.server,
                root_cause(&e)
            )
        })?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<dto::ErrorBody>(&text)
                .map(|b| b.error)
                .unwrap_or(text);
            bail!("the server answered {status}: {message}");
        }
        Ok(text)
    })
}

pub fn token(c: &Connection) -> anyhow::Result<String> {
    c.token
        .clone()
        .or_else(|| datadir::stored_token(&datadir::default_dir()))
        .context("no admin token: pass --token or set CROSSFADE_TOKEN (crossfade up wrote one into its data directory's admin-token file)")
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
