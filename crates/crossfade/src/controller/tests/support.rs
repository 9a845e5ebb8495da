//! Helpers of the controller tests: an in-memory repository, manifests, a scenario driver and
//! the rendering of plans.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clock::Timestamp;
use engine::{ServiceId, SyncPolicy};

use super::super::Application;
use super::super::plan::{Answer, Event, Fetched, LoadedRevision, Plan, ReplyId};
use super::super::state::{AppState, Rules};
use super::super::task::Fetcher;

/// Where the scenarios start: 2026-12-01T00:00:00Z.
pub const START: Timestamp = Timestamp::from_secs(1_796_083_200);

pub const V1: &str = "file:///models/v1/sha256-1111111111111111111111111111111111111111111111111111111111111111/model.onnx";
pub const V2: &str = "file:///models/v2/sha256-2222222222222222222222222222222222222222222222222222222222222222/model.onnx";

/// An InferenceService in namespace `models`, with `extra` lines under `predictor:`.
pub fn isvc(name: &str, uri: &str, extra: &str) -> String {
    format!(
        "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\nmetadata: {{name: {name}, namespace: models}}\nspec:\n  predictor:\n{extra}    model: {{modelFormat: {{name: onnx}}, storageUri: \"{uri}\"}}\n"
    )
}

pub fn app(automated: bool, policy: SyncPolicy) -> Application {
    Application {
        name: "models".into(),
        repo: "file:///repo".into(),
        revision: "HEAD".into(),
        path: ".".into(),
        automated,
        policy,
    }
}

pub fn rules(app: Application) -> Rules {
    Rules {
        app,
        repo: "file:///repo".into(),
        trust: None,
        require_digest: true,
        poll_interval: Duration::from_secs(180),
    }
}

pub fn id(name: &str) -> ServiceId {
    ServiceId::new("models", name)
}

/// A commit: its id and its files (name, text).
type Commit = (String, Vec<(String, String)>);

/// A repository in memory: commits of inline files, the newest one is HEAD. Fetching it can
/// be made to fail.
#[derive(Default)]
pub struct Repo {
    commits: Mutex<Vec<Commit>>,
    failing: Mutex<Option<String>>,
    /// Decoded as the controller's fetches decode: each parse after the first is compared
    /// with the one before it.
    cache: Mutex<manifest::ParseCache>,
}

impl Repo {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a commit of these files (name, text); returns its id.
    pub fn commit(&self, files: &[(&str, &str)]) -> String {
        let mut commits = self.commits.lock().unwrap();
        // `c01` then zeros: 40 characters like a Git id, and the first three tell them apart.
        let id = format!("c{:02}{}", commits.len() + 1, "0".repeat(37));
        commits.push((
            id.clone(),
            files
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
        ));
        id
    }

    /// Makes fetches fail with `reason` (`None`: succeed again).
    pub fn fail(&self, reason: Option<&str>) {
        *self.failing.lock().unwrap() = reason.map(str::to_owned);
    }

    fn sources(files: &[(String, String)]) -> manifest::Sources {
        let mut sources = manifest::Sources::new();
        for (name, text) in files {
            sources.push(manifest::SourceFile::new(name.clone(), text.clone()));
        }
        sources
    }

    /// HEAD as a fetch reads it.
    pub fn head(&self) -> Result<Fetched, String> {
        if let Some(reason) = self.failing.lock().unwrap().clone() {
            return Err(reason);
        }
        let commits = self.commits.lock().unwrap();
        let (id, files) = commits.last().ok_or("the repository has no commit")?;
        Ok(Fetched::new(
            source::CommitInfo {
                id: id.clone(),
                author: "Ada <ada@example.com>".into(),
                time: START.as_secs(),
                summary: "a commit".into(),
                signature: None,
            },
            Ok(Self::sources(files)),
            manifest::Options {
                require_digest: true,
            },
            &mut self.cache.lock().unwrap(),
        ))
    }
}

