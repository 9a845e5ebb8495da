//! Notifications: every sync and rollout event worth telling someone, POSTed as JSON to each
//! `--notify` URL, with a Slack-compatible `text` field.
//!
//! # Guarantees
//!
//! - Sending never blocks the caller (the controller, holding its state): events go into one
//!   bounded queue per URL, and a full queue drops the event with a warning rather than wait.
//! - A URL that fails is retried with backoff (0.5 s, 1 s, 2 s, 4 s, 8 s), then the event is
//!   given up with a warning; one slow or dead receiver does not delay the others.
//! - Events reach a receiver in the order they happened.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

/// Events waiting per URL before new ones are dropped.
const QUEUE: usize = 10_000;
/// Attempts per event and URL.
const ATTEMPTS: u32 = 6;

/// What an event is about. The names are a contract with the receivers: add, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SyncSucceeded,
    SyncFailed,
    RolloutStep,
    RolloutPaused,
    RolloutPromoted,
    RolloutAborted,
    AnalysisSucceeded,
    AnalysisFailed,
}

impl Kind {
    /// The stable name, as the `event` field carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SyncSucceeded => "sync.succeeded",
            Kind::SyncFailed => "sync.failed",
            Kind::RolloutStep => "rollout.step",
            Kind::RolloutPaused => "rollout.paused",
            Kind::RolloutPromoted => "rollout.promoted",
            Kind::RolloutAborted => "rollout.aborted",
            Kind::AnalysisSucceeded => "analysis.succeeded",
            Kind::AnalysisFailed => "analysis.failed",
        }
    }
}

/// One event, as POSTed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// [`Kind::as_str`].
    pub event: String,
    /// The Application or the service (`namespace/name`) it is about.
    pub subject: String,
    pub message: String,
    /// RFC 3339.
    pub time: String,
    /// What Slack (and compatible receivers) show.
    pub text: String,
    pub detail: serde_json::Value,
}

impl Event {
    pub fn new(
        kind: Kind,
        subject: &str,
        message: &str,
        time: clock::Timestamp,
        detail: serde_json::Value,
    ) -> Self {
        Self {
            text: format!("crossfade: {subject}: {message}"),
            event: kind.as_str().to_owned(),
            subject: subject.to_owned(),
            message: message.to_owned(),
            time: api::dto::rfc3339_millis(time.as_millis()),
            detail,
        }
    }
}

/// The senders of the `--notify` URLs (none: notifications are off).
#[derive(Clone, Default)]
pub struct Notifier {
    queues: Vec<(String, mpsc::Sender<Event>)>,
}

impl Notifier {
    /// Starts one sender task per URL. Call within the runtime.
    pub fn start(urls: &[String]) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let queues = urls
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(client.clone(), url.clone(), rx));
                (url.clone(), tx)
            })
            .collect();
        Self { queues }
    }

    pub fn send(&self, event: Event) {
        for (url, tx) in &self.queues {
            if tx.try_send(event.clone()).is_err() {
                tracing::warn!(%url, event = %event.event, "notification queue full; event dropped");
            }
        }
    }
}

async fn deliver(client: reqwest::Client, url: String, mut rx: mpsc::Receiver<Event>) {
    while let Some(event) = rx.recv().await {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let error = match client.post(&url).json(&event).send().await {
                Ok(resp) if resp.status().is_success() => break,
                Ok(resp) => format!("answered {}", resp.status()),
                Err(e) => e.to_string(),
            };
            if attempt == ATTEMPTS {
                tracing::warn!(%url, event = %event.event, %error, "notification given up");
                break;
            }
            tracing::debug!(%url, attempt, %error, "notification failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
}
