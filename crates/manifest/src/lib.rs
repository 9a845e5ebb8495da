//! The manifest model of crossfade: typed values for every accepted kind (Argo CD
//! `Application`, KServe `InferenceService` / `ServingRuntime` / `ClusterServingRuntime`, Argo
//! Rollouts `Rollout` / `AnalysisTemplate` / `ClusterAnalysisTemplate`), parsed from YAML and
//! validated with every problem reported at once.
//!
//! # Flow
//!
//! [`Sources::read`] loads `*.yaml`/`*.yml` files (the only IO of this crate), [`parse`] turns
//! them into [`Manifests`] plus [`Diagnostic`]s. Each diagnostic names the file, line, column,
//! field path and a stable [`Code`].
//!
//! # Guarantees
//!
//! - Never panics on any input; nesting depth and alias expansion are bounded.
//! - A document with a YAML syntax error is reported and skipped; the other documents of the
//!   same file are still read.
//! - [`Manifests`] holds every resource that decoded; it is a consistent desired state only
//!   when [`Parsed::has_errors`] is false.

mod decode;
mod diag;
mod duration;
mod kinds;
mod source;
mod types;
mod validate;
mod yaml;

use std::path::PathBuf;

pub use codespan_reporting::term::termcolor;
pub use diag::{Code, Diagnostic, Related, Severity};
pub use duration::{DurationError, parse_duration};
pub use source::{FileId, SourceFile, Sources, Span};
pub use types::*;

use decode::{At, Cx, Fields};
use kinds::Doc;
use validate::{Def, Index};

/// Errors that stop manifests from being read at all. Problems inside files are
/// [`Diagnostic`]s, not errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Options of [`parse`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Every `storageUri` must pin a sha256 digest (no floating model versions).
    pub require_digest: bool,
}

/// The kinds crossfade reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Application,
    InferenceService,
    ServingRuntime,
    ClusterServingRuntime,
    Rollout,
    AnalysisTemplate,
    ClusterAnalysisTemplate,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Application => "Application",
            Kind::InferenceService => "InferenceService",
            Kind::ServingRuntime => "ServingRuntime",
            Kind::ClusterServingRuntime => "ClusterServingRuntime",
            Kind::Rollout => "Rollout",
            Kind::AnalysisTemplate => "AnalysisTemplate",
            Kind::ClusterAnalysisTemplate => "ClusterAnalysisTemplate",
        }
    }

    /// The `apiVersion` this kind is read at.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Application
            | Kind::Rollout
            | Kind::AnalysisTemplate
            | Kind::ClusterAnalysisTemplate => "argoproj.io/v1alpha1",
            Kind::InferenceService => "serving.kserve.io/v1beta1",
            Kind::ServingRuntime | Kind::ClusterServingRuntime => "serving.kserve.io/v1alpha1",
        }
    }

    pub fn is_cluster_scoped(self) -> bool {
        matches!(
            self,
            Kind::ClusterServingRuntime | Kind::ClusterAnalysisTemplate
        )
    }

    const ALL: [Kind; 7] = [
        Kind::Application,
        Kind::InferenceService,
        Kind::ServingRuntime,
        Kind::ClusterServingRuntime,
        Kind::Rollout,
        Kind::AnalysisTemplate,
        Kind::ClusterAnalysisTemplate,
    ];
}

/// Every resource found, used or not: what `crossfade lint` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub api_version: String,
    pub kind: String,
    /// For namespaced kinds, as written or `default`; `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
    pub file: FileId,
    pub line: u32,
    /// Whether crossfade acts on it (an accepted kind).
    pub used: bool,
}

/// The decoded resources, by kind, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    pub applications: Vec<Located<Application>>,
    pub inference_services: Vec<Located<InferenceService>>,
    /// ServingRuntimes and ClusterServingRuntimes.
    pub serving_runtimes: Vec<Located<ServingRuntime>>,
    pub rollouts: Vec<Located<Rollout>>,
    /// AnalysisTemplates and ClusterAnalysisTemplates.
    pub analysis_templates: Vec<Located<AnalysisTemplate>>,
}

/// The result of [`parse`].
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub manifests: Manifests,
    pub resources: Vec<ResourceRef>,
    /// Sorted by file, line and column.
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Parses and validates every document of every source.
pub fn parse(sources: &Sources, options: Options) -> Parsed {
    parse_cached(sources, options, &mut ParseCache::default())
}

