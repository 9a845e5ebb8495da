//! The JSON shapes of the control API. Public contract: fields are added, never renamed.

use serde::{Deserialize, Serialize};

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The source of the first (usually only) Application.
    pub source: SourceStatus,
    pub applications: Vec<ApplicationStatus>,
    /// Every service of every Application.
    pub services: Vec<ServiceStatus>,
    /// Every Rollout, with its analysis runs and measurements.
    #[serde(default)]
    pub rollouts: Vec<Rollout>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    pub repo: String,
    /// `targetRevision` as written.
    pub revision: String,
    pub path: String,
    /// The commit being served (the last one verified and applied).
    pub commit: Option<String>,
    /// Whether `commit` passed signature verification (false when verification is off).
    pub verified: bool,
    pub signer: Option<String>,
    /// RFC 3339 time of the last sync that applied a commit.
    pub last_sync_at: Option<String>,
    /// Why the newest commit is not served, or why fetching fails.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    pub name: String,
    pub source: SourceStatus,
    pub prune: bool,
    pub self_heal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncStatus {
    Synced,
    OutOfSync,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// The desired revision serves its share.
    Healthy,
    /// A revision is loading, or a rollout is under way.
    Progressing,
    /// The desired revision failed; the previous one (if any) keeps serving.
    Degraded,
    /// Nothing serves the service.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    pub namespace: String,
    pub application: String,
    pub sync_status: SyncStatus,
    pub health: Health,
    /// Why it is out of sync or not healthy.
    pub message: Option<String>,
    pub revisions: Vec<RevisionStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    pub name: String,
    pub storage_uri: String,
    pub digest: Option<String>,
    pub state: RevisionState,
    pub traffic_percent: u8,
    /// `latest` or `prev` when tag routing exposes it.
    pub tag: Option<String>,
    pub reason: Option<String>,
}

/// Where a revision stands, as the API and the CLI name it. The names are a contract: add,
/// never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevisionState {
    /// Being fetched, verified or loaded.
    Pending,
    /// Loaded and warmed up: may take traffic.
    Ready,
    /// Failed to fetch, verify or load: never takes traffic.
    Failed,
    /// No longer part of the desired state.
    Retired,
}

impl RevisionState {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Ready => "Ready",
            Self::Failed => "Failed",
            Self::Retired => "Retired",
        }
    }
}

impl std::fmt::Display for RevisionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<store::RevisionState> for RevisionState {
    fn from(s: store::RevisionState) -> Self {
        match s {
            store::RevisionState::Pending => Self::Pending,
            store::RevisionState::Ready => Self::Ready,
            store::RevisionState::Failed => Self::Failed,
            store::RevisionState::Retired => Self::Retired,
        }
    }
}

/// What a sync did, as the API, the CLI, the history and notifications name it. The names are a
/// contract: add, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncOutcome {
    /// The commit's manifests are the desired state now.
    Applied,
    /// The commit was synced before: nothing to do (a sync result, never a history entry).
    Unchanged,
    /// The commit's signature is missing, invalid or from an untrusted key.
    Untrusted,
    /// The commit's manifests have errors: nothing of it was applied.
    Invalid,
    /// Fetching failed or timed out.
    FetchFailed,
}

impl SyncOutcome {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "Applied",
            Self::Unchanged => "Unchanged",
            Self::Untrusted => "Untrusted",
            Self::Invalid => "Invalid",
            Self::FetchFailed => "FetchFailed",
        }
    }

    /// Whether what Git holds is served (applied now, or before).
    pub fn is_ok(self) -> bool {
        matches!(self, Self::Applied | Self::Unchanged)
    }
}

impl std::fmt::Display for SyncOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<store::SyncOutcome> for SyncOutcome {
    fn from(o: store::SyncOutcome) -> Self {
        match o {
            store::SyncOutcome::Applied => Self::Applied,
            store::SyncOutcome::Untrusted => Self::Untrusted,
            store::SyncOutcome::Invalid => Self::Invalid,
            store::SyncOutcome::FetchFailed => Self::FetchFailed,
        }
    }
}

/// What one Application's sync did (`POST /api/v1/sync`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResult {
    pub application: String,
    pub outcome: SyncOutcome,
    pub commit: Option<String>,
    pub message: Option<String>,
}

/// One entry of `GET /api/v1/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncEntry {
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    pub repo: String,
    pub revision: String,
    pub commit: Option<String>,
    pub author: Option<String>,
    pub commit_time: Option<String>,
    pub signer: Option<String>,
    pub signer_key: Option<String>,
    /// `Applied`, `Untrusted`, `Invalid` or `FetchFailed`.
    pub outcome: SyncOutcome,
    pub message: Option<String>,
    pub diagnostics: Vec<String>,
}

/// One entry of `GET /api/v1/audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub seq: u64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: serde_json::Value,
    pub prev: String,
    pub hash: String,
}

/// `GET /api/v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditVerify {
    pub ok: bool,
    pub entries: u64,
    pub broken_at: Option<u64>,
    pub reason: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

// === conversions from the store ===