impl Fetcher for Repo {
    fn url(&self) -> &str {
        "file:///repo"
    }
    fn fetch(
        &self,
        _timeout: Duration,
        _options: manifest::Options,
        _cache: &mut manifest::ParseCache,
    ) -> Result<Fetched, String> {
        self.head()
    }
    fn manifests_at(&self, commit: &str) -> Result<manifest::Sources, String> {
        let commits = self.commits.lock().unwrap();
        commits
            .iter()
            .find(|(id, _)| id == commit)
            .map(|(_, files)| Self::sources(files))
            .ok_or_else(|| format!("no commit {commit}"))
    }
}

/// A loaded revision for the tests: routes to nothing (the pure scenarios never serve).
pub fn loaded(revision: &str) -> LoadedRevision {
    LoadedRevision {
        revision: Arc::new(gateway::Revision::proxy(
            revision,
            gateway::Upstream::new("127.0.0.1:9"),
        )),
        digest: "sha256:1111".into(),
    }
}

/// A fixture model (`fixtures/models/<name>.onnx`) loaded in-process, as a revision.
pub fn onnx(revision: &str, model: &str) -> LoadedRevision {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(format!("{model}.onnx"));
    let model = runtime::OnnxModel::load(&path).unwrap();
    LoadedRevision {
        revision: Arc::new(gateway::Revision::onnx(revision, model)),
        digest: "sha256:1111".into(),
    }
}

/// One Application's core driven by the test: events in, plans rendered.
pub struct Scenario {
    pub state: AppState,
    pub now: Timestamp,
    next_reply: ReplyId,
}

impl Scenario {
    pub fn new(app: Application) -> Self {
        Self {
            state: AppState::new(rules(app), START),
            now: START,
            next_reply: 1,
        }
    }

    /// Moves the clock on.
    pub fn after(&mut self, d: Duration) -> &mut Self {
        self.now = self.now + d;
        self
    }

    /// The plan of one event, rendered.
    pub fn handle(&mut self, event: Event) -> Vec<String> {
        render(&self.state.handle(event, self.now))
    }

    /// A sync request with a reply (its id is the next one: 1, 2, ...).
    pub fn sync(&mut self, trigger: api::Trigger) -> Vec<String> {
        let reply = Some(self.reply_id());
        self.handle(Event::Sync { trigger, reply })
    }

    pub fn reply_id(&mut self) -> ReplyId {
        let id = self.next_reply;
        self.next_reply += 1;
        id
    }

    /// The fetch's result: HEAD of `repo`.
    pub fn fetched(&mut self, repo: &Repo) -> Vec<String> {
        self.handle(Event::Fetched(repo.head()))
    }

    /// A load finished well.
    pub fn ready(&mut self, service: &str, revision: &str) -> Vec<String> {
        self.handle(Event::Loaded {
            service: id(service),
            revision: revision.into(),
            outcome: Ok(loaded(revision)),
        })
    }

    /// A load failed.
    pub fn failed(&mut self, service: &str, revision: &str, reason: &str) -> Vec<String> {
        self.handle(Event::Loaded {
            service: id(service),
            revision: revision.into(),
            outcome: Err(reason.into()),
        })
    }

    pub fn set_traffic(&mut self, service: &str, splits: &[(&str, u8)]) -> Vec<String> {
        let reply = self.reply_id();
        self.handle(Event::SetTraffic {
            service: id(service),
            splits: splits.iter().map(|(r, p)| ((*r).to_owned(), *p)).collect(),
            actor: "api:admin".into(),
            reply,
        })
    }

    /// Every Sync request answered so far would need a fetch: the plan of a sync, its fetch
    /// read from `repo`, and the loads answered Ready, in one trace.
    pub fn sync_and_load(&mut self, trigger: api::Trigger, repo: &Repo) -> Vec<String> {
        let mut trace = self.sync(trigger);
        let plan = self.state.handle(Event::Fetched(repo.head()), self.now);
        let loads = plan.loads.clone();
        trace.extend(render(&plan));
        for job in loads {
            trace.extend(self.ready(&job.service.name, &job.revision));
        }
        trace
    }

