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
    /// A job run as a local process: its reading is `{"succeeded": bool, "exitCode": n}`.
    Job {
        /// The template it comes from (`job/<template>` in a runtime allow-list).
        template: String,
        command: Vec<String>,
        env: Vec<(String, String)>,
        backoff_limit: u32,
        deadline: Duration,
    },
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

/// What a `secretKeyRef` argument becomes in a metric: a placeholder naming the secret, never
/// its value, which [`reveal_secrets`] puts in only for the request that needs it.
pub fn secret_placeholder(r: &manifest::SecretKeyRef) -> String {
    format!("{{{{secret:{}/{}}}}}", r.name, r.key)
}

/// `spec` with every secret placeholder replaced by `lookup(name, key)`, and the values put
/// in (to redact from what the provider answers).
pub fn reveal_secrets(
    spec: &ProviderSpec,
    lookup: &dyn Fn(&str, &str) -> Result<String, String>,
) -> Result<(ProviderSpec, Vec<String>), String> {
    let mut values = Vec::new();
    let mut reveal = |text: &str| -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("{{secret:") {
            let Some(len) = rest[start..].find("}}") else {
                break;
            };
            let inner = &rest[start + "{{secret:".len()..start + len];
            let (name, key) = inner.split_once('/').unwrap_or((inner, ""));
            let value = lookup(name, key)?;
            out.push_str(&rest[..start]);
            out.push_str(&value);
            if !value.is_empty() && !values.contains(&value) {
                values.push(value);
            }
            rest = &rest[start + len + 2..];
        }
        out.push_str(rest);
        Ok(out)
    };
    let revealed = match spec {
        ProviderSpec::Prometheus {
            address,
            query,
            timeout,
        } => ProviderSpec::Prometheus {
            address: reveal(address)?,
            query: reveal(query)?,
            timeout: *timeout,
        },
        ProviderSpec::Web {
            url,
            method,
            headers,
            body,
            json_path,
            timeout,
            insecure,
        } => ProviderSpec::Web {
            url: reveal(url)?,
            method: *method,
            headers: headers
                .iter()
                .map(|(k, v)| Ok((reveal(k)?, reveal(v)?)))
                .collect::<Result<_, String>>()?,
            body: body.as_deref().map(&mut reveal).transpose()?,
            json_path: json_path.as_deref().map(&mut reveal).transpose()?,
            timeout: *timeout,
            insecure: *insecure,
        },
        ProviderSpec::Builtin(b) => ProviderSpec::Builtin(b.clone()),
        ProviderSpec::Job {
            template,
            command,
            env,
            backoff_limit,
            deadline,
        } => ProviderSpec::Job {
            template: template.clone(),
            command: command
                .iter()
                .map(|c| reveal(c))
                .collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|(k, v)| Ok((k.clone(), reveal(v)?)))
                .collect::<Result<_, String>>()?,
            backoff_limit: *backoff_limit,
            deadline: *deadline,
        },
    };
    Ok((revealed, values))
}

/// `reading` with every one of `secrets` replaced by `***` (an error message quoting the URL,
/// an answer echoing a header).
pub fn redact_reading(reading: crate::Reading, secrets: &[String]) -> crate::Reading {
    if secrets.is_empty() {
        return reading;
    }
    let hide = |s: &str| {
        secrets
            .iter()
            .fold(s.to_owned(), |s, secret| s.replace(secret.as_str(), "***"))
    };
    fn walk(v: &mut serde_json::Value, hide: &dyn Fn(&str) -> String) {
        match v {
            serde_json::Value::String(s) => *s = hide(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| walk(i, hide)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|i| walk(i, hide)),
            _ => {}
        }
    }
    match reading {
        crate::Reading::Value(mut v) => {
            walk(&mut v, &hide);
            crate::Reading::Value(v)
        }
        crate::Reading::NoData(m) => crate::Reading::NoData(hide(&m)),
        crate::Reading::Error(m) => crate::Reading::Error(hide(&m)),
    }
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
            let secret = arg.secret.as_ref().map(secret_placeholder);
            let value = args
                .get(&arg.name)
                .or(arg.value.as_ref())
                .or(secret.as_ref())
                .ok_or_else(|| Error::MissingArgument {
                    template: name.clone(),
                    arg: arg.name.clone(),
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
        Provider::Job(j) => ProviderSpec::Job {
            template: template.to_owned(),
            command: j.command.iter().chain(&j.args).map(|s| sub(s)).collect(),
            env: j.env.iter().map(|(k, v)| (k.clone(), sub(v))).collect(),
            backoff_limit: j.backoff_limit,
            deadline: j.deadline,
        },
    };
    // Argo judges a job by its status, not by conditions: succeeded passes, failed fails.
    let job = matches!(provider, ProviderSpec::Job { .. });
    let implicit = |given: &Option<manifest::Condition>, source: &str| {
        if job && given.is_none() {
            Some(manifest::Condition {
                source: source.to_owned(),
            })
        } else {
            given.clone()
        }
    };
    let success_condition = implicit(&metric.success_condition, "result.succeeded == true");
    let failure_condition = implicit(&metric.failure_condition, "result.succeeded == false");
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
        success: condition(&success_condition)?,
        failure: condition(&failure_condition)?,
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

    #[test]
    fn secrets_are_placeholders_until_the_request_and_hidden_after() {
        let placeholder = secret_placeholder(&manifest::SecretKeyRef {
            name: "metrics-auth".into(),
            key: "token".into(),
        });
        assert_eq!(placeholder, "{{secret:metrics-auth/token}}");
        let spec = ProviderSpec::Web {
            url: format!("https://m.example/{placeholder}/q"),
            method: HttpMethod::Get,
            headers: vec![("Authorization".into(), format!("Bearer {placeholder}"))],
            body: None,
            json_path: None,
            timeout: None,
            insecure: false,
        };
        let lookup = |name: &str, key: &str| -> Result<String, String> {
            match (name, key) {
                ("metrics-auth", "token") => Ok("t0ken".into()),
                _ => Err(format!("no {name}/{key}")),
            }
        };
        let (revealed, secrets) = reveal_secrets(&spec, &lookup).unwrap();
        let ProviderSpec::Web { url, headers, .. } = &revealed else {
            unreachable!()
        };
        assert_eq!(url, "https://m.example/t0ken/q");
        assert_eq!(headers[0].1, "Bearer t0ken");
        assert_eq!(secrets, ["t0ken"]);
        // What comes back is told without the value, in messages and in values alike.
        let hidden = redact_reading(
            crate::Reading::Error("https://m.example/t0ken/q answered 401".into()),
            &secrets,
        );
        assert_eq!(
            hidden,
            crate::Reading::Error("https://m.example/***/q answered 401".into())
        );
        let hidden = redact_reading(
            crate::Reading::Value(serde_json::json!({"echo": ["Bearer t0ken"], "n": 1})),
            &secrets,
        );
        assert_eq!(
            hidden,
            crate::Reading::Value(serde_json::json!({"echo": ["Bearer ***"], "n": 1}))
        );
        // A secret that cannot be read is the reason, and nothing is sent.
        let other = ProviderSpec::Prometheus {
            address: "http://p".into(),
            query: "{{secret:other/key}}".into(),
            timeout: None,
        };
        assert_eq!(reveal_secrets(&other, &lookup).unwrap_err(), "no other/key");
    }
}
