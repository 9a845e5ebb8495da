//! `crossfade up`: sync a Git repository continuously and serve the control API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use engine::SyncPolicy;
use source::TrustedKeys;
use tokio::sync::watch;

use crate::controller::{Application, Controller, Settings, SharedController};
use crate::datadir;
use crate::runtime_policy::RuntimeCommands;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Git repository: a local path, file://, http:// or https:// URL.
    #[arg(long, conflicts_with = "application")]
    repo: Option<String>,
    /// Branch, tag, commit or HEAD (with --repo).
    #[arg(long, default_value = "HEAD", requires = "repo")]
    revision: String,
    /// Directory of manifests inside the repository (with --repo).
    #[arg(long, default_value = ".", requires = "repo")]
    path: String,
    /// Remove services deleted from Git (with --repo; an Application says it in syncPolicy).
    #[arg(long, requires = "repo")]
    prune: bool,
    /// Revert traffic changed through the API (with --repo).
    #[arg(long, requires = "repo")]
    self_heal: bool,
    /// Argo CD Application manifest(s) to run; may be given several times.
    #[arg(short = 'f', long = "application", value_name = "FILE")]
    application: Vec<PathBuf>,
    /// Where the database, Git mirrors and admin token live.
    #[arg(long, env = "CROSSFADE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the control API.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Address of the inference endpoints (KServe V1 and Open Inference V2).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Largest inference request body, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_body_bytes: usize,
    /// Largest model artifact, in bytes.
    #[arg(long, default_value_t = 4 << 30)]
    max_artifact_bytes: u64,
    /// Bearer token for mutating API calls (default: generated into the data directory).
    #[arg(
        long,
        env = "CROSSFADE_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    admin_token: Option<String>,
    /// Read the admin token from this file (kept out of the process list and environment).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// A host name the control API answers for, besides loopback names and IP addresses (a
    /// request for any other Host is refused); may be given several times.
    #[arg(long = "admin-host", value_name = "NAME")]
    admin_hosts: Vec<String>,
    /// `pvc://<claim>/<path>` storageUris read `<DIR>/<path>`: the directory that stands for
    /// the PersistentVolumeClaim `<claim>`; may be given several times.
    #[arg(long = "pvc", value_name = "CLAIM=DIR", value_parser = parse_claim)]
    pvc: Vec<(String, PathBuf)>,
    /// How often to fetch (30s, 5m, ...).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Give up on a fetch after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    fetch_timeout: Duration,
    /// A revision that is not fetched, verified, loaded and warmed up within this is Failed.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    load_timeout: Duration,
    /// Only sync commits signed by a key in this file (git's SSH allowed_signers format).
    #[arg(long, value_name = "FILE")]
    allowed_signers: Option<PathBuf>,
    /// Only sync commits signed by a key in this armored OpenPGP keyring.
    #[arg(long, value_name = "FILE")]
    gpg_keyring: Option<PathBuf>,
    /// Secret for POST /api/v1/webhook/git (GitHub, GitLab, Gitea, Gogs or HMAC-SHA256).
    #[arg(
        long,
        env = "CROSSFADE_WEBHOOK_SECRET",
        hide_env_values = true,
        conflicts_with = "webhook_secret_file"
    )]
    webhook_secret: Option<String>,
    /// Read the webhook secret from this file.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// Refuse commits whose storageUris do not pin a sha256 digest.
    #[arg(long)]
    require_digest: bool,
    /// POST a JSON event (with a Slack-compatible `text`) to this URL on every sync and rollout
    /// event; may be given several times.
    #[arg(long = "notify", value_name = "URL")]
    notify: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Let every ServingRuntime in Git start its command on this machine (as crossfade's user,
    /// with a scrubbed environment). Without this or --runtime-allowlist, none does.
    #[arg(long, conflicts_with = "runtime_allowlist")]
    allow_runtime_commands: bool,
    /// Where AnalysisTemplate arguments from `valueFrom.secretKeyRef` are read: the file
    /// `<DIR>/<secret name>/<key>`, as a Kubernetes Secret volume lays it out (read at each
    /// measurement; never shown).
    #[arg(long, value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// Where the built-in runtimes' environments are (`crossfade runtime install` makes them;
    /// default: `runtimes` in the data directory).
    #[arg(long, value_name = "DIR")]
    runtimes_dir: Option<PathBuf>,
    /// A file of `<ServingRuntime name> <program>` lines: the runtimes that may start which
    /// program (`*` matches any; a trailing `*` a prefix).
    #[arg(long, value_name = "FILE")]
    runtime_allowlist: Option<PathBuf>,
    /// Keep each service's recent inference requests on disk (`capture/` in the data
    /// directory) and replay them against a canary whose judged metrics have too few live
    /// requests. This stores request data (model inputs): off by default.
    #[arg(long)]
    capture_requests: bool,
    /// The most bytes of captured requests kept per service (the oldest go first).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES", requires = "capture_requests")]
    capture_max_bytes: u64,
    /// Captured requests older than this are deleted and never replayed.
    #[arg(long, default_value = "24h", value_parser = parse_duration, requires = "capture_requests")]
    capture_retention: Duration,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Connection limits and deadlines of both listeners (nginx's defaults where it has one).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Most client connections open at once on the data listener (the control API gets a
    /// third of this). Default: from the file limit, which crossfade raises to its hard limit
    /// at start, less a reserve for Git, artifacts and model servers. At the limit, the
    /// connection idle the longest is closed to make room.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Close a keep-alive connection that has sent no request for this long.
    #[arg(long, default_value = "75s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// A whole request head must arrive within this (from the connection's start for its
    /// first request); a late one is answered 408.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// A request body must arrive within this, plus its size at --min-rate.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// Bytes per second a body, and an answer being written, must average once their
    /// allowance (--body-timeout, --send-timeout) is spent.
    #[arg(long, default_value_t = 4096, value_name = "BYTES")]
    min_rate: u64,
    /// An answer must be written within this, plus its size at --min-rate.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    send_timeout: Duration,
    /// Most request-body bytes held across all connections; a request over it gets 503.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    max_buffered_bytes: usize,
    /// A model server (ServingRuntime) must accept a connection within this.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    upstream_connect_timeout: Duration,
    /// A model server must answer a request in full within this; a late answer is a 504, a
    /// server error of the revision.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    upstream_timeout: Duration,
}

impl LimitArgs {
    /// The data listener's limits and the control API's, from the flags and the file limit.
    fn resolve(&self, files: u64) -> (gateway::Limits, gateway::Limits) {
        let data = self
            .max_connections
            .unwrap_or_else(|| connections_for(files));
        let limits = gateway::Limits {
            max_connections: data.max(1),
            idle_timeout: self.idle_timeout,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            min_rate: self.min_rate,
            send_timeout: self.send_timeout,
            max_buffered_bytes: self.max_buffered_bytes,
        };
        let admin = gateway::Limits {
            max_connections: (data / 3).max(8),
            max_buffered_bytes: self.max_buffered_bytes.min(64 << 20),
            ..limits.clone()
        };
        (limits, admin)
    }

    pub fn upstream(&self) -> gateway::Timeouts {
        gateway::Timeouts {
            connect: self.upstream_connect_timeout,
            answer: self.upstream_timeout,
            ..gateway::Timeouts::default()
        }
    }
}

/// Data-plane connections for a file limit: what is left after a reserve (a quarter, between
/// 16 and 256 descriptors) for Git, artifacts, model servers and the database, of which the
/// control API takes a quarter.
fn connections_for(files: u64) -> usize {
    let files = usize::try_from(files).unwrap_or(usize::MAX).min(1 << 20);
    let reserve = (files / 4).clamp(16, 256);
    let left = files.saturating_sub(reserve);
    (left - left / 4).max(8)
}

/// Raises the soft limit on open files to the hard limit and returns it.
fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current != Some(hard)
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

/// Shortest webhook secret accepted.
const MIN_WEBHOOK_SECRET: usize = 16;

/// A secret kept in a file: its content without the trailing newline; an empty file is an
/// error naming it.
fn read_secret(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} from {}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_owned();
    if secret.trim().is_empty() {
        bail!("{} is empty: it should hold the {what}", path.display());
    }
    Ok(secret)
}

