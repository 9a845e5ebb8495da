//! Proxying to a model server running as a separate process (a ServingRuntime), over HTTP/1.1
//! with pooled keep-alive connections.
//!
//! Each upstream connection is used by one request at a time, from that request's task: the
//! request is written, the answer read and the connection put back on the idle list with no
//! hand-off to another task. An idle connection is not watched; if the model server closed it
//! meanwhile, the request is sent again, once, on a new connection (inference requests have no
//! side effects), so a restarted model server costs no error.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::h1::{self, BodyError, Framing, Wire};

/// Idle connections kept per upstream; more are closed when their request ends.
const MAX_IDLE: usize = 256;
/// Largest answer accepted from a model server.
const MAX_ANSWER: usize = 256 * 1024 * 1024;

/// How long a model server may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To accept a connection.
    pub connect: Duration,
    /// To answer a request in full, from the moment it is sent (nginx's
    /// `proxy_read_timeout`, 60 s). A late answer is a 504, a server error of the revision.
    pub answer: Duration,
    /// An idle pooled connection older than this is closed rather than reused.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            answer: Duration::from_secs(60),
            idle: Duration::from_secs(30),
        }
    }
}

/// A model server reachable at `http://<authority>`.
#[derive(Clone)]
pub struct Upstream {
    authority: Arc<str>,
    timeouts: Timeouts,
    /// Idle connections, each with when it went idle.
    idle: Arc<Mutex<Vec<(Wire, tokio::time::Instant)>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upstream(http://{})", self.authority)
    }
}

/// Headers that belong to one connection, or that this client writes itself.
fn forwarded(name: &str) -> bool {
    !matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "host"
            | "content-length"
            | "expect"
    )
}

type Failure = (StatusCode, String);

/// An answer: status, content type, body.
struct Answer {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
}

/// How an exchange failed: before any byte of the answer arrived (safe to send again) or
/// after.
enum Broken {
    BeforeAnswer(String),
    DuringAnswer(String),
    /// No whole answer by the deadline.
    Late,
}

/// Sends one request on `wire` and reads the whole answer by `deadline`;
/// `Ok((answer, reusable))`.
async fn exchange(
    wire: &mut Wire,
    request: &[u8],
    deadline: tokio::time::Instant,
) -> Result<(Answer, bool), Broken> {
    match tokio::time::timeout_at(deadline, exchange_now(wire, request)).await {
        Ok(done) => done,
        Err(_) => Err(Broken::Late),
    }
}

async fn exchange_now(wire: &mut Wire, request: &[u8]) -> Result<(Answer, bool), Broken> {
    wire.stream
        .write_all(request)
        .await
        .map_err(|e| Broken::BeforeAnswer(e.to_string()))?;
    wire.buf.clear();
    loop {
        let (status, head_len, framing, content_type, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&wire.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = resp.code.unwrap_or(502);
                    let status = StatusCode::from_u16(code)
                        .map_err(|_| Broken::DuringAnswer(format!("bad status {code}")))?;
                    let scan = h1::scan(resp.headers);
                    let framing = scan
                        .framing()
                        .map_err(|e| Broken::DuringAnswer(e.to_owned()))?;
                    let content_type = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-type"))
                        .and_then(|h| HeaderValue::from_bytes(h.value).ok());
                    let close = if resp.version == Some(0) {
                        !scan.keep_alive
                    } else {
                        scan.close
                    };
                    break (status, len, framing, content_type, close);
                }
                Ok(httparse::Status::Partial) if wire.buf.len() > h1::MAX_HEAD => {
                    return Err(Broken::DuringAnswer(
                        "the answer's head is too large".into(),
                    ));
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(Broken::DuringAnswer(format!("not HTTP/1.1: {e}"))),
            }
            let started = !wire.buf.is_empty();
            // The whole exchange is bounded by `deadline` (see `exchange`): no timer per read.
            match wire.fill_until(None, 8 * 1024).await {
                Ok(true) => {}
                Ok(false) if !started => {
                    return Err(Broken::BeforeAnswer("the connection was closed".into()));
                }
                Ok(false) => return Err(Broken::DuringAnswer("the connection was closed".into())),
                Err(e) if !started => return Err(Broken::BeforeAnswer(e.to_string())),
                Err(e) => return Err(Broken::DuringAnswer(e.to_string())),
            }
        };
        bytes::Buf::advance(&mut wire.buf, head_len);
        // Interim answers (100 Continue) come before the real one.
        if status.is_informational() {
            continue;
        }
        let framing = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Length(0)
        } else {
            framing.unwrap_or(Framing::UntilClose)
        };
        let body = wire
            .body(framing, MAX_ANSWER, None, None)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => Broken::DuringAnswer(format!(
                    "the answer is larger than {} MiB",
                    MAX_ANSWER >> 20
                )),
                e => Broken::DuringAnswer(e.to_string()),
            })?;
        let reusable = !close && framing != Framing::UntilClose && wire.buf.is_empty();
        return Ok((
            Answer {
                status,
                content_type,
                body,
            },
            reusable,
        ));
    }
}

