//! The relative judge: a canary against the stable revision over the same window, with no
//! absolute threshold to guess. Pure: the caller hands over both revisions' counts.
//!
//! Every verdict comes from a test that stays valid however often it is looked at: an
//! e-process (a nonnegative supermartingale under the null hypothesis, here a mixture of
//! likelihood ratios over a grid of alternatives), so by Ville's inequality the chance that
//! it *ever* reaches `1 / alpha` on a canary no worse than tolerated is at most `alpha`, with a
//! look after every interval or after every request alike. (Lindon, Sanden and Shirikian,
//! "Rapid regression detection in software deployments through sequential testing", KDD 2022,
//! is the reference for counts compared this way.)
//!
//! A verdict is:
//! - `Inconclusive` below the minimum sample, saying how many more canary requests are needed;
//! - `Fail` when the evidence that the canary is worse than tolerated reaches `1 / alpha` and
//!   the difference is larger than the slack (a difference too small to matter never fails);
//! - `Pass` with the minimum sample, no such evidence, and the canary's estimate within
//!   tolerance;
//! - `Inconclusive` otherwise: it looks worse than tolerated, not yet with enough evidence.
//!
//! A Pass is "no evidence of harm in at least `min_sample` requests, and it looks within
//! tolerance", not a proof of equality: a larger minimum sample makes it stronger.

use serde::Serialize;

/// What a comparison concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    /// The name a condition compares with (`result.verdict == "Pass"`): a contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Inconclusive => "Inconclusive",
        }
    }
}

/// How a comparison is judged; every field has a documented default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// How much worse than stable is tolerated, as a factor: the canary's error rate at most
    /// `tolerance` times stable's, its latency quantile at most `tolerance` times stable's.
    pub tolerance: f64,
    /// Canary requests (or mirrored requests) before any verdict.
    pub min_sample: u64,
    /// The chance, over the whole analysis however often it is looked at, of failing a canary
    /// no worse than tolerated.
    pub alpha: f64,
    /// An absolute difference below which nothing fails: of error rates (0.001 is a tenth of
    /// a percentage point), or of agreement.
    pub slack: f64,
}

impl Settings {
    pub const DEFAULT_ERROR_TOLERANCE: f64 = 1.5;
    pub const DEFAULT_LATENCY_TOLERANCE: f64 = 1.2;
    /// For agreement, `tolerance` is the share of mirrored requests allowed to disagree.
    pub const DEFAULT_DISAGREEMENT: f64 = 0.05;
    /// For prediction drift, `tolerance` is the largest PSI (and KS distance) tolerated.
    pub const DEFAULT_DRIFT: f64 = 0.2;
    pub const DEFAULT_MIN_SAMPLE: u64 = 100;
    pub const DEFAULT_ALPHA: f64 = 0.05;
    pub const DEFAULT_SLACK: f64 = 0.001;
}

/// One revision's counts over the window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Answered without error.
    pub ok: u64,
    /// Failed (5xx): the revision's fault.
    pub server_errors: u64,
    /// Refused as the client's fault (4xx).
    pub client_errors: u64,
    /// Requests per latency bucket; bucket `i` holds latencies up to `bounds[i]` seconds.
    pub latency: Vec<u64>,
    pub mirrored: u64,
    pub agreed: u64,
    /// On mirrored requests: predicted classes of the stable revision and of this one, and
    /// their top scores in equal bins over [0, 1].
    pub stable_classes: Vec<u64>,
    pub classes: Vec<u64>,
    pub stable_scores: Vec<u64>,
    pub scores: Vec<u64>,
}

impl Counts {
    pub fn requests(&self) -> u64 {
        self.ok + self.server_errors + self.client_errors
    }
}

/// A comparison's result: what the `result` of a condition is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    pub verdict: Verdict,
    /// What was compared: `error-rate`, `client-error-rate`, `latency`, `agreement`.
    pub statistic: String,
    /// The canary's figure and the stable revision's (rates 0 to 1, latency in seconds,
    /// agreement 0 to 1; stable's agreement is 1 by definition).
    pub canary: f64,
    pub stable: f64,
    /// The canary relative to what is tolerated: its figure over the most tolerated (1 or
    /// less is within tolerance).
    pub effect: f64,
    /// The e-value against "within tolerance": a verdict of Fail needs `1 / alpha`.
    pub evidence: f64,
    pub canary_sample: u64,
    pub stable_sample: u64,
    /// Requests still needed before any verdict (0 once the minimum is reached): the
    /// canary's, or for latency also stable's, to bound its quantile.
    pub needed: u64,
    /// The minimum sample of the canary before any verdict (`minSample`).
    pub min_sample: u64,
    /// Why, in plain words.
    pub reason: String,
}

