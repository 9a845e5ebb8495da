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

mod protocol;
mod routes;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use protocol::BadRequest;
pub use routes::{Chosen, HeaderRoute, Match, RequestFacts, Revision, Route, RouteTable, bucket};

/// The response header naming the revision that answered.
pub const REVISION_HEADER: &str = "x-crossfade-revision";

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            body_limit: 16 << 20,
        }
    }
}

/// The data plane's state: the current route table.
pub struct Gateway {
    table: ArcSwap<RouteTable>,
    config: Config,
}

// === impl Gateway ===

impl Gateway {
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            table: ArcSwap::from_pointee(RouteTable::default()),
            config,
        })
    }

    /// Replaces the route table; requests in flight finish on the revisions they started on.
    pub fn publish(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }

    /// The current table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// The HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v2", get(server_metadata))
            .route("/v2/health/live", get(|| async { StatusCode::OK }))
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
    if ready {
        StatusCode::OK.into_response()
    } else {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

fn metadata(gw: &Gateway, model: &str, version: Option<&str>) -> Response {
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
    let mut resp = axum::Json(protocol::metadata_v2(
        model,
        &versions,
        rev.inputs(),
        rev.outputs(),
    ))
    .into_response();
    tag_revision(&mut resp, &rev.name);
    resp
}

async fn model_metadata(State(gw): Shared, Path(model): Path<String>) -> Response {
    metadata(&gw, &model, None)
}

async fn version_metadata(
    State(gw): Shared,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata(&gw, &model, Some(&version))
}

fn ready(gw: &Gateway, model: &str, version: Option<&str>) -> Response {
    let table = gw.table();
    let Some(route) = table.models.get(model) else {
        return unknown_model(model);
    };
    let ok = match version {
        Some(v) => route.revisions.iter().any(|r| r.name == v),
        None => !route.split.is_empty(),
    };
    if ok {
        StatusCode::OK.into_response()
    } else {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
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

fn facts<'a>(headers: &'a HeaderMap, version: Option<&'a str>) -> RequestFacts<'a> {
    let h = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    RequestFacts {
        version,
        host: h(header::HOST.as_str()),
        tag: h("x-crossfade-tag"),
        key: h("x-crossfade-key"),
    }
}

/// Routes a request: the revision, or why there is none.
fn route_request(
    table: &RouteTable,
    model: &str,
    headers: &HeaderMap,
    version: Option<&str>,
) -> Result<Arc<Revision>, Failure> {
    let Some(route) = table.models.get(model) else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            format!("model {model} is not served here"),
        ));
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match route.choose(model, facts(headers, version), header) {
        Some((rev, _)) => Ok(Arc::clone(rev)),
        None => Err(match version {
            Some(v) => fail(
                StatusCode::NOT_FOUND,
                format!("model {model} has no version {v}"),
            ),
            None => fail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model {model} has no revision ready to serve this request"),
            ),
        }),
    }
}

async fn infer_v2(
    State(gw): Shared,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer(&gw, &model, None, &headers, body)
}

async fn infer_v2_version(
    State(gw): Shared,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    infer(&gw, &model, Some(&version), &headers, body)
}

fn infer(
    gw: &Gateway,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e),
    };
    let table = gw.table();
    let rev = match route_request(&table, model, headers, version) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    let json_len = headers
        .get("inference-header-content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut resp = match run_v2(model, &rev, &body, json_len) {
        Ok(rendered) if rendered.binary.is_empty() => axum::Json(rendered.json).into_response(),
        Ok(rendered) => {
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
        Err(f) => f.into_response(),
    };
    tag_revision(&mut resp, &rev.name);
    resp
}

fn run_v2(
    model: &str,
    rev: &Revision,
    body: &[u8],
    json_len: Option<usize>,
) -> Result<protocol::Rendered, Failure> {
    let request = protocol::parse_v2(body, json_len, rev.inputs())
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e.0))?;
    let outputs = rev.model.infer(&request.inputs).map_err(runtime_error)?;
    protocol::render_v2(
        model,
        &rev.name,
        request.id.as_ref(),
        &outputs,
        request.outputs.as_deref(),
        &request.binary_outputs,
    )
    .map_err(|e| fail(StatusCode::BAD_REQUEST, e.0))
}

fn runtime_error(e: runtime::Error) -> Failure {
    match e {
        runtime::Error::Input { .. } => fail(StatusCode::BAD_REQUEST, e.to_string()),
        other => fail(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

async fn v1_status(State(gw): Shared, Path(model): Path<String>) -> Response {
    let table = gw.table();
    match table.models.get(&model) {
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
    let Some(model) = model.strip_suffix(":predict") else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: POST /v1/models/{model} (did you mean {model}:predict?)"),
        );
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_error(e),
    };
    let table = gw.table();
    let rev = match route_request(&table, model, &headers, None) {
        Ok(r) => r,
        Err(f) => return f.into_response(),
    };
    let result = protocol::parse_v1(&body, rev.inputs())
        .map_err(|e| fail(StatusCode::BAD_REQUEST, e.0))
        .and_then(|input| rev.model.infer(&[input]).map_err(runtime_error));
    let mut resp = match result {
        Ok(outputs) => axum::Json(protocol::render_v1(&outputs)).into_response(),
        Err(f) => f.into_response(),
    };
    tag_revision(&mut resp, &rev.name);
    resp
}

fn tag_revision(resp: &mut Response, revision: &str) {
    if let Ok(v) = HeaderValue::from_str(revision) {
        resp.headers_mut().insert(REVISION_HEADER, v);
    }
}

#[cfg(test)]
mod tests;
