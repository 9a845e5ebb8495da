//! The data plane's HTTP/1.1 server.
//!
//! Each connection is one task that reads a request, answers it and reads the next one
//! (pipelined requests are answered in order). Inference requests go straight to their
//! handlers; every other request goes through the axum [`Router`](axum::Router) of
//! [`Gateway::router`], so both paths answer the same way.
//!
//! # Guarantees
//!
//! - Bad framing (two different lengths, both a length and a transfer coding, a broken
//!   chunk) is a 400 and the connection is closed: nothing after it can be trusted.
//! - A body over the limit is a 413, sent before the body is read.
//! - A client that stops sending in the middle of a request for 30 s gets a 408 and the
//!   connection is closed (no task is held by half a request).
//! - Shutdown stops accepting, closes idle connections at once, lets every request that has
//!   started finish and be answered (with `connection: close`), then returns.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::h1::{self, BodyError, Budget, Framing, Held, Pace, Wire};
use crate::{Gateway, error};

/// A request head, parsed.
struct Head {
    method: Method,
    /// The request target, a slice of the bytes read (no copy); checked to be UTF-8.
    target: Bytes,
    http10: bool,
    headers: HeaderMap,
    framing: Option<Framing>,
    keep_alive: bool,
    expect_continue: bool,
}

enum Parsed {
    Head(Head),
    Partial,
    Bad(StatusCode, String),
}

/// Parses the request head that takes the first `end` bytes of `buf` and takes it off. Header
/// values and the target stay in the bytes read: a head costs no copy of them.
fn parse_head(buf: &mut BytesMut, end: usize) -> Parsed {
    let bad = |why: String| Parsed::Bad(StatusCode::BAD_REQUEST, why);
    // Where each kept header's name and value lie in `buf` (a head is at most 64 KiB: the
    // offsets fit in u32).
    let mut spans = [(0u32, 0u32, 0u32, 0u32); h1::MAX_HEADERS];
    let mut kept = 0;
    let (len, method, target, version, scan) = {
        let base = buf.as_ptr() as usize;
        let at = |part: &[u8]| ((part.as_ptr() as usize - base) as u32, part.len() as u32);
        // Left uninitialised: httparse writes the headers it finds (no 3 KiB memset per head).
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; h1::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(&buf[..end], &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => {
                return Parsed::Bad(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("more than {} headers", h1::MAX_HEADERS),
                );
            }
            Err(e) => return bad(format!("not an HTTP/1.1 request: {e}")),
        };
        let Ok(method) = Method::from_bytes(req.method.unwrap_or_default().as_bytes()) else {
            return bad("bad method".into());
        };
        let target = req.path.unwrap_or_default();
        if !target.starts_with('/') {
            return bad(format!("the request target {target:?} is not a path"));
        }
        let mut scan = h1::Scan::default();
        for h in req.headers.iter() {
            if !scan.header(h) {
                let (name, name_len) = at(h.name.as_bytes());
                let (value, value_len) = at(h.value);
                spans[kept] = (name, name_len, value, value_len);
                kept += 1;
            }
        }
        (len, method, at(target.as_bytes()), req.version, scan)
    };
    let raw = buf.split_to(len).freeze();
    let mut map = HeaderMap::with_capacity(kept);
    for &(name, name_len, value, value_len) in &spans[..kept] {
        let (name, name_len, value, value_len) = (
            name as usize,
            name_len as usize,
            value as usize,
            value_len as usize,
        );
        let name_bytes = &raw[name..name + name_len];
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name_bytes),
            HeaderValue::from_maybe_shared(raw.slice(value..value + value_len)),
        ) else {
            return bad(format!(
                "bad header {:?}",
                String::from_utf8_lossy(name_bytes)
            ));
        };
        map.append(name, value);
    }
    let framing = match scan.framing() {
        Ok(f) => f,
        Err(why) => return bad(why.into()),
    };
    let http10 = version == Some(0);
    if !http10 && scan.hosts == 0 {
        return bad("an HTTP/1.1 request must have a host header (RFC 9112, 3.2)".into());
    }
    if scan.hosts > 1 {
        return bad("the request has more than one host header".into());
    }
    if http10 && framing == Some(Framing::Chunked) {
        // RFC 9112, 6.1: a transfer coding in an HTTP/1.0 message cannot be trusted.
        return bad("transfer-encoding is not allowed in an HTTP/1.0 request".into());
    }
    let keep_alive = if http10 { scan.keep_alive } else { !scan.close };
    Parsed::Head(Head {
        method,
        target: raw.slice(target.0 as usize..(target.0 + target.1) as usize),
        http10,
        framing,
        keep_alive,
        expect_continue: scan.expect_continue,
        headers: map,
    })
}

