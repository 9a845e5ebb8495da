//! The route table: an immutable snapshot of which revisions serve each model and how traffic
//! splits among them. The control plane builds a new one and swaps it in; requests read the
//! current one without a lock.

use std::collections::HashMap;
use std::sync::Arc;

use runtime::{Model, TensorSpec};

/// A loaded revision, ready to serve.
pub struct Revision {
    pub name: String,
    pub backend: Backend,
    /// Kept alive as long as the revision: a model server process is stopped only when the last
    /// request routed to it has finished.
    pub guard: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// `name` as the value of the `x-crossfade-revision` header, made once.
    pub(crate) header: axum::http::HeaderValue,
    /// A proxied revision's inputs and outputs as its model server declares them (V2 model
    /// metadata), when it declares them; an in-process model's come from the model.
    pub(crate) declared: Option<(Vec<TensorSpec>, Vec<TensorSpec>)>,
    /// A proxied revision whose model server speaks only V2 (MLServer): V1 requests are
    /// translated to V2 and the answers back.
    pub(crate) v2_only: bool,
}

/// Revision names are DNS-1123 labels, always valid header values; anything else is dropped.
fn header_value(name: &str) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(name)
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static(""))
}

/// What answers a revision's requests.
pub enum Backend {
    /// A model run in-process (ONNX, or a native tree ensemble).
    InProcess(Model),
    /// A model server process, proxied to.
    Proxy(Box<crate::upstream::Upstream>),
}

impl Revision {
    pub fn onnx(name: impl Into<String>, model: runtime::OnnxModel) -> Self {
        Self::in_process(name, Model::Onnx(model))
    }

    /// A revision whose model runs in-process.
    pub fn in_process(name: impl Into<String>, model: Model) -> Self {
        let name = name.into();
        Self {
            header: header_value(&name),
            name,
            backend: Backend::InProcess(model),
            guard: None,
            declared: None,
            v2_only: false,
        }
    }

    pub fn proxy(name: impl Into<String>, upstream: crate::upstream::Upstream) -> Self {
        let name = name.into();
        Self {
            header: header_value(&name),
            name,
            backend: Backend::Proxy(Box::new(upstream)),
            guard: None,
            declared: None,
            v2_only: false,
        }
    }

    /// A proxied revision whose model server speaks only V2: V1 requests to it are translated
    /// (the instances become one input; the first output's rows the predictions).
    pub fn speaking_only_v2(mut self) -> Self {
        self.v2_only = true;
        self
    }

    /// A proxied revision whose model server declares these inputs and outputs.
    pub fn with_signature(mut self, inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Self {
        self.declared = Some((inputs, outputs));
        self
    }

    /// Whether its inputs and outputs are known: an in-process model's always are, a model
    /// server's when its metadata declares them.
    pub fn signature_known(&self) -> bool {
        self.model().is_some() || self.declared.is_some()
    }

    /// The in-process model, if this revision runs one.
    pub fn model(&self) -> Option<&Model> {
        match &self.backend {
            Backend::InProcess(m) => Some(m),
            Backend::Proxy(_) => None,
        }
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        match (self.model(), &self.declared) {
            (Some(m), _) => m.inputs(),
            (None, Some((inputs, _))) => inputs,
            (None, None) => &[],
        }
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        match (self.model(), &self.declared) {
            (Some(m), _) => m.outputs(),
            (None, Some((_, outputs))) => outputs,
            (None, None) => &[],
        }
    }
}

/// How one model's traffic is routed. Build with [`Route::new`].
#[derive(Clone)]
pub struct Route {
    /// The service, as `namespace/name` (the label of its metrics).
    pub service: String,
    /// Every loaded revision of the service, by name: reachable with `/versions/<name>`.
    pub revisions: Vec<Arc<Revision>>,
    /// The weighted split: revision index and percent; the percents sum to 100.
    pub split: Vec<(usize, u8)>,
    /// Tag routing (`latest-<m>.*`, `prev-<m>.*` hosts and `x-crossfade-tag`).
    pub tag_routing: bool,
    pub latest: Option<usize>,
    pub prev: Option<usize>,
    /// Requests whose headers all match go to the given revision (Argo's `setHeaderRoute`).
    pub header_routes: Vec<HeaderRoute>,
    /// Shares of the requests the split routes also sent to another revision, whose answer is
    /// compared with the primary's and dropped: the first mirror whose header matches all hold
    /// (every request, for one without matches) decides.
    pub mirrors: Vec<Mirror>,
    /// How long a proxied revision's model server may take to answer a request (KServe's
    /// `spec.predictor.timeout`); `None`: the upstream's own answer timeout.
    pub answer_timeout: Option<std::time::Duration>,
    /// The revision that serves when no rollout is under way (the last rolled out): a request
    /// the split sent to another revision, which refused it as the client's fault although
    /// this one takes it, is that revision's failure, and this one answers it.
    pub stable: Option<usize>,
    /// Per-revision metric handles, parallel to `revisions`; filled by `Gateway::publish`.
    pub(crate) metrics: Vec<crate::metrics::RevisionMetrics>,
}

/// Mirroring: `percent` of the split's requests whose headers all match `matches` also go to
/// `revision`.
#[derive(Clone, Debug)]
pub struct Mirror {
    pub revision: usize,
    pub percent: u8,
    pub matches: Vec<(String, Match)>,
}

#[derive(Clone, Debug)]
pub struct HeaderRoute {
    pub matches: Vec<(String, Match)>,
    pub revision: usize,
}

#[derive(Clone, Debug)]
pub enum Match {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

/// All routes, by model name.
#[derive(Clone, Default)]
pub struct RouteTable {
    /// By model name. The keys and routes are shared: a table is copied at one pointer copy
    /// per model.
    pub models: HashMap<Arc<str>, Arc<Route>>,
}

impl RouteTable {
    /// Adds (or replaces) the route of `model`.
    pub fn insert(&mut self, model: String, route: Route) -> Option<Arc<Route>> {
        self.models.insert(model.into(), Arc::new(route))
    }
}

/// Why a request went where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    Split,
    Sticky,
    Pinned,
    Tag,
    Header,
}

/// What a request carries that routing looks at.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// `/versions/<name>`.
    pub version: Option<&'a str>,
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// `x-crossfade-tag`.
    pub tag: Option<&'a str>,
    /// `x-crossfade-key`.
    pub key: Option<&'a str>,
}

