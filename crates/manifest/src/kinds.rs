//! Decoding of each accepted kind from a YAML document.

use std::time::Duration;

use crate::decode::{At, Cx, Fields, Map};
use crate::diag::Code;
use crate::source::Span;
use crate::types::*;
use crate::validate::{FormatUse, Index, NamedSpan, Ref, RefTarget};
use crate::yaml::{NodeKind, Resolved};

/// Everything about the document being decoded that the per-kind decoders share.
pub(crate) struct Doc<'a, 'd> {
    pub cx: Cx<'d>,
    pub index: &'a mut Index,
    pub namespace: String,
    pub require_digest: bool,
}

/// Fields of a Kubernetes container that are valid upstream and do not change local serving.
const CONTAINER_TOLERATED: &[&str] = &[
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

/// Pod-level fields of a KServe component that do not change local serving.
const COMPONENT_TOLERATED: &[&str] = &[
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "autoScaling",
    "containerConcurrency",
    "timeout",
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

const PROTOCOLS: &[(&str, ProtocolVersion)] = &[
    ("v1", ProtocolVersion::V1),
    ("v2", ProtocolVersion::V2),
    ("grpc-v2", ProtocolVersion::GrpcV2),
];

// === Argo CD Application ===

pub(crate) fn application(doc: &mut Doc<'_, '_>, meta: Meta, spec: &At<'_>) -> Option<Application> {
    let cx = &mut doc.cx;
    let spec = cx.map(
        spec,
        &Fields {
            known: &["project", "source", "destination", "syncPolicy", "sources"],
            tolerated: &["ignoreDifferences", "info", "revisionHistoryLimit"],
        },
    )?;
    if let Some(at) = spec.get("sources") {
        cx.error(
            Code::Unsupported,
            &at,
            "multi-source Applications are not supported",
        )
        .hint = Some("use a single `source` with a directory of manifests".into());
    }
    let project = match spec.get("project") {
        Some(at) => cx.string(&at).unwrap_or_default(),
        None => "default".to_owned(),
    };
    let destination = spec
        .get("destination")
        .and_then(|at| {
            let m = cx.map(
                &at,
                &Fields {
                    known: &["server", "name", "namespace"],
                    tolerated: &[],
                },
            )?;
            Some(Destination {
                server: m.get("server").and_then(|a| cx.string(&a)),
                name: m.get("name").and_then(|a| cx.string(&a)),
                namespace: m.get("namespace").and_then(|a| cx.string(&a)),
            })
        })
        .unwrap_or_default();
    let automated = spec.get("syncPolicy").and_then(|at| {
        let m = cx.map(
            &at,
            &Fields {
                known: &["automated"],
                tolerated: &["syncOptions", "retry", "managedNamespaceMetadata"],
            },
        )?;
        // `automated: {}` turns automation on with both options off.
        let at = m.get_raw("automated")?;
        if at.node.is_null() {
            return Some(AutomatedSync::default());
        }
        let a = cx.map(
            &at,
            &Fields {
                known: &["prune", "selfHeal", "enabled"],
                tolerated: &["allowEmpty"],
            },
        )?;
        let flag = |cx: &mut Cx<'_>, key| a.get(key).and_then(|at| cx.bool(&at)).unwrap_or(false);
        let enabled = a.get("enabled").and_then(|at| cx.bool(&at)).unwrap_or(true);
        let sync = AutomatedSync {
            prune: flag(cx, "prune"),
            self_heal: flag(cx, "selfHeal"),
        };
        enabled.then_some(sync)
    });
    if spec.has("sources") && !spec.has("source") {
        return None;
    }
    let source_at = spec.req(cx, "source")?;
    let source = cx.map(
        &source_at,
        &Fields {
            known: &[
                "repoURL",
                "path",
                "targetRevision",
                "helm",
                "kustomize",
                "plugin",
                "chart",
            ],
            tolerated: &["directory", "ref", "name"],
        },
    )?;
    for tool in ["helm", "kustomize", "plugin", "chart"] {
        if let Some(at) = source.get(tool) {
            cx.error(
                Code::Unsupported,
                &at,
                format!("`{tool}` sources are not supported: crossfade reads plain YAML manifests"),
            )
            .hint =
                Some("render the manifests into the repository and point `path` at them".into());
        }
    }
    let repo_url = source
        .req(cx, "repoURL")
        .and_then(|a| cx.nonempty_string(&a));
    let path = match source.get("path") {
        Some(a) => cx.string(&a),
        None => Some(".".to_owned()),
    };
    let target_revision = match source.get("targetRevision") {
        Some(a) => cx.nonempty_string(&a),
        None => Some("HEAD".to_owned()),
    };
    Some(Application {
        meta,
        project,
        source: ApplicationSource {
            repo_url: repo_url?,
            path: path?,
            target_revision: target_revision?,
        },
        destination,
        automated,
    })
}

// === KServe InferenceService ===

pub(crate) fn inference_service(
    doc: &mut Doc<'_, '_>,
    meta: Meta,
    spec: &At<'_>,
) -> Option<InferenceService> {
    let tag_routing = match meta.annotations.get("serving.kserve.io/enable-tag-routing") {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => {
            doc.cx
                .error(
                    Code::InvalidValue,
                    spec,
                    format!("annotation serving.kserve.io/enable-tag-routing must be \"true\" or \"false\", not {v:?}"),
                )
                .field = "metadata.annotations.serving.kserve.io/enable-tag-routing".into();
            false
        }
    };
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
                let d = cx.error(
                    Code::MissingField,
                    at,
                    "the predictor names no model: add `model` (or a framework such as `onnx`)",
                );
                d.field = format!("{}.model", at.path);
                d.span = at.key_or_node_span();
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
            let d = cx.error(
                Code::MissingField,
                at,
                "missing required field `storageUri`: crossfade serves artifacts named by URI",
            );
            d.field = format!("{}.storageUri", at.path);
            d.span = at.key_or_node_span();
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

/// Parses and checks a `storageUri`.
pub(crate) fn storage_uri(
    cx: &mut Cx<'_>,
    at: &At<'_>,
    require_digest: bool,
) -> Option<StorageUri> {
    let raw = cx.nonempty_string(at)?;
    let Some((scheme, rest)) = raw.split_once("://") else {
        cx.error(
            Code::InvalidValue,
            at,
            format!("`{raw}` is not a URI: expected <scheme>://<location>"),
        )
        .hint = Some("for a local file write file:///absolute/path".into());
        return None;
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "file" => Scheme::File,
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        "s3" => Scheme::S3,
        "gs" => Scheme::Gs,
        other => {
            cx.error(
                Code::UnsupportedScheme,
                at,
                format!("storage scheme `{other}://` is not supported"),
            )
            .hint = Some("accepted schemes: file, http, https, s3, gs".into());
            return None;
        }
    };
    if rest.is_empty() {
        cx.error(Code::InvalidValue, at, format!("`{raw}` names no location"));
        return None;
    }
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let mut digest = None;
    for segment in path.split('/') {
        let Some(hex) = segment
            .strip_prefix("sha256-")
            .or_else(|| segment.strip_prefix("sha256:"))
        else {
            continue;
        };
        match Digest::from_hex(hex) {
            Some(d) => digest = Some(d),
            None => {
                cx.error(
                    Code::InvalidValue,
                    at,
                    format!(
                        "`{segment}` is not a sha256 digest: expected 64 hex digits after `sha256-`"
                    ),
                );
                return None;
            }
        }
    }
    if digest.is_none() && require_digest {
        cx.error(
            Code::UnpinnedArtifact,
            at,
            format!("`{raw}` does not pin a sha256 digest, so the model it serves can change under the same manifest"),
        )
        .hint = Some(
            "upload with `crossfade artifact push` and use the URI it prints (a path segment sha256-<64 hex>)".into(),
        );
    }
    Some(StorageUri {
        raw,
        scheme,
        digest,
    })
}

// === KServe ServingRuntime / ClusterServingRuntime ===

pub(crate) fn serving_runtime(
    doc: &mut Doc<'_, '_>,
    meta: Meta,
    spec: &At<'_>,
    cluster_scoped: bool,
) -> Option<ServingRuntime> {
    let cx = &mut doc.cx;
    let spec = cx.map(
        spec,
        &Fields {
            known: &[
                "supportedModelFormats",
                "containers",
                "protocolVersions",
                "disabled",
            ],
            tolerated: &[
                "multiModel",
                "grpcEndpoint",
                "grpcDataEndpoint",
                "httpDataEndpoint",
                "replicas",
                "storageHelper",
                "builtInAdapter",
                "annotations",
                "labels",
                "nodeSelector",
                "affinity",
                "tolerations",
                "volumes",
                "imagePullSecrets",
                "workerSpec",
                "hostIPC",
                "serviceAccountName",
                "priorityClassName",
                "imagePullPolicy",
            ],
        },
    )?;
    let formats = spec
        .get("supportedModelFormats")
        .map(|a| cx.seq(&a))
        .unwrap_or_default();
    let mut supported_model_formats = Vec::new();
    for f in &formats {
        let Some(m) = cx.map(
            f,
            &Fields {
                known: &["name", "version", "autoSelect", "priority"],
                tolerated: &[],
            },
        ) else {
            continue;
        };
        let name = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a));
        let version = m.get("version").and_then(|a| cx.string(&a));
        let auto_select = m
            .get("autoSelect")
            .and_then(|a| cx.bool(&a))
            .unwrap_or(false);
        let priority = m
            .get("priority")
            .and_then(|a| cx.int_in(&a, 1, i64::from(i32::MAX)))
            .map(|p| p as u32);
        if let Some(name) = name {
            supported_model_formats.push(SupportedModelFormat {
                name: name.to_ascii_lowercase(),
                version,
                auto_select,
                priority,
            });
        }
    }
    let protocol_versions = match spec.get("protocolVersions") {
        Some(a) => cx
            .seq(&a)
            .iter()
            .filter_map(|p| cx.one_of(p, PROTOCOLS))
            .collect(),
        None => vec![ProtocolVersion::V1],
    };
    let disabled = spec
        .get("disabled")
        .and_then(|a| cx.bool(&a))
        .unwrap_or(false);
    let containers_at = spec.req(cx, "containers")?;
    let containers = cx.seq(&containers_at);
    let Some(first) = containers.first() else {
        cx.error(
            Code::MissingField,
            &containers_at,
            "`containers` is empty: the runtime needs one container",
        );
        return None;
    };
    if containers.len() > 1 {
        cx.warning(
            Code::IgnoredField,
            &containers[1],
            "crossfade runs only the first container of a runtime",
        );
    }
    let c = cx.map(
        first,
        &Fields {
            known: &["name", "image", "command", "args", "env"],
            tolerated: CONTAINER_TOLERATED,
        },
    )?;
    let command = c.get("command").map(|a| cx.strings(&a)).unwrap_or_default();
    let args = c.get("args").map(|a| cx.strings(&a)).unwrap_or_default();
    if command.is_empty() {
        let d = cx.warning(
            Code::Unsupported,
            first,
            "no `command`: crossfade starts a runtime as a local process and cannot run an image's entrypoint",
        );
        d.field = format!("{}.command", first.path);
        d.hint = Some("give the server's command line in `command` (and `args`)".into());
    }
    let mut env = Vec::new();
    if let Some(env_at) = c.get("env") {
        for e in cx.seq(&env_at) {
            let Some(m) = cx.map(
                &e,
                &Fields {
                    known: &["name", "value", "valueFrom"],
                    tolerated: &[],
                },
            ) else {
                continue;
            };
            let name = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a));
            if let Some(vf) = m.get("valueFrom") {
                cx.warning(
                    Code::Unsupported,
                    &vf,
                    "`valueFrom` is not resolved locally; the variable is not set",
                );
                continue;
            }
            let value = m
                .get("value")
                .and_then(|a| cx.string(&a))
                .unwrap_or_default();
            if let Some(name) = name {
                env.push((name, value));
            }
        }
    }
    Some(ServingRuntime {
        meta,
        cluster_scoped,
        supported_model_formats,
        protocol_versions,
        disabled,
        container: RuntimeContainer {
            name: c.get("name").and_then(|a| cx.string(&a)),
            image: c.get("image").and_then(|a| cx.string(&a)),
            command,
            args,
            env,
        },
    })
}

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
        if let Some(a) = m.req(cx, "apiVersion") {
            if let Some(v) = cx.string(&a) {
                if v != "serving.kserve.io/v1beta1" {
                    cx.error(
                        Code::InvalidValue,
                        &a,
                        format!("an InferenceService workloadRef needs apiVersion serving.kserve.io/v1beta1, not {v}"),
                    );
                }
            }
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
const ALL_STEP_KEYS: &[&str] = &[
    "setWeight",
    "pause",
    "analysis",
    "setHeaderRoute",
    "setMirrorRoute",
    "experiment",
    "setCanaryScale",
    "plugin",
];

fn step(doc: &mut Doc<'_, '_>, at: &At<'_>) -> Option<Step> {
    let known = ALL_STEP_KEYS;
    let cx = &mut doc.cx;
    let m = cx.map(
        at,
        &Fields {
            known,
            tolerated: &[],
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
    let present: Vec<_> = STEP_KINDS.iter().filter_map(|k| m.get_raw(k)).collect();
    let a = match present.as_slice() {
        [one] => one.clone(),
        [] => {
            cx.error(
                Code::MissingField,
                at,
                "a step needs one of setWeight, pause, analysis, setHeaderRoute, setMirrorRoute",
            );
            return None;
        }
        [_, second, ..] => {
            cx.error(
                Code::InvalidValue,
                second,
                "a step does exactly one thing: split this into separate steps",
            );
            return None;
        }
    };
    let kind = a.path.rsplit('.').next().unwrap_or_default().to_owned();
    match kind.as_str() {
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
            if let Some(list) = m.get("match") {
                for item in cx.seq(&list) {
                    let Some(hm) = cx.map(
                        &item,
                        &Fields {
                            known: &["headerName", "headerValue"],
                            tolerated: &[],
                        },
                    ) else {
                        continue;
                    };
                    let header_name = hm
                        .req(cx, "headerName")
                        .and_then(|a| cx.nonempty_string(&a));
                    let value = hm.req(cx, "headerValue").and_then(|a| string_match(cx, &a));
                    if let (Some(header_name), Some(value)) = (header_name, value) {
                        matches.push(HeaderMatch { header_name, value });
                    }
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
            let mut matches = Vec::new();
            if let Some(list) = m.get("match") {
                for item in cx.seq(&list) {
                    let Some(rm) = cx.map(
                        &item,
                        &Fields {
                            known: &["headers", "method", "path"],
                            tolerated: &[],
                        },
                    ) else {
                        continue;
                    };
                    for key in ["method", "path"] {
                        if let Some(x) = rm.get(key) {
                            cx.warning(
                                Code::IgnoredField,
                                &x,
                                format!("mirror matching on `{key}` is not supported: every inference request is a POST to the model's route"),
                            );
                        }
                    }
                    if let Some(h) = rm.get("headers") {
                        if let NodeKind::Map(entries) = &h.node.kind {
                            for (k, v) in entries {
                                let vat = At {
                                    node: v,
                                    path: format!(
                                        "{}.{}",
                                        h.path,
                                        k.scalar_text().unwrap_or_default()
                                    ),
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
    let given: Vec<_> = ["exact", "prefix", "regex"]
        .iter()
        .filter_map(|k| m.get_raw(k).map(|a| (*k, a)))
        .collect();
    let (kind, a) = match given.as_slice() {
        [one] => one.clone(),
        [] => {
            cx.error(
                Code::MissingField,
                at,
                "give one of `exact`, `prefix` or `regex`",
            );
            return None;
        }
        [_, (_, second), ..] => {
            cx.error(
                Code::InvalidValue,
                second,
                "give only one of `exact`, `prefix` or `regex`",
            );
            return None;
        }
    };
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
                    fm.req(cx, "fieldPath")
                        .and_then(|a| cx.nonempty_string(&a))
                        .map(RolloutArgValue::FieldRef)
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

// === Argo Rollouts AnalysisTemplate / ClusterAnalysisTemplate ===

const PROVIDER_KEYS: &[&str] = &[
    "prometheus",
    "web",
    "crossfade",
    "job",
    "datadog",
    "newRelic",
    "wavefront",
    "kayenta",
    "cloudWatch",
    "graphite",
    "influxdb",
    "skywalking",
    "plugin",
];

const UNSUPPORTED_PROVIDERS: &[&str] = &[
    "job",
    "datadog",
    "newRelic",
    "wavefront",
    "kayenta",
    "cloudWatch",
    "graphite",
    "influxdb",
    "skywalking",
    "plugin",
];

pub(crate) fn analysis_template(
    doc: &mut Doc<'_, '_>,
    meta: Meta,
    spec: &At<'_>,
    cluster_scoped: bool,
) -> Option<AnalysisTemplate> {
    let cx = &mut doc.cx;
    let spec = cx.map(
        spec,
        &Fields {
            known: &["args", "metrics", "dryRun"],
            tolerated: &["measurementRetention"],
        },
    )?;
    let mut args = Vec::new();
    if let Some(a) = spec.get("args") {
        for item in cx.seq(&a) {
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
            let value = m.get("value").and_then(|a| cx.string(&a));
            let value_from = m.has("valueFrom");
            args.push(TemplateArg {
                name,
                value,
                value_from,
            });
        }
    }
    let mut dry_run_patterns = Vec::new();
    if let Some(d) = spec.get("dryRun") {
        for item in cx.seq(&d) {
            let Some(m) = cx.map(
                &item,
                &Fields {
                    known: &["metricName"],
                    tolerated: &[],
                },
            ) else {
                continue;
            };
            if let Some(name) = m.req(cx, "metricName").and_then(|a| cx.nonempty_string(&a)) {
                match regex::Regex::new(&format!("^(?:{name})$")) {
                    Ok(re) => dry_run_patterns.push(re),
                    Err(e) => {
                        let at = m.get("metricName").expect("just read");
                        cx.error(
                            Code::InvalidValue,
                            &at,
                            format!("invalid metric name pattern: {}", one_line(&e.to_string())),
                        );
                    }
                }
            }
        }
    }
    let metrics_at = spec.req(cx, "metrics")?;
    let items = cx.seq(&metrics_at);
    if items.is_empty() {
        cx.error(
            Code::MissingField,
            &metrics_at,
            "`metrics` is empty: a template needs at least one metric",
        );
    }
    let mut metrics = Vec::new();
    for item in &items {
        if let Some(mut m) = metric(&mut doc.cx, item, &args) {
            m.dry_run |= dry_run_patterns.iter().any(|re| re.is_match(&m.name));
            metrics.push(m);
        }
    }
    (metrics.len() == items.len() && !items.is_empty()).then_some(AnalysisTemplate {
        meta,
        cluster_scoped,
        args,
        metrics,
    })
}

fn metric(cx: &mut Cx<'_>, at: &At<'_>, args: &[TemplateArg]) -> Option<Metric> {
    let m = cx.map(
        at,
        &Fields {
            known: &[
                "name",
                "interval",
                "initialDelay",
                "count",
                "successCondition",
                "failureCondition",
                "failureLimit",
                "inconclusiveLimit",
                "consecutiveErrorLimit",
                "dryRun",
                "provider",
            ],
            tolerated: &[],
        },
    )?;
    check_placeholders(cx, at, args);
    let name = m.req(cx, "name").and_then(|a| cx.nonempty_string(&a));
    let interval = m.get("interval").and_then(|a| templated_duration(cx, &a));
    let initial_delay = m
        .get("initialDelay")
        .and_then(|a| templated_duration(cx, &a));
    let count = m.get("count").and_then(|a| templated_count(cx, &a));
    let success_condition = m.get("successCondition").and_then(|a| condition(cx, &a));
    let failure_condition = m.get("failureCondition").and_then(|a| condition(cx, &a));
    let limit = |cx: &mut Cx<'_>, key, default| match m.get(key) {
        Some(a) => templated_count(cx, &a),
        None => Some(Templated::Value(default)),
    };
    let failure_limit = limit(cx, "failureLimit", 0);
    let inconclusive_limit = limit(cx, "inconclusiveLimit", 0);
    let consecutive_error_limit = limit(cx, "consecutiveErrorLimit", 4);
    let dry_run = m.get("dryRun").and_then(|a| cx.bool(&a)).unwrap_or(false);
    let provider = m.req(cx, "provider").and_then(|a| provider(cx, &a));
    Some(Metric {
        name: name?,
        interval,
        initial_delay,
        count,
        success_condition,
        failure_condition,
        failure_limit: failure_limit?,
        inconclusive_limit: inconclusive_limit?,
        consecutive_error_limit: consecutive_error_limit?,
        dry_run,
        provider: provider?,
    })
}

fn provider(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Provider> {
    let known = PROVIDER_KEYS;
    let m = cx.map(
        at,
        &Fields {
            known,
            tolerated: &[],
        },
    )?;
    for key in UNSUPPORTED_PROVIDERS {
        if let Some(a) = m.get_raw(key) {
            cx.error(
                Code::Unsupported,
                &a,
                format!("the `{key}` metric provider is not supported"),
            )
            .hint = Some("use `prometheus`, `web` (any HTTP JSON source) or `crossfade` (the gateway's own measurements)".into());
            return None;
        }
    }
    let given: Vec<_> = ["prometheus", "web", "crossfade"]
        .iter()
        .filter_map(|k| m.get_raw(k).map(|a| (*k, a)))
        .collect();
    let (kind, a) = match given.as_slice() {
        [one] => one.clone(),
        [] => {
            cx.error(
                Code::MissingField,
                at,
                "a provider needs one of `prometheus`, `web` or `crossfade`",
            );
            return None;
        }
        [_, (_, second), ..] => {
            cx.error(
                Code::InvalidValue,
                second,
                "a metric has exactly one provider",
            );
            return None;
        }
    };
    match kind {
        "prometheus" => {
            let p = cx.map(
                &a,
                &Fields {
                    known: &["address", "query", "timeout"],
                    tolerated: &["insecure", "headers", "authentication", "rangeQuery"],
                },
            )?;
            if let Some(r) = p.get("rangeQuery") {
                cx.warning(
                    Code::IgnoredField,
                    &r,
                    "range queries are not supported; the query runs as an instant query",
                );
            }
            let address = p.req(cx, "address").and_then(|a| cx.nonempty_string(&a));
            let query = p.req(cx, "query").and_then(|a| cx.nonempty_string(&a));
            let timeout = p
                .get("timeout")
                .and_then(|a| cx.int_in(&a, 1, 3600))
                .map(|s| Duration::from_secs(s as u64));
            Some(Provider::Prometheus(PrometheusProvider {
                address: address?,
                query: query?,
                timeout,
            }))
        }
        "web" => {
            let w = cx.map(
                &a,
                &Fields {
                    known: &[
                        "url",
                        "method",
                        "headers",
                        "body",
                        "jsonBody",
                        "jsonPath",
                        "timeoutSeconds",
                        "insecure",
                    ],
                    tolerated: &["authentication"],
                },
            )?;
            let url = w.req(cx, "url").and_then(|a| cx.nonempty_string(&a));
            let method = match w.get("method") {
                Some(a) => cx.one_of(
                    &a,
                    &[
                        ("GET", HttpMethod::Get),
                        ("POST", HttpMethod::Post),
                        ("PUT", HttpMethod::Put),
                    ],
                ),
                None => Some(HttpMethod::Get),
            };
            let mut headers = Vec::new();
            if let Some(h) = w.get("headers") {
                for item in cx.seq(&h) {
                    let Some(hm) = cx.map(
                        &item,
                        &Fields {
                            known: &["key", "value"],
                            tolerated: &[],
                        },
                    ) else {
                        continue;
                    };
                    let key = hm.req(cx, "key").and_then(|a| cx.nonempty_string(&a));
                    let value = hm.req(cx, "value").and_then(|a| cx.string(&a));
                    if let (Some(k), Some(v)) = (key, value) {
                        headers.push((k, v));
                    }
                }
            }
            let body = match (w.get("body"), w.get("jsonBody")) {
                (Some(b), None) => cx.string(&b),
                (None, Some(j)) => Some(to_json(j.node)),
                (Some(_), Some(j)) => {
                    cx.error(
                        Code::InvalidValue,
                        &j,
                        "give `body` or `jsonBody`, not both",
                    );
                    None
                }
                (None, None) => None,
            };
            let json_path = w.get("jsonPath").and_then(|a| cx.nonempty_string(&a));
            let timeout = w
                .get("timeoutSeconds")
                .and_then(|a| cx.int_in(&a, 1, 3600))
                .map(|s| Duration::from_secs(s as u64));
            let insecure = w.get("insecure").and_then(|a| cx.bool(&a)).unwrap_or(false);
            Some(Provider::Web(WebProvider {
                url: url?,
                method: method?,
                headers,
                body,
                json_path,
                timeout,
                insecure,
            }))
        }
        _ => {
            let c = cx.map(
                &a,
                &Fields {
                    known: &["metric", "revision", "window", "quantile"],
                    tolerated: &[],
                },
            )?;
            let metric = c.req(cx, "metric").and_then(|a| {
                cx.one_of(
                    &a,
                    &[
                        ("success-rate", BuiltinMetric::SuccessRate),
                        ("error-rate", BuiltinMetric::ErrorRate),
                        ("latency", BuiltinMetric::Latency),
                        ("request-rate", BuiltinMetric::RequestRate),
                        ("mirror-agreement", BuiltinMetric::MirrorAgreement),
                        ("mirror-distance", BuiltinMetric::MirrorDistance),
                    ],
                )
            });
            let revision = match c.get("revision") {
                Some(a) => cx.one_of(
                    &a,
                    &[
                        ("canary", RevisionSelector::Canary),
                        ("stable", RevisionSelector::Stable),
                    ],
                ),
                None => Some(RevisionSelector::Canary),
            };
            let window = match c.get("window") {
                Some(a) => cx.duration(&a).filter(|d| {
                    let ok = !d.is_zero();
                    if !ok {
                        cx.error(Code::OutOfRange, &a, "the window must be longer than zero");
                    }
                    ok
                }),
                None => Some(Duration::from_secs(60)),
            };
            let quantile = match c.get("quantile") {
                Some(a) => {
                    if metric.is_some_and(|m| m != BuiltinMetric::Latency) {
                        cx.warning(
                            Code::IgnoredField,
                            &a,
                            "`quantile` applies to the latency metric only",
                        );
                    }
                    cx.number(&a).filter(|q| {
                        let ok = *q > 0.0 && *q <= 1.0;
                        if !ok {
                            cx.error(
                                Code::OutOfRange,
                                &a,
                                format!("{q} is out of range: a quantile is in (0, 1]"),
                            );
                        }
                        ok
                    })
                }
                None => Some(0.99),
            };
            Some(Provider::Crossfade(BuiltinProvider {
                metric: metric?,
                revision: revision?,
                window: window?,
                quantile: quantile?,
            }))
        }
    }
}

fn is_placeholder(s: &str) -> bool {
    s.contains("{{")
}

fn templated_duration(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Templated<Duration>> {
    if let Some(Resolved::Str(s)) = at.node.resolve() {
        if is_placeholder(s) {
            return Some(Templated::Arg(s.to_owned()));
        }
    }
    cx.duration(at).map(Templated::Value)
}

fn templated_count(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Templated<u32>> {
    let value = match at.node.resolve() {
        Some(Resolved::Str(s)) if is_placeholder(s) => return Some(Templated::Arg(s.to_owned())),
        Some(Resolved::Str(s)) if s.trim().parse::<i64>().is_ok() => s.trim().parse::<i64>().ok(),
        _ => cx.int(at),
    }?;
    if !(0..=i64::from(u32::MAX)).contains(&value) {
        cx.error(
            Code::OutOfRange,
            at,
            format!("{value} is out of range: must be 0 or more"),
        );
        return None;
    }
    Some(Templated::Value(value as u32))
}

/// Checks that a condition parses in Argo's expression language. `{{args.x}}` placeholders are
/// replaced by an identifier of the same length first, so positions stay right.
fn condition(cx: &mut Cx<'_>, at: &At<'_>) -> Option<Condition> {
    let source = cx.nonempty_string(at)?;
    let masked = mask_placeholders(&source);
    match expr::compile(&masked) {
        Ok(_) => Some(Condition { source }),
        Err(e) => {
            let detail = match &e {
                expr::Error::PestError(p) => {
                    let col = match p.line_col {
                        pest::error::LineColLocation::Pos((_, c))
                        | pest::error::LineColLocation::Span((_, c), _) => c,
                    };
                    let expected = match &p.variant {
                        pest::error::ErrorVariant::ParsingError { .. } => "unexpected input",
                        pest::error::ErrorVariant::CustomError { message } => message.as_str(),
                    };
                    format!("{expected} at character {col}")
                }
                other => one_line(&other.to_string()),
            };
            cx.error(
                Code::InvalidCondition,
                at,
                format!("the condition `{source}` does not parse: {detail}"),
            )
            .hint = Some("conditions use Argo's expression language, e.g. `result[0] >= 0.95` or `len(result) > 0 && all(result, {# < 0.5})`".into());
            None
        }
    }
}

fn mask_placeholders(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let width = rest[start..start + len + 2].chars().count();
        out.push_str(&"_".repeat(width));
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Reports `{{args.name}}` placeholders that name no declared argument.
fn check_placeholders(cx: &mut Cx<'_>, at: &At<'_>, args: &[TemplateArg]) {
    match &at.node.kind {
        NodeKind::Scalar { value, .. } => {
            let mut rest = value.as_str();
            while let Some(start) = rest.find("{{") {
                let Some(len) = rest[start..].find("}}") else {
                    break;
                };
                let inner = rest[start + 2..start + len].trim();
                if let Some(name) = inner.strip_prefix("args.") {
                    if !args.iter().any(|a| a.name == name) {
                        cx.error(
                            Code::MissingArgument,
                            at,
                            format!("`{{{{{inner}}}}}` uses argument `{name}`, which the template does not declare"),
                        )
                        .hint = Some(format!("declare it under spec.args: `- name: {name}`"));
                    }
                }
                rest = &rest[start + len + 2..];
            }
        }
        NodeKind::Seq(items) => {
            for (i, node) in items.iter().enumerate() {
                let child = At {
                    node,
                    path: format!("{}[{i}]", at.path),
                    key_span: Some(node.span),
                };
                check_placeholders(cx, &child, args);
            }
        }
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                let child = At {
                    node: v,
                    path: format!("{}.{}", at.path, k.scalar_text().unwrap_or_default()),
                    key_span: Some(k.span),
                };
                check_placeholders(cx, &child, args);
            }
        }
    }
}

/// Serialises a YAML node as JSON (for `jsonBody`).
fn to_json(node: &crate::yaml::Node) -> String {
    fn quote(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn go(node: &crate::yaml::Node, out: &mut String) {
        match &node.kind {
            NodeKind::Scalar { value, .. } => match node.resolve() {
                Some(Resolved::Null) => out.push_str("null"),
                Some(Resolved::Bool(b)) => out.push_str(if b { "true" } else { "false" }),
                Some(Resolved::Int(i)) => out.push_str(&i.to_string()),
                Some(Resolved::Float(f)) if f.is_finite() => out.push_str(&f.to_string()),
                _ => quote(value, out),
            },
            NodeKind::Seq(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    go(item, out);
                }
                out.push(']');
            }
            NodeKind::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    quote(k.scalar_text().unwrap_or_default(), out);
                    out.push(':');
                    go(v, out);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    go(node, &mut out);
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Records a cross-resource reference for [`crate::validate`]; returns its index.
fn doc_ref(doc: &mut Doc<'_, '_>, target: RefTarget, name: &str, at: &At<'_>) -> usize {
    doc.index.refs.push(Ref {
        target,
        namespace: doc.namespace.clone(),
        name: name.to_owned(),
        file: doc.cx.file,
        span: at.span(),
        field: at.path.clone(),
        args_given: None,
    });
    doc.index.refs.len() - 1
}

/// The span of a document's `metadata.name` value, or of the document.
pub(crate) fn name_span(root: &At<'_>) -> Span {
    if let NodeKind::Map(entries) = &root.node.kind {
        if let Some((_, meta)) = entries
            .iter()
            .find(|(k, _)| k.scalar_text() == Some("metadata"))
        {
            if let NodeKind::Map(m) = &meta.kind {
                if let Some((_, n)) = m.iter().find(|(k, _)| k.scalar_text() == Some("name")) {
                    return n.span;
                }
            }
        }
    }
    root.node.span
}
