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
}

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    Io(io::Error),
    /// The peer closed the connection before the body ended.
    Eof,
    TooLarge,
    /// Every connection's bodies together would hold more than the listener's budget.
    OverBudget,
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
            Self::OverBudget => write!(
                f,
                "the server holds as many request bodies as it may; try again shortly"
            ),
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
    /// How many `host` headers.
    pub(crate) hosts: usize,
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
            self.hosts += usize::from(name.eq_ignore_ascii_case("host"));
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

/// Where the message head at the front of `buf` ends (just after its empty line), or `None`
/// when it has not all arrived. The search resumes at `*from` and leaves it where the next
/// one should resume, so a head that arrives a byte at a time is scanned once in all, not
/// from its start on every read. Lines may end in CRLF or, as RFC 9112 (2.2) lets a recipient
/// accept, a bare LF.
pub(crate) fn head_end(buf: &[u8], from: &mut usize) -> Option<usize> {
    let mut i = (*from).min(buf.len());
    while let Some(lf) = memchr::memchr(b'\n', &buf[i..]) {
        let at = i + lf;
        match (buf.get(at + 1), buf.get(at + 2)) {
            (Some(b'\n'), _) => {
                *from = at + 2;
                return Some(at + 2);
            }
            (Some(b'\r'), Some(b'\n')) => {
                *from = at + 3;
                return Some(at + 3);
            }
            // Not enough bytes after this LF to tell: look here again next time.
            (None, _) | (Some(b'\r'), None) => {
                *from = at;
                return None;
            }
            _ => i = at + 1,
        }
    }
    *from = buf.len();
    None
}

/// The scan of a whole header list.
pub(crate) fn scan(headers: &[httparse::Header<'_>]) -> Scan {
    let mut scan = Scan::default();
    for h in headers {
        scan.header(h);
    }
    scan
}

/// Bytes read per `read` call at most while a body arrives: a buffer grows as bytes come,
/// never by what a head merely announces.
const READ_CHUNK: usize = 64 * 1024;

/// When a message must be complete: a fixed allowance, plus time in proportion to the bytes
/// received at a minimum rate. A peer that keeps the rate gets as long as its message needs; one
/// that trickles (a byte every 29 s) is cut off when the allowance runs out. It is a deadline,
/// not a stall timer: it does not restart on every byte.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) start: tokio::time::Instant,
    pub(crate) allowance: std::time::Duration,
    /// Bytes per second; 0 means the allowance is all there is.
    pub(crate) min_rate: u64,
}

impl Pace {
    /// The deadline once `received` bytes have arrived.
    pub(crate) fn deadline(&self, received: usize) -> tokio::time::Instant {
        let earned = if self.min_rate == 0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(received as f64 / self.min_rate as f64)
        };
        let far = std::time::Duration::from_secs(86_400 * 365);
        self.start
            .checked_add(self.allowance.saturating_add(earned).min(far))
            .unwrap_or(self.start)
    }
}

/// A bound on the body bytes held across every connection of a listener.
#[derive(Debug)]
pub struct Budget {
    used: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Self {
            used: std::sync::atomic::AtomicUsize::new(0),
            max,
        }
    }

    fn take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Bytes of a [`Budget`] held by one request; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    budget: std::sync::Arc<Budget>,
    n: usize,
}

impl Held {
    pub(crate) fn new(budget: std::sync::Arc<Budget>) -> Self {
        Self { budget, n: 0 }
    }

    /// Holds at least `total` bytes; `false` when the budget has not that much left.
    pub(crate) fn grow_to(&mut self, total: usize) -> bool {
        if total <= self.n {
            return true;
        }
        if self.budget.take(total - self.n) {
            self.n = total;
            true
        } else {
            false
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.n);
    }
}

