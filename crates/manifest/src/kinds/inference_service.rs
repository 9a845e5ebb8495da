//! KServe `InferenceService`, in the `model` form and the older per-framework form.

use crate::decode::{At, Cx, Fields, Map};
use crate::diag::Code;
use crate::types::*;
use crate::validate::{FormatUse, NamedSpan, RefTarget};
use crate::yaml::Resolved;

use super::{CONTAINER_TOLERATED, Doc, PROTOCOLS, doc_ref};

/// Pod-level fields of a KServe component that do not change local serving.
const COMPONENT_TOLERATED: &[&str] = &[
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "autoScaling",
    "containerConcurrency",
    "batcher",
    "logger",
    "labels",
    "annotations",
    "deploymentStrategy",
    "serviceAccountName",
    "nodeSelector",
    "nodeName",
    "tolerations",
    "affinity",
    "imagePullSecrets",
    "volumes",
    "securityContext",
    "priorityClassName",
    "priority",
    "runtimeClassName",
    "schedulerName",
    "hostNetwork",
    "hostIPC",
    "hostPID",
    "dnsPolicy",
    "dnsConfig",
    "initContainers",
    "terminationGracePeriodSeconds",
    "topologySpreadConstraints",
    "automountServiceAccountToken",
    "workerSpec",
    "enableServiceLinks",
    "shareProcessNamespace",
    "hostAliases",
];

/// The older per-framework predictor keys and the model format each one means.
const FRAMEWORKS: &[(&str, &str)] = &[
    ("sklearn", "sklearn"),
    ("xgboost", "xgboost"),
    ("tensorflow", "tensorflow"),
    ("pytorch", "pytorch"),
    ("triton", "triton"),
    ("onnx", "onnx"),
    ("pmml", "pmml"),
    ("lightgbm", "lightgbm"),
    ("paddle", "paddle"),
    ("huggingface", "huggingface"),
];

// === KServe InferenceService ===

pub(crate) fn inference_service(
    doc: &mut Doc<'_, '_>,
    root: &Map<'_>,
    meta: Meta,
    spec: &At<'_>,
) -> Option<InferenceService> {
    let tag_routing = tag_routing(&mut doc.cx, root);
    let cx = &mut doc.cx;
    let spec = cx.map(
        spec,
        &Fields {
            known: &["predictor", "transformer", "explainer"],
            tolerated: &[],
        },
    )?;
    for part in ["transformer", "explainer"] {
        if let Some(at) = spec.get(part) {
            cx.warning(
                Code::IgnoredField,
                &at,
                format!("crossfade serves the predictor only; the {part} is ignored"),
            );
        }
    }
    let predictor_at = spec.req(&mut doc.cx, "predictor")?;
    let predictor = predictor(doc, &meta.name, &predictor_at)?;
    Some(InferenceService {
        meta,
        predictor,
        tag_routing,
    })
}

