//! Checks that span resources: duplicates, references that resolve, template arguments given.

use std::collections::{HashMap, HashSet};

use crate::diag::{Code, Diagnostic, Related, Severity};
use crate::source::{FileId, Span};
use crate::{Kind, Manifests};

/// Every definition and reference seen while decoding, with where it was written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    pub defs: Vec<Def>,
    pub refs: Vec<Ref>,
    /// Every `canaryTrafficPercent` written, by InferenceService.
    pub canary_percents: Vec<NamedSpan>,
    /// Metrics whose provider crossfade cannot run, by template.
    pub unsupported_metrics: Vec<UnsupportedMetric>,
    /// Model formats of predictors that name no `runtime`.
    pub formats: Vec<FormatUse>,
}

/// A metric with an unsupported provider: an error when a Rollout uses its template, a warning
/// otherwise.
#[derive(Debug, Clone)]
pub(crate) struct UnsupportedMetric {
    pub cluster_scoped: bool,
    /// Namespace of the template (ignored when cluster-scoped).
    pub namespace: String,
    pub template: String,
    /// Index of the diagnostic in the list being built.
    pub diagnostic: usize,
}

/// A field of a named resource, and where it is.
#[derive(Debug, Clone)]
pub(crate) struct NamedSpan {
    pub namespace: String,
    pub name: String,
    pub file: FileId,
    pub span: Span,
}

/// A predictor that needs a runtime chosen by model format.
#[derive(Debug, Clone)]
pub(crate) struct FormatUse {
    pub namespace: String,
    pub format: String,
    pub file: FileId,
    pub span: Span,
    pub field: String,
}

/// A resource definition: its identity and the span of its `metadata.name`.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
    /// For a template's reference to the templates it is composed of: the referring
    /// template (cluster-scoped, name; its namespace is `namespace`).
    pub from_template: Option<(bool, String)>,
}

pub(crate) fn check(index: &Index, manifests: &Manifests, diags: &mut Vec<Diagnostic>) {
    // Every check looks names up in hash maps built once: a repository of 10,000 Rollouts
    // would otherwise cost 10,000 scans of 20,000 definitions on every commit.
    let defined = check_duplicates(index, diags);
    check_refs(index, &defined, manifests, diags);
    check_rollout_targets(index, diags);
    check_runtimes(index, manifests, diags);
    check_unsupported_metrics(index, diags);
}

fn check_unsupported_metrics(index: &Index, diags: &mut [Diagnostic]) {
    if index.unsupported_metrics.is_empty() {
        return;
    }
    // (cluster-scoped, namespace, template) of every template a Rollout uses, directly or
    // through the templates it is composed of.
    fn key(r: &Ref) -> Option<(bool, &str, &str)> {
        match r.target {
            RefTarget::AnalysisTemplate => Some((false, r.namespace.as_str(), r.name.as_str())),
            RefTarget::ClusterAnalysisTemplate => Some((true, "", r.name.as_str())),
            _ => None,
        }
    }
    let mut used: HashSet<(bool, &str, &str)> = index
        .refs
        .iter()
        .filter(|r| r.from_template.is_none())
        .filter_map(key)
        .collect();
    loop {
        let before = used.len();
        for r in &index.refs {
            if let Some((cluster, from)) = &r.from_template {
                let ns = if *cluster { "" } else { r.namespace.as_str() };
                if used.contains(&(*cluster, ns, from.as_str()))
                    && let Some(k) = key(r)
                {
                    used.insert(k);
                }
            }
        }
        if used.len() == before {
            break;
        }
    }
    for u in &index.unsupported_metrics {
        let namespace = if u.cluster_scoped {
            ""
        } else {
            u.namespace.as_str()
        };
        let used = used.contains(&(u.cluster_scoped, namespace, u.template.as_str()));
        if !used {
            let d = &mut diags[u.diagnostic];
            d.severity = Severity::Warning;
            d.message = format!(
                "{}; no Rollout here uses template `{}`, but one that does would fail",
                d.message, u.template
            );
        }
    }
}