/// The canary's error rate (5xx among answered requests) against stable's.
pub fn error_rate(canary: &Counts, stable: &Counts, s: &Settings) -> Comparison {
    rate(
        "error-rate",
        "error rate",
        (canary.server_errors, canary.ok + canary.server_errors),
        (stable.server_errors, stable.ok + stable.server_errors),
        s,
    )
}

/// The canary's rate of client errors (4xx) against stable's: requests it refuses that the
/// stable revision would take (a changed input schema) show as more 4xx than stable has.
pub fn client_error_rate(canary: &Counts, stable: &Counts, s: &Settings) -> Comparison {
    rate(
        "client-error-rate",
        "client-error rate",
        (canary.client_errors, canary.requests()),
        (stable.client_errors, stable.requests()),
        s,
    )
}

/// Rates `x / n` of the canary against stable. Conditional on the errors of both, each error
/// is the canary's with a probability set by the canary's share of requests and the ratio of
/// the rates; the e-process mixes ratios above the tolerance.
fn rate(
    statistic: &str,
    words: &str,
    (xc, nc): (u64, u64),
    (xs, ns): (u64, u64),
    s: &Settings,
) -> Comparison {
    let canary = if nc > 0 { xc as f64 / nc as f64 } else { 0.0 };
    let stable = if ns > 0 { xs as f64 / ns as f64 } else { 0.0 };
    let mut c = Comparison {
        verdict: Verdict::Inconclusive,
        statistic: statistic.to_owned(),
        canary,
        stable,
        effect: 0.0,
        evidence: 1.0,
        canary_sample: nc,
        stable_sample: ns,
        needed: s.min_sample.saturating_sub(nc),
        min_sample: s.min_sample,
        reason: String::new(),
    };
    // The most tolerated rate (the slack keeps it above 0 when stable had no error), and the
    // canary's rate over it.
    let allowed = s.tolerance * stable + s.slack;
    c.effect = if allowed > 0.0 { canary / allowed } else { 0.0 };
    if ns == 0 {
        c.reason =
            "the stable revision answered no request in the window: nothing to compare with".into();
        return c;
    }
    if nc > 0 && xc + xs > 0 {
        let share = nc as f64 / (nc + ns) as f64;
        c.evidence = ratio_evidence(xc, xs, share, s.tolerance);
    }
    let worse_than_slack = canary > allowed;
    let pct = |r: f64| format!("{:.2}%", r * 100.0);
    if c.evidence >= 1.0 / s.alpha && worse_than_slack {
        c.verdict = Verdict::Fail;
        c.reason = format!(
            "{words} {} ({xc} of {nc}) against stable's {} ({xs} of {ns}): more than {}x stable, with evidence {} (needs {})",
            pct(canary),
            pct(stable),
            round(s.tolerance),
            round(c.evidence),
            round(1.0 / s.alpha)
        );
    } else if c.needed > 0 {
        c.reason = format!(
            "{nc} canary requests so far, {} more needed before a verdict",
            c.needed
        );
    } else if !worse_than_slack || c.evidence < 1.0 {
        c.verdict = Verdict::Pass;
        c.reason = format!(
            "{words} {} ({xc} of {nc}) against stable's {} ({xs} of {ns}): within {}x stable",
            pct(canary),
            pct(stable),
            round(s.tolerance)
        );
    } else {
        c.reason = format!(
            "{words} {} ({xc} of {nc}) looks worse than {}x stable's {}, but the evidence ({}) is short of {}: more requests will tell",
            pct(canary),
            round(s.tolerance),
            pct(stable),
            round(c.evidence),
            round(1.0 / s.alpha)
        );
    }
    c
}