    /// Where a service's traffic goes now.
    pub fn traffic(&self, service: &str) -> Vec<(String, u8)> {
        self.state
            .live
            .services
            .get(&id(service))
            .map(|s| {
                s.traffic
                    .iter()
                    .map(|t| (t.revision.clone(), t.percent.get()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A plan as trace lines: the writes in order, then what it starts and answers. Log lines and
/// the wake-up are left out (the tests look at those on their own).
pub fn render(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for w in &plan.writes {
        out.push(match w {
            store::Write::Sync(r) => format!(
                "history {:?} {}{}",
                r.outcome,
                r.commit.as_deref().map_or("-", |c| &c[..3]),
                r.message
                    .as_deref()
                    .map_or(String::new(), |m| format!(": {m}"))
            ),
            store::Write::Revision(r) => format!("revision {} {:?}", r.name, r.state),
            store::Write::Service(r) => format!(
                "service {}/{} [{}]{}",
                r.namespace,
                r.name,
                r.traffic
                    .iter()
                    .map(|(rev, p)| format!("{rev}={p}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                if r.overridden { " overridden" } else { "" }
            ),
            store::Write::RemoveService { namespace, name } => {
                format!("remove service {namespace}/{name}")
            }
            store::Write::Rollout {
                namespace, service, ..
            } => format!("rollout status {namespace}/{service}"),
            store::Write::RemoveRollout { namespace, service } => {
                format!("remove rollout {namespace}/{service}")
            }
            store::Write::Audit {
                actor,
                action,
                subject,
                ..
            } => format!(
                "audit {action} {subject} by {}",
                actor
                    .strip_prefix("git:")
                    .map_or(actor.clone(), |c| format!("git:{}", &c[..3]))
            ),
        });
    }
    if plan.fetch {
        out.push("fetch".into());
    }
    for l in &plan.loads {
        out.push(format!("load {} {}", l.service, l.revision));
    }
    for m in &plan.measures {
        out.push(format!("measure {} {}", m.service, m.metric));
    }
    for n in &plan.notices {
        out.push(format!("notify {} {}", n.event, n.subject));
    }
    for (id, answer) in &plan.replies {
        out.push(format!(
            "reply {id}: {}",
            match answer {
                Answer::Synced(r) => format!(
                    "{}{}",
                    r.outcome,
                    r.message
                        .as_deref()
                        .map_or(String::new(), |m| format!(": {m}"))
                ),
                Answer::Traffic(Ok(())) => "traffic set".into(),
                Answer::Traffic(Err(e)) => format!("refused: {e}"),
                Answer::Rollout(Ok(r)) => format!("rollout {}", r.phase),
                Answer::Rollout(Err(e)) => format!("refused: {e:?}"),
            }
        ));
    }
    out
}

/// A controller in process: the real Application tasks over a temporary store, a repository
/// in memory, a fake clock and a loader the test answers.
pub struct InProcess {
    pub controller: Arc<super::super::Controller>,
    pub store: Arc<store::Store>,
    pub gateway: Arc<gateway::Gateway>,
    pub loads: tokio::sync::mpsc::UnboundedReceiver<PendingLoad>,
    stop: tokio::sync::watch::Sender<bool>,
    run: tokio::task::JoinHandle<()>,
}

/// A load the test answers.
pub struct PendingLoad {
    pub job: super::super::plan::LoadJob,
    answer: tokio::sync::oneshot::Sender<Result<LoadedRevision, String>>,
}

impl PendingLoad {
    pub fn ready(self) {
        let revision = self.job.revision.clone();
        let _ = self.answer.send(Ok(loaded(&revision)));
    }
}

/// Hands every load to the test.
struct TestLoader(tokio::sync::mpsc::UnboundedSender<PendingLoad>);

impl super::super::task::Load for TestLoader {
    fn load(
        self: Arc<Self>,
        job: super::super::plan::LoadJob,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<LoadedRevision, String>> + Send>> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let _ = self.0.send(PendingLoad { job, answer });
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the test dropped the load".into()))
        })
    }
}

/// A store whose next `failures` commits fail, as a full disk would.
pub struct Flaky {
    pub store: Arc<store::Store>,
    pub failures: std::sync::atomic::AtomicU32,
}

impl super::super::task::Persist for Flaky {
    fn commit(&self, writes: &[store::Write]) -> Result<(), store::Error> {
        use std::sync::atomic::Ordering;
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(store::Error::Database("No space left on device".into()));
        }
        self.store.commit(writes)
    }
}

impl InProcess {
    /// Starts the controller on `store` (a fresh one, or one a previous run left), with the
    /// Application of `policy` reading `repo`. Call under a paused tokio clock.
    pub fn start(
        dir: &std::path::Path,
        store: Arc<store::Store>,
        persist: Option<Arc<dyn super::super::task::Persist>>,
        repo: Arc<Repo>,
        policy: SyncPolicy,
    ) -> Self {
        // As `main` does: the one TLS provider of the process (the analysis clients use it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let clock = clock::Clock::fake(START);
        let gateway = gateway::Gateway::new(gateway::Config {
            clock,
            ..gateway::Config::default()
        });
        let settings = super::super::Settings {
            data_dir: dir.to_owned(),
            poll_interval: Duration::from_secs(180),
            fetch_timeout: Duration::from_secs(30),
            trust: None,
            require_digest: true,
            admin_token: "token".into(),
            webhook_secret: None,
            notify: Vec::new(),
            gateway: Arc::clone(&gateway),
            artifacts: artifact::Cache::new(
                &dir.join("artifacts"),
                1 << 20,
                Duration::from_secs(1),
            )
            .unwrap(),
            admin_limits: gateway::Limits::default(),
            upstream: gateway::Timeouts::default(),
            runtime_commands: crate::runtime_policy::RuntimeCommands::Refused,
            runtimes_dir: std::path::PathBuf::from("/nonexistent/runtimes"),
            secrets_dir: None,
            load_timeout: Duration::from_secs(60),
            admin_hosts: Vec::new(),
            clock,
        };
        let (tx, loads) = tokio::sync::mpsc::unbounded_channel();
        let persist = persist.unwrap_or_else(|| Arc::clone(&store) as _);
        let controller = Arc::new(
            super::super::Controller::assemble(
                Arc::clone(&store),
                persist,
                settings,
                vec![(app(true, policy), repo as Arc<dyn Fetcher>)],
                Arc::new(TestLoader(tx)),
            )
            .unwrap(),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(Arc::clone(&controller).run(stopped));
        Self {
            controller,
            store,
            gateway,
            loads,
            stop,
            run,
        }
    }

    /// `crossfade sync`, with every load it starts answered Ready.
    pub async fn sync(&mut self) -> api::dto::SyncResult {
        let mut sync = tokio::spawn(Arc::clone(&self.controller).sync_all(api::Trigger::Manual));
        loop {
            tokio::select! {
                done = &mut sync => return done.unwrap().remove(0),
                Some(load) = self.loads.recv() => load.ready(),
            }
        }
    }

    /// The split the gateway routes `model` by: (revision, percent).
    pub fn routed(&self, model: &str) -> Vec<(String, u8)> {
        let table = self.gateway.table();
        table.models.get(model).map_or(Vec::new(), |r| {
            r.split
                .iter()
                .map(|(i, p)| (r.revisions[*i].name.clone(), *p))
                .collect()
        })
    }

    /// Stops every task (a crash, as far as the store is concerned: nothing more is written).
    pub async fn stop(self) -> Arc<store::Store> {
        let _ = self.stop.send(true);
        let _ = self.run.await;
        self.store
    }
}
