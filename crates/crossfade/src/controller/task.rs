//! The task of one Application: receives events, decides with [`AppState::handle`], and
//! carries the plans out.
//!
//! # Flow of one turn
//!
//! 1. Wait for an event (a message, a result coming back, or the wake-up the last plan asked
//!    for), then take whatever else is already queued (up to [`BURST`]): events that arrive
//!    together are decided one by one and committed together.
//! 2. Commit the plans' writes in one store transaction. A write the store refuses is retried
//!    with backoff, and the Application's status says so meanwhile; nothing of the plans is
//!    carried out before the writes hold.
//! 3. Start the fetch, loads and measurements; send the notifications.
//! 4. Publish the new view (rebuilt for the services the events touched) and tell the route
//!    publisher; the answers go out once the route table holds this view, so a caller that
//!    was told "Ready" finds the data plane serving it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clock::{Clock, Timestamp};
use tokio::sync::{mpsc, oneshot, watch};

use super::models::Loader;
use super::plan::{Answer, Event, Fetched, LoadJob, LoadedRevision, MeasureJob, Plan, ReplyId};
use super::state::AppState;
use super::view::AppView;

/// Events decided and committed together at most.
pub const BURST: usize = 512;

/// A message to an Application task.
pub struct Msg {
    pub event: Event,
    pub reply: Option<(ReplyId, oneshot::Sender<Answer>)>,
}

impl From<Event> for Msg {
    fn from(event: Event) -> Self {
        Msg { event, reply: None }
    }
}

/// Where a plan's writes go: one transaction per call, all or nothing.
pub trait Persist: Send + Sync + 'static {
    fn commit(&self, writes: &[store::Write]) -> Result<(), store::Error>;
}

impl Persist for store::Store {
    fn commit(&self, writes: &[store::Write]) -> Result<(), store::Error> {
        store::Store::commit(self, writes)
    }
}

/// What loads revisions.
pub trait Load: Send + Sync + 'static {
    fn load(
        self: Arc<Self>,
        job: LoadJob,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<LoadedRevision, String>> + Send>>;
}

impl Load for Loader {
    fn load(
        self: Arc<Self>,
        job: LoadJob,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<LoadedRevision, String>> + Send>> {
        Box::pin(Loader::load(self, job))
    }
}

/// What every Application task uses to carry out plans.
pub struct Drivers {
    pub store: Arc<dyn Persist>,
    pub gateway: Arc<gateway::Gateway>,
    pub clock: Clock,
    pub notifier: crate::notify::Notifier,
    pub loader: Arc<dyn Load>,
    /// HTTP clients of the analysis providers: verifying certificates, and not (`insecure`).
    pub http: (reqwest::Client, reqwest::Client),
    pub fetch_timeout: Duration,
    /// Which commands from Git may run (analysis jobs, as ServingRuntimes).
    pub runtime_commands: crate::runtime_policy::RuntimeCommands,
    /// Where analysis jobs get their working directories.
    pub jobs_dir: std::path::PathBuf,
    /// Where `secretKeyRef` arguments are read (`<dir>/<name>/<key>`), if the operator named it.
    pub secrets_dir: Option<std::path::PathBuf>,
    /// Told after every view published (the route publisher listens).
    pub views_changed: watch::Sender<u64>,
    /// The view generation of each Application the route table holds, by index.
    pub routes_published: watch::Receiver<Vec<u64>>,
}

/// Where an Application's commits come from.
pub trait Fetcher: Send + Sync + 'static {
    /// The repository's URL, as the history names it.
    fn url(&self) -> &str;
    /// Fetch, resolve and read the newest commit, decoding its manifests with `options`
    /// through `cache` (blocking: runs on a blocking thread).
    fn fetch(
        &self,
        timeout: Duration,
        options: manifest::Options,
        cache: &mut manifest::ParseCache,
    ) -> Result<Fetched, String>;
    /// The manifests of a commit fetched before, read locally (at start-up, to resume).
    fn manifests_at(&self, commit: &str) -> Result<manifest::Sources, String>;
}

