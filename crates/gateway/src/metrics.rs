//! Prometheus metrics of the data plane, and the per-revision handles the request path uses
//! (one shared block of atomics per revision: no registry lookup and no lock per request).
//!
//! The exposition is written here rather than through a metrics registry so that encoding it
//! never holds a lock that the route table's preparation or the request path needs: it takes
//! a snapshot of the handles (a list of pointers, under the lock for a moment) and formats
//! from the atomics. At 10,000 revisions that is 290,000 lines; a registry that held its family
//! locks while writing them stalled every route built meanwhile.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::stats::{Outcome, Window};

/// The latency histogram's upper bounds: 100 µs to ~100 s, doubling.
const BUCKETS: usize = 21;

fn bucket_bound(i: usize) -> f64 {
    0.0001 * f64::from(1u32 << i)
}

/// Every revision's handles, and the mirror counters, by their labels.
#[derive(Default)]
pub struct Metrics {
    revisions: Mutex<HashMap<(String, String), Arc<Cells>>>,
    mirrors: Mutex<HashMap<(String, String, String), Arc<MirrorCells>>>,
}

/// What the request path updates for one revision.
struct Cells {
    service: String,
    revision: String,
    /// `service="…",revision="…"`, escaped once.
    labels: String,
    /// By [`Outcome`]: ok, client error, server error.
    requests: [AtomicU64; 3],
    /// Captured requests replayed to the revision, by [`Outcome`] (not in `requests`).
    replayed: [AtomicU64; 3],
    /// Requests per latency bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS + 1],
    /// The sum of latencies in seconds, as `f64` bits.
    latency_sum: AtomicU64,
    in_flight: AtomicI64,
    weight: AtomicI64,
    window: Arc<Window>,
}

/// A revision's handles, as a route holds them.
#[derive(Clone)]
pub struct RevisionMetrics {
    cells: Arc<Cells>,
    pub window: Arc<Window>,
}

/// Agreement counters of one primary and mirror pair.
pub struct MirrorCells {
    service: String,
    primary: String,
    mirror: String,
    labels: String,
    agree: AtomicU64,
    disagree: AtomicU64,
}

// === impl RevisionMetrics ===

impl RevisionMetrics {
    /// A request routed to the revision has started.
    pub fn started(&self) {
        self.cells.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that [`started`](Self::started) has been answered.
    pub fn finished(&self, outcome: Outcome, seconds: f64) {
        let c = &self.cells;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        c.requests[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        let bucket = (0..BUCKETS)
            .find(|&i| seconds <= bucket_bound(i))
            .unwrap_or(BUCKETS);
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = c
            .latency_sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }
}

impl RevisionMetrics {
    /// A captured request was replayed to the revision, with this outcome.
    pub fn replayed(&self, outcome: Outcome) {
        self.cells.replayed[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
    }
}

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Ok => 0,
        Outcome::ClientError => 1,
        Outcome::ServerError => 2,
    }
}

const OUTCOME_LABELS: [&str; 3] = [
    ",outcome=\"ok\"",
    ",outcome=\"client_error\"",
    ",outcome=\"server_error\"",
];

// === impl MirrorCells ===

impl MirrorCells {
    pub fn record(&self, agreed: bool) {
        if agreed { &self.agree } else { &self.disagree }.fetch_add(1, Ordering::Relaxed);
    }
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handles for one revision (created on first use, shared afterwards).
    pub fn revision(&self, service: &str, revision: &str) -> RevisionMetrics {
        let mut revisions = self.revisions.lock().expect("metrics");
        let cells = revisions
            .entry((service.to_owned(), revision.to_owned()))
            .or_insert_with(|| {
                Arc::new(Cells {
                    service: service.to_owned(),
                    revision: revision.to_owned(),
                    labels: label_set(&[("service", service), ("revision", revision)]),
                    requests: Default::default(),
                    replayed: Default::default(),
                    buckets: Default::default(),
                    latency_sum: AtomicU64::new(0f64.to_bits()),
                    in_flight: AtomicI64::new(0),
                    weight: AtomicI64::new(0),
                    window: Arc::default(),
                })
            });
        RevisionMetrics {
            cells: Arc::clone(cells),
            window: Arc::clone(&cells.window),
        }
    }

