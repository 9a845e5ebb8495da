//! Durations as Argo writes them: Go's `time.ParseDuration` syntax (`30s`, `5m`, `1h30m`,
//! `1.5h`, `500ms`), or a plain number of seconds.

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("`{0}` is negative")]
    Negative(String),
    #[error("`{input}` has no unit after `{number}` (use ns, us, ms, s, m or h)")]
    MissingUnit { input: String, number: String },
    #[error("`{input}` has unknown unit `{unit}` (use ns, us, ms, s, m or h)")]
    UnknownUnit { input: String, unit: String },
    #[error("`{0}` is not a duration")]
    Malformed(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// Parses a duration.
///
/// Accepts whole seconds (`"30"`) and sequences of decimal numbers with units (`"1h30m"`,
/// `"1.5s"`, `"250ms"`). Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. Negative durations
/// are refused.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') && s != "-0" {
        return Err(DurationError::Negative(input.to_owned()));
    }
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| DurationError::Overflow(input.to_owned()));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..num_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(DurationError::Malformed(input.to_owned()));
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "" => {
                return Err(DurationError::MissingUnit {
                    input: input.to_owned(),
                    number: number.to_owned(),
                });
            }
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| DurationError::Malformed(input.to_owned()))?;
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| DurationError::Overflow(input.to_owned()))
}

#[cfg(test)]
mod tests;
