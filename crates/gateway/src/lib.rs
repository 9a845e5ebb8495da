//! The data plane: KServe V1 and Open Inference (V2) over HTTP, routed by an immutable route
//! table that the control plane swaps atomically.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v2`, `/v2/health/live`, `/v2/health/ready` | server metadata and health |
//! | GET | `/v2/models/<m>[/versions/<rev>]` | model metadata (inputs, outputs from the model) |
//! | GET | `/v2/models/<m>[/versions/<rev>]/ready` | 200 when it can serve |
//! | POST | `/v2/models/<m>[/versions/<rev>]/infer` | V2 inference |
//! | GET | `/v1/models/<m>` | V1 model status |
//! | POST | `/v1/models/<m>:predict` | V1 inference (`instances`) |
//!
//! Every inference response carries `x-crossfade-revision`.
//!
//! # Guarantees
//!
//! - The request path reads the current [`RouteTable`] with one atomic load and takes no lock.
//! - A request keeps the revision it was routed to until it completes, even if the table is
//!   swapped meanwhile (revisions are reference-counted): reconfiguration drops nothing.
//! - Client errors (JSON, shapes, datatypes) are 400 with `{"error": ...}` naming the input;
//!   unknown models 404; bodies over the limit 413; a model failing on an input 500.

mod capture;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod metrics;
mod protocol;
mod routes;
mod server;
mod stats;
mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub use capture::{CAPTURE_MAX_BODY, CaptureConfig, Captured, Protocol};
pub use protocol::BadRequest;
pub use routes::{
    Backend, Chosen, HeaderRoute, Match, Mirror, RequestFacts, Revision, Route, RouteTable, bucket,
};
pub use server::{Limits, serve_router};
pub use stats::{Drift, Outcome, Summary, WINDOW_SECONDS, latency_bounds};
pub use upstream::{Timeouts, Upstream};

/// `x-crossfade-tag: latest|prev` picks a revision by tag.
static TAG_HEADER: HeaderName = HeaderName::from_static("x-crossfade-tag");
/// `x-crossfade-key: <anything>` keeps a client on one revision for a given split.
static KEY_HEADER: HeaderName = HeaderName::from_static("x-crossfade-key");

/// The response header naming the revision that answered.
pub const REVISION_HEADER: &str = "x-crossfade-revision";

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Connections, deadlines and buffered bytes of the data listener.
    pub limits: Limits,
    /// Where the statistics' seconds and request latencies come from.
    pub clock: clock::Clock,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            body_limit: 16 << 20,
            limits: Limits::default(),
            clock: clock::Clock::system(),
        }
    }
}

/// The data plane's state: the current route table, metrics and statistics.
pub struct Gateway {
    table: ArcSwap<RouteTable>,
    config: Config,
    metrics: metrics::Metrics,
    started: clock::Instant,
    /// Mirrored requests still running in the background.
    mirrors: std::sync::atomic::AtomicUsize,
    mirrors_done: tokio::sync::Notify,
    /// Large inference requests run on blocking threads, this many at once (one per core), so
    /// that they never hold the async workers that answer everything else.
    heavy: tokio::sync::Semaphore,
    /// Capture of recent requests for replay, once turned on.
    capture: std::sync::OnceLock<capture::Capture>,
    /// Services with a replay running.
    replays: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Per service and canary: the run replayed for last, and the span of capture times it
    /// replayed (later replays of that run take requests outside it, so none counts twice).
    cursors: std::sync::Mutex<std::collections::HashMap<(String, String), Cursor>>,
}

/// The analysis run a canary's requests were last replayed for, and the span of capture
/// times (milliseconds) replayed for it.
type Cursor = (i64, std::ops::RangeInclusive<i64>);

/// What [`Gateway::replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// This many captured requests are being replayed in the background.
    Started(usize),
    /// A replay of the service is still running.
    Running,
    /// Nothing to replay, and why.
    Nothing(String),
}

/// Marks a service's replay finished when dropped (also when its task panics).
struct ReplayDone(Arc<Gateway>, String);

impl Drop for ReplayDone {
    fn drop(&mut self) {
        let gw = &self.0;
        gw.replays.lock().expect("replays").remove(&self.1);
        if gw.mirrors.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            gw.mirrors_done.notify_waiters();
        }
    }
}

/// Request bodies larger than this are decoded, run and encoded off the async workers.
const OFFLOAD_BYTES: usize = 64 * 1024;

/// The monotonic now of deadlines and idle times: tokio's clock (paused in tests).
pub(crate) fn instant() -> clock::Instant {
    clock::Clock::system().instant()
}

// === impl Gateway ===