    /// Sets the weight gauges of a service.
    pub fn set_weights(&self, service: &str, weights: &[(String, u8)]) {
        for (revision, pct) in weights {
            self.revision(service, revision)
                .cells
                .weight
                .store(i64::from(*pct), Ordering::Relaxed);
        }
    }

    /// The agreement counters of mirroring `primary`'s requests to `mirror`.
    pub fn mirror(&self, service: &str, primary: &str, mirror: &str) -> Arc<MirrorCells> {
        let mut mirrors = self.mirrors.lock().expect("metrics");
        let key = (service.to_owned(), primary.to_owned(), mirror.to_owned());
        Arc::clone(mirrors.entry(key).or_insert_with(|| {
            Arc::new(MirrorCells {
                service: service.to_owned(),
                primary: primary.to_owned(),
                mirror: mirror.to_owned(),
                labels: label_set(&[
                    ("service", service),
                    ("primary", primary),
                    ("mirror", mirror),
                ]),
                agree: AtomicU64::new(0),
                disagree: AtomicU64::new(0),
            })
        }))
    }

    /// The rolling window of a revision, if it was ever routed to.
    pub fn window(&self, service: &str, revision: &str) -> Option<Arc<Window>> {
        self.revisions
            .lock()
            .expect("metrics")
            .get(&(service.to_owned(), revision.to_owned()))
            .map(|c| Arc::clone(&c.window))
    }

