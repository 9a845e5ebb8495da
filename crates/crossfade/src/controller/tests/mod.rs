//! The controller below the binary.
//!
//! `scenarios` feeds events to one Application's pure core ([`AppState::handle`]) on simulated
//! time and compares the trace of plans, like the engine's rollout scenarios. `tasks` runs the
//! real Application tasks in process: a temporary store, inline manifests, a fake clock, and
//! loads answered by the test.
//!
//! [`AppState::handle`]: super::state::AppState::handle

mod publisher;
mod scenarios;
mod support;
mod tasks;
