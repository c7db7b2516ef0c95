//! Parsing the times and durations that queries take.
//!
//! A time is one of:
//! - `now`;
//! - a duration before now: `-15m`, `-1h`, `-7d`, `-1h30m` (humantime units), also written `now-15m`;
//! - an RFC 3339 timestamp: `2026-11-25T18:42:00Z`, `2026-11-25T19:42:00+01:00`;
//! - unix milliseconds: all digits, e.g. `1764096120000`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Why a time, duration or range was rejected; the message quotes the input and says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The text is none of the accepted forms.
    #[error(
        "invalid time {input:?}: {reason} (use `now`, a relative time like `-15m`/`-1h`/`-7d`, \
         an RFC 3339 time like `2026-11-25T18:42:00Z`, or unix milliseconds)"
    )]
    InvalidTime {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A duration (such as `--step`) is not a humantime duration or is out of range.
    #[error("invalid duration {input:?}: {reason} (use e.g. `10s`, `1m`, `1h30m`)")]
    InvalidDuration {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The start of a range lies after its end.
    #[error("the time range is empty: from ({from}) is after to ({to})")]
    FromAfterTo {
        /// The start as RFC 3339.
        from: String,
        /// The end as RFC 3339.
        to: String,
    },
}

/// A query time range in milliseconds since the Unix epoch, both ends inclusive. Guaranteed by its
/// constructor [`parse_time_range`] to satisfy `start_unix_ms <= end_unix_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    /// The first millisecond of the range.
    pub start_unix_ms: i64,
    /// The last millisecond of the range.
    pub end_unix_ms: i64,
}

/// The current time in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// The current time in nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_nanos() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Formats unix milliseconds as RFC 3339 in UTC with millisecond precision when needed
/// (`2026-11-25T18:42:00Z`, `2026-11-25T18:42:00.250Z`); out-of-range values print as plain numbers.
pub fn format_unix_ms(unix_ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(unix_ms) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => unix_ms.to_string(),
    }
}

/// Parses a humantime duration (`1m`, `90s`, `1h30m`) into whole milliseconds; zero and negative results
/// are rejected, as is anything longer than `i64::MAX` milliseconds.
pub fn parse_duration_ms(input: &str) -> Result<i64, TimeError> {
    let text = input.trim();
    let duration = humantime::parse_duration(text).map_err(|error| TimeError::InvalidDuration {
        input: input.to_string(),
        reason: error.to_string(),
    })?;
    let milliseconds = i64::try_from(duration.as_millis()).map_err(|_| TimeError::InvalidDuration {
        input: input.to_string(),
        reason: "too long".to_string(),
    })?;
    if milliseconds == 0 {
        return Err(TimeError::InvalidDuration {
            input: input.to_string(),
            reason: "must be at least 1ms".to_string(),
        });
    }
    Ok(milliseconds)
}

/// Parses one time (see the module documentation) into unix milliseconds, relative to `now_unix_ms`.
pub fn parse_time(input: &str, now_unix_ms: i64) -> Result<i64, TimeError> {
    let text = input.trim();
    let invalid = |reason: &str| TimeError::InvalidTime {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(invalid("empty"));
    }
    if text.eq_ignore_ascii_case("now") {
        return Ok(now_unix_ms);
    }
    let relative = text.strip_prefix("now-").or_else(|| text.strip_prefix('-'));
    if let Some(duration_text) = relative {
        let duration = humantime::parse_duration(duration_text.trim())
            .map_err(|error| invalid(&format!("bad relative duration: {error}")))?;
        let milliseconds = i64::try_from(duration.as_millis()).map_err(|_| invalid("duration too long"))?;
        return now_unix_ms
            .checked_sub(milliseconds)
            .ok_or_else(|| invalid("before the representable range"));
    }
    if text.bytes().all(|byte| byte.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map_err(|_| invalid("unix milliseconds out of range"));
    }
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(time) => Ok(time.timestamp_millis()),
        Err(error) => Err(invalid(&format!("not RFC 3339: {error}"))),
    }
}

/// Parses `from` and `to` (see [`parse_time`]) against the same `now`, and rejects a range whose start
/// lies after its end, so that no request with an empty range is ever sent.
pub fn parse_time_range(from: &str, to: &str, now_unix_ms: i64) -> Result<TimeRange, TimeError> {
    let start_unix_ms = parse_time(from, now_unix_ms)?;
    let end_unix_ms = parse_time(to, now_unix_ms)?;
    if start_unix_ms > end_unix_ms {
        return Err(TimeError::FromAfterTo {
            from: format_unix_ms(start_unix_ms),
            to: format_unix_ms(end_unix_ms),
        });
    }
    Ok(TimeRange {
        start_unix_ms,
        end_unix_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_096_120_000; // 2025-11-25T18:42:00Z

    #[test]
    fn now_and_relative_times() {
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert_eq!(parse_time(" NOW ", NOW), Ok(NOW));
        assert_eq!(parse_time("-15m", NOW), Ok(NOW - 15 * 60_000));
        assert_eq!(parse_time("-1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse_time("-7d", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_time("-1h30m", NOW), Ok(NOW - 5_400_000));
        assert_eq!(parse_time("now-10s", NOW), Ok(NOW - 10_000));
        assert_eq!(parse_time("-250ms", NOW), Ok(NOW - 250));
    }

    #[test]
    fn absolute_times() {
        assert_eq!(parse_time("2025-11-25T18:42:00Z", NOW), Ok(NOW));
        assert_eq!(parse_time("2025-11-25T19:42:00+01:00", NOW), Ok(NOW));
        assert_eq!(parse_time("2025-11-25T18:42:00.5Z", NOW), Ok(NOW + 500));
        assert_eq!(parse_time("1764096120000", NOW), Ok(NOW));
        assert_eq!(parse_time("0", NOW), Ok(0));
    }

    #[test]
    fn bad_times_are_rejected_with_the_input_quoted() {
        for bad in [
            "",
            "yesterday",
            "-",
            "-5 parsecs",
            "2025-13-01T00:00:00Z",
            "99999999999999999999",
            "1.5",
        ] {
            let error = parse_time(bad, NOW).expect_err(bad);
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }

    #[test]
    fn range_rejects_from_after_to() {
        assert_eq!(
            parse_time_range("-1h", "now", NOW),
            Ok(TimeRange {
                start_unix_ms: NOW - 3_600_000,
                end_unix_ms: NOW
            })
        );
        assert_eq!(
            parse_time_range("now", "now", NOW),
            Ok(TimeRange {
                start_unix_ms: NOW,
                end_unix_ms: NOW
            })
        );
        let error = parse_time_range("now", "-1h", NOW).unwrap_err();
        assert_eq!(
            error,
            TimeError::FromAfterTo {
                from: "2025-11-25T18:42:00Z".into(),
                to: "2025-11-25T17:42:00Z".into()
            }
        );
        assert!(error
            .to_string()
            .contains("from (2025-11-25T18:42:00Z) is after to (2025-11-25T17:42:00Z)"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1m"), Ok(60_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("fast").is_err());
        assert!(parse_duration_ms("-1m").is_err());
    }

    #[test]
    fn formatting_unix_ms() {
        assert_eq!(format_unix_ms(NOW), "2025-11-25T18:42:00Z");
        assert_eq!(format_unix_ms(NOW + 250), "2025-11-25T18:42:00.250Z");
        assert_eq!(format_unix_ms(i64::MAX), i64::MAX.to_string());
    }
}
