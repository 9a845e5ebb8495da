//! Checks that span resources: duplicates, references that resolve, template arguments given.

use std::collections::HashMap;

use crate::diag::{Code, Diagnostic, Related};
use crate::source::{FileId, Span};
use crate::{Kind, Manifests};

/// Every definition and reference seen while decoding, with where it was written.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub defs: Vec<Def>,
    pub refs: Vec<Ref>,
    /// Model formats of predictors that name no `runtime`.
    pub formats: Vec<FormatUse>,
}

/// A predictor that needs a runtime chosen by model format.
#[derive(Debug)]
pub(crate) struct FormatUse {
    pub namespace: String,
    pub format: String,
    pub file: FileId,
    pub span: Span,
    pub field: String,
}

/// A resource definition: its identity and the span of its `metadata.name`.
#[derive(Debug)]
pub(crate) struct Def {
    pub kind: Kind,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
    pub file: FileId,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefTarget {
    InferenceService,
    AnalysisTemplate,
    ClusterAnalysisTemplate,
    /// A ServingRuntime in the namespace or a ClusterServingRuntime.
    ServingRuntime,
}

/// A reference from one resource to another by name.
#[derive(Debug)]
pub(crate) struct Ref {
    pub target: RefTarget,
    /// Namespace of the referring resource.
    pub namespace: String,
    pub name: String,
    pub file: FileId,
    pub span: Span,
    pub field: String,
    /// For template references: the argument names the Rollout gives.
    pub args_given: Option<Vec<String>>,
}

pub(crate) fn check(index: &Index, manifests: &Manifests, diags: &mut Vec<Diagnostic>) {
    check_duplicates(index, diags);
    check_refs(index, manifests, diags);
    check_rollout_targets(index, manifests, diags);
    check_runtimes(index, manifests, diags);
}

fn check_duplicates(index: &Index, diags: &mut Vec<Diagnostic>) {
    let mut first: HashMap<(Kind, Option<&str>, &str), &Def> = HashMap::new();
    for def in &index.defs {
        let key = (def.kind, def.namespace.as_deref(), def.name.as_str());
        match first.get(&key) {
            None => {
                first.insert(key, def);
            }
            Some(prev) => {
                let ns = def
                    .namespace
                    .as_deref()
                    .map(|n| format!(" in namespace {n}"))
                    .unwrap_or_default();
                diags.push(
                    Diagnostic::error(
                        Code::DuplicateResource,
                        def.file,
                        def.span,
                        format!("{} `{}`{ns} is defined twice", def.kind.as_str(), def.name),
                    )
                    .with_field("metadata.name")
                    .with_related(Related {
                        file: prev.file,
                        span: prev.span,
                        message: "first defined here".into(),
                    })
                    .with_hint("rename one of them or delete the copy"),
                );
            }
        }
    }
}

fn find<'a>(index: &'a Index, kind: Kind, namespace: Option<&str>, name: &str) -> Option<&'a Def> {
    index
        .defs
        .iter()
        .find(|d| d.kind == kind && d.namespace.as_deref() == namespace && d.name == name)
}