    /// The exposition, in the OpenMetrics text format (which Prometheus reads), series sorted
    /// by their labels.
    pub fn encode(&self) -> String {
        let mut revisions: Vec<Arc<Cells>> = self
            .revisions
            .lock()
            .expect("metrics")
            .values()
            .cloned()
            .collect();
        revisions
            .sort_unstable_by(|a, b| (&a.service, &a.revision).cmp(&(&b.service, &b.revision)));
        let mut mirrors: Vec<Arc<MirrorCells>> = self
            .mirrors
            .lock()
            .expect("metrics")
            .values()
            .cloned()
            .collect();
        mirrors.sort_unstable_by(|a, b| {
            (&a.service, &a.primary, &a.mirror).cmp(&(&b.service, &b.primary, &b.mirror))
        });
        // About 110 bytes a line, 5 lines a revision at rest.
        let mut out = String::with_capacity(4096 + revisions.len() * 5 * 110);
        let mut num = itoa::Buffer::new();

        family(
            &mut out,
            "crossfade_requests",
            "counter",
            "Inference requests by service, revision and outcome",
        );
        for c in &revisions {
            for (i, outcome) in OUTCOME_LABELS.into_iter().enumerate() {
                let n = c.requests[i].load(Ordering::Relaxed);
                line(
                    &mut out,
                    "crossfade_requests_total",
                    &c.labels,
                    outcome,
                    num.format(n),
                );
            }
        }

        family(
            &mut out,
            "crossfade_replayed_requests",
            "counter",
            "Captured requests replayed to a canary and its stable revision, by outcome",
        );
        for c in &revisions {
            let counts: [u64; 3] = std::array::from_fn(|i| c.replayed[i].load(Ordering::Relaxed));
            // Only revisions that were replayed to (most never are).
            if counts == [0; 3] {
                continue;
            }
            for (n, outcome) in counts.into_iter().zip(OUTCOME_LABELS) {
                line(
                    &mut out,
                    "crossfade_replayed_requests_total",
                    &c.labels,
                    outcome,
                    num.format(n),
                );
            }
        }

        family(
            &mut out,
            "crossfade_request_duration_seconds",
            "histogram",
            "Inference request latency",
        );
        let bounds: Vec<String> = (0..BUCKETS)
            .map(|i| format!(",le=\"{}\"", bucket_bound(i)))
            .chain([",le=\"+Inf\"".to_owned()])
            .collect();
        let mut value = String::new();
        for c in &revisions {
            let counts: [u64; BUCKETS + 1] =
                std::array::from_fn(|i| c.buckets[i].load(Ordering::Relaxed));
            let total: u64 = counts.iter().sum();
            // A revision that never answered has no latency series yet (most of 10,000
            // revisions at rest: 24 lines each, 30 MB of zeros per scrape otherwise). Its
            // request counters are there from the start.
            if total == 0 {
                continue;
            }
            let sum = f64::from_bits(c.latency_sum.load(Ordering::Relaxed));
            value.clear();
            let _ = write!(value, "{sum:?}");
            line(
                &mut out,
                "crossfade_request_duration_seconds_sum",
                &c.labels,
                "",
                &value,
            );
            line(
                &mut out,
                "crossfade_request_duration_seconds_count",
                &c.labels,
                "",
                num.format(total),
            );
            let mut cumulative = 0;
            for (count, bound) in counts.iter().zip(&bounds) {
                cumulative += count;
                line(
                    &mut out,
                    "crossfade_request_duration_seconds_bucket",
                    &c.labels,
                    bound,
                    num.format(cumulative),
                );
            }
        }

        family(
            &mut out,
            "crossfade_in_flight_requests",
            "gauge",
            "Inference requests being answered",
        );
        for c in &revisions {
            let n = c.in_flight.load(Ordering::Relaxed);
            line(
                &mut out,
                "crossfade_in_flight_requests",
                &c.labels,
                "",
                num.format(n),
            );
        }

        family(
            &mut out,
            "crossfade_traffic_weight_percent",
            "gauge",
            "Current share of traffic per revision",
        );
        for c in &revisions {
            let n = c.weight.load(Ordering::Relaxed);
            line(
                &mut out,
                "crossfade_traffic_weight_percent",
                &c.labels,
                "",
                num.format(n),
            );
        }

        family(
            &mut out,
            "crossfade_mirrored_requests",
            "counter",
            "Mirrored requests by primary and mirror revision and whether their answers agreed",
        );
        for m in &mirrors {
            for (outcome, n) in [
                (",outcome=\"agree\"", &m.agree),
                (",outcome=\"disagree\"", &m.disagree),
            ] {
                let n = n.load(Ordering::Relaxed);
                line(
                    &mut out,
                    "crossfade_mirrored_requests_total",
                    &m.labels,
                    outcome,
                    num.format(n),
                );
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

fn line(out: &mut String, name: &str, labels: &str, extra: &str, value: &str) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    out.push_str(extra);
    out.push_str("} ");
    out.push_str(value);
    out.push('\n');
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = write!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}\n");
}

/// `a="x",b="y"`, values escaped as the text format wants (backslash, quote, newline).
fn label_set(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for ch in value.chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let m = Metrics::new();
        let r = m.revision("ns/a\"b", "rev\\1\n");
        for seconds in [0.00005, 0.0003, 0.0003, 1000.0] {
            r.started();
            r.finished(Outcome::Ok, seconds);
        }
        r.started();
        let idle = m.revision("ns/idle", "idle-00001");
        idle.started();
        let text = m.encode();
        // Counters from the start; latency once it answered.
        assert!(text.contains(
            r#"crossfade_requests_total{service="ns/idle",revision="idle-00001",outcome="ok"} 0"#
        ));
        assert!(text.contains(
            r#"crossfade_in_flight_requests{service="ns/idle",revision="idle-00001"} 1"#
        ));
        assert!(!text.contains(r#"crossfade_request_duration_seconds_count{service="ns/idle""#));
        let labels = r#"service="ns/a\"b",revision="rev\\1\n""#;
        for want in [
            format!("crossfade_requests_total{{{labels},outcome=\"ok\"}} 4"),
            format!("crossfade_request_duration_seconds_count{{{labels}}} 4"),
            format!("crossfade_request_duration_seconds_sum{{{labels}}} 1000.00065"),
            format!("crossfade_request_duration_seconds_bucket{{{labels},le=\"0.0001\"}} 1"),
            format!("crossfade_request_duration_seconds_bucket{{{labels},le=\"0.0002\"}} 1"),
            format!("crossfade_request_duration_seconds_bucket{{{labels},le=\"0.0004\"}} 3"),
            format!("crossfade_request_duration_seconds_bucket{{{labels},le=\"104.8576\"}} 3"),
            format!("crossfade_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 4"),
            format!("crossfade_in_flight_requests{{{labels}}} 1"),
        ] {
            assert!(text.lines().any(|l| l == want), "no line {want} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        // Each family is described once, before its series.
        assert_eq!(text.matches("# TYPE ").count(), 6);
        // Replayed requests are counted apart, and only for revisions replayed to.
        assert!(!text.contains("crossfade_replayed_requests_total{"));
    }
}
