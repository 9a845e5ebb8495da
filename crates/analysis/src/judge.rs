//! Judgement: pure functions from readings and limits to phases.

use crate::{Condition, Measurement, Phase, Reading};

/// The limits a metric is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Measurements to take; `None`: until the run is stopped.
    pub count: Option<u32>,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    pub consecutive_error_limit: u32,
}

/// The phase of one reading (Argo's `EvaluateResult`), and why when it is not Successful.
pub fn evaluate(
    success: Option<&Condition>,
    failure: Option<&Condition>,
    reading: &Reading,
) -> (Phase, Option<String>) {
    let value = match reading {
        Reading::Value(v) => v,
        Reading::NoData(why) => return (Phase::Inconclusive, Some(format!("no data: {why}"))),
        Reading::Error(why) => return (Phase::Error, Some(why.clone())),
    };
    let check = |c: Option<&Condition>| c.map(|c| c.holds(value)).transpose();
    let (succeeded, failed) = match (check(success), check(failure)) {
        (Ok(s), Ok(f)) => (s, f),
        (Err(e), _) | (_, Err(e)) => {
            return (Phase::Error, Some(format!("{e} (result is {value})")));
        }
    };
    // For people: `0.455`, not `0.45454545454545453` (the measurement keeps the value).
    let value = crate::compare::display(&value.to_string());
    let (succeeded, failed) = match (succeeded, failed) {
        (None, None) => return (Phase::Successful, None),
        // Without a failure condition, missing the success condition is a failure.
        (Some(s), None) => (s, !s),
        // Without a success condition, escaping the failure condition is a success.
        (None, Some(f)) => (!f, f),
        (Some(s), Some(f)) => (s, f),
    };
    if failed {
        let cond = failure
            .or(success)
            .map(Condition::source)
            .unwrap_or_default();
        let why = if failure.is_some() {
            format!("`{cond}` holds for {value}")
        } else {
            format!("`{cond}` does not hold for {value}")
        };
        (Phase::Failed, Some(why))
    } else if succeeded {
        (Phase::Successful, None)
    } else {
        (
            Phase::Inconclusive,
            Some(format!(
                "{value} meets neither the success nor the failure condition"
            )),
        )
    }
}

/// Counts of a metric's measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u32,
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub error: u32,
    pub consecutive_error: u32,
}

impl Tally {
    pub fn of(measurements: &[Measurement]) -> Self {
        let mut t = Tally::default();
        for m in measurements.iter().filter(|m| m.phase.is_completed()) {
            t.count += 1;
            match m.phase {
                Phase::Successful => t.successful += 1,
                Phase::Failed => t.failed += 1,
                Phase::Inconclusive => t.inconclusive += 1,
                Phase::Error => t.error += 1,
                Phase::Pending | Phase::Running => {}
            }
            if m.phase == Phase::Error {
                t.consecutive_error += 1;
            } else {
                t.consecutive_error = 0;
            }
        }
        t
    }
}

/// The phase of a judge's metric (`compare: stable`): each verdict covers the whole run so
/// far, so an Inconclusive one (too few requests yet, or worse-looking without evidence) does
/// not end the metric while more are due; it fails as soon as the failures pass
/// `failureLimit`, and once `count` is reached (or the run stops) it is what the last verdict
/// says: Successful only if the last look, on all the run's data, passed.
pub fn judged_phase(limits: &Limits, measurements: &[Measurement], stopping: bool) -> Phase {
    let t = Tally::of(measurements);
    if t.failed > limits.failure_limit {
        return Phase::Failed;
    }
    if t.consecutive_error > limits.consecutive_error_limit {
        return Phase::Error;
    }
    let last = measurements.iter().rev().find(|m| m.phase.is_completed());
    if limits.count.is_some_and(|c| t.count >= c) || stopping {
        return match last.map(|m| m.phase) {
            None => {
                if stopping {
                    Phase::Inconclusive
                } else {
                    Phase::Pending
                }
            }
            Some(Phase::Successful) => Phase::Successful,
            Some(Phase::Error) => Phase::Error,
            Some(_) => Phase::Inconclusive,
        };
    }
    if measurements.is_empty() {
        Phase::Pending
    } else {
        Phase::Running
    }
}

