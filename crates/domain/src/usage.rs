//! Key usage as admins read it: requests counted per key per hour, split by
//! outcome, and the rules for the time range a `GetKeyUsage` call may ask
//! for. The server counts in memory and storage adds the counts up; both
//! speak in the hour-aligned buckets defined here.

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::validation::ValidationError;

/// Length of one usage bucket, in seconds.
pub const BUCKET_SECS: i64 = 3600;
/// Range of a usage query when the request gives no start: the last day.
pub const DEFAULT_RANGE_HOURS: i64 = 24;
/// Longest range one usage query may cover: 31 days.
pub const MAX_RANGE_HOURS: i64 = 31 * 24;

/// What became of one authenticated request, as usage counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseOutcome {
    /// The request was allowed.
    Allowed,
    /// The key was over its rate limit.
    RateLimited,
    /// Any other deny of a recognised key (revoked, disabled, expired, wrong
    /// environment, IP or scope).
    Denied,
}

/// Requests of one key in one bucket, by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageCounts {
    /// Allowed requests.
    pub allowed: u64,
    /// Requests denied because the key was over its rate limit.
    pub denied_rate_limited: u64,
    /// Requests denied for any other reason.
    pub denied_other: u64,
}

impl UsageCounts {
    /// Counts `n` requests with `outcome`.
    pub fn add(&mut self, outcome: UseOutcome, n: u64) {
        let counter = match outcome {
            UseOutcome::Allowed => &mut self.allowed,
            UseOutcome::RateLimited => &mut self.denied_rate_limited,
            UseOutcome::Denied => &mut self.denied_other,
        };
        *counter = counter.saturating_add(n);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &UsageCounts) {
        self.add(UseOutcome::Allowed, other.allowed);
        self.add(UseOutcome::RateLimited, other.denied_rate_limited);
        self.add(UseOutcome::Denied, other.denied_other);
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == UsageCounts::default()
    }
}

/// One hour of one key's usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageBucket {
    /// Start of the hour (unix seconds, a multiple of [`BUCKET_SECS`]).
    pub hour_start: i64,
    /// Requests in that hour.
    pub counts: UsageCounts,
}

/// The start (unix seconds) of the bucket holding `unix_secs`.
pub fn bucket_start(unix_secs: i64) -> i64 {
    unix_secs - unix_secs.rem_euclid(BUCKET_SECS)
}

/// The hour-aligned buckets a usage query covers: every bucket starting at
/// or after `start` (the requested start, rounded down to its hour) and
/// before `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRange {
    /// First bucket's start, unix seconds (hour-aligned).
    pub start: i64,
    /// Exclusive end, unix seconds: buckets starting before it are covered.
    pub end: i64,
}