/// How many clients may be connected and how long they may take. The defaults are nginx's
/// where nginx has one; each is a flag of `crossfade up`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections open at once. When a new one arrives at the limit, the connection idle
    /// the longest (waiting for its next request) is closed to make room; with none idle, the
    /// new one waits in the listen queue.
    pub max_connections: usize,
    /// A keep-alive connection with no request in progress is closed after this long (nginx's
    /// `keepalive_timeout`, 75 s).
    pub idle_timeout: Duration,
    /// A whole request head must arrive within this, counted from the connection's start for
    /// its first request and from the head's first byte for later ones (nginx's
    /// `client_header_timeout`, 60 s). A head that is late is answered 408.
    pub header_timeout: Duration,
    /// A request body must arrive within this, plus its size at `min_rate`.
    pub body_timeout: Duration,
    /// Bytes per second a body (and an answer being written) must keep up, on average, once its
    /// allowance is spent.
    pub min_rate: u64,
    /// An answer must be written within this, plus its size at `min_rate` (nginx's
    /// `send_timeout`, 60 s).
    pub send_timeout: Duration,
    /// Most request-body bytes held across every connection of the listener; a request that
    /// would go over is answered 503.
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            min_rate: 4096,
            send_timeout: Duration::from_secs(60),
            max_buffered_bytes: 1 << 30,
        }
    }
}

/// What answers requests on a listener.
#[derive(Clone)]
enum Service {
    /// The data plane: inference straight to its handlers, the rest through the router.
    Gateway(Arc<Gateway>, axum::Router),
    /// Any router (the control API).
    Router(axum::Router),
}

/// One listener's connections: how many may be open, which are idle (by when their idle time
/// runs out, so the first is both the next to time out and the one to close to make room), and
/// the body bytes they hold.
struct Conns {
    limits: Limits,
    body_limit: usize,
    slots: Arc<Semaphore>,
    idle: Mutex<BTreeMap<IdleKey, Arc<Notify>>>,
    next_idle: AtomicU64,
    /// Wakes the sweeper when an idle connection with the earliest deadline arrives.
    sweep: Notify,
    budget: Arc<Budget>,
    /// When the limit was last logged (so a flood logs once every 10 s, not per connection).
    warned: Mutex<Option<tokio::time::Instant>>,
    name: &'static str,
}

/// An idle connection's place: its deadline, then when it went idle.
type IdleKey = (tokio::time::Instant, u64);

impl Conns {
    /// Closes idle connections whose deadline has passed, until shutdown: one timer for the
    /// listener, not one per connection and request.
    async fn sweep(&self, mut stopping: watch::Receiver<bool>) {
        loop {
            let next = {
                let now = crate::instant();
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(entry) = idle.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    entry.remove().notify_one();
                }
                idle.first_key_value().map(|(k, _)| k.0)
            };
            let woken = self.sweep.notified();
            tokio::select! {
                biased;
                _ = stopping.wait_for(|s| *s) => return,
                () = woken => {}
                () = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// Closes the connection idle the longest; `false` when none is idle.
    fn evict_oldest(&self) -> bool {
        let oldest = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_first();
        match oldest {
            Some((_, notify)) => {
                notify.notify_one();
                true
            }
            None => false,
        }
    }

    fn warn_full(&self) {
        let now = crate::instant();
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(10)) {
            *warned = Some(now);
            tracing::warn!(
                listener = self.name,
                max_connections = self.limits.max_connections,
                "the connection limit is reached: closing the oldest idle connections to make \
                 room (with none idle, new connections wait); raise --max-connections or the \
                 file limit (ulimit -n) if this is real load"
            );
        }
    }
}

impl Gateway {
    /// Serves the data plane on `listener` until `shutdown` completes; then finishes the
    /// requests in progress and returns.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let service = Service::Gateway(Arc::clone(self), self.router());
        let limits = self.config.limits.clone();
        serve_on(
            listener,
            service,
            limits,
            self.config.body_limit,
            "data",
            shutdown,
        )
        .await
    }
}

/// Serves `router` on `listener` with the same connection handling, limits and deadlines as
/// the data plane (the control API uses it), until `shutdown` completes.
pub async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    body_limit: usize,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_on(
        listener,
        Service::Router(router),
        limits,
        body_limit,
        "admin",
        shutdown,
    )
    .await
}

