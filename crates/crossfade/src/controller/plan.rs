//! What an Application task receives ([`Event`]) and what deciding on it yields ([`Plan`]).
//!
//! An event is data: a command carries the id of its reply, not the channel; the task keeps
//! the channels. A plan is data too: the store writes of the event, the work to start and the
//! answers to send. Both are what the scenario tests compare.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::dto;
use clock::Timestamp;
use engine::ServiceId;
use engine::rollout::{Command, Input};

/// Which reply channel an answer goes to (the task's; the decision only names it).
pub type ReplyId = u64;

/// Something that happened to an Application.
pub enum Event {
    /// Fetch Git and sync (a poll of its own, a webhook, `crossfade refresh` or `sync`).
    Sync {
        trigger: api::Trigger,
        reply: Option<ReplyId>,
    },
    /// What the fetch started by a [`Plan::fetch`] read, or why it failed.
    Fetched(Result<Fetched, String>),
    /// A revision was loaded (or failed to load).
    Loaded {
        service: ServiceId,
        revision: String,
        outcome: Result<LoadedRevision, String>,
    },
    /// A measurement of a rollout's analysis came back.
    Measured { service: ServiceId, input: Input },
    /// Traffic set by hand (`PUT /api/v1/services/{ns}/{name}/traffic`).
    SetTraffic {
        service: ServiceId,
        splits: BTreeMap<String, u8>,
        actor: String,
        reply: ReplyId,
    },
    /// An operator's command to the rollout driving `service`.
    Rollout {
        service: ServiceId,
        command: Command,
        actor: String,
        reason: Option<String>,
        reply: ReplyId,
    },
    /// The time the last plan asked to be woken at has come.
    Wake,
}

/// A commit as a fetch read it.
#[derive(Clone)]
pub struct Fetched {
    pub info: source::CommitInfo,
    /// The manifests, or why they could not be read (the path is missing).
    pub sources: Result<manifest::Sources, String>,
    /// The manifests decoded and checked (`None` when they could not be read). The fetch
    /// does it, off the Application's task, decoding only the files that changed.
    pub parsed: Option<manifest::Parsed>,
}

impl Fetched {
    /// A commit read with `sources`, decoded with `options` (through `cache`).
    pub fn new(
        info: source::CommitInfo,
        sources: Result<manifest::Sources, String>,
        options: manifest::Options,
        cache: &mut manifest::ParseCache,
    ) -> Self {
        let parsed = sources
            .as_ref()
            .ok()
            .map(|s| manifest::parse_cached(s, options, cache));
        Self {
            info,
            sources,
            parsed,
        }
    }
}

/// A revision loaded and warmed up, ready to route to.
#[derive(Clone)]
pub struct LoadedRevision {
    pub revision: Arc<gateway::Revision>,
    pub digest: String,
}

/// A revision to fetch, verify, load and warm up.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadJob {
    pub service: ServiceId,
    pub revision: String,
    pub format: String,
    pub uri: manifest::StorageUri,
    /// How it is served (in process, a ServingRuntime's command, a built-in runtime), or why
    /// nothing can serve it.
    pub runtime: Result<super::models::Serving, String>,
}

/// A reading to take for a rollout's analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureJob {
    pub service: ServiceId,
    pub run: String,
    pub metric: String,
    pub provider: analysis::ProviderSpec,
    pub canary: String,
    pub stable: Option<String>,
    /// Unix seconds.
    pub started_at: i64,
    /// When its analysis run started, Unix seconds.
    pub run_started_at: i64,
}

/// An answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Synced(dto::SyncResult),
    Traffic(Result<(), String>),
    Rollout(Result<Box<dto::Rollout>, api::CommandError>),
}

/// What deciding on one event yields; the task carries it out in this order: the writes in
/// one store transaction, then (once they hold) the fetch, loads, measurements,
/// notifications and answers.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub writes: Vec<store::Write>,
    /// Fetch Git (at most one fetch of an Application runs at a time).
    pub fetch: bool,
    pub loads: Vec<LoadJob>,
    pub measures: Vec<MeasureJob>,
    pub notices: Vec<crate::notify::Event>,
    pub replies: Vec<(ReplyId, Answer)>,
    /// When to send the next [`Event::Wake`]: the earliest of the poll timer (or backoff) and
    /// the rollouts' wake-up times. `None` while a fetch runs and no rollout waits.
    pub wake: Option<Timestamp>,
    /// Log lines (level, message): what an operator reads in the journal.
    pub logs: Vec<(tracing::Level, String)>,
}

impl Plan {
    pub fn audit(
        &mut self,
        now: Timestamp,
        actor: &str,
        action: super::AuditAction,
        subject: &str,
        detail: serde_json::Value,
    ) {
        self.writes.push(store::Write::Audit {
            time: now.as_millis(),
            actor: actor.to_owned(),
            action: action.as_str().to_owned(),
            subject: subject.to_owned(),
            detail,
        });
    }

    /// Appends `other`, keeping the earlier wake-up.
    pub fn merge(&mut self, other: Plan) {
        self.writes.extend(other.writes);
        self.fetch |= other.fetch;
        self.loads.extend(other.loads);
        self.measures.extend(other.measures);
        self.notices.extend(other.notices);
        self.replies.extend(other.replies);
        self.logs.extend(other.logs);
        self.wake = other.wake;
    }
}
