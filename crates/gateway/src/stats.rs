//! Per-revision statistics over a rolling window, for the built-in analysis provider: request
//! counts and outcomes, latency quantiles, and mirror agreement.
//!
//! Lock-free: one slot per second in a ring of [`WINDOW_SECONDS`] slots, each a set of atomic
//! counters stamped with the second it holds; a writer that finds a slot from an older second
//! resets it first. A reader merges the slots inside the window it asks for.

use std::sync::atomic::{AtomicU64, Ordering};

/// The longest window that can be asked for, in seconds.
pub const WINDOW_SECONDS: u64 = 600;
/// A slot's stamp while a writer zeroes it.
const RESETTING: u64 = u64::MAX;
/// Latency histogram: bucket `i` holds latencies below `MIN_LATENCY_US * 2^(i/4)` microseconds
/// (four buckets per doubling: quantiles within ~19%).
const BUCKETS: usize = 96;
const MIN_LATENCY_US: f64 = 10.0;
/// Predicted classes counted apart on mirrored requests (class 7 and above share the last).
pub const DRIFT_CLASSES: usize = 8;
/// Bins of the top score (a probability) on mirrored requests, over [0, 1].
pub const DRIFT_BINS: usize = 16;

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 4xx: the request was wrong; the revision is not to blame.
    ClientError,
    /// 5xx: the revision failed.
    ServerError,
}

/// A revision's rolling window. Its slots (about half a megabyte) are allocated when it first
/// records: a revision that never serves (one of 10,000 idle services) costs nothing.
pub struct Window {
    slots: std::sync::OnceLock<Box<[Slot]>>,
}

struct Slot {
    /// The second (since an arbitrary epoch, +1 so that 0 means empty) this slot holds.
    second: AtomicU64,
    ok: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
    mirrored: AtomicU64,
    agreed: AtomicU64,
    /// Sum of max-absolute-differences, in millionths.
    distance_micro: AtomicU64,
    /// Requests the client sent to this revision by name or tag: counted, not judged.
    pinned: AtomicU64,
    /// Of the requests counted above, those replayed from the capture (not a client's).
    replayed: AtomicU64,
    /// On mirrored requests: the predicted class of the primary (stable) and of this
    /// revision, and the top score of each.
    stable_classes: [AtomicU64; DRIFT_CLASSES],
    classes: [AtomicU64; DRIFT_CLASSES],
    stable_scores: [AtomicU64; DRIFT_BINS],
    scores: [AtomicU64; DRIFT_BINS],
}

/// A merged view of a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    /// Latency quantiles in seconds (`None` without requests).
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub mirrored: u64,
    pub agreed: u64,
    /// Mean of the max absolute difference between mirrored and primary outputs.
    pub mean_distance: Option<f64>,
    /// Requests the client pinned to the revision (`/versions/<rev>`, a tag, a header route):
    /// not in any figure above, so that no client sways a judgement.
    pub pinned: u64,
    /// Of `requests`, those replayed from the capture (compared with stable, never answered
    /// to a client).
    pub replayed: u64,
    /// On mirrored requests: predicted classes and top scores of the primary (stable)
    /// revision and of this one, on the same requests.
    pub drift: Drift,
    latency: Vec<u64>,
}

/// The predictions of two revisions on the same (mirrored) requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift {
    pub stable_classes: Vec<u64>,
    pub classes: Vec<u64>,
    pub stable_scores: Vec<u64>,
    pub scores: Vec<u64>,
}

// === impl Window ===

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

impl Window {
    pub fn new() -> Self {
        Self {
            slots: std::sync::OnceLock::new(),
        }
    }

    fn slots(&self) -> &[Slot] {
        self.slots
            .get_or_init(|| (0..WINDOW_SECONDS).map(|_| Slot::default()).collect())
    }

    /// The slot of `second`, reset first if it still holds an older second; `None` for a
    /// write so late that a newer second owns the slot.
    ///
    /// A resetting writer marks the slot `RESETTING` while it zeroes the counters, so no other
    /// writer's increment lands in between and is lost.
    fn slot(&self, second: u64) -> Option<&Slot> {
        let slot = &self.slots()[(second % WINDOW_SECONDS) as usize];
        let stamp = second + 1;
        loop {
            let seen = slot.second.load(Ordering::Acquire);
            if seen == stamp {
                return Some(slot);
            }
            if seen == RESETTING {
                std::hint::spin_loop();
                continue;
            }
            if seen > stamp {
                return None;
            }
            if slot
                .second
                .compare_exchange(seen, RESETTING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.reset();
                slot.second.store(stamp, Ordering::Release);
                return Some(slot);
            }
        }
    }

