//! Request capture: recent inference requests of each service kept in the data directory, to
//! be replayed against a canary when live traffic is too thin to judge it.
//!
//! Off unless the operator turns it on ([`CaptureConfig`]); it holds request data (model inputs)
//! on disk. Per service, a directory of segment files, each a header line then records:
//!
//! ```text
//! segment  = "crossfade-capture 1\n" record*
//! record   = len:u32le  at_ms:i64le  protocol:u8  json_len:u32le  body
//!            (len counts everything after itself; protocol 1 = V1, 2 = V2;
//!             json_len = u32::MAX when the request had no binary extension)
//! ```
//!
//! Only the split's successful requests to an in-process revision are captured (a request
//! pinned by a client is not the traffic a rollout controls), bodies up to
//! [`CAPTURE_MAX_BODY`]. The request path hands a record to one writer thread through a bounded
//! queue and never waits: when the queue is full the record is dropped and counted. A service's
//! files never exceed its byte limit (the oldest segment goes first) nor hold records older than
//! the retention. A record cut short by a crash is ignored when read.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;

/// The first line of every segment file: the format and its version.
const MAGIC: &[u8] = b"crossfade-capture 1\n";
/// Bytes of a record before its body, after its length.
const RECORD_HEAD: usize = 8 + 1 + 4;
/// Larger request bodies are not captured.
pub const CAPTURE_MAX_BODY: usize = 64 * 1024;
/// Records waiting for the writer; beyond this, new ones are dropped.
const QUEUE: usize = 4096;
/// A service's limit is split over this many segments (the oldest is removed whole).
const SEGMENTS: u64 = 4;

/// Where and how much to capture.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The directory that holds one subdirectory per service.
    pub dir: PathBuf,
    /// The most bytes kept per service.
    pub max_bytes: u64,
    /// Records older than this are neither kept nor replayed.
    pub retention: Duration,
}

/// The wire protocol a captured request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1,
    V2 {
        /// `inference-header-content-length`, when the request used the binary extension.
        json_len: Option<usize>,
    },
}

/// One captured request.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    /// When it was answered, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub protocol: Protocol,
    pub body: Bytes,
}

enum Job {
    Record {
        service: String,
        record: Captured,
    },
    /// Answered once everything queued before it is on disk.
    Sync(mpsc::Sender<()>),
}

/// The capture of a gateway: a queue to its writer thread, and the reader of what it wrote.
pub(crate) struct Capture {
    config: CaptureConfig,
    tx: mpsc::SyncSender<Job>,
    /// Records dropped because the queue was full.
    pub(crate) dropped: AtomicU64,
}

impl Capture {
    /// Creates the directory (owner only) and starts the writer thread.
    pub(crate) fn open(config: CaptureConfig) -> io::Result<Self> {
        create_private_dir(&config.dir)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let writer = Writer {
            config: config.clone(),
            logs: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            config,
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues a request for the writer; never blocks.
    pub(crate) fn record(&self, service: &str, record: Captured) {
        if record.body.len() > CAPTURE_MAX_BODY {
            return;
        }
        let job = Job::Record {
            service: service.to_owned(),
            record,
        };
        if self.tx.try_send(job).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Blocks until every record queued before the call is written.
    pub(crate) fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Job::Sync(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Up to `limit` of a service's records answered at or after `now_ms - retention` and
    /// outside `skip` (capture times already replayed), newest first.
    pub(crate) fn recent(
        &self,
        service: &str,
        limit: usize,
        now_ms: i64,
        skip: std::ops::RangeInclusive<i64>,
    ) -> Vec<Captured> {
        let oldest = now_ms.saturating_sub(retention_ms(&self.config));
        read_recent(&service_dir(&self.config.dir, service), limit, |at| {
            at >= oldest && !skip.contains(&at)
        })
    }
}

fn retention_ms(config: &CaptureConfig) -> i64 {
    i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX)
}

/// A service's directory: its namespace and name (DNS labels: `[a-z0-9-]`), joined by a dot;
/// any other character becomes `_`, so distinct valid names never share one.
fn service_dir(root: &Path, service: &str) -> PathBuf {
    let name: String = service
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || c == '-' => c,
            _ => '_',
        })
        .collect();
    root.join(name)
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The segments of a directory, by number, oldest first.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let number = name.strip_suffix(".capture")?.parse().ok()?;
            Some((number, e.path()))
        })
        .collect();
    found.sort_unstable_by_key(|(n, _)| *n);
    found
}

