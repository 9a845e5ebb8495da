//! The judge's statistics on simulated traffic: false alarms on identical revisions over many
//! runs looked at after every interval, and how soon regressions of each size are caught.

use super::*;

/// A small deterministic generator (SplitMix64): the runs are the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Log-normal latency in seconds around `median`.
    fn latency(&mut self, median: f64) -> f64 {
        // Box-Muller.
        let (u, v) = (self.unit().max(1e-12), self.unit());
        let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
        median * (0.4 * z).exp()
    }
}

/// The gateway's buckets: four per doubling from 10 µs.
fn bounds() -> Vec<f64> {
    (0..96)
        .map(|i| 10e-6 * 2f64.powf((i + 1) as f64 / 4.0))
        .collect()
}

fn bucket(bounds: &[f64], seconds: f64) -> usize {
    bounds
        .iter()
        .position(|b| seconds <= *b)
        .unwrap_or(bounds.len() - 1)
}

/// A revision's behaviour: its error rate and median latency.
#[derive(Clone, Copy)]
struct Model {
    errors: f64,
    median: f64,
}

const STABLE: Model = Model {
    errors: 0.01,
    median: 0.002,
};

/// Serves `requests` requests, `share` of them to the canary, onto the running counts.
fn serve(rng: &mut Rng, counts: &mut [Counts; 2], models: [Model; 2], share: f64, requests: u64) {
    let b = bounds();
    for _ in 0..requests {
        let i = usize::from(rng.chance(share));
        let m = models[1 - i];
        let c = &mut counts[1 - i];
        if c.latency.is_empty() {
            c.latency = vec![0; b.len()];
        }
        if rng.chance(m.errors) {
            c.server_errors += 1;
        } else {
            c.ok += 1;
        }
        c.latency[bucket(&b, rng.latency(m.median))] += 1;
    }
}

fn settings(tolerance: f64) -> Settings {
    Settings {
        tolerance,
        min_sample: Settings::DEFAULT_MIN_SAMPLE,
        alpha: Settings::DEFAULT_ALPHA,
        slack: Settings::DEFAULT_SLACK,
    }
}

/// One analysis: `looks` intervals of `per_look` requests at a 20% canary share, judged after
/// each on everything so far. Returns the look at which it failed, if it did, and the last
/// verdict.
fn run(
    seed: u64,
    canary: Model,
    looks: usize,
    per_look: u64,
    judge: impl Fn(&Counts, &Counts) -> Comparison,
) -> (Option<usize>, Verdict) {
    let mut rng = Rng(seed);
    let mut counts = [Counts::default(), Counts::default()];
    let mut last = Verdict::Inconclusive;
    for look in 1..=looks {
        serve(&mut rng, &mut counts, [STABLE, canary], 0.2, per_look);
        let c = judge(&counts[1], &counts[0]);
        last = c.verdict;
        if c.verdict == Verdict::Fail {
            return (Some(look), last);
        }
    }
    (None, last)
}

fn errors(s: Settings) -> impl Fn(&Counts, &Counts) -> Comparison {
    move |c, st| error_rate(c, st, &s)
}

fn latency_at(q: f64, s: Settings) -> impl Fn(&Counts, &Counts) -> Comparison {
    move |c, st| latency(c, st, &bounds(), q, &s)
}

/// Identical revisions, 1,000 analyses of 30 looks each: the share that ever fails stays
/// within alpha (5%) however often it was looked at. A test at 5% applied at every look
/// without accounting for the looks fails far more than that.
#[test]
fn identical_revisions_rarely_fail_however_often_they_are_looked_at() {
    let runs = 1000;
    for (name, judge) in [
        (
            "error rate",
            Box::new(errors(settings(1.0))) as Box<dyn Fn(&Counts, &Counts) -> Comparison>,
        ),
        ("p50 latency", Box::new(latency_at(0.5, settings(1.0)))),
        ("p99 latency", Box::new(latency_at(0.99, settings(1.0)))),
    ] {
        let failed = (0..runs)
            .filter(|seed| run(*seed, STABLE, 30, 100, &judge).0.is_some())
            .count();
        let rate = failed as f64 / runs as f64;
        // Monte Carlo: 3 standard errors above 5% is 7%.
        assert!(
            rate <= 0.07,
            "{name}: {failed} of {runs} identical runs failed"
        );
    }
    // With the default tolerances (1.5x errors, 1.2x latency) identical revisions end the
    // analysis with a Pass: here 982, 1,000 and 1,000 of 1,000.
    for (name, judge) in [
        (
            "error rate",
            Box::new(errors(settings(1.5))) as Box<dyn Fn(&Counts, &Counts) -> Comparison>,
        ),
        ("p50 latency", Box::new(latency_at(0.5, settings(1.2)))),
        ("p99 latency", Box::new(latency_at(0.99, settings(1.2)))),
    ] {
        let passed = (0..runs)
            .filter(|seed| run(*seed, STABLE, 30, 100, &judge).1 == Verdict::Pass)
            .count();
        assert!(
            passed >= 970,
            "{name}: {passed} of {runs} identical runs passed"
        );
    }
}

