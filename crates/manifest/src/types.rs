//! The typed values of every accepted kind. Field names follow the upstream YAML; each type
//! documents the manifest path it is read from.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::source::FileId;

/// A traffic share, 0 to 100 inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(u8);

impl Percent {
    pub const ZERO: Percent = Percent(0);
    pub const FULL: Percent = Percent(100);

    /// `None` above 100.
    pub fn new(value: u8) -> Option<Self> {
        (value <= 100).then_some(Self(value))
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// Where a resource was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub file: FileId,
    /// 1-based line of the document's first key.
    pub line: u32,
}

/// `metadata` of any resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// `metadata.name`, a DNS-1123 label.
    pub name: String,
    /// `metadata.namespace` as written; `None` for cluster-scoped kinds and when absent.
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Meta {
    /// The namespace a namespaced resource lives in: as written, or `default`.
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// A decoded resource and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub origin: Origin,
}

// === Argo CD ===

/// `argoproj.io/v1alpha1` `Application`.
#[derive(Debug, Clone, PartialEq)]
pub struct Application {
    pub meta: Meta,
    /// `spec.project` (Argo CD's default is `default`).
    pub project: String,
    pub source: ApplicationSource,
    /// `spec.destination`, kept for the Kubernetes mode.
    pub destination: Destination,
    /// `spec.syncPolicy.automated`; `None` means manual sync.
    pub automated: Option<AutomatedSync>,
}

/// `spec.source` of an Application: a directory of plain manifests in a Git repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationSource {
    /// `repoURL`: a local path, `file://`, `http(s)://` or `ssh` Git URL.
    pub repo_url: String,
    /// `path` inside the repository (default `.`).
    pub path: String,
    /// `targetRevision`: branch, tag, commit or `HEAD` (the default).
    pub target_revision: String,
}

/// `spec.destination` of an Application.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Destination {
    pub server: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// `spec.syncPolicy.automated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AutomatedSync {
    /// Remove services that were deleted from Git (otherwise they keep serving, out of sync).
    pub prune: bool,
    /// Revert changes made through the API at the next reconcile.
    pub self_heal: bool,
}

// === KServe ===

/// `serving.kserve.io/v1beta1` `InferenceService`.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceService {
    pub meta: Meta,
    pub predictor: Predictor,
    /// Annotation `serving.kserve.io/enable-tag-routing: "true"`: expose `latest-<name>` and
    /// `prev-<name>` routes.
    pub tag_routing: bool,
}

/// `spec.predictor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictor {
    pub model: ModelSpec,
    /// `spec.predictor.canaryTrafficPercent`: the share of the newest revision while it is not
    /// yet rolled out. `None` promotes it.
    pub canary_traffic_percent: Option<Percent>,
    /// `spec.predictor.timeout` (seconds): how long a model server may take to answer one
    /// request. Not part of the revision: changing it changes no model.
    pub timeout: Option<std::time::Duration>,
}

/// The model a predictor serves, from `spec.predictor.model` or from the older per-framework
/// form (`spec.predictor.onnx`, `.sklearn`, ...), which maps onto the same value.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub format: ModelFormat,
    pub storage_uri: StorageUri,
    /// `runtime`: the ServingRuntime to use; chosen by model format when absent.
    pub runtime: Option<String>,
    pub protocol_version: Option<ProtocolVersion>,
    /// Which form it was written in.
    pub form: PredictorForm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictorForm {
    /// `spec.predictor.model`.
    Model,
    /// `spec.predictor.<framework>` (the older form).
    Framework(&'static str),
}

/// `modelFormat.{name, version}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFormat {
    pub name: String,
    pub version: Option<String>,
}

/// Model formats crossfade serves in-process, needing no ServingRuntime: ONNX (tract),
/// XGBoost's JSON models and LightGBM's text models (native tree ensembles).
pub const NATIVE_FORMATS: &[&str] = &["onnx", "xgboost", "lightgbm"];

/// Model formats crossfade serves through a runtime of its own (a model server it starts as a
/// local process, with a command crossfade chooses, not Git), with that runtime's name.
pub const BUILTIN_RUNTIMES: &[(&str, &str)] = &[
    ("sklearn", "mlserver-sklearn"),
    ("mlflow", "mlserver-mlflow"),
    ("huggingface", "mlserver-huggingface"),
];