impl Gateway {
    pub fn new(config: Config) -> Arc<Self> {
        let started = config.clock.instant();
        Arc::new(Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            config,
            metrics: metrics::Metrics::new(),
            started,
            mirrors: std::sync::atomic::AtomicUsize::new(0),
            mirrors_done: tokio::sync::Notify::new(),
            heavy: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            ),
            capture: std::sync::OnceLock::new(),
            replays: std::sync::Mutex::default(),
            cursors: std::sync::Mutex::default(),
        })
    }

    /// Replaces the route table; requests in flight finish on the revisions they started on.
    /// Routes not [`prepare`](Self::prepare)d yet are prepared here.
    pub fn publish(&self, mut table: RouteTable) {
        for route in table.models.values_mut() {
            if route.metrics.len() != route.revisions.len() {
                let prepared = self.prepare(Route::clone(route));
                *route = prepared;
            }
        }
        self.table.store(Arc::new(table));
    }

    /// Resolves a route's metric handles and sets its weight gauges: done once per route
    /// built, so that publishing a table of many routes costs one pointer copy per route.
    pub fn prepare(&self, mut route: Route) -> Arc<Route> {
        route.metrics = route
            .revisions
            .iter()
            .map(|r| self.metrics.revision(&route.service, &r.name))
            .collect();
        let weights: Vec<(String, u8)> = route
            .revisions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let pct = route
                    .split
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map_or(0, |(_, p)| *p);
                (r.name.clone(), pct)
            })
            .collect();
        self.metrics.set_weights(&route.service, &weights);
        Arc::new(route)
    }

    /// Turns on the capture of the split's successful requests (holds request data on
    /// disk), for [`replay`](Self::replay). Fails when the directory cannot be made, or when
    /// capture is on already.
    pub fn capture(&self, config: CaptureConfig) -> std::io::Result<()> {
        let capture = capture::Capture::open(config)?;
        self.capture.set(capture).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "capture is on already")
        })
    }

    /// Blocks until every request captured so far is on disk (for tests and shutdown).
    pub fn capture_sync(&self) {
        if let Some(c) = self.capture.get() {
            c.sync();
        }
    }

    /// Captured requests dropped because the writer fell behind.
    pub fn capture_dropped(&self) -> u64 {
        self.capture
            .get()
            .map_or(0, |c| c.dropped.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Seconds since the gateway started: the clock of its statistics.
    pub fn second(&self) -> u64 {
        self.config.clock.since(self.started).as_secs()
    }

    /// A revision's statistics over the last `seconds` seconds, or `None` if it never served.
    pub fn summary(&self, service: &str, revision: &str, seconds: u64) -> Option<Summary> {
        self.metrics
            .window(service, revision)
            .map(|w| w.summary(self.second(), seconds))
    }

    /// Replays up to `count` of the service's captured requests (newest first, within the
    /// capture's retention) to its `canary` revision and its stable one, in the background
    /// and one at a time: each answer pair is compared like a mirrored request's and counted
    /// in both revisions' windows (as replayed), and never reaches a client. One replay per
    /// service at a time; both revisions must be served in-process. `run` names the analysis
    /// run asking: a captured request is replayed at most once per run (each replay of a run
    /// takes requests captured before or after those the ones before it took).
    pub async fn replay(
        self: &Arc<Self>,
        service: &str,
        canary: &str,
        count: usize,
        run: i64,
    ) -> Replay {
        const MOST: usize = 1000;
        let nothing = |why: &str| Replay::Nothing(why.to_owned());
        if self.capture.get().is_none() {
            return nothing("request capture is off (crossfade up --capture-requests)");
        }
        let table = self.table();
        let Some((model, route)) = table.models.iter().find(|(_, r)| r.service == service) else {
            return nothing("the service has no route");
        };
        let pair = route
            .revisions
            .iter()
            .position(|r| r.name == canary)
            .and_then(|c| Some((c, route.stable.filter(|s| *s != c)?)));
        let Some((ci, si)) = pair else {
            return nothing("no stable revision to compare the canary with");
        };
        let (Some(canary_metrics), Some(stable_metrics)) =
            (route.metrics.get(ci), route.metrics.get(si))
        else {
            return nothing("the route is not prepared");
        };
        let (canary, stable) = (&route.revisions[ci], &route.revisions[si]);
        if !self
            .replays
            .lock()
            .expect("replays")
            .insert(service.to_owned())
        {
            return Replay::Running;
        }
        self.mirrors
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let gw = Arc::clone(self);
        let done = ReplayDone(Arc::clone(self), service.to_owned());
        let (service, model) = (service.to_owned(), model.to_string());
        let now_ms = self.config.clock.now().as_millis();
        let (stable, stable_metrics) = (Arc::clone(stable), stable_metrics.clone());
        let (canary, canary_metrics) = (Arc::clone(canary), canary_metrics.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let done = done;
            let key = (service.clone(), canary.name.clone());
            let done_before = match gw.cursors.lock().expect("cursors").get(&key) {
                Some((r, span)) if *r == run => span.clone(),
                #[allow(clippy::reversed_empty_ranges)]
                _ => 1..=0,
            };
            let records = match gw.capture.get() {
                Some(c) => c.recent(&service, count.min(MOST), now_ms, done_before.clone()),
                None => Vec::new(),
            };
            let times = records.iter().map(|r| r.at_ms);
            if let (Some(oldest), Some(newest)) = (times.clone().min(), times.max()) {
                let span = if done_before.is_empty() {
                    oldest..=newest
                } else {
                    oldest.min(*done_before.start())..=newest.max(*done_before.end())
                };
                gw.cursors.lock().expect("cursors").insert(key, (run, span));
            }
            if records.is_empty() {
                // Finished before the caller hears of it: a replay asked for next may start.
                drop(done);
                let _ = tx.send(0);
                return;
            }
            let _ = tx.send(records.len());
            for (i, record) in records.iter().enumerate() {
                replay_one(
                    &gw,
                    &model,
                    (&stable, &stable_metrics),
                    (&canary, &canary_metrics),
                    record,
                    i % 2 == 1,
                );
            }
        });
        match rx.await {
            Ok(0) => nothing("no captured request left to replay within the retention"),
            Ok(n) => Replay::Started(n),
            Err(_) => nothing("the replay task failed"),
        }
    }

    /// A revision's statistics as `points` consecutive summaries of `step` seconds, oldest
    /// first, the last ending now; `None` if it never served.
    pub fn series(
        &self,
        service: &str,
        revision: &str,
        step: u64,
        points: u64,
    ) -> Option<Vec<Summary>> {
        self.metrics
            .window(service, revision)
            .map(|w| w.series(self.second(), step, points))
    }

    /// Resolves once no mirrored or replayed request is running (for shutdown, and for
    /// tests).
    pub async fn mirrors_idle(&self) {
        loop {
            let notified = self.mirrors_done.notified();
            if self.mirrors.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The Prometheus text exposition of the data plane's metrics.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// The current table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            // KServe's V1 liveness, as its SDK reads it.
            .route(
                "/",
                get(|| async { axum::Json(json!({"status": "alive"})) }),
            )
            .route("/v2", get(server_metadata))
            .route(
                "/v2/health/live",
                get(|| async { axum::Json(json!({"live": true})) }),
            )
            .route("/v2/health/ready", get(server_ready))
            .route("/v2/models/{model}", get(model_metadata))
            .route("/v2/models/{model}/ready", get(model_ready))
            .route("/v2/models/{model}/infer", post(infer_v2))
            .route(
                "/v2/models/{model}/versions/{version}",
                get(version_metadata),
            )
            .route(
                "/v2/models/{model}/versions/{version}/ready",
                get(version_ready),
            )
            .route(
                "/v2/models/{model}/versions/{version}/infer",
                post(infer_v2_version),
            )
            .route("/v1/models", get(v1_list))
            .route("/v1/models/{model}", get(v1_status).post(v1_predict))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
            .layer(DefaultBodyLimit::max(self.config.body_limit))
            .with_state(Arc::clone(self))
    }
}

type Shared = State<Arc<Gateway>>;

/// A request that ends in an error response: `{"error": message}` with the status.
struct Failure {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

fn fail(status: StatusCode, message: String) -> Failure {
    Failure { status, message }
}

fn error(status: StatusCode, message: String) -> Response {
    fail(status, message).into_response()
}

fn unknown_model(model: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("model {model} is not served here"),
    )
}

fn body_error(e: BytesRejection) -> Response {
    let status = e.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request body is larger than the limit".to_owned()
    } else {
        e.body_text()
    };
    error(status, message)
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "crossfade",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
    .into_response()
}

