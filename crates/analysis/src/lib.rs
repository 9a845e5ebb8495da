//! Metric analysis as Argo Rollouts does it: measurements judged by conditions, metrics judged
//! by their measurements and limits, runs judged by their metrics.
//!
//! The core is pure: [`judge`] turns readings into phases, [`Run`] schedules and keeps the
//! measurements of one analysis run on a clock it is given, and [`resolve`] turns templates and
//! arguments into the metrics a run measures. Taking a reading (asking Prometheus, a web
//! endpoint or the gateway) is the caller's business; the `providers` feature has the ones
//! that go over the network.
//!
//! # Semantics (Argo Rollouts)
//!
//! - A measurement is Failed when `failureCondition` holds, else Successful when
//!   `successCondition` holds, else Inconclusive; with only a success condition, not meeting it
//!   is a failure; with only a failure condition, not meeting it is a success; with neither,
//!   every reading succeeds. A condition that cannot be evaluated is an Error.
//! - A reading with no data (too little traffic, an empty query) is Inconclusive, never a pass.
//! - A metric fails when its failed measurements exceed `failureLimit` (default 0), is
//!   inconclusive when its inconclusive ones exceed `inconclusiveLimit` (0), errs when
//!   consecutive errors exceed `consecutiveErrorLimit` (4), and succeeds when it has taken its
//!   `count` measurements (one when there is no `interval`). Without a count, a metric with an
//!   interval measures until the run is stopped.
//! - A run takes the worst phase of its metrics that are not dry-run (Failed, Error,
//!   Inconclusive, in that order); as soon as one is reached, the run is over.

pub mod builtin;
pub mod compare;
mod condition;
pub mod judge;
#[cfg(feature = "providers")]
pub mod providers;
mod resolve;
mod run;

pub use condition::{Condition, ConditionError};
pub use resolve::{
    MetricSpec, ProviderSpec, redact_reading, resolve, reveal_secrets, secret_placeholder,
    substitute,
};
pub use run::{MetricStatus, Run};

use serde::{Deserialize, Serialize};

/// The phase of a measurement, a metric or a run (Argo's `AnalysisPhase`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    Successful,
    Failed,
    Inconclusive,
    Error,
}

impl Phase {
    /// Whether the phase is final.
    pub fn is_completed(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Running)
    }

    /// How bad a final phase is, for taking the worst of several (Argo's order).
    fn severity(self) -> u8 {
        match self {
            Phase::Pending | Phase::Running => 0,
            Phase::Successful => 1,
            Phase::Inconclusive => 2,
            Phase::Error => 3,
            Phase::Failed => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Successful => "Successful",
            Phase::Failed => "Failed",
            Phase::Inconclusive => "Inconclusive",
            Phase::Error => "Error",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider returned for one measurement.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A value, as `result` in the conditions: a number, a list of numbers (a Prometheus
    /// vector), or any JSON.
    Value(serde_json::Value),
    /// The source answered but had nothing to judge (no traffic, an empty vector): why.
    NoData(String),
    /// The source could not be asked, or its answer not understood: why.
    Error(String),
}

/// One measurement, as kept and shown (stored in a rollout's status; fields default when absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Measurement {
    /// The value as text (`0.97`, `[0.97]`), when there was one.
    pub value: Option<String>,
    pub phase: Phase,
    /// Unix seconds.
    pub started_at: i64,
    pub finished_at: i64,
    /// Why it is not Successful, in plain words.
    pub message: Option<String>,
}

/// Why templates and arguments do not make a run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("analysis template {0} does not exist")]
    MissingTemplate(String),
    #[error("argument {arg} of template {template} has no value")]
    MissingArgument { template: String, arg: String },
    #[error("{field} of metric {metric} is {value:?}, not {expected}")]
    BadArgumentValue {
        metric: String,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("condition of metric {metric}: {source}")]
    Condition {
        metric: String,
        source: ConditionError,
    },
    #[error("metric {0} is defined by two templates")]
    DuplicateMetric(String),
}
