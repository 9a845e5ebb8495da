//! The controller: one task per Application that owns its state, and what the API reads.
//!
//! # Shape
//!
//! - Each Application has a task ([`task::AppTask`]) that owns its [`state::AppState`] and
//!   handles one event at a time: commands (sync, refresh, traffic, rollout commands, each
//!   with a reply), results coming back (fetches, loads, measurements) and its own wake-ups.
//!   Deciding is pure ([`state::AppState::handle`] → [`plan::Plan`]); the task carries the plan
//!   out (one store transaction, then the work it starts, then the answers).
//! - After every event the task publishes an immutable [`view::AppView`]. The API and the
//!   dashboard read views, never the state. One publisher turns the views into the gateway's
//!   route table.
//! - Time comes from one [`clock::Clock`].
//!
//! # Guarantees
//!
//! - A commit is applied whole or not at all: an untrusted commit, or one whose manifests have
//!   errors, changes nothing that serves; the last good commit keeps serving and the status
//!   says why the new one was refused.
//! - Every examined commit and every fetch failure (once per distinct error) is in the sync
//!   history; every change to what serves is in the audit log, written before it is carried
//!   out (a write the store refuses holds the change back, visibly, until it succeeds).
//! - Syncs of one Application never overlap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use api::dto;
use engine::{LiveRevision, LiveService, RevisionState, ServiceId, SyncPolicy, Tags};
use source::{Mirror, TrustedKeys};
use tokio::sync::{mpsc, oneshot, watch};

mod audit;
mod models;
pub mod plan;
mod rollouts;
pub mod state;
mod task;
mod view;

pub use audit::AuditAction;
use models::choose_runtime;
use plan::{Answer, Event, Fetched, LoadJob};
use state::{AppState, Rules};
use task::{AppTask, Drivers, Msg};
use view::AppView;

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
    /// Where `secretKeyRef` arguments of AnalysisTemplates are read (`--secrets-dir`).
    pub secrets_dir: Option<std::path::PathBuf>,
    /// Where the built-in runtimes' environments are (`crossfade runtime install`).
    pub runtimes_dir: std::path::PathBuf,
    /// The longest a revision may take to fetch, verify, load and warm up.
    pub load_timeout: Duration,
    /// Host names the control API answers for besides loopback and IP addresses.
    pub admin_hosts: Vec<String>,
    /// The one source of time.
    pub clock: clock::Clock,
}

/// An Application task's mailbox and view, as the API holds them.
struct AppHandle {
    inbox: mpsc::UnboundedSender<Msg>,
    view: watch::Receiver<Arc<AppView>>,
}

/// The Applications' tasks, and the reads and commands of the API.
pub struct Controller {
    store: Arc<store::Store>,
    settings: Settings,
    apps: Vec<AppHandle>,
    next_reply: AtomicU64,
    /// The tasks, until [`Controller::run`] starts them.
    pending: std::sync::Mutex<Option<Pending>>,
}

struct Pending {
    tasks: Vec<AppTask>,
    publisher: Publisher,
}

/// A Git mirror as an Application's fetcher.
struct MirrorFetcher {
    mirror: Mirror,
    app: Application,
}

impl task::Fetcher for MirrorFetcher {
    fn url(&self) -> &str {
        self.mirror.url()
    }

    fn manifests_at(&self, commit: &str) -> Result<manifest::Sources, String> {
        self.mirror
            .read_manifests(commit, &self.app.path)
            .map_err(|e| e.to_string())
    }

    fn fetch(
        &self,
        timeout: Duration,
        options: manifest::Options,
        cache: &mut manifest::ParseCache,
    ) -> Result<Fetched, String> {
        self.mirror.fetch(timeout).map_err(|e| e.to_string())?;
        let id = self
            .mirror
            .resolve(&self.app.revision)
            .map_err(|e| e.to_string())?;
        let info = self.mirror.commit(&id).map_err(|e| e.to_string())?;
        let sources = self
            .mirror
            .read_manifests(&id, &self.app.path)
            .map_err(|e| e.to_string());
        Ok(Fetched::new(info, sources, options, cache))
    }
}

// === impl Controller ===

