//! The decisions of crossfade, as pure functions: from the desired state (manifests of a
//! commit) and the live state (what is loaded and how traffic is split), to effects.
//!
//! No IO, no clock, no async runtime: time is an argument, effects are data, and the binary's
//! drivers carry them out. This is what makes every decision testable to the second.

mod desired;
mod reconcile;
pub mod rollout;

pub use desired::{
    DesiredService, Drivers, SIGNATURE_CHANGE, ServiceId, desired_service, desired_state, spec_hash,
};
pub use reconcile::{
    Decision, Effect, Live, LiveRevision, LiveService, RevisionState, Split, SyncPolicy, Tags,
    reconcile, reconcile_one,
};