impl Upstream {
    /// An upstream at `authority` (`127.0.0.1:9001`).
    pub fn new(authority: impl Into<String>) -> Self {
        Self::with_timeouts(authority, Timeouts::default())
    }

    /// An upstream at `authority` with its own timeouts.
    pub fn with_timeouts(authority: impl Into<String>, timeouts: Timeouts) -> Self {
        let authority: String = authority.into();
        Self {
            authority: authority.into(),
            timeouts,
            idle: Arc::default(),
        }
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The connection idle the shortest, if one is younger than the idle timeout; older ones
    /// are closed.
    fn checkout(&self) -> Option<Wire> {
        let now = crate::instant();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|(_, since)| now.saturating_duration_since(*since) < self.timeouts.idle);
        idle.pop().map(|(wire, _)| wire)
    }

    fn checkin(&self, wire: Wire) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((wire, crate::instant()));
        }
    }

    /// Sends the request on and returns the answer as it came (status, content type, body),
    /// waiting at most `timeout` for all of it (`None`: the upstream's answer timeout).
    pub async fn forward(
        &self,
        method: Method,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Response<Body>, Failure> {
        let mut request = Vec::with_capacity(256 + body.len());
        request.extend_from_slice(method.as_str().as_bytes());
        request.push(b' ');
        request.extend_from_slice(path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        request.extend_from_slice(self.authority.as_bytes());
        request.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            if forwarded(name.as_str()) {
                request.extend_from_slice(name.as_str().as_bytes());
                request.extend_from_slice(b": ");
                request.extend_from_slice(value.as_bytes());
                request.extend_from_slice(b"\r\n");
            }
        }
        if !body.is_empty() || method == Method::POST || method == Method::PUT {
            // Writing to a Vec cannot fail.
            let _ = write!(request, "content-length: {}\r\n", body.len());
        }
        request.extend_from_slice(b"\r\n");
        request.extend_from_slice(&body);

        let allowed = timeout.unwrap_or(self.timeouts.answer);
        let deadline = crate::instant() + allowed;
        let answer = match self.checkout() {
            Some(mut wire) => match exchange(&mut wire, &request, deadline).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        self.checkin(wire);
                    }
                    answer
                }
                // A kept-alive connection the model server had closed: once more, afresh.
                Err(Broken::BeforeAnswer(_)) => {
                    self.exchange_fresh(&request, deadline, allowed).await?
                }
                Err(Broken::DuringAnswer(e)) => return Err(broke_off(e)),
                Err(Broken::Late) => return Err(self.late(allowed)),
            },
            None => self.exchange_fresh(&request, deadline, allowed).await?,
        };
        let mut out = Response::builder().status(answer.status);
        if let Some(ct) = answer.content_type {
            out = out.header(header::CONTENT_TYPE, ct);
        }
        out.body(Body::from(answer.body))
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    /// The inputs and outputs a model server declares for `model` (`GET /v2/models/<model>`,
    /// the Open Inference model metadata), or `None` when it declares none or does not answer
    /// with metadata.
    pub async fn signature(
        &self,
        model: &str,
    ) -> Option<(Vec<runtime::TensorSpec>, Vec<runtime::TensorSpec>)> {
        use http_body_util::BodyExt;
        let answer = self
            .forward(
                Method::GET,
                &format!("/v2/models/{model}"),
                &HeaderMap::new(),
                Bytes::new(),
                None,
            )
            .await
            .ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body = answer.into_body().collect().await.ok()?.to_bytes();
        declared_signature(&serde_json::from_slice(&body).ok()?)
    }

    fn late(&self, allowed: Duration) -> Failure {
        (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the model server at {} did not answer within {} s",
                self.authority,
                allowed.as_secs_f64()
            ),
        )
    }

    async fn exchange_fresh(
        &self,
        request: &[u8],
        deadline: tokio::time::Instant,
        allowed: Duration,
    ) -> Result<Answer, Failure> {
        let not_answering = |e: String| {
            (
                StatusCode::BAD_GATEWAY,
                format!("the model server at {} did not answer: {e}", self.authority),
            )
        };
        let connect = TcpStream::connect(&*self.authority);
        let stream = match tokio::time::timeout(self.timeouts.connect, connect).await {
            Ok(stream) => stream.map_err(|e| not_answering(e.to_string()))?,
            Err(_) => {
                return Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the model server at {} did not accept a connection within {} s",
                        self.authority,
                        self.timeouts.connect.as_secs_f64()
                    ),
                ));
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|e| not_answering(e.to_string()))?;
        let mut wire = Wire::new(stream);
        match exchange(&mut wire, request, deadline).await {
            Ok((answer, reusable)) => {
                if reusable {
                    self.checkin(wire);
                }
                Ok(answer)
            }
            Err(Broken::BeforeAnswer(e)) => Err(not_answering(e)),
            Err(Broken::DuringAnswer(e)) => Err(broke_off(e)),
            Err(Broken::Late) => Err(self.late(allowed)),
        }
    }
}