/// What each file contributed to the last parse, kept so that parsing the next commit decodes
/// only the files that changed (see [`parse_cached`]).
#[derive(Default)]
pub struct ParseCache {
    files: std::collections::HashMap<FileId, FileOutput>,
}

/// One file's contribution: its documents decoded, before the checks that span files.
#[derive(Clone)]
struct FileOutput {
    name: String,
    text: String,
    require_digest: bool,
    manifests: Manifests,
    resources: Vec<ResourceRef>,
    diagnostics: Vec<Diagnostic>,
    index: Index,
}

/// [`parse`], decoding again only the files whose name, place or text differ from the parse
/// `cache` saw last. The result is the same as [`parse`]'s; the cache keeps the files of
/// this parse only.
pub fn parse_cached(sources: &Sources, options: Options, cache: &mut ParseCache) -> Parsed {
    let mut parsed = Parsed::default();
    let mut index = Index::default();
    let mut seen = std::collections::HashSet::new();
    for (file_id, file) in sources.files() {
        seen.insert(file_id);
        let Ok(text) = &file.text else {
            let reason = file.text.as_ref().err().cloned().unwrap_or_default();
            parsed.diagnostics.push(Diagnostic::error(
                Code::UnreadableFile,
                file_id,
                Span {
                    line: 1,
                    column: 1,
                    ..Span::default()
                },
                reason,
            ));
            continue;
        };
        let fresh = cache.files.get(&file_id).is_some_and(|c| {
            c.name == file.name && c.require_digest == options.require_digest && c.text == *text
        });
        if !fresh {
            let out = decode_file(file_id, file, text, options);
            cache.files.insert(file_id, out);
        }
        merge(&mut parsed, &mut index, &cache.files[&file_id]);
    }
    cache.files.retain(|id, _| seen.contains(id));
    validate::check(&index, &parsed.manifests, &mut parsed.diagnostics);
    // Name the other place in the message too, for readers of the JSON output.
    for d in &mut parsed.diagnostics {
        if let Some(r) = &d.related
            && matches!(
                d.code,
                Code::DuplicateResource | Code::DuplicateKey | Code::ConflictingRollouts
            )
        {
            let other = &sources.get(r.file).name;
            d.message = format!("{} (first at {other}:{})", d.message, r.span.line);
        }
    }
    parsed
        .diagnostics
        .sort_by_key(|d| (d.file, d.span.line, d.span.column));
    parsed
}

/// Decodes every document of one file.
fn decode_file(file_id: FileId, file: &SourceFile, text: &str, options: Options) -> FileOutput {
    let mut parsed = Parsed::default();
    let mut index = Index::default();
    let docs = yaml::parse_file(file_id, file, &mut parsed.diagnostics);
    for doc in docs {
        if doc.root.is_null() {
            continue; // an empty document (`---` with nothing after it)
        }
        decode_document(file_id, &doc.root, options, &mut parsed, &mut index);
    }
    FileOutput {
        name: file.name.clone(),
        text: text.to_owned(),
        require_digest: options.require_digest,
        manifests: parsed.manifests,
        resources: parsed.resources,
        diagnostics: parsed.diagnostics,
        index,
    }
}

/// Appends one file's contribution.
fn merge(parsed: &mut Parsed, index: &mut Index, out: &FileOutput) {
    let offset = parsed.diagnostics.len();
    parsed.diagnostics.extend(out.diagnostics.iter().cloned());
    parsed.resources.extend(out.resources.iter().cloned());
    let m = &mut parsed.manifests;
    m.applications
        .extend(out.manifests.applications.iter().cloned());
    m.inference_services
        .extend(out.manifests.inference_services.iter().cloned());
    m.serving_runtimes
        .extend(out.manifests.serving_runtimes.iter().cloned());
    m.rollouts.extend(out.manifests.rollouts.iter().cloned());
    m.analysis_templates
        .extend(out.manifests.analysis_templates.iter().cloned());
    index.defs.extend(out.index.defs.iter().cloned());
    index.refs.extend(out.index.refs.iter().cloned());
    index
        .canary_percents
        .extend(out.index.canary_percents.iter().cloned());
    index.formats.extend(out.index.formats.iter().cloned());
    index
        .unsupported_metrics
        .extend(out.index.unsupported_metrics.iter().map(|u| {
            let mut u = u.clone();
            u.diagnostic += offset;
            u
        }));
}