async fn serve_on(
    listener: TcpListener,
    service: Service,
    limits: Limits,
    body_limit: usize,
    name: &'static str,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop, stopping) = watch::channel(false);
    let conns = Arc::new(Conns {
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        budget: Arc::new(Budget::new(limits.max_buffered_bytes)),
        idle: Mutex::default(),
        next_idle: AtomicU64::new(0),
        sweep: Notify::new(),
        warned: Mutex::new(None),
        limits,
        body_limit,
        name,
    });
    let mut connections = JoinSet::new();
    let sweeper = tokio::spawn({
        let (conns, stopping) = (Arc::clone(&conns), stopping.clone());
        async move { conns.sweep(stopping).await }
    });
    let mut shutdown = std::pin::pin!(shutdown);
    'accept: loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let slot = match Arc::clone(&conns.slots).try_acquire_owned() {
                        Ok(slot) => slot,
                        Err(_) => {
                            conns.warn_full();
                            // The connection idle the longest makes room; with none idle, wait
                            // for one to end or go idle.
                            loop {
                                conns.evict_oldest();
                                let wait = Arc::clone(&conns.slots).acquire_owned();
                                tokio::select! {
                                    () = &mut shutdown => break 'accept,
                                    slot = tokio::time::timeout(Duration::from_millis(100), wait) => {
                                        if let Ok(Ok(slot)) = slot {
                                            break slot;
                                        }
                                    }
                                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                                }
                            }
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        service.clone(),
                        Arc::clone(&conns),
                        stream,
                        stopping.clone(),
                        slot,
                    ));
                }
                // Out of file descriptors, or a connection reset before it was
                // accepted: wait a moment instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    let _ = sweeper.await;
    Ok(())
}

/// How waiting for the next request ended.
enum Idle {
    /// Bytes of it arrived.
    Data,
    /// The connection is to be closed (the peer closed it, a shutdown, the idle limit, or it
    /// was closed to make room).
    Close,
}

/// Waits, registered as idle, for the first bytes of the next request; the sweeper closes it
/// at `deadline`, and the accept loop earlier if it needs the room.
async fn idle(
    wire: &mut Wire,
    conns: &Conns,
    me: &Arc<Notify>,
    deadline: tokio::time::Instant,
    stopping: &mut watch::Receiver<bool>,
) -> Idle {
    let key = (deadline, conns.next_idle.fetch_add(1, Ordering::Relaxed));
    {
        let mut idle = conns.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.insert(key, Arc::clone(me));
        if idle
            .first_key_value()
            .is_some_and(|(first, _)| *first == key)
        {
            conns.sweep.notify_one();
        }
    }
    let outcome = tokio::select! {
        biased;
        _ = stopping.wait_for(|s| *s) => Idle::Close,
        () = me.notified() => Idle::Close,
        more = wire.fill_until(None, 4096) => match more {
            Ok(true) => Idle::Data,
            _ => Idle::Close,
        },
    };
    let still_idle = conns
        .idle
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key)
        .is_some();
    // Timed out or picked to make room while its bytes arrived: it closes all the same.
    if still_idle { outcome } else { Idle::Close }
}

/// Longest request line (method, target, version) accepted; a longer one is a 414 (nginx's
/// `large_client_header_buffers`, 8 KiB).
pub(crate) const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Most bytes of empty lines accepted before a request line.
const MAX_LEADING_EMPTY: usize = 16;

/// Reading a request head as it arrives: where the scans stopped, so each byte is looked at
/// once.
#[derive(Default)]
struct HeadScan {
    /// Where the search for the end of the head resumes.
    end_from: usize,
    /// Whether the request line has been seen whole.
    line_done: bool,
    /// Where the search for the request line's end resumes.
    line_from: usize,
}

impl HeadScan {
    /// The head at the front of `buf`, when it has all arrived, or why it is refused.
    fn poll(&mut self, buf: &mut BytesMut) -> Parsed {
        if !self.line_done {
            // Empty lines before the request line are ignored (RFC 9112, 2.2), a few of them:
            // a stream of them would otherwise be scanned again on every read.
            let skip = buf
                .iter()
                .take(MAX_LEADING_EMPTY + 1)
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if skip > MAX_LEADING_EMPTY {
                return Parsed::Bad(
                    StatusCode::BAD_REQUEST,
                    "too many empty lines before the request line".into(),
                );
            }
            let from = self.line_from.max(skip);
            match memchr::memchr(b'\n', &buf[from..]) {
                Some(lf) if from + lf - skip > MAX_REQUEST_LINE => return too_long_target(),
                Some(_) => self.line_done = true,
                None if buf.len() - skip > MAX_REQUEST_LINE => return too_long_target(),
                None => self.line_from = buf.len(),
            }
        }
        while let Some(end) = h1::head_end(buf, &mut self.end_from) {
            if end > h1::MAX_HEAD {
                return head_too_large();
            }
            match parse_head(buf, end) {
                // Only empty lines so far: the head is still to come.
                Parsed::Partial => {}
                done => {
                    *self = Self::default();
                    return done;
                }
            }
        }
        if buf.len() > h1::MAX_HEAD {
            return head_too_large();
        }
        Parsed::Partial
    }
}