// === impl Route ===

impl Route {
    /// A route of `service` over `revisions`, with the split given as (revision index,
    /// percent); no tags, header routes or mirror.
    pub fn new(
        service: impl Into<String>,
        revisions: Vec<Arc<Revision>>,
        split: Vec<(usize, u8)>,
    ) -> Self {
        Self {
            service: service.into(),
            revisions,
            split,
            tag_routing: false,
            latest: None,
            prev: None,
            header_routes: Vec::new(),
            mirrors: Vec::new(),
            answer_timeout: None,
            stable: None,
            metrics: Vec::new(),
        }
    }

    /// Picks the revision for a request, or `None` when the service has nothing to serve (or
    /// the pinned version or tag does not exist).
    pub fn choose<'h>(
        &self,
        model: &str,
        facts: RequestFacts<'_>,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Option<(usize, Chosen)> {
        if let Some(v) = facts.version {
            return self
                .revisions
                .iter()
                .position(|r| r.name == v)
                .map(|i| (i, Chosen::Pinned));
        }
        if self.tag_routing {
            // `latest-<model>` or `latest-<model>.<anything>`, any port.
            let host_tag = |prefix: &str| {
                facts
                    .host
                    .and_then(|h| h.split(':').next())
                    .and_then(|h| h.strip_prefix(prefix))
                    .and_then(|h| h.strip_prefix(model))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            };
            let tag = facts.tag.or_else(|| {
                if host_tag("latest-") {
                    Some("latest")
                } else if host_tag("prev-") {
                    Some("prev")
                } else {
                    None
                }
            });
            if let Some(tag) = tag {
                let idx = match tag {
                    "latest" => self.latest,
                    "prev" => self.prev,
                    _ => None,
                };
                return idx.map(|i| (i, Chosen::Tag));
            }
        }
        for route in &self.header_routes {
            if route
                .matches
                .iter()
                .all(|(name, m)| header(name).is_some_and(|v| m.matches(v)))
            {
                return Some((route.revision, Chosen::Header));
            }
        }
        let (point, how) = match facts.key {
            Some(key) => (bucket(key), Chosen::Sticky),
            None => (fastrand::u8(0..100), Chosen::Split),
        };
        let mut acc = 0u8;
        for (idx, pct) in &self.split {
            acc = acc.saturating_add(*pct);
            if point < acc {
                return Some((*idx, how));
            }
        }
        None
    }
}

impl Match {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Match::Exact(v) => value == v,
            Match::Prefix(p) => value.starts_with(p.as_str()),
            Match::Regex(r) => r.is_match(value),
        }
    }
}

/// A stable bucket in 0..100 for a sticky key (FNV-1a: stable across processes and builds).
pub fn bucket(key: &str) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 100) as u8
}
