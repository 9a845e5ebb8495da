//! The control API: JSON over HTTP on the admin listener. Read endpoints are open; mutating
//! ones need the admin bearer token; the Git webhook authenticates by HMAC instead.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/api/v1/status` | [`dto::Status`] |
//! | GET | `/api/v1/history?service=NS/NAME&limit=N` | [`dto::SyncEntry`] list, newest first |
//! | GET | `/api/v1/audit?limit=N&before=SEQ` | [`dto::AuditEntry`] list, oldest first: the `N` newest before `SEQ` (all without either) |
//! | GET | `/api/v1/audit/verify` | [`dto::AuditVerify`] |
//! | POST | `/api/v1/sync?wait=true` | fetch and sync now (token); [`dto::SyncResult`] list |
//! | POST | `/api/v1/refresh` | fetch and reconcile under the sync policy (token) |
//! | POST | `/api/v1/services/<ns>/<name>/traffic` | set a split by hand (token) |
//! | GET | `/api/v1/rollouts` | [`dto::Rollout`] list |
//! | GET | `/api/v1/rollouts/<name>?namespace=NS` | [`dto::Rollout`] |
//! | POST | `/api/v1/rollouts/<name>/{promote,abort,retry}?namespace=NS` | [`dto::RolloutAction`] body (token); the [`dto::Rollout`] after it |
//! | POST | `/api/v1/webhook/git` | fetch and sync now (webhook signature) |
//! | GET | `/healthz` | `ok` |
//! | GET | `/` | the dashboard: one page from the binary (no CDN), updated every second |
//!
//! This is the only crate with wire types; the binary implements [`Backend`].

pub mod dto;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

/// Why a sync runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// An operator asked (`crossfade sync`): applies Git's state even without an automated sync
    /// policy, and replaces traffic set through the API.
    Manual,
    /// An operator asked to look again (`crossfade refresh`): fetch and reconcile as a poll
    /// would, under the sync policy, and wait for the result.
    Refresh,
    /// A push webhook, described for the log.
    Webhook(String),
    /// The Application's own poll.
    Poll,
}

impl Trigger {
    /// The kind of trigger, by its stable name: `manual`, `refresh`, `webhook` or `poll`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Refresh => "refresh",
            Trigger::Webhook(_) => "webhook",
            Trigger::Poll => "poll",
        }
    }

    /// What started the sync, for the log.
    pub fn describe(&self) -> &str {
        match self {
            Trigger::Manual => "manual sync",
            Trigger::Refresh => "refresh",
            Trigger::Webhook(w) => w,
            Trigger::Poll => "poll",
        }
    }
}

/// A command to a Rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutCommand {
    Promote,
    Abort,
    Retry,
}

/// Why a Rollout command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    NotFound(String),
    /// The command does not apply to where the rollout stands.
    Rejected(String),
}

/// A sync in progress.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the API reads and triggers; implemented by the binary.
pub trait Backend: Send + Sync + 'static {
    fn status(&self) -> dto::Status;
    /// Sync records, newest first; only those that touched `service` when given.
    fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<dto::SyncEntry>, String>;
    /// Audit entries, oldest first: the `limit` newest of those before sequence number
    /// `before` (every one when neither is given).
    fn audit(
        &self,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<dto::AuditEntry>, String>;
    fn verify_audit(&self) -> Result<dto::AuditVerify, String>;
    /// Fetches and syncs every Application now. The future resolves when every sync is done.
    fn sync_now(&self, trigger: Trigger) -> BoxFuture<Vec<dto::SyncResult>>;
    /// Sets a service's split by hand (Argo CD's "live change"): kept until Git changes, a
    /// `sync`, or, with `selfHeal`, the next reconcile.
    fn set_traffic(
        &self,
        namespace: &str,
        name: &str,
        splits: &std::collections::BTreeMap<String, u8>,
    ) -> BoxFuture<Result<(), String>>;
    /// Every Rollout and where it stands.
    fn rollouts(&self) -> Vec<dto::Rollout>;
    /// A Rollout's canary and stable revision side by side over the last minutes.
    fn rollout_series(&self, rollout: &dto::Rollout) -> dto::RolloutSeries {
        let _ = rollout;
        dto::RolloutSeries::default()
    }
    /// An operator's command to a Rollout: `promote` (with `full`), `abort` or `retry`.
    fn rollout_command(
        &self,
        namespace: Option<&str>,
        name: &str,
        action: RolloutCommand,
        body: &dto::RolloutAction,
    ) -> BoxFuture<Result<dto::Rollout, CommandError>>;
    /// The admin bearer token.
    fn admin_token(&self) -> &str;
    /// The webhook secret, or `None` when webhooks are off.
    fn webhook_secret(&self) -> Option<&[u8]>;
    /// Host names the API answers for besides loopback names and IP addresses
    /// (`--admin-host`): any other `Host` is refused, so a web page whose name resolves to this
    /// machine (DNS rebinding) cannot read the API through the visitor's browser.
    fn admin_hosts(&self) -> &[String] {
        &[]
    }
}