fn predictor(doc: &mut Doc<'_, '_>, name: &str, at: &At<'_>) -> Option<Predictor> {
    const KNOWN: &[&str] = &[
        "model",
        "canaryTrafficPercent",
        "timeout",
        "containers",
        "sklearn",
        "xgboost",
        "tensorflow",
        "pytorch",
        "triton",
        "onnx",
        "pmml",
        "lightgbm",
        "paddle",
        "huggingface",
    ];
    let known = KNOWN;
    let cx = &mut doc.cx;
    let m = cx.map(
        at,
        &Fields {
            known,
            tolerated: COMPONENT_TOLERATED,
        },
    )?;
    let canary_at = m.get("canaryTrafficPercent");
    let canary_traffic_percent = canary_at.as_ref().and_then(|a| cx.percent(a));
    // KServe's per-request timeout, in whole seconds.
    let timeout = m
        .get("timeout")
        .and_then(|a| cx.int_in(&a, 1, 86_400))
        .map(|s| std::time::Duration::from_secs(s as u64));
    if let Some(a) = &canary_at {
        doc.index.canary_percents.push(NamedSpan {
            namespace: doc.namespace.clone(),
            name: name.to_owned(),
            file: doc.cx.file,
            span: a.span(),
        });
    }
    let cx = &mut doc.cx;
    let mut forms: Vec<(At<'_>, PredictorForm)> = Vec::new();
    if let Some(a) = m.get("model") {
        forms.push((a, PredictorForm::Model));
    }
    for (key, _) in FRAMEWORKS {
        if let Some(a) = m.get(key) {
            forms.push((a, PredictorForm::Framework(key)));
        }
    }
    let containers = m.get("containers");
    let (model_at, form) = match forms.as_slice() {
        [] => {
            if let Some(c) = containers {
                cx.error(
                    Code::Unsupported,
                    &c,
                    "custom container predictors are not served by crossfade",
                )
                .hint = Some(
                    "use `spec.predictor.model` with a `modelFormat`; a ServingRuntime can start any server as a local process".into(),
                );
            } else {
                cx.missing(
                    at,
                    "model",
                    "the predictor names no model: add `model` (or a framework such as `onnx`)",
                );
            }
            return None;
        }
        [one] => one.clone(),
        [first, rest @ ..] => {
            for (other, _) in rest {
                cx.error(
                    Code::InvalidValue,
                    &At {
                        node: other.node,
                        path: other.path.clone(),
                        key_span: other.key_span,
                    },
                    format!(
                        "a predictor serves one model, but both `{}` and `{}` are given",
                        first.0.path.rsplit('.').next().unwrap_or_default(),
                        other.path.rsplit('.').next().unwrap_or_default()
                    ),
                );
            }
            return None;
        }
    };
    if let Some(c) = containers {
        cx.warning(
            Code::IgnoredField,
            &c,
            "extra predictor containers are not run by crossfade",
        );
    }
    let model = model_spec(doc, &model_at, form)?;
    Some(Predictor {
        model,
        canary_traffic_percent,
        timeout,
    })
}

fn model_spec(doc: &mut Doc<'_, '_>, at: &At<'_>, form: PredictorForm) -> Option<ModelSpec> {
    let known: &'static [&'static str] = match form {
        PredictorForm::Model => &[
            "modelFormat",
            "storageUri",
            "runtime",
            "protocolVersion",
            "storage",
            "runtimeVersion",
        ],
        PredictorForm::Framework(_) => {
            &["storageUri", "protocolVersion", "storage", "runtimeVersion"]
        }
    };
    let tolerated = CONTAINER_TOLERATED;
    let doc_require_digest = doc.require_digest;
    let cx = &mut doc.cx;
    let m = cx.map(at, &Fields { known, tolerated })?;
    let format = match form {
        PredictorForm::Model => m.req(cx, "modelFormat").and_then(|a| {
            let f = cx.map(
                &a,
                &Fields {
                    known: &["name", "version"],
                    tolerated: &[],
                },
            )?;
            let name = f.req(cx, "name").and_then(|a| cx.nonempty_string(&a));
            let version = f.get("version").and_then(|a| cx.string(&a));
            Some(ModelFormat {
                name: name?.to_ascii_lowercase(),
                version,
            })
        }),
        PredictorForm::Framework(key) => Some(ModelFormat {
            name: FRAMEWORKS
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(key, |(_, f)| *f)
                .to_owned(),
            version: None,
        }),
    };
    let runtime = m.get("runtime").and_then(|a| cx.nonempty_string(&a));
    if let (Some(name), Some(rt_at)) = (&runtime, m.get("runtime")) {
        doc_ref(doc, RefTarget::ServingRuntime, name, &rt_at);
    } else if let Some(f) = &format {
        let (field_at, field) = match form {
            PredictorForm::Model => (
                m.get("modelFormat").unwrap_or_else(|| at.clone()),
                format!("{}.modelFormat.name", at.path),
            ),
            PredictorForm::Framework(_) => (at.clone(), at.path.clone()),
        };
        doc.index.formats.push(FormatUse {
            namespace: doc.namespace.clone(),
            format: f.name.clone(),
            file: doc.cx.file,
            span: field_at.key_or_node_span(),
            field,
        });
    }
    let cx = &mut doc.cx;
    let protocol_version = m
        .get("protocolVersion")
        .and_then(|a| cx.one_of(&a, PROTOCOLS));
    let storage_uri = match m.get("storageUri") {
        Some(a) => storage_uri(cx, &a, doc_require_digest),
        None => {
            let d = cx.missing(
                at,
                "storageUri",
                "missing required field `storageUri`: crossfade serves artifacts named by URI",
            );
            if m.has("storage") {
                d.hint = Some("`storage` (a storage-config secret key) is not supported; write the artifact's URI in `storageUri`".into());
            }
            None
        }
    };
    Some(ModelSpec {
        format: format?,
        storage_uri: storage_uri?,
        runtime,
        protocol_version,
        form,
    })
}