/// The phase of a metric from its measurements (Argo's `assessMetricStatus`). `stopping`: the
/// run is being stopped, so a metric that measures until then is done.
pub fn metric_phase(limits: &Limits, measurements: &[Measurement], stopping: bool) -> Phase {
    if measurements.is_empty() {
        return if stopping {
            Phase::Successful
        } else {
            Phase::Pending
        };
    }
    let t = Tally::of(measurements);
    if t.failed > limits.failure_limit {
        return Phase::Failed;
    }
    if t.inconclusive > limits.inconclusive_limit {
        return Phase::Inconclusive;
    }
    if t.consecutive_error > limits.consecutive_error_limit {
        return Phase::Error;
    }
    if limits.count.is_some_and(|c| t.count >= c) || stopping {
        return Phase::Successful;
    }
    Phase::Running
}

/// The phase of a run from its metrics' phases and whether each is dry-run (Argo's
/// `assessRunStatus`): the worst final phase of the metrics that count (not dry-run ones);
/// Successful when every metric, dry-run ones included, is done and none that counts is worse;
/// Running otherwise.
pub fn run_phase(metrics: impl IntoIterator<Item = (Phase, bool)>) -> Phase {
    let mut worst = Phase::Successful;
    let mut all_done = true;
    for (phase, dry_run) in metrics {
        // As Argo: a dry-run metric's result never decides the run, but the run is done only
        // when it is done too.
        all_done &= phase.is_completed();
        if dry_run {
            continue;
        }
        if phase.is_completed() && phase.severity() > worst.severity() {
            worst = phase;
        }
    }
    if worst != Phase::Successful {
        worst
    } else if all_done {
        Phase::Successful
    } else {
        Phase::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(s: &str) -> Condition {
        Condition::compile(s).unwrap()
    }

    fn m(phase: Phase) -> Measurement {
        Measurement {
            value: None,
            phase,
            started_at: 0,
            finished_at: 0,
            message: None,
        }
    }

    #[test]
    fn evaluate_follows_argo() {
        let ok = c("result[0] >= 0.95");
        let bad = c("result[0] < 0.5");
        let v = |x: f64| Reading::Value(json!([x]));
        assert_eq!(evaluate(None, None, &v(0.1)).0, Phase::Successful);
        assert_eq!(evaluate(Some(&ok), None, &v(0.97)).0, Phase::Successful);
        assert_eq!(evaluate(Some(&ok), None, &v(0.9)).0, Phase::Failed);
        assert_eq!(evaluate(None, Some(&bad), &v(0.9)).0, Phase::Successful);
        assert_eq!(evaluate(None, Some(&bad), &v(0.1)).0, Phase::Failed);
        // Both: between them is inconclusive.
        assert_eq!(
            evaluate(Some(&ok), Some(&bad), &v(0.7)).0,
            Phase::Inconclusive
        );
        assert_eq!(evaluate(Some(&ok), Some(&bad), &v(0.1)).0, Phase::Failed);
        // The failure condition wins when both hold.
        let always = c("true");
        assert_eq!(
            evaluate(Some(&always), Some(&always), &v(1.0)).0,
            Phase::Failed
        );
        // No data is never a pass; an unevaluable condition is an error.
        let (phase, why) = evaluate(Some(&ok), None, &Reading::NoData("no requests".into()));
        assert_eq!(phase, Phase::Inconclusive);
        assert!(why.unwrap().contains("no requests"));
        assert_eq!(
            evaluate(Some(&ok), None, &Reading::Value(json!([]))).0,
            Phase::Error
        );
        assert_eq!(
            evaluate(Some(&ok), None, &Reading::Error("timeout".into())).0,
            Phase::Error
        );
        let (_, why) = evaluate(Some(&ok), None, &v(0.5));
        assert_eq!(why.unwrap(), "`result[0] >= 0.95` does not hold for [0.5]");
    }

    #[test]
    fn a_judged_metric_is_its_last_verdict() {
        use Phase::*;
        let limits = Limits {
            count: Some(3),
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: 4,
        };
        let ms = |phases: &[Phase]| -> Vec<Measurement> {
            phases
                .iter()
                .map(|p| Measurement {
                    phase: *p,
                    ..Measurement::default()
                })
                .collect()
        };
        // Too few requests at first does not end it.
        assert_eq!(judged_phase(&limits, &ms(&[Inconclusive]), false), Running);
        assert_eq!(
            judged_phase(
                &limits,
                &ms(&[Inconclusive, Inconclusive, Successful]),
                false
            ),
            Successful
        );
        // A pass that later looks worse is not a pass.
        assert_eq!(
            judged_phase(&limits, &ms(&[Successful, Successful, Inconclusive]), false),
            Inconclusive
        );
        assert_eq!(
            judged_phase(&limits, &ms(&[Successful, Failed]), false),
            Failed
        );
        assert_eq!(judged_phase(&limits, &[], true), Inconclusive);
    }

    #[test]
    fn metric_phase_follows_limits() {
        let limits = Limits {
            count: Some(3),
            failure_limit: 1,
            inconclusive_limit: 0,
            consecutive_error_limit: 2,
        };
        use Phase::*;
        let phase = |ms: &[Phase], stopping| {
            metric_phase(
                &limits,
                &ms.iter().map(|p| m(*p)).collect::<Vec<_>>(),
                stopping,
            )
        };
        assert_eq!(phase(&[], false), Pending);
        assert_eq!(phase(&[], true), Successful);
        assert_eq!(phase(&[Successful], false), Running);
        assert_eq!(phase(&[Failed], false), Running);
        assert_eq!(phase(&[Failed, Failed], false), Failed);
        assert_eq!(phase(&[Successful, Failed, Successful], false), Successful);
        assert_eq!(phase(&[Inconclusive], false), Inconclusive);
        assert_eq!(phase(&[Error, Error], false), Running);
        assert_eq!(phase(&[Error, Error, Error], false), Error);
        // An error streak is broken by any other measurement.
        assert_eq!(phase(&[Error, Error, Successful, Error], false), Successful);
        // Without a count, only stopping ends it.
        let open = Limits {
            count: None,
            ..limits
        };
        let ms: Vec<_> = (0..50).map(|_| m(Successful)).collect();
        assert_eq!(metric_phase(&open, &ms, false), Running);
        assert_eq!(metric_phase(&open, &ms, true), Successful);
    }

    #[test]
    fn run_phase_takes_the_worst_that_counts() {
        use Phase::*;
        assert_eq!(
            run_phase([(Successful, false), (Successful, false)]),
            Successful
        );
        assert_eq!(run_phase([(Successful, false), (Running, false)]), Running);
        assert_eq!(
            run_phase([(Inconclusive, false), (Running, false)]),
            Inconclusive
        );
        assert_eq!(run_phase([(Error, false), (Inconclusive, false)]), Error);
        assert_eq!(run_phase([(Error, false), (Failed, false)]), Failed);
        // Dry-run metrics never decide.
        assert_eq!(run_phase([(Failed, true), (Successful, false)]), Successful);
        assert_eq!(run_phase([(Failed, true)]), Successful);
        // A dry-run metric still measuring keeps a run that would pass running.
        assert_eq!(run_phase([(Running, true), (Successful, false)]), Running);
        assert_eq!(run_phase([(Pending, true), (Successful, false)]), Running);
    }
}