fn decode_document(
    file: FileId,
    root: &yaml::Node,
    options: Options,
    parsed: &mut Parsed,
    index: &mut Index,
) {
    let at = At::root(root);
    let mut cx = Cx {
        file,
        diags: &mut parsed.diagnostics,
    };
    let yaml::NodeKind::Map(_) = &root.kind else {
        cx.error(
            Code::NotAResource,
            &at,
            format!(
                "expected a Kubernetes resource (a mapping with apiVersion and kind), found {}",
                root.type_name()
            ),
        );
        return;
    };
    let m = cx.map_any(&at);
    let api_version = m.req(&mut cx, "apiVersion").and_then(|a| cx.string(&a));
    let kind_name = m.req(&mut cx, "kind").and_then(|a| cx.string(&a));
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        if let Some(d) = cx.diags.last_mut()
            && d.code == Code::MissingField
        {
            d.code = Code::NotAResource;
        }
        return;
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let kind = Kind::ALL.into_iter().find(|k| {
        k.as_str() == kind_name && k.api_version().split_once('/').map(|(g, _)| g) == Some(group)
    });
    let origin = Origin {
        file,
        line: root.span.line,
    };
    let Some(kind) = kind else {
        let kind_at = m.get("kind").expect("read above");
        if group == "serving.kubeflow.org" && kind_name == "InferenceService" {
            let av = m.get("apiVersion").expect("read above");
            cx.error(
                Code::UnsupportedVersion,
                &av,
                format!("{api_version} is the KFServing API, which KServe replaced"),
            )
            .hint = Some("write apiVersion: serving.kserve.io/v1beta1".into());
            return;
        }
        cx.warning(
            Code::UnknownKind,
            &kind_at,
            format!("kind {kind_name} ({api_version}) is not used by crossfade; skipped"),
        );
        let namespace = metadata_text(&m, "namespace");
        parsed
            .resources
            .push(skipped(api_version, kind_name, namespace, &m, origin));
        return;
    };
    if version != kind.api_version().split_once('/').map_or("", |(_, v)| v) {
        let av = m.get("apiVersion").expect("read above");
        cx.error(
            Code::UnsupportedVersion,
            &av,
            format!(
                "{} is read at apiVersion {}, not {api_version}",
                kind.as_str(),
                kind.api_version()
            ),
        );
        return;
    }
    // A Rollout of anything but an InferenceService is not crossfade's business.
    if kind == Kind::Rollout
        && let Some(spec) = m.get("spec")
    {
        let skip = match kinds::rollout_workload(&spec) {
            kinds::Workload::InferenceService => None,
            kinds::Workload::Other(k) => Some(format!("its workloadRef is a {k}")),
            kinds::Workload::Absent => {
                Some("it has no workloadRef to an InferenceService".to_owned())
            }
        };
        if let Some(why) = skip {
            let kind_at = m.get("kind").expect("read above");
            cx.warning(
                Code::UnknownKind,
                &kind_at,
                format!("Rollout is not used by crossfade because {why}; skipped"),
            );
            let namespace = metadata_text(&m, "namespace").or(Some("default".into()));
            parsed
                .resources
                .push(skipped(api_version, kind_name, namespace, &m, origin));
            return;
        }
    }
    let Some(meta) = meta(&mut cx, &m, kind) else {
        return;
    };
    parsed.resources.push(ResourceRef {
        api_version,
        kind: kind_name,
        namespace: (!kind.is_cluster_scoped()).then(|| meta.namespace_or_default().to_owned()),
        name: meta.name.clone(),
        file,
        line: origin.line,
        used: true,
    });
    if !meta.name.is_empty() {
        index.defs.push(Def {
            kind,
            namespace: (!kind.is_cluster_scoped()).then(|| meta.namespace_or_default().to_owned()),
            name: meta.name.clone(),
            file,
            span: kinds::name_span(&at),
        });
    }
    let Some(spec) = m.req(&mut cx, "spec") else {
        return;
    };
    let namespace = meta.namespace_or_default().to_owned();
    let mut doc = Doc {
        cx,
        index,
        namespace,
        require_digest: options.require_digest,
    };
    let out = &mut parsed.manifests;
    match kind {
        Kind::Application => {
            if let Some(v) = kinds::application(&mut doc, meta, &spec) {
                out.applications.push(Located { value: v, origin });
            }
        }
        Kind::InferenceService => {
            if let Some(v) = kinds::inference_service(&mut doc, &m, meta, &spec) {
                out.inference_services.push(Located { value: v, origin });
            }
        }
        Kind::ServingRuntime | Kind::ClusterServingRuntime => {
            let cluster = kind == Kind::ClusterServingRuntime;
            if let Some(v) = kinds::serving_runtime(&mut doc, meta, &spec, cluster) {
                out.serving_runtimes.push(Located { value: v, origin });
            }
        }
        Kind::Rollout => {
            if let Some(v) = kinds::rollout(&mut doc, meta, &spec) {
                out.rollouts.push(Located { value: v, origin });
            }
        }
        Kind::AnalysisTemplate | Kind::ClusterAnalysisTemplate => {
            let cluster = kind == Kind::ClusterAnalysisTemplate;
            if let Some(v) = kinds::analysis_template(&mut doc, meta, &spec, cluster) {
                out.analysis_templates.push(Located { value: v, origin });
            }
        }
    }
}

