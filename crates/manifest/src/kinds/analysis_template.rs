//! Argo Rollouts `AnalysisTemplate` and `ClusterAnalysisTemplate`: metrics, providers and
//! conditions.

use std::time::Duration;

use crate::decode::{At, Cx, Fields, Map};
use crate::diag::Code;
use crate::types::*;
use crate::yaml::{NodeKind, Resolved};

use super::{CONTAINER_TOLERATED, Doc, one_line};
use crate::validate::{RefTarget, UnsupportedMetric};

// === Argo Rollouts AnalysisTemplate / ClusterAnalysisTemplate ===

const UNSUPPORTED_PROVIDERS: &[&str] = &[
    "datadog",
    "newRelic",
    "wavefront",
    "kayenta",
    "cloudWatch",
    "graphite",
    "influxdb",
    "skywalking",
    "plugin",
];

/// `valueFrom.secretKeyRef`: a Secret's name (a DNS subdomain) and key (letters, digits, `-`,
/// `_`, `.`), so that `<dir>/<name>/<key>` stays inside the secrets directory.
fn secret_key_ref(cx: &mut Cx<'_>, vf: &At<'_>) -> Option<SecretKeyRef> {
    let vf = cx.map(
        vf,
        &Fields {
            known: &["secretKeyRef", "fieldRef"],
            tolerated: &[],
        },
    )?;
    let at = vf.get("secretKeyRef")?;
    let r = cx.map(
        &at,
        &Fields {
            known: &["name", "key"],
            tolerated: &["optional"],
        },
    )?;
    let name = r.req(cx, "name").and_then(|a| {
        let v = cx.nonempty_string(&a)?;
        let ok = v.len() <= 253
            && v.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !ok {
            cx.error(
                Code::InvalidValue,
                &a,
                format!("`{v}` is not a Secret name (lower-case letters, digits, `-` and `.`)"),
            );
            return None;
        }
        Some(v)
    });
    let key = r.req(cx, "key").and_then(|a| {
        let v = cx.nonempty_string(&a)?;
        let ok = v != "."
            && v != ".."
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            cx.error(
                Code::InvalidValue,
                &a,
                format!("`{v}` is not a Secret key (letters, digits, `-`, `_` and `.`)"),
            );
            return None;
        }
        Some(v)
    });
    Some(SecretKeyRef {
        name: name?,
        key: key?,
    })
}