impl Controller {
    /// What it was started with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Resumes every Application from the store (what served before a restart serves again,
    /// its revisions loading) and publishes the restored routes, before any listener answers.
    pub fn new(
        store: store::Store,
        settings: Settings,
        apps: Vec<Application>,
    ) -> anyhow::Result<Self> {
        let mut sources: Vec<(Application, Arc<dyn task::Fetcher>)> = Vec::new();
        for app in apps {
            let dir = settings
                .data_dir
                .join("git")
                .join(mirror_dir_name(&app.repo));
            let mirror = Mirror::open(&app.repo, &dir)?;
            sources.push((app.clone(), Arc::new(MirrorFetcher { mirror, app })));
        }
        let loader = models::Loader::new(
            settings.artifacts.clone(),
            settings.runtime_commands.clone(),
            settings.runtimes_dir.clone(),
            settings.upstream,
            settings.load_timeout,
        );
        tracing::debug!(concurrent_loads = loader.concurrency(), "loader");
        let store = Arc::new(store);
        let persist: Arc<dyn task::Persist> = Arc::clone(&store) as _;
        Ok(Self::assemble(store, persist, settings, sources, loader)?)
    }

    /// Wires the Applications' tasks to their drivers: `apps` with where their commits come
    /// from, `loader` loads revisions, `persist` takes the plans' writes (`store` is what the
    /// API reads). The scenario tests give their own.
    pub(crate) fn assemble(
        store: Arc<store::Store>,
        persist: Arc<dyn task::Persist>,
        mut settings: Settings,
        apps: Vec<(Application, Arc<dyn task::Fetcher>)>,
        loader: Arc<dyn task::Load>,
    ) -> Result<Self, store::Error> {
        let clock = settings.clock;
        let now = clock.now();
        let insecure = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap_or_default();
        let (views_changed, _) = watch::channel(0u64);
        let (published_tx, published_rx) = watch::channel(vec![0u64; apps.len()]);
        let drivers = Arc::new(Drivers {
            store: persist,
            gateway: Arc::clone(&settings.gateway),
            clock,
            notifier: crate::notify::Notifier::start(&settings.notify),
            loader,
            http: (reqwest::Client::new(), insecure),
            fetch_timeout: settings.fetch_timeout,
            secrets_dir: settings.secrets_dir.clone(),
            runtime_commands: settings.runtime_commands.clone(),
            jobs_dir: settings.data_dir.join("jobs"),
            views_changed,
            routes_published: published_rx,
        });
        let trust = settings.trust.take().map(Arc::new);
        let stored = Stored::read(&store)?;
        let mut handles = Vec::new();
        let mut tasks = Vec::new();
        let mut views = Vec::new();
        for (index, (app, fetcher)) in apps.into_iter().enumerate() {
            let rules = Rules {
                app,
                repo: fetcher.url().to_owned(),
                trust: trust.clone(),
                require_digest: settings.require_digest,
                poll_interval: settings.poll_interval,
            };
            let (mut state, loads) = resume(rules, &stored, fetcher.as_ref(), now);
            let (services, source) = state.take_dirty();
            let view = AppView::default().update(&state, &services, source, &settings.gateway);
            let (view_tx, view_rx) = watch::channel(Arc::new(view));
            views.push(view_rx.clone());
            let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
            let plan = plan::Plan {
                loads,
                ..plan::Plan::default()
            };
            tasks.push(AppTask {
                index,
                state,
                inbox: inbox_rx,
                outbox: inbox_tx.clone(),
                view: view_tx,
                fetcher,
                drivers: Arc::clone(&drivers),
                wake: Some(now),
                initial: Some(plan),
                parse_cache: Arc::default(),
            });
            handles.push(AppHandle {
                inbox: inbox_tx,
                view: view_rx,
            });
        }
        let mut publisher = Publisher {
            views,
            gateway: Arc::clone(&settings.gateway),
            changed: drivers.views_changed.subscribe(),
            published: published_tx,
            models: std::collections::HashMap::new(),
            seen: Vec::new(),
        };
        // Before the listeners answer: every restored service is in the route table, its
        // revisions loading, so the data plane answers 503 for it until they are Ready,
        // never 404 "not served here".
        publisher.publish();
        Ok(Self {
            store,
            settings,
            apps: handles,
            next_reply: AtomicU64::new(1),
            pending: std::sync::Mutex::new(Some(Pending { tasks, publisher })),
        })
    }