async fn server_ready(State(gw): Shared) -> Response {
    let table = gw.table();
    let ready = table.models.values().all(|r| !r.split.is_empty());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready }))).into_response()
}

async fn metadata(gw: &Gateway, model: &str, version: Option<&str>) -> Response {
    let table = gw.table();
    let Some(route) = table.models.get(model) else {
        return unknown_model(model);
    };
    // The revision most requests reach, or the pinned one.
    let rev = match version {
        Some(v) => route.revisions.iter().find(|r| r.name == v),
        None => route
            .split
            .iter()
            .max_by_key(|(_, p)| *p)
            .map(|(i, _)| &route.revisions[*i])
            .or(route.revisions.first()),
    };
    let Some(rev) = rev else {
        return match version {
            Some(v) => error(
                StatusCode::NOT_FOUND,
                format!("model {model} has no version {v}"),
            ),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model {model} has no revision loaded"),
            ),
        };
    };
    let versions: Vec<String> = route.revisions.iter().map(|r| r.name.clone()).collect();
    let mut resp = match &rev.backend {
        Backend::InProcess(m) => axum::Json(protocol::metadata_v2(
            model,
            &versions,
            m.inputs(),
            m.outputs(),
        ))
        .into_response(),
        Backend::Proxy(up) => up
            .forward(
                Method::GET,
                &format!("/v2/models/{model}"),
                &HeaderMap::new(),
                Bytes::new(),
                route.answer_timeout,
            )
            .await
            .unwrap_or_else(|(s, m)| error(s, m)),
    };
    tag_revision(&mut resp, rev);
    resp
}

async fn model_metadata(State(gw): Shared, Path(model): Path<String>) -> Response {
    metadata(&gw, &model, None).await
}

async fn version_metadata(
    State(gw): Shared,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata(&gw, &model, Some(&version)).await
}

fn ready(gw: &Gateway, model: &str, version: Option<&str>) -> Response {
    let table = gw.table();
    let Some(route) = table.models.get(model) else {
        return unknown_model(model);
    };
    let ok = match version {
        // A version that is not served at all is unknown (404), as both reference servers say.
        Some(v) if !route.revisions.iter().any(|r| r.name == v) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("model {model} has no version {v}"),
            );
        }
        Some(_) => true,
        None => !route.split.is_empty(),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({"name": model, "ready": ok}))).into_response()
}

async fn model_ready(State(gw): Shared, Path(model): Path<String>) -> Response {
    ready(&gw, &model, None)
}

async fn version_ready(
    State(gw): Shared,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    ready(&gw, &model, Some(&version))
}

/// Where a request goes, borrowed from the route table it was routed by.
struct Routed<'t> {
    service: &'t str,
    rev: &'t Arc<Revision>,
    metrics: &'t metrics::RevisionMetrics,
    /// The revision to mirror to, when this request is one of the mirrored share.
    mirror: Option<(&'t Arc<Revision>, &'t metrics::RevisionMetrics)>,
    /// The route's answer timeout for a proxied revision.
    answer_timeout: Option<std::time::Duration>,
    /// Whether the rollout chose the revision (the split), not the client (by name, tag or
    /// header): only those requests are judged.
    controlled: bool,
    /// For a request the split sent to a revision other than the stable one, both served
    /// in-process: the stable revision and its handles, to answer what the other refuses.
    fallback: Option<(&'t Arc<Revision>, &'t metrics::RevisionMetrics)>,
}

