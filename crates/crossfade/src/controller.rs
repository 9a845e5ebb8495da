//! The sync loop of each Application: fetch, resolve, verify, parse, apply; and the state the
//! control API reads.
//!
//! # Guarantees
//!
//! - A commit is applied whole or not at all: an untrusted commit, or one whose manifests have
//!   errors, changes nothing that serves; the last good commit keeps serving and the status
//!   says why the new one was refused.
//! - Every examined commit and every fetch failure (once per distinct error) is in the sync
//!   history; every change to what serves is in the audit log.
//! - Syncs of one Application never overlap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::dto;
use engine::{
    DesiredService, Effect, Live, LiveRevision, LiveService, RevisionState, ServiceId, SyncPolicy,
    Tags,
};
use source::{Mirror, TrustedKeys};
use store::{Store, SyncOutcome, SyncRecord};
use tokio::sync::watch;

use crate::clock;

mod audit;
mod rollouts;

pub use audit::AuditAction;

/// An Application as crossfade runs it.
#[derive(Debug, Clone)]
pub struct Application {
    pub name: String,
    pub repo: String,
    pub revision: String,
    pub path: String,
    /// `syncPolicy.automated` is set: new commits are applied as they come. Otherwise only
    /// `crossfade sync` applies them.
    pub automated: bool,
    pub policy: SyncPolicy,
}

/// Settings shared by every Application.
pub struct Settings {
    pub data_dir: PathBuf,
    pub poll_interval: Duration,
    pub fetch_timeout: Duration,
    pub trust: Option<TrustedKeys>,
    pub require_digest: bool,
    pub admin_token: String,
    pub webhook_secret: Option<Vec<u8>>,
    /// Where to POST events (`--notify`).
    pub notify: Vec<String>,
    /// The data plane the route tables are published to.
    pub gateway: Arc<gateway::Gateway>,
    /// Where verified artifacts are kept.
    pub artifacts: artifact::Cache,
    /// Connections and deadlines of the control API's listener.
    pub admin_limits: gateway::Limits,
    /// How long a ServingRuntime's model server may take.
    pub upstream: gateway::Timeouts,
    /// Which ServingRuntime commands may be started.
    pub runtime_commands: crate::runtime_policy::RuntimeCommands,
    /// The longest a revision may take to fetch, verify, load and warm up.
    pub load_timeout: Duration,
    /// Host names the control API answers for besides loopback and IP addresses.
    pub admin_hosts: Vec<String>,
}

/// Everything the loops and the API share.
pub struct Controller {
    store: Store,
    settings: Settings,
    apps: Vec<Slot>,
    loads: tokio::sync::mpsc::UnboundedSender<LoadJob>,
    load_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<LoadJob>>>,
    /// Bumped after every load, so that a sync can wait for its revisions to settle.
    settled: watch::Sender<u64>,
    /// Readings coming back to the rollouts.
    measured_tx: tokio::sync::mpsc::UnboundedSender<rollouts::Measured>,
    measured_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<rollouts::Measured>>>,
    /// Told whenever a rollout's next wake-up may have moved.
    rollout_wake: tokio::sync::Notify,
    /// HTTP clients of the analysis providers: verifying certificates, and not (`insecure`).
    http: (reqwest::Client, reqwest::Client),
    notifier: crate::notify::Notifier,
}

/// A revision to fetch, verify, load and warm up.
struct LoadJob {
    app: usize,
    service: ServiceId,
    revision: String,
    format: String,
    uri: manifest::StorageUri,
    /// The ServingRuntime to start (`Ok(None)`: ONNX in-process), or why there is none.
    runtime: Result<Option<manifest::ServingRuntime>, String>,
}

struct Slot {
    app: Application,
    mirror: Mirror,
    /// Held for the whole of a sync, so syncs of one Application never overlap.
    running: tokio::sync::Mutex<()>,
    state: Mutex<AppState>,
}

/// What one Application has seen and applied.
#[derive(Default)]
struct AppState {
    /// The commit serving now, with who signed it.
    commit: Option<String>,
    verified: bool,
    signer: Option<String>,
    last_sync_at: Option<i64>,
    /// Why the newest commit is not serving, or why fetching fails.
    error: Option<String>,
    /// The last commit examined (applied or refused), so it is recorded once.
    examined: Option<String>,
    /// Consecutive failures to fetch, for backoff.
    failures: u32,
    desired: Vec<DesiredService>,
    live: Live,
    out_of_sync: BTreeMap<ServiceId, String>,
    /// Loaded revisions, by service and revision name.
    loaded: BTreeMap<(ServiceId, String), Arc<gateway::Revision>>,
    /// The ServingRuntimes of the applied commit.
    runtimes: Vec<manifest::ServingRuntime>,
    /// The Rollouts of the applied commit.
    rollout_specs: Vec<engine::rollout::RolloutSpec>,
    /// Where each Rollout stands, by the service it drives.
    rollouts: BTreeMap<ServiceId, engine::rollout::RolloutStatus>,
    /// When the rollouts want to be stepped next (Unix seconds).
    rollout_wake: Option<i64>,
}

// === impl Controller ===

