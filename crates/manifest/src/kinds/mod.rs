//! Decoding of each accepted kind from a YAML document: one module per kind, sharing the
//! [`Doc`] context.

mod analysis_template;
mod application;
mod inference_service;
mod rollout;
mod serving_runtime;

pub(crate) use analysis_template::analysis_template;
pub(crate) use application::application;
pub(crate) use inference_service::inference_service;
pub(crate) use rollout::{Workload, rollout, rollout_workload};
pub(crate) use serving_runtime::serving_runtime;

use crate::decode::{At, Cx};
use crate::source::Span;
use crate::types::*;
use crate::validate::{Index, Ref, RefTarget};
use crate::yaml::NodeKind;

/// Everything about the document being decoded that the per-kind decoders share.
pub(crate) struct Doc<'a, 'd> {
    pub cx: Cx<'d>,
    pub index: &'a mut Index,
    pub namespace: String,
    pub require_digest: bool,
}

/// Fields of a Kubernetes container that are valid upstream and do not change local serving.
pub(crate) const CONTAINER_TOLERATED: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "resources",
    "ports",
    "volumeMounts",
    "volumeDevices",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "securityContext",
    "workingDir",
    "envFrom",
    "env",
    "args",
    "command",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "stdin",
    "stdinOnce",
    "tty",
    "resizePolicy",
    "restartPolicy",
];

pub(crate) const PROTOCOLS: &[(&str, ProtocolVersion)] = &[
    ("v1", ProtocolVersion::V1),
    ("v2", ProtocolVersion::V2),
    ("grpc-v1", ProtocolVersion::GrpcV1),
    ("grpc-v2", ProtocolVersion::GrpcV2),
];

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Records a cross-resource reference for [`crate::validate`]; returns its index.
pub(crate) fn doc_ref(doc: &mut Doc<'_, '_>, target: RefTarget, name: &str, at: &At<'_>) -> usize {
    doc.index.refs.push(Ref {
        target,
        namespace: doc.namespace.clone(),
        name: name.to_owned(),
        file: doc.cx.file,
        span: at.span(),
        field: at.path.clone(),
        args_given: None,
        from_template: None,
    });
    doc.index.refs.len() - 1
}

/// The span of a document's `metadata.name` value, or of the document.
pub(crate) fn name_span(root: &At<'_>) -> Span {
    if let NodeKind::Map(entries) = &root.node.kind
        && let Some((_, meta)) = entries
            .iter()
            .find(|(k, _)| k.scalar_text() == Some("metadata"))
        && let NodeKind::Map(m) = &meta.kind
        && let Some((_, n)) = m.iter().find(|(k, _)| k.scalar_text() == Some("name"))
    {
        return n.span;
    }
    root.node.span
}