/// The median look at which a regression fails, over 200 analyses: larger regressions are
/// caught sooner, and a model ten times slower at the first look past the minimum sample.
#[test]
fn larger_regressions_are_caught_sooner() {
    let median_look = |canary: Model, judge: &dyn Fn(&Counts, &Counts) -> Comparison| {
        let mut looks: Vec<usize> = (0..200)
            .map(|seed| {
                run(1000 + seed, canary, 60, 100, judge)
                    .0
                    .unwrap_or(usize::MAX)
            })
            .collect();
        looks.sort_unstable();
        looks[looks.len() / 2]
    };
    let e = errors(settings(Settings::DEFAULT_ERROR_TOLERANCE));
    let by_error: Vec<usize> = [0.05, 0.1, 0.3]
        .into_iter()
        .map(|rate| {
            median_look(
                Model {
                    errors: rate,
                    ..STABLE
                },
                &e,
            )
        })
        .collect();
    assert!(by_error.windows(2).all(|w| w[0] >= w[1]), "{by_error:?}");
    assert!(by_error[0] < 60, "5% against 1% is caught: {by_error:?}");
    let l = latency_at(0.5, settings(Settings::DEFAULT_LATENCY_TOLERANCE));
    let by_latency: Vec<usize> = [1.6, 3.0, 10.0]
        .into_iter()
        .map(|f| {
            median_look(
                Model {
                    median: STABLE.median * f,
                    ..STABLE
                },
                &l,
            )
        })
        .collect();
    eprintln!(
        "median look to Fail (100 requests a look, 20% to the canary): error rate 5%, 10%, 30% against 1%: {by_error:?}; p50 latency 1.6x, 3x, 10x: {by_latency:?}"
    );
    assert!(
        by_latency.windows(2).all(|w| w[0] >= w[1]),
        "{by_latency:?}"
    );
    // 20 canary requests a look: the 10x slower model fails within the first few looks.
    assert!(by_latency[2] <= 3, "{by_latency:?}");
}

/// Sporadic errors against a stable revision with none (the case a rank test misses).
#[test]
fn sporadic_errors_against_an_error_free_stable_fail() {
    let stable = Counts {
        ok: 2000,
        ..Counts::default()
    };
    let canary = Counts {
        ok: 395,
        server_errors: 5,
        ..Counts::default()
    };
    let c = error_rate(
        &canary,
        &stable,
        &settings(Settings::DEFAULT_ERROR_TOLERANCE),
    );
    assert_eq!(c.verdict, Verdict::Fail, "{}", c.reason);
    // One error in 400 is not enough to call it.
    let one = Counts {
        ok: 399,
        server_errors: 1,
        ..Counts::default()
    };
    let c = error_rate(&one, &stable, &settings(Settings::DEFAULT_ERROR_TOLERANCE));
    assert_ne!(c.verdict, Verdict::Fail, "{}", c.reason);
}

#[test]
fn below_the_minimum_sample_it_says_how_many_more_are_needed() {
    let stable = Counts {
        ok: 1000,
        ..Counts::default()
    };
    let canary = Counts {
        ok: 30,
        ..Counts::default()
    };
    let c = error_rate(&canary, &stable, &settings(1.5));
    assert_eq!((c.verdict, c.needed), (Verdict::Inconclusive, 70));
    assert_eq!(
        c.reason,
        "30 canary requests so far, 70 more needed before a verdict"
    );
    // Without stable traffic there is nothing to compare with.
    let c = error_rate(&canary, &Counts::default(), &settings(1.5));
    assert_eq!(c.verdict, Verdict::Inconclusive);
    assert!(c.reason.contains("nothing to compare with"), "{}", c.reason);
}

#[test]
fn agreement_passes_a_model_that_differs_a_little_and_fails_a_wrong_one() {
    let s = Settings {
        tolerance: Settings::DEFAULT_DISAGREEMENT,
        ..settings(0.0)
    };
    let mirrored = |n: u64, agreed: u64| Counts {
        mirrored: n,
        agreed,
        ..Counts::default()
    };
    assert_eq!(agreement(&mirrored(500, 490), &s).verdict, Verdict::Pass);
    let wrong = agreement(&mirrored(200, 120), &s);
    assert_eq!(wrong.verdict, Verdict::Fail, "{}", wrong.reason);
    assert_eq!(agreement(&mirrored(40, 40), &s).needed, 60);
}

#[test]
fn e_values_are_one_without_evidence_and_grow_with_it() {
    assert_eq!(bernoulli_evidence(0, 0, 0.5), 1.0);
    assert!(bernoulli_evidence(0, 100, 0.5) < 1.0);
    assert!(bernoulli_evidence(100, 100, 0.5) > 1e6);
    assert!(ratio_evidence(10, 0, 0.2, 1.0) > 1e3);
    assert!(ratio_evidence(2, 8, 0.2, 1.0) < 20.0);
}

