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
    /// Shared with the [`ParseCache`] that made it (read it through the `Arc`).
    pub manifests: std::sync::Arc<Manifests>,
    pub resources: std::sync::Arc<Vec<ResourceRef>>,
    /// Sorted by file, line and column.
    pub diagnostics: Vec<Diagnostic>,
    /// What changed since the parse before it through the same [`ParseCache`].
    pub changes: Changes,
}

/// What a parse changed against the one before it through the same [`ParseCache`] (its
/// `base`): a reader that kept what it made of the base parse can update that from these
/// alone. The first parse through a cache has base 0 and lists everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// The number of the parse this one was compared with (0: none).
    pub base: u64,
    /// This parse's number in its cache (from 1).
    pub generation: u64,
    /// Indexes into `manifests.inference_services` of those decoded afresh: new, or in a file
    /// that changed.
    pub inference_services: Vec<usize>,
    /// (namespace, name) of the base parse's InferenceServices whose file changed or went
    /// (some may be declared again, and listed in `inference_services` too).
    pub removed_inference_services: Vec<(String, String)>,
    /// Whether a Rollout was added, changed or removed.
    pub rollouts: bool,
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

/// What each file of the last parse was and contributed, kept so that parsing the next commit
/// decodes only the files that changed (see [`parse_cached`]).
#[derive(Default)]
pub struct ParseCache {
    /// By file position.
    files: Vec<Entry>,
    manifests: std::sync::Arc<Manifests>,
    resources: std::sync::Arc<Vec<ResourceRef>>,
    /// Without `unsupported_metrics`, which each entry keeps with its diagnostics.
    index: Index,
    /// How many parses went through the cache.
    generation: u64,
}

/// One file as the last parse saw it, and how many items it put in each merged list.
struct Entry {
    file: std::sync::Arc<SourceFile>,
    require_digest: bool,
    counts: Counts,
    /// The file's own diagnostics (before the checks that span files).
    diagnostics: Vec<Diagnostic>,
    /// Indices into `diagnostics`.
    unsupported: Vec<validate::UnsupportedMetric>,
}

/// Items a file contributed, per merged list, in this order: applications, inference
/// services, serving runtimes, rollouts, analysis templates, resources, defs, refs, canary
/// percents, formats.
type Counts = [usize; 10];

/// What decoding one file yields.
#[derive(Default)]
struct Decoded {
    manifests: Manifests,
    resources: Vec<ResourceRef>,
    diagnostics: Vec<Diagnostic>,
}