    /// Runs every Application's task and the route publisher until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let Some(pending) = self.pending.lock().expect("pending").take() else {
            return;
        };
        let mut joins = Vec::new();
        joins.push(tokio::spawn(pending.publisher.run(shutdown.clone())));
        for task in pending.tasks {
            joins.push(tokio::spawn(task.run(shutdown.clone())));
        }
        for j in joins {
            let _ = j.await;
        }
    }

    /// Sends `event` (built with its reply id) to Application `app` and waits for the answer.
    async fn ask(&self, app: usize, event: impl FnOnce(plan::ReplyId) -> Event) -> Option<Answer> {
        let id = self.next_reply.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.apps[app]
            .inbox
            .send(Msg {
                event: event(id),
                reply: Some((id, tx)),
            })
            .ok()?;
        rx.await.ok()
    }

    /// Syncs every Application; returns what each did.
    pub async fn sync_all(self: Arc<Self>, trigger: api::Trigger) -> Vec<dto::SyncResult> {
        let mut waits = Vec::new();
        for app in 0..self.apps.len() {
            let this = Arc::clone(&self);
            let trigger = trigger.clone();
            waits.push(tokio::spawn(async move {
                let name = this.apps[app].view.borrow().name.clone();
                match this
                    .ask(app, |id| Event::Sync {
                        trigger,
                        reply: Some(id),
                    })
                    .await
                {
                    Some(Answer::Synced(result)) => result,
                    _ => dto::SyncResult {
                        application: name,
                        outcome: dto::SyncOutcome::FetchFailed,
                        commit: None,
                        message: Some("the Application's task is stopped".into()),
                    },
                }
            }));
        }
        let mut out = Vec::new();
        for w in waits {
            if let Ok(r) = w.await {
                out.push(r);
            }
        }
        out
    }

    /// Sets a split by hand. Every revision must be Ready; the percents must sum to 100.
    pub async fn set_traffic(
        &self,
        namespace: &str,
        name: &str,
        splits: &BTreeMap<String, u8>,
    ) -> Result<(), String> {
        let id = ServiceId::new(namespace, name);
        let Some(app) = self
            .apps
            .iter()
            .position(|a| a.view.borrow().services.contains_key(&id))
        else {
            return Err(format!("no service {id}"));
        };
        let splits = splits.clone();
        match self
            .ask(app, |reply| Event::SetTraffic {
                service: id,
                splits,
                actor: "api:admin".into(),
                reply,
            })
            .await
        {
            Some(Answer::Traffic(result)) => result,
            _ => Err("the Application's task is stopped".into()),
        }
    }

    /// An operator's command to the rollout `name` (in `namespace`, when given).
    pub async fn rollout_command(
        &self,
        namespace: Option<&str>,
        name: &str,
        command: engine::rollout::Command,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<dto::Rollout, api::CommandError> {
        let found = self.apps.iter().enumerate().find_map(|(i, a)| {
            a.view
                .borrow()
                .rollouts
                .iter()
                .find(|(s, _)| name == s.name && namespace.is_none_or(|ns| ns == s.namespace))
                .map(|(s, _)| (i, s.service.clone()))
        });
        let Some((app, service)) = found else {
            return Err(api::CommandError::NotFound(format!("no rollout {name}")));
        };
        let (actor, reason) = (actor.to_owned(), reason.map(str::to_owned));
        match self
            .ask(app, |reply| Event::Rollout {
                service,
                command,
                actor,
                reason,
                reply,
            })
            .await
        {
            Some(Answer::Rollout(result)) => result.map(|r| *r),
            _ => Err(api::CommandError::NotFound(
                "the Application's task is stopped".into(),
            )),
        }
    }

    /// The data plane this controller publishes to.
    pub fn gateway(&self) -> &Arc<gateway::Gateway> {
        &self.settings.gateway
    }

    /// The rollouts, with where each stands.
    pub fn rollouts(&self) -> Vec<(engine::rollout::RolloutSpec, engine::rollout::RolloutStatus)> {
        self.apps
            .iter()
            .flat_map(|a| a.view.borrow().rollouts.as_ref().clone())
            .collect()
    }

    // --- reads for the API: views and the store, never a task's state ---

    pub fn status(&self) -> dto::Status {
        let mut status = dto::Status::default();
        for handle in &self.apps {
            let view = Arc::clone(&handle.view.borrow());
            let mut source = view.source.clone();
            if let Some(e) = &view.store_error {
                source.error = Some(e.clone());
            }
            status.applications.push(dto::ApplicationStatus {
                name: view.name.clone(),
                source,
                prune: view.prune,
                self_heal: view.self_heal,
            });
            let first = status.services.len();
            status.services.extend(
                view.services
                    .iter()
                    .map(|(_, s)| dto::ServiceStatus::clone(s)),
            );
            status.services[first..]
                .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            status.rollouts.extend(
                view.rollouts
                    .iter()
                    .map(|(spec, s)| rollouts::rollout_dto(spec, s)),
            );
        }
        if let Some(first) = status.applications.first() {
            status.source = first.source.clone();
        }
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

/// Turns the Applications' views into the gateway's route table: once at start, then
/// whenever a view changed (several changes that come together make one table). Only the
/// shards of routes that changed since the last table are looked at.
struct Publisher {
    views: Vec<watch::Receiver<Arc<AppView>>>,
    gateway: Arc<gateway::Gateway>,
    changed: watch::Receiver<u64>,
    /// The generation of each view the table now holds.
    published: watch::Sender<Vec<u64>>,
    /// The table's routes by model name, with the service each belongs to.
    models: std::collections::HashMap<Arc<str>, (ServiceId, Arc<gateway::Route>)>,
    /// The routes of each Application the table was last built from.
    seen: Vec<view::Sharded<Arc<gateway::Route>>>,
}

impl Publisher {
    fn publish(&mut self) {
        let mut generations = Vec::with_capacity(self.views.len());
        for (app, view) in self.views.iter().enumerate() {
            let view = Arc::clone(&view.borrow());
            generations.push(view.generation);
            if self.seen.len() <= app {
                self.seen.push(view::Sharded::default());
            }
            let before = std::mem::replace(&mut self.seen[app], view.routes.clone());
            for (old, new) in before.changed_shards(&view.routes) {
                for (id, route) in old.iter() {
                    if new.get(id).is_none_or(|r| !Arc::ptr_eq(r, route))
                        && self
                            .models
                            .get(id.name.as_str())
                            .is_some_and(|(owner, _)| owner == id)
                    {
                        self.models.remove(id.name.as_str());
                    }
                }
                for (id, route) in new.iter() {
                    if old.get(id).is_some_and(|r| Arc::ptr_eq(r, route)) {
                        continue;
                    }
                    let previous = self
                        .models
                        .insert(Arc::from(id.name.as_str()), (id.clone(), Arc::clone(route)));
                    if previous.is_some_and(|(owner, _)| &owner != id) {
                        tracing::warn!(service = %id, "another namespace serves a model of the same name; this one wins");
                    }
                }
            }
        }
        let table = gateway::RouteTable {
            models: self
                .models
                .iter()
                .map(|(name, (_, route))| (Arc::clone(name), Arc::clone(route)))
                .collect(),
        };
        self.gateway.publish(table);
        self.published.send_replace(generations);
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                changed = self.changed.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.changed.borrow_and_update();
                    self.publish();
                }
                _ = stop.changed() => break,
            }
        }
    }
}