    /// Records a request that finished at `second` after `latency_us` microseconds.
    pub fn record(&self, second: u64, outcome: Outcome, latency_us: u64) {
        let Some(slot) = self.slot(second) else {
            return;
        };
        match outcome {
            Outcome::Ok => &slot.ok,
            Outcome::ClientError => &slot.client_errors,
            Outcome::ServerError => &slot.server_errors,
        }
        .fetch_add(1, Ordering::Relaxed);
        slot.latency[bucket(latency_us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a captured request replayed to the revision: judged like the split's.
    pub fn record_replay(&self, second: u64, outcome: Outcome, latency_us: u64) {
        self.record(second, outcome, latency_us);
        if let Some(slot) = self.slot(second) {
            slot.replayed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a request the client pinned to the revision: counted apart, never judged.
    pub fn record_pinned(&self, second: u64) {
        if let Some(slot) = self.slot(second) {
            slot.pinned.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the predictions of one mirrored request: the primary's (stable) and this
    /// revision's predicted classes, and their top scores (probabilities; others are not
    /// binned).
    pub fn record_predictions(
        &self,
        second: u64,
        stable: (&[usize], &[f64]),
        canary: (&[usize], &[f64]),
    ) {
        let Some(slot) = self.slot(second) else {
            return;
        };
        let class = |c: usize| c.min(DRIFT_CLASSES - 1);
        let bin = |s: f64| ((s.clamp(0.0, 1.0) * DRIFT_BINS as f64) as usize).min(DRIFT_BINS - 1);
        for c in stable.0 {
            slot.stable_classes[class(*c)].fetch_add(1, Ordering::Relaxed);
        }
        for c in canary.0 {
            slot.classes[class(*c)].fetch_add(1, Ordering::Relaxed);
        }
        for s in stable.1.iter().filter(|s| (0.0..=1.0).contains(*s)) {
            slot.stable_scores[bin(*s)].fetch_add(1, Ordering::Relaxed);
        }
        for s in canary.1.iter().filter(|s| (0.0..=1.0).contains(*s)) {
            slot.scores[bin(*s)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one mirrored request: whether the answers agreed and how far apart they were.
    pub fn record_mirror(&self, second: u64, agreed: bool, distance: f64) {
        let Some(slot) = self.slot(second) else {
            return;
        };
        slot.mirrored.fetch_add(1, Ordering::Relaxed);
        if agreed {
            slot.agreed.fetch_add(1, Ordering::Relaxed);
        }
        let micro = if distance.is_finite() {
            (distance.abs() * 1e6).min(u64::MAX as f64 / 2.0) as u64
        } else {
            u64::MAX / 1024
        };
        slot.distance_micro.fetch_add(micro, Ordering::Relaxed);
    }

    /// `points` consecutive summaries of `step` seconds each, oldest first, the last ending
    /// at `now` (those that would begin before the gateway's first second are empty).
    pub fn series(&self, now: u64, step: u64, points: u64) -> Vec<Summary> {
        let step = step.clamp(1, WINDOW_SECONDS);
        (0..points)
            .rev()
            .map(|k| match now.checked_sub(k * step) {
                Some(end) if k * step < WINDOW_SECONDS => self.summary(end, step),
                _ => Summary::default(),
            })
            .collect()
    }

    /// Everything from the `seconds` seconds up to and including `now`.
    pub fn summary(&self, now: u64, seconds: u64) -> Summary {
        let seconds = seconds.clamp(1, WINDOW_SECONDS);
        let mut s = Summary {
            latency: vec![0; BUCKETS],
            ..Summary::default()
        };
        let mut distance = 0u64;
        // Never recorded: nothing to sum (and nothing allocated to read).
        let slots: &[Slot] = self.slots.get().map_or(&[], |s| s);
        for second in now.saturating_sub(seconds - 1)..=now {
            let Some(slot) = slots.get((second % WINDOW_SECONDS) as usize) else {
                continue;
            };
            if slot.second.load(Ordering::Acquire) != second + 1 {
                continue;
            }
            s.ok += slot.ok.load(Ordering::Relaxed);
            s.client_errors += slot.client_errors.load(Ordering::Relaxed);
            s.server_errors += slot.server_errors.load(Ordering::Relaxed);
            for (acc, b) in s.latency.iter_mut().zip(&slot.latency) {
                *acc += b.load(Ordering::Relaxed);
            }
            s.mirrored += slot.mirrored.load(Ordering::Relaxed);
            s.agreed += slot.agreed.load(Ordering::Relaxed);
            s.pinned += slot.pinned.load(Ordering::Relaxed);
            s.replayed += slot.replayed.load(Ordering::Relaxed);
            let add = |acc: &mut Vec<u64>, from: &[AtomicU64]| {
                acc.resize(from.len(), 0);
                for (a, c) in acc.iter_mut().zip(from) {
                    *a += c.load(Ordering::Relaxed);
                }
            };
            add(&mut s.drift.stable_classes, &slot.stable_classes);
            add(&mut s.drift.classes, &slot.classes);
            add(&mut s.drift.stable_scores, &slot.stable_scores);
            add(&mut s.drift.scores, &slot.scores);
            distance = distance.saturating_add(slot.distance_micro.load(Ordering::Relaxed));
        }
        s.requests = s.ok + s.client_errors + s.server_errors;
        s.p50 = s.quantile(0.5);
        s.p90 = s.quantile(0.9);
        s.p99 = s.quantile(0.99);
        if s.mirrored > 0 {
            s.mean_distance = Some(distance as f64 / 1e6 / s.mirrored as f64);
        }
        s
    }
}

impl Drift {
    /// The mean of this revision's top scores on mirrored requests (bin centres), if any.
    pub fn mean_score(&self) -> Option<f64> {
        mean_of_bins(&self.scores)
    }

    /// The same for the primary (stable) revision's answers to those requests.
    pub fn stable_mean_score(&self) -> Option<f64> {
        mean_of_bins(&self.stable_scores)
    }
}

fn mean_of_bins(bins: &[u64]) -> Option<f64> {
    let n: u64 = bins.iter().sum();
    (n > 0).then(|| {
        bins.iter()
            .enumerate()
            .map(|(i, c)| (i as f64 + 0.5) / bins.len() as f64 * *c as f64)
            .sum::<f64>()
            / n as f64
    })
}

impl Summary {
    /// The `q` quantile of latency, in seconds: the upper bound of the bucket it falls in.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_bound_us(i) / 1e6);
            }
        }
        Some(upper_bound_us(BUCKETS - 1) / 1e6)
    }

    /// Requests per latency bucket: bucket `i` holds latencies up to `latency_bounds()[i]`.
    pub fn latency_counts(&self) -> &[u64] {
        &self.latency
    }

    /// Share of requests the revision answered (client errors excluded: not its fault).
    pub fn success_rate(&self) -> Option<f64> {
        let judged = self.ok + self.server_errors;
        (judged > 0).then(|| self.ok as f64 / judged as f64)
    }

    pub fn mirror_agreement(&self) -> Option<f64> {
        (self.mirrored > 0).then(|| self.agreed as f64 / self.mirrored as f64)
    }
}

/// The upper edge of each latency bucket, in seconds.
pub fn latency_bounds() -> Vec<f64> {
    (0..BUCKETS).map(|i| upper_bound_us(i) / 1e6).collect()
}

fn upper_bound_us(i: usize) -> f64 {
    MIN_LATENCY_US * 2f64.powf((i + 1) as f64 / 4.0)
}

fn bucket(latency_us: u64) -> usize {
    if (latency_us as f64) < MIN_LATENCY_US {
        return 0;
    }
    let i = (4.0 * (latency_us as f64 / MIN_LATENCY_US).log2()).floor() as usize;
    i.min(BUCKETS - 1)
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            second: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            mirrored: AtomicU64::new(0),
            agreed: AtomicU64::new(0),
            distance_micro: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            stable_classes: Default::default(),
            classes: Default::default(),
            stable_scores: Default::default(),
            scores: Default::default(),
        }
    }
}

impl Slot {
    fn reset(&self) {
        for c in [
            &self.ok,
            &self.client_errors,
            &self.server_errors,
            &self.mirrored,
            &self.agreed,
            &self.distance_micro,
            &self.pinned,
            &self.replayed,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for b in self
            .latency
            .iter()
            .chain(&self.stable_classes)
            .chain(&self.classes)
            .chain(&self.stable_scores)
            .chain(&self.scores)
        {
            b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_that_never_recorded_holds_no_slots() {
        let w = Window::new();
        assert_eq!(
            w.summary(1000, 60),
            Summary {
                latency: vec![0; BUCKETS],
                ..Summary::default()
            }
        );
        assert!(w.slots.get().is_none());
        w.record(1000, Outcome::Ok, 10);
        assert_eq!(w.summary(1000, 60).requests, 1);
        assert!(w.slots.get().is_some());
    }

    #[test]
    fn window_counts_and_quantiles() {
        let w = Window::new();
        for i in 0..100u64 {
            // 1 ms ... 100 ms, one per request, over seconds 1000..1009.
            w.record(1000 + i / 10, Outcome::Ok, (i + 1) * 1000);
        }
        w.record(1005, Outcome::ServerError, 500);
        w.record(1005, Outcome::ClientError, 500);
        let s = w.summary(1009, 10);
        assert_eq!(
            (s.requests, s.ok, s.server_errors, s.client_errors),
            (102, 100, 1, 1)
        );
        assert_eq!(s.success_rate(), Some(100.0 / 101.0));
        // Quantiles are bucket upper bounds: within 19% above the true value.
        let p50 = s.p50.unwrap();
        assert!((0.050..=0.050 * 1.19).contains(&p50), "{p50}");
        let p99 = s.p99.unwrap();
        assert!((0.099..=0.099 * 1.19).contains(&p99), "{p99}");
        // A narrower window sees only its own seconds.
        assert_eq!(w.summary(1009, 1).ok, 10);
        // Old seconds are forgotten when their slot comes round again.
        w.record(1000 + WINDOW_SECONDS, Outcome::Ok, 10);
        let later = w.summary(1000 + WINDOW_SECONDS, WINDOW_SECONDS);
        assert_eq!(later.ok, 90 + 1);
        assert_eq!(
            Window::new().summary(5, 60),
            Summary {
                latency: vec![0; BUCKETS],
                ..Summary::default()
            }
        );
    }

    #[test]
    fn a_series_splits_the_window_into_steps_oldest_first() {
        let w = Window::new();
        for second in 100..120u64 {
            for _ in 0..second - 99 {
                w.record(second, Outcome::Ok, 1000);
            }
        }
        w.record(119, Outcome::ServerError, 1000);
        w.record_predictions(118, (&[0], &[0.97]), (&[0], &[0.51]));
        let series = w.series(119, 5, 6);
        assert_eq!(series.len(), 6);
        let counts: Vec<u64> = series.iter().map(|s| s.requests).collect();
        // 95..99 and 90..94 hold nothing; 100..104 hold 1+2+3+4+5, and so on.
        assert_eq!(counts, [0, 0, 15, 40, 65, 91]);
        assert_eq!(series[5].server_errors, 1);
        let d = &series[5].drift;
        assert_eq!(d.mean_score(), Some(8.5 / 16.0));
        assert_eq!(d.stable_mean_score(), Some(15.5 / 16.0));
        // Before the first second: empty points, not the first second over and over.
        assert!(w.series(3, 2, 4)[..2].iter().all(|s| s.requests == 0));
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        // Many threads race to open the same new second: every increment must count.
        for round in 0..50u64 {
            let w = std::sync::Arc::new(Window::new());
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let w = std::sync::Arc::clone(&w);
                    std::thread::spawn(move || {
                        for _ in 0..100 {
                            w.record(round, Outcome::Ok, 100);
                            w.record_mirror(round, true, 0.0);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let s = w.summary(round, 1);
            assert_eq!((s.ok, s.mirrored), (400, 400), "round {round}");
        }
    }

    #[test]
    fn mirror_agreement() {
        let w = Window::new();
        for i in 0..20 {
            w.record_mirror(7, i % 4 != 0, 0.5);
        }
        let s = w.summary(7, 60);
        assert_eq!(s.mirror_agreement(), Some(0.75));
        assert_eq!(s.mean_distance, Some(0.5));
    }
}