/// The images of KServe's stock ServingRuntimes (`config/runtimes/*.yaml`, by the last segment
/// of the image's name, without a `kserve-` prefix: `kserve/sklearnserver:v0.15` as released,
/// `kserve-sklearnserver:replace` as in KServe's repository) that crossfade replaces with its
/// own runtimes: such a runtime needs no `command`, and serves each format natively or
/// through [`BUILTIN_RUNTIMES`].
pub const STOCK_IMAGES: &[&str] = &[
    "sklearnserver",
    "xgbserver",
    "lgbserver",
    "predictiveserver",
    "mlserver",
    "huggingfaceserver",
];

/// How crossfade serves `format` without a ServingRuntime command of the user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stock {
    /// In process.
    Native,
    /// The built-in runtime of this name.
    Builtin(&'static str),
}

/// See [`Stock`]; `None` when only a ServingRuntime with a command serves the format.
pub fn stock_serving(format: &str) -> Option<Stock> {
    if NATIVE_FORMATS.contains(&format) {
        return Some(Stock::Native);
    }
    BUILTIN_RUNTIMES
        .iter()
        .find(|(f, _)| *f == format)
        .map(|(_, name)| Stock::Builtin(name))
}

/// Whether `image` (`kserve/sklearnserver:v0.15`, `docker.io/seldonio/mlserver:1.5`) is one of
/// [`STOCK_IMAGES`].
pub fn is_stock_image(image: &str) -> bool {
    let name = image.split('@').next().unwrap_or_default();
    let last = name.rsplit('/').next().unwrap_or_default();
    let last = last.split(':').next().unwrap_or_default();
    STOCK_IMAGES.contains(&last.strip_prefix("kserve-").unwrap_or(last))
}

/// `protocolVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    V1,
    V2,
    /// TensorFlow Serving's gRPC API (KServe's TF Serving runtime lists it).
    GrpcV1,
    GrpcV2,
}

/// A parsed `storageUri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageUri {
    /// As written.
    pub raw: String,
    pub scheme: Scheme,
    /// The sha256 digest pinned in a path segment (`sha256-<hex>` or `sha256:<hex>`).
    pub digest: Option<Digest>,
}

/// Why a string is not a storage URI crossfade accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("not a URI: expected <scheme>://<location>")]
    NotAUri,
    #[error("storage scheme `{0}://` is not supported")]
    Scheme(String),
    #[error("the URI names no location")]
    NoLocation,
    #[error("`{0}` is not a sha256 digest: expected 64 hex digits after `sha256-`")]
    BadDigest(String),
    #[error("`{0}` is not an image digest: expected sha256:<64 hex digits> after `@`")]
    BadImageDigest(String),
}

/// `uri` with its secrets hidden: user information (`user:password@`) and the query (a
/// pre-signed URL's signature) become `***`; the scheme, host and path, where the digest is,
/// stay. What is shown anywhere (status, audit, notifications, logs) goes through this.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let mut out = format!("{scheme}://{authority}{path}");
    if query.is_some() {
        out.push_str("?***");
    }
    if fragment.is_some() {
        out.push_str("#***");
    }
    out
}