impl Wire {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(4 * 1024),
        }
    }

    /// Reads more bytes into the buffer (at most `want`, at least a little), waiting until
    /// `deadline` at most; `false` when the peer has closed. A deadline that passes is an
    /// `ErrorKind::TimedOut` error.
    pub(crate) async fn fill_until(
        &mut self,
        deadline: Option<tokio::time::Instant>,
        want: usize,
    ) -> io::Result<bool> {
        let want = want.clamp(1024, READ_CHUNK);
        if self.buf.capacity() - self.buf.len() < want.min(1024) {
            self.buf.reserve(want);
        }
        let read = self.stream.read_buf(&mut self.buf);
        let n = match deadline {
            None => read.await?,
            Some(deadline) => tokio::time::timeout_at(deadline, read)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the deadline passed"))??,
        };
        Ok(n > 0)
    }

    /// Reads a body with the given framing, at most `limit` bytes, by the deadline `pace`
    /// sets (`None`: the caller bounds the whole exchange), holding its bytes in `held` (when
    /// given) as they arrive.
    pub(crate) async fn body(
        &mut self,
        framing: Framing,
        limit: usize,
        pace: Option<Pace>,
        mut held: Option<&mut Held>,
    ) -> Result<Bytes, BodyError> {
        let mut hold = |n: usize| match held.as_deref_mut() {
            Some(h) => {
                if h.grow_to(n) {
                    Ok(())
                } else {
                    Err(BodyError::OverBudget)
                }
            }
            None => Ok(()),
        };
        match framing {
            Framing::Length(n) if n > limit => Err(BodyError::TooLarge),
            Framing::Length(n) => {
                while self.buf.len() < n {
                    hold(self.buf.len().max(READ_CHUNK).min(n))?;
                    let want = n - self.buf.len();
                    if !self
                        .fill_until(pace.map(|p| p.deadline(self.buf.len())), want)
                        .await?
                    {
                        return Err(BodyError::Eof);
                    }
                }
                hold(n)?;
                Ok(self.buf.split_to(n).freeze())
            }
            Framing::Chunked => {
                let mut decoder = Chunked::default();
                let mut received = 0usize;
                loop {
                    let before = self.buf.len();
                    let done = decoder.decode(&mut self.buf, limit)?;
                    received = received.saturating_add(before - self.buf.len());
                    hold(decoder.body.len())?;
                    if done {
                        return Ok(decoder.body.freeze());
                    }
                    if !self
                        .fill_until(pace.map(|p| p.deadline(received)), READ_CHUNK)
                        .await?
                    {
                        return Err(BodyError::Eof);
                    }
                }
            }
            Framing::UntilClose => {
                while self
                    .fill_until(pace.map(|p| p.deadline(self.buf.len())), READ_CHUNK)
                    .await?
                {
                    if self.buf.len() > limit {
                        return Err(BodyError::TooLarge);
                    }
                    hold(self.buf.len())?;
                }
                Ok(self.buf.split().freeze())
            }
        }
    }
}

/// Longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
const SIZE_LINE: (&str, &str) = (
    "a chunk-size line is too long",
    "a chunk-size line does not end with CRLF",
);
const TRAILER_LINE: (&str, &str) = (
    "the trailer section is too long",
    "a trailer line does not end with CRLF",
);

/// A chunked body decoder (RFC 9112, 7.1) that takes bytes as they come: it never waits, never
/// reads past what it is given, and keeps its place between calls.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    /// The body decoded so far.
    pub(crate) body: BytesMut,
    /// Bytes of trailer section seen so far.
    trailers: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// In the data of a chunk, with this many bytes to go.
    Data(usize),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
    /// After the last chunk, in the trailer section.
    Trailers,
    Done,
}