/// The records of one segment's bytes, in order; stops at the first one cut short.
fn parse_segment(bytes: &[u8]) -> Vec<Captured> {
    let mut out = Vec::new();
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return out;
    };
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(record) = rest.get(4..4 + len) else {
            break;
        };
        rest = &rest[4 + len..];
        if len < RECORD_HEAD {
            break;
        }
        let at_ms = i64::from_le_bytes(record[..8].try_into().unwrap_or_default());
        let json_len = u32::from_le_bytes(record[9..13].try_into().unwrap_or_default());
        let protocol = match record[8] {
            1 => Protocol::V1,
            2 => Protocol::V2 {
                json_len: (json_len != u32::MAX).then_some(json_len as usize),
            },
            _ => continue,
        };
        out.push(Captured {
            at_ms,
            protocol,
            body: Bytes::copy_from_slice(&record[RECORD_HEAD..]),
        });
    }
    out
}

fn read_recent(dir: &Path, limit: usize, wanted: impl Fn(i64) -> bool) -> Vec<Captured> {
    let mut out = Vec::new();
    for (_, path) in segments(dir).into_iter().rev() {
        if out.len() >= limit {
            break;
        }
        let Ok(bytes) = fs::read(&path) else {
            continue;
        };
        let records = parse_segment(&bytes);
        out.extend(
            records
                .into_iter()
                .rev()
                .filter(|r| wanted(r.at_ms))
                .take(limit - out.len()),
        );
    }
    out
}

fn encode(record: &Captured, out: &mut Vec<u8>) {
    let (protocol, json_len) = match record.protocol {
        Protocol::V1 => (1u8, u32::MAX),
        Protocol::V2 { json_len } => (
            2,
            json_len
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(u32::MAX),
        ),
    };
    let len = (RECORD_HEAD + record.body.len()) as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record.at_ms.to_le_bytes());
    out.push(protocol);
    out.extend_from_slice(&json_len.to_le_bytes());
    out.extend_from_slice(&record.body);
}

/// The writer thread's state.
struct Writer {
    config: CaptureConfig,
    logs: HashMap<String, Log>,
}

/// One service's segments: the closed ones (number, bytes, newest record) and the open one.
struct Log {
    dir: PathBuf,
    closed: VecDeque<(u64, u64, i64)>,
    open: Option<(u64, BufWriter<File>, u64, i64)>,
    next: u64,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        let mut buf = Vec::new();
        let mut waiting = Vec::new();
        while let Ok(job) = rx.recv() {
            // This one, everything queued meanwhile, then one flush: readers see whole records.
            let mut next = Some(job);
            while let Some(job) = next.take().or_else(|| rx.try_recv().ok()) {
                match job {
                    Job::Record { service, record } => self.write(service, record, &mut buf),
                    Job::Sync(tx) => waiting.push(tx),
                }
            }
            self.flush();
            for tx in waiting.drain(..) {
                let _ = tx.send(());
            }
        }
    }

    fn flush(&mut self) {
        for log in self.logs.values_mut() {
            if let Some((_, file, _, _)) = &mut log.open
                && let Err(e) = file.flush()
            {
                tracing::warn!(dir = %log.dir.display(), "capture: {e}");
            }
        }
    }

    fn write(&mut self, service: String, record: Captured, buf: &mut Vec<u8>) {
        let config = &self.config;
        let dir = || Log::open(service_dir(&config.dir, &service));
        let log = match self.logs.get_mut(&service) {
            Some(log) => log,
            None => self.logs.entry(service.clone()).or_insert_with(dir),
        };
        buf.clear();
        encode(&record, buf);
        if let Err(e) = log.append(buf, record.at_ms, config) {
            tracing::warn!(service = %service, "capture: {e}");
            log.open = None;
        }
    }
}

