//! Argo Rollouts `Rollout` of an InferenceService: canary steps and analysis references.

use crate::decode::{At, Cx, Fields, Map};
use crate::diag::Code;
use crate::types::*;
use crate::validate::RefTarget;
use crate::yaml::NodeKind;

use super::{Doc, doc_ref, one_line};

// === Argo Rollouts Rollout ===

/// What a Rollout's `workloadRef` says, decided before the rest is decoded: crossfade only
/// acts on Rollouts of InferenceServices.
pub(crate) enum Workload {
    InferenceService,
    Other(String),
    Absent,
}

pub(crate) fn rollout_workload(spec: &At<'_>) -> Workload {
    let NodeKind::Map(entries) = &spec.node.kind else {
        return Workload::InferenceService;
    };
    let Some((_, w)) = entries
        .iter()
        .find(|(k, _)| k.scalar_text() == Some("workloadRef"))
    else {
        return Workload::Absent;
    };
    let NodeKind::Map(w) = &w.kind else {
        return Workload::InferenceService;
    };
    match w
        .iter()
        .find(|(k, _)| k.scalar_text() == Some("kind"))
        .and_then(|(_, v)| v.scalar_text())
    {
        Some("InferenceService") | None => Workload::InferenceService,
        Some(other) => Workload::Other(other.to_owned()),
    }
}

pub(crate) fn rollout(doc: &mut Doc<'_, '_>, meta: Meta, spec: &At<'_>) -> Option<Rollout> {
    let cx = &mut doc.cx;
    let spec = cx.map(
        spec,
        &Fields {
            known: &["workloadRef", "strategy", "template"],
            tolerated: &[
                "replicas",
                "selector",
                "minReadySeconds",
                "revisionHistoryLimit",
                "paused",
                "progressDeadlineSeconds",
                "progressDeadlineAbort",
                "restartAt",
                "rollbackWindow",
                "analysis",
            ],
        },
    )?;
    if let Some(t) = spec.get("template") {
        cx.warning(
            Code::IgnoredField,
            &t,
            "a Rollout of an InferenceService takes its pods from the InferenceService; `template` is ignored",
        );
    }
    let workload = spec.req(cx, "workloadRef").and_then(|w| {
        let m = cx.map(
            &w,
            &Fields {
                known: &["apiVersion", "kind", "name"],
                tolerated: &["scaleDown"],
            },
        )?;
        if let Some(a) = m.req(cx, "apiVersion")
            && let Some(v) = cx.string(&a)
                && v != "serving.kserve.io/v1beta1" {
                    cx.error(
                        Code::InvalidValue,
                        &a,
                        format!("an InferenceService workloadRef needs apiVersion serving.kserve.io/v1beta1, not {v}"),
                    );
                }
        m.req(cx, "kind");
        let name_at = m.req(cx, "name")?;
        let name = cx.nonempty_string(&name_at)?;
        Some((name, name_at))
    });
    if let Some((name, at)) = &workload {
        doc_ref(doc, RefTarget::InferenceService, name, at);
    }
    let cx = &mut doc.cx;
    let strategy = spec.req(cx, "strategy").and_then(|s| {
        cx.map(
            &s,
            &Fields {
                known: &["canary", "blueGreen"],
                tolerated: &[],
            },
        )
    })?;
    if let Some(bg) = strategy.get("blueGreen") {
        cx.error(
            Code::Unsupported,
            &bg,
            "blue-green is not supported for InferenceServices: use `canary` steps",
        );
        if !strategy.has("canary") {
            return None;
        }
    }
    let canary_at = strategy.req(cx, "canary")?;
    let canary = cx.map(
        &canary_at,
        &Fields {
            known: &["steps", "analysis"],
            tolerated: &[
                "stableService",
                "canaryService",
                "trafficRouting",
                "maxSurge",
                "maxUnavailable",
                "scaleDownDelaySeconds",
                "scaleDownDelayRevisionLimit",
                "abortScaleDownDelaySeconds",
                "antiAffinity",
                "canaryMetadata",
                "stableMetadata",
                "dynamicStableScale",
                "pingPong",
                "minPodsPerReplicaSet",
                "replicaProgressThreshold",
            ],
        },
    )?;
    let mut steps = Vec::new();
    let step_nodes = canary.get("steps").map(|a| cx.seq(&a)).unwrap_or_default();
    let mut steps_ok = true;
    for s in &step_nodes {
        match step(doc, s) {
            Some(st) => steps.push(st),
            None => steps_ok = false,
        }
    }
    let analysis = match canary.get("analysis") {
        Some(a) => {
            let cx = &mut doc.cx;
            let m = cx.map(
                &a,
                &Fields {
                    known: &["templates", "args", "startingStep"],
                    tolerated: &["dryRun", "measurementRetention", "analysisRunMetadata"],
                },
            )?;
            let starting_step = match m.get("startingStep") {
                Some(s) => {
                    let max = step_nodes.len() as i64;
                    doc.cx.int_in(&s, 0, max.max(0))? as u32
                }
                None => 0,
            };
            let analysis = analysis_ref(doc, &m)?;
            Some(BackgroundAnalysis {
                analysis,
                starting_step,
            })
        }
        None => None,
    };
    let (workload, _) = workload?;
    steps_ok.then_some(Rollout {
        meta,
        workload,
        canary: CanaryStrategy { steps, analysis },
    })
}