impl Controller {
    /// What it was started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn new(store: Store, settings: Settings, apps: Vec<Application>) -> anyhow::Result<Self> {
        let mut slots = Vec::new();
        for app in apps {
            let dir = settings
                .data_dir
                .join("git")
                .join(mirror_dir_name(&app.repo));
            let mirror = Mirror::open(&app.repo, &dir)?;
            // Resume where the previous run stood: the last applied commit is re-applied on
            // the first sync without a second history entry.
            let examined = store
                .syncs(1000)?
                .into_iter()
                .find(|s| s.repo == mirror.url() && s.revision == app.revision)
                .and_then(|s| s.commit);
            slots.push(Slot {
                app,
                mirror,
                running: tokio::sync::Mutex::new(()),
                state: Mutex::new(AppState {
                    examined,
                    ..AppState::default()
                }),
            });
        }
        let (loads, queue) = tokio::sync::mpsc::unbounded_channel();
        // Resume what served before a restart: the stored splits, and every revision that was
        // not retired, loaded again in the background.
        let services = store.services()?;
        let syncs = store.syncs(1000)?;
        let stored_rollouts = store.rollouts()?;
        for (app, slot) in slots.iter().enumerate() {
            let resumed = resumed_manifests(&syncs, slot, &settings);
            let mut state = slot.state.lock().expect("state");
            // The commit that was serving is serving again: status names it, a commit that
            // was refused is refused against it, and a manual-sync Application is not asked to
            // sync what it already applied.
            if let Some(r) = &resumed {
                state.commit = r.record.commit.clone();
                state.verified = r.record.signer.is_some();
                state.signer = r.record.signer.clone();
                state.last_sync_at = Some(r.record.time);
                state.desired = r.desired.clone();
                state.runtimes = r.runtimes.clone();
                state.rollout_specs = r.rollout_specs.clone();
            }
            for record in services.iter().filter(|s| s.application == slot.app.name) {
                let id = ServiceId::new(&record.namespace, &record.name);
                let mut live = LiveService {
                    rolled_out: record.rolled_out.clone(),
                    traffic: record
                        .traffic
                        .iter()
                        .filter_map(|(rev, pct)| {
                            Some(engine::Split {
                                revision: rev.clone(),
                                percent: manifest::Percent::new(*pct)?,
                            })
                        })
                        .collect(),
                    overridden: record.overridden,
                    revisions: Vec::new(),
                    tags: Tags::default(),
                };
                for rev in store.revisions(&id.namespace, &id.name)? {
                    if rev.state == store::RevisionState::Retired {
                        continue;
                    }
                    let Ok(uri) = manifest::StorageUri::parse(&rev.storage_uri) else {
                        continue;
                    };
                    // A revision served by a ServingRuntime starts the runtime the last
                    // applied commit names, read from the local mirror: no remote needed.
                    // Without that commit, the revision waits for the first sync.
                    let Some(runtime) = resumed_runtime(resumed.as_ref(), &id, &rev, &uri) else {
                        continue;
                    };
                    let _ = loads.send(LoadJob {
                        app,
                        service: id.clone(),
                        revision: rev.name.clone(),
                        format: rev.model_format.clone(),
                        uri,
                        runtime,
                    });
                    live.revisions.push(LiveRevision {
                        name: rev.name,
                        spec_hash: rev.spec_hash,
                        state: RevisionState::Pending,
                    });
                }
                // The rollout resumes at the step it was on, with its runs and pause start.
                if let Some((_, _, bytes)) = stored_rollouts
                    .iter()
                    .find(|(ns, name, _)| *ns == id.namespace && *name == id.name)
                {
                    match engine::rollout::RolloutStatus::from_json(bytes) {
                        Ok(mut status) => {
                            status.restarted();
                            state.rollouts.insert(id.clone(), status);
                        }
                        Err(e) => {
                            tracing::error!(service = %id, error = %e, "a stored rollout status does not decode; the rollout starts over")
                        }
                    }
                }
                state.live.services.insert(id, live);
            }
        }
        let (measured_tx, measured_rx) = tokio::sync::mpsc::unbounded_channel();
        let notifier = crate::notify::Notifier::start(&settings.notify);
        let insecure = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap_or_default();
        let controller = Self {
            store,
            settings,
            apps: slots,
            loads,
            load_queue: Mutex::new(Some(queue)),
            settled: watch::Sender::new(0),
            measured_tx,
            measured_rx: Mutex::new(Some(measured_rx)),
            rollout_wake: tokio::sync::Notify::new(),
            http: (reqwest::Client::new(), insecure),
            notifier,
        };
        // Before the listeners answer: every restored service is in the route table, its
        // revisions loading, so the data plane answers 503 for it until they are Ready,
        // never 404 "not served here".
        controller.publish();
        Ok(controller)
    }

    /// Runs the poll loop of every Application until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        if let Some(mut queue) = self.load_queue.lock().expect("queue").take() {
            let this = Arc::clone(&self);
            let mut stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        job = queue.recv() => match job {
                            Some(job) => drop(tokio::spawn(Arc::clone(&this).load(job))),
                            None => break,
                        },
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
        if let Some(measured) = self.measured_rx.lock().expect("measured").take() {
            tasks.push(tokio::spawn(
                Arc::clone(&self).rollout_loop(measured, shutdown.clone()),
            ));
        }
        for i in 0..self.apps.len() {
            let this = Arc::clone(&self);
            let mut stop = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let mut first = true;
                loop {
                    let wait = if first {
                        Duration::ZERO
                    } else {
                        this.next_wait(i)
                    };
                    first = false;
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => break,
                    }
                    this.sync_app(i, &api::Trigger::Poll).await;
                }
            }));
        }
        let _ = shutdown.changed().await;
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The poll interval, or a shorter backoff after failures (1 s, 2 s, 4 s, ... up to the
    /// poll interval).
    fn next_wait(&self, i: usize) -> Duration {
        let failures = self.apps[i].state.lock().expect("state").failures;
        if failures == 0 {
            return self.settings.poll_interval;
        }
        let backoff = Duration::from_secs(1u64 << failures.min(10));
        backoff.min(self.settings.poll_interval)
    }

    /// Syncs every Application; returns what each did.
    pub async fn sync_all(self: Arc<Self>, trigger: api::Trigger) -> Vec<dto::SyncResult> {
        let mut out = Vec::new();
        for i in 0..self.apps.len() {
            out.push(self.sync_app(i, &trigger).await);
        }
        out
    }

    async fn sync_app(&self, i: usize, trigger: &api::Trigger) -> dto::SyncResult {
        let manual = *trigger == api::Trigger::Manual;
        let wait = matches!(trigger, api::Trigger::Manual | api::Trigger::Refresh);
        let why = trigger.describe();
        let slot = &self.apps[i];
        let _running = slot.running.lock().await;
        let mirror = slot.mirror.clone();
        let app = slot.app.clone();
        let timeout = self.settings.fetch_timeout;
        // Git work is blocking: keep it off the async threads.
        let fetched = tokio::task::spawn_blocking(move || read_commit(&mirror, &app, timeout))
            .await
            .unwrap_or_else(|e| Err(format!("the fetch task failed: {e}")));
        let result = self.apply(i, fetched, manual);
        self.publish();
        // Loads are not waited for under the lock: a slow or stuck one never holds up the
        // syncs after it (a poll, a webhook, the commit that fixes it).
        drop(_running);
        if wait {
            // `crossfade sync` returns once the revisions it created are Ready or Failed.
            let mut settled = self.settled.subscribe();
            while self.has_pending(i) {
                if settled.changed().await.is_err() {
                    break;
                }
            }
        }
        if result.outcome != dto::SyncOutcome::Unchanged {
            tracing::info!(
                application = %slot.app.name,
                outcome = %result.outcome,
                commit = result.commit.as_deref().unwrap_or("-"),
                trigger = why,
                message = result.message.as_deref().unwrap_or(""),
                "sync"
            );
        }
        result
    }

    /// Turns what was read from Git into history, status and effects.
    fn apply(&self, i: usize, fetched: Result<Fetched, String>, manual: bool) -> dto::SyncResult {
        let slot = &self.apps[i];
        let now = clock::now_ms();
        let app = &slot.app;
        let mut state = slot.state.lock().expect("state");
        let mut result = dto::SyncResult {
            application: app.name.clone(),
            outcome: dto::SyncOutcome::Unchanged,
            commit: None,
            message: None,
        };
        let base = SyncRecord {
            seq: 0,
            time: now,
            repo: slot.mirror.url().to_owned(),
            revision: app.revision.clone(),
            commit: None,
            author: None,
            commit_time: None,
            signer: None,
            signer_key: None,
            outcome: SyncOutcome::Applied,
            message: None,
            diagnostics: Vec::new(),
            services: Vec::new(),
        };
        let fetched = match fetched {
            Ok(f) => f,
            Err(message) => {
                state.failures += 1;
                // Record each distinct failure once, not every retry.
                if state.error.as_deref() != Some(message.as_str()) {
                    self.record(SyncRecord {
                        outcome: SyncOutcome::FetchFailed,
                        message: Some(message.clone()),
                        ..base
                    });
                }
                state.error = Some(message.clone());
                result.outcome = dto::SyncOutcome::FetchFailed;
                result.message = Some(message);
                return result;
            }
        };
        state.failures = 0;
        result.commit = Some(fetched.info.id.clone());
        let unchanged = state.examined.as_deref() == Some(fetched.info.id.as_str());
        let base = SyncRecord {
            commit: Some(fetched.info.id.clone()),
            author: Some(fetched.info.author.clone()),
            commit_time: Some(fetched.info.time),
            ..base
        };

        // Signature.
        let signer = match &self.settings.trust {
            None => None,
            Some(trust) => match trust.verify(&fetched.info) {
                Ok(s) => Some(s),
                Err(rejection) => {
                    let message = refused(&fetched.info.id, &rejection, state.commit.as_deref());
                    if !unchanged {
                        self.record(SyncRecord {
                            outcome: SyncOutcome::Untrusted,
                            message: Some(message.clone()),
                            ..base
                        });
                        self.audit(
                            now,
                            &format!("git:{}", fetched.info.id),
                            AuditAction::RejectCommit,
                            &app.name,
                            serde_json::json!({"reason": rejection.to_string()}),
                        );
                    }
                    state.examined = Some(fetched.info.id.clone());
                    state.error = Some(message.clone());
                    result.outcome = if unchanged {
                        dto::SyncOutcome::Unchanged
                    } else {
                        dto::SyncOutcome::Untrusted
                    };
                    result.message = Some(message);
                    return result;
                }
            },
        };
        let base = SyncRecord {
            signer: signer.as_ref().map(|s| s.identity.clone()),
            signer_key: signer.as_ref().map(|s| s.fingerprint.clone()),
            ..base
        };

        // Manifests.
        let parsed = match &fetched.sources {
            Ok(sources) => {
                let parsed = manifest::parse(
                    sources,
                    manifest::Options {
                        require_digest: self.settings.require_digest,
                    },
                );
                if parsed.has_errors() {
                    // Name the services the broken commit declares, for `history SERVICE`.
                    let services = parsed
                        .resources
                        .iter()
                        .filter(|r| r.kind == "InferenceService")
                        .map(|r| {
                            format!("{}/{}", r.namespace.as_deref().unwrap_or("default"), r.name)
                        })
                        .collect();
                    Err((
                        "its manifests have errors".to_owned(),
                        render_diagnostics(sources, &parsed),
                        services,
                    ))
                } else {
                    Ok(parsed)
                }
            }
            Err(e) => Err((e.clone(), Vec::new(), Vec::new())),
        };
        let parsed = match parsed {
            Ok(p) => p,
            Err((why, diagnostics, services)) => {
                let message = refused(&fetched.info.id, &why, state.commit.as_deref());
                if !unchanged {
                    self.record(SyncRecord {
                        outcome: SyncOutcome::Invalid,
                        message: Some(message.clone()),
                        diagnostics: diagnostics.clone(),
                        services,
                        ..base
                    });
                }
                state.examined = Some(fetched.info.id.clone());
                state.error = Some(message.clone());
                result.outcome = if unchanged {
                    dto::SyncOutcome::Unchanged
                } else {
                    dto::SyncOutcome::Invalid
                };
                result.message = Some(message);
                return result;
            }
        };

        // Apply.
        let desired = engine::desired_state(&parsed.manifests);
        let is_new = state.commit.as_deref() != Some(fetched.info.id.as_str());
        if is_new && !app.automated && !manual {
            let message = format!(
                "commit {} is available; the Application has no automated sync policy, so run `crossfade sync` to apply it",
                short(&fetched.info.id)
            );
            state.error = Some(message.clone());
            result.outcome = dto::SyncOutcome::Unchanged;
            result.message = Some(message);
            return result;
        }
        if is_new || manual || state.desired.is_empty() {
            let services: Vec<String> = desired.iter().map(|d| d.id.to_string()).collect();
            if !unchanged {
                self.record(SyncRecord {
                    services: services.clone(),
                    ..base
                });
                self.audit(
                    now,
                    &format!("git:{}", fetched.info.id),
                    AuditAction::Sync,
                    &app.name,
                    serde_json::json!({
                        "commit": fetched.info.id,
                        "author": fetched.info.author,
                        "signer": signer.as_ref().map(|s| &s.identity),
                        "signerKey": signer.as_ref().map(|s| &s.fingerprint),
                        "services": services,
                    }),
                );
            }
            if is_new || manual {
                // A new commit, or an explicit sync, is the new truth: traffic set through the
                // API gives way (Argo CD syncs it whether or not selfHeal is on).
                for svc in state.live.services.values_mut() {
                    svc.overridden = false;
                }
            }
            state.commit = Some(fetched.info.id.clone());
            state.verified = signer.is_some();
            state.signer = signer.map(|s| s.identity);
            state.last_sync_at = Some(now);
        }
        state.examined = Some(fetched.info.id.clone());
        state.error = None;
        state.desired = desired;
        state.runtimes = parsed
            .manifests
            .serving_runtimes
            .iter()
            .map(|r| r.value.clone())
            .collect();
        state.rollout_specs = engine::rollout::rollout_specs(&parsed.manifests);
        // A Rollout deleted from Git: its status goes too; the service keeps what it serves.
        let driven: Vec<ServiceId> = state
            .rollout_specs
            .iter()
            .map(|r| r.service.clone())
            .collect();
        let gone: Vec<ServiceId> = state
            .rollouts
            .keys()
            .filter(|id| !driven.contains(id))
            .cloned()
            .collect();
        for id in gone {
            state.rollouts.remove(&id);
            self.log_store(self.store.remove_rollout(&id.namespace, &id.name));
        }
        self.reconcile(i, &mut state, now);
        result.outcome = if unchanged {
            dto::SyncOutcome::Unchanged
        } else {
            dto::SyncOutcome::Applied
        };
        result
    }

    /// Steps the rollouts, then reconciles.
    fn reconcile(&self, app: usize, state: &mut AppState, now: i64) {
        self.drive_rollouts(app, state, None, now);
        self.reconcile_only(app, state, now);
    }

    /// Runs reconcile and carries out its effects on the live state and the store.
    fn reconcile_only(&self, app: usize, state: &mut AppState, now: i64) {
        let application = self.apps[app].app.name.as_str();
        let decision = engine::reconcile(&state.desired, &state.live, self.apps[app].app.policy);
        state.out_of_sync.clear();
        for effect in decision.effects {
            match effect {
                Effect::CreateRevision {
                    service,
                    spec_hash,
                    model,
                } => {
                    match self.store.revision_for(
                        &service.namespace,
                        &service.name,
                        &spec_hash,
                        (&model.format.name, &model.storage_uri.raw),
                        now,
                    ) {
                        Ok(mut record) => {
                            if record.state == store::RevisionState::Retired {
                                record.state = store::RevisionState::Pending;
                                self.log_store(self.store.update_revision(&record));
                            }
                            self.audit(now, "controller", AuditAction::CreateRevision, &service.to_string(), serde_json::json!({"revision": record.name, "storageUri": manifest::redact_uri(&record.storage_uri)}));
                            let _ = self.loads.send(LoadJob {
                                app,
                                service: service.clone(),
                                revision: record.name.clone(),
                                format: model.format.name.clone(),
                                uri: model.storage_uri.clone(),
                                runtime: choose_runtime(
                                    &state.runtimes,
                                    &service.namespace,
                                    &model,
                                ),
                            });
                            let live = state.live.services.entry(service).or_default();
                            live.revisions.push(LiveRevision {
                                name: record.name,
                                spec_hash,
                                state: RevisionState::Pending,
                            });
                        }
                        Err(e) => tracing::error!(error = %e, "cannot record a revision"),
                    }
                }
                Effect::SetTraffic {
                    service,
                    splits,
                    tags,
                } => {
                    let detail = serde_json::json!(
                        splits
                            .iter()
                            .map(|s| (s.revision.clone(), s.percent.get()))
                            .collect::<BTreeMap<_, _>>()
                    );
                    self.audit(
                        now,
                        "controller",
                        AuditAction::SetTraffic,
                        &service.to_string(),
                        detail,
                    );
                    let live = state.live.services.entry(service.clone()).or_default();
                    live.traffic = splits;
                    live.overridden = false;
                    live.tags = tags;
                }
                Effect::MarkRolledOut { service, revision } => {
                    self.audit(
                        now,
                        "controller",
                        AuditAction::RolledOut,
                        &service.to_string(),
                        serde_json::json!({"revision": revision}),
                    );
                    state.live.services.entry(service).or_default().rolled_out = Some(revision);
                }
                Effect::RetireRevision { service, revision } => {
                    if let Ok(records) = self.store.revisions(&service.namespace, &service.name) {
                        for mut r in records.into_iter().filter(|r| r.name == revision) {
                            r.state = store::RevisionState::Retired;
                            self.log_store(self.store.update_revision(&r));
                        }
                    }
                    self.audit(
                        now,
                        "controller",
                        AuditAction::RetireRevision,
                        &service.to_string(),
                        serde_json::json!({"revision": revision}),
                    );
                    if let Some(live) = state.live.services.get_mut(&service) {
                        live.revisions.retain(|r| r.name != revision);
                    }
                    // Requests in flight keep their reference until they finish.
                    state.loaded.remove(&(service, revision));
                }
                Effect::RemoveService { service } => {
                    self.log_store(self.store.remove_service(&service.namespace, &service.name));
                    self.audit(
                        now,
                        "controller",
                        AuditAction::RemoveService,
                        &service.to_string(),
                        serde_json::json!({"application": application}),
                    );
                    state.live.services.remove(&service);
                    state.loaded.retain(|(s, _), _| *s != service);
                }
                Effect::ReportOutOfSync { service, reason } => {
                    state.out_of_sync.insert(service, reason);
                }
            }
        }
        self.persist_services(app, state);
    }

    /// Keeps every service's routing in the store, so that a restart resumes it.
    fn persist_services(&self, app: usize, state: &AppState) {
        for (id, live) in &state.live.services {
            self.log_store(
                self.store.put_service(&store::ServiceRecord {
                    namespace: id.namespace.clone(),
                    name: id.name.clone(),
                    application: self.apps[app].app.name.clone(),
                    rolled_out: live.rolled_out.clone(),
                    traffic: live
                        .traffic
                        .iter()
                        .map(|s| (s.revision.clone(), s.percent.get()))
                        .collect(),
                    overridden: live.overridden,
                }),
            );
        }
    }

    /// Fetches, verifies, loads and warms up a revision, then reconciles with the outcome.
    async fn load(self: Arc<Self>, job: LoadJob) {
        let cache = self.settings.artifacts.clone();
        let (format, uri, runtime) = (job.format.clone(), job.uri.clone(), job.runtime.clone());
        let model_name = job.service.name.clone();
        let policy = self.settings.runtime_commands.clone();
        let deadline = self.settings.load_timeout;
        let loading = tokio::task::spawn_blocking(move || {
            load_model(&cache, &format, &uri, runtime, &model_name, &policy)
        });
        // A load that never ends (an artifact that never finishes arriving) fails at its
        // deadline; its thread is left to finish or hang on its own.
        let loaded = match tokio::time::timeout(deadline, loading).await {
            Ok(done) => done.unwrap_or_else(|e| Err(format!("the load task failed: {e}"))),
            Err(_) => Err(format!(
                "the load did not finish within {} s (--load-timeout)",
                deadline.as_secs()
            )),
        }
        // A reason is shown in status, audit, notifications and logs: no URI secrets in it.
        .map_err(|reason| manifest::redact_uris(&reason));
        let now = clock::now_ms();
        {
            let mut state = self.apps[job.app].state.lock().expect("state");
            let Some(live) = state.live.services.get_mut(&job.service) else {
                return; // removed meanwhile
            };
            let Some(rev) = live.revisions.iter_mut().find(|r| r.name == job.revision) else {
                return; // retired meanwhile
            };
            let mut record = self
                .store
                .revisions(&job.service.namespace, &job.service.name)
                .unwrap_or_default()
                .into_iter()
                .find(|r| r.name == job.revision);
            match loaded {
                Ok((model, digest)) => {
                    rev.state = RevisionState::Ready;
                    tracing::info!(service = %job.service, revision = %job.revision, digest = %digest, "revision ready");
                    if let Some(r) = &mut record {
                        r.state = store::RevisionState::Ready;
                        r.digest = Some(digest.to_string());
                        r.reason = None;
                    }
                    let revision = match model {
                        Loaded::Onnx(m) => gateway::Revision::onnx(job.revision.clone(), m),
                        Loaded::Process(p) => {
                            let upstream = gateway::Upstream::with_timeouts(
                                format!("127.0.0.1:{}", p.port()),
                                self.settings.upstream,
                            );
                            let mut r = gateway::Revision::proxy(job.revision.clone(), upstream);
                            // The process lives until the last request routed to it is done.
                            r.guard = Some(Box::new(p));
                            r
                        }
                    };
                    state.loaded.insert(
                        (job.service.clone(), job.revision.clone()),
                        Arc::new(revision),
                    );
                }
                Err(reason) => {
                    tracing::warn!(service = %job.service, revision = %job.revision, %reason, "revision failed");
                    rev.state = RevisionState::Failed {
                        reason: reason.clone(),
                    };
                    if let Some(r) = &mut record {
                        r.state = store::RevisionState::Failed;
                        r.reason = Some(reason);
                    }
                }
            }
            if let Some(r) = &record {
                self.log_store(self.store.update_revision(r));
            }
            self.reconcile(job.app, &mut state, now);
        }
        self.publish();
        self.settled.send_modify(|n| *n += 1);
    }

    /// Sets a split by hand. Every revision must be Ready; the percents must sum to 100.
    pub fn set_traffic(
        &self,
        namespace: &str,
        name: &str,
        splits: &BTreeMap<String, u8>,
    ) -> Result<(), String> {
        let id = ServiceId::new(namespace, name);
        let total: u32 = splits.values().map(|p| u32::from(*p)).sum();
        if total != 100 {
            return Err(format!("the percents sum to {total}, not 100"));
        }
        let now = clock::now_ms();
        let found = self.apps.iter().enumerate().find(|(_, slot)| {
            slot.state
                .lock()
                .expect("state")
                .live
                .services
                .contains_key(&id)
        });
        let Some((app, slot)) = found else {
            return Err(format!("no service {id}"));
        };
        {
            let mut state = slot.state.lock().expect("state");
            let live = state.live.services.get_mut(&id).expect("found above");
            let mut traffic = Vec::new();
            for (revision, pct) in splits {
                let Some(rev) = live.revisions.iter().find(|r| &r.name == revision) else {
                    return Err(format!("{id} has no revision {revision}"));
                };
                if rev.state != RevisionState::Ready {
                    return Err(format!("revision {revision} is not Ready"));
                }
                if *pct > 0 {
                    traffic.push(engine::Split {
                        revision: revision.clone(),
                        percent: manifest::Percent::new(*pct).ok_or("a percent is over 100")?,
                    });
                }
            }
            live.traffic = traffic;
            live.overridden = true;
            state
                .out_of_sync
                .insert(id.clone(), "traffic was changed through the API".into());
            self.persist_services(app, &state);
        }
        self.audit(
            now,
            "api:admin",
            AuditAction::OverrideTraffic,
            &id.to_string(),
            serde_json::json!(splits),
        );
        tracing::info!(service = %id, ?splits, "traffic set through the API");
        self.publish();
        Ok(())
    }

    /// The data plane this controller publishes to.
    pub fn gateway(&self) -> &Arc<gateway::Gateway> {
        &self.settings.gateway
    }

    fn has_pending(&self, i: usize) -> bool {
        let state = self.apps[i].state.lock().expect("state");
        state
            .live
            .services
            .values()
            .flat_map(|s| &s.revisions)
            .any(|r| r.state == RevisionState::Pending)
    }

    /// Builds the route table from every Application's state and hands it to the gateway.
    /// Locks one Application's state at a time.
    fn publish(&self) {
        let mut table = gateway::RouteTable::default();
        for slot in &self.apps {
            let state = slot.state.lock().expect("state");
            for (id, live) in &state.live.services {
                let revisions: Vec<Arc<gateway::Revision>> = live
                    .revisions
                    .iter()
                    .filter_map(|r| state.loaded.get(&(id.clone(), r.name.clone())).cloned())
                    .collect();
                let index = |name: &str| revisions.iter().position(|r| r.name == name);
                let split = live
                    .traffic
                    .iter()
                    .filter_map(|s| index(&s.revision).map(|i| (i, s.percent.get())))
                    .collect();
                let tags = &live.tags;
                let latest = tags.latest.as_deref().and_then(index);
                let prev = tags.prev.as_deref().and_then(index);
                let canary_index = state
                    .rollouts
                    .get(id)
                    .filter(|r| r.aborted.is_none())
                    .and_then(|r| r.canary.as_deref())
                    .and_then(index);
                let mut route = gateway::Route::new(id.to_string(), revisions, split);
                let desired = state.desired.iter().find(|d| &d.id == id);
                route.tag_routing = desired.is_some_and(|d| d.tag_routing);
                route.answer_timeout = desired.and_then(|d| d.request_timeout);
                route.latest = latest;
                route.prev = prev;
                // A rollout's header and mirror routes go to its canary while it is served.
                if let Some(r) = state.rollouts.get(id)
                    && let Some(canary) = canary_index
                {
                    // A match that cannot be built (a regex that does not compile) drops its
                    // whole route: a route with fewer conditions would take more requests.
                    route.header_routes = r
                        .header_routes
                        .iter()
                        .filter_map(|h| {
                            Some(gateway::HeaderRoute {
                                matches: header_matches(id, &h.name, &h.matches)?,
                                revision: canary,
                            })
                        })
                        .collect();
                    route.mirrors = r
                        .mirrors
                        .iter()
                        .filter_map(|m| {
                            Some(gateway::Mirror {
                                revision: canary,
                                percent: m.percent,
                                matches: header_matches(id, &m.name, &m.matches)?,
                            })
                        })
                        .collect();
                }
                if table.models.insert(id.name.clone(), route).is_some() {
                    tracing::warn!(service = %id, "another namespace serves a model of the same name; this one wins");
                }
            }
        }
        self.settings.gateway.publish(table);
    }

    fn record(&self, record: SyncRecord) {
        let (event, message) = match record.outcome {
            SyncOutcome::Applied => (
                "sync.succeeded",
                format!(
                    "applied commit {}",
                    record.commit.as_deref().map(short).unwrap_or("-")
                ),
            ),
            _ => (
                "sync.failed",
                record
                    .message
                    .clone()
                    .unwrap_or_else(|| dto::SyncOutcome::from(record.outcome).to_string()),
            ),
        };
        self.notifier.send(crate::notify::Event::new(
            event,
            &record.repo,
            &message,
            record.time,
            serde_json::json!({
                "commit": record.commit,
                "author": record.author,
                "signer": record.signer,
                "outcome": dto::SyncOutcome::from(record.outcome).as_str(),
                "diagnostics": record.diagnostics,
            }),
        ));
        self.log_store(self.store.record_sync(record).map(|_| ()));
    }

    fn audit(
        &self,
        now: i64,
        actor: &str,
        action: AuditAction,
        subject: &str,
        detail: serde_json::Value,
    ) {
        self.log_store(
            self.store
                .audit(now, actor, action.as_str(), subject, detail)
                .map(|_| ()),
        );
    }

    fn log_store(&self, result: Result<(), store::Error>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "the store refused a write");
        }
    }

    // --- reads for the API ---

    fn source_status(&self, slot: &Slot, state: &AppState) -> dto::SourceStatus {
        dto::SourceStatus {
            repo: slot.mirror.url().to_owned(),
            revision: slot.app.revision.clone(),
            path: slot.app.path.clone(),
            commit: state.commit.clone(),
            verified: state.verified,
            signer: state.signer.clone(),
            last_sync_at: state.last_sync_at.map(dto::rfc3339_millis),
            error: state.error.clone(),
        }
    }

    fn service_status(
        &self,
        application: &str,
        id: &ServiceId,
        state: &AppState,
    ) -> dto::ServiceStatus {
        let empty = LiveService::default();
        let live = state.live.services.get(id).unwrap_or(&empty);
        let tags = live.tags.clone();
        let desired = state.desired.iter().find(|d| &d.id == id);
        let latest =
            desired.and_then(|d| live.revisions.iter().find(|r| r.spec_hash == d.spec_hash));
        let records = self
            .store
            .revisions(&id.namespace, &id.name)
            .unwrap_or_default();
        let revisions: Vec<dto::RevisionStatus> = records
            .iter()
            .map(|r| {
                let live_rev = live.revisions.iter().find(|l| l.name == r.name);
                let (state_name, reason) = match live_rev.map(|l| &l.state) {
                    Some(RevisionState::Ready) => ("Ready", None),
                    Some(RevisionState::Pending) => (
                        "Pending",
                        Some("waiting for the data plane to load it".to_owned()),
                    ),
                    Some(RevisionState::Failed { reason }) => ("Failed", Some(reason.clone())),
                    None => ("Retired", None),
                };
                let tag = if tags.latest.as_deref() == Some(r.name.as_str()) {
                    Some("latest".to_owned())
                } else if tags.prev.as_deref() == Some(r.name.as_str()) {
                    Some("prev".to_owned())
                } else {
                    None
                };
                dto::RevisionStatus {
                    name: r.name.clone(),
                    storage_uri: manifest::redact_uri(&r.storage_uri),
                    digest: r.digest.clone(),
                    state: state_name.into(),
                    traffic_percent: live
                        .traffic
                        .iter()
                        .find(|s| s.revision == r.name)
                        .map_or(0, |s| s.percent.get()),
                    tag,
                    reason: reason.or_else(|| r.reason.clone()),
                }
            })
            .collect();
        let out_of_sync = state.out_of_sync.get(id);
        let health = match latest.map(|l| &l.state) {
            Some(RevisionState::Failed { .. }) => dto::Health::Degraded,
            _ if desired.is_none() && live.traffic.is_empty() => dto::Health::Missing,
            Some(RevisionState::Pending) | None => dto::Health::Progressing,
            Some(RevisionState::Ready) if live.traffic.is_empty() => dto::Health::Missing,
            Some(RevisionState::Ready) => dto::Health::Healthy,
        };
        let message = out_of_sync.cloned().or_else(|| {
            latest
                .filter(|l| l.state == RevisionState::Pending)
                .map(|l| format!("revision {} is loading", l.name))
        });
        dto::ServiceStatus {
            name: id.name.clone(),
            namespace: id.namespace.clone(),
            application: application.to_owned(),
            sync_status: if out_of_sync.is_some() {
                dto::SyncStatus::OutOfSync
            } else {
                dto::SyncStatus::Synced
            },
            health,
            message,
            revisions,
        }
    }
}