/// Whether the API answers a request with this `Host`: an IP address, `localhost`, or a
/// configured name; a request without one (HTTP/1.0) too.
pub fn host_allowed(host: Option<&str>, names: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    // `name:port`, `[v6]:port`, `v4`, `[v6]`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(n, _)| n)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(&name))
}

/// The dashboard's Content-Security-Policy: its one inline script by hash, nothing from
/// elsewhere, never framed.
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use sha2::Digest;
        let page = include_str!("dashboard.html");
        let script = page
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(s, _)| s);
        let hash = sha2::Sha256::digest(script.as_bytes());
        format!(
            "default-src 'none'; script-src 'sha256-{}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            base64(&hash)
        )
    })
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Refuses requests for other hosts; marks every answer as not to be framed or sniffed.
async fn guard(
    State(b): Shared,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if !host_allowed(host, b.admin_hosts()) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "the control API does not answer for host {:?}: use an IP address or \
                 localhost, or start crossfade up with --admin-host {}",
                host.unwrap_or_default(),
                host.unwrap_or_default()
                    .rsplit_once(':')
                    .map_or(host.unwrap_or_default(), |(n, _)| n)
            ),
        );
    }
    let mut resp = next.run(req).await;
    let headers = resp.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The API routes over `backend`.
pub fn router(backend: Arc<dyn Backend>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(dashboard))
        .route("/api/v1/status", get(status))
        .route("/api/v1/history", get(history))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/verify", get(verify_audit))
        .route("/api/v1/sync", post(sync))
        .route("/api/v1/refresh", post(refresh))
        .route(
            "/api/v1/services/{namespace}/{name}/traffic",
            post(set_traffic),
        )
        .route("/api/v1/rollouts", get(rollouts))
        .route("/api/v1/rollouts/{name}", get(rollout))
        .route("/api/v1/rollouts/{name}/series", get(rollout_series))
        .route("/api/v1/rollouts/{name}/{action}", post(rollout_action))
        .route("/api/v1/webhook/git", post(webhook))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&backend),
            guard,
        ))
        .with_state(backend)
}

type Shared = State<Arc<dyn Backend>>;

/// The dashboard: services with their split, rollouts with their steps and every measurement
/// plotted against its condition, the sync history and the audit log. It reads the same API.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, dashboard_csp()),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// Runs `f` on a thread of its own at a lower CPU priority (nice +10), for reads that are large
/// with many services (the status, the metrics): they never hold up the async workers, and on
/// a busy machine they yield to the controller and the data plane. At most [`BACKGROUND`] run
/// at once; the others wait their turn. `None` if `f` panicked.
pub async fn in_background<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BACKGROUND);
    let _turn = RUNNING.acquire().await.ok()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("crossfade-read".into())
        .spawn(move || {
            // Best effort: a process not allowed to renice itself still answers.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
            let _ = tx.send(f());
        });
    if spawned.is_err() {
        return None;
    }
    rx.await.ok()
}

/// How many [`in_background`] reads run at once.
pub const BACKGROUND: usize = 2;

/// Large with many services: built and encoded in the background.
async fn status(State(b): Shared) -> Response {
    match in_background(move || serde_json::to_vec(&b.status())).await {
        Some(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Some(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "building the status failed".into(),
        ),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    service: Option<String>,
    limit: Option<usize>,
}

async fn history(State(b): Shared, Query(q): Query<HistoryQuery>) -> Response {
    match b.history(q.service.as_deref(), q.limit.unwrap_or(50)) {
        Ok(h) => axum::Json(h).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

async fn audit(State(b): Shared, Query(q): Query<AuditQuery>) -> Response {
    match b.audit(q.before, q.limit) {
        Ok(a) => axum::Json(a).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn verify_audit(State(b): Shared) -> Response {
    match b.verify_audit() {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(Deserialize)]
struct SyncQuery {
    wait: Option<bool>,
}

async fn sync(State(b): Shared, Query(q): Query<SyncQuery>, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(b.as_ref(), &headers) {
        return error(StatusCode::UNAUTHORIZED, why.into());
    }
    let done = b.sync_now(Trigger::Manual);
    if q.wait.unwrap_or(true) {
        axum::Json(done.await).into_response()
    } else {
        tokio::spawn(done);
        (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"triggered": true})),
        )
            .into_response()
    }
}

async fn refresh(State(b): Shared, headers: HeaderMap) -> Response {
    if let Err(why) = authorize(b.as_ref(), &headers) {
        return error(StatusCode::UNAUTHORIZED, why.into());
    }
    axum::Json(b.sync_now(Trigger::Refresh).await).into_response()
}

#[derive(Deserialize)]
struct TrafficBody {
    /// Revision name to percent; the percents sum to 100.
    splits: std::collections::BTreeMap<String, u8>,
}

async fn set_traffic(
    State(b): Shared,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = authorize(b.as_ref(), &headers) {
        return error(StatusCode::UNAUTHORIZED, why.into());
    }
    let body: TrafficBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"splits\": {{\"<revision>\": <percent>}}}}: {e}"),
            );
        }
    };
    match b.set_traffic(&namespace, &name, &body.splits).await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"service": format!("{namespace}/{name}"), "splits": body.splits})),
        )
            .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