impl From<&store::SyncRecord> for SyncEntry {
    fn from(r: &store::SyncRecord) -> Self {
        Self {
            seq: r.seq,
            time: rfc3339_millis(r.time),
            repo: r.repo.clone(),
            revision: r.revision.clone(),
            commit: r.commit.clone(),
            author: r.author.clone(),
            commit_time: r.commit_time.map(|s| rfc3339_millis(s * 1000)),
            signer: r.signer.clone(),
            signer_key: r.signer_key.clone(),
            outcome: r.outcome.into(),
            message: r.message.clone(),
            diagnostics: r.diagnostics.clone(),
        }
    }
}

impl From<&store::AuditEntry> for AuditEntry {
    fn from(e: &store::AuditEntry) -> Self {
        Self {
            seq: e.seq,
            time: rfc3339_millis(e.time),
            actor: e.actor.clone(),
            action: e.action.clone(),
            subject: e.subject.clone(),
            detail: e.detail.clone(),
            prev: e.prev.clone(),
            hash: e.hash.clone(),
        }
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC (`2026-11-26T12:33:35.123Z`).
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let t = civil::DateTime::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `GET /api/v1/rollouts/<name>`: a Rollout and where it stands. Public contract: `phase`,
/// `message`, `currentStepIndex`, `stepCount`, `stableRevision`, `canaryRevision`, `weights`
/// and `analysisRuns[{name, phase, measurements[{value, phase, startedAt, message}]}]` keep
/// their names and meaning.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub name: String,
    pub namespace: String,
    /// The InferenceService it drives, `namespace/name`.
    pub service: String,
    /// `Healthy`, `Progressing`, `Paused` or `Degraded`.
    pub phase: String,
    pub message: String,
    /// The step being run (0-based); equal to `stepCount` once every step is done.
    pub current_step_index: u32,
    pub step_count: u32,
    /// The steps, as written (`setWeight: 10`, `pause: 60s`, ...).
    pub steps: Vec<String>,
    pub stable_revision: Option<String>,
    pub canary_revision: Option<String>,
    /// Revision name to percent of traffic; sums to 100 once a revision is stable.
    pub weights: std::collections::BTreeMap<String, u8>,
    /// Header routes to the canary, by name.
    pub header_routes: Vec<String>,
    /// Mirror routes to the canary: name and percent.
    pub mirrors: std::collections::BTreeMap<String, u8>,
    /// RFC 3339 time the current pause began.
    pub paused_since: Option<String>,
    /// Why the canary was aborted, while it is.
    pub aborted: Option<String>,
    /// Finished runs first, then the current ones.
    pub analysis_runs: Vec<AnalysisRun>,
}

/// One analysis run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    pub name: String,
    /// `Running`, `Successful`, `Failed`, `Inconclusive` or `Error`.
    pub phase: String,
    pub message: Option<String>,
    pub started_at: String,
    /// Every measurement of every metric, oldest first.
    pub measurements: Vec<Measurement>,
    pub metrics: Vec<MetricResult>,
}

/// One metric of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    pub phase: String,
    pub dry_run: bool,
    /// The conditions, after argument substitution.
    pub success_condition: Option<String>,
    pub failure_condition: Option<String>,
}

/// One measurement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub metric: String,
    /// The value as text (`0.97`, `[0.97]`); absent when there was none.
    pub value: Option<String>,
    pub phase: String,
    pub started_at: String,
    pub finished_at: String,
    pub message: Option<String>,
}

/// `GET /api/v1/rollouts/<name>/series`: the canary and the stable revision side by side
/// over the last minutes, as the gateway measured them (the traffic the rollout controls).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSeries {
    /// Seconds each point covers.
    pub step_seconds: u64,
    /// The canary first (if any), then the stable revision.
    pub revisions: Vec<RevisionSeries>,
}

/// One revision's points, oldest first, the last ending now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSeries {
    pub revision: String,
    /// `canary` or `stable`.
    pub role: String,
    pub points: Vec<SeriesPoint>,
}

/// What a revision did in one step of time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    /// How long ago the step ended, in seconds.
    pub seconds_ago: u64,
    /// Requests answered (of the split, and replayed).
    pub requests: u64,
    /// Of `requests`, those replayed from the capture.
    pub replayed: u64,
    /// Requests per second.
    pub rate: f64,
    /// 5xx among answered requests (`None` without requests), 0 to 1.
    pub error_rate: Option<f64>,
    /// 4xx among requests, 0 to 1.
    pub client_error_rate: Option<f64>,
    /// Latency quantiles, in seconds.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Requests mirrored (or replayed) to this revision and compared with stable's answers.
    pub mirrored: u64,
    /// Share of them on which the predicted class agreed, 0 to 1.
    pub agreement: Option<f64>,
    /// On those requests: the mean top score of this revision's answers and of stable's.
    pub top_score: Option<f64>,
    pub stable_top_score: Option<f64>,
}

/// `POST /api/v1/rollouts/<name>/{promote|abort|retry}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAction {
    /// `promote` only: skip every remaining step and analysis.
    #[serde(default)]
    pub full: bool,
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: Option<String>,
}
