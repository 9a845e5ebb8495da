//! The built-in provider: a reading from the gateway's own rolling window of a revision's
//! traffic, so that the embedded default needs no Prometheus. Pure: the caller hands over the
//! window's figures.

use manifest::{BuiltinMetric, BuiltinProvider};

use crate::Reading;

/// A revision's traffic over the provider's window, as the gateway counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    /// The seconds the figures cover.
    pub seconds: u64,
    pub requests: u64,
    pub ok: u64,
    /// Answers with a 5xx (the model or its server failed). Client errors (4xx) are the
    /// client's doing and count for neither rate.
    pub server_errors: u64,
    pub client_errors: u64,
    /// The provider's latency quantile, in seconds.
    pub latency: Option<f64>,
    pub mirrored: u64,
    pub agreed: u64,
    pub mean_distance: Option<f64>,
}

/// The reading of `provider` from `traffic` (`None`: the revision never served). Too little
/// traffic is [`Reading::NoData`], never a pass.
pub fn reading(provider: &BuiltinProvider, revision: &str, traffic: Option<Traffic>) -> Reading {
    let window = provider.window.as_secs();
    let no_requests = || {
        Reading::NoData(format!(
            "{revision} served no request in the last {window} s"
        ))
    };
    let Some(t) = traffic else {
        return no_requests();
    };
    let judged = t.ok + t.server_errors;
    let number = |x: f64| Reading::Value(serde_json::json!(x));
    match provider.metric {
        BuiltinMetric::SuccessRate | BuiltinMetric::ErrorRate if judged == 0 => no_requests(),
        BuiltinMetric::SuccessRate => number(t.ok as f64 / judged as f64),
        BuiltinMetric::ErrorRate => number(t.server_errors as f64 / judged as f64),
        BuiltinMetric::ClientErrorRate if t.requests == 0 => no_requests(),
        BuiltinMetric::ClientErrorRate => number(t.client_errors as f64 / t.requests as f64),
        BuiltinMetric::Latency => match t.latency {
            Some(l) if t.requests > 0 => number(l),
            _ => no_requests(),
        },
        BuiltinMetric::RequestRate => number(t.requests as f64 / t.seconds.max(1) as f64),
        BuiltinMetric::MirrorAgreement | BuiltinMetric::MirrorDistance if t.mirrored == 0 => {
            Reading::NoData(format!(
                "no request was mirrored to {revision} in the last {window} s"
            ))
        }
        BuiltinMetric::MirrorAgreement => number(t.agreed as f64 / t.mirrored as f64),
        BuiltinMetric::PredictionDrift => {
            Reading::Error("prediction-drift is judged with `compare: stable` only".into())
        }
        BuiltinMetric::MirrorDistance => match t.mean_distance {
            Some(d) if d.is_finite() => number(d),
            // A proxied revision cannot be compared tensor by tensor.
            _ => Reading::Error(format!(
                "the answers of {revision} cannot be compared with the stable revision's"
            )),
        },
    }
}

