//! One analysis run: which measurement is due when, what came back, and the verdict so far.
//!
//! The run is plain data (kept in the store and shown by the API); its metrics' definitions
//! ([`MetricSpec`]s) are given to each call, so a restart resumes from the data alone.

use serde::{Deserialize, Serialize};

use crate::judge::{self, Tally};
use crate::{Measurement, MetricSpec, Phase, Reading};

/// A measurement asked for that has not come back after this long is counted as an error.
pub const MEASUREMENT_TIMEOUT_SECS: i64 = 600;

/// An analysis run and its measurements. Stored inside a rollout's status: every field
/// defaults when absent, so runs written before a field was added decode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Run {
    pub name: String,
    /// Unix seconds.
    pub started_at: i64,
    pub phase: Phase,
    /// Why the run ended as it did, in plain words.
    pub message: Option<String>,
    pub metrics: Vec<MetricStatus>,
    /// When the run was stopped before it finished by itself (the rollout moved on).
    pub stopped_at: Option<i64>,
}

/// One metric of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricStatus {
    pub name: String,
    pub phase: Phase,
    pub dry_run: bool,
    pub measurements: Vec<Measurement>,
    /// A measurement was asked for at this time and has not come back.
    pub in_flight_since: Option<i64>,
}

impl Run {
    pub fn start(name: impl Into<String>, specs: &[MetricSpec], now: i64) -> Self {
        let mut run = Run {
            name: name.into(),
            started_at: now,
            phase: Phase::Running,
            message: None,
            metrics: Vec::new(),
            stopped_at: None,
        };
        run.sync(specs);
        run
    }

