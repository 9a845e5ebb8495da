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

use std::future::Future;
use std::io::{self, Write};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::h1::{self, BodyError, Framing, Wire};
use crate::{Gateway, error};

/// The longest a client may pause in the middle of a request (head or body) before it is
/// answered 408 and the connection closed; between requests it may stay as long as it likes.
const STALL: std::time::Duration = std::time::Duration::from_secs(30);

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

/// Parses the request head at the front of `buf` and takes it off. Header values and the
/// target stay in the bytes read: a head costs no copy of them.
fn parse_head(buf: &mut BytesMut) -> Parsed {
    let bad = |why: String| Parsed::Bad(StatusCode::BAD_REQUEST, why);
    // Where each kept header's name and value lie in `buf`.
    let mut spans = [(0usize, 0usize, 0usize, 0usize); h1::MAX_HEADERS];
    let mut kept = 0;
    let (len, method, target, version, scan) = {
        let base = buf.as_ptr() as usize;
        let at = |part: &[u8]| (part.as_ptr() as usize - base, part.len());
        let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > h1::MAX_HEAD => {
                return Parsed::Bad(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("the request head is larger than {} KiB", h1::MAX_HEAD >> 10),
                );
            }
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
    let keep_alive = if http10 { scan.keep_alive } else { !scan.close };
    Parsed::Head(Head {
        method,
        target: raw.slice(target.0..target.0 + target.1),
        http10,
        framing,
        keep_alive,
        expect_continue: scan.expect_continue,
        headers: map,
    })
}

impl Gateway {
    /// Serves the data plane on `listener` until `shutdown` completes; then finishes the
    /// requests in progress and returns.
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let (stop, stopping) = watch::channel(false);
        let router = self.router();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(connection(
                            Arc::clone(self),
                            router.clone(),
                            stream,
                            stopping.clone(),
                        ));
                    }
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a moment instead of spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        let _ = stop.send(true);
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

async fn connection(
    gw: Arc<Gateway>,
    router: axum::Router,
    stream: TcpStream,
    mut stopping: watch::Receiver<bool>,
) {
    let mut wire = Wire::new(stream);
    wire.stall = Some(STALL);
    let mut out = Vec::with_capacity(1024);
    loop {
        let head = loop {
            match parse_head(&mut wire.buf) {
                Parsed::Head(head) => break head,
                Parsed::Bad(status, why) => {
                    let _ =
                        reply(&mut wire, &mut out, error(status, why), false, false, false).await;
                    return;
                }
                Parsed::Partial => {}
            }
            let more = if wire.buf.is_empty() {
                // Between requests: a shutdown closes the connection; a client may keep it
                // open as long as it likes.
                tokio::select! {
                    biased;
                    _ = stopping.wait_for(|s| *s) => return,
                    more = wire.fill_within(None) => more,
                }
            } else {
                wire.fill().await
            };
            match more {
                Ok(true) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    let resp = error(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("the request head stopped arriving: {e}"),
                    );
                    let _ = reply(&mut wire, &mut out, resp, false, false, false).await;
                    return;
                }
                _ => return,
            }
        };
        let limit = gw.config.body_limit;
        let body = match head.framing {
            None => Bytes::new(),
            Some(framing) => {
                if matches!(framing, Framing::Length(n) if n > limit) {
                    let resp = error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is larger than the limit".into(),
                    );
                    let _ = reply(&mut wire, &mut out, resp, false, head.http10, false).await;
                    return;
                }
                if head.expect_continue
                    && !head.http10
                    && wire
                        .stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .is_err()
                {
                    return;
                }
                match wire.body(framing, limit).await {
                    Ok(body) => body,
                    Err(e @ (BodyError::TooLarge | BodyError::Malformed(_))) => {
                        let status = if matches!(e, BodyError::TooLarge) {
                            StatusCode::PAYLOAD_TOO_LARGE
                        } else {
                            StatusCode::BAD_REQUEST
                        };
                        let resp = error(status, format!("the request body: {e}"));
                        let _ = reply(&mut wire, &mut out, resp, false, head.http10, false).await;
                        return;
                    }
                    Err(BodyError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                        let resp = error(
                            StatusCode::REQUEST_TIMEOUT,
                            format!("the request body stopped arriving: {e}"),
                        );
                        let _ = reply(&mut wire, &mut out, resp, false, head.http10, false).await;
                        return;
                    }
                    Err(BodyError::Io(_) | BodyError::Eof) => return,
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
        let resp = dispatch(&gw, &router, method, target, headers, body).await;
        let keep_alive = keep_alive && !*stopping.borrow();
        if reply(&mut wire, &mut out, resp, keep_alive, http10, head_only)
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
    wire.stream.write_all(out).await
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