impl UsageRange {
    /// The range a request asks for: `end` defaults to `now`, `start` to
    /// [`DEFAULT_RANGE_HOURS`] before `end`. The end must be after the start
    /// and the range at most [`MAX_RANGE_HOURS`] long; errors name
    /// `start_time` / `end_time`.
    pub fn from_request(
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<UsageRange, ValidationError> {
        let end = end.unwrap_or(now);
        let start = match start {
            Some(start) => start,
            None => end
                .checked_sub_signed(Duration::hours(DEFAULT_RANGE_HOURS))
                .ok_or_else(|| ValidationError::single("end_time", "too early"))?,
        };
        if end <= start {
            return Err(ValidationError::single(
                "end_time",
                "must be after start_time",
            ));
        }
        if end - start > Duration::hours(MAX_RANGE_HOURS) {
            return Err(ValidationError::single(
                "end_time",
                format!(
                    "the range from start_time may be at most {} days",
                    MAX_RANGE_HOURS / 24
                ),
            ));
        }
        Ok(UsageRange {
            start: bucket_start(start.timestamp()),
            // A partial second still reaches into the bucket it starts.
            end: end.timestamp() + i64::from(end.timestamp_subsec_nanos() > 0),
        })
    }

    /// Every bucket of the range, in time order, with the counts found in
    /// `found` (any order; buckets outside the range are ignored, repeated
    /// ones add up) and zero elsewhere.
    pub fn buckets(&self, found: impl IntoIterator<Item = UsageBucket>) -> Vec<UsageBucket> {
        let count =
            usize::try_from((self.end - self.start + BUCKET_SECS - 1) / BUCKET_SECS).unwrap_or(0);
        let mut buckets: Vec<UsageBucket> = (0..count)
            .map(|i| UsageBucket {
                hour_start: self.start + i as i64 * BUCKET_SECS,
                counts: UsageCounts::default(),
            })
            .collect();
        for bucket in found {
            if bucket.hour_start < self.start || bucket.hour_start >= self.end {
                continue;
            }
            let index = usize::try_from((bucket.hour_start - self.start) / BUCKET_SECS);
            if let Some(slot) = index.ok().and_then(|i| buckets.get_mut(i)) {
                slot.counts.merge(&bucket.counts);
            }
        }
        buckets
    }
}

/// A last use as it is kept: to the microsecond, PostgreSQL's precision,
/// on every backend, so a use shows the same time before and after it is
/// written.
pub fn last_use_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// A bucket's start as a time.
pub fn bucket_time(hour_start: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(hour_start, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_range_is_the_last_day_in_hours() {
        let now = at("2026-12-01T12:30:00Z");
        let range = UsageRange::from_request(None, None, now).unwrap();
        assert_eq!(range.start, at("2026-11-30T12:00:00Z").timestamp());
        assert_eq!(range.end, now.timestamp());
        let buckets = range.buckets([]);
        // 12:00 yesterday … 12:00 today: the current hour is included.
        assert_eq!(buckets.len(), 25);
        assert_eq!(buckets[0].hour_start, range.start);
        assert_eq!(
            buckets[24].hour_start,
            at("2026-12-01T12:00:00Z").timestamp()
        );
        assert!(buckets.iter().all(|b| b.counts.is_empty()));
    }

    #[test]
    fn found_counts_land_in_their_bucket_and_add_up() {
        let range = UsageRange::from_request(
            Some(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-01T03:00:00Z")),
            at("2026-12-02T00:00:00Z"),
        )
        .unwrap();
        let one = |hour: &str, allowed| UsageBucket {
            hour_start: at(hour).timestamp(),
            counts: UsageCounts {
                allowed,
                ..UsageCounts::default()
            },
        };
        let buckets = range.buckets([
            one("2026-12-01T01:00:00Z", 2),
            one("2026-12-01T01:00:00Z", 3),
            one("2026-12-01T03:00:00Z", 100), // at the exclusive end
            one("2026-11-30T23:00:00Z", 100), // before the start
        ]);
        let allowed: Vec<u64> = buckets.iter().map(|b| b.counts.allowed).collect();
        assert_eq!(allowed, [0, 5, 0]);
    }

    #[test]
    fn bad_ranges_name_the_field() {
        let now = at("2026-12-01T00:00:00Z");
        let err = UsageRange::from_request(Some(now), Some(now), now).unwrap_err();
        assert_eq!(err.violations[0].field, "end_time");
        let err =
            UsageRange::from_request(Some(now), Some(now - Duration::hours(1)), now).unwrap_err();
        assert!(err.violations[0].description.contains("after start_time"));
        let err = UsageRange::from_request(
            Some(now - Duration::days(31) - Duration::seconds(1)),
            Some(now),
            now,
        )
        .unwrap_err();
        assert_eq!(err.violations[0].field, "end_time");
        assert!(err.violations[0].description.contains("31 days"));
        // Exactly 31 days is allowed: 744 buckets.
        let range =
            UsageRange::from_request(Some(now - Duration::days(31)), Some(now), now).unwrap();
        assert_eq!(range.buckets([]).len(), 744);
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        let mut counts = UsageCounts::default();
        counts.add(UseOutcome::RateLimited, u64::MAX);
        counts.add(UseOutcome::RateLimited, 1);
        counts.add(UseOutcome::Denied, 2);
        assert_eq!(counts.denied_rate_limited, u64::MAX);
        assert_eq!(counts.denied_other, 2);
        assert_eq!(counts.allowed, 0);
    }

    proptest! {
        #[test]
        fn any_valid_range_has_at_most_745_hour_aligned_buckets(
            start in -62_135_596_800i64..253_402_300_799,
            len in 1i64..(31 * 24 * 3600),
            nanos in 0u32..1_000_000_000,
        ) {
            let start = Utc.timestamp_opt(start, nanos).unwrap();
            let Some(end) = start.checked_add_signed(Duration::seconds(len)) else {
                return Ok(());
            };
            let range = UsageRange::from_request(Some(start), Some(end), end).unwrap();
            let buckets = range.buckets([]);
            prop_assert!(!buckets.is_empty() && buckets.len() <= 745);
            prop_assert!(buckets.iter().all(|b| b.hour_start.rem_euclid(BUCKET_SECS) == 0));
            prop_assert!(buckets[0].hour_start <= start.timestamp());
            prop_assert!(buckets.last().unwrap().hour_start < end.timestamp() + 1);
        }
    }
}