/// The judge's reading of a `compare: stable` metric: the canary's counts against stable's
/// over the same window (`None`: the revision never served). `result` is the
/// [`crate::compare::Comparison`], its `verdict` `Pass`, `Fail` or `Inconclusive`.
pub fn compared(
    provider: &BuiltinProvider,
    compare: &manifest::Compare,
    canary: Option<&crate::compare::Counts>,
    stable: Option<&crate::compare::Counts>,
    bounds: &[f64],
) -> Reading {
    use crate::compare::{self, Settings};
    let default_tolerance = match provider.metric {
        BuiltinMetric::Latency => Settings::DEFAULT_LATENCY_TOLERANCE,
        BuiltinMetric::MirrorAgreement => Settings::DEFAULT_DISAGREEMENT,
        BuiltinMetric::PredictionDrift => Settings::DEFAULT_DRIFT,
        _ => Settings::DEFAULT_ERROR_TOLERANCE,
    };
    let settings = Settings {
        tolerance: compare.tolerance.unwrap_or(default_tolerance),
        min_sample: compare.min_sample.unwrap_or(Settings::DEFAULT_MIN_SAMPLE),
        alpha: compare
            .confidence
            .map_or(Settings::DEFAULT_ALPHA, |c| 1.0 - c),
        slack: Settings::DEFAULT_SLACK,
    };
    let empty = compare::Counts::default();
    let (canary, stable) = (canary.unwrap_or(&empty), stable.unwrap_or(&empty));
    let c = match provider.metric {
        BuiltinMetric::ErrorRate | BuiltinMetric::SuccessRate => {
            compare::error_rate(canary, stable, &settings)
        }
        BuiltinMetric::ClientErrorRate => compare::client_error_rate(canary, stable, &settings),
        BuiltinMetric::Latency => {
            compare::latency(canary, stable, bounds, provider.quantile, &settings)
        }
        BuiltinMetric::MirrorAgreement => compare::agreement(canary, &settings),
        BuiltinMetric::PredictionDrift => compare::drift(canary, &settings),
        BuiltinMetric::RequestRate | BuiltinMetric::MirrorDistance => {
            return Reading::Error(
                "request-rate and mirror-distance cannot be judged against stable".into(),
            );
        }
    };
    match serde_json::to_value(&c) {
        Ok(v) => Reading::Value(v),
        Err(e) => Reading::Error(format!("the verdict could not be encoded: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifest::RevisionSelector;
    use std::time::Duration;

    fn provider(metric: BuiltinMetric) -> BuiltinProvider {
        BuiltinProvider {
            metric,
            revision: RevisionSelector::Canary,
            window: Duration::from_secs(60),
            quantile: 0.99,
            compare: None,
        }
    }

    #[test]
    fn readings_from_traffic() {
        let t = Traffic {
            seconds: 60,
            requests: 120,
            ok: 90,
            server_errors: 10,
            client_errors: 20,
            latency: Some(0.25),
            mirrored: 40,
            agreed: 30,
            mean_distance: Some(0.125),
        };
        let value = |m| match reading(&provider(m), "r", Some(t)) {
            Reading::Value(v) => v.as_f64().unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value(BuiltinMetric::SuccessRate), 0.9);
        assert_eq!(value(BuiltinMetric::ErrorRate), 0.1);
        assert_eq!(value(BuiltinMetric::ClientErrorRate), 20.0 / 120.0);
        assert_eq!(value(BuiltinMetric::Latency), 0.25);
        assert_eq!(value(BuiltinMetric::RequestRate), 2.0);
        assert_eq!(value(BuiltinMetric::MirrorAgreement), 0.75);
        assert_eq!(value(BuiltinMetric::MirrorDistance), 0.125);
    }

    #[test]
    fn no_traffic_is_no_data() {
        let quiet = Traffic {
            seconds: 60,
            requests: 0,
            ok: 0,
            server_errors: 0,
            client_errors: 0,
            latency: None,
            mirrored: 0,
            agreed: 0,
            mean_distance: None,
        };
        for m in [
            BuiltinMetric::SuccessRate,
            BuiltinMetric::ErrorRate,
            BuiltinMetric::Latency,
            BuiltinMetric::MirrorAgreement,
        ] {
            assert!(
                matches!(reading(&provider(m), "r", Some(quiet)), Reading::NoData(_)),
                "{m:?}"
            );
            assert!(
                matches!(reading(&provider(m), "r", None), Reading::NoData(_)),
                "{m:?}"
            );
        }
    }

    /// The verdict is an object the Argo-shaped conditions read: `result.verdict == "Pass"`.
    #[test]
    fn a_comparison_is_read_by_conditions() {
        let compare = manifest::Compare {
            tolerance: None,
            min_sample: Some(50),
            confidence: None,
            window_given: false,
        };
        let p = BuiltinProvider {
            compare: Some(compare),
            ..provider(BuiltinMetric::ErrorRate)
        };
        let counts = |ok, server_errors| crate::compare::Counts {
            ok,
            server_errors,
            ..Default::default()
        };
        let pass = crate::Condition::compile(r#"result.verdict == "Pass""#).unwrap();
        let fail = crate::Condition::compile(r#"result.verdict == "Fail""#).unwrap();
        let good = compared(
            &p,
            &compare,
            Some(&counts(200, 1)),
            Some(&counts(800, 5)),
            &[],
        );
        let Reading::Value(v) = &good else {
            panic!("{good:?}")
        };
        assert!(pass.holds(v).unwrap() && !fail.holds(v).unwrap(), "{v}");
        assert_eq!(v["canarySample"], 201);
        let bad = compared(
            &p,
            &compare,
            Some(&counts(150, 50)),
            Some(&counts(800, 5)),
            &[],
        );
        let Reading::Value(v) = &bad else {
            panic!("{bad:?}")
        };
        assert!(fail.holds(v).unwrap(), "{v}");
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .starts_with("error rate 25.00% (50 of 200)"),
            "{v}"
        );
    }
}
