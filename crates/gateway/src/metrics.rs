//! Prometheus metrics of the data plane, and the per-revision handles the request path uses
//! (cloned atomics: no registry lookup, no lock per request).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::stats::Window;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub service: String,
    pub revision: String,
    /// `ok`, `client_error` or `server_error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionLabels {
    pub service: String,
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub service: String,
    pub primary: String,
    pub mirror: String,
    /// `agree` or `disagree`.
    pub outcome: String,
}

/// Every metric family, and the rolling windows, by service and revision.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RevisionLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<RevisionLabels, Gauge>,
    weight: Family<RevisionLabels, Gauge>,
    mirrored: Family<MirrorLabels, Counter>,
    windows: Mutex<HashMap<(String, String), Arc<Window>>>,
}

/// What a request updates for the revision that answers it.
#[derive(Clone)]
pub struct RevisionMetrics {
    pub ok: Counter,
    pub client_errors: Counter,
    pub server_errors: Counter,
    pub latency: Histogram,
    pub in_flight: Gauge,
    pub window: Arc<Window>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RevisionLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let in_flight = Family::<RevisionLabels, Gauge>::default();
        let weight = Family::<RevisionLabels, Gauge>::default();
        let mirrored = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "crossfade_requests",
            "Inference requests by service, revision and outcome",
            requests.clone(),
        );
        registry.register(
            "crossfade_request_duration_seconds",
            "Inference request latency",
            latency.clone(),
        );
        registry.register(
            "crossfade_in_flight_requests",
            "Inference requests being answered",
            in_flight.clone(),
        );
        registry.register(
            "crossfade_traffic_weight_percent",
            "Current share of traffic per revision",
            weight.clone(),
        );
        registry.register(
            "crossfade_mirrored_requests",
            "Mirrored requests by primary and mirror revision and whether their answers agreed",
            mirrored.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            in_flight,
            weight,
            mirrored,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The handles for one revision (created on first use, shared afterwards).
    pub fn revision(&self, service: &str, revision: &str) -> RevisionMetrics {
        let outcome = |o: &str| {
            self.requests
                .get_or_create(&RequestLabels {
                    service: service.to_owned(),
                    revision: revision.to_owned(),
                    outcome: o.to_owned(),
                })
                .clone()
        };
        let labels = RevisionLabels {
            service: service.to_owned(),
            revision: revision.to_owned(),
        };
        let window = Arc::clone(
            self.windows
                .lock()
                .expect("windows")
                .entry((service.to_owned(), revision.to_owned()))
                .or_default(),
        );
        RevisionMetrics {
            ok: outcome("ok"),
            client_errors: outcome("client_error"),
            server_errors: outcome("server_error"),
            latency: self.latency.get_or_create(&labels).clone(),
            in_flight: self.in_flight.get_or_create(&labels).clone(),
            window,
        }
    }

    /// Sets the weight gauges of a service.
    pub fn set_weights(&self, service: &str, weights: &[(String, u8)]) {
        for (revision, pct) in weights {
            self.weight
                .get_or_create(&RevisionLabels {
                    service: service.to_owned(),
                    revision: revision.clone(),
                })
                .set(i64::from(*pct));
        }
    }

    pub fn mirror_counter(
        &self,
        service: &str,
        primary: &str,
        mirror: &str,
        agreed: bool,
    ) -> Counter {
        self.mirrored
            .get_or_create(&MirrorLabels {
                service: service.to_owned(),
                primary: primary.to_owned(),
                mirror: mirror.to_owned(),
                outcome: if agreed { "agree" } else { "disagree" }.to_owned(),
            })
            .clone()
    }

    /// The rolling window of a revision, if it ever served.
    pub fn window(&self, service: &str, revision: &str) -> Option<Arc<Window>> {
        self.windows
            .lock()
            .expect("windows")
            .get(&(service.to_owned(), revision.to_owned()))
            .cloned()
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry");
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