pub(crate) fn analysis_template(
    doc: &mut Doc<'_, '_>,
    meta: Meta,
    spec: &At<'_>,
    cluster_scoped: bool,
) -> Option<AnalysisTemplate> {
    let cx = &mut doc.cx;
    let spec = cx.map(
        spec,
        &Fields {
            known: &["args", "metrics", "dryRun", "templates"],
            tolerated: &["measurementRetention"],
        },
    )?;
    let mut args = Vec::new();
    for m in cx.maps_in(
        spec.get("args"),
        &Fields {
            known: &["name", "value", "valueFrom"],
            tolerated: &[],
        },
    ) {
        let Some(name) = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a)) else {
            continue;
        };
        let value = m.get("value").and_then(|a| cx.string(&a));
        let value_from = m.has("valueFrom");
        let secret = m.get("valueFrom").and_then(|vf| secret_key_ref(cx, &vf));
        args.push(TemplateArg {
            name,
            value,
            value_from,
            secret,
        });
    }
    let mut dry_run_patterns = Vec::new();
    for m in cx.maps_in(
        spec.get("dryRun"),
        &Fields {
            known: &["metricName"],
            tolerated: &[],
        },
    ) {
        if let Some(name) = m.req(cx, "metricName").and_then(|a| cx.nonempty_string(&a)) {
            match regex::Regex::new(&format!("^(?:{name})$")) {
                Ok(re) => dry_run_patterns.push(re),
                Err(e) => {
                    let at = m.get("metricName").expect("just read");
                    cx.error(
                        Code::InvalidValue,
                        &at,
                        format!("invalid metric name pattern: {}", one_line(&e.to_string())),
                    );
                }
            }
        }
    }
    // Composed of other templates (Argo's `spec.templates`), with or without metrics of its
    // own.
    let mut templates = Vec::new();
    for t in cx.maps_in(
        spec.get("templates"),
        &Fields {
            known: &["templateName", "clusterScope"],
            tolerated: &[],
        },
    ) {
        let cluster_scope = t
            .get("clusterScope")
            .and_then(|a| cx.bool(&a))
            .unwrap_or(false);
        let Some(name_at) = t.req(cx, "templateName") else {
            continue;
        };
        let Some(template_name) = cx.nonempty_string(&name_at) else {
            continue;
        };
        if cluster_scoped && !cluster_scope {
            cx.error(
                Code::InvalidValue,
                &name_at,
                "a ClusterAnalysisTemplate can only be composed of ClusterAnalysisTemplates",
            )
            .hint =
                Some("add `clusterScope: true`, or make this a namespaced AnalysisTemplate".into());
        }
        templates.push((
            TemplateRef {
                template_name,
                cluster_scope,
            },
            name_at.span(),
            name_at.path.clone(),
        ));
    }
    let cx = &mut doc.cx;
    let composed = !templates.is_empty();
    let items = match spec.get("metrics") {
        Some(metrics_at) => {
            let items = cx.seq(&metrics_at);
            if items.is_empty() && !composed {
                cx.error(
                    Code::MissingField,
                    &metrics_at,
                    "`metrics` is empty: a template needs at least one metric",
                );
            }
            items
        }
        None if composed => Vec::new(),
        None => {
            spec.req(cx, "metrics")?;
            return None;
        }
    };
    let mut metrics = Vec::new();
    for item in &items {
        let before = doc.cx.diags.len();
        if let Some(mut m) = metric(&mut doc.cx, item, &args) {
            m.dry_run |= dry_run_patterns.iter().any(|re| re.is_match(&m.name));
            metrics.push(m);
        }
        // Whether an unsupported provider fails lint depends on whether a Rollout uses the
        // template: `validate` decides.
        for (i, d) in doc.cx.diags.iter().enumerate().skip(before) {
            if d.code == Code::Unsupported && d.field.contains(".provider.") {
                doc.index.unsupported_metrics.push(UnsupportedMetric {
                    cluster_scoped,
                    namespace: doc.namespace.clone(),
                    template: meta.name.clone(),
                    diagnostic: i,
                });
            }
        }
    }
    let mut refs = Vec::with_capacity(templates.len());
    for (t, span, field) in templates {
        let target = if t.cluster_scope {
            RefTarget::ClusterAnalysisTemplate
        } else {
            RefTarget::AnalysisTemplate
        };
        doc.index.refs.push(crate::validate::Ref {
            target,
            namespace: doc.namespace.clone(),
            name: t.template_name.clone(),
            file: doc.cx.file,
            span,
            field,
            args_given: None,
            from_template: Some((cluster_scoped, meta.name.clone())),
        });
        refs.push(t);
    }
    (metrics.len() == items.len() && (!items.is_empty() || !refs.is_empty())).then_some(
        AnalysisTemplate {
            meta,
            cluster_scoped,
            args,
            metrics,
            templates: refs,
        },
    )
}