/// Routes a request: the revision, or why there is none.
fn route_request<'t>(
    table: &'t RouteTable,
    model: &str,
    headers: &HeaderMap,
    version: Option<&str>,
) -> Result<Routed<'t>, Failure> {
    let Some(route) = table.models.get(model) else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            format!("model {model} is not served here"),
        ));
    };
    // RFC 9112 §3.2: more than one Host is a bad request. The same holds for
    // the other headers that pick a revision: choosing one silently would
    // make routing depend on header order. One pass over the headers finds them.
    let mut facts = RequestFacts {
        version,
        host: None,
        tag: None,
        key: None,
    };
    let mut seen = [false; 3];
    for (name, value) in headers {
        let which = if name == header::HOST {
            0
        } else if name == TAG_HEADER {
            1
        } else if name == KEY_HEADER {
            2
        } else {
            continue;
        };
        if std::mem::replace(&mut seen[which], true) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("the request has more than one {name} header"),
            ));
        }
        // A value that is not visible ASCII counts as absent.
        let value = value.to_str().ok();
        match which {
            0 => facts.host = value,
            1 => facts.tag = value,
            _ => facts.key = value,
        }
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some((idx, how)) = route.choose(model, facts, header) else {
        return Err(match version {
            Some(v) => fail(
                StatusCode::NOT_FOUND,
                format!("model {model} has no version {v}"),
            ),
            None => fail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model {model} has no revision ready to serve this request"),
            ),
        });
    };
    // Only the split's requests are mirrored, never a pinned, tagged or header-routed one; the
    // first mirror route whose header matches all hold takes the request.
    let mirror = route
        .mirrors
        .iter()
        .filter(|_| matches!(how, Chosen::Split | Chosen::Sticky))
        .find(|m| {
            m.matches
                .iter()
                .all(|(name, want)| header(name).is_some_and(|v| want.matches(v)))
        })
        .filter(|m| m.revision != idx && fastrand::u8(0..100) < m.percent)
        .and_then(|m| {
            Some((
                route.revisions.get(m.revision)?,
                route.metrics.get(m.revision)?,
            ))
        });
    Ok(Routed {
        service: &route.service,
        rev: &route.revisions[idx],
        metrics: &route.metrics[idx],
        mirror,
        answer_timeout: route.answer_timeout,
        controlled: matches!(how, Chosen::Split | Chosen::Sticky),
        fallback: route
            .stable
            .filter(|s| *s != idx && matches!(how, Chosen::Split | Chosen::Sticky))
            .and_then(|s| Some((route.revisions.get(s)?, route.metrics.get(s)?)))
            // Both in-process or both proxied: the same request means the same to both.
            .filter(|(r, _)| r.model().is_some() == route.revisions[idx].model().is_some()),
    })
}

/// Counts a request in flight, and its outcome and latency when it ends (even if the client
/// goes away and the handler is dropped).
struct Measure<'a> {
    gw: &'a Gateway,
    metrics: &'a metrics::RevisionMetrics,
    start: clock::Instant,
    outcome: Outcome,
    controlled: bool,
    charged: bool,
}

impl<'a> Measure<'a> {
    fn start(gw: &'a Gateway, routed: &Routed<'a>) -> Self {
        routed.metrics.started();
        Self {
            gw,
            metrics: routed.metrics,
            start: gw.config.clock.instant(),
            outcome: Outcome::ServerError,
            controlled: routed.controlled,
            charged: false,
        }
    }

    /// The revision refused a request another revision took: its failure, whatever the
    /// answer's status.
    fn charge(&mut self) {
        self.charged = true;
    }

    fn finish(&mut self, status: StatusCode) {
        if self.charged {
            self.outcome = Outcome::ServerError;
            return;
        }
        self.outcome = if status.is_success() {
            Outcome::Ok
        } else if status.is_client_error() {
            Outcome::ClientError
        } else {
            Outcome::ServerError
        };
    }
}

impl Drop for Measure<'_> {
    fn drop(&mut self) {
        let elapsed = self.gw.config.clock.since(self.start);
        self.metrics.finished(self.outcome, elapsed.as_secs_f64());
        if self.controlled {
            self.metrics
                .window
                .record(self.gw.second(), self.outcome, elapsed.as_micros() as u64);
        } else {
            self.metrics.window.record_pinned(self.gw.second());
        }
    }
}

async fn infer_v2(
    State(gw): Shared,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => infer(&gw, &model, None, &headers, body).await,
        Err(e) => body_error(e),
    }
}

async fn infer_v2_version(
    State(gw): Shared,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => infer(&gw, &model, Some(&version), &headers, body).await,
        Err(e) => body_error(e),
    }
}

/// `POST /v2/models/<model>[/versions/<version>]/infer`.
async fn infer(
    gw: &Arc<Gateway>,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let table = gw.table();
    let routed = match route_request(&table, model, headers, version) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    let rev = routed.rev;
    let mut measure = Measure::start(gw, &routed);
    let json_len = headers
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let captured = capturable(gw, &routed, &body);
    let captured_body = body.clone();
    if let Backend::Proxy(up) = &rev.backend {
        let path = format!("/v2/models/{model}/infer");
        let protocol = Protocol::V2 { json_len };
        // A JSON request is JSON to the model server too, whatever the client said (curl's
        // `-d` says form data, which MLServer refuses); a binary one keeps its own type.
        let mut headers = headers.clone();
        if json_len.is_none() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        return proxy_infer(gw, up, &path, &headers, body, measure, &routed, protocol).await;
    }
    let computed = offload(gw, body.len(), {
        let (model, rev, body) = (model.to_owned(), Arc::clone(rev), body.clone());
        move || compute_v2(&model, &rev, &body, json_len)
    })
    .await;
    let (computed, answered_by) = or_stable(gw, &routed, &mut measure, computed, body.len(), {
        let model = model.to_owned();
        move |stable| compute_v2(&model, &stable, &body, json_len)
    })
    .await;
    let mut resp = match computed {
        Ok(done) => {
            let copy = Copy {
                path: format!("/v2/models/{model}/infer"),
                headers,
                body: &captured_body,
                protocol: Protocol::V2 { json_len },
                inputs: Some(&done.inputs),
            };
            mirror(gw, &routed, copy, done.outputs.clone());
            let rendered = done.rendered;
            if rendered.binary.is_empty() {
                axum::Json(rendered.json).into_response()
            } else {
                // The binary tensor data extension: JSON header, then the raw output bytes.
                let mut out = rendered.json.to_string().into_bytes();
                let header_len = out.len();
                out.extend_from_slice(&rendered.binary);
                let mut resp =
                    ([(header::CONTENT_TYPE, "application/octet-stream")], out).into_response();
                resp.headers_mut().insert(
                    "inference-header-content-length",
                    HeaderValue::from(header_len),
                );
                resp
            }
        }
        Err(f) => f.into_response(),
    };
    measure.finish(resp.status());
    keep(
        gw,
        &routed,
        resp.status(),
        captured,
        Protocol::V2 { json_len },
    );
    tag_revision(&mut resp, answered_by);
    resp
}

