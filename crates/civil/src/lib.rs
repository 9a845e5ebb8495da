//! UTC civil time and Unix seconds, in both directions.
//!
//! crossfade writes timestamps in three formats (RFC 3339 in the API, `x-amz-date` for S3,
//! and reads `YYYYMMDD[HHMM[SS]]` in `allowed_signers`); they share this arithmetic. The
//! conversions use Howard Hinnant's days-from-civil algorithms, exact over the proleptic
//! Gregorian calendar for any `i64` day count that fits. No leap seconds, as Unix time has none.

/// A UTC date and time of day, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl DateTime {
    /// The civil time of `secs` seconds after the Unix epoch (negative before it).
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // Every narrowed value is bounded by the arithmetic above (day < 32, rem < 86400).
        Self {
            year,
            month: month as u32,
            day: day as u32,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// Seconds after the Unix epoch. Out-of-range fields are not checked here: callers that
    /// parse text check `month` and `day` themselves (see [`DateTime::is_valid`]).
    pub fn to_unix(self) -> i64 {
        let (y, m) = if self.month <= 2 {
            (self.year - 1, i64::from(self.month) + 9)
        } else {
            (self.year, i64::from(self.month) - 3)
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// Whether the fields name a real instant: the month exists, the day exists in it
    /// (29 February only in leap years), and the time of day is within 00:00:00..=23:59:59.
    pub fn is_valid(&self) -> bool {
        let leap = self.year % 4 == 0 && (self.year % 100 != 0 || self.year % 400 == 0);
        let days_in_month = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return false,
        };
        (1..=days_in_month).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60
    }
}

#[cfg(test)]
mod tests {
    use super::DateTime;

    fn dt(year: i64, month: u32, day: u32, hour: u32, minute: u32, second: u32) -> DateTime {
        DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    #[test]
    fn known_instants() {
        // Values checked against `date -u -d @SECS`.
        let cases = [
            (0, dt(1970, 1, 1, 0, 0, 0)),
            (-1, dt(1969, 12, 31, 23, 59, 59)),
            (951_782_400, dt(2000, 2, 29, 0, 0, 0)),
            (1_795_696_415, dt(2026, 11, 26, 12, 33, 35)),
            (4_107_542_399, dt(2100, 2, 28, 23, 59, 59)),
            (4_107_542_400, dt(2100, 3, 1, 0, 0, 0)),
        ];
        for (secs, want) in cases {
            assert_eq!(DateTime::from_unix(secs), want, "{secs}");
            assert_eq!(want.to_unix(), secs, "{want:?}");
        }
    }

    #[test]
    fn round_trips_every_day_for_eight_centuries() {
        // Each day from 1600 to 2400 at a time of day that moves, both directions.
        let start = dt(1600, 1, 1, 0, 0, 0).to_unix();
        let mut prev: Option<DateTime> = None;
        for n in 0..(800 * 366) {
            let secs = start + n * 86_400 + (n * 7919) % 86_400;
            let d = DateTime::from_unix(secs);
            assert!(d.is_valid(), "{d:?}");
            assert_eq!(d.to_unix(), secs);
            if let Some(p) = prev {
                assert!(
                    (d.year, d.month, d.day) > (p.year, p.month, p.day),
                    "{p:?} {d:?}"
                );
            }
            prev = Some(d);
        }
    }

    #[test]
    fn validity() {
        assert!(dt(2024, 2, 29, 23, 59, 59).is_valid());
        assert!(!dt(2026, 2, 29, 0, 0, 0).is_valid());
        assert!(!dt(1900, 2, 29, 0, 0, 0).is_valid());
        assert!(dt(2000, 2, 29, 0, 0, 0).is_valid());
        assert!(!dt(2026, 4, 31, 0, 0, 0).is_valid());
        assert!(!dt(2026, 13, 1, 0, 0, 0).is_valid());
        assert!(!dt(2026, 0, 1, 0, 0, 0).is_valid());
        assert!(!dt(2026, 1, 0, 0, 0, 0).is_valid());
        assert!(!dt(2026, 1, 1, 24, 0, 0).is_valid());
    }
}