/// Largest request body on the control API (webhooks are the largest: GitHub caps its
/// payloads at 25 MB).
const ADMIN_BODY_LIMIT: usize = 25 << 20;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = manifest::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let apps = applications(&args)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(datadir::default_dir);
    let store = store::Store::open(&data_dir)?;
    let admin_token = match &args.admin_token_file {
        Some(file) => Some(read_secret(file, "admin token")?),
        None => args.admin_token.clone(),
    };
    let admin_token = datadir::admin_token(&data_dir, admin_token)?;
    let webhook_secret = match &args.webhook_secret_file {
        Some(file) => Some(read_secret(file, "webhook secret")?),
        None => args.webhook_secret.clone(),
    };
    if let Some(secret) = &webhook_secret
        && secret.len() < MIN_WEBHOOK_SECRET
    {
        bail!(
            "the webhook secret is {} bytes long: give at least {MIN_WEBHOOK_SECRET} (a random \
             string, e.g. `openssl rand -hex 32`); an empty or short one would let anyone \
             trigger syncs",
            secret.len()
        );
    }
    let trust = trusted_keys(&args)?;
    let files = raise_file_limit();
    let (limits, admin_limits) = args.limits.resolve(files);
    tracing::info!(
        open_files = files,
        max_connections = limits.max_connections,
        admin_max_connections = admin_limits.max_connections,
        "connection limits"
    );
    let gateway = gateway::Gateway::new(gateway::Config {
        body_limit: args.max_body_bytes,
        limits,
        clock: clock::Clock::system(),
    });
    if args.capture_requests {
        let dir = data_dir.join("capture");
        gateway
            .capture(gateway::CaptureConfig {
                dir: dir.clone(),
                max_bytes: args.capture_max_bytes,
                retention: args.capture_retention,
            })
            .with_context(|| format!("cannot capture requests into {}", dir.display()))?;
        tracing::info!(dir = %dir.display(), max_bytes = args.capture_max_bytes, "capturing requests for replay");
    }
    let settings = Settings {
        data_dir: data_dir.clone(),
        poll_interval: args.poll_interval,
        fetch_timeout: args.fetch_timeout,
        trust,
        require_digest: args.require_digest,
        admin_token,
        webhook_secret: webhook_secret.map(String::into_bytes),
        admin_hosts: args.admin_hosts.clone(),
        clock: clock::Clock::system(),
        notify: args.notify.clone(),
        gateway,
        admin_limits,
        upstream: args.limits.upstream(),
        load_timeout: args.load_timeout,
        runtime_commands: match (&args.runtime_allowlist, args.allow_runtime_commands) {
            (Some(file), _) => RuntimeCommands::from_file(file)?,
            (None, true) => RuntimeCommands::All,
            (None, false) => RuntimeCommands::Refused,
        },
        secrets_dir: args.secrets_dir.clone(),
        runtimes_dir: args
            .runtimes_dir
            .clone()
            .unwrap_or_else(|| crate::builtin::default_dir(&data_dir)),
        artifacts: artifact::Cache::new(
            &data_dir.join("artifacts"),
            args.max_artifact_bytes,
            args.fetch_timeout,
        )?
        .with_claims(args.pvc.iter().cloned()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(store, settings, apps, args.admin_listen, args.listen))
}