/// The body of a request to keep for replay, if capture is on and the split routed it to an
/// in-process revision.
fn capturable(gw: &Gateway, routed: &Routed, body: &Bytes) -> Option<Bytes> {
    (gw.capture.get().is_some() && routed.controlled && body.len() <= CAPTURE_MAX_BODY)
        .then(|| body.clone())
}

/// Captures a request that was answered successfully.
fn keep(
    gw: &Gateway,
    routed: &Routed,
    status: StatusCode,
    body: Option<Bytes>,
    protocol: Protocol,
) {
    if let (Some(capture), Some(body)) = (gw.capture.get(), body)
        && status.is_success()
    {
        capture.record(
            routed.service,
            Captured {
                at_ms: gw.config.clock.now().as_millis(),
                protocol,
                body,
            },
        );
    }
}

/// A request the split's revision refused as the client's fault, and that the route's stable
/// revision takes (`work` on it): the stable one answers, and the refusal is charged to the
/// other. Returns the result to send and the revision that answered.
async fn or_stable<'t, T: Send + 'static>(
    gw: &Gateway,
    routed: &Routed<'t>,
    measure: &mut Measure<'_>,
    computed: Result<T, Failure>,
    size: usize,
    work: impl FnOnce(Arc<Revision>) -> Result<T, Failure> + Send + 'static,
) -> (Result<T, Failure>, &'t Arc<Revision>) {
    match (computed, routed.fallback) {
        (Err(f), Some((stable, _))) if f.status.is_client_error() => {
            let retried = offload(gw, size, {
                let stable = Arc::clone(stable);
                move || work(stable)
            })
            .await;
            match retried {
                Ok(done) => {
                    measure.charge();
                    (Ok(done), stable)
                }
                Err(_) => (Err(f), routed.rev),
            }
        }
        (computed, _) => (computed, routed.rev),
    }
}

/// What an in-process inference produced: the tensors (for the mirror) and the answer.
struct Computed<A> {
    inputs: Vec<runtime::Tensor>,
    outputs: Vec<runtime::Tensor>,
    rendered: A,
}

/// Runs `work` inline when the request is small, else on a blocking thread, at most one per
/// core at a time: a batch of a million floats never holds an async worker.
async fn offload<T: Send + 'static>(
    gw: &Gateway,
    size: usize,
    work: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    if size <= OFFLOAD_BYTES {
        return work();
    }
    let Ok(_permit) = gw.heavy.acquire().await else {
        return Err(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down".into(),
        ));
    };
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the inference task failed: {e}"),
        ))
    })
}

/// A model's outputs, or a failure when one holds NaN or an infinity.
fn finite(outputs: Vec<runtime::Tensor>) -> Result<Vec<runtime::Tensor>, Failure> {
    match protocol::non_finite(&outputs) {
        Some(why) => Err(fail(StatusCode::INTERNAL_SERVER_ERROR, why)),
        None => Ok(outputs),
    }
}

fn compute_v2(
    model: &str,
    rev: &Revision,
    body: &[u8],
    json_len: Option<usize>,
) -> Result<Computed<protocol::Rendered>, Failure> {
    let request = protocol::parse_v2(body, json_len, rev.inputs())
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e.0))?;
    let Some(onnx) = rev.model() else {
        return Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no in-process model".into(),
        ));
    };
    let outputs = finite(onnx.infer(&request.inputs).map_err(runtime_error)?)?;
    let rendered = protocol::render_v2(
        model,
        &rev.name,
        request.id.as_ref(),
        &outputs,
        request.outputs.as_deref(),
        &request.binary_outputs,
    )
    .map_err(|e| fail(StatusCode::BAD_REQUEST, e.0))?;
    Ok(Computed {
        inputs: request.inputs,
        outputs,
        rendered,
    })
}

fn compute_v1(rev: &Revision, body: &[u8]) -> Result<Computed<Value>, Failure> {
    let Some(onnx) = rev.model() else {
        return Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no in-process model".into(),
        ));
    };
    let input =
        protocol::parse_v1(body, onnx.inputs()).map_err(|e| fail(StatusCode::BAD_REQUEST, e.0))?;
    let inputs = vec![input];
    let outputs = finite(onnx.infer(&inputs).map_err(runtime_error)?)?;
    let rendered = protocol::render_v1(&outputs).map_err(|e| fail(StatusCode::BAD_REQUEST, e.0))?;
    Ok(Computed {
        inputs,
        outputs,
        rendered,
    })
}