#[derive(Deserialize)]
struct NamespaceQuery {
    namespace: Option<String>,
}

async fn rollouts(State(b): Shared) -> Response {
    axum::Json(b.rollouts()).into_response()
}

fn find_rollout(
    b: &dyn Backend,
    namespace: Option<&str>,
    name: &str,
) -> Result<dto::Rollout, Box<Response>> {
    let mut found: Vec<dto::Rollout> = b
        .rollouts()
        .into_iter()
        .filter(|r| r.name == name && namespace.is_none_or(|ns| r.namespace == ns))
        .collect();
    match found.len() {
        0 => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no rollout {name}"),
        ))),
        1 => Ok(found.remove(0)),
        _ => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("rollouts named {name} exist in several namespaces: give ?namespace="),
        ))),
    }
}

async fn rollout(
    State(b): Shared,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    match find_rollout(b.as_ref(), q.namespace.as_deref(), &name) {
        Ok(r) => axum::Json(r).into_response(),
        Err(resp) => *resp,
    }
}

async fn rollout_series(
    State(b): Shared,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Response {
    match find_rollout(b.as_ref(), q.namespace.as_deref(), &name) {
        Ok(r) => axum::Json(b.rollout_series(&r)).into_response(),
        Err(resp) => *resp,
    }
}

async fn rollout_action(
    State(b): Shared,
    axum::extract::Path((name, action)): axum::extract::Path<(String, String)>,
    Query(q): Query<NamespaceQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = authorize(b.as_ref(), &headers) {
        return error(StatusCode::UNAUTHORIZED, why.into());
    }
    let command = match action.as_str() {
        "promote" => RolloutCommand::Promote,
        "abort" => RolloutCommand::Abort,
        "retry" => RolloutCommand::Retry,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no rollout action {other:?}: promote, abort or retry"),
            );
        }
    };
    let body: dto::RolloutAction = if body.is_empty() {
        dto::RolloutAction::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"full\": bool, \"reason\": \"...\"}}: {e}"),
                );
            }
        }
    };
    if body.full && command != RolloutCommand::Promote {
        return error(
            StatusCode::BAD_REQUEST,
            "`full` goes with promote only".into(),
        );
    }
    if let Err(resp) = find_rollout(b.as_ref(), q.namespace.as_deref(), &name) {
        return *resp;
    }
    match b
        .rollout_command(q.namespace.as_deref(), &name, command, &body)
        .await
    {
        Ok(r) => axum::Json(r).into_response(),
        Err(CommandError::NotFound(e)) => error(StatusCode::NOT_FOUND, e),
        Err(CommandError::Rejected(e)) => error(StatusCode::CONFLICT, e),
    }
}

async fn webhook(State(b): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = b.webhook_secret() else {
        return error(
            StatusCode::FORBIDDEN,
            "webhooks are off: start `crossfade up` with --webhook-secret".into(),
        );
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let sender = match source::webhook::authenticate(secret, header, &body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    let push = match source::webhook::parse_push(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let why = format!(
        "{} webhook{}",
        sender.name(),
        push.git_ref
            .map(|r| format!(" for {r}"))
            .unwrap_or_default()
    );
    // A sender wants a quick answer: sync in the background.
    tokio::spawn(b.sync_now(Trigger::Webhook(why)));
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"triggered": true, "sender": sender.name()})),
    )
        .into_response()
}

/// Checks `Authorization: Bearer <token>` in constant time.
fn authorize(b: &dyn Backend, headers: &HeaderMap) -> Result<(), &'static str> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err("this endpoint needs `Authorization: Bearer <admin token>`");
    };
    let want = b.admin_token().as_bytes();
    let same = given.len() == want.len()
        && given
            .bytes()
            .zip(want)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0;
    if same {
        Ok(())
    } else {
        Err("wrong admin token")
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(dto::ErrorBody { error: message })).into_response()
}

#[cfg(test)]
mod tests;