/// What the store holds, read once at start.
struct Stored {
    syncs: Vec<store::SyncRecord>,
    services: Vec<store::ServiceRecord>,
    /// By service, oldest first.
    revisions: BTreeMap<ServiceId, Vec<store::RevisionRecord>>,
    rollouts: Vec<(String, String, Vec<u8>)>,
}

impl Stored {
    fn read(store: &store::Store) -> Result<Self, store::Error> {
        let mut revisions: BTreeMap<ServiceId, Vec<store::RevisionRecord>> = BTreeMap::new();
        for r in store.all_revisions()? {
            revisions
                .entry(ServiceId::new(&r.namespace, &r.service))
                .or_default()
                .push(r);
        }
        Ok(Self {
            syncs: store.syncs(1000)?,
            services: store.services()?,
            revisions,
            rollouts: store.rollouts()?,
        })
    }

    fn revisions_of(&self, id: &ServiceId) -> Vec<store::RevisionRecord> {
        self.revisions.get(id).cloned().unwrap_or_default()
    }
}

/// An Application as the store left it: the commit that was serving serves again (read from
/// the local mirror, no fetch), every service it routed, every revision that was not retired
/// (returned as loads), and every rollout at the step it was on.
fn resume(
    rules: Rules,
    stored: &Stored,
    fetcher: &dyn task::Fetcher,
    now: clock::Timestamp,
) -> (AppState, Vec<LoadJob>) {
    let mut state = AppState::new(rules, now);
    let rules = state.rules().clone();
    let mine = |s: &&store::SyncRecord| s.repo == rules.repo && s.revision == rules.app.revision;
    // The last examined commit is not recorded a second time.
    state.examined = stored
        .syncs
        .iter()
        .find(mine)
        .and_then(|s| s.commit.clone());
    let resumed = resumed_manifests(&stored.syncs, &rules, fetcher);
    if let Some(r) = &resumed {
        state.commit = r.record.commit.clone();
        state.verified = r.record.signer.is_some();
        state.signer = r.record.signer.clone();
        state.last_sync_at = Some(clock::Timestamp::from_millis(r.record.time));
        state.desired = r
            .desired
            .iter()
            .map(|d| (d.id.clone(), d.clone()))
            .collect();
        state.runtimes = r.runtimes.clone();
        state.rollout_specs = r.rollout_specs.clone();
    }
    let mut loads = Vec::new();
    for record in stored
        .services
        .iter()
        .filter(|s| s.application == rules.app.name)
    {
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
        let revisions = stored.revisions_of(&id);
        for rev in &revisions {
            if rev.state == store::RevisionState::Retired {
                continue;
            }
            let Ok(uri) = manifest::StorageUri::parse(&rev.storage_uri) else {
                continue;
            };
            // A revision served by a ServingRuntime starts the runtime the last applied
            // commit names, read from the local mirror: no remote needed. Without that
            // commit, the revision waits for the first sync.
            let Some(runtime) = resumed_runtime(resumed.as_ref(), &id, rev, &uri) else {
                continue;
            };
            loads.push(LoadJob {
                service: id.clone(),
                revision: rev.name.clone(),
                format: rev.model_format.clone(),
                uri,
                runtime,
            });
            live.revisions.push(LiveRevision {
                name: rev.name.clone(),
                spec_hash: rev.spec_hash.clone(),
                state: RevisionState::Pending,
            });
        }
        state.records.insert(id.clone(), revisions);
        // The rollout resumes at the step it was on, with its runs and pause start.
        if let Some((_, _, bytes)) = stored
            .rollouts
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
        state.live.services.insert(id.clone(), live);
        state.mark_dirty(id);
    }
    // Services declared but never routed (still loading when the process stopped) keep
    // their revision numbers.
    for id in state.desired.keys().cloned().collect::<Vec<_>>() {
        if !state.records.contains_key(&id) {
            state.records.insert(id.clone(), stored.revisions_of(&id));
        }
        state.mark_dirty(id);
    }
    (state, loads)
}