fn metric(cx: &mut Cx<'_>, at: &At<'_>, args: &[TemplateArg]) -> Option<Metric> {
    let m = cx.map(
        at,
        &Fields {
            known: &[
                "name",
                "interval",
                "initialDelay",
                "count",
                "successCondition",
                "failureCondition",
                "failureLimit",
                "inconclusiveLimit",
                "consecutiveErrorLimit",
                "dryRun",
                "provider",
            ],
            tolerated: &[],
        },
    )?;
    check_placeholders(cx, at, args);
    let name = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a));
    let interval = m.get("interval").and_then(|a| templated_duration(cx, &a));
    let initial_delay = m
        .get("initialDelay")
        .and_then(|a| templated_duration(cx, &a));
    let count = m.get("count").and_then(|a| templated_count(cx, &a));
    let success_condition = m.get("successCondition").and_then(|a| condition(cx, &a));
    let failure_condition = m.get("failureCondition").and_then(|a| condition(cx, &a));
    let limit = |cx: &mut Cx<'_>, key, default| match m.get(key) {
        Some(a) => templated_count(cx, &a),
        None => Some(Templated::Value(default)),
    };
    let failure_limit = limit(cx, "failureLimit", 0);
    let inconclusive_limit = limit(cx, "inconclusiveLimit", 0);
    let consecutive_error_limit = limit(cx, "consecutiveErrorLimit", 4);
    let dry_run = m.get("dryRun").and_then(|a| cx.bool(&a)).unwrap_or(false);
    let provider = m.req(cx, "provider").and_then(|a| provider(cx, &a));
    Some(Metric {
        name: name?,
        interval,
        initial_delay,
        count,
        success_condition,
        failure_condition,
        failure_limit: failure_limit?,
        inconclusive_limit: inconclusive_limit?,
        consecutive_error_limit: consecutive_error_limit?,
        dry_run,
        provider: provider?,
    })
}

/// `provider.job`: `spec.template.spec.containers[0]` with a `command`.
fn job_provider(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Provider> {
    let job = cx.map(
        at,
        &Fields {
            known: &["spec"],
            tolerated: &["metadata"],
        },
    )?;
    let spec_at = job.req(cx, "spec")?;
    let spec = cx.map(
        &spec_at,
        &Fields {
            known: &["template", "backoffLimit", "activeDeadlineSeconds"],
            tolerated: &[
                "ttlSecondsAfterFinished",
                "completions",
                "parallelism",
                "podFailurePolicy",
            ],
        },
    )?;
    let backoff_limit = match spec.get("backoffLimit") {
        Some(a) => cx.int_in(&a, 0, 100).map(|n| n as u32),
        None => Some(6),
    };
    let deadline = match spec.get("activeDeadlineSeconds") {
        Some(a) => cx
            .int_in(&a, 1, 86_400)
            .map(|s| Duration::from_secs(s as u64)),
        None => Some(Duration::from_secs(600)),
    };
    let template_at = spec.req(cx, "template")?;
    let template = cx.map(
        &template_at,
        &Fields {
            known: &["spec"],
            tolerated: &["metadata"],
        },
    )?;
    let pod_at = template.req(cx, "spec")?;
    let pod = cx.map(
        &pod_at,
        &Fields {
            known: &["containers", "restartPolicy"],
            tolerated: &[
                "serviceAccountName",
                "volumes",
                "nodeSelector",
                "tolerations",
                "affinity",
                "securityContext",
                "imagePullSecrets",
                "initContainers",
            ],
        },
    )?;
    let containers_at = pod.req(cx, "containers")?;
    let containers = cx.seq(&containers_at);
    let Some(first) = containers.first() else {
        cx.error(
            Code::MissingField,
            &containers_at,
            "`containers` is empty: the job needs one container",
        );
        return None;
    };
    if containers.len() > 1 {
        cx.warning(
            Code::IgnoredField,
            &containers[1],
            "crossfade runs only the first container of a job",
        );
    }
    let c = cx.map(
        first,
        &Fields {
            known: &["name", "image", "command", "args", "env"],
            tolerated: CONTAINER_TOLERATED,
        },
    )?;
    let command = c.get("command").map(|a| cx.strings(&a)).unwrap_or_default();
    let args = c.get("args").map(|a| cx.strings(&a)).unwrap_or_default();
    if command.is_empty() {
        let d = cx.error(
            Code::Unsupported,
            first,
            "no `command`: crossfade runs a job as a local process and cannot run an image's entrypoint",
        );
        d.field = format!("{}.command", first.path);
        d.hint = Some("give the check's command line in `command` (and `args`)".into());
        return None;
    }
    if let Some(at) = c.get("command") {
        let d = cx.warning(
            Code::RunsCommand,
            &at,
            format!(
                "this job runs a command on the serving machine ({}), as crossfade's user",
                command[0]
            ),
        );
        d.hint = Some(
            "crossfade up runs it only with --allow-runtime-commands or when a \
             --runtime-allowlist file lists `job/<template name>` with its program"
                .into(),
        );
    }
    let mut env = Vec::new();
    for m in cx.maps_in(
        c.get("env"),
        &Fields {
            known: &["name", "value", "valueFrom"],
            tolerated: &[],
        },
    ) {
        let name = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a));
        if let Some(vf) = m.get("valueFrom") {
            cx.warning(
                Code::Unsupported,
                &vf,
                "`valueFrom` is not resolved locally; the variable is not set",
            );
            continue;
        }
        let value = m
            .get("value")
            .and_then(|a| cx.string(&a))
            .unwrap_or_default();
        if let Some(name) = name {
            env.push((name, value));
        }
    }
    Some(Provider::Job(JobProvider {
        command,
        args,
        env,
        backoff_limit: backoff_limit?,
        deadline: deadline?,
    }))
}