/// The first definition of each (kind, namespace, name).
type Defined<'a> = HashMap<(Kind, Option<&'a str>, &'a str), &'a Def>;

fn check_duplicates<'a>(index: &'a Index, diags: &mut Vec<Diagnostic>) -> Defined<'a> {
    let mut first: Defined<'a> = HashMap::with_capacity(index.defs.len());
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
    first
}

fn check_refs(
    index: &Index,
    defined: &Defined<'_>,
    manifests: &Manifests,
    diags: &mut Vec<Diagnostic>,
) {
    let find = |kind: Kind, namespace: Option<&str>, name: &str| {
        defined.contains_key(&(kind, namespace, name))
    };
    // The first template of each (cluster-scoped, namespace, name); cluster-scoped ones by
    // name alone.
    let mut templates: HashMap<(bool, &str, &str), &crate::AnalysisTemplate> = HashMap::new();
    for t in &manifests.analysis_templates {
        let t = &t.value;
        let namespace = if t.cluster_scoped {
            ""
        } else {
            t.meta.namespace_or_default()
        };
        templates
            .entry((t.cluster_scoped, namespace, t.meta.name.as_str()))
            .or_insert(t);
    }
    for r in &index.refs {
        let ns = Some(r.namespace.as_str());
        let found = match r.target {
            RefTarget::InferenceService => find(Kind::InferenceService, ns, &r.name),
            RefTarget::AnalysisTemplate => find(Kind::AnalysisTemplate, ns, &r.name),
            RefTarget::ClusterAnalysisTemplate => {
                find(Kind::ClusterAnalysisTemplate, None, &r.name)
            }
            RefTarget::ServingRuntime => {
                find(Kind::ServingRuntime, ns, &r.name)
                    || find(Kind::ClusterServingRuntime, None, &r.name)
            }
        };
        if !found {
            let what = match r.target {
                RefTarget::InferenceService => {
                    format!("InferenceService `{}` in namespace {}", r.name, r.namespace)
                }
                RefTarget::AnalysisTemplate => {
                    format!("AnalysisTemplate `{}` in namespace {}", r.name, r.namespace)
                }
                RefTarget::ClusterAnalysisTemplate => {
                    format!("ClusterAnalysisTemplate `{}`", r.name)
                }
                RefTarget::ServingRuntime => {
                    format!("ServingRuntime or ClusterServingRuntime `{}`", r.name)
                }
            };
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
            if let Some(hint) = reference_hint(index, r) {
                d = d.with_hint(hint);
            }
            diags.push(d);
            continue;
        }
        if let Some(given) = &r.args_given {
            let key = match r.target {
                RefTarget::ClusterAnalysisTemplate => (true, "", r.name.as_str()),
                _ => (false, r.namespace.as_str(), r.name.as_str()),
            };
            let Some(template) = templates.get(&key) else {
                continue;
            };
            for arg in required_args(&templates, template, &r.namespace) {
                if !given.contains(&arg.name) {
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

/// The arguments a Rollout must give `template`: its own required ones and those of the
/// templates it is composed of (each template once, so a cycle ends).
fn required_args<'a>(
    templates: &HashMap<(bool, &str, &str), &'a crate::AnalysisTemplate>,
    template: &'a crate::AnalysisTemplate,
    namespace: &str,
) -> Vec<&'a crate::TemplateArg> {
    let mut out: Vec<&crate::TemplateArg> = Vec::new();
    let mut given: HashSet<&str> = HashSet::new();
    let mut seen: HashSet<(bool, &str)> = HashSet::new();
    let mut todo = vec![template];
    while let Some(t) = todo.pop() {
        if !seen.insert((t.cluster_scoped, t.meta.name.as_str())) {
            continue;
        }
        for arg in &t.args {
            if !arg.is_required() {
                // A default in one template of a composition serves them all (as Argo merges).
                given.insert(arg.name.as_str());
            } else if !out.iter().any(|a| a.name == arg.name) {
                out.push(arg);
            }
        }
        for inner in &t.templates {
            let ns = if inner.cluster_scope { "" } else { namespace };
            if let Some(found) =
                templates.get(&(inner.cluster_scope, ns, inner.template_name.as_str()))
            {
                todo.push(found);
            }
        }
    }
    out.retain(|a| !given.contains(a.name.as_str()));
    out
}

/// Two Rollouts must not drive one InferenceService, and a Rollout makes
/// `canaryTrafficPercent` moot.
fn check_rollout_targets(index: &Index, diags: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<(&str, &str), &Ref> = HashMap::new();
    let mut canary_percents: HashMap<(&str, &str), &NamedSpan> = HashMap::new();
    for c in &index.canary_percents {
        canary_percents
            .entry((c.namespace.as_str(), c.name.as_str()))
            .or_insert(c);
    }
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
        if let Some(c) = canary_percents.get(&key) {
            {
                diags.push(
                    Diagnostic::warning(
                        Code::IgnoredField,
                        c.file,
                        c.span,
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

/// A model format crossfade does not serve natively needs a ServingRuntime that can serve it.
fn check_runtimes(index: &Index, manifests: &Manifests, diags: &mut Vec<Diagnostic>) {
    for f in &index.formats {
        if crate::stock_serving(&f.format).is_some() {
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
                        "no ServingRuntime here serves model format `{}`: crossfade runs ONNX, XGBoost and LightGBM in-process, scikit-learn, MLflow and Hugging Face models through its built-in MLServer runtimes, and other formats through a ServingRuntime",
                        f.format
                    ),
                )
                .with_field(&f.field)
                .with_hint("add a ServingRuntime listing this format under supportedModelFormats with autoSelect: true, or export the model to ONNX"),
            );
        }
    }
}

/// Why a reference may not resolve: the right name in the wrong scope, or a likely typo.
fn reference_hint(index: &Index, r: &Ref) -> Option<String> {
    let same_name = |kind: Kind| {
        index
            .defs
            .iter()
            .find(|d| d.kind == kind && d.name == r.name)
    };
    match r.target {
        RefTarget::AnalysisTemplate => {
            if same_name(Kind::ClusterAnalysisTemplate).is_some() {
                return Some(
                    "a ClusterAnalysisTemplate of that name exists: add `clusterScope: true`"
                        .into(),
                );
            }
            if let Some(d) = same_name(Kind::AnalysisTemplate) {
                return Some(format!(
                    "an AnalysisTemplate of that name exists in namespace {}; templates resolve in the Rollout's namespace",
                    d.namespace.as_deref().unwrap_or("default")
                ));
            }
        }
        RefTarget::ClusterAnalysisTemplate => {
            if same_name(Kind::AnalysisTemplate).is_some() {
                return Some(
                    "an AnalysisTemplate of that name exists: drop `clusterScope: true` to use it"
                        .into(),
                );
            }
        }
        RefTarget::InferenceService => {
            if let Some(d) = same_name(Kind::InferenceService) {
                return Some(format!(
                    "an InferenceService of that name exists in namespace {}; the workload must be in the Rollout's namespace",
                    d.namespace.as_deref().unwrap_or("default")
                ));
            }
        }
        RefTarget::ServingRuntime => {}
    }
    let kinds: &[Kind] = match r.target {
        RefTarget::InferenceService => &[Kind::InferenceService],
        RefTarget::AnalysisTemplate => &[Kind::AnalysisTemplate],
        RefTarget::ClusterAnalysisTemplate => &[Kind::ClusterAnalysisTemplate],
        RefTarget::ServingRuntime => &[Kind::ServingRuntime, Kind::ClusterServingRuntime],
    };
    let candidates: Vec<&str> = index
        .defs
        .iter()
        .filter(|d| kinds.contains(&d.kind))
        .filter(|d| {
            d.kind.is_cluster_scoped() || d.namespace.as_deref() == Some(r.namespace.as_str())
        })
        .map(|d| d.name.as_str())
        .collect();
    crate::decode::closest(&r.name, candidates.iter()).map(|best| format!("did you mean `{best}`?"))
}
