//! KServe `ServingRuntime` and `ClusterServingRuntime`.

use crate::decode::{At, Fields};
use crate::diag::Code;
use crate::types::*;

use super::{CONTAINER_TOLERATED, Doc, PROTOCOLS};

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
    let image = c.get("image").and_then(|a| cx.string(&a));
    let stock = image.as_deref().is_some_and(crate::is_stock_image);
    if command.is_empty() && !stock {
        let d = cx.warning(
            Code::Unsupported,
            first,
            "no `command`: crossfade starts a runtime as a local process and cannot run an image's entrypoint",
        );
        d.field = format!("{}.command", first.path);
        d.hint = Some("give the server's command line in `command` (and `args`); KServe's stock images (sklearnserver, xgbserver, lgbserver, mlserver, huggingfaceserver) need none: crossfade serves their formats itself".into());
    } else if let Some(at) = c.get("command") {
        let d = cx.warning(
            Code::RunsCommand,
            &at,
            format!(
                "this runtime runs a command on the serving machine ({}), as crossfade's user",
                command[0]
            ),
        );
        d.hint = Some(
            "crossfade up starts it only with --allow-runtime-commands or when a \
             --runtime-allowlist file lists it; whoever can commit here chooses its arguments"
                .into(),
        );
    }
    let mut env = Vec::new();
    for m in cx.maps_in(
        c.get("env"),
        &Fields {
            known: &["name", "value", "valueFrom"],
            tolerated: &[],
        },
    ) {
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
    Some(ServingRuntime {
        meta,
        cluster_scoped,
        supported_model_formats,
        protocol_versions,
        disabled,
        container: RuntimeContainer {
            name: c.get("name").and_then(|a| cx.string(&a)),
            image,
            command,
            args,
            env,
        },
    })
}