fn runtime_error(e: runtime::Error) -> Failure {
    match e {
        runtime::Error::Input { .. } => fail(StatusCode::BAD_REQUEST, e.to_string()),
        other => fail(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// `GET /v1/models`: `{"models": [names]}`, as KServe's V1 lists them.
async fn v1_list(State(gw): Shared) -> Response {
    let table = gw.table();
    let models: Vec<&str> = table.models.keys().map(|k| &**k).collect();
    axum::Json(json!({ "models": models })).into_response()
}

async fn v1_status(State(gw): Shared, Path(model): Path<String>) -> Response {
    let table = gw.table();
    match table.models.get(model.as_str()) {
        None => unknown_model(&model),
        Some(route) => {
            axum::Json(json!({"name": model, "ready": !route.split.is_empty()})).into_response()
        }
    }
}

async fn v1_predict(
    State(gw): Shared,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => predict(&gw, &model, &headers, body).await,
        Err(e) => body_error(e),
    }
}

/// `POST /v1/models/<segment>`, where the segment is `<model>:predict`.
async fn predict(gw: &Arc<Gateway>, segment: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let Some(model) = segment.strip_suffix(":predict") else {
        let hint = match segment.split_once(':') {
            Some((model, verb)) => format!(
                "crossfade serves :predict, not :{verb} (no explainer): POST /v1/models/{model}:predict"
            ),
            None => format!("did you mean POST /v1/models/{segment}:predict?"),
        };
        return error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: POST /v1/models/{segment}; {hint}"),
        );
    };
    let table = gw.table();
    let routed = match route_request(&table, model, headers, None) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    let rev = routed.rev;
    let mut measure = Measure::start(gw, &routed);
    let captured = capturable(gw, &routed, &body);
    let captured_body = body.clone();
    if let Backend::Proxy(up) = &rev.backend {
        if rev.v2_only {
            return proxy_v1_over_v2(gw, up, model, headers, body, measure, &routed).await;
        }
        let path = format!("/v1/models/{model}:predict");
        return proxy_infer(gw, up, &path, headers, body, measure, &routed, Protocol::V1).await;
    }
    let computed = offload(gw, body.len(), {
        let (rev, body) = (Arc::clone(rev), body.clone());
        move || compute_v1(&rev, &body)
    })
    .await;
    let (computed, answered_by) = or_stable(gw, &routed, &mut measure, computed, body.len(), {
        move |stable| compute_v1(&stable, &body)
    })
    .await;
    let mut resp = match computed {
        Ok(done) => {
            let copy = Copy {
                path: format!("/v1/models/{model}:predict"),
                headers,
                body: &captured_body,
                protocol: Protocol::V1,
                inputs: Some(&done.inputs),
            };
            mirror(gw, &routed, copy, done.outputs.clone());
            axum::Json(done.rendered).into_response()
        }
        Err(f) => f.into_response(),
    };
    measure.finish(resp.status());
    keep(gw, &routed, resp.status(), captured, Protocol::V1);
    tag_revision(&mut resp, answered_by);
    resp
}

/// A request as the mirror needs it: where it went, its headers and body, and its inputs
/// when the primary decoded them in-process.
struct Copy<'a> {
    path: String,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    protocol: Protocol,
    inputs: Option<&'a [runtime::Tensor]>,
}

/// A revision's answer to a request as tensors, in-process or from its model server (`None`:
/// it failed, or its answer could not be read). V1 answers of a model server are compared as
/// V1 `predictions`, so `as_v1` also renders an in-process model's outputs that way.
async fn answer_of(
    rev: &Arc<Revision>,
    copy: &OwnedCopy,
    timeout: Option<std::time::Duration>,
    as_v1: bool,
) -> Option<Vec<runtime::Tensor>> {
    match &rev.backend {
        Backend::InProcess(_) => {
            let (rev, copy) = (Arc::clone(rev), copy.clone());
            let outputs = tokio::task::spawn_blocking(move || {
                let m = rev.model()?;
                let inputs = match (&copy.inputs, copy.protocol) {
                    (Some(inputs), _) => inputs.clone(),
                    (None, Protocol::V1) => vec![protocol::parse_v1(&copy.body, m.inputs()).ok()?],
                    (None, Protocol::V2 { json_len }) => {
                        protocol::parse_v2(&copy.body, json_len, m.inputs())
                            .ok()?
                            .inputs
                    }
                };
                m.infer(&inputs).ok()
            })
            .await
            .ok()??;
            if as_v1 {
                as_predictions(&outputs)
            } else {
                Some(outputs)
            }
        }
        Backend::Proxy(up) => {
            use http_body_util::BodyExt;
            let answer = up
                .forward(
                    Method::POST,
                    &copy.path,
                    &copy.headers,
                    copy.body.clone(),
                    timeout,
                )
                .await
                .ok()?;
            if !answer.status().is_success() {
                return None;
            }
            let body = answer.into_body().collect().await.ok()?.to_bytes();
            protocol::answer_tensors(&body, matches!(copy.protocol, Protocol::V1))
        }
    }
}

/// In-process outputs as a model server's V1 answer reads: one `predictions` tensor.
fn as_predictions(outputs: &[runtime::Tensor]) -> Option<Vec<runtime::Tensor>> {
    let rendered = protocol::render_v1(outputs).ok()?;
    protocol::answer_tensors(&serde_json::to_vec(&rendered).ok()?, true)
}

/// [`Copy`] owned, for the background task.
#[derive(Clone)]
struct OwnedCopy {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    protocol: Protocol,
    inputs: Option<Vec<runtime::Tensor>>,
}

/// Sends the request to the mirror revision in the background, compares its answer with the
/// primary's (`primary`: its outputs), and counts the comparison. The client never waits for
/// it. Either revision may be in-process or a model server's.
fn mirror(gw: &Arc<Gateway>, routed: &Routed, copy: Copy, primary: Vec<runtime::Tensor>) {
    let Some((mirror, metrics)) = routed.mirror else {
        return;
    };
    gw.mirrors.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let gw = Arc::clone(gw);
    let copy = OwnedCopy {
        path: copy.path,
        headers: copy.headers.clone(),
        body: copy.body.clone(),
        protocol: copy.protocol,
        inputs: copy.inputs.map(<[runtime::Tensor]>::to_vec),
    };
    let (mirror, metrics) = (Arc::clone(mirror), metrics.clone());
    let service = routed.service.to_owned();
    let primary_name = routed.rev.name.clone();
    let primary_in_process = routed.rev.model().is_some();
    let timeout = routed.answer_timeout;
    let second = gw.second();
    let counters = gw.metrics.mirror(&service, &primary_name, &mirror.name);
    tokio::spawn(async move {
        // A model server's V1 answer is compared as V1 predictions on both sides.
        let v1_text = matches!(copy.protocol, Protocol::V1)
            && (!primary_in_process || mirror.model().is_none());
        let primary = if v1_text && primary_in_process {
            as_predictions(&primary)
        } else {
            Some(primary)
        };
        // A canary that fails on an input the stable one answers disagrees.
        let (agreed, distance) = match (primary, answer_of(&mirror, &copy, timeout, v1_text).await)
        {
            (Some(primary), Some(outputs)) => {
                let (stable, canary) = (predictions(&primary), predictions(&outputs));
                metrics.window.record_predictions(
                    second,
                    (&stable.0, &stable.1),
                    (&canary.0, &canary.1),
                );
                compare(&primary, &outputs)
            }
            _ => (false, f64::INFINITY),
        };
        counters.record(agreed);
        metrics.window.record_mirror(second, agreed, distance);
        if gw.mirrors.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            gw.mirrors_done.notify_waiters();
        }
    });
}