// === reads for the API ===

impl Controller {
    pub fn status(&self) -> dto::Status {
        let mut status = dto::Status::default();
        for slot in &self.apps {
            let state = slot.state.lock().expect("state");
            let source = self.source_status(slot, &state);
            status.applications.push(dto::ApplicationStatus {
                name: slot.app.name.clone(),
                source,
                prune: slot.app.policy.prune,
                self_heal: slot.app.policy.self_heal,
            });
            let ids: std::collections::BTreeSet<&ServiceId> = state
                .desired
                .iter()
                .map(|d| &d.id)
                .chain(state.live.services.keys())
                .collect();
            for id in ids {
                status
                    .services
                    .push(self.service_status(&slot.app.name, id, &state));
            }
        }
        if let Some(first) = status.applications.first() {
            status.source = first.source.clone();
        }
        status.rollouts = self
            .rollouts()
            .iter()
            .map(|(spec, s)| rollouts::rollout_dto(spec, s))
            .collect();
        status
    }

    pub fn history(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<dto::SyncEntry>, String> {
        let records = self.store.syncs(usize::MAX).map_err(|e| e.to_string())?;
        Ok(records
            .iter()
            // A record naming no service (a fetch failure, a refused signature, a file that
            // does not parse) concerns every service.
            .filter(|r| {
                service.is_none_or(|s| {
                    r.services.is_empty()
                        || r.services
                            .iter()
                            .any(|x| x == s || x.ends_with(&format!("/{s}")))
                })
            })
            .take(limit)
            .map(dto::SyncEntry::from)
            .collect())
    }

    pub fn audit_entries(
        &self,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<dto::AuditEntry>, String> {
        let entries = match (before, limit) {
            (None, None) => self.store.audit_log(),
            (before, limit) => self.store.audit_page(before, limit.unwrap_or(usize::MAX)),
        }
        .map_err(|e| e.to_string())?;
        Ok(entries.iter().map(dto::AuditEntry::from).collect())
    }

    pub fn verify_audit(&self) -> Result<dto::AuditVerify, String> {
        Ok(audit_verdict(
            self.store.verify_audit().map_err(|e| e.to_string())?,
        ))
    }
}

/// The API's view of an audit check.
pub fn audit_verdict(result: Result<u64, store::BrokenChain>) -> dto::AuditVerify {
    match result {
        Ok(entries) => dto::AuditVerify {
            ok: true,
            entries,
            broken_at: None,
            reason: None,
        },
        Err(b) => dto::AuditVerify {
            ok: false,
            entries: b.seq.saturating_sub(1),
            broken_at: Some(b.seq),
            reason: Some(b.reason),
        },
    }
}

/// What a sync read from Git.
struct Fetched {
    info: source::CommitInfo,
    /// The manifests, or why they could not be read (the path is missing).
    sources: Result<manifest::Sources, String>,
}

/// Fetch, resolve and read, on a blocking thread.
fn read_commit(mirror: &Mirror, app: &Application, timeout: Duration) -> Result<Fetched, String> {
    mirror.fetch(timeout).map_err(|e| e.to_string())?;
    let id = mirror.resolve(&app.revision).map_err(|e| e.to_string())?;
    let info = mirror.commit(&id).map_err(|e| e.to_string())?;
    let sources = mirror
        .read_manifests(&id, &app.path)
        .map_err(|e| e.to_string());
    Ok(Fetched { info, sources })
}

/// Fetches and verifies the artifact, then loads and warms up the model (blocking).
/// A loaded model: in-process, or a model server process.
enum Loaded {
    Onnx(runtime::OnnxModel),
    Process(Arc<runtime::ProcessRuntime>),
}

/// The last commit an Application applied, with its manifests read from the local mirror (no
/// fetch).
struct Resumed {
    record: SyncRecord,
    desired: Vec<engine::DesiredService>,
    runtimes: Vec<manifest::ServingRuntime>,
    rollout_specs: Vec<engine::rollout::RolloutSpec>,
}

fn resumed_manifests(syncs: &[SyncRecord], slot: &Slot, settings: &Settings) -> Option<Resumed> {
    let record = syncs.iter().find(|s| {
        s.repo == slot.mirror.url()
            && s.revision == slot.app.revision
            && s.outcome == SyncOutcome::Applied
    })?;
    let commit = record.commit.as_ref()?;
    let sources = match slot.mirror.read_manifests(commit, &slot.app.path) {
        Ok(sources) => sources,
        Err(e) => {
            tracing::warn!(commit = %commit, error = %e, "cannot read the last applied commit from the mirror");
            return None;
        }
    };
    let parsed = manifest::parse(
        &sources,
        manifest::Options {
            require_digest: settings.require_digest,
        },
    );
    if parsed.has_errors() {
        return None;
    }
    let runtimes = parsed
        .manifests
        .serving_runtimes
        .iter()
        .map(|r| r.value.clone())
        .collect();
    Some(Resumed {
        record: record.clone(),
        desired: engine::desired_state(&parsed.manifests),
        runtimes,
        rollout_specs: engine::rollout::rollout_specs(&parsed.manifests),
    })
}

/// The runtime of a stored revision at start-up. ONNX runs in-process. Otherwise the predictor
/// of the last applied commit decides: as written when it is this revision, else (an older
/// revision of the service, still serving part of a split) with this revision's format and
/// model, keeping the `runtime:` the service names. `None` when that commit could not be read.
fn resumed_runtime(
    resumed: Option<&Resumed>,
    id: &ServiceId,
    rev: &store::RevisionRecord,
    uri: &manifest::StorageUri,
) -> Option<Result<Option<manifest::ServingRuntime>, String>> {
    if rev.model_format == "onnx" {
        return Some(Ok(None));
    }
    let Resumed {
        desired, runtimes, ..
    } = resumed?;
    let model = match desired.iter().find(|d| &d.id == id) {
        Some(d) if d.spec_hash == rev.spec_hash => d.model.clone(),
        other => manifest::ModelSpec {
            format: manifest::ModelFormat {
                name: rev.model_format.clone(),
                version: None,
            },
            storage_uri: uri.clone(),
            runtime: other.and_then(|d| d.model.runtime.clone()),
            protocol_version: None,
            form: manifest::PredictorForm::Model,
        },
    };
    Some(choose_runtime(runtimes, &id.namespace, &model))
}

/// The runtime for a predictor: the one `runtime:` names, else, for ONNX, none (in-process),
/// else the auto-selectable runtime of the highest priority that supports the format.
fn choose_runtime(
    runtimes: &[manifest::ServingRuntime],
    namespace: &str,
    model: &manifest::ModelSpec,
) -> Result<Option<manifest::ServingRuntime>, String> {
    let visible = |r: &&manifest::ServingRuntime| {
        r.cluster_scoped || r.meta.namespace_or_default() == namespace
    };
    if let Some(name) = &model.runtime {
        return match runtimes
            .iter()
            .filter(visible)
            .find(|r| &r.meta.name == name)
        {
            Some(r) => Ok(Some(r.clone())),
            None if model.format.name == "onnx" => Ok(None),
            None => Err(format!("runtime {name} is not defined in the manifests")),
        };
    }
    if model.format.name == "onnx" {
        return Ok(None);
    }
    runtimes
        .iter()
        .filter(visible)
        .filter(|r| !r.disabled)
        .filter_map(|r| {
            let f = r.supported_model_formats.iter().find(|f| {
                f.auto_select
                    && f.name == model.format.name
                    && (model.format.version.is_none() || f.version == model.format.version)
            })?;
            Some((f.priority.unwrap_or(0), r))
        })
        .max_by_key(|(p, _)| *p)
        .map(|(_, r)| Some(r.clone()))
        .ok_or_else(|| {
            format!(
                "no ServingRuntime supports model format {}; crossfade runs ONNX in-process and other formats through a ServingRuntime",
                model.format.name
            )
        })
}

fn load_model(
    cache: &artifact::Cache,
    format: &str,
    uri: &manifest::StorageUri,
    runtime: Result<Option<manifest::ServingRuntime>, String>,
    model_name: &str,
    policy: &crate::runtime_policy::RuntimeCommands,
) -> Result<(Loaded, manifest::Digest), String> {
    let runtime = runtime?;
    // Nothing from Git runs unless the operator allowed it; checked before any download.
    if let Some(rt) = &runtime {
        let program = rt.container.command.first().map_or("", String::as_str);
        policy.check(&rt.meta.name, program)?;
    }
    let fetched = cache.fetch(uri).map_err(|e| e.to_string())?;
    if let Some(rt) = runtime {
        let model_dir = if fetched.path.is_dir() {
            fetched.path.clone()
        } else {
            fetched.path.parent().unwrap_or(&fetched.path).to_owned()
        };
        let spec = runtime::ProcessSpec {
            model_name: model_name.to_owned(),
            command: rt.container.command.clone(),
            args: rt.container.args.clone(),
            env: rt.container.env.clone(),
            model_dir,
        };
        let process = runtime::ProcessRuntime::start(spec, Duration::from_secs(120))
            .map_err(|e| format!("runtime {}: {e}", rt.meta.name))?;
        return Ok((Loaded::Process(process), fetched.digest));
    }
    if format != "onnx" {
        return Err(format!("model format {format} needs a ServingRuntime"));
    }
    let file = onnx_file(&fetched.path)?;
    let loaded = runtime::OnnxModel::load(&file).map_err(|e| e.to_string())?;
    loaded
        .warm_up()
        .map_err(|e| format!("the warm-up inference failed: {e}"))?;
    Ok((Loaded::Onnx(loaded), fetched.digest))
}

/// A route's header matches for the gateway; `None` (and an error in the log) when one cannot
/// be built, so that the caller drops the route rather than widen it.
fn header_matches(
    service: &ServiceId,
    route: &str,
    matches: &[engine::rollout::HeaderMatchStatus],
) -> Option<Vec<(String, gateway::Match)>> {
    matches
        .iter()
        .map(|m| {
            let value = match m.kind.as_str() {
                "exact" => gateway::Match::Exact(m.value.clone()),
                "prefix" => gateway::Match::Prefix(m.value.clone()),
                _ => match regex_lite(&m.value) {
                    Some(re) => gateway::Match::Regex(re),
                    None => {
                        tracing::error!(%service, route, regex = %m.value, "a header route's regex does not compile: the route is not served");
                        return None;
                    }
                },
            };
            Some((m.header.to_ascii_lowercase(), value))
        })
        .collect()
}

/// The model file of an artifact: the file itself, or the one `.onnx` file of a directory
/// (`model.onnx` when there are several).
fn onnx_file(path: &std::path::Path) -> Result<PathBuf, String> {
    if path.is_file() {
        return Ok(path.to_owned());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("the artifact has no .onnx file".into()),
        many => many
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == "model.onnx"))
            .cloned()
            .ok_or_else(|| {
                "the artifact has several .onnx files and none is named model.onnx".into()
            }),
    }
}

