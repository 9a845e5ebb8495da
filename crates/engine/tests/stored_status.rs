//! Rollout statuses stored by earlier builds decode in this one: a rollout in progress survives
//! an upgrade. `tests/data/rollout-status-<date>.json` are statuses as the build of that date
//! wrote them (`examples/rollout_status_fixture.rs`); they are never regenerated.

use engine::rollout::{PauseReason, RolloutPhase, RolloutStatus, STATUS_FORMAT, StatusError};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn a_status_written_on_2026_12_01_decodes_with_every_field() {
    let status = RolloutStatus::from_json(&fixture("rollout-status-2026-12-01.json")).unwrap();
    assert_eq!(status.format, STATUS_FORMAT);
    assert_eq!(status.phase, RolloutPhase::Paused);
    assert_eq!(status.canary.as_deref(), Some("iris-predictor-00002"));
    assert_eq!((status.step_index, status.weight), (2, 20));
    assert_eq!(status.pause_started_at, Some(1_795_694_425));
    assert_eq!(status.pause_reason, Some(PauseReason::Step));
    assert_eq!(status.header_routes[0].matches[0].value, "ml");
    assert_eq!(status.mirrors[0].percent, 50);
    let run = &status.runs[0];
    assert_eq!(run.metrics[0].measurements[1].value.as_deref(), Some("1"));
    let background = status.background_run.as_ref().unwrap();
    assert_eq!(background.metrics[0].in_flight_since, Some(1_795_694_440));
    assert!(background.metrics[0].dry_run);
    assert_eq!(
        status.aborted.as_ref().unwrap().revision,
        "iris-predictor-00003"
    );
    assert_eq!(status.run_seq, 2);
    // Written again, it reads back the same.
    assert_eq!(RolloutStatus::from_json(&status.to_json()).unwrap(), status);
}

#[test]
fn missing_fields_take_their_defaults_and_a_newer_format_is_refused() {
    // A field this build has and the writer did not: defaulted, not an error.
    let sparse = br#"{"phase": "Progressing", "canary": "r2", "runs": [{"name": "a", "metrics": [{"name": "m"}]}]}"#;
    let status = RolloutStatus::from_json(sparse).unwrap();
    assert_eq!(status.phase, RolloutPhase::Progressing);
    assert_eq!(status.canary.as_deref(), Some("r2"));
    assert_eq!(status.runs[0].metrics[0].measurements.len(), 0);
    assert_eq!(status.weight, 0);
    // Fields this build does not know (written by a newer one of the same format) are ignored.
    let extra = br#"{"phase": "Healthy", "something_new": {"x": 1}}"#;
    assert!(RolloutStatus::from_json(extra).is_ok());
    // A newer format is refused with the reason, never misread.
    let newer = format!(r#"{{"format": {}, "phase": "Healthy"}}"#, STATUS_FORMAT + 1);
    let err = RolloutStatus::from_json(newer.as_bytes()).unwrap_err();
    assert!(matches!(err, StatusError::Newer { .. }), "{err}");
    assert!(err.to_string().contains("newer crossfade"), "{err}");
}

#[test]
fn a_mirror_route_keeps_its_header_matches_in_the_status() {
    // The fixture's mirror had no match: an older status decodes with none.
    let status = RolloutStatus::from_json(&fixture("rollout-status-2026-12-01.json")).unwrap();
    assert!(status.mirrors[0].matches.is_empty());
}