/// `text` with every URI in it passed through [`redact_uri`] (error messages quote URIs).
pub fn redact_uris(text: &str) -> String {
    let stop =
        |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '(' | ')' | '<' | '>' | '`' | ',');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at..].find(stop).map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_uri(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

impl StorageUri {
    /// The URI as it may be shown: see [`redact_uri`].
    pub fn redacted(&self) -> String {
        redact_uri(&self.raw)
    }

    /// Parses a `storageUri`: scheme `file`, `http`, `https`, `s3`, `gs`, `pvc` or `oci`
    /// (`oci+native`), and the sha256 digest it pins, if any: in a path segment
    /// `sha256-<64 hex>` or `sha256:<64 hex>`, or for `oci://` the image manifest's digest after
    /// `@` (`oci://registry/repository@sha256:<64 hex>`).
    pub fn parse(raw: &str) -> Result<Self, UriError> {
        let (scheme, rest) = raw.split_once("://").ok_or(UriError::NotAUri)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "file" => Scheme::File,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "s3" => Scheme::S3,
            "gs" => Scheme::Gs,
            "pvc" => Scheme::Pvc,
            "oci" | "oci+native" => Scheme::Oci,
            other => return Err(UriError::Scheme(other.to_owned())),
        };
        if rest.is_empty() {
            return Err(UriError::NoLocation);
        }
        let path = rest.split(['?', '#']).next().unwrap_or_default();
        if scheme == Scheme::Oci {
            let (name, pinned) = match path.rsplit_once('@') {
                Some((name, pinned)) => (name, Some(pinned)),
                None => (path, None),
            };
            if !name.contains('/') || name.ends_with('/') {
                return Err(UriError::NoLocation);
            }
            let digest = match pinned {
                None => None,
                Some(p) => Some(
                    p.strip_prefix("sha256:")
                        .and_then(Digest::from_hex)
                        .ok_or_else(|| UriError::BadImageDigest(p.to_owned()))?,
                ),
            };
            return Ok(Self {
                raw: raw.to_owned(),
                scheme,
                digest,
            });
        }
        let mut digest = None;
        for segment in path.split('/') {
            let Some(hex) = segment
                .strip_prefix("sha256-")
                .or_else(|| segment.strip_prefix("sha256:"))
            else {
                continue;
            };
            digest =
                Some(Digest::from_hex(hex).ok_or_else(|| UriError::BadDigest(segment.to_owned()))?);
        }
        Ok(Self {
            raw: raw.to_owned(),
            scheme,
            digest,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    File,
    Http,
    Https,
    S3,
    Gs,
    /// `pvc://<claim>/<path>`: a directory the operator maps the claim to.
    Pvc,
    /// `oci://<registry>/<repository>(:<tag>|@sha256:<hex>)`: an image's layers, over the OCI
    /// distribution API.
    Oci,
}

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// From 64 hex digits (either case).
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

/// `serving.kserve.io/v1alpha1` `ServingRuntime` or `ClusterServingRuntime`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingRuntime {
    pub meta: Meta,
    /// `ClusterServingRuntime` (usable from every namespace).
    pub cluster_scoped: bool,
    pub supported_model_formats: Vec<SupportedModelFormat>,
    /// `protocolVersions` (KServe's default is v1).
    pub protocol_versions: Vec<ProtocolVersion>,
    /// `disabled: true` takes the runtime out of automatic selection.
    pub disabled: bool,
    /// `containers[0]`: run as a local process.
    pub container: RuntimeContainer,
}

/// `supportedModelFormats[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportedModelFormat {
    pub name: String,
    pub version: Option<String>,
    /// Whether the runtime may be picked for this format without `runtime:` naming it.
    pub auto_select: bool,
    /// Higher wins among auto-selectable runtimes.
    pub priority: Option<u32>,
}

/// `containers[0]` of a ServingRuntime. `{{.Name}}` in `command`/`args` is the model name, and
/// `/mnt/models` is the local artifact directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeContainer {
    pub name: Option<String>,
    /// Kept for the Kubernetes mode; not used locally.
    pub image: Option<String>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// `env[]` with a literal `value` (entries using `valueFrom` are reported and left out).
    pub env: Vec<(String, String)>,
}

// === Argo Rollouts ===

/// `argoproj.io/v1alpha1` `Rollout` whose `spec.workloadRef` names an InferenceService.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub meta: Meta,
    /// `spec.workloadRef.name`: the InferenceService this rollout drives.
    pub workload: String,
    /// `spec.strategy.canary`.
    pub canary: CanaryStrategy,
}

/// `spec.strategy.canary`.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryStrategy {
    pub steps: Vec<Step>,
    /// `analysis`: background analysis from `startingStep` until the rollout ends.
    pub analysis: Option<BackgroundAnalysis>,
}