fn render_diagnostics(sources: &manifest::Sources, parsed: &manifest::Parsed) -> Vec<String> {
    let rendered: Vec<String> = parsed
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| {
            format!(
                "{}:{}:{}: {}: {}{}",
                sources.get(d.file).name,
                d.line(),
                d.column(),
                d.code,
                d.message,
                if d.field.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", d.field)
                }
            )
        })
        .collect();
    // Diagnostics quote values; a storageUri's secrets stay out of the history.
    rendered.iter().map(|d| manifest::redact_uris(d)).collect()
}

/// Why a commit is not synced, and what serves instead.
fn refused(commit: &str, why: &dyn std::fmt::Display, serving: Option<&str>) -> String {
    let serving = serving.map_or("nothing".into(), |c| format!("commit {}", short(c)));
    format!(
        "commit {} is not synced: {why}; {serving} keeps serving",
        short(commit)
    )
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// A directory name for a repository URL: readable, and unique by a hash suffix.
fn mirror_dir_name(url: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut h);
    let readable: String = url
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("repo")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{readable}-{:016x}", h.finish())
}

/// The controller behind an `Arc`, as the API holds it (syncs need an owned handle).
pub struct SharedController(pub Arc<Controller>);

impl api::Backend for SharedController {
    fn status(&self) -> dto::Status {
        self.0.status()
    }
    fn history(&self, service: Option<&str>, limit: usize) -> Result<Vec<dto::SyncEntry>, String> {
        self.0.history(service, limit)
    }
    fn audit(
        &self,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<dto::AuditEntry>, String> {
        self.0.audit_entries(before, limit)
    }
    fn verify_audit(&self) -> Result<dto::AuditVerify, String> {
        self.0.verify_audit()
    }
    fn set_traffic(
        &self,
        namespace: &str,
        name: &str,
        splits: &BTreeMap<String, u8>,
    ) -> Result<(), String> {
        self.0.set_traffic(namespace, name, splits)
    }
    fn sync_now(&self, trigger: api::Trigger) -> api::BoxFuture<Vec<dto::SyncResult>> {
        Box::pin(Arc::clone(&self.0).sync_all(trigger))
    }
    fn rollouts(&self) -> Vec<dto::Rollout> {
        self.0
            .rollouts()
            .iter()
            .map(|(spec, status)| rollouts::rollout_dto(spec, status))
            .collect()
    }
    fn rollout_command(
        &self,
        namespace: Option<&str>,
        name: &str,
        action: api::RolloutCommand,
        body: &dto::RolloutAction,
    ) -> Result<dto::Rollout, api::CommandError> {
        let command = match action {
            api::RolloutCommand::Promote if body.full => engine::rollout::Command::PromoteFull,
            api::RolloutCommand::Promote => engine::rollout::Command::Promote,
            api::RolloutCommand::Abort => engine::rollout::Command::Abort,
            api::RolloutCommand::Retry => engine::rollout::Command::Retry,
        };
        self.0
            .rollout_command(
                namespace,
                name,
                command,
                "api:admin",
                body.reason.as_deref(),
            )
            .map(|(spec, status)| rollouts::rollout_dto(&spec, &status))
    }
    fn admin_token(&self) -> &str {
        &self.0.settings.admin_token
    }
    fn webhook_secret(&self) -> Option<&[u8]> {
        self.0.settings.webhook_secret.as_deref()
    }
    fn admin_hosts(&self) -> &[String] {
        &self.0.settings.admin_hosts
    }
}

/// A header route's regular expression (checked to compile when the manifest was read).
fn regex_lite(pattern: &str) -> Option<regex::Regex> {
    regex::Regex::new(pattern).ok()
}