/// What to do instead of a storage scheme crossfade does not fetch.
fn scheme_hint(scheme: &str) -> String {
    const ACCEPTED: &str = "accepted schemes: file, http, https, s3, gs, pvc (a directory per claim), oci (an image's layers)";
    let instead = "publish the files with `crossfade artifact push <dir> --to oci://<registry>/<repository>` (or s3://..., file://...), which pins their digest, and point storageUri at the URI it prints";
    let why = match scheme.trim_end_matches("://").to_ascii_lowercase().as_str() {
        "hf" => {
            "Hugging Face repositories move under their names: download one revision (`huggingface-cli download <repo> --revision <commit> --local-dir m`), then "
        }
        "modelscope" | "model-registry" => {
            "registries resolve names to files crossfade cannot pin: download the files, then "
        }
        _ => "",
    };
    if why.is_empty() {
        return ACCEPTED.into();
    }
    format!("{ACCEPTED}; {why}{instead}")
}

/// Parses and checks a `storageUri`.
pub(crate) fn storage_uri(
    cx: &mut Cx<'_>,
    at: &At<'_>,
    require_digest: bool,
) -> Option<StorageUri> {
    let raw = cx.nonempty_string(at)?;
    let uri = match StorageUri::parse(&raw) {
        Ok(uri) => uri,
        Err(e) => {
            let (code, hint) = match &e {
                UriError::NotAUri => (
                    Code::InvalidValue,
                    Some("for a local file write file:///absolute/path".to_owned()),
                ),
                UriError::Scheme(scheme) => (Code::UnsupportedScheme, Some(scheme_hint(scheme))),
                UriError::NoLocation | UriError::BadDigest(_) | UriError::BadImageDigest(_) => {
                    (Code::InvalidValue, None)
                }
            };
            cx.error(code, at, format!("`{raw}`: {e}")).hint = hint;
            return None;
        }
    };
    if uri.digest.is_none() && require_digest {
        cx.error(
            Code::UnpinnedArtifact,
            at,
            format!("`{raw}` does not pin a sha256 digest, so the model it serves can change under the same manifest"),
        )
        .hint = Some(
            "upload with `crossfade artifact push` and use the URI it prints (a path segment sha256-<64 hex>, or for oci:// the image's @sha256:<64 hex>)".into(),
        );
    }
    Some(uri)
}

const TAG_ROUTING: &str = "serving.kserve.io/enable-tag-routing";

/// The annotation `serving.kserve.io/enable-tag-routing`: `"true"` or `"false"`.
fn tag_routing(cx: &mut Cx<'_>, root: &Map<'_>) -> bool {
    let Some(at) = root
        .get("metadata")
        .map(|m| cx.map_any(&m))
        .and_then(|m| m.get("annotations"))
        .map(|a| cx.map_any(&a))
        .and_then(|a| a.get(TAG_ROUTING))
    else {
        return false;
    };
    match at.node.resolve() {
        Some(Resolved::Str("true")) => true,
        Some(Resolved::Str("false")) => false,
        // A non-string value is already reported by the annotations check.
        Some(Resolved::Str(other)) => {
            cx.error(
                Code::InvalidValue,
                &at,
                format!("{TAG_ROUTING} must be \"true\" or \"false\", not {other:?}"),
            );
            false
        }
        _ => false,
    }
}