/// A captured request sent to a model server from a replay's blocking thread; its answer as
/// tensors.
fn forward_replay(
    up: &upstream::Upstream,
    model: &str,
    record: &Captured,
    protocol: Protocol,
) -> Result<Vec<runtime::Tensor>, Failure> {
    use http_body_util::BodyExt;
    let (path, mut headers) = match protocol {
        Protocol::V1 => (format!("/v1/models/{model}:predict"), HeaderMap::new()),
        Protocol::V2 { .. } => (format!("/v2/models/{model}/infer"), HeaderMap::new()),
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Protocol::V2 {
        json_len: Some(n), ..
    } = protocol
    {
        headers.insert("inference-header-content-length", HeaderValue::from(n));
    }
    let handle = tokio::runtime::Handle::current();
    let answer = handle.block_on(async {
        let resp = up
            .forward(Method::POST, &path, &headers, record.body.clone(), None)
            .await
            .map_err(|(status, why)| fail(status, why))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, Failure>((status, body))
    })?;
    if !answer.0.is_success() {
        return Err(fail(answer.0, "the model server refused it".into()));
    }
    protocol::answer_tensors(&answer.1, matches!(protocol, Protocol::V1)).ok_or_else(|| {
        fail(
            StatusCode::BAD_GATEWAY,
            "the model server's answer could not be read".into(),
        )
    })
}

/// Compares the canary's and stable's answers on one replayed request and counts them, as a
/// mirrored request's and in both revisions' windows. A request the stable revision no longer
/// takes is skipped; one the canary refuses or fails where stable answered is its failure.
/// Returns whether the request was counted.
fn replay_one(
    gw: &Gateway,
    model: &str,
    (stable, stable_metrics): (&Revision, &metrics::RevisionMetrics),
    (canary, canary_metrics): (&Revision, &metrics::RevisionMetrics),
    record: &Captured,
    canary_first: bool,
) -> bool {
    type Answer = Result<Vec<runtime::Tensor>, Failure>;
    // A model server's V1 answers are compared as V1 predictions on both sides.
    let v1_text = matches!(record.protocol, Protocol::V1)
        && (stable.model().is_none() || canary.model().is_none());
    let run = |rev: &Revision| -> (Answer, u64) {
        let start = gw.config.clock.instant();
        let answer = match (&rev.backend, record.protocol) {
            (Backend::Proxy(up), protocol) => forward_replay(up, model, record, protocol),
            (Backend::InProcess(_), Protocol::V1) => compute_v1(rev, &record.body).and_then(|c| {
                if v1_text {
                    as_predictions(&c.outputs).ok_or_else(|| {
                        fail(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the outputs have no V1 form".into(),
                        )
                    })
                } else {
                    Ok(c.outputs)
                }
            }),
            (Backend::InProcess(_), Protocol::V2 { json_len }) => {
                compute_v2(model, rev, &record.body, json_len).map(|c| c.outputs)
            }
        };
        (answer, gw.config.clock.since(start).as_micros() as u64)
    };
    // Alternated, so that neither always runs on caches the other warmed.
    let ((s, s_us), (c, c_us)) = if canary_first {
        let c = run(canary);
        (run(stable), c)
    } else {
        let s = run(stable);
        (s, run(canary))
    };
    let Ok(primary) = s else {
        return false;
    };
    let second = gw.second();
    stable_metrics
        .window
        .record_replay(second, Outcome::Ok, s_us);
    stable_metrics.replayed(Outcome::Ok);
    let (outcome, agreed, distance) = match &c {
        Ok(outputs) => {
            let (p, q) = (predictions(&primary), predictions(outputs));
            canary_metrics
                .window
                .record_predictions(second, (&p.0, &p.1), (&q.0, &q.1));
            let (agreed, distance) = compare(&primary, outputs);
            (Outcome::Ok, agreed, distance)
        }
        Err(_) => (Outcome::ServerError, false, f64::INFINITY),
    };
    canary_metrics.window.record_replay(second, outcome, c_us);
    canary_metrics.replayed(outcome);
    canary_metrics
        .window
        .record_mirror(second, agreed, distance);
    true
}

/// Whether two answers agree on the predicted class, and the largest absolute difference
/// between their outputs of the same name.
///
/// The predicted class is the integer output (a `label`), or else the arg-max of each row of
/// the first floating-point output of rank 2.
pub fn compare(a: &[runtime::Tensor], b: &[runtime::Tensor]) -> (bool, f64) {
    use runtime::TensorData;
    let find = |set: &[runtime::Tensor], name: &str| set.iter().find(|t| t.name == name).cloned();
    let mut distance = 0f64;
    for x in a {
        let Some(y) = find(b, &x.name) else {
            return (false, f64::INFINITY);
        };
        if x.shape != y.shape {
            return (false, f64::INFINITY);
        }
        for (p, q) in x.data.to_f64().iter().zip(y.data.to_f64()) {
            if p.is_finite() && q.is_finite() {
                distance = distance.max((p - q).abs());
            } else if p.is_finite() != q.is_finite() {
                // One answered a number, the other NaN or an infinity: they disagree.
                return (false, f64::INFINITY);
            }
        }
    }
    let integer = |t: &runtime::Tensor| matches!(t.data, TensorData::I64(_) | TensorData::I32(_));
    let classes = |set: &[runtime::Tensor]| -> Option<Vec<f64>> {
        if let Some(label) = set.iter().find(|t| integer(t)) {
            return Some(label.data.to_f64());
        }
        let scores = set.iter().find(|t| {
            t.shape.len() == 2 && matches!(t.data, TensorData::F32(_) | TensorData::F64(_))
        })?;
        let width = scores.shape[1].max(1);
        Some(
            scores
                .data
                .to_f64()
                .chunks(width)
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .fold((0usize, f64::NEG_INFINITY), |best, (i, v)| {
                            if *v > best.1 { (i, *v) } else { best }
                        })
                        .0 as f64
                })
                .collect(),
        )
    };
    let agreed = match (classes(a), classes(b)) {
        (Some(x), Some(y)) => x == y,
        _ => distance == 0.0,
    };
    (agreed, distance)
}

