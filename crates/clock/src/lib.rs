//! The one source of time of crossfade: wall-clock [`Timestamp`]s and the matching tokio
//! [`Instant`]s.
//!
//! # The rule
//!
//! Nothing in the binary or the gateway reads a clock except through a [`Clock`]; the pure
//! crates (engine, analysis, store) take time as an argument. `clippy.toml` bans
//! `SystemTime::now`, `Instant::now`, `Instant::elapsed` and `duration_since` everywhere else.
//!
//! # Real and fake
//!
//! [`Clock::system`] reads the system clock. [`Clock::fake`] starts at a given timestamp and
//! runs on tokio's clock: under `#[tokio::test(start_paused = true)]` it stands still until the
//! test advances tokio's time (`tokio::time::advance`, or a sleep that auto-advances), and then
//! wall time, sleeps and timeouts move together. Either way, a duration between two readings
//! is measured with [`Clock::instant`] (monotonic), a moment to record with [`Clock::now`].

use std::time::Duration;

pub use tokio::time::Instant;

/// Milliseconds since the Unix epoch: the one timestamp type of crossfade's records, status
/// and events.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const EPOCH: Timestamp = Timestamp(0);

    pub const fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// How long from `earlier` to `self`; zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// `timestamp + duration`, saturating.
impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

/// Where time comes from.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    System,
    /// Wall time `base` at tokio instant `anchor`, moving with tokio's clock.
    Fake {
        base: Timestamp,
        anchor: Instant,
    },
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Self {
        Self { kind: Kind::System }
    }

    /// A clock that reads `start` now and then moves with tokio's clock (pause it to control
    /// it). Must be made inside a tokio runtime.
    #[allow(clippy::disallowed_methods)]
    pub fn fake(start: Timestamp) -> Self {
        Self {
            kind: Kind::Fake {
                base: start,
                anchor: Instant::now(),
            },
        }
    }

    /// The wall time now.
    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> Timestamp {
        match self.kind {
            Kind::System => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                Timestamp(ms)
            }
            Kind::Fake { base, anchor } => base + Instant::now().saturating_duration_since(anchor),
        }
    }

    /// The monotonic instant now, on tokio's clock (paused in tests).
    #[allow(clippy::disallowed_methods)]
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// How long since `earlier` (monotonic; zero if `earlier` is in the future).
    pub fn since(&self, earlier: Instant) -> Duration {
        self.instant().saturating_duration_since(earlier)
    }

    /// The tokio instant at which the wall clock will read `at` (now, if `at` has passed).
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        self.instant() + at.since(self.now())
    }

    /// Sleeps until the wall clock reads `at`.
    pub async fn sleep_until(&self, at: Timestamp) {
        tokio::time::sleep_until(self.instant_at(at)).await;
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fake_clock_moves_only_with_tokio_time() {
        let clock = Clock::fake(Timestamp::from_secs(1_000));
        assert_eq!(clock.now(), Timestamp::from_secs(1_000));
        let t0 = clock.instant();
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.now(), Timestamp::from_millis(1_001_500));
        assert_eq!(clock.since(t0), Duration::from_millis(1_500));
        let due = Timestamp::from_secs(1_010);
        assert_eq!(
            clock.instant_at(due) - clock.instant(),
            Duration::from_millis(8_500)
        );
        clock.sleep_until(due).await;
        assert_eq!(clock.now(), due);
    }

    #[test]
    fn timestamps_convert_and_never_go_negative_in_durations() {
        let t = Timestamp::from_millis(12_345);
        assert_eq!(t.as_secs(), 12);
        assert_eq!(Timestamp::from_millis(-1).as_secs(), -1);
        assert_eq!(t.since(Timestamp::from_secs(20)), Duration::ZERO);
        assert_eq!((t + Duration::from_secs(1)).as_millis(), 13_345);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(Clock::system().now() > Timestamp::from_secs(1_577_836_800));
    }
}
