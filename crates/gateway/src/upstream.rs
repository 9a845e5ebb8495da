//! Proxying to a model server running as a separate process (a ServingRuntime), over HTTP/1.1
//! with pooled keep-alive connections.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A model server reachable at `http://<authority>`.
#[derive(Clone)]
pub struct Upstream {
    authority: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream(http://{})", self.authority)
    }
}

/// Headers that belong to one connection and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
];

impl Upstream {
    /// An upstream at `authority` (`127.0.0.1:9001`).
    pub fn new(authority: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            authority: authority.into(),
            client,
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends the request on and returns the answer as it came (status, content type, body).
    pub async fn forward(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, (StatusCode, String)> {
        let uri: Uri = format!("http://{}{path}", self.authority)
            .parse()
            .map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("bad upstream URI: {e}"),
                )
            })?;
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                req = req.header(name, value);
            }
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let resp = self.client.request(req).await.map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                format!("the model server at {} did not answer: {e}", self.authority),
            )
        })?;
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("the model server's answer broke off: {e}"),
                )
            })?
            .to_bytes();
        let mut out = Response::builder().status(parts.status);
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            out = out.header(header::CONTENT_TYPE, ct);
        }
        out.body(Body::from(bytes))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }
}
