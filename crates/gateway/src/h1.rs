//! HTTP/1.1 on the wire, as the data plane needs it on both sides: reading message heads and
//! bodies (`content-length`, `chunked`, or until the peer closes) from a buffered socket, and
//! writing heads.
//!
//! The gateway's hot path is a proxy and an inference server; a general-purpose HTTP stack
//! spent more CPU per request than nginx on the same work (BENCHMARKS.md). This module does
//! only what both sides of that path need, with one read buffer per connection whose bytes
//! become request and response bodies without a copy.
//!
//! # Guarantees
//!
//! - A body is never longer than the limit given: the reader stops and says so.
//! - A message with both `content-length` and `transfer-encoding`, or with two different
//!   lengths, is refused (request smuggling); so is a transfer coding other than `chunked`.

use std::io;

use axum::body::Bytes;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Most bytes a message head (request or status line and headers) may take.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most headers a message may have.
pub(crate) const MAX_HEADERS: usize = 100;

/// A socket and the bytes read from it but not yet consumed.
pub(crate) struct Wire {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    /// The longest wait for more of a message that has started (`None`: no limit). A peer
    /// that stops sending halfway gets an `ErrorKind::TimedOut` error.
    pub(crate) stall: Option<std::time::Duration>,
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    Io(io::Error),
    /// The peer closed the connection before the body ended.
    Eof,
    TooLarge,
    Malformed(&'static str),
}

impl From<io::Error> for BodyError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Eof => write!(f, "the connection closed before the body ended"),
            Self::TooLarge => write!(f, "the body is larger than the limit"),
            Self::Malformed(why) => write!(f, "{why}"),
        }
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(usize),
    Chunked,
    /// Responses only: the body runs until the server closes the connection.
    UntilClose,
}

/// What a message head says about framing and the connection, gathered in one pass over its
/// headers.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    length: Option<usize>,
    chunked: bool,
    coded: bool,
    bad: Option<&'static str>,
    /// `connection: close`.
    pub(crate) close: bool,
    /// `connection: keep-alive`.
    pub(crate) keep_alive: bool,
    /// `expect: 100-continue`.
    pub(crate) expect_continue: bool,
}

impl Scan {
    /// Takes one header into account; `true` when it concerns only this connection (framing,
    /// `connection`, `expect`, `keep-alive`) and is not passed on.
    pub(crate) fn header(&mut self, h: &httparse::Header<'_>) -> bool {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            self.content_length(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            self.transfer_encoding(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            self.expect_continue |=
                tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"100-continue"));
        } else {
            return name.eq_ignore_ascii_case("keep-alive");
        }
        true
    }

    fn content_length(&mut self, value: &[u8]) {
        // A list of equal values is allowed (RFC 9110, 8.6); different ones are not.
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                self.bad.get_or_insert("content-length is not a number");
                return;
            }
            let Some(n) = std::str::from_utf8(part).ok().and_then(|p| p.parse().ok()) else {
                self.bad.get_or_insert("content-length is too large");
                return;
            };
            if self.length.is_some_and(|l| l != n) {
                self.bad
                    .get_or_insert("two different content-length values");
            }
            self.length = Some(n);
        }
    }

    fn transfer_encoding(&mut self, value: &[u8]) {
        self.coded = true;
        // `chunked`, once and last, is the only coding supported.
        for coding in tokens(value) {
            if coding.eq_ignore_ascii_case(b"chunked") && !self.chunked {
                self.chunked = true;
            } else {
                self.bad
                    .get_or_insert("unsupported transfer-encoding (only chunked is)");
            }
        }
    }

    /// The framing the head declares (`None`: no body, or for a response, until close).
    pub(crate) fn framing(&self) -> Result<Option<Framing>, &'static str> {
        if let Some(bad) = self.bad {
            return Err(bad);
        }
        match (self.length, self.coded) {
            (Some(_), true) => Err("both content-length and transfer-encoding"),
            (Some(n), false) => Ok(Some(Framing::Length(n))),
            (None, true) if self.chunked => Ok(Some(Framing::Chunked)),
            (None, true) => Err("unsupported transfer-encoding (only chunked is)"),
            (None, false) => Ok(None),
        }
    }
}