#[test]
fn numbers_are_rounded_for_people() {
    assert_eq!(round(0.454_545_454_545_454_53), "0.455");
    assert_eq!(round(1.5), "1.5");
    assert_eq!(round(20.0), "20");
    assert_eq!(round(1234.6), "1235");
    assert_eq!(round(0.000_123_4), "0.000123");
    assert_eq!(round(6.3e41), "6.30e41");
}

#[test]
fn stored_values_are_shown_rounded() {
    assert_eq!(display("0.45454545454545453"), "0.455");
    assert_eq!(display("[0.97123, 1]"), "[0.971, 1]");
    assert_eq!(display("\"up\""), "\"up\"");
    let verdict = r#"{"verdict":"Fail","statistic":"error-rate","canary":0.5225806451612903,"stable":0.0,"canarySample":155,"stableSample":556}"#;
    assert_eq!(
        display(verdict),
        "Fail (error-rate 0.523 against 0, 155 + 556 requests)"
    );
}

#[test]
fn drifting_predictions_fail_and_a_retrained_model_passes() {
    let s = Settings {
        tolerance: Settings::DEFAULT_DRIFT,
        ..settings(0.0)
    };
    let mirrored =
        |stable: [u64; 3], canary: [u64; 3], stable_scores: Vec<u64>, scores: Vec<u64>| Counts {
            stable_classes: stable.to_vec(),
            classes: canary.to_vec(),
            stable_scores,
            scores,
            ..Counts::default()
        };
    let confident = |n: u64| {
        let mut v = vec![0; 16];
        v[15] = n;
        v
    };
    let unsure = |n: u64| {
        let mut v = vec![0; 16];
        v[8] = n;
        v
    };
    // A little different: passes.
    let retrained = drift(
        &mirrored(
            [100, 100, 100],
            [98, 103, 99],
            confident(300),
            confident(300),
        ),
        &s,
    );
    assert_eq!(retrained.verdict, Verdict::Pass, "{}", retrained.reason);
    // Predicts mostly one class where stable spreads them: fails on PSI.
    let skewed = drift(
        &mirrored(
            [100, 100, 100],
            [250, 30, 20],
            confident(300),
            confident(300),
        ),
        &s,
    );
    assert_eq!(skewed.verdict, Verdict::Fail, "{}", skewed.reason);
    // Retrained to a little less confidence (every top score one bin, 1/16, lower): the KS
    // test sees the difference, but the scores moved by 0.06, under the 0.1 tolerated.
    let calmer = drift(
        &mirrored([100, 100, 100], [100, 100, 100], confident(300), {
            let mut v = vec![0; 16];
            v[14] = 300;
            v
        }),
        &s,
    );
    assert_eq!(calmer.verdict, Verdict::Pass, "{}", calmer.reason);
    assert!(
        calmer.reason.contains("moved by 0.0625"),
        "{}",
        calmer.reason
    );
    // Same classes, but no longer confident (scores drifted): fails on how far they moved.
    let hesitant = drift(
        &mirrored(
            [100, 100, 100],
            [100, 100, 100],
            confident(300),
            unsure(300),
        ),
        &s,
    );
    assert_eq!(hesitant.verdict, Verdict::Fail, "{}", hesitant.reason);
    assert!(
        hesitant
            .reason
            .contains("moved by 0.438 (tolerated 0.1; KS distance 1"),
        "{}",
        hesitant.reason
    );
    let few = drift(
        &mirrored([10, 10, 10], [30, 0, 0], confident(30), confident(30)),
        &s,
    );
    assert_eq!((few.verdict, few.needed), (Verdict::Inconclusive, 70));
}

/// A p99 needs many stable requests before it can be bounded: below that the verdict says how
/// many more (of both revisions: what a replay adds), and with them it decides.
#[test]
fn a_p99_too_few_stable_requests_can_bound_says_how_many_more() {
    let mut rng = Rng(5);
    let mut counts = [Counts::default(), Counts::default()];
    serve(&mut rng, &mut counts, [STABLE, STABLE], 0.5, 800);
    let judge = latency_at(0.99, settings(1.2));
    let short = judge(&counts[1], &counts[0]);
    assert_eq!(short.verdict, Verdict::Inconclusive, "{}", short.reason);
    let ns = short.stable_sample;
    assert!(ns < 500, "{ns}");
    let more = short.needed;
    assert!((400..1000).contains(&more), "{more}: {}", short.reason);
    assert!(
        short.reason.ends_with(&format!("about {more} more needed")),
        "{}",
        short.reason
    );
    // As many more of each: now it can bound stable's p99 and decide.
    serve(&mut rng, &mut counts, [STABLE, STABLE], 0.5, 2 * more);
    let enough = judge(&counts[1], &counts[0]);
    assert_eq!(enough.verdict, Verdict::Pass, "{}", enough.reason);
}
