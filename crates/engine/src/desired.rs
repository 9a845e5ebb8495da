//! The desired state of a commit: each InferenceService's predictor, its revision identity, and
//! the strategy that moves traffic to it.

use std::fmt;

use manifest::{InferenceService, Manifests, ModelSpec, Percent, ProtocolVersion};
use sha2::{Digest, Sha256};

/// A service, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    pub namespace: String,
    pub name: String,
}

impl ServiceId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One InferenceService as a commit declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredService {
    pub id: ServiceId,
    pub model: ModelSpec,
    /// Identity of the predictor spec: the same hash is the same revision.
    pub spec_hash: String,
    /// KServe's `canaryTrafficPercent` (ignored when a Rollout drives the service).
    pub canary_traffic_percent: Option<Percent>,
    pub tag_routing: bool,
    /// KServe's `spec.predictor.timeout`: how long its model server may take per request.
    pub request_timeout: Option<std::time::Duration>,
    /// The Rollout that drives the service, if any.
    pub rollout: Option<String>,
    /// The annotation `crossfade.dev/signature-change: intended`: a new revision may take
    /// other inputs or drop outputs (its clients change with it); otherwise one that does is
    /// refused before it gets any traffic.
    pub signature_change: bool,
    /// The canary's share the Rollout sets now (see [`crate::rollout`]); with a Rollout and
    /// none set, the canary waits at 0%.
    pub rollout_weight: Option<Percent>,
}

/// The desired services of a set of manifests, sorted by id. Call it only on manifests
/// without errors: a commit with errors is not applied at all.
pub fn desired_state(manifests: &Manifests) -> Vec<DesiredService> {
    let drivers = Drivers::new(manifests);
    let mut out: Vec<DesiredService> = manifests
        .inference_services
        .iter()
        .map(|isvc| desired_service(&isvc.value, &drivers))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Which Rollout drives each workload: the first that names it.
pub struct Drivers<'a> {
    by_workload: std::collections::HashMap<(&'a str, &'a str), &'a str>,
}

impl<'a> Drivers<'a> {
    pub fn new(manifests: &'a Manifests) -> Self {
        let mut by_workload = std::collections::HashMap::with_capacity(manifests.rollouts.len());
        for r in &manifests.rollouts {
            let key = (
                r.value.meta.namespace_or_default(),
                r.value.workload.as_str(),
            );
            by_workload.entry(key).or_insert(r.value.meta.name.as_str());
        }
        Self { by_workload }
    }
}

/// The annotation that allows a new revision to change the model's signature.
pub const SIGNATURE_CHANGE: &str = "crossfade.dev/signature-change";

/// One InferenceService as [`desired_state`] has it.
pub fn desired_service(isvc: &InferenceService, drivers: &Drivers<'_>) -> DesiredService {
    let id = ServiceId::new(isvc.meta.namespace_or_default(), &isvc.meta.name);
    let rollout = drivers
        .by_workload
        .get(&(id.namespace.as_str(), id.name.as_str()))
        .map(|name| (*name).to_owned());
    let signature_change = isvc
        .meta
        .annotations
        .get(SIGNATURE_CHANGE)
        .is_some_and(|v| v == "intended");
    DesiredService {
        spec_hash: revision_hash(&isvc.predictor.model, signature_change),
        model: isvc.predictor.model.clone(),
        canary_traffic_percent: isvc.predictor.canary_traffic_percent,
        tag_routing: isvc.tag_routing,
        request_timeout: isvc.predictor.timeout,
        rollout,
        rollout_weight: None,
        signature_change,
        id,
    }
}

/// A revision's identity: [`spec_hash`], and whether its signature may change. Allowing it
/// makes another revision (a model refused for its signature is loaded afresh, under the new
/// allowance); without the annotation the hash is `spec_hash` alone, as revisions were named
/// before it existed.
pub fn revision_hash(model: &ModelSpec, signature_change: bool) -> String {
    let base = spec_hash(model);
    if !signature_change {
        return base;
    }
    let mut h = Sha256::new();
    h.update(base.as_bytes());
    h.update(b"\0signature-change=intended");
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// sha256 over the fields of a predictor that change what is served: model format and version,
/// artifact URI, runtime and protocol. How the manifest spells it (`model` or `onnx`) and
/// traffic settings do not count.
pub fn spec_hash(model: &ModelSpec) -> String {
    let protocol = match model.protocol_version {
        None => "",
        Some(ProtocolVersion::V1) => "v1",
        Some(ProtocolVersion::V2) => "v2",
        Some(ProtocolVersion::GrpcV1) => "grpc-v1",
        Some(ProtocolVersion::GrpcV2) => "grpc-v2",
    };
    let fields = [
        model.format.name.as_str(),
        model.format.version.as_deref().unwrap_or(""),
        model.storage_uri.raw.as_str(),
        model.runtime.as_deref().unwrap_or(""),
        protocol,
    ];
    let mut h = Sha256::new();
    for f in fields {
        // Length-prefixed, so that no two field lists hash alike.
        h.update((f.len() as u64).to_le_bytes());
        h.update(f.as_bytes());
    }
    hex(&h.finalize())
}