impl Chunked {
    /// Decodes what it can from the front of `buf` (taking it off); `Ok(true)` once the body
    /// and its trailer section are complete.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut, limit: usize) -> Result<bool, BodyError> {
        loop {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, SIZE_LINE)? else {
                        return Ok(false);
                    };
                    let size = chunk_size(&line)?;
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else if size > limit.saturating_sub(self.body.len()) {
                        return Err(BodyError::TooLarge);
                    } else {
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let n = left.min(buf.len());
                    self.body.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::Malformed("a chunk does not end with CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let left = MAX_HEAD.saturating_sub(self.trailers);
                    let Some(line) = take_line(buf, left, TRAILER_LINE)? else {
                        return Ok(false);
                    };
                    self.trailers = self.trailers.saturating_add(line.len() + 2);
                    // Trailer fields are read and left out; an empty line ends them.
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// A CRLF-terminated line at the front of `buf`, taken off without its CRLF; `None` when it
/// has not all arrived. A bare CR or LF, or a line longer than `max`, is malformed.
fn take_line(
    buf: &mut BytesMut,
    max: usize,
    (too_long, no_crlf): (&'static str, &'static str),
) -> Result<Option<BytesMut>, BodyError> {
    let Some(lf) = buf
        .iter()
        .take(max.saturating_add(2))
        .position(|b| *b == b'\n')
    else {
        if buf.len() > max {
            return Err(BodyError::Malformed(too_long));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' || buf[..lf - 1].contains(&b'\r') {
        return Err(BodyError::Malformed(no_crlf));
    }
    let line = buf.split_to(lf - 1);
    buf.advance(2);
    Ok(Some(line))
}

/// The size of a chunk-size line, exactly as RFC 9112 (7.1) writes it:
/// `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_size(line: &[u8]) -> Result<usize, BodyError> {
    const BAD: BodyError = BodyError::Malformed("a chunk size is not a hexadecimal number");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BAD);
    }
    let mut size = 0usize;
    for b in &line[..digits] {
        let d = (*b as char).to_digit(16).unwrap_or(0) as usize;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or(BodyError::Malformed("a chunk size is too large"))?;
    }
    chunk_extensions(&line[digits..])?;
    Ok(size)
}

fn chunk_extensions(mut rest: &[u8]) -> Result<(), BodyError> {
    const BAD: BodyError = BodyError::Malformed("a chunk extension is malformed");
    let bws = |s: &[u8]| -> usize { s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count() };
    let token = |s: &[u8]| -> usize { s.iter().take_while(|b| is_tchar(**b)).count() };
    while !rest.is_empty() {
        rest = &rest[bws(rest)..];
        let Some(after) = rest.strip_prefix(b";") else {
            return Err(BAD);
        };
        rest = &after[bws(after)..];
        let name = token(rest);
        if name == 0 {
            return Err(BAD);
        }
        rest = &rest[name..];
        let ws = bws(rest);
        if rest[ws..].first() == Some(&b'=') {
            rest = &rest[ws + 1..];
            rest = &rest[bws(rest)..];
            if rest.first() == Some(&b'"') {
                let mut i = 1;
                loop {
                    match rest.get(i) {
                        None => return Err(BAD),
                        Some(b'"') => break,
                        Some(b'\\') => match rest.get(i + 1) {
                            Some(c)
                                if *c == b'\t'
                                    || *c == b' '
                                    || (0x21..=0x7e).contains(c)
                                    || *c >= 0x80 =>
                            {
                                i += 2
                            }
                            _ => return Err(BAD),
                        },
                        Some(c)
                            if *c == b'\t'
                                || *c == b' '
                                || *c == 0x21
                                || (0x23..=0x7e).contains(c)
                                || *c >= 0x80 =>
                        {
                            i += 1
                        }
                        Some(_) => return Err(BAD),
                    }
                }
                rest = &rest[i + 1..];
            } else {
                let value = token(rest);
                if value == 0 {
                    return Err(BAD);
                }
                rest = &rest[value..];
            }
        }
    }
    Ok(())
}

/// RFC 9110's `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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
fn wall_clock() -> i64 {
    clock::Clock::system().now().as_secs()
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