const STEP_KINDS: &[&str] = &[
    "setWeight",
    "pause",
    "analysis",
    "setHeaderRoute",
    "setMirrorRoute",
];
const UNSUPPORTED_STEPS: &[&str] = &["experiment", "setCanaryScale", "plugin"];

fn step(doc: &mut Doc<'_, '_>, at: &At<'_>) -> Option<Step> {
    let cx = &mut doc.cx;
    let m = cx.map(
        at,
        &Fields {
            known: STEP_KINDS,
            tolerated: UNSUPPORTED_STEPS,
        },
    )?;
    for key in UNSUPPORTED_STEPS {
        if let Some(a) = m.get_raw(key) {
            cx.error(
                Code::Unsupported,
                &a,
                format!("`{key}` steps are not supported by crossfade"),
            );
            return None;
        }
    }
    let (kind, a) = m.exactly_one(
        cx,
        STEP_KINDS,
        "a step needs one of setWeight, pause, analysis, setHeaderRoute, setMirrorRoute",
        "a step does exactly one thing: split this into separate steps",
    )?;
    match kind {
        "setWeight" => cx.percent(&a).map(Step::SetWeight),
        "pause" => {
            if a.node.is_null() {
                return Some(Step::Pause(None));
            }
            let p = cx.map(
                &a,
                &Fields {
                    known: &["duration"],
                    tolerated: &[],
                },
            )?;
            match p.get("duration") {
                Some(d) => cx.duration(&d).map(|d| Step::Pause(Some(d))),
                None => Some(Step::Pause(None)),
            }
        }
        "analysis" => {
            let m = cx.map(
                &a,
                &Fields {
                    known: &["templates", "args"],
                    tolerated: &["dryRun", "measurementRetention", "analysisRunMetadata"],
                },
            )?;
            analysis_ref(doc, &m).map(Step::Analysis)
        }
        "setHeaderRoute" => {
            let m = cx.map(
                &a,
                &Fields {
                    known: &["name", "match"],
                    tolerated: &[],
                },
            )?;
            let name = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a));
            let mut matches = Vec::new();
            for hm in cx.maps_in(
                m.get("match"),
                &Fields {
                    known: &["headerName", "headerValue"],
                    tolerated: &[],
                },
            ) {
                let header_name = hm
                    .req(cx, "headerName")
                    .and_then(|a| cx.nonempty_string(&a));
                let value = hm.req(cx, "headerValue").and_then(|a| string_match(cx, &a));
                if let (Some(header_name), Some(value)) = (header_name, value) {
                    matches.push(HeaderMatch { header_name, value });
                }
            }
            Some(Step::SetHeaderRoute(HeaderRoute {
                name: name?,
                matches,
            }))
        }
        "setMirrorRoute" => {
            let m = cx.map(
                &a,
                &Fields {
                    known: &["name", "percentage", "match"],
                    tolerated: &[],
                },
            )?;
            let name = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a));
            let percentage = m.get("percentage").and_then(|a| cx.percent(&a));
            // Argo mirrors a request that matches any one entry; the data plane matches one
            // set of headers, all of which must match: refused rather than widened or narrowed.
            if let Some(list) = m.get("match")
                && let NodeKind::Seq(items) = &list.node.kind
                && items.len() > 1
            {
                let d = cx.error(
                    Code::Unsupported,
                    &list,
                    format!(
                        "setMirrorRoute with {} `match` entries (a request matching any one) is not \
                         supported",
                        items.len()
                    ),
                );
                d.hint = Some(
                    "give one entry whose headers must all match, or one mirror route per entry"
                        .into(),
                );
            }
            let mut matches = Vec::new();
            for rm in cx.maps_in(
                m.get("match"),
                &Fields {
                    known: &["headers", "method", "path"],
                    tolerated: &[],
                },
            ) {
                for key in ["method", "path"] {
                    if let Some(x) = rm.get(key) {
                        cx.warning(
                            Code::IgnoredField,
                            &x,
                            format!("mirror matching on `{key}` is not supported: every inference request is a POST to the model's route"),
                        );
                    }
                }
                if let Some(h) = rm.get("headers")
                    && let NodeKind::Map(entries) = &h.node.kind
                {
                    for (k, v) in entries {
                        let vat = At {
                            node: v,
                            path: format!("{}.{}", h.path, k.scalar_text().unwrap_or_default()),
                            key_span: Some(k.span),
                        };
                        if let Some(value) = string_match(cx, &vat) {
                            matches.push(HeaderMatch {
                                header_name: k.scalar_text().unwrap_or_default().to_owned(),
                                value,
                            });
                        }
                    }
                }
            }
            Some(Step::SetMirrorRoute(MirrorRoute {
                name: name?,
                percentage,
                matches,
            }))
        }
        _ => None,
    }
}