fn provider(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Provider> {
    let m = cx.map(
        at,
        &Fields {
            known: &["prometheus", "web", "crossfade", "job"],
            tolerated: UNSUPPORTED_PROVIDERS,
        },
    )?;
    for key in UNSUPPORTED_PROVIDERS {
        if let Some(a) = m.get_raw(key) {
            cx.error(
                Code::Unsupported,
                &a,
                format!("the `{key}` metric provider is not supported"),
            )
            .hint = Some("use `prometheus`, `web` (any HTTP JSON source), `job` (a command) or `crossfade` (the gateway's own measurements)".into());
            return None;
        }
    }
    let (kind, a) = m.exactly_one(
        cx,
        &["prometheus", "web", "crossfade", "job"],
        "a provider needs one of `prometheus`, `web`, `job` or `crossfade`",
        "a metric has exactly one provider",
    )?;
    match kind {
        "job" => job_provider(cx, &a),
        "prometheus" => {
            let p = cx.map(
                &a,
                &Fields {
                    known: &["address", "query", "timeout"],
                    tolerated: &["insecure", "headers", "authentication", "rangeQuery"],
                },
            )?;
            if let Some(r) = p.get("rangeQuery") {
                cx.warning(
                    Code::IgnoredField,
                    &r,
                    "range queries are not supported; the query runs as an instant query",
                );
            }
            let address = p.req(cx, "address").and_then(|a| cx.nonempty_string(&a));
            let query = p.req(cx, "query").and_then(|a| cx.nonempty_string(&a));
            let timeout = p
                .get("timeout")
                .and_then(|a| cx.int_in(&a, 1, 3600))
                .map(|s| Duration::from_secs(s as u64));
            Some(Provider::Prometheus(PrometheusProvider {
                address: address?,
                query: query?,
                timeout,
            }))
        }
        "web" => {
            let w = cx.map(
                &a,
                &Fields {
                    known: &[
                        "url",
                        "method",
                        "headers",
                        "body",
                        "jsonBody",
                        "jsonPath",
                        "timeoutSeconds",
                        "insecure",
                    ],
                    tolerated: &["authentication"],
                },
            )?;
            let url = w.req(cx, "url").and_then(|a| cx.nonempty_string(&a));
            let method = match w.get("method") {
                Some(a) => cx.one_of(
                    &a,
                    &[
                        ("GET", HttpMethod::Get),
                        ("POST", HttpMethod::Post),
                        ("PUT", HttpMethod::Put),
                    ],
                ),
                None => Some(HttpMethod::Get),
            };
            let mut headers = Vec::new();
            for hm in cx.maps_in(
                w.get("headers"),
                &Fields {
                    known: &["key", "value"],
                    tolerated: &[],
                },
            ) {
                let key = hm.req(cx, "key").and_then(|a| cx.nonempty_string(&a));
                let value = hm.req(cx, "value").and_then(|a| cx.string(&a));
                if let (Some(k), Some(v)) = (key, value) {
                    headers.push((k, v));
                }
            }
            let body = match (w.get("body"), w.get("jsonBody")) {
                (Some(b), None) => cx.string(&b),
                (None, Some(j)) => Some(to_json(j.node)),
                (Some(_), Some(j)) => {
                    cx.error(
                        Code::InvalidValue,
                        &j,
                        "give `body` or `jsonBody`, not both",
                    );
                    None
                }
                (None, None) => None,
            };
            let json_path = w.get("jsonPath").and_then(|a| cx.nonempty_string(&a));
            let timeout = w
                .get("timeoutSeconds")
                .and_then(|a| cx.int_in(&a, 1, 3600))
                .map(|s| Duration::from_secs(s as u64));
            let insecure = w.get("insecure").and_then(|a| cx.bool(&a)).unwrap_or(false);
            Some(Provider::Web(WebProvider {
                url: url?,
                method: method?,
                headers,
                body,
                json_path,
                timeout,
                insecure,
            }))
        }
        _ => {
            let c = cx.map(
                &a,
                &Fields {
                    known: &[
                        "metric",
                        "revision",
                        "window",
                        "quantile",
                        "compare",
                        "tolerance",
                        "minSample",
                        "confidence",
                    ],
                    tolerated: &[],
                },
            )?;
            let metric = c.req(cx, "metric").and_then(|a| {
                cx.one_of(
                    &a,
                    &[
                        ("success-rate", BuiltinMetric::SuccessRate),
                        ("error-rate", BuiltinMetric::ErrorRate),
                        ("client-error-rate", BuiltinMetric::ClientErrorRate),
                        ("latency", BuiltinMetric::Latency),
                        ("request-rate", BuiltinMetric::RequestRate),
                        ("mirror-agreement", BuiltinMetric::MirrorAgreement),
                        ("mirror-distance", BuiltinMetric::MirrorDistance),
                        ("prediction-drift", BuiltinMetric::PredictionDrift),
                    ],
                )
            });
            let revision = match c.get("revision") {
                Some(a) => cx.one_of(
                    &a,
                    &[
                        ("canary", RevisionSelector::Canary),
                        ("stable", RevisionSelector::Stable),
                    ],
                ),
                None => Some(RevisionSelector::Canary),
            };
            let window = match c.get("window") {
                Some(a) => cx.duration(&a).filter(|d| {
                    let ok = !d.is_zero();
                    if !ok {
                        cx.error(Code::OutOfRange, &a, "the window must be longer than zero");
                    }
                    ok
                }),
                None => Some(Duration::from_secs(60)),
            };
            let quantile = match c.get("quantile") {
                Some(a) => {
                    if metric.is_some_and(|m| m != BuiltinMetric::Latency) {
                        cx.warning(
                            Code::IgnoredField,
                            &a,
                            "`quantile` applies to the latency metric only",
                        );
                    }
                    cx.number(&a).filter(|q| {
                        let ok = *q > 0.0 && *q <= 1.0;
                        if !ok {
                            cx.error(
                                Code::OutOfRange,
                                &a,
                                format!("{q} is out of range: a quantile is in (0, 1]"),
                            );
                        }
                        ok
                    })
                }
                None => Some(0.99),
            };
            let compare = builtin_compare(cx, &c, metric)?;
            if compare.is_some()
                && let Some(a) = c.get("revision")
            {
                cx.warning(
                    Code::IgnoredField,
                    &a,
                    "with `compare: stable` the canary is judged against the stable revision; `revision` is ignored",
                );
            }
            Some(Provider::Crossfade(BuiltinProvider {
                metric: metric?,
                revision: revision?,
                window: window?,
                quantile: quantile?,
                compare,
            }))
        }
    }
}

/// `compare`, `tolerance`, `minSample` and `confidence` of a `crossfade` provider: `Some(None)`
/// without `compare`, `None` when they are wrong (reported).
fn builtin_compare(
    cx: &mut Cx<'_>,
    c: &Map<'_>,
    metric: Option<BuiltinMetric>,
) -> Option<Option<Compare>> {
    let judged = ["tolerance", "minSample", "confidence"];
    let Some(a) = c.get("compare") else {
        if metric == Some(BuiltinMetric::PredictionDrift)
            && let Some(m) = c.get("metric")
        {
            cx.error(
                Code::MissingField,
                &m,
                "prediction-drift compares the canary's predictions with stable's: add `compare: stable`",
            );
            return None;
        }
        for name in judged {
            if let Some(a) = c.get(name) {
                cx.warning(
                    Code::IgnoredField,
                    &a,
                    format!("`{name}` applies with `compare: stable` only"),
                );
            }
        }
        return Some(None);
    };
    cx.one_of(&a, &[("stable", ())])?;
    if let Some(m) = metric
        && matches!(
            m,
            BuiltinMetric::RequestRate | BuiltinMetric::MirrorDistance
        )
    {
        cx.error(
            Code::OutOfRange,
            &a,
            "request-rate and mirror-distance cannot be judged against stable: compare error-rate, client-error-rate, success-rate, latency, mirror-agreement or prediction-drift",
        );
        return None;
    }
    let positive = |cx: &mut Cx<'_>, name: &str, at: &At<'_>, ok: fn(f64) -> bool, range: &str| {
        cx.number(at).filter(|v| {
            let good = ok(*v);
            if !good {
                cx.error(
                    Code::OutOfRange,
                    at,
                    format!("{v} is out of range: `{name}` is {range}"),
                );
            }
            good
        })
    };
    let tolerance = match c.get("tolerance") {
        Some(a) if metric == Some(BuiltinMetric::PredictionDrift) => Some(positive(
            cx,
            "tolerance",
            &a,
            |v| v > 0.0 && v.is_finite(),
            "the largest PSI and KS distance tolerated, more than 0",
        )?),
        Some(a) if metric == Some(BuiltinMetric::MirrorAgreement) => Some(positive(
            cx,
            "tolerance",
            &a,
            |v| (0.0..1.0).contains(&v),
            "the share of mirrored requests allowed to disagree, in [0, 1)",
        )?),
        Some(a) => Some(positive(
            cx,
            "tolerance",
            &a,
            |v| v >= 1.0 && v.is_finite(),
            "a factor of stable's figure, 1 or more",
        )?),
        None => None,
    };
    let min_sample = match c.get("minSample") {
        Some(a) => {
            let n = cx.int(&a)?;
            if n < 1 {
                cx.error(
                    Code::OutOfRange,
                    &a,
                    format!("{n} is out of range: `minSample` is 1 or more"),
                );
                return None;
            }
            Some(n as u64)
        }
        None => None,
    };
    let confidence = match c.get("confidence") {
        Some(a) => Some(positive(
            cx,
            "confidence",
            &a,
            |v| v > 0.0 && v < 1.0,
            "in (0, 1), such as 0.95",
        )?),
        None => None,
    };
    Some(Some(Compare {
        tolerance,
        min_sample,
        confidence,
        window_given: c.get("window").is_some(),
    }))
}

fn is_placeholder(s: &str) -> bool {
    s.contains("{{")
}

fn templated_duration(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Templated<Duration>> {
    if let Some(Resolved::Str(s)) = at.node.resolve()
        && is_placeholder(s)
    {
        return Some(Templated::Arg(s.to_owned()));
    }
    cx.duration(at).map(Templated::Value)
}

fn templated_count(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Templated<u32>> {
    let value = match at.node.resolve() {
        Some(Resolved::Str(s)) if is_placeholder(s) => return Some(Templated::Arg(s.to_owned())),
        Some(Resolved::Str(s)) if s.trim().parse::<i64>().is_ok() => s.trim().parse::<i64>().ok(),
        _ => cx.int(at),
    }?;
    if !(0..=i64::from(u32::MAX)).contains(&value) {
        cx.error(
            Code::OutOfRange,
            at,
            format!("{value} is out of range: must be 0 or more"),
        );
        return None;
    }
    Some(Templated::Value(value as u32))
}

/// Checks that a condition parses in Argo's expression language. `{{args.x}}` placeholders are
/// replaced by an identifier of the same length first, so positions stay right.
fn condition(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Condition> {
    let source = cx.nonempty_string(at)?;
    let masked = mask_placeholders(&source);
    match expr::compile(&masked) {
        Ok(_) => Some(Condition { source }),
        Err(e) => {
            let detail = match &e {
                expr::Error::PestError(p) => {
                    let col = match p.line_col {
                        pest::error::LineColLocation::Pos((_, c))
                        | pest::error::LineColLocation::Span((_, c), _) => c,
                    };
                    let expected = match &p.variant {
                        pest::error::ErrorVariant::ParsingError { .. } => "unexpected input",
                        pest::error::ErrorVariant::CustomError { message } => message.as_str(),
                    };
                    format!("{expected} at character {col}")
                }
                other => one_line(&other.to_string()),
            };
            cx.error(
                Code::InvalidCondition,
                at,
                format!("the condition `{source}` does not parse: {detail}"),
            )
            .hint = Some("conditions use Argo's expression language, e.g. `result[0] >= 0.95` or `len(result) > 0 && all(result, {# < 0.5})`".into());
            None
        }
    }
}

fn mask_placeholders(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let width = rest[start..start + len + 2].chars().count();
        out.push_str(&"_".repeat(width));
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Reports `{{args.name}}` placeholders that name no declared argument.
fn check_placeholders(cx: &mut Cx<'_>, at: &At<'_>, args: &[TemplateArg]) {
    match &at.node.kind {
        NodeKind::Scalar { value, .. } => {
            let mut rest = value.as_str();
            while let Some(start) = rest.find("{{") {
                let Some(len) = rest[start..].find("}}") else {
                    break;
                };
                let inner = rest[start + 2..start + len].trim();
                if let Some(name) = inner.strip_prefix("args.")
                    && !args.iter().any(|a| a.name == name)
                {
                    cx.error(
                            Code::MissingArgument,
                            at,
                            format!("`{{{{{inner}}}}}` uses argument `{name}`, which the template does not declare"),
                        )
                        .hint = Some(format!("declare it under spec.args: `- name: {name}`"));
                }
                rest = &rest[start + len + 2..];
            }
        }
        NodeKind::Seq(items) => {
            for (i, node) in items.iter().enumerate() {
                let child = At {
                    node,
                    path: format!("{}[{i}]", at.path),
                    key_span: Some(node.span),
                };
                check_placeholders(cx, &child, args);
            }
        }
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                let child = At {
                    node: v,
                    path: format!("{}.{}", at.path, k.scalar_text().unwrap_or_default()),
                    key_span: Some(k.span),
                };
                check_placeholders(cx, &child, args);
            }
        }
    }
}

/// Serialises a YAML node as JSON (for `jsonBody`).
fn to_json(node: &crate::yaml::Node) -> String {
    fn quote(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn go(node: &crate::yaml::Node, out: &mut String) {
        match &node.kind {
            NodeKind::Scalar { value, .. } => match node.resolve() {
                Some(Resolved::Null) => out.push_str("null"),
                Some(Resolved::Bool(b)) => out.push_str(if b { "true" } else { "false" }),
                Some(Resolved::Int(i)) => out.push_str(&i.to_string()),
                Some(Resolved::Float(f)) if f.is_finite() => out.push_str(&f.to_string()),
                _ => quote(value, out),
            },
            NodeKind::Seq(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go(item, out);
                }
                out.push(']');
            }
            NodeKind::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    quote(k.scalar_text().unwrap_or_default(), out);
                    out.push(':');
                    go(v, out);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    go(node, &mut out);
    out
}
