//! Writes a rollout status as this build stores it (JSON, as the controller writes it to the
//! store's `rollouts` table), for `tests/data/`: a canary paused at 20% after an analysis step
//! with measurements, a background run in flight, a header route and a mirror.
//!
//! `cargo run -p engine --example rollout_status_fixture > crates/engine/tests/data/rollout-status-<date>.json`
//!
//! A fixture made by a build is kept as it was: the test that reads it checks that statuses
//! written before a change still decode after it.

use analysis::{Measurement, MetricStatus, Phase, Run};
use engine::rollout::{
    Aborted, HeaderMatchStatus, HeaderRouteStatus, MirrorStatus, PauseReason, RolloutPhase,
    RolloutStatus,
};

fn main() {
    let measurement = |value: &str, at: i64| Measurement {
        value: Some(value.to_owned()),
        phase: Phase::Successful,
        started_at: at,
        finished_at: at + 1,
        message: None,
    };
    let finished = Run {
        name: "iris-canary-1".into(),
        started_at: 1_795_694_400,
        phase: Phase::Successful,
        message: Some("every metric passed".into()),
        metrics: vec![MetricStatus {
            name: "success-rate".into(),
            phase: Phase::Successful,
            dry_run: false,
            measurements: vec![
                measurement("0.99", 1_795_694_410),
                measurement("1", 1_795_694_420),
            ],
            in_flight_since: None,
        }],
        stopped_at: None,
    };
    let background = Run {
        name: "iris-background-2".into(),
        started_at: 1_795_694_430,
        phase: Phase::Running,
        message: None,
        metrics: vec![MetricStatus {
            name: "latency-p99".into(),
            phase: Phase::Running,
            dry_run: true,
            measurements: vec![Measurement {
                value: None,
                phase: Phase::Inconclusive,
                started_at: 1_795_694_435,
                finished_at: 1_795_694_436,
                message: Some("no requests in the window".into()),
            }],
            in_flight_since: Some(1_795_694_440),
        }],
        stopped_at: None,
    };
    let status = RolloutStatus {
        format: engine::rollout::STATUS_FORMAT,
        phase: RolloutPhase::Paused,
        message: "paused at step 3 of 5 (20%) for 30s".into(),
        stable: Some("iris-predictor-00001".into()),
        canary: Some("iris-predictor-00002".into()),
        step_index: 2,
        steps_hash: "5c7f0e3b9a1d2c4e".into(),
        weight: 20,
        header_routes: vec![HeaderRouteStatus {
            name: "team-ml".into(),
            matches: vec![HeaderMatchStatus {
                header: "x-team".into(),
                kind: engine::rollout::MatchKind::Exact,
                value: "ml".into(),
            }],
        }],
        mirrors: vec![MirrorStatus {
            name: "shadow".into(),
            percent: 50,
            matches: Vec::new(),
        }],
        pause_started_at: Some(1_795_694_425),
        pause_reason: Some(PauseReason::Step),
        step_run: None,
        background_run: Some(background),
        runs: vec![finished],
        aborted: Some(Aborted {
            revision: "iris-predictor-00003".into(),
            reason: "analysis iris-canary-0 failed: success-rate 0.5".into(),
        }),
        run_seq: 2,
    };
    let stored: serde_json::Value =
        serde_json::from_slice(&status.to_json()).expect("a stored status is JSON");
    println!(
        "{}",
        serde_json::to_string_pretty(&stored).expect("JSON prints")
    );
}