/// One of `strategy.canary.steps[]`.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `setWeight: N`: the canary's share of traffic.
    SetWeight(Percent),
    /// `pause: {duration: 10m}`, or `pause: {}` to wait for `promote`.
    Pause(Option<Duration>),
    /// `analysis: {templates, args}`: run templates and wait for the verdict.
    Analysis(AnalysisRef),
    /// `setHeaderRoute`: send requests matching headers to the canary.
    SetHeaderRoute(HeaderRoute),
    /// `setMirrorRoute`: copy a share of requests to the canary and compare its answers.
    SetMirrorRoute(MirrorRoute),
}

/// A set of templates and the args given to them.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisRef {
    pub templates: Vec<TemplateRef>,
    pub args: Vec<RolloutArg>,
}

/// `strategy.canary.analysis`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackgroundAnalysis {
    pub analysis: AnalysisRef,
    /// `startingStep`: index of the step at which analysis starts (0 when absent).
    pub starting_step: u32,
}

/// `templates[]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub template_name: String,
    /// `clusterScope: true` names a ClusterAnalysisTemplate.
    pub cluster_scope: bool,
}

/// A Rollout argument's `fieldRef.fieldPath` that crossfade resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldRef {
    /// `metadata.name`
    Name,
    /// `metadata.namespace`
    Namespace,
    /// `spec.workloadRef.name`
    WorkloadName,
    /// `metadata.labels['<key>']`
    Label(String),
    /// `metadata.annotations['<key>']`
    Annotation(String),
}

/// Reads a `fieldPath` as Kubernetes writes one (`metadata.labels['app']`, with single or
/// double quotes); `None` for paths crossfade does not resolve.
pub fn field_ref(path: &str) -> Option<FieldRef> {
    let keyed = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?;
        let key = rest
            .strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))?;
        (!key.is_empty()).then(|| key.to_owned())
    };
    match path {
        "metadata.name" => Some(FieldRef::Name),
        "metadata.namespace" => Some(FieldRef::Namespace),
        "spec.workloadRef.name" => Some(FieldRef::WorkloadName),
        _ => keyed("metadata.labels")
            .map(FieldRef::Label)
            .or_else(|| keyed("metadata.annotations").map(FieldRef::Annotation)),
    }
}

/// `args[]` given by a Rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutArg {
    pub name: String,
    pub value: RolloutArgValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutArgValue {
    Value(String),
    /// `valueFrom.podTemplateHashValue: Stable|Latest`: here, the stable or canary revision
    /// name.
    RevisionName(RevisionSelector),
    /// `valueFrom.fieldRef.fieldPath`: a field of the Rollout (`metadata.name`, ...).
    FieldRef(String),
}

/// `setHeaderRoute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRoute {
    pub name: String,
    /// Every entry must match; an empty list removes the route.
    pub matches: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    pub header_name: String,
    pub value: StringMatch,
}

/// `headerValue.{exact|prefix|regex}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// Checked to compile when decoded.
    Regex(String),
}

/// `setMirrorRoute`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRoute {
    pub name: String,
    /// Share of requests mirrored; `None` removes the route.
    pub percentage: Option<Percent>,
    /// `match[].headers`: only matching requests are mirrored (all when empty).
    pub matches: Vec<HeaderMatch>,
}

/// `argoproj.io/v1alpha1` `AnalysisTemplate` or `ClusterAnalysisTemplate`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisTemplate {
    pub meta: Meta,
    pub cluster_scoped: bool,
    pub args: Vec<TemplateArg>,
    pub metrics: Vec<Metric>,
    /// `spec.templates`: the templates this one is composed of (their metrics and args are
    /// this one's too, as Argo merges them); a ClusterAnalysisTemplate may only name others.
    pub templates: Vec<TemplateRef>,
}

/// `spec.args[]`: an argument without a value must be given by the Rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateArg {
    pub name: String,
    /// `value`: the default.
    pub value: Option<String>,
    /// `valueFrom` is set (a secret or field reference).
    pub value_from: bool,
    /// `valueFrom.secretKeyRef`: read from the operator's secrets directory when measured.
    pub secret: Option<SecretKeyRef>,
}

/// `valueFrom.secretKeyRef.{name, key}`: a key of a Kubernetes Secret, which crossfade reads
/// from `<secrets dir>/<name>/<key>` (a Secret volume's layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl TemplateArg {
    pub fn is_required(&self) -> bool {
        self.value.is_none() && !self.value_from
    }
}

