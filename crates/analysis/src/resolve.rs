//! From AnalysisTemplates and the arguments a Rollout gives them, to the metrics a run
//! measures: `{{args.<name>}}` substituted everywhere, numbers and durations parsed.

use std::collections::BTreeMap;
use std::time::Duration;

use manifest::{AnalysisTemplate, BuiltinProvider, HttpMethod, Metric, Provider, Templated};

use crate::judge::Limits;
use crate::{Condition, Error};

/// One metric, ready to measure.
#[derive(Debug, Clone)]
pub struct MetricSpec {
    pub name: String,
    /// The template it comes from.
    pub template: String,
    /// Time between measurements; `None`: one measurement (unless `count` says more).
    pub interval: Option<Duration>,
    pub initial_delay: Duration,
    pub limits: Limits,
    pub success: Option<Condition>,
    pub failure: Option<Condition>,
    pub dry_run: bool,
    pub provider: ProviderSpec,
}

/// Where a metric's readings come from, with its arguments substituted.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderSpec {
    Prometheus {
        address: String,
        query: String,
        timeout: Option<Duration>,
    },
    Web {
        url: String,
        method: HttpMethod,
        headers: Vec<(String, String)>,
        body: Option<String>,
        json_path: Option<String>,
        timeout: Option<Duration>,
        insecure: bool,
    },
    Builtin(BuiltinProvider),
}

/// Replaces every `{{args.<name>}}` (spaces inside the braces allowed) whose name is in
/// `args`; other text is left as it is.
pub fn substitute(text: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let inner = rest[start + 2..start + len].trim();
        match inner.strip_prefix("args.").and_then(|name| args.get(name)) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[start..start + len + 2]),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// The metrics of `templates`, with `args` (the Rollout's) over each template's defaults.
pub fn resolve(
    templates: &[&AnalysisTemplate],
    args: &BTreeMap<String, String>,
) -> Result<Vec<MetricSpec>, Error> {
    let mut out: Vec<MetricSpec> = Vec::new();
    for template in templates {
        let name = &template.meta.name;
        let mut values = BTreeMap::new();
        for arg in &template.args {
            let value = args.get(&arg.name).or(arg.value.as_ref()).ok_or_else(|| {
                Error::MissingArgument {
                    template: name.clone(),
                    arg: arg.name.clone(),
                }
            })?;
            values.insert(arg.name.clone(), value.clone());
        }
        for metric in &template.metrics {
            if out.iter().any(|m| m.name == metric.name) {
                return Err(Error::DuplicateMetric(metric.name.clone()));
            }
            out.push(resolve_metric(name, metric, &values)?);
        }
    }
    Ok(out)
}

fn resolve_metric(
    template: &str,
    metric: &Metric,
    args: &BTreeMap<String, String>,
) -> Result<MetricSpec, Error> {
    let sub = |s: &str| substitute(s, args);
    let number = |field: &'static str, t: &Templated<u32>| -> Result<u32, Error> {
        match t {
            Templated::Value(v) => Ok(*v),
            Templated::Arg(text) => {
                let value = sub(text);
                value.trim().parse().map_err(|_| Error::BadArgumentValue {
                    metric: metric.name.clone(),
                    field,
                    value,
                    expected: "a whole number",
                })
            }
        }
    };
    let duration = |field: &'static str, t: &Templated<Duration>| -> Result<Duration, Error> {
        match t {
            Templated::Value(v) => Ok(*v),
            Templated::Arg(text) => {
                let value = sub(text);
                manifest::parse_duration(value.trim()).map_err(|_| Error::BadArgumentValue {
                    metric: metric.name.clone(),
                    field,
                    value,
                    expected: "a duration such as 30s or 5m",
                })
            }
        }
    };
    let condition = |c: &Option<manifest::Condition>| -> Result<Option<Condition>, Error> {
        c.as_ref()
            .map(|c| {
                Condition::compile(&sub(&c.source)).map_err(|source| Error::Condition {
                    metric: metric.name.clone(),
                    source,
                })
            })
            .transpose()
    };
    let interval = metric
        .interval
        .as_ref()
        .map(|i| duration("interval", i))
        .transpose()?;
    let count = metric
        .count
        .as_ref()
        .map(|c| number("count", c))
        .transpose()?;
    // Argo: without an interval, one measurement; with one and no count, until stopped.
    let count = match (count, interval) {
        (Some(c), _) => Some(c),
        (None, None) => Some(1),
        (None, Some(_)) => None,
    };
    let provider = match &metric.provider {
        Provider::Prometheus(p) => ProviderSpec::Prometheus {
            address: sub(&p.address),
            query: sub(&p.query),
            timeout: p.timeout,
        },
        Provider::Web(w) => ProviderSpec::Web {
            url: sub(&w.url),
            method: w.method,
            headers: w.headers.iter().map(|(k, v)| (sub(k), sub(v))).collect(),
            body: w.body.as_deref().map(sub),
            json_path: w.json_path.as_deref().map(sub),
            timeout: w.timeout,
            insecure: w.insecure,
        },
        Provider::Crossfade(b) => ProviderSpec::Builtin(b.clone()),
    };
    Ok(MetricSpec {
        name: metric.name.clone(),
        template: template.to_owned(),
        interval,
        initial_delay: metric
            .initial_delay
            .as_ref()
            .map(|d| duration("initialDelay", d))
            .transpose()?
            .unwrap_or_default(),
        limits: Limits {
            count,
            failure_limit: number("failureLimit", &metric.failure_limit)?,
            inconclusive_limit: number("inconclusiveLimit", &metric.inconclusive_limit)?,
            consecutive_error_limit: number(
                "consecutiveErrorLimit",
                &metric.consecutive_error_limit,
            )?,
        },
        success: condition(&metric.success_condition)?,
        failure: condition(&metric.failure_condition)?,
        dry_run: metric.dry_run,
        provider,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        let args = BTreeMap::from([("svc".to_owned(), "iris".to_owned())]);
        assert_eq!(
            substitute("rate(x{service=\"{{args.svc}}\"}[{{ args.svc }}])", &args),
            "rate(x{service=\"iris\"}[iris])"
        );
        assert_eq!(substitute("{{args.other}} {{", &args), "{{args.other}} {{");
    }
}