fn string_match(cx: &mut Cx<'_>, at: &At<'_>) -> Option<StringMatch> {
    let m = cx.map(
        at,
        &Fields {
            known: &["exact", "prefix", "regex"],
            tolerated: &[],
        },
    )?;
    let (kind, a) = m.exactly_one(
        cx,
        &["exact", "prefix", "regex"],
        "give one of `exact`, `prefix` or `regex`",
        "give only one of `exact`, `prefix` or `regex`",
    )?;
    let value = cx.string(&a)?;
    match kind {
        "exact" => Some(StringMatch::Exact(value)),
        "prefix" => Some(StringMatch::Prefix(value)),
        _ => match regex::Regex::new(&value) {
            Ok(_) => Some(StringMatch::Regex(value)),
            Err(e) => {
                cx.error(
                    Code::InvalidValue,
                    &a,
                    format!("invalid regular expression: {}", one_line(&e.to_string())),
                );
                None
            }
        },
    }
}

fn analysis_ref(doc: &mut Doc<'_, '_>, m: &Map<'_>) -> Option<AnalysisRef> {
    let cx = &mut doc.cx;
    let templates_at = m.req(cx, "templates")?;
    let items = cx.seq(&templates_at);
    if items.is_empty() {
        cx.error(
            Code::MissingField,
            &templates_at,
            "`templates` is empty: name at least one AnalysisTemplate",
        );
    }
    let args = match m.get("args") {
        Some(a) => rollout_args(cx, &a),
        None => Vec::new(),
    };
    let mut templates = Vec::new();
    for item in &items {
        let cx = &mut doc.cx;
        let Some(t) = cx.map(
            item,
            &Fields {
                known: &["templateName", "clusterScope"],
                tolerated: &[],
            },
        ) else {
            continue;
        };
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
        let target = if cluster_scope {
            RefTarget::ClusterAnalysisTemplate
        } else {
            RefTarget::AnalysisTemplate
        };
        let given: Vec<String> = args.iter().map(|a| a.name.clone()).collect();
        let r = doc_ref(doc, target, &template_name, &name_at);
        doc.index.refs[r].args_given = Some(given);
        templates.push(TemplateRef {
            template_name,
            cluster_scope,
        });
    }
    (templates.len() == items.len() && !items.is_empty()).then_some(AnalysisRef { templates, args })
}

fn rollout_args(cx: &mut Cx<'_>, at: &At<'_>) -> Vec<RolloutArg> {
    let mut out = Vec::new();
    for item in cx.seq(at) {
        let Some(m) = cx.map(
            &item,
            &Fields {
                known: &["name", "value", "valueFrom"],
                tolerated: &[],
            },
        ) else {
            continue;
        };
        let Some(name) = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a)) else {
            continue;
        };
        let value = if let Some(v) = m.get("value") {
            cx.string(&v).map(RolloutArgValue::Value)
        } else if let Some(vf) = m.get("valueFrom") {
            cx.map(
                &vf,
                &Fields {
                    known: &["podTemplateHashValue", "fieldRef"],
                    tolerated: &[],
                },
            )
            .and_then(|vf| {
                if let Some(p) = vf.get("podTemplateHashValue") {
                    cx.one_of(
                        &p,
                        &[
                            ("Stable", RevisionSelector::Stable),
                            ("Latest", RevisionSelector::Canary),
                        ],
                    )
                    .map(RolloutArgValue::RevisionName)
                } else if let Some(f) = vf.get("fieldRef") {
                    let fm = cx.map(
                        &f,
                        &Fields {
                            known: &["fieldPath"],
                            tolerated: &[],
                        },
                    )?;
                    let at = fm.req(cx, "fieldPath")?;
                    let path = cx.nonempty_string(&at)?;
                    if field_ref(&path).is_none() {
                        cx.error(
                            Code::Unsupported,
                            &at,
                            format!("fieldPath `{path}` is not one crossfade resolves"),
                        )
                        .hint = Some(
                            "use metadata.name, metadata.namespace, spec.workloadRef.name, metadata.labels['<key>'] or metadata.annotations['<key>']".into(),
                        );
                        return None;
                    }
                    Some(RolloutArgValue::FieldRef(path))
                } else {
                    cx.error(
                        Code::MissingField,
                        &vf.at,
                        "`valueFrom` needs `podTemplateHashValue` or `fieldRef`",
                    );
                    None
                }
            })
        } else {
            cx.error(
                Code::MissingField,
                &item,
                format!("argument `{name}` needs a `value` or `valueFrom`"),
            );
            None
        };
        if let Some(value) = value {
            out.push(RolloutArg { name, value });
        }
    }
    out
}
