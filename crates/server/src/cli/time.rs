//! Times on the command line and in tables: flags take RFC 3339 or a
//! duration relative to now (`--since 7d`), tables show "3 minutes ago"
//! for last use and UTC dates for the rest, and protobuf timestamps and
//! durations are converted here, once.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// An absolute time, RFC 3339 (`2030-01-31T00:00:00Z`, any offset).
pub(super) fn rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|err| format!("{s:?} is not an RFC 3339 time like 2030-01-31T00:00:00Z ({err})"))
}

/// RFC 3339, or a duration meaning that long before now (`90d`).
pub(super) fn past(s: &str) -> Result<DateTime<Utc>, String> {
    relative(s, Utc::now(), -1)
}

/// RFC 3339, or a duration meaning that long after now (`30d`).
pub(super) fn future(s: &str) -> Result<DateTime<Utc>, String> {
    relative(s, Utc::now(), 1)
}

/// `s` as RFC 3339 when it looks like a date, else as a duration added to
/// (`sign` 1) or taken from (`sign` -1) `now`.
fn relative(s: &str, now: DateTime<Utc>, sign: i32) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    // A date has a '-' after its first digits; a duration never does.
    if t.len() > 4 && t.as_bytes()[4] == b'-' {
        return rfc3339(t);
    }
    let duration = crate::parse_duration(t)
        .map_err(|err| format!("{err}; or give an RFC 3339 time like 2030-01-31T00:00:00Z"))?;
    shift(now, duration, sign).ok_or_else(|| format!("{s:?} is too far away"))
}

/// `now` plus (`sign` 1) or minus (`sign` -1) `duration`; `None` past
/// chrono's range.
pub(super) fn shift(now: DateTime<Utc>, duration: Duration, sign: i32) -> Option<DateTime<Utc>> {
    let delta = TimeDelta::from_std(duration).ok()?;
    if sign < 0 {
        now.checked_sub_signed(delta)
    } else {
        now.checked_add_signed(delta)
    }
}

/// A protobuf timestamp.
pub(super) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        // Below 1e9, so it fits.
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration (whole nanoseconds; durations here are far below
/// i64 seconds).
pub(super) fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf timestamp as a chrono time; `None` when out of range.
pub(super) fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// A UTC time to the second: `2030-01-31 00:00:00 UTC`.
pub(super) fn date(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional wire time as [`date`], or `none`.
pub(super) fn date_or(ts: Option<&prost_types::Timestamp>, none: &str) -> String {
    match ts.and_then(from_timestamp) {
        Some(at) => date(at),
        None => none.to_owned(),
    }
}

/// How long before `now` `then` was: "just now" (under a minute, or in the
/// future, as a skewed clock may say), "1 minute ago", "3 hours ago",
/// "5 days ago".
pub(super) fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds();
    let (n, unit) = match secs {
        ..60 => return "just now".to_owned(),
        60..3_600 => (secs / 60, "minute"),
        3_600..86_400 => (secs / 3_600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

/// A key's last use: "never" or [`ago`].
pub(super) fn last_used(ts: Option<&prost_types::Timestamp>, now: DateTime<Utc>) -> String {
    match ts.and_then(from_timestamp) {
        Some(at) => ago(at, now),
        None => "never".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        rfc3339(s).unwrap()
    }

    #[test]
    fn ago_reads_like_a_person_would_say_it() {
        let now = at("2030-01-31T12:00:00Z");
        let cases = [
            ("2030-01-31T12:00:00Z", "just now"),
            ("2030-01-31T11:59:01Z", "just now"),
            ("2030-01-31T12:05:00Z", "just now"),
            ("2030-01-31T11:59:00Z", "1 minute ago"),
            ("2030-01-31T11:57:00Z", "3 minutes ago"),
            ("2030-01-31T11:00:00Z", "1 hour ago"),
            ("2030-01-31T09:30:00Z", "2 hours ago"),
            ("2030-01-30T12:00:00Z", "1 day ago"),
            ("2030-01-26T11:00:00Z", "5 days ago"),
            ("2029-01-31T12:00:00Z", "365 days ago"),
        ];
        for (then, want) in cases {
            assert_eq!(ago(at(then), now), want, "{then}");
        }
        assert_eq!(last_used(None, now), "never");
        assert_eq!(
            last_used(Some(&timestamp(at("2030-01-31T11:57:00Z"))), now),
            "3 minutes ago"
        );
    }

    #[test]
    fn flags_take_rfc3339_or_a_relative_duration() {
        let now = at("2030-01-31T12:00:00Z");
        assert_eq!(
            relative("2030-01-01T00:00:00+01:00", now, -1),
            Ok(at("2029-12-31T23:00:00Z"))
        );
        assert_eq!(relative("90d", now, -1), Ok(at("2029-11-02T12:00:00Z")));
        assert_eq!(relative("2h", now, 1), Ok(at("2030-01-31T14:00:00Z")));
        assert!(
            relative("2030-13-01T00:00:00Z", now, 1)
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(relative("soon", now, 1).unwrap_err().contains("RFC 3339"));
        assert!(
            relative(&format!("{}s", u64::MAX), now, 1)
                .unwrap_err()
                .contains("too far")
        );
        assert!(rfc3339("30d").is_err());
    }

    #[test]
    fn wire_times_round_trip() {
        let t = at("2030-01-31T12:00:00.25Z");
        assert_eq!(from_timestamp(&timestamp(t)), Some(t));
        assert_eq!(date(t), "2030-01-31 12:00:00 UTC");
        assert_eq!(date_or(None, "never"), "never");
        assert_eq!(
            duration(Duration::from_millis(1500)),
            prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            }
        );
    }
}
