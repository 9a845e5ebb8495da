//! Argo CD `Application`.

use crate::decode::{At, Cx, Fields};
use crate::diag::Code;
use crate::types::*;

use super::Doc;

// === Argo CD Application ===

pub(crate) fn application(doc: &mut Doc<'_, '_>, meta: Meta, spec: &At<'_>) -> Option<Application> {
    let cx = &mut doc.cx;
    let spec = cx.map(
        spec,
        &Fields {
            known: &[
                "project",
                "source",
                "destination",
                "syncPolicy",
                "sources",
                "sourceHydrator",
            ],
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
    if !spec.has("source")
        && let Some(at) = spec.get("sourceHydrator")
    {
        let source = hydrated_source(cx, &at)?;
        return Some(Application {
            meta,
            project,
            source,
            destination,
            automated,
        });
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

/// `spec.sourceHydrator`: Argo CD renders `drySource` and commits the result to
/// `syncSource.targetBranch` under `syncSource.path`, then syncs that. crossfade does not
/// render; it serves what the hydrator wrote, from the dry source's repository.
fn hydrated_source(cx: &mut Cx<'_>, at: &At<'_>) -> Option<ApplicationSource> {
    let hydrator = cx.map(
        at,
        &Fields {
            known: &["drySource", "syncSource"],
            tolerated: &["hydrateTo"],
        },
    )?;
    let dry = hydrator.req(cx, "drySource").and_then(|a| {
        cx.map(
            &a,
            &Fields {
                known: &["repoURL"],
                tolerated: &[
                    "targetRevision",
                    "path",
                    "helm",
                    "kustomize",
                    "directory",
                    "plugin",
                ],
            },
        )
    });
    let sync = hydrator.req(cx, "syncSource").and_then(|a| {
        cx.map(
            &a,
            &Fields {
                known: &["targetBranch", "path"],
                tolerated: &[],
            },
        )
    });
    let (dry, sync) = (dry?, sync?);
    let repo_url = dry.req(cx, "repoURL").and_then(|a| cx.nonempty_string(&a));
    let branch = sync
        .req(cx, "targetBranch")
        .and_then(|a| cx.nonempty_string(&a));
    let path = sync.req(cx, "path").and_then(|a| cx.nonempty_string(&a));
    Some(ApplicationSource {
        repo_url: repo_url?,
        path: path?,
        target_revision: branch?,
    })
}