fn check_refs(index: &Index, manifests: &Manifests, diags: &mut Vec<Diagnostic>) {
    for r in &index.refs {
        let ns = Some(r.namespace.as_str());
        let (found, what) = match r.target {
            RefTarget::InferenceService => (
                find(index, Kind::InferenceService, ns, &r.name).is_some(),
                format!("InferenceService `{}` in namespace {}", r.name, r.namespace),
            ),
            RefTarget::AnalysisTemplate => (
                find(index, Kind::AnalysisTemplate, ns, &r.name).is_some(),
                format!("AnalysisTemplate `{}` in namespace {}", r.name, r.namespace),
            ),
            RefTarget::ClusterAnalysisTemplate => (
                find(index, Kind::ClusterAnalysisTemplate, None, &r.name).is_some(),
                format!("ClusterAnalysisTemplate `{}`", r.name),
            ),
            RefTarget::ServingRuntime => (
                find(index, Kind::ServingRuntime, ns, &r.name).is_some()
                    || find(index, Kind::ClusterServingRuntime, None, &r.name).is_some(),
                format!("ServingRuntime or ClusterServingRuntime `{}`", r.name),
            ),
        };
        if !found {
            if r.target == RefTarget::ServingRuntime {
                // KServe clusters ship runtimes that are not in the repository; crossfade can
                // still serve ONNX in-process, so this is a warning.
                diags.push(
                    Diagnostic::warning(
                        Code::UnresolvedReference,
                        r.file,
                        r.span,
                        format!("{what} is not defined in these manifests"),
                    )
                    .with_field(&r.field)
                    .with_hint("define it here so crossfade can start it, or drop `runtime` to serve ONNX in-process"),
                );
                continue;
            }
            let mut d = Diagnostic::error(
                Code::UnresolvedReference,
                r.file,
                r.span,
                format!("{what} is not defined"),
            )
            .with_field(&r.field);
            let candidates: Vec<&str> = index
                .defs
                .iter()
                .filter(|d| match r.target {
                    RefTarget::InferenceService => d.kind == Kind::InferenceService,
                    RefTarget::AnalysisTemplate | RefTarget::ClusterAnalysisTemplate => {
                        matches!(d.kind, Kind::AnalysisTemplate | Kind::ClusterAnalysisTemplate)
                    }
                    RefTarget::ServingRuntime => false,
                })
                .map(|d| d.name.as_str())
                .collect();
            if let Some(best) = crate::decode::closest(&r.name, candidates.iter()) {
                d = d.with_hint(format!("did you mean `{best}`?"));
            } else if r.target == RefTarget::AnalysisTemplate
                && find(index, Kind::ClusterAnalysisTemplate, None, &r.name).is_some()
            {
                d = d.with_hint("a ClusterAnalysisTemplate of that name exists: add `clusterScope: true`");
            }
            diags.push(d);
            continue;
        }
        if let Some(given) = &r.args_given {
            let template = manifests.analysis_templates.iter().find(|t| {
                let t = &t.value;
                t.meta.name == r.name
                    && match r.target {
                        RefTarget::ClusterAnalysisTemplate => t.cluster_scoped,
                        _ => !t.cluster_scoped && t.meta.namespace_or_default() == r.namespace,
                    }
            });
            let Some(template) = template else { continue };
            for arg in template.value.args.iter().filter(|a| a.is_required()) {
                if !given.iter().any(|g| *g == arg.name) {
                    diags.push(
                        Diagnostic::error(
                            Code::MissingArgument,
                            r.file,
                            r.span,
                            format!(
                                "template `{}` requires argument `{}`, which is not given",
                                r.name, arg.name
                            ),
                        )
                        .with_field(&r.field)
                        .with_hint(format!(
                            "add it to the args next to `templates`: `- name: {}` with a `value`",
                            arg.name
                        )),
                    );
                }
            }
        }
    }
}

/// Two Rollouts must not drive one InferenceService, and a Rollout makes
/// `canaryTrafficPercent` moot.
fn check_rollout_targets(index: &Index, manifests: &Manifests, diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<(&str, &str), &Ref> = HashMap::new();
    for r in index
        .refs
        .iter()
        .filter(|r| r.target == RefTarget::InferenceService)
    {
        let key = (r.namespace.as_str(), r.name.as_str());
        if let Some(prev) = seen.get(&key) {
            diags.push(
                Diagnostic::error(
                    Code::ConflictingRollouts,
                    r.file,
                    r.span,
                    format!(
                        "InferenceService `{}` is already driven by another Rollout",
                        r.name
                    ),
                )
                .with_field(&r.field)
                .with_related(Related {
                    file: prev.file,
                    span: prev.span,
                    message: "the other Rollout names it here".into(),
                }),
            );
        } else {
            seen.insert(key, r);
        }
        let isvc = manifests.inference_services.iter().find(|s| {
            s.value.meta.name == r.name && s.value.meta.namespace_or_default() == r.namespace
        });
        if let Some(isvc) = isvc {
            if isvc.value.predictor.canary_traffic_percent.is_some() {
                let def = find(index, Kind::InferenceService, Some(&r.namespace), &r.name);
                let span = def.map_or(r.span, |d| d.span);
                diags.push(
                    Diagnostic::warning(
                        Code::IgnoredField,
                        isvc.origin.file,
                        span,
                        format!(
                            "InferenceService `{}` is driven by a Rollout, so `canaryTrafficPercent` is ignored",
                            r.name
                        ),
                    )
                    .with_field("spec.predictor.canaryTrafficPercent")
                    .with_hint("the Rollout's setWeight steps decide the canary's share"),
                );
            }
        }
    }
}

/// A model format other than ONNX needs a ServingRuntime that can serve it.
fn check_runtimes(index: &Index, manifests: &Manifests, diags: &mut Vec<Diagnostic>) {
    for f in &index.formats {
        if f.format == "onnx" {
            continue;
        }
        let served = manifests.serving_runtimes.iter().any(|rt| {
            let rt = &rt.value;
            !rt.disabled
                && (rt.cluster_scoped || rt.meta.namespace_or_default() == f.namespace)
                && rt
                    .supported_model_formats
                    .iter()
                    .any(|s| s.auto_select && s.name == f.format)
        });
        if !served {
            diags.push(
                Diagnostic::warning(
                    Code::UnresolvedReference,
                    f.file,
                    f.span,
                    format!(
                        "no ServingRuntime here serves model format `{}`: crossfade runs ONNX in-process and other formats through a ServingRuntime",
                        f.format
                    ),
                )
                .with_field(&f.field)
                .with_hint("add a ServingRuntime listing this format under supportedModelFormats with autoSelect: true, or export the model to ONNX"),
            );
        }
    }
}
