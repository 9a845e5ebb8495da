//! The one place that reads the wall clock; everything else takes time as an argument.

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