/// One Application's task.
pub struct AppTask {
    pub index: usize,
    pub state: AppState,
    pub inbox: mpsc::UnboundedReceiver<Msg>,
    /// Where results come back (the same inbox).
    pub outbox: mpsc::UnboundedSender<Msg>,
    pub view: watch::Sender<Arc<AppView>>,
    pub fetcher: Arc<dyn Fetcher>,
    pub drivers: Arc<Drivers>,
    /// The first wake-up (the first poll, at once).
    pub wake: Option<Timestamp>,
    /// What resuming from the store left to do (the loads of the restored revisions).
    pub initial: Option<Plan>,
    /// The decoded files of the last fetch, so the next decodes only what changed.
    pub parse_cache: Arc<std::sync::Mutex<manifest::ParseCache>>,
}

impl AppTask {
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut replies: HashMap<ReplyId, oneshot::Sender<Answer>> = HashMap::new();
        let clock = self.drivers.clock;
        if let Some(plan) = self.initial.take() {
            self.carry_out(plan, &mut replies);
        }
        loop {
            let wake = self.wake;
            let first = tokio::select! {
                msg = self.inbox.recv() => match msg {
                    Some(m) => m,
                    None => break,
                },
                () = async { clock.sleep_until(wake.unwrap_or_default()).await }, if wake.is_some() => Event::Wake.into(),
                _ = stop.changed() => break,
            };
            let mut msgs = vec![first];
            while msgs.len() < BURST
                && let Ok(m) = self.inbox.try_recv()
            {
                msgs.push(m);
            }
            let now = clock.now();
            let mut plan = Plan::default();
            for msg in msgs {
                if let Some((id, tx)) = msg.reply {
                    replies.insert(id, tx);
                }
                plan.merge(self.state.handle(msg.event, now));
            }
            self.wake = plan.wake;
            if !self
                .commit(std::mem::take(&mut plan.writes), &mut stop)
                .await
            {
                break;
            }
            self.carry_out(plan, &mut replies);
            // What the state let go of is dropped off this task's thread, at a low priority.
            let garbage = self.state.take_garbage();
            if !garbage.is_empty() {
                tokio::spawn(api::in_background(move || drop(garbage)));
            }
        }
    }

    /// Commits `writes` in one transaction, retrying with backoff while the store refuses
    /// them. Returns `false` if asked to stop meanwhile.
    async fn commit(
        &mut self,
        writes: Vec<store::Write>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        if writes.is_empty() {
            return true;
        }
        let writes = Arc::new(writes);
        let mut backoff = Duration::from_millis(500);
        loop {
            let store = Arc::clone(&self.drivers.store);
            let batch = Arc::clone(&writes);
            let result = tokio::task::spawn_blocking(move || store.commit(&batch))
                .await
                .unwrap_or_else(|e| {
                    Err(store::Error::Database(format!(
                        "the write task failed: {e}"
                    )))
                });
            match result {
                Ok(()) => {
                    if self.view.borrow().store_error.is_some() {
                        self.view.send_modify(|v| {
                            let mut next = AppView::clone(v);
                            next.store_error = None;
                            *v = Arc::new(next);
                        });
                    }
                    return true;
                }
                Err(e) => {
                    let message = format!(
                        "the store refused a write ({e}); nothing of the last change is carried out until it is written, retrying in {} ms",
                        backoff.as_millis()
                    );
                    tracing::error!(application = %self.state.rules().app.name, "{message}");
                    self.view.send_modify(|v| {
                        let mut next = AppView::clone(v);
                        next.store_error = Some(message.clone());
                        *v = Arc::new(next);
                    });
                    let clock = self.drivers.clock;
                    tokio::select! {
                        () = clock.sleep_until(clock.now() + backoff) => {}
                        _ = stop.changed() => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn carry_out(&mut self, plan: Plan, replies: &mut HashMap<ReplyId, oneshot::Sender<Answer>>) {
        let app = self.state.rules().app.name.clone();
        for (level, line) in &plan.logs {
            match *level {
                tracing::Level::ERROR => tracing::error!(application = %app, "{line}"),
                tracing::Level::WARN => tracing::warn!(application = %app, "{line}"),
                _ => tracing::info!(application = %app, "{line}"),
            }
        }
        if plan.fetch {
            let fetcher = Arc::clone(&self.fetcher);
            let timeout = self.drivers.fetch_timeout;
            let back = self.outbox.clone();
            let cache = Arc::clone(&self.parse_cache);
            let options = manifest::Options {
                require_digest: self.state.rules().require_digest,
            };
            tokio::spawn(async move {
                // Git work and decoding are blocking: keep them off the async threads.
                let fetched = tokio::task::spawn_blocking(move || {
                    let mut cache = cache.lock().expect("parse cache");
                    fetcher.fetch(timeout, options, &mut cache)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the fetch task failed: {e}")));
                let _ = back.send(Event::Fetched(fetched).into());
            });
        }
        for job in plan.loads {
            let loader = Arc::clone(&self.drivers.loader);
            let back = self.outbox.clone();
            tokio::spawn(async move {
                let (service, revision) = (job.service.clone(), job.revision.clone());
                let outcome = Load::load(loader, job).await;
                let _ = back.send(
                    Event::Loaded {
                        service,
                        revision,
                        outcome,
                    }
                    .into(),
                );
            });
        }
        for job in plan.measures {
            tokio::spawn(measure(Arc::clone(&self.drivers), job, self.outbox.clone()));
        }
        for notice in plan.notices {
            self.drivers.notifier.send(notice);
        }
        // The view, then the answers once the route table holds it.
        let (services, source) = self.state.take_dirty();
        let next = self
            .view
            .borrow()
            .update(&self.state, &services, source, &self.drivers.gateway);
        let generation = next.generation;
        self.view.send_replace(Arc::new(next));
        self.drivers.views_changed.send_modify(|n| *n += 1);
        let answers: Vec<(oneshot::Sender<Answer>, Answer)> = plan
            .replies
            .into_iter()
            .filter_map(|(id, answer)| Some((replies.remove(&id)?, answer)))
            .collect();
        if !answers.is_empty() {
            let mut published = self.drivers.routes_published.clone();
            let index = self.index;
            tokio::spawn(async move {
                let _ = published
                    .wait_for(|g| g.get(index).is_some_and(|g| *g >= generation))
                    .await;
                for (tx, answer) in answers {
                    let _ = tx.send(answer);
                }
            });
        }
    }
}

/// A judged reading short of its minimum sample has captured requests replayed to the canary
/// and its stable revision (when capture is on), for the looks that follow; its reason says so.
async fn replay_if_short(
    drivers: &Drivers,
    job: &MeasureJob,
    reading: analysis::Reading,
) -> analysis::Reading {
    let analysis::Reading::Value(mut v) = reading else {
        return reading;
    };
    let needed = v["needed"].as_u64().unwrap_or(0);
    if v["verdict"] != "Inconclusive" || needed == 0 {
        return analysis::Reading::Value(v);
    }
    let service = job.service.to_string();
    let count = usize::try_from(needed).unwrap_or(usize::MAX);
    let said = match drivers
        .gateway
        .replay(&service, &job.canary, count, job.run_started_at)
        .await
    {
        gateway::Replay::Started(n) => format!("; replaying {n} captured requests"),
        gateway::Replay::Running => "; a replay of captured requests is under way".into(),
        gateway::Replay::Nothing(_) => String::new(),
    };
    if let Some(reason) = v["reason"].as_str() {
        v["reason"] = format!("{reason}{said}").into();
    }
    analysis::Reading::Value(v)
}

/// A `secretKeyRef` argument's value: the file `<dir>/<name>/<key>` (one trailing newline
/// dropped: `echo` writes one), read at each measurement so that a rotated secret is used.
fn read_secret(dir: Option<&std::path::Path>, name: &str, key: &str) -> Result<String, String> {
    let Some(dir) = dir else {
        return Err(format!(
            "an argument is secretKeyRef {name}/{key}: start crossfade with --secrets-dir <dir> holding {name}/{key}"
        ));
    };
    let path = dir.join(name).join(key);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "secretKeyRef {name}/{key}: cannot read {}: {e}",
            path.display()
        )
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_owned())
}

/// Takes a reading and hands it back to the rollout. Secret arguments are read into the
/// request here, and their values kept out of what is recorded.
async fn measure(drivers: Arc<Drivers>, job: MeasureJob, back: mpsc::UnboundedSender<Msg>) {
    let secrets_dir = drivers.secrets_dir.clone();
    let lookup = move |name: &str, key: &str| read_secret(secrets_dir.as_deref(), name, key);
    let reading = match analysis::reveal_secrets(&job.provider, &lookup) {
        Ok((provider, secrets)) => {
            let reading = take_reading(&drivers, &job, &provider).await;
            analysis::redact_reading(reading, &secrets)
        }
        Err(why) => analysis::Reading::Error(why),
    };
    let finished_at = drivers.clock.now().as_secs();
    let _ = back.send(
        Event::Measured {
            service: job.service,
            input: engine::rollout::Input::Measured {
                run: job.run,
                metric: job.metric,
                reading,
                started_at: job.started_at,
                finished_at,
            },
        }
        .into(),
    );
}

/// One reading of `provider` for `job`.
async fn take_reading(
    drivers: &Arc<Drivers>,
    job: &MeasureJob,
    provider: &analysis::ProviderSpec,
) -> analysis::Reading {
    use analysis::ProviderSpec;
    use manifest::RevisionSelector;
    match provider {
        ProviderSpec::Builtin(b) if let Some(compare) = &b.compare => {
            // The whole run so far (within the windows' ten minutes), unless a window is given.
            let since_start = drivers.clock.now().as_secs() - job.run_started_at;
            // The run's first second included: the windows nest, so each look sees more.
            let seconds = if compare.window_given {
                b.window.as_secs()
            } else {
                u64::try_from(since_start + 1).unwrap_or(0)
            }
            .clamp(1, gateway::WINDOW_SECONDS);
            let service = job.service.to_string();
            let counts = |revision: &str| {
                drivers
                    .gateway
                    .summary(&service, revision, seconds)
                    .map(|s| analysis::compare::Counts {
                        ok: s.ok,
                        server_errors: s.server_errors,
                        client_errors: s.client_errors,
                        latency: s.latency_counts().to_vec(),
                        mirrored: s.mirrored,
                        agreed: s.agreed,
                        stable_classes: s.drift.stable_classes.clone(),
                        classes: s.drift.classes.clone(),
                        stable_scores: s.drift.stable_scores.clone(),
                        scores: s.drift.scores.clone(),
                    })
            };
            let canary = counts(&job.canary);
            let stable = job.stable.as_deref().and_then(counts);
            let reading = analysis::builtin::compared(
                b,
                compare,
                canary.as_ref(),
                stable.as_ref(),
                &gateway::latency_bounds(),
            );
            replay_if_short(drivers, job, reading).await
        }
        ProviderSpec::Builtin(b) => {
            let revision = match b.revision {
                RevisionSelector::Canary => job.canary.clone(),
                RevisionSelector::Stable => job.stable.clone().unwrap_or(job.canary.clone()),
            };
            let seconds = b.window.as_secs().max(1);
            let traffic = drivers
                .gateway
                .summary(&job.service.to_string(), &revision, seconds)
                .map(|s| analysis::builtin::Traffic {
                    seconds,
                    requests: s.requests,
                    ok: s.ok,
                    server_errors: s.server_errors,
                    client_errors: s.client_errors,
                    latency: s.quantile(b.quantile),
                    mirrored: s.mirrored,
                    agreed: s.agreed,
                    mean_distance: s.mean_distance,
                });
            analysis::builtin::reading(b, &revision, traffic)
        }
        ProviderSpec::Job {
            template,
            command,
            env,
            backoff_limit,
            deadline,
        } => {
            let program = command.first().map_or("", String::as_str);
            if let Err(why) = drivers
                .runtime_commands
                .check(&format!("job/{template}"), program)
            {
                return analysis::Reading::Error(why);
            }
            let spec = runtime::JobSpec {
                command: command.clone(),
                env: env.clone(),
                backoff_limit: *backoff_limit,
                deadline: *deadline,
            };
            let (work, clock) = (drivers.jobs_dir.clone(), drivers.clock);
            match tokio::task::spawn_blocking(move || runtime::run_job(&spec, &work, &clock)).await
            {
                Ok(Ok(outcome)) => analysis::Reading::Value(serde_json::json!({
                    "succeeded": outcome.succeeded,
                    "exitCode": outcome.exit_code,
                    "attempts": outcome.attempts,
                    "timedOut": outcome.timed_out,
                })),
                Ok(Err(e)) => analysis::Reading::Error(e.to_string()),
                Err(e) => analysis::Reading::Error(format!("the job's task failed: {e}")),
            }
        }
        ProviderSpec::Prometheus {
            address,
            query,
            timeout,
        } => analysis::providers::prometheus(&drivers.http.0, address, query, *timeout).await,
        ProviderSpec::Web {
            url,
            method,
            headers,
            body,
            json_path,
            timeout,
            insecure,
        } => {
            analysis::providers::web(
                &drivers.http.0,
                &drivers.http.1,
                url,
                *method,
                headers,
                body.as_deref(),
                json_path.as_deref(),
                *timeout,
                *insecure,
            )
            .await
        }
    }
}