/// Each row's predicted class (as [`compare`] finds it) and top score: the largest value of
/// the first floating-point output of rank 2 (a probability for a classifier), if any.
pub fn predictions(set: &[runtime::Tensor]) -> (Vec<usize>, Vec<f64>) {
    use runtime::TensorData;
    let scores = set
        .iter()
        .find(|t| t.shape.len() == 2 && matches!(t.data, TensorData::F32(_) | TensorData::F64(_)));
    let rows: Vec<Vec<f64>> = scores.map_or(Vec::new(), |t| {
        let width = t.shape[1].max(1);
        t.data.to_f64().chunks(width).map(<[f64]>::to_vec).collect()
    });
    let top: Vec<f64> = rows
        .iter()
        .map(|r| r.iter().copied().fold(f64::NEG_INFINITY, f64::max))
        .collect();
    let classes = match set
        .iter()
        .find(|t| matches!(t.data, TensorData::I64(_) | TensorData::I32(_)))
    {
        Some(label) => label
            .data
            .to_f64()
            .iter()
            .map(|c| if *c >= 0.0 { *c as usize } else { 0 })
            .collect(),
        None => rows
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .fold((0usize, f64::NEG_INFINITY), |best, (i, v)| {
                        if *v > best.1 { (i, *v) } else { best }
                    })
                    .0
            })
            .collect(),
    };
    (classes, top)
}

/// An inference request sent on to a model server process, measured and tagged like one
/// served in-process, and mirrored like one.
#[allow(clippy::too_many_arguments)]
async fn proxy_infer(
    gw: &Arc<Gateway>,
    up: &upstream::Upstream,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    mut measure: Measure<'_>,
    routed: &Routed<'_>,
    protocol: Protocol,
) -> Response {
    let mut revision = routed.rev;
    let mut resp = up
        .forward(
            Method::POST,
            path,
            headers,
            body.clone(),
            routed.answer_timeout,
        )
        .await
        .unwrap_or_else(|(s, m)| error(s, m));
    // Refused as the client's fault where the stable model server takes it: the stable one
    // answers, and the refusal is the other's failure.
    if resp.status().is_client_error()
        && let Some((stable, _)) = routed.fallback
        && let Backend::Proxy(stable_up) = &stable.backend
    {
        let retried = stable_up
            .forward(
                Method::POST,
                path,
                headers,
                body.clone(),
                routed.answer_timeout,
            )
            .await;
        if let Ok(answer) = retried
            && answer.status().is_success()
        {
            measure.charge();
            resp = answer;
            revision = stable;
        }
    }
    if routed.mirror.is_some() && resp.status().is_success() && std::ptr::eq(revision, routed.rev) {
        use http_body_util::BodyExt;
        let (parts, answer) = resp.into_parts();
        let bytes = answer
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if let Some(primary) = protocol::answer_tensors(&bytes, matches!(protocol, Protocol::V1)) {
            let copy = Copy {
                path: path.to_owned(),
                headers,
                body: &body,
                protocol,
                inputs: None,
            };
            mirror(gw, routed, copy, primary);
        }
        resp = Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    measure.finish(resp.status());
    let captured = capturable(gw, routed, &body);
    keep(gw, routed, resp.status(), captured, protocol);
    tag_revision(&mut resp, revision);
    resp
}

/// A V1 request to a model server that speaks only V2: sent as V2, answered as V1. Neither
/// mirrored nor captured (the mirror and replay speak the client's protocol).
async fn proxy_v1_over_v2(
    gw: &Arc<Gateway>,
    up: &upstream::Upstream,
    model: &str,
    headers: &HeaderMap,
    body: Bytes,
    mut measure: Measure<'_>,
    routed: &Routed<'_>,
) -> Response {
    use http_body_util::BodyExt;
    let declared = routed
        .rev
        .declared
        .as_ref()
        .map(|(inputs, _)| inputs.as_slice());
    let mut resp = match protocol::v1_as_v2_request(&body, declared) {
        Err(protocol::BadRequest(why)) => error(StatusCode::BAD_REQUEST, why),
        Ok(request) => {
            let mut forwarded = headers.clone();
            forwarded.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            match up
                .forward(
                    Method::POST,
                    &format!("/v2/models/{model}/infer"),
                    &forwarded,
                    Bytes::from(request),
                    routed.answer_timeout,
                )
                .await
            {
                Err((status, why)) => error(status, why),
                Ok(answer) if !answer.status().is_success() => answer,
                Ok(answer) => {
                    let bytes = answer
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    match protocol::answer_tensors(&bytes, false)
                        .ok_or_else(|| {
                            "the model server's V2 answer has no JSON outputs".to_owned()
                        })
                        .map(|mut outputs| {
                            // MLServer answers one value per row as [N, 1]; V1 has N values.
                            if let Some(first) = outputs.first_mut()
                                && let [_, 1] = first.shape[..]
                            {
                                first.shape.pop();
                            }
                            outputs
                        })
                        .and_then(|outputs| {
                            protocol::render_v1(&outputs).map_err(|protocol::BadRequest(m)| m)
                        }) {
                        Ok(v1) => axum::Json(v1).into_response(),
                        Err(why) => error(
                            StatusCode::BAD_GATEWAY,
                            format!("{why}; it cannot be answered as V1"),
                        ),
                    }
                }
            }
        }
    };
    measure.finish(resp.status());
    keep(gw, routed, resp.status(), None, Protocol::V1);
    tag_revision(&mut resp, routed.rev);
    resp
}

fn tag_revision(resp: &mut Response, revision: &Revision) {
    resp.headers_mut()
        .insert(REVISION_HEADER, revision.header.clone());
}

#[cfg(test)]
mod tests;