impl Log {
    /// A service's log as earlier runs left it; new records go to a new segment.
    fn open(dir: PathBuf) -> Self {
        let closed: VecDeque<(u64, u64, i64)> = segments(&dir)
            .into_iter()
            .map(|(n, path)| {
                let bytes = fs::read(&path).unwrap_or_default();
                let newest = parse_segment(&bytes).last().map_or(i64::MIN, |r| r.at_ms);
                (n, bytes.len() as u64, newest)
            })
            .collect();
        let next = closed.back().map_or(1, |(n, _, _)| n + 1);
        Self {
            dir,
            closed,
            open: None,
            next,
        }
    }

    fn path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("{number:010}.capture"))
    }

    fn append(&mut self, bytes: &[u8], at_ms: i64, config: &CaptureConfig) -> io::Result<()> {
        let segment_limit = (config.max_bytes / SEGMENTS).max(1);
        if self
            .open
            .as_ref()
            .is_some_and(|(_, _, size, _)| *size + bytes.len() as u64 > segment_limit)
            && let Some((n, mut file, size, newest)) = self.open.take()
        {
            file.flush()?;
            self.closed.push_back((n, size, newest));
        }
        if self.open.is_none() {
            create_private_dir(&self.dir)?;
            let number = self.next;
            self.next += 1;
            let mut options = fs::OpenOptions::new();
            options.create_new(true).write(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = BufWriter::new(options.open(self.path(number))?);
            file.write_all(MAGIC)?;
            self.open = Some((number, file, MAGIC.len() as u64, i64::MIN));
        }
        if let Some((_, file, size, newest)) = &mut self.open {
            file.write_all(bytes)?;
            *size += bytes.len() as u64;
            *newest = (*newest).max(at_ms);
        }
        self.trim(at_ms, config);
        Ok(())
    }

    /// Removes the oldest closed segments while the log is over its limit, and those whose
    /// newest record is past the retention.
    fn trim(&mut self, now_ms: i64, config: &CaptureConfig) {
        let oldest = now_ms.saturating_sub(retention_ms(config));
        let open = self.open.as_ref().map_or(0, |(_, _, size, _)| *size);
        let mut total: u64 = self.closed.iter().map(|(_, s, _)| s).sum::<u64>() + open;
        while let Some(&(n, size, newest)) = self.closed.front() {
            if total <= config.max_bytes && newest >= oldest {
                break;
            }
            if let Err(e) = fs::remove_file(self.path(n))
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %self.dir.display(), "capture: {e}");
                break;
            }
            self.closed.pop_front();
            total -= size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_bytes: u64) -> CaptureConfig {
        CaptureConfig {
            dir: dir.to_owned(),
            max_bytes,
            retention: Duration::from_secs(3600),
        }
    }

    fn record(at_ms: i64, body: &str) -> Captured {
        Captured {
            at_ms,
            protocol: Protocol::V2 { json_len: None },
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    /// Writes through a writer directly (no thread), so the test knows when it is on disk.
    fn write_all(config: &CaptureConfig, records: &[(String, Captured)]) {
        let mut writer = Writer {
            config: config.clone(),
            logs: HashMap::new(),
        };
        let mut buf = Vec::new();
        for (service, r) in records {
            writer.write(service.clone(), r.clone(), &mut buf);
        }
        writer.flush();
    }

    #[test]
    fn records_come_back_newest_first_per_service() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20);
        let mut records = Vec::new();
        for i in 0..10 {
            records.push((
                "default/iris".to_owned(),
                record(1000 + i, &format!("a{i}")),
            ));
            records.push(("other/iris".to_owned(), record(1000 + i, &format!("b{i}"))));
        }
        records.push((
            "default/iris".to_owned(),
            Captured {
                at_ms: 2000,
                protocol: Protocol::V1,
                body: Bytes::from_static(b"{\"instances\": [[1]]}"),
            },
        ));
        write_all(&config, &records);
        let got = read_recent(&service_dir(dir.path(), "default/iris"), 3, |at| at >= 0);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].protocol, Protocol::V1);
        assert_eq!(&got[1].body[..], b"a9");
        assert_eq!(&got[2].body[..], b"a8");
        let other = read_recent(&service_dir(dir.path(), "other/iris"), 100, |at| at >= 0);
        assert_eq!(other.len(), 10);
        assert!(other.iter().all(|r| r.body.starts_with(b"b")));
    }

    #[test]
    fn a_service_never_holds_more_than_its_limit_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 4096);
        let body = "x".repeat(100);
        let records: Vec<_> = (0..500)
            .map(|i| ("default/iris".to_owned(), record(i, &body)))
            .collect();
        write_all(&config, &records);
        let sdir = service_dir(dir.path(), "default/iris");
        let total: u64 = segments(&sdir)
            .iter()
            .map(|(_, p)| fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 4096, "{total} bytes kept");
        let kept = read_recent(&sdir, 1000, |at| at >= 0);
        assert!(kept.len() > 20, "only {} kept", kept.len());
        assert_eq!(kept[0].at_ms, 499);
        // Newest first, contiguous: the oldest went first.
        assert!(kept.windows(2).all(|w| w[0].at_ms == w[1].at_ms + 1));
    }

    #[test]
    fn old_records_are_neither_replayed_nor_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path(), 400);
        config.retention = Duration::from_millis(1000);
        let body = "y".repeat(40);
        let mut records: Vec<_> = (0..20)
            .map(|i| ("default/iris".to_owned(), record(i * 10, &body)))
            .collect();
        write_all(&config, &records);
        let sdir = service_dir(dir.path(), "default/iris");
        // Before the late one, the newest fit the limit; reading filters by the retention.
        let before = read_recent(&sdir, 1000, |at| at >= 150);
        assert!(before.iter().all(|r| r.at_ms >= 150), "{before:?}");
        records.push(("default/iris".to_owned(), record(10_000, &body)));
        write_all(&config, &records[20..]);
        // Much later: every earlier segment is past the retention and removed.
        let all = read_recent(&sdir, 1000, |at| at >= 0);
        assert_eq!(
            all.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
            vec![10_000]
        );
        assert_eq!(segments(&sdir).len(), 1);
    }

    #[test]
    fn a_record_cut_short_is_ignored_and_a_restart_appends_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20);
        write_all(
            &config,
            &[
                ("default/iris".to_owned(), record(1, "one")),
                ("default/iris".to_owned(), record(2, "two")),
            ],
        );
        let sdir = service_dir(dir.path(), "default/iris");
        let (_, path) = segments(&sdir).pop().unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
        let got = read_recent(&sdir, 10, |at| at >= 0);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].body[..], b"one");
        write_all(&config, &[("default/iris".to_owned(), record(3, "three"))]);
        assert_eq!(segments(&sdir).len(), 2);
        let got = read_recent(&sdir, 10, |at| at >= 0);
        assert_eq!(got.iter().map(|r| r.at_ms).collect::<Vec<_>>(), vec![3, 1]);
    }

    #[cfg(unix)]
    #[test]
    fn captured_request_data_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("capture");
        let capture = Capture::open(config(&root, 1 << 20)).unwrap();
        drop(capture);
        write_all(
            &config(&root, 1 << 20),
            &[("default/iris".to_owned(), record(1, "secret"))],
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        let sdir = service_dir(&root, "default/iris");
        assert_eq!(mode(&sdir), 0o700);
        assert_eq!(mode(&segments(&sdir)[0].1), 0o600);
    }
}