    /// Adds a status for every metric of `specs` the run does not have yet (the templates
    /// changed since the run started).
    fn sync(&mut self, specs: &[MetricSpec]) {
        for spec in specs {
            if !self.metrics.iter().any(|m| m.name == spec.name) {
                self.metrics.push(MetricStatus {
                    name: spec.name.clone(),
                    phase: Phase::Pending,
                    dry_run: spec.dry_run,
                    measurements: Vec::new(),
                    in_flight_since: None,
                });
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase.is_completed()
    }

    /// When the metric's next measurement is due; `None` when it takes no more (or one is in
    /// flight).
    fn due_at(&self, status: &MetricStatus, spec: &MetricSpec) -> Option<i64> {
        if self.is_done() || status.phase.is_completed() || status.in_flight_since.is_some() {
            return None;
        }
        let taken = status.measurements.len() as u32;
        if spec.limits.count.is_some_and(|c| taken >= c) {
            return None;
        }
        Some(match status.measurements.last() {
            None => self.started_at + spec.initial_delay.as_secs() as i64,
            Some(last) => last.finished_at + spec.interval.map_or(0, |i| i.as_secs() as i64),
        })
    }

    /// The metrics (by index into `specs`) whose measurement is due at `now`, marked in
    /// flight: the caller takes a reading for each and gives it to [`Run::record`]. A
    /// measurement in flight for longer than [`MEASUREMENT_TIMEOUT_SECS`] is recorded as an
    /// error first.
    pub fn take_due(&mut self, specs: &[MetricSpec], now: i64) -> Vec<usize> {
        self.sync(specs);
        for i in 0..self.metrics.len() {
            if let Some(since) = self.metrics[i].in_flight_since
                && now - since >= MEASUREMENT_TIMEOUT_SECS
            {
                let name = self.metrics[i].name.clone();
                self.record(
                    specs,
                    &name,
                    &Reading::Error(format!("no answer within {MEASUREMENT_TIMEOUT_SECS} s")),
                    since,
                    now,
                );
            }
        }
        let mut due = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let Some(status) = self.metrics.iter().position(|m| m.name == spec.name) else {
                continue;
            };
            if self
                .due_at(&self.metrics[status], spec)
                .is_some_and(|at| at <= now)
            {
                self.metrics[status].in_flight_since = Some(now);
                due.push(i);
            }
        }
        due
    }

    /// The earliest time a measurement is due.
    pub fn next_due(&self, specs: &[MetricSpec]) -> Option<i64> {
        specs
            .iter()
            .filter_map(|spec| {
                let status = self.metrics.iter().find(|m| m.name == spec.name)?;
                self.due_at(status, spec)
            })
            .min()
    }

    /// Records a reading for `metric` and judges the metric and the run again.
    pub fn record(
        &mut self,
        specs: &[MetricSpec],
        metric: &str,
        reading: &Reading,
        started_at: i64,
        finished_at: i64,
    ) {
        let (Some(spec), Some(status)) = (
            specs.iter().find(|s| s.name == metric),
            self.metrics.iter_mut().find(|m| m.name == metric),
        ) else {
            return;
        };
        status.in_flight_since = None;
        if self.phase.is_completed() || status.phase.is_completed() {
            return;
        }
        let (phase, message) =
            judge::evaluate(spec.success.as_ref(), spec.failure.as_ref(), reading);
        let value = match reading {
            Reading::Value(v) => Some(v.to_string()),
            _ => None,
        };
        // A judge's verdict says why, whatever the phase, better than the condition can.
        let message = match reading {
            Reading::Value(v) => v
                .get("reason")
                .and_then(|r| r.as_str())
                .map(str::to_owned)
                .or(message),
            _ => message,
        };
        status.measurements.push(Measurement {
            value,
            phase,
            started_at,
            finished_at,
            message,
        });
        status.phase = phase_of(spec, &status.measurements, false);
        self.assess(specs, finished_at, false);
    }

    /// Stops the run: metrics that measure until stopped are done, and the run gets its final
    /// phase.
    pub fn stop(&mut self, specs: &[MetricSpec], now: i64) {
        if self.is_done() {
            return;
        }
        self.stopped_at = Some(now);
        for status in &mut self.metrics {
            status.in_flight_since = None;
            if let Some(spec) = specs.iter().find(|s| s.name == status.name)
                && !status.phase.is_completed()
            {
                status.phase = phase_of(spec, &status.measurements, true);
            }
        }
        self.assess(specs, now, true);
    }

    fn assess(&mut self, specs: &[MetricSpec], _now: i64, stopping: bool) {
        let phase = judge::run_phase(self.metrics.iter().map(|m| (m.phase, m.dry_run)));
        let phase = if stopping && !phase.is_completed() {
            Phase::Successful
        } else {
            phase
        };
        if !phase.is_completed() {
            return;
        }
        self.phase = phase;
        for status in &mut self.metrics {
            status.in_flight_since = None;
        }
        if phase != Phase::Successful {
            self.message = self
                .metrics
                .iter()
                .find(|m| !m.dry_run && m.phase == phase)
                .map(|m| {
                    let t = Tally::of(&m.measurements);
                    let limits = specs.iter().find(|s| s.name == m.name).map(|s| s.limits);
                    let last = m
                        .measurements
                        .iter()
                        .rev()
                        .find(|x| x.phase == phase)
                        .and_then(|x| x.message.clone())
                        .unwrap_or_default();
                    let tally = match (phase, limits) {
                        (Phase::Failed, Some(l)) => format!(
                            "{} of {} measurements failed, {} allowed",
                            t.failed, t.count, l.failure_limit
                        ),
                        (Phase::Inconclusive, Some(l)) => format!(
                            "{} of {} measurements inconclusive, {} allowed",
                            t.inconclusive, t.count, l.inconclusive_limit
                        ),
                        (Phase::Error, Some(l)) => format!(
                            "{} errors in a row, {} allowed",
                            t.consecutive_error, l.consecutive_error_limit
                        ),
                        _ => String::new(),
                    };
                    format!("metric {} is {phase}: {last} ({tally})", m.name)
                });
        }
    }
}

/// A metric's phase from its measurements: Argo's rules, except for the judge's metrics
/// (`compare: stable`), whose every verdict covers the whole run so far, so the last one
/// stands for all (see [`judge::judged_phase`]).
fn phase_of(spec: &MetricSpec, measurements: &[Measurement], stopping: bool) -> Phase {
    match &spec.provider {
        crate::ProviderSpec::Builtin(b) if b.compare.is_some() => {
            judge::judged_phase(&spec.limits, measurements, stopping)
        }
        _ => judge::metric_phase(&spec.limits, measurements, stopping),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::Limits;
    use crate::{Condition, ProviderSpec};
    use std::time::Duration;

    fn spec(
        name: &str,
        interval: Option<u64>,
        count: Option<u32>,
        failure_limit: u32,
    ) -> MetricSpec {
        MetricSpec {
            name: name.into(),
            template: "t".into(),
            interval: interval.map(Duration::from_secs),
            initial_delay: Duration::from_secs(10),
            limits: Limits {
                count,
                failure_limit,
                inconclusive_limit: 0,
                consecutive_error_limit: 4,
            },
            success: Some(Condition::compile("result >= 0.95").unwrap()),
            failure: None,
            dry_run: false,
            provider: ProviderSpec::Prometheus {
                address: "http://p".into(),
                query: "q".into(),
                timeout: None,
            },
        }
    }

    fn v(x: f64) -> Reading {
        Reading::Value(serde_json::json!(x))
    }

    #[test]
    fn measurements_follow_initial_delay_interval_and_count() {
        let specs = [spec("rate", Some(30), Some(3), 1)];
        let mut run = Run::start("r", &specs, 1000);
        assert_eq!(run.next_due(&specs), Some(1010));
        assert!(run.take_due(&specs, 1009).is_empty());
        assert_eq!(run.take_due(&specs, 1010), vec![0]);
        // In flight: not due again until it comes back.
        assert!(run.take_due(&specs, 1100).is_empty());
        run.record(&specs, "rate", &v(0.9), 1010, 1011);
        assert_eq!(run.phase, Phase::Running);
        assert_eq!(run.next_due(&specs), Some(1041));
        assert_eq!(run.take_due(&specs, 1041), vec![0]);
        run.record(&specs, "rate", &v(0.99), 1041, 1041);
        assert_eq!(run.take_due(&specs, 1071), vec![0]);
        run.record(&specs, "rate", &v(0.99), 1071, 1071);
        // Three taken, one failure allowed: successful, and nothing more is due.
        assert_eq!(run.phase, Phase::Successful);
        assert_eq!(run.next_due(&specs), None);
    }

    #[test]
    fn a_failing_metric_ends_the_run_with_a_reason() {
        let specs = [
            spec("rate", Some(30), None, 1),
            spec("other", Some(30), None, 0),
        ];
        let mut run = Run::start("r", &specs, 0);
        assert_eq!(run.take_due(&specs, 10), vec![0, 1]);
        run.record(&specs, "rate", &v(0.5), 10, 10);
        run.record(&specs, "other", &v(1.0), 10, 10);
        assert_eq!(run.take_due(&specs, 40), vec![0, 1]);
        run.record(&specs, "rate", &v(0.4), 40, 40);
        assert_eq!(run.phase, Phase::Failed);
        let message = run.message.clone().unwrap();
        assert_eq!(
            message,
            "metric rate is Failed: `result >= 0.95` does not hold for 0.4 (2 of 2 measurements failed, 1 allowed)"
        );
        // What comes back afterwards is not recorded.
        run.record(&specs, "other", &v(1.0), 40, 41);
        assert_eq!(run.metrics[1].measurements.len(), 1);
        assert_eq!(run.next_due(&specs), None);
    }

    #[test]
    fn no_data_is_inconclusive_and_stopping_ends_open_metrics() {
        let specs = [spec("rate", Some(30), None, 0)];
        let mut run = Run::start("r", &specs, 0);
        run.take_due(&specs, 10);
        run.record(&specs, "rate", &v(0.99), 10, 10);
        run.stop(&specs, 20);
        assert_eq!(run.phase, Phase::Successful);
        assert_eq!(run.stopped_at, Some(20));

        let mut run = Run::start("r", &specs, 0);
        run.take_due(&specs, 10);
        run.record(
            &specs,
            "rate",
            &Reading::NoData("no requests in 1m".into()),
            10,
            10,
        );
        assert_eq!(run.phase, Phase::Inconclusive);
        assert!(run.message.unwrap().contains("no requests in 1m"));
    }

    #[test]
    fn a_measurement_that_never_returns_counts_as_an_error() {
        let specs = [spec("rate", Some(30), None, 0)];
        let mut run = Run::start("r", &specs, 0);
        assert_eq!(run.take_due(&specs, 10), vec![0]);
        // Restarted, the answer lost: ten minutes on it is an error, and the next measurement
        // is due an interval later.
        let timeout = 10 + MEASUREMENT_TIMEOUT_SECS;
        assert!(run.take_due(&specs, timeout).is_empty());
        assert_eq!(run.metrics[0].measurements[0].phase, Phase::Error);
        assert_eq!(run.take_due(&specs, timeout + 30), vec![0]);
    }
}