fn broke_off(e: String) -> Failure {
    (
        StatusCode::BAD_GATEWAY,
        format!("the model server's answer broke off: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A raw HTTP/1.1 server on port 0 answering `ok` with keep-alive; with `one_per_connection`
    /// it takes a second request on a connection and closes it without an answer or a word, as
    /// a model server restarting or timing out idle connections would. Returns its address and
    /// the number of connections it accepted.
    async fn raw_server(one_per_connection: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut answered = 0;
                    loop {
                        // Requests here have no body: the head ends the request.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if one_per_connection && answered == 1 {
                                return;
                            }
                            answered += 1;
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
                            if sock.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get(up: &Upstream) -> Result<(StatusCode, Bytes), Failure> {
        let resp = up
            .forward(Method::GET, "/x", &HeaderMap::new(), Bytes::new(), None)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok((status, body))
    }

    #[tokio::test]
    async fn connections_are_kept_alive_and_reused() {
        let (addr, accepted) = raw_server(false).await;
        let up = Upstream::new(addr);
        for _ in 0..50 {
            assert_eq!(get(&up).await.unwrap(), (StatusCode::OK, Bytes::from("ok")));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_without_an_error() {
        let (addr, accepted) = raw_server(true).await;
        let up = Upstream::new(addr);
        for _ in 0..20 {
            assert_eq!(get(&up).await.unwrap(), (StatusCode::OK, Bytes::from("ok")));
        }
        // The first on a new connection, then a reused one that breaks and a new one: 1 + 19.
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_their_own_connection() {
        let (addr, accepted) = raw_server(false).await;
        let up = Upstream::new(addr);
        let answers = futures_join_all((0..8).map(|_| {
            let up = up.clone();
            async move { get(&up).await }
        }))
        .await;
        assert!(
            answers
                .iter()
                .all(|a| a.as_ref().unwrap().0 == StatusCode::OK)
        );
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=8).contains(&opened), "{opened}");
        // All of them went back to the idle list and serve the next round.
        for _ in 0..8 {
            get(&up).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
    }

    async fn futures_join_all<F: Future + Send + 'static>(
        futs: impl Iterator<Item = F>,
    ) -> Vec<F::Output>
    where
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futs.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}

/// The tensors of V2 model metadata (`{"inputs": [{"name", "datatype", "shape"}], "outputs":
/// [...]}`); a dimension of -1 is open. `None` when either list is missing, empty or malformed:
/// a server that does not say is not taken to have no inputs.
pub(crate) fn declared_signature(
    metadata: &serde_json::Value,
) -> Option<(Vec<runtime::TensorSpec>, Vec<runtime::TensorSpec>)> {
    let tensors = |key: &str| -> Option<Vec<runtime::TensorSpec>> {
        let list = metadata.get(key)?.as_array()?;
        if list.is_empty() {
            return None;
        }
        list.iter()
            .map(|t| {
                Some(runtime::TensorSpec {
                    name: t.get("name")?.as_str()?.to_owned(),
                    datatype: runtime::DataType::parse(t.get("datatype")?.as_str()?)?,
                    shape: t
                        .get("shape")?
                        .as_array()?
                        .iter()
                        .map(|d| d.as_i64().map(|d| (d >= 0).then_some(d)))
                        .collect::<Option<Vec<_>>>()?,
                })
            })
            .collect()
    };
    Some((tensors("inputs")?, tensors("outputs")?))
}

#[cfg(test)]
mod signature_tests {
    use super::*;

    #[test]
    fn declared_tensors_are_read_and_a_silent_server_is_not_taken_for_an_empty_one() {
        let metadata = serde_json::json!({
            "name": "iris",
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        });
        let (inputs, outputs) = declared_signature(&metadata).unwrap();
        assert_eq!(
            (
                inputs[0].name.as_str(),
                inputs[0].datatype,
                inputs[0].shape.clone()
            ),
            ("X", runtime::DataType::F32, vec![None, Some(4)])
        );
        assert_eq!(outputs[0].datatype, runtime::DataType::I64);
        for silent in [
            serde_json::json!({"name": "iris", "platform": "x"}),
            serde_json::json!({"name": "iris", "inputs": [], "outputs": []}),
            serde_json::json!({"inputs": [{"name": "X", "datatype": "FLOAT", "shape": [1]}], "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}),
        ] {
            assert_eq!(declared_signature(&silent), None, "{silent}");
        }
    }
}