/// The comma-separated tokens of a header value, trimmed, empty ones left out.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The scan of a whole header list.
pub(crate) fn scan(headers: &[httparse::Header<'_>]) -> Scan {
    let mut scan = Scan::default();
    for h in headers {
        scan.header(h);
    }
    scan
}

impl Wire {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            stall: None,
        }
    }

    /// Reads more bytes into the buffer, waiting at most `stall`; `false` when the peer has
    /// closed.
    pub(crate) async fn fill(&mut self) -> io::Result<bool> {
        self.fill_within(self.stall).await
    }

    /// Reads more bytes into the buffer, waiting at most `limit`.
    pub(crate) async fn fill_within(
        &mut self,
        limit: Option<std::time::Duration>,
    ) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let n = match limit {
            None => read.await?,
            Some(limit) => tokio::time::timeout(limit, read).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing more arrived within {} s", limit.as_secs()),
                )
            })??,
        };
        Ok(n > 0)
    }

    /// Reads a body with the given framing, at most `limit` bytes.
    pub(crate) async fn body(
        &mut self,
        framing: Framing,
        limit: usize,
    ) -> Result<Bytes, BodyError> {
        match framing {
            Framing::Length(n) if n > limit => Err(BodyError::TooLarge),
            Framing::Length(n) => {
                while self.buf.len() < n {
                    self.buf.reserve(n - self.buf.len());
                    if !self.fill().await? {
                        return Err(BodyError::Eof);
                    }
                }
                Ok(self.buf.split_to(n).freeze())
            }
            Framing::Chunked => self.chunked(limit).await,
            Framing::UntilClose => {
                while self.fill().await? {
                    if self.buf.len() > limit {
                        return Err(BodyError::TooLarge);
                    }
                }
                Ok(self.buf.split().freeze())
            }
        }
    }

    /// A line ending in CRLF at the front of the buffer, without its CRLF.
    async fn line(&mut self, max: usize) -> Result<BytesMut, BodyError> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(end);
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(BodyError::Malformed("a chunk line is too long"));
            }
            if !self.fill().await? {
                return Err(BodyError::Eof);
            }
        }
    }

    async fn chunked(&mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut body = BytesMut::new();
        loop {
            let line = self.line(4096).await?;
            let size = line[..].split(|b| *b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= 16)
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or(BodyError::Malformed(
                    "a chunk size is not a hexadecimal number",
                ))?;
            if size == 0 {
                // Trailer fields, up to the empty line; they are not used.
                while !self.line(MAX_HEAD).await?.is_empty() {}
                return Ok(body.freeze());
            }
            if body.len() + size > limit {
                return Err(BodyError::TooLarge);
            }
            while self.buf.len() < size + 2 {
                if !self.fill().await? {
                    return Err(BodyError::Eof);
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(BodyError::Malformed("a chunk does not end with CRLF"));
            }
            self.buf.advance(size + 2);
        }
    }
}

/// The `date` header's value for now (IMF-fixdate), recomputed once a second per thread.
pub(crate) fn date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHED: Cell<(i64, [u8; 29])> = const { Cell::new((i64::MIN, [0; 29])) };
    }
    let now = wall_clock();
    CACHED.with(|c| {
        let (second, text) = c.get();
        if second == now {
            return text;
        }
        let text = imf_fixdate(now);
        c.set((now, text));
        text
    })
}

/// Unix seconds from the system clock: the one wall-clock read of the data plane.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110, 5.6.7).
fn imf_fixdate(secs: i64) -> [u8; 29] {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = civil::DateTime::from_unix(secs);
    let weekday = DAYS[secs.div_euclid(86_400).rem_euclid(7) as usize];
    let text = format!(
        "{weekday}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        t.day,
        MONTHS[(t.month - 1) as usize],
        t.year.rem_euclid(10_000),
        t.hour,
        t.minute,
        t.second
    );
    let mut out = [b' '; 29];
    out.copy_from_slice(&text.as_bytes()[..29]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdate() {
        // RFC 9110's own example.
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_795_694_400),
            b"Thu, 26 Nov 2026 12:00:00 GMT"
        );
    }

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_ambiguity() {
        assert_eq!(scan(&[]).framing(), Ok(None));
        assert_eq!(
            scan(&[h("Content-Length", "12")]).framing(),
            Ok(Some(Framing::Length(12)))
        );
        assert_eq!(
            scan(&[h("content-length", "12, 12")]).framing(),
            Ok(Some(Framing::Length(12)))
        );
        assert_eq!(
            scan(&[h("transfer-encoding", "chunked")]).framing(),
            Ok(Some(Framing::Chunked))
        );
        assert!(
            scan(&[h("content-length", "12"), h("content-length", "13")])
                .framing()
                .is_err()
        );
        assert!(scan(&[h("content-length", "-1")]).framing().is_err());
        assert!(scan(&[h("content-length", "+12")]).framing().is_err());
        assert!(
            scan(&[h("content-length", "99999999999999999999999")])
                .framing()
                .is_err()
        );
        assert!(
            scan(&[h("content-length", "5"), h("transfer-encoding", "chunked")])
                .framing()
                .is_err()
        );
        assert!(
            scan(&[h("transfer-encoding", "gzip, chunked")])
                .framing()
                .is_err()
        );
        assert!(
            scan(&[h("transfer-encoding", "chunked, chunked")])
                .framing()
                .is_err()
        );
    }
}