/// The canary's `quantile` of latency against `tolerance` times stable's. The canary's
/// requests slower than that bound are counted: if its quantile is within the bound, at most
/// `1 - quantile` of them are, and the e-process mixes shares above that. Stable's quantile is
/// taken at an upper confidence bound of its rank (and at its histogram bucket's upper edge),
/// so that a small stable sample does not make the bound too tight.
pub fn latency(
    canary: &Counts,
    stable: &Counts,
    bounds: &[f64],
    quantile: f64,
    s: &Settings,
) -> Comparison {
    let nc: u64 = canary.latency.iter().sum();
    let ns: u64 = stable.latency.iter().sum();
    let q = quantile.clamp(0.0, 1.0);
    let mut c = Comparison {
        verdict: Verdict::Inconclusive,
        statistic: "latency".into(),
        canary: quantile_of(&canary.latency, bounds, q).unwrap_or(0.0),
        stable: quantile_of(&stable.latency, bounds, q).unwrap_or(0.0),
        effect: 0.0,
        evidence: 1.0,
        canary_sample: nc,
        stable_sample: ns,
        needed: s.min_sample.saturating_sub(nc),
        min_sample: s.min_sample,
        reason: String::new(),
    };
    // Half of alpha for stable's bound, half for the canary's test.
    let Some(stable_high) = quantile_bound(&stable.latency, bounds, q, s.alpha / 2.0) else {
        // Requests (of each revision: a replay adds to both) still needed for the bound.
        let short = bound_sample(q, s.alpha / 2.0).saturating_sub(ns);
        c.needed = c.needed.max(short);
        c.reason = if ns == 0 {
            "the stable revision answered no request in the window: nothing to compare with".into()
        } else {
            format!(
                "{ns} stable requests are too few to bound its p{} latency yet: about {short} more needed",
                round(q * 100.0)
            )
        };
        return c;
    };
    let limit = s.tolerance * stable_high;
    // The canary's requests surely slower than the limit: those in buckets whose lower edge
    // is at or above it (a bucket across the limit may hold requests within it).
    let slower_surely = canary
        .latency
        .iter()
        .enumerate()
        .filter(|(i, _)| *i > 0 && bounds[*i - 1] >= limit)
        .map(|(_, n)| *n)
        .sum::<u64>();
    if nc > 0 {
        c.evidence = bernoulli_evidence(slower_surely, nc, 1.0 - q);
    }
    let point_limit = s.tolerance * c.stable;
    c.effect = if point_limit > 0.0 {
        c.canary / point_limit
    } else {
        0.0
    };
    let ms = |x: f64| format!("{} ms", round(x * 1000.0));
    let p = format!("p{}", round(q * 100.0));
    if c.evidence >= 2.0 / s.alpha {
        c.verdict = Verdict::Fail;
        c.reason = format!(
            "{p} latency {} against stable's {}: {slower_surely} of {nc} canary requests took longer than {} ({}x stable's {p} at most), where {} were to be expected; evidence {} (needs {})",
            ms(c.canary),
            ms(c.stable),
            ms(limit),
            round(s.tolerance),
            round((1.0 - q) * nc as f64),
            round(c.evidence),
            round(2.0 / s.alpha)
        );
    } else if c.needed > 0 {
        c.reason = format!(
            "{nc} canary requests so far, {} more needed before a verdict",
            c.needed
        );
    } else if c.effect <= 1.0 || c.evidence < 1.0 {
        c.verdict = Verdict::Pass;
        c.reason = format!(
            "{p} latency {} against stable's {}: within {}x",
            ms(c.canary),
            ms(c.stable),
            round(s.tolerance)
        );
    } else {
        c.reason = format!(
            "{p} latency {} looks slower than {}x stable's {}, but the evidence ({}) is short of {}: more requests will tell",
            ms(c.canary),
            round(s.tolerance),
            ms(c.stable),
            round(c.evidence),
            round(2.0 / s.alpha)
        );
    }
    c
}