/// [`parse`], decoding again only the files whose name, place or text differ from the parse
/// `cache` saw last; what the others contributed is moved over from that parse, not copied.
/// The result is the same as [`parse`]'s.
pub fn parse_cached(sources: &Sources, options: Options, cache: &mut ParseCache) -> Parsed {
    use std::sync::Arc;
    let old_files = std::mem::take(&mut cache.files);
    let old_m = Arc::unwrap_or_clone(std::mem::take(&mut cache.manifests));
    let old_r = Arc::unwrap_or_clone(std::mem::take(&mut cache.resources));
    let old_i = std::mem::take(&mut cache.index);
    let mut from = (
        old_m.applications.into_iter(),
        old_m.inference_services.into_iter(),
        old_m.serving_runtimes.into_iter(),
        old_m.rollouts.into_iter(),
        old_m.analysis_templates.into_iter(),
        old_r.into_iter(),
        old_i.defs.into_iter(),
        old_i.refs.into_iter(),
        old_i.canary_percents.into_iter(),
        old_i.formats.into_iter(),
    );
    let mut m = Manifests::default();
    let mut resources = Vec::new();
    let mut index = Index::default();
    let mut entries = Vec::with_capacity(sources.len());
    let mut changes = Changes {
        base: cache.generation,
        generation: cache.generation + 1,
        ..Changes::default()
    };
    let gone = |isvc: InferenceService, changes: &mut Changes| {
        changes
            .removed_inference_services
            .push((isvc.meta.namespace_or_default().to_owned(), isvc.meta.name));
    };
    let mut old_files = old_files.into_iter();
    for (file_id, file) in sources.files() {
        let old = old_files.next();
        let shared = sources.shared(file_id);
        let fresh = old.as_ref().is_some_and(|e| {
            e.require_digest == options.require_digest
                && (Arc::ptr_eq(&e.file, shared)
                    || (e.file.name == file.name && e.file.text == file.text))
        });
        // What the file at this place contributed last time: kept if the file is the same,
        // dropped otherwise.
        if let Some(e) = &old {
            let c = e.counts;
            macro_rules! carry {
                ($it:expr, $n:expr, $to:expr) => {
                    for _ in 0..$n {
                        if let Some(x) = $it.next()
                            && fresh
                        {
                            $to.push(x);
                        }
                    }
                };
            }
            carry!(from.0, c[0], m.applications);
            for _ in 0..c[1] {
                match from.1.next() {
                    Some(x) if fresh => m.inference_services.push(x),
                    Some(x) => gone(x.value, &mut changes),
                    None => {}
                }
            }
            changes.rollouts |= !fresh && c[3] > 0;
            carry!(from.2, c[2], m.serving_runtimes);
            carry!(from.3, c[3], m.rollouts);
            carry!(from.4, c[4], m.analysis_templates);
            carry!(from.5, c[5], resources);
            carry!(from.6, c[6], index.defs);
            carry!(from.7, c[7], index.refs);
            carry!(from.8, c[8], index.canary_percents);
            carry!(from.9, c[9], index.formats);
        }
        if fresh && let Some(e) = old {
            entries.push(e);
            continue;
        }
        let (decoded, file_index) = decode_file(file_id, file, options);
        let counts = [
            decoded.manifests.applications.len(),
            decoded.manifests.inference_services.len(),
            decoded.manifests.serving_runtimes.len(),
            decoded.manifests.rollouts.len(),
            decoded.manifests.analysis_templates.len(),
            decoded.resources.len(),
            file_index.defs.len(),
            file_index.refs.len(),
            file_index.canary_percents.len(),
            file_index.formats.len(),
        ];
        let Decoded {
            manifests: dm,
            resources: dr,
            diagnostics,
        } = decoded;
        m.applications.extend(dm.applications);
        let at = m.inference_services.len();
        changes
            .inference_services
            .extend(at..at + dm.inference_services.len());
        changes.rollouts |= !dm.rollouts.is_empty();
        m.inference_services.extend(dm.inference_services);
        m.serving_runtimes.extend(dm.serving_runtimes);
        m.rollouts.extend(dm.rollouts);
        m.analysis_templates.extend(dm.analysis_templates);
        resources.extend(dr);
        index.defs.extend(file_index.defs);
        index.refs.extend(file_index.refs);
        index.canary_percents.extend(file_index.canary_percents);
        index.formats.extend(file_index.formats);
        entries.push(Entry {
            file: Arc::clone(shared),
            require_digest: options.require_digest,
            counts,
            diagnostics,
            unsupported: file_index.unsupported_metrics,
        });
    }
    // Files at the end that are gone.
    for isvc in from.1 {
        gone(isvc.value, &mut changes);
    }
    changes.rollouts |= from.3.next().is_some();
    // Each file's own diagnostics, then the checks that span files.
    let mut diagnostics = Vec::new();
    for e in &entries {
        let offset = diagnostics.len();
        diagnostics.extend(e.diagnostics.iter().cloned());
        index
            .unsupported_metrics
            .extend(e.unsupported.iter().map(|u| {
                let mut u = u.clone();
                u.diagnostic += offset;
                u
            }));
    }
    validate::check(&index, &m, &mut diagnostics);
    index.unsupported_metrics.clear();
    // Name the other place in the message too, for readers of the JSON output.
    for d in &mut diagnostics {
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
    diagnostics.sort_by_key(|d| (d.file, d.span.line, d.span.column));
    cache.files = entries;
    cache.manifests = Arc::new(m);
    cache.resources = Arc::new(resources);
    cache.index = index;
    cache.generation = changes.generation;
    Parsed {
        manifests: Arc::clone(&cache.manifests),
        resources: Arc::clone(&cache.resources),
        diagnostics,
        changes,
    }
}

/// Decodes every document of one file (or says why it cannot be read).
fn decode_file(file_id: FileId, file: &SourceFile, options: Options) -> (Decoded, Index) {
    let mut decoded = Decoded::default();
    let mut index = Index::default();
    if let Err(reason) = &file.text {
        decoded.diagnostics.push(Diagnostic::error(
            Code::UnreadableFile,
            file_id,
            Span {
                line: 1,
                column: 1,
                ..Span::default()
            },
            reason.clone(),
        ));
        return (decoded, index);
    }
    let docs = yaml::parse_file(file_id, file, &mut decoded.diagnostics);
    for doc in docs {
        if doc.root.is_null() {
            continue; // an empty document (`---` with nothing after it)
        }
        decode_document(file_id, &doc.root, options, &mut decoded, &mut index);
    }
    (decoded, index)
}

fn decode_document(
    file: FileId,
    root: &yaml::Node,
    options: Options,
    parsed: &mut Decoded,
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