/// `spec.metrics[]`.
///
/// Any string may hold `{{args.<name>}}` placeholders, substituted when the analysis runs; a
/// numeric or duration field written as such a placeholder is [`Templated::Arg`].
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    /// Time between measurements; `None` takes one measurement.
    pub interval: Option<Templated<Duration>>,
    pub initial_delay: Option<Templated<Duration>>,
    /// Number of measurements; `None` means until the rollout ends (with an interval) or one.
    pub count: Option<Templated<u32>>,
    pub success_condition: Option<Condition>,
    pub failure_condition: Option<Condition>,
    /// Failed measurements tolerated before the metric fails (default 0).
    pub failure_limit: Templated<u32>,
    /// Inconclusive measurements tolerated before the metric is inconclusive (default 0).
    pub inconclusive_limit: Templated<u32>,
    /// Consecutive errors tolerated before the metric errors (default 4).
    pub consecutive_error_limit: Templated<u32>,
    /// A dry-run metric is measured and recorded but never fails the analysis
    /// (`spec.dryRun[].metricName`, or `dryRun: true` on the metric).
    pub dry_run: bool,
    pub provider: Provider,
}

/// A value written literally or as an argument placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Templated<T> {
    Value(T),
    /// The text, such as `{{args.interval}}`.
    Arg(String),
}

/// A success or failure condition in Argo's expression language (`result[0] >= 0.95`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub source: String,
}

/// `provider` of a metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Provider {
    Prometheus(PrometheusProvider),
    Web(WebProvider),
    /// crossfade's own measurements of the gateway, so that no Prometheus is needed.
    Crossfade(BuiltinProvider),
    /// `provider.job`: the Job's first container's command, run as a local process.
    Job(JobProvider),
}

/// `provider.job`: a Kubernetes Job, run here as a local process (its first container's
/// `command` and `args`, with its `env`): exit status 0 is a successful measurement, anything
/// else a failed one after `backoffLimit` retries, as Argo reads a Job's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProvider {
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `spec.backoffLimit`: retries after a failure (Kubernetes' default, 6).
    pub backoff_limit: u32,
    /// `spec.activeDeadlineSeconds`: the longest the Job may run, retries included (default
    /// 600 s here).
    pub deadline: Duration,
}

/// `provider.prometheus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusProvider {
    pub address: String,
    pub query: String,
    /// `timeout` in seconds.
    pub timeout: Option<Duration>,
}

/// `provider.web`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebProvider {
    pub url: String,
    pub method: HttpMethod,
    pub headers: Vec<(String, String)>,
    /// `body`, or `jsonBody` serialised as JSON.
    pub body: Option<String>,
    /// `jsonPath` (`{$.data.ok}`) selecting the result from the response.
    pub json_path: Option<String>,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    pub insecure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
}

/// `provider.crossfade`: a measurement of the gateway's own traffic.
///
/// ```yaml
/// provider:
///   crossfade:
///     metric: success-rate   # see BuiltinMetric
///     revision: canary       # canary (default) or stable
///     window: 1m             # how far back to look (default 1m)
///     quantile: 0.99         # latency only (default 0.99)
/// ```
///
/// With `compare: stable` the canary is judged against the stable revision and `result` is
/// the judge's verdict (see `analysis::compare`):
///
/// ```yaml
///   crossfade:
///     metric: error-rate     # error-rate, client-error-rate, latency, mirror-agreement
///     compare: stable
///     tolerance: 1.5         # how much worse than stable is tolerated (defaults per metric)
///     minSample: 100         # canary requests before any verdict
///     confidence: 0.95       # 1 - the chance of failing a canary within tolerance
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltinProvider {
    pub metric: BuiltinMetric,
    pub revision: RevisionSelector,
    pub window: Duration,
    /// For [`BuiltinMetric::Latency`]: the quantile, in (0, 1].
    pub quantile: f64,
    /// Judge the canary against the stable revision (`compare: stable`).
    pub compare: Option<Compare>,
}