/// Agreement of the canary's answers with stable's on the same (mirrored) requests: at most
/// `tolerance` of them may disagree (a retrained model differs a little).
pub fn agreement(canary: &Counts, s: &Settings) -> Comparison {
    let n = canary.mirrored;
    let disagreed = n - canary.agreed.min(n);
    let share = if n > 0 {
        canary.agreed as f64 / n as f64
    } else {
        0.0
    };
    let mut c = Comparison {
        verdict: Verdict::Inconclusive,
        statistic: "agreement".into(),
        canary: share,
        stable: 1.0,
        effect: 0.0,
        evidence: 1.0,
        canary_sample: n,
        stable_sample: n,
        needed: s.min_sample.saturating_sub(n),
        min_sample: s.min_sample,
        reason: String::new(),
    };
    let allowed = s.tolerance.clamp(0.0, 1.0);
    let disagreement = 1.0 - share;
    c.effect = if allowed > 0.0 {
        disagreement / allowed
    } else if disagreed > 0 {
        f64::INFINITY
    } else {
        0.0
    };
    if n > 0 && allowed < 1.0 {
        c.evidence = bernoulli_evidence(disagreed, n, allowed);
    }
    let pct = |r: f64| format!("{}%", round(r * 100.0));
    if c.evidence >= 1.0 / s.alpha && disagreement > allowed + s.slack {
        c.verdict = Verdict::Fail;
        c.reason = format!(
            "the canary's answers disagree with stable's on {disagreed} of {n} mirrored requests ({}), more than the {} tolerated, evidence {} (needs {})",
            pct(disagreement),
            pct(allowed),
            round(c.evidence),
            round(1.0 / s.alpha)
        );
    } else if c.needed > 0 {
        c.reason = format!(
            "{n} mirrored requests so far, {} more needed before a verdict",
            c.needed
        );
    } else if disagreement <= allowed {
        c.verdict = Verdict::Pass;
        c.reason = format!(
            "the canary agrees with stable on {} of {n} mirrored requests ({}); at most {} may disagree",
            canary.agreed,
            pct(share),
            pct(allowed)
        );
    } else {
        c.reason = format!(
            "{} of mirrored requests disagree, more than the {} tolerated, but the evidence ({}) is short of {}: more requests will tell",
            pct(disagreement),
            pct(allowed),
            round(c.evidence),
            round(1.0 / s.alpha)
        );
    }
    c
}

/// Prediction drift on mirrored requests: the canary's predicted classes against stable's on
/// the same requests (population stability index, PSI), and its top scores against stable's:
/// how far their distribution moved (the Wasserstein-1 distance of the binned scores, in
/// probability: a shift of every score by 0.1 is 0.1), once a two-sample Kolmogorov-Smirnov
/// test at `alpha` says they differ at all. Fails when the PSI passes `tolerance` (0.2 by
/// default: a major shift by the usual PSI convention) or the scores moved by more than half
/// of it (0.1): a model retrained to a little more or less confidence moves them by a few
/// hundredths; one whose scores are broken (flattened, doubled softmax, constant) by tenths.
/// Descriptive statistics, not an e-process: the minimum sample and the KS test keep small
/// samples from failing.
pub fn drift(canary: &Counts, s: &Settings) -> Comparison {
    let n: u64 = canary.classes.iter().sum();
    let m: u64 = canary.stable_classes.iter().sum();
    let psi = psi(&canary.stable_classes, &canary.classes);
    let (ks, ns, nc) = ks(&canary.stable_scores, &canary.scores);
    let shift = wasserstein(&canary.stable_scores, &canary.scores);
    let critical = if ns > 0 && nc > 0 {
        (-(s.alpha / 2.0).ln() / 2.0).sqrt() * ((ns + nc) as f64 / (ns * nc) as f64).sqrt()
    } else {
        f64::INFINITY
    };
    let tolerated_shift = s.tolerance / 2.0;
    let mut c = Comparison {
        verdict: Verdict::Inconclusive,
        statistic: "prediction-drift".into(),
        canary: psi,
        stable: 0.0,
        effect: (psi / s.tolerance.max(1e-12)).max(if ks > critical {
            shift / tolerated_shift.max(1e-12)
        } else {
            0.0
        }),
        evidence: ks,
        canary_sample: n,
        stable_sample: m,
        needed: s.min_sample.saturating_sub(n),
        min_sample: s.min_sample,
        reason: String::new(),
    };
    if c.needed > 0 {
        c.reason = format!(
            "{n} mirrored predictions so far, {} more needed before a verdict",
            c.needed
        );
        return c;
    }
    let scores_moved = shift > tolerated_shift && ks > critical;
    let figures = format!(
        "class PSI {} (tolerated {}), top scores moved by {} (tolerated {}; KS distance {}{})",
        round(psi),
        round(s.tolerance),
        round(shift),
        round(tolerated_shift),
        round(ks),
        if critical.is_finite() {
            format!(", critical {}", round(critical))
        } else {
            String::new()
        }
    );
    if psi > s.tolerance || scores_moved {
        c.verdict = Verdict::Fail;
        c.reason = format!(
            "the canary's predictions drifted from stable's on the same {n} requests: {figures}"
        );
    } else {
        c.verdict = Verdict::Pass;
        c.reason = format!("predictions as stable's on the same {n} requests: {figures}");
    }
    c
}