/// The last commit an Application applied, with its manifests read from the local mirror (no
/// fetch).
struct Resumed {
    record: store::SyncRecord,
    desired: Vec<engine::DesiredService>,
    runtimes: Vec<manifest::ServingRuntime>,
    rollout_specs: Vec<engine::rollout::RolloutSpec>,
}

fn resumed_manifests(
    syncs: &[store::SyncRecord],
    rules: &Rules,
    fetcher: &dyn task::Fetcher,
) -> Option<Resumed> {
    let record = syncs.iter().find(|s| {
        s.repo == rules.repo
            && s.revision == rules.app.revision
            && s.outcome == store::SyncOutcome::Applied
    })?;
    let commit = record.commit.as_ref()?;
    let sources = match fetcher.manifests_at(commit) {
        Ok(sources) => sources,
        Err(e) => {
            tracing::warn!(commit = %commit, error = %e, "cannot read the last applied commit from the mirror");
            return None;
        }
    };
    let parsed = manifest::parse(
        &sources,
        manifest::Options {
            require_digest: rules.require_digest,
        },
    );
    if parsed.has_errors() {
        return None;
    }
    Some(Resumed {
        record: record.clone(),
        desired: engine::desired_state(&parsed.manifests),
        runtimes: parsed
            .manifests
            .serving_runtimes
            .iter()
            .map(|r| r.value.clone())
            .collect(),
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
) -> Option<Result<models::Serving, String>> {
    if rev.model_format == "onnx" {
        return Some(Ok(models::Serving::InProcess));
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
            use engine::rollout::MatchKind;
            let value = match m.kind {
                MatchKind::Exact => gateway::Match::Exact(m.value.clone()),
                MatchKind::Prefix => gateway::Match::Prefix(m.value.clone()),
                MatchKind::Regex => match regex_lite(&m.value) {
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

/// The controller behind an `Arc`, as the API holds it (commands need an owned handle).
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
    ) -> api::BoxFuture<Result<(), String>> {
        let this = Arc::clone(&self.0);
        let (namespace, name, splits) = (namespace.to_owned(), name.to_owned(), splits.clone());
        Box::pin(async move { this.set_traffic(&namespace, &name, &splits).await })
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
    fn rollout_series(&self, rollout: &dto::Rollout) -> dto::RolloutSeries {
        // Five minutes in steps of five seconds.
        const STEP: u64 = 5;
        const POINTS: u64 = 60;
        let gateway = &self.0.settings.gateway;
        let roles = [
            (rollout.canary_revision.as_deref(), "canary"),
            (rollout.stable_revision.as_deref(), "stable"),
        ];
        let revisions = roles
            .into_iter()
            .filter_map(|(rev, role)| {
                let rev = rev?;
                let series = gateway.series(&rollout.service, rev, STEP, POINTS)?;
                let points = series
                    .iter()
                    .enumerate()
                    .map(|(i, s)| series_point(s, (POINTS - 1 - i as u64) * STEP, STEP))
                    .collect();
                Some(dto::RevisionSeries {
                    revision: rev.to_owned(),
                    role: role.into(),
                    points,
                })
            })
            .collect();
        dto::RolloutSeries {
            step_seconds: STEP,
            revisions,
        }
    }
    fn rollout_command(
        &self,
        namespace: Option<&str>,
        name: &str,
        action: api::RolloutCommand,
        body: &dto::RolloutAction,
    ) -> api::BoxFuture<Result<dto::Rollout, api::CommandError>> {
        let command = match action {
            api::RolloutCommand::Promote if body.full => engine::rollout::Command::PromoteFull,
            api::RolloutCommand::Promote => engine::rollout::Command::Promote,
            api::RolloutCommand::Abort => engine::rollout::Command::Abort,
            api::RolloutCommand::Retry => engine::rollout::Command::Retry,
        };
        let this = Arc::clone(&self.0);
        let (namespace, name, reason) = (
            namespace.map(str::to_owned),
            name.to_owned(),
            body.reason.clone(),
        );
        Box::pin(async move {
            this.rollout_command(
                namespace.as_deref(),
                &name,
                command,
                "api:admin",
                reason.as_deref(),
            )
            .await
        })
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

/// One step of a revision's statistics, for the dashboard.
fn series_point(s: &gateway::Summary, seconds_ago: u64, step: u64) -> dto::SeriesPoint {
    let answered = s.ok + s.server_errors;
    let share = |part: u64, of: u64| (of > 0).then(|| part as f64 / of as f64);
    dto::SeriesPoint {
        seconds_ago,
        requests: s.requests,
        replayed: s.replayed,
        rate: s.requests as f64 / step as f64,
        error_rate: share(s.server_errors, answered),
        client_error_rate: share(s.client_errors, s.requests),
        p50: s.p50,
        p99: s.p99,
        mirrored: s.mirrored,
        agreement: share(s.agreed, s.mirrored),
        top_score: s.drift.mean_score(),
        stable_top_score: s.drift.stable_mean_score(),
    }
}

/// A header route's regular expression (checked to compile when the manifest was read).
fn regex_lite(pattern: &str) -> Option<regex::Regex> {
    regex::Regex::new(pattern).ok()
}

#[cfg(test)]
mod tests;