/// `metadata.<key>` as written, unchecked: enough to list a resource crossfade skips.
fn metadata_text(m: &decode::Map<'_>, key: &str) -> Option<String> {
    let meta = m.get("metadata")?;
    let yaml::NodeKind::Map(entries) = &meta.node.kind else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| k.scalar_text() == Some(key))
        .and_then(|(_, v)| v.scalar_text())
        .map(str::to_owned)
}

/// The listing of a resource crossfade does not act on.
fn skipped(
    api_version: String,
    kind: String,
    namespace: Option<String>,
    m: &decode::Map<'_>,
    origin: Origin,
) -> ResourceRef {
    ResourceRef {
        api_version,
        kind,
        namespace,
        name: metadata_text(m, "name").unwrap_or_default(),
        file: origin.file,
        line: origin.line,
        used: false,
    }
}

/// Decodes `metadata` and checks the top-level keys.
fn meta(cx: &mut Cx<'_>, m: &decode::Map<'_>, kind: Kind) -> Option<Meta> {
    let _ = cx.map(
        &m.at,
        &Fields {
            known: &["apiVersion", "kind", "metadata", "spec"],
            tolerated: &["status"],
        },
    );
    let at = m.req(cx, "metadata")?;
    let mm = cx.map(
        &at,
        &Fields {
            known: &["name", "namespace", "labels", "annotations"],
            tolerated: &[
                "generateName",
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "finalizers",
                "ownerReferences",
                "managedFields",
                "selfLink",
            ],
        },
    )?;
    // An invalid name is reported, and the rest of the resource is still checked.
    let name = mm.req(cx, "name").and_then(|a| {
        let n = cx.string(&a)?;
        check_dns_label(cx, &a, &n, "name");
        Some(n)
    });
    let namespace = mm.get("namespace").and_then(|a| {
        let n = cx.string(&a)?;
        if kind.is_cluster_scoped() {
            cx.warning(
                Code::IgnoredField,
                &a,
                format!(
                    "{} is cluster-scoped; the namespace is ignored",
                    kind.as_str()
                ),
            );
            return None;
        }
        check_dns_label(cx, &a, &n, "namespace");
        Some(n)
    });
    let labels = mm
        .get("labels")
        .map(|a| cx.string_map(&a))
        .unwrap_or_default();
    let annotations = mm
        .get("annotations")
        .map(|a| cx.string_map(&a))
        .unwrap_or_default();
    Some(Meta {
        name: name.unwrap_or_default(),
        namespace,
        labels,
        annotations,
    })
}

/// A DNS-1123 label: at most 63 characters of `a-z`, `0-9` and `-`, starting and ending with
/// a letter or digit.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn check_dns_label(cx: &mut Cx<'_>, at: &At<'_>, value: &str, what: &str) {
    if is_dns1123_label(value) {
        return;
    }
    let reason = if value.is_empty() {
        "it is empty".to_owned()
    } else if value.len() > 63 {
        format!("it is {} characters long (at most 63)", value.len())
    } else if value.bytes().any(|b| b.is_ascii_uppercase()) {
        "it has upper-case letters".to_owned()
    } else if value.starts_with('-') || value.ends_with('-') {
        "it starts or ends with `-`".to_owned()
    } else {
        "it has characters other than a-z, 0-9 and `-`".to_owned()
    };
    let suggestion: String = value
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(63)
        .collect();
    let d = cx.error(
        Code::InvalidName,
        at,
        format!("{what} `{value}` is not a DNS-1123 label: {reason}"),
    );
    if is_dns1123_label(&suggestion) {
        d.hint = Some(format!("for example `{suggestion}`"));
    }
}