/// The Wasserstein-1 distance of two histograms of equal-width bins over [0, 1]: the area
/// between their cumulative shares.
fn wasserstein(a: &[u64], b: &[u64]) -> f64 {
    let (na, nb): (u64, u64) = (a.iter().sum(), b.iter().sum());
    let bins = a.len().max(b.len());
    if na == 0 || nb == 0 || bins == 0 {
        return 0.0;
    }
    let (mut ca, mut cb, mut area) = (0u64, 0u64, 0f64);
    for i in 0..bins {
        ca += a.get(i).copied().unwrap_or(0);
        cb += b.get(i).copied().unwrap_or(0);
        area += (ca as f64 / na as f64 - cb as f64 / nb as f64).abs();
    }
    area / bins as f64
}

/// Population stability index of `actual` against `expected` counts (shares smoothed so that
/// an empty bin is finite).
fn psi(expected: &[u64], actual: &[u64]) -> f64 {
    let (e, a): (u64, u64) = (expected.iter().sum(), actual.iter().sum());
    if e == 0 || a == 0 {
        return 0.0;
    }
    let bins = expected.len().max(actual.len());
    let share = |v: &[u64], i: usize, total: u64| {
        (v.get(i).copied().unwrap_or(0) as f64 + 0.5) / (total as f64 + 0.5 * bins as f64)
    };
    (0..bins)
        .map(|i| {
            let (p, q) = (share(expected, i, e), share(actual, i, a));
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// The largest distance between the two histograms' cumulative shares, and their sizes.
fn ks(a: &[u64], b: &[u64]) -> (f64, u64, u64) {
    let (na, nb): (u64, u64) = (a.iter().sum(), b.iter().sum());
    if na == 0 || nb == 0 {
        return (0.0, na, nb);
    }
    let (mut ca, mut cb, mut d) = (0u64, 0u64, 0f64);
    for i in 0..a.len().max(b.len()) {
        ca += a.get(i).copied().unwrap_or(0);
        cb += b.get(i).copied().unwrap_or(0);
        d = d.max((ca as f64 / na as f64 - cb as f64 / nb as f64).abs());
    }
    (d, na, nb)
}

/// The grid of alternatives each e-process mixes with equal weights: ratios of odds (or of
/// rates) from 2^(1/4) to 2^8 above the null's, so that small and large regressions are both
/// found quickly.
const GRID: usize = 32;

fn grid_factor(j: usize) -> f64 {
    2f64.powf((j + 1) as f64 / 4.0)
}

/// E-value of `k` successes in `n` Bernoulli trials against "the chance is at most `p0`": the
/// mean, over alternatives `p > p0`, of the likelihood ratio. Each ratio is a supermartingale
/// under every chance at most `p0`, so their mean is too.
pub fn bernoulli_evidence(k: u64, n: u64, p0: f64) -> f64 {
    if n == 0 || p0 >= 1.0 {
        return 1.0;
    }
    bernoulli_mixture(k, n, p0.max(1e-12), grid_factor)
}

/// The mean likelihood ratio of `k` successes in `n` trials under chances whose odds are
/// `factor(j)` times `p0`'s, against `p0`.
fn bernoulli_mixture(k: u64, n: u64, p0: f64, factor: impl Fn(usize) -> f64) -> f64 {
    let odds0 = p0 / (1.0 - p0);
    let (k, rest) = (k as f64, (n - k.min(n)) as f64);
    let logs: Vec<f64> = (0..GRID)
        .map(|j| {
            let odds = odds0 * factor(j);
            let p = odds / (1.0 + odds);
            k * (p / p0).ln() + rest * ((1.0 - p) / (1.0 - p0)).ln()
        })
        .collect();
    mean_exp(&logs)
}

/// E-value of the canary's `xc` errors against stable's `xs`, the canary holding `share` of
/// the requests, against "the canary's rate is at most `tolerance` times stable's". Given
/// the errors, each is the canary's with chance `r share / (r share + 1 - share)` for a rate
/// ratio `r`; alternatives mix ratios above the tolerance.
pub fn ratio_evidence(xc: u64, xs: u64, share: f64, tolerance: f64) -> f64 {
    let share = share.clamp(1e-12, 1.0 - 1e-12);
    let p_of = |r: f64| r * share / (r * share + 1.0 - share);
    let p0 = p_of(tolerance.max(1e-12));
    let (xc, xs) = (xc as f64, xs as f64);
    let logs: Vec<f64> = (0..GRID)
        .map(|j| {
            let p = p_of(tolerance * grid_factor(j));
            xc * (p / p0).ln() + xs * ((1.0 - p) / (1.0 - p0)).ln()
        })
        .collect();
    mean_exp(&logs)
}

/// `mean(exp(logs))`, without overflow.
fn mean_exp(logs: &[f64]) -> f64 {
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return if top > 0.0 { f64::INFINITY } else { 0.0 };
    }
    let sum: f64 = logs.iter().map(|l| (l - top).exp()).sum();
    (top + (sum / logs.len() as f64).ln()).exp()
}

/// The `q` quantile of a histogram, in the units of `bounds` (a bucket's upper edge).
fn quantile_of(counts: &[u64], bounds: &[f64], q: f64) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (count, bound) in counts.iter().zip(bounds) {
        seen += count;
        if seen >= rank {
            return Some(*bound);
        }
    }
    bounds.last().copied()
}

/// An upper bound of the `q` quantile that holds at every look with chance `1 - alpha`: the
/// lowest bucket edge `v` with evidence `1 / alpha` that fewer than `1 - q` of the requests
/// are slower than `v` (`None` while no edge has it). If an edge below the true quantile
/// had it, so would the highest such edge, whose evidence is a test supermartingale: Ville's
/// inequality bounds the chance of that at `alpha`.
fn quantile_bound(counts: &[u64], bounds: &[f64], q: f64, alpha: f64) -> Option<f64> {
    let n: u64 = counts.iter().sum();
    let mut slower = n;
    for (count, bound) in counts.iter().zip(bounds) {
        slower -= count;
        if lower_evidence(slower, n, 1.0 - q) >= 1.0 / alpha {
            return Some(*bound);
        }
    }
    None
}

/// About how many requests bound the `q` quantile at `alpha`: the fewest with which a quarter
/// of the expected share beyond the quantile, or less, gives the evidence (so the bound lies
/// somewhat above the quantile itself; about 1,200 for p99 at 0.025, 240 for p95).
fn bound_sample(q: f64, alpha: f64) -> u64 {
    let tail = 1.0 - q;
    if tail <= 0.0 {
        return u64::MAX;
    }
    let enough =
        |n: u64| lower_evidence((tail * n as f64 / 4.0).round() as u64, n, tail) >= 1.0 / alpha;
    let mut high = 16u64;
    while !enough(high) {
        if high > 1 << 40 {
            return high;
        }
        high *= 2;
    }
    let mut low = high / 2;
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if enough(mid) { high = mid } else { low = mid }
    }
    high
}