/// How a `compare: stable` metric judges; `None` fields take the judge's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compare {
    pub tolerance: Option<f64>,
    pub min_sample: Option<u64>,
    /// In (0, 1): 0.95 fails a canary within tolerance at most 5% of the time.
    pub confidence: Option<f64>,
    /// Whether `window` was written; without it the comparison covers the whole run (up to
    /// the last ten minutes).
    pub window_given: bool,
}

/// What the built-in provider measures. Each yields a single number as `result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinMetric {
    /// `success-rate`: share of requests answered without error, 0 to 1.
    SuccessRate,
    /// `error-rate`: share of requests that failed, 0 to 1.
    ErrorRate,
    /// `client-error-rate`: share of requests refused as the client's fault (4xx), 0 to 1.
    ClientErrorRate,
    /// `latency`: the chosen quantile of request latency, in seconds.
    Latency,
    /// `request-rate`: requests per second.
    RequestRate,
    /// `mirror-agreement`: share of mirrored requests on which the canary predicted the same
    /// class as the stable revision, 0 to 1.
    MirrorAgreement,
    /// `mirror-distance`: mean absolute difference between canary and stable outputs on
    /// mirrored requests.
    MirrorDistance,
    /// `prediction-drift` (with `compare: stable` only): the canary's predicted classes and
    /// top scores against stable's on mirrored requests.
    PredictionDrift,
}

/// Which side of a rollout a value refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevisionSelector {
    Canary,
    Stable,
}

#[cfg(test)]
mod redaction {
    use super::*;

    #[test]
    fn secrets_in_uris_are_hidden_and_the_digest_stays() {
        let d = "sha256-".to_owned() + &"ab".repeat(32);
        assert_eq!(
            redact_uri(&format!(
                "https://user:pass@models.example/iris/{d}/model.onnx?X-Amz-Signature=abc&X-Amz-Credential=AKIA"
            )),
            format!("https://***@models.example/iris/{d}/model.onnx?***")
        );
        assert_eq!(redact_uri("s3://bucket/key"), "s3://bucket/key");
        assert_eq!(redact_uri("file:///srv/m.onnx"), "file:///srv/m.onnx");
        assert_eq!(redact_uri("http://h/p#token"), "http://h/p#***");
        assert_eq!(
            redact_uris("fetching https://u:p@h/x?sig=1 failed (see http://other/y?t=2)."),
            "fetching https://***@h/x?*** failed (see http://other/y?***)."
        );
        assert_eq!(redact_uris("no uri here"), "no uri here");
    }

    #[test]
    fn oci_and_pvc_uris_parse_with_their_pins() {
        let hex = "0f".repeat(32);
        let u = StorageUri::parse(&format!("oci://ghcr.io/org/iris@sha256:{hex}")).unwrap();
        assert_eq!(u.scheme, Scheme::Oci);
        assert_eq!(u.digest.unwrap().to_string(), hex);
        let u = StorageUri::parse("oci+native://localhost:5000/iris:v1").unwrap();
        assert_eq!((u.scheme, u.digest), (Scheme::Oci, None));
        assert_eq!(
            StorageUri::parse("oci://iris"),
            Err(UriError::NoLocation),
            "a registry and no repository"
        );
        assert_eq!(
            StorageUri::parse("oci://r/iris@latest"),
            Err(UriError::BadImageDigest("latest".into()))
        );
        let u = StorageUri::parse(&format!("pvc://models/iris/sha256-{hex}/model.onnx")).unwrap();
        assert_eq!(u.scheme, Scheme::Pvc);
        assert_eq!(u.digest.unwrap().to_string(), hex);
    }

    #[test]
    fn kserve_stock_images_are_recognised_as_released_and_as_in_its_repository() {
        for image in [
            "kserve/sklearnserver:v0.15.0",
            "kserve-sklearnserver:replace",
            "docker.io/seldonio/mlserver:1.5.0",
            "mlserver:replace",
            "kserve-huggingfaceserver:replace",
            "registry.internal:5000/mirror/kserve/xgbserver@sha256:00",
        ] {
            assert!(is_stock_image(image), "{image}");
        }
        for image in [
            "nvcr.io/nvidia/tritonserver:23.05-py3",
            "tensorflow/serving:2.6.2",
            "kserve/paddleserver:latest",
        ] {
            assert!(!is_stock_image(image), "{image}");
        }
    }
}