/// [`HeadScan`] for the tests and fuzz targets: `true` once it has a head or a refusal.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Default)]
pub(crate) struct HeadScanProbe(HeadScan);

#[cfg(any(test, feature = "fuzzing"))]
impl HeadScanProbe {
    pub(crate) fn poll(&mut self, buf: &mut BytesMut) -> bool {
        !matches!(self.0.poll(buf), Parsed::Partial)
    }
}

fn too_long_target() -> Parsed {
    Parsed::Bad(
        StatusCode::URI_TOO_LONG,
        format!(
            "the request line is longer than {} KiB",
            MAX_REQUEST_LINE >> 10
        ),
    )
}

fn head_too_large() -> Parsed {
    Parsed::Bad(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!("the request head is larger than {} KiB", h1::MAX_HEAD >> 10),
    )
}

async fn connection(
    service: Service,
    conns: Arc<Conns>,
    stream: TcpStream,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let limits = &conns.limits;
    let accepted = crate::instant();
    let me = Arc::new(Notify::new());
    let mut wire = Wire::new(stream);
    let mut out = Vec::with_capacity(1024);
    let mut served = 0u64;
    loop {
        // The first request's head is due `header_timeout` after the connection opened; a
        // later one's after its first byte.
        let mut head_due = (served == 0).then(|| accepted + limits.header_timeout);
        let mut scan = HeadScan::default();
        let head = loop {
            if wire.buf.is_empty() {
                let until = head_due.unwrap_or_else(|| crate::instant() + limits.idle_timeout);
                match idle(&mut wire, &conns, &me, until, &mut stopping).await {
                    Idle::Data => {}
                    Idle::Close => return,
                }
            }
            let due = *head_due.get_or_insert_with(|| crate::instant() + limits.header_timeout);
            match scan.poll(&mut wire.buf) {
                Parsed::Head(head) => break head,
                Parsed::Bad(status, why) => {
                    let resp = error(status, why);
                    let _ = reply(&mut wire, &mut out, resp, false, false, false, limits).await;
                    return;
                }
                Parsed::Partial => {}
            }
            match wire.fill_until(Some(due), 4096).await {
                Ok(true) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    let resp = error(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the request head did not arrive within {} s",
                            limits.header_timeout.as_secs()
                        ),
                    );
                    let _ = reply(&mut wire, &mut out, resp, false, false, false, limits).await;
                    return;
                }
                _ => return,
            }
        };
        served += 1;
        let limit = conns.body_limit;
        let mut held = Held::new(Arc::clone(&conns.budget));
        let body = match head.framing {
            None => Bytes::new(),
            Some(framing) => {
                let refuse = |status: StatusCode, why: String| error(status, why);
                if matches!(framing, Framing::Length(n) if n > limit) {
                    let resp = refuse(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is larger than the limit".into(),
                    );
                    let _ =
                        reply(&mut wire, &mut out, resp, false, head.http10, false, limits).await;
                    return;
                }
                if head.expect_continue && !head.http10 {
                    let write = wire.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if !matches!(
                        tokio::time::timeout(limits.send_timeout, write).await,
                        Ok(Ok(()))
                    ) {
                        return;
                    }
                }
                let pace = Pace {
                    start: crate::instant(),
                    allowance: limits.body_timeout,
                    min_rate: limits.min_rate,
                };
                match wire.body(framing, limit, Some(pace), Some(&mut held)).await {
                    Ok(body) => body,
                    Err(e) => {
                        let (status, why) = match &e {
                            BodyError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
                            BodyError::Malformed(_) => (StatusCode::BAD_REQUEST, e.to_string()),
                            BodyError::OverBudget => {
                                (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                            }
                            BodyError::Io(io) if io.kind() == io::ErrorKind::TimedOut => (
                                StatusCode::REQUEST_TIMEOUT,
                                format!(
                                    "the request body did not arrive in time ({} s, then at \
                                     least {} bytes/s)",
                                    limits.body_timeout.as_secs(),
                                    limits.min_rate
                                ),
                            ),
                            BodyError::Io(_) | BodyError::Eof => return,
                        };
                        let resp = refuse(status, format!("the request body: {why}"));
                        let _ = reply(&mut wire, &mut out, resp, false, head.http10, false, limits)
                            .await;
                        return;
                    }
                }
            }
        };
        let Head {
            method,
            target,
            headers,
            http10,
            keep_alive,
            ..
        } = head;
        let head_only = method == Method::HEAD;
        // httparse hands out the target as a `str`: it is UTF-8.
        let target = std::str::from_utf8(&target).unwrap_or("/");
        let resp = match &service {
            Service::Gateway(gw, router) => {
                dispatch(gw, router, method, target, headers, body).await
            }
            Service::Router(router) => through_router(router, method, target, headers, body).await,
        };
        drop(held);
        let keep_alive = keep_alive && !*stopping.borrow();
        if reply(
            &mut wire, &mut out, resp, keep_alive, http10, head_only, limits,
        )
        .await
        .is_err()
            || !keep_alive
        {
            return;
        }
    }
}