/// E-value of `k` successes in `n` trials against "the chance is at least `p0`": the mean of
/// the likelihood ratios of chances below `p0`.
fn lower_evidence(k: u64, n: u64, p0: f64) -> f64 {
    if n == 0 || p0 <= 0.0 {
        return 1.0;
    }
    bernoulli_mixture(k, n, p0.min(1.0 - 1e-12), |j| 1.0 / grid_factor(j))
}

/// A measured value (as stored: JSON text) for people: numbers rounded, a judge's verdict as
/// its verdict and effect. The stored value keeps every digit.
pub fn display(value: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Number(n)) => n.as_f64().map_or(value.to_owned(), round),
        Ok(serde_json::Value::Array(items)) if items.iter().all(serde_json::Value::is_number) => {
            let items: Vec<String> = items
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .map(round)
                .collect();
            format!("[{}]", items.join(", "))
        }
        Ok(v) if v.get("verdict").is_some() => format!(
            "{} ({} {} against {}, {} + {} requests)",
            v["verdict"].as_str().unwrap_or("?"),
            v["statistic"].as_str().unwrap_or("?"),
            v["canary"].as_f64().map_or("-".into(), round),
            v["stable"].as_f64().map_or("-".into(), round),
            v["canarySample"],
            v["stableSample"],
        ),
        _ => value.to_owned(),
    }
}

/// A number for people: three significant digits at most, no trailing zeros.
pub fn round(x: f64) -> String {
    if !x.is_finite() {
        return if x > 0.0 { "∞".into() } else { x.to_string() };
    }
    if x == 0.0 {
        return "0".into();
    }
    if x.abs() >= 1e6 {
        return format!("{x:.2e}");
    }
    let digits = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{x:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests;