/// `<claim>=<directory>` of `--pvc`.
fn parse_claim(s: &str) -> Result<(String, PathBuf), String> {
    let (claim, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected <claim>=<directory>"))?;
    let valid = !claim.is_empty()
        && claim
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        return Err(format!(
            "`{claim}` is not a claim name (lower-case letters, digits, `-` and `.`)"
        ));
    }
    let dir = PathBuf::from(dir);
    if !dir.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    Ok((claim.to_owned(), dir))
}

async fn serve(
    store: store::Store,
    settings: Settings,
    apps: Vec<Application>,
    admin_listen: SocketAddr,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let running = start(store, settings, apps, admin_listen, listen).await?;
    shutdown_signal().await;
    running.stop().await
}

/// `crossfade up` running: the controller and the addresses it serves on.
pub struct Running {
    pub controller: Arc<Controller>,
    pub admin: SocketAddr,
    pub data: SocketAddr,
    stop_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    data_server: tokio::task::JoinHandle<std::io::Result<()>>,
    loops: tokio::task::JoinHandle<()>,
}

/// Binds both listeners and starts the controller's loops, the control API and the data plane.
pub async fn start(
    store: store::Store,
    settings: Settings,
    apps: Vec<Application>,
    admin_listen: SocketAddr,
    listen: SocketAddr,
) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(admin_listen)
        .await
        .with_context(|| format!("listening on {admin_listen}"))?;
    let data_listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let data_dir = settings.data_dir.clone();
    let data_plane = Arc::clone(&settings.gateway);
    let controller = Arc::new(Controller::new(store, settings, apps)?);
    let (admin, data) = (listener.local_addr()?, data_listener.local_addr()?);
    tracing::info!(
        admin = %admin,
        listen = %data,
        data_dir = %data_dir.display(),
        "crossfade is up"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let loops = tokio::spawn(Arc::clone(&controller).run(stop_rx.clone()));
    let gateway = Arc::clone(controller.gateway());
    let router = api::router(Arc::new(SharedController(Arc::clone(&controller)))).route(
        "/metrics",
        axum::routing::get(move || {
            let gateway = Arc::clone(&gateway);
            async move {
                // Large with many revisions: encoded in the background, at a lower priority.
                let text = api::in_background(move || gateway.metrics_text())
                    .await
                    .unwrap_or_default();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    let mut api_stop = stop_rx.clone();
    let admin_limits = controller.settings().admin_limits.clone();
    let server = tokio::spawn(async move {
        gateway::serve_router(
            listener,
            router,
            admin_limits,
            ADMIN_BODY_LIMIT,
            async move {
                let _ = api_stop.changed().await;
            },
        )
        .await
    });
    let mut data_stop = stop_rx.clone();
    let data_server = tokio::spawn(async move {
        data_plane
            .serve(data_listener, async move {
                let _ = data_stop.changed().await;
            })
            .await
    });
    Ok(Running {
        controller,
        admin,
        data,
        stop_tx,
        server,
        data_server,
        loops,
    })
}

impl Running {
    /// Stops accepting, finishes what is in flight, and waits for every loop to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down");
        let _ = self.stop_tx.send(true);
        self.server.await??;
        self.data_server.await??;
        self.loops.await?;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CROSSFADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The Applications to run: from `--repo`, or from `-f` files (real Argo CD Applications).
fn applications(args: &Args) -> anyhow::Result<Vec<Application>> {
    if let Some(repo) = &args.repo {
        // A local path such as `.` is named after the directory it is.
        let named = std::fs::canonicalize(repo)
            .ok()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| repo.clone());
        let name = named
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("default")
            .trim_end_matches(".git")
            .to_owned();
        return Ok(vec![Application {
            name: if name.is_empty() {
                "default".into()
            } else {
                name
            },
            repo: repo.clone(),
            revision: args.revision.clone(),
            path: args.path.clone(),
            automated: true,
            policy: SyncPolicy {
                prune: args.prune,
                self_heal: args.self_heal,
            },
        }]);
    }
    if args.application.is_empty() {
        bail!(
            "nothing to run: give --repo URL (with --revision and --path) or -f application.yaml"
        );
    }
    let sources = manifest::Sources::read(&args.application)?;
    let parsed = manifest::parse(&sources, manifest::Options::default());
    if parsed.has_errors() {
        let mut text = String::new();
        for d in parsed.diagnostics.iter().filter(|d| d.is_error()) {
            text.push_str(&d.render(&sources));
        }
        bail!("the Application manifests have errors:\n{text}");
    }
    let apps: Vec<Application> = parsed
        .manifests
        .applications
        .iter()
        .map(|a| {
            let a = &a.value;
            Application {
                name: a.meta.name.clone(),
                repo: a.source.repo_url.clone(),
                revision: a.source.target_revision.clone(),
                path: a.source.path.clone(),
                automated: a.automated.is_some(),
                policy: a
                    .automated
                    .map(|s| SyncPolicy {
                        prune: s.prune,
                        self_heal: s.self_heal,
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    if apps.is_empty() {
        bail!("no Application in {}", paths(&args.application));
    }
    Ok(apps)
}

fn paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn trusted_keys(args: &Args) -> anyhow::Result<Option<TrustedKeys>> {
    if args.allowed_signers.is_none() && args.gpg_keyring.is_none() {
        return Ok(None);
    }
    let mut keys = TrustedKeys::default();
    if let Some(path) = &args.allowed_signers {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.add_allowed_signers(&text, &path.display().to_string())?;
    }
    if let Some(path) = &args.gpg_keyring {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        keys.add_keyring(&text, &path.display().to_string())?;
    }
    if keys.is_empty() {
        bail!("the trusted key files hold no key: every commit would be refused");
    }
    Ok(Some(keys))
}