/// Inference goes straight to its handler; the rest through the router.
pub(crate) async fn dispatch(
    gw: &Arc<Gateway>,
    router: &axum::Router,
    method: Method,
    target: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    // Percent-encoded paths take the router, which decodes them.
    if method == Method::POST && !path.contains('%') {
        if let Some(segment) = path.strip_prefix("/v1/models/")
            && !segment.is_empty()
            && !segment.contains('/')
        {
            return crate::predict(gw, segment, &headers, body).await;
        }
        if let Some(rest) = path.strip_prefix("/v2/models/") {
            let mut it = rest.split('/');
            match (it.next(), it.next(), it.next(), it.next(), it.next()) {
                (Some(m), Some("infer"), None, _, _) if !m.is_empty() => {
                    return crate::infer(gw, m, None, &headers, body).await;
                }
                (Some(m), Some("versions"), Some(v), Some("infer"), None)
                    if !m.is_empty() && !v.is_empty() =>
                {
                    return crate::infer(gw, m, Some(v), &headers, body).await;
                }
                _ => {}
            }
        }
    }
    through_router(router, method, target, headers, body).await
}

/// A request through an axum router.
async fn through_router(
    router: &axum::Router,
    method: Method,
    target: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(uri) = target.parse() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the request target {target:?} is not a URI path"),
        );
    };
    let mut req = Request::new(Body::from(body));
    // HEAD is answered as GET, and `reply` leaves the body out: the length stays right.
    *req.method_mut() = if method == Method::HEAD {
        Method::GET
    } else {
        method
    };
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    match router.clone().oneshot(req).await {
        Ok(resp) => resp,
        Err(never) => match never {},
    }
}

/// Writes `resp` with a `content-length`; `Err` when the connection is gone.
async fn reply(
    wire: &mut Wire,
    out: &mut Vec<u8>,
    resp: Response,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
    limits: &Limits,
) -> io::Result<()> {
    let (parts, body) = resp.into_parts();
    let (parts, body) = match whole(body).await {
        Ok(body) => (parts, body),
        Err(e) => {
            let (parts, body) = error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the response could not be produced: {e}"),
            )
            .into_response()
            .into_parts();
            (parts, whole(body).await.unwrap_or_default())
        }
    };
    let bodiless = parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || parts.status.is_informational();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "date"
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !bodiless {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&h1::date());
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(&body);
    }
    // Most answers fit the socket's buffer: written at once, with no timer. What is left
    // waits for the client, by the send deadline.
    let written = match wire.stream.try_write(out) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == out.len() {
        return Ok(());
    }
    let pace = Pace {
        start: crate::instant(),
        allowance: limits.send_timeout,
        min_rate: limits.min_rate,
    };
    let rest = &out[written..];
    match tokio::time::timeout_at(pace.deadline(rest.len()), wire.stream.write_all(rest)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not take the answer in time",
        )),
    }
}

/// A response body in one piece. Bodies here are almost always one frame, taken as it is.
async fn whole(mut body: Body) -> Result<Bytes, axum::Error> {
    let mut first = Bytes::new();
    let mut more: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        // Trailers have no place in an HTTP/1.1 answer with a length: left out.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        match &mut more {
            None if first.is_empty() => first = data,
            None => {
                let mut joined = BytesMut::from(&first[..]);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            Some(joined) => joined.extend_from_slice(&data),
        }
    }
    Ok(more.map_or(first, BytesMut::freeze))
}
