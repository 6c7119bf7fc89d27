//! Rate-limit maths: the Generic Cell Rate Algorithm (GCRA) for a per-key
//! limit of N requests per hour with a burst of N. The whole state of a key
//! is one number, its theoretical arrival time (TAT) in integer nanoseconds,
//! so the server can keep it in an `AtomicU64` and update it with a
//! compare-and-swap loop around [`gcra`]; this module only does the sums.
//!
//! With emission interval `T = 3600 s / N` (rounded down to whole
//! nanoseconds) and window `W = N * T` (at most one hour), a request of cost
//! `c` at `now` is allowed iff `max(tat, now) + c*T - now <= W`. A fresh key
//! can therefore spend N at once, then regains one request every T: over any
//! span of length `d`, at most `N + floor(d / T)` requests pass, so never
//! more than `2N` within one hour.

/// One hour in nanoseconds.
pub const PERIOD_NANOS: u64 = 3_600_000_000_000;

/// A per-key limit: N requests per hour, burst N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    per_hour: u32,
}

impl Quota {
    /// A quota of `n` requests per hour; `None` for 0, and for any `n` whose
    /// window `W = n * T` would not fit in one hour (none does for a `u32`,
    /// but the check keeps [`gcra`] free of overflow by construction: every
    /// TAT it stores is at most `now + W`).
    pub fn per_hour(n: u32) -> Option<Quota> {
        if n == 0 {
            return None;
        }
        let interval = (PERIOD_NANOS / u64::from(n)).max(1);
        interval
            .checked_mul(u64::from(n))
            .filter(|window| *window <= PERIOD_NANOS)?;
        Some(Quota { per_hour: n })
    }

    /// N: requests per hour, and the burst size.
    pub fn limit(&self) -> u32 {
        self.per_hour
    }

    /// T: nanoseconds between requests at the sustained rate (at least 1).
    pub fn emission_interval_nanos(&self) -> u64 {
        (PERIOD_NANOS / u64::from(self.per_hour)).max(1)
    }

    /// W = N * T: how far ahead of now the TAT may run. Equals one hour when
    /// N divides it, and is a few nanoseconds less otherwise, which keeps the
    /// burst exactly N.
    pub fn window_nanos(&self) -> u64 {
        self.emission_interval_nanos() * u64::from(self.per_hour)
    }

    /// The period the limit is expressed over: one hour in nanoseconds.
    pub fn period_nanos() -> u64 {
        PERIOD_NANOS
    }
}

/// The outcome of one rate-limit check, with the figures for
/// `X-RateLimit-*` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// N.
    pub limit: u32,
    /// Requests that could still be made right now, in `0..=limit`.
    pub remaining: u32,
    /// Nanoseconds until the allowance is full again.
    pub reset_after_nanos: u64,
    /// Nanoseconds to wait before retrying; 0 when allowed.
    pub retry_after_nanos: u64,
}

/// One GCRA step. Takes the stored TAT (0 for a fresh key), the current time
/// and the cost of the request, and returns the TAT to store and the
/// decision. A denied request leaves the TAT unchanged. A cost of 0 only
/// reports the figures. A cost above the limit is always denied (its
/// `retry_after_nanos` is when it would fit if it could, which it never can).
pub fn gcra(tat_nanos: u64, now_nanos: u64, quota: Quota, cost: u32) -> (u64, RateDecision) {
    let t = quota.emission_interval_nanos();
    let window = quota.window_nanos();
    let limit = quota.limit();
    let base = tat_nanos.max(now_nanos);
    // In u128 so no cost can wrap; a TAT that does not fit a u64 is denied.
    let candidate = u128::from(base) + u128::from(cost) * u128::from(t);
    let ahead = candidate - u128::from(now_nanos);
    let allowed = ahead <= u128::from(window) && candidate <= u128::from(u64::MAX);
    let new_tat = if allowed { candidate as u64 } else { tat_nanos };
    let used = if allowed {
        ahead as u64
    } else {
        base - now_nanos
    };
    let remaining = (window.saturating_sub(used) / t).min(u64::from(limit));
    let retry_after = if allowed {
        0
    } else {
        u64::try_from(ahead.saturating_sub(u128::from(window)))
            .unwrap_or(u64::MAX)
            .max(1)
    };
    let decision = RateDecision {
        allowed,
        limit,
        remaining: u32::try_from(remaining).unwrap_or(limit),
        reset_after_nanos: new_tat.saturating_sub(now_nanos),
        retry_after_nanos: retry_after,
    };
    (new_tat, decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn q(n: u32) -> Quota {
        Quota::per_hour(n).unwrap()
    }

    #[test]
    fn quota_basics() {
        assert_eq!(Quota::per_hour(0), None);
        assert_eq!(q(3600).emission_interval_nanos(), SEC);
        assert_eq!(q(3600).window_nanos(), PERIOD_NANOS);
        assert_eq!(q(7).window_nanos(), PERIOD_NANOS - 5);
        assert_eq!(q(u32::MAX).emission_interval_nanos(), 838);
        assert_eq!(Quota::period_nanos(), 3_600 * SEC);
        assert_eq!(q(5).limit(), 5);
    }

    #[test]
    fn fresh_key_bursts_n_then_waits() {
        let quota = q(3);
        let now = 1_000 * SEC;
        let mut tat = 0;
        let mut remaining = vec![];
        for _ in 0..3 {
            let (t, d) = gcra(tat, now, quota, 1);
            assert!(d.allowed);
            assert_eq!(d.retry_after_nanos, 0);
            remaining.push(d.remaining);
            tat = t;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (t, d) = gcra(tat, now, quota, 1);
        assert!(!d.allowed);
        assert_eq!(t, tat);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_nanos, 1_200 * SEC);
        assert_eq!(d.reset_after_nanos, 3_600 * SEC);
        let (_, d) = gcra(tat, now + d.retry_after_nanos, quota, 1);
        assert!(d.allowed);
    }

    #[test]
    fn peek_with_zero_cost() {
        let quota = q(10);
        let (tat, d) = gcra(0, 5 * SEC, quota, 0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 10);
        assert_eq!(d.reset_after_nanos, 0);
        assert_eq!(tat, 5 * SEC);
    }

    #[test]
    fn cost_above_limit_is_denied() {
        let (tat, d) = gcra(0, SEC, q(2), 3);
        assert!(!d.allowed);
        assert_eq!(tat, 0);
        assert!(d.retry_after_nanos > 0);
        assert_eq!(d.remaining, 2);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let (tat, d) = gcra(u64::MAX, 0, q(1), u32::MAX);
        assert!(!d.allowed);
        assert_eq!(tat, u64::MAX);
        assert_eq!(d.retry_after_nanos, u64::MAX);
        // The whole burst at once fits; its TAT would not fit a u64.
        let (tat, d) = gcra(0, u64::MAX, q(u32::MAX), u32::MAX);
        assert!(!d.allowed);
        assert_eq!(tat, 0);
        assert_eq!(d.remaining, u32::MAX);
        // Near the end of time a request is denied (its TAT would not fit),
        // the state is left alone and the figures stay sane.
        let (tat, d) = gcra(0, u64::MAX - 10, q(1), 1);
        assert!(!d.allowed);
        assert_eq!(tat, 0);
        assert_eq!(d.remaining, 1);
        assert!(d.retry_after_nanos > 0);
        // The largest quota: a burst of all of it at once is allowed.
        let (tat, d) = gcra(0, SEC, q(u32::MAX), u32::MAX);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(tat, SEC + q(u32::MAX).window_nanos());
    }

    #[test]
    fn every_u32_limit_is_a_quota_within_one_hour() {
        for n in [
            1,
            2,
            7,
            3600,
            1_000_000,
            u32::MAX / 2,
            u32::MAX - 1,
            u32::MAX,
        ] {
            let quota = Quota::per_hour(n).expect("a quota");
            assert!(quota.emission_interval_nanos() >= 1);
            assert!(quota.window_nanos() <= PERIOD_NANOS, "{n}");
            // Short of the hour by the remainder of the division only.
            assert!(PERIOD_NANOS - quota.window_nanos() < u64::from(n));
        }
    }

    /// Runs a sequence of (gap, cost) requests from a fresh key; returns the
    /// time and outcome of each.
    fn simulate(quota: Quota, start: u64, steps: &[(u64, u32)]) -> Vec<(u64, u32, RateDecision)> {
        let mut tat = 0;
        let mut now = start;
        let mut out = vec![];
        for &(gap, cost) in steps {
            now += gap;
            let (t, d) = gcra(tat, now, quota, cost);
            if !d.allowed {
                assert_eq!(t, tat, "denial changed the state");
            }
            tat = t;
            out.push((now, cost, d));
        }
        out
    }

    fn steps() -> impl Strategy<Value = Vec<(u64, u32)>> {
        prop::collection::vec(
            (
                prop_oneof![Just(0u64), 0..SEC, 0..600 * SEC, 0..4_000 * SEC],
                prop_oneof![4 => Just(1u32), 1 => 0u32..4],
            ),
            1..300,
        )
    }

    /// Whether a request of `cost` at `events[j]`'s time fits the span
    /// bound given the requests before it: for every earlier request `i`,
    /// the cost allowed from `i` up to and including this one is at most
    /// `N + floor((t_j - t_i) / T)`, and the cost alone is at most N.
    fn fits_span_bound(events: &[(u64, u32, RateDecision)], j: usize, n: u32, t: u64) -> bool {
        let (now, cost, _) = events[j];
        if cost > n {
            return false;
        }
        let mut spent = u64::from(cost);
        for (at, c, d) in events[..j].iter().rev() {
            if d.allowed {
                spent += u64::from(*c);
            }
            if spent > u64::from(n) + (now - at) / t {
                return false;
            }
        }
        true
    }

    proptest! {
        /// GCRA is exactly the span bound: over any sequence of requests,
        /// a request is allowed if and only if allowing it keeps the cost
        /// allowed in every span ending at it within N + floor(span / T).
        /// So the bound is never exceeded, and nothing is denied that fits.
        #[test]
        fn allowed_exactly_when_the_span_bound_holds(n in 1u32..50, start in 0u64..1_000_000 * SEC, steps in steps()) {
            let quota = q(n);
            let t = quota.emission_interval_nanos();
            let events = simulate(quota, start, &steps);
            for j in 0..events.len() {
                let (at, cost, d) = events[j];
                let fits = fits_span_bound(&events, j, n, t);
                prop_assert_eq!(
                    d.allowed, fits,
                    "request {} (cost {}) at +{} ns: allowed {} but the bound says {}",
                    j, cost, at - start, d.allowed, fits
                );
            }
            // Consequences: from any request on, at most 2N within an hour
            // and at most N within less than T.
            for i in 0..events.len() {
                let mut spent = 0u64;
                for e in &events[i..] {
                    if e.2.allowed {
                        spent += u64::from(e.1);
                    }
                    let d = e.0 - events[i].0;
                    if d < PERIOD_NANOS {
                        prop_assert!(spent <= 2 * u64::from(n));
                    }
                    if d < t {
                        prop_assert!(spent <= u64::from(n));
                    }
                }
            }
        }

        /// No input makes the maths panic (the u128 sums, the subtraction
        /// from `now`, the division by T), for any quota a `u32` can ask for.
        #[test]
        fn any_input_is_decided_without_panic(n in 1u32.., tat in any::<u64>(), now in any::<u64>(), cost in any::<u32>()) {
            let quota = Quota::per_hour(n).unwrap();
            let (new_tat, d) = gcra(tat, now, quota, cost);
            prop_assert!(d.remaining <= n);
            if !d.allowed {
                prop_assert_eq!(new_tat, tat);
            }
        }

        #[test]
        fn decision_invariants(n in 1u32..1_000, tat in 0u64..10_000 * SEC, now in 0u64..10_000 * SEC, cost in 0u32..5) {
            let quota = q(n);
            // Only reachable states: the TAT never runs more than W ahead.
            let tat = tat.min(now + quota.window_nanos());
            let (new_tat, d) = gcra(tat, now, quota, cost);
            prop_assert!(d.remaining <= d.limit);
            prop_assert_eq!(d.limit, n);
            prop_assert_eq!(d.retry_after_nanos > 0, !d.allowed);
            if d.allowed {
                prop_assert!(new_tat <= now + quota.window_nanos());
                prop_assert_eq!(d.reset_after_nanos, new_tat.saturating_sub(now));
            } else {
                prop_assert_eq!(new_tat, tat);
                prop_assert!(d.remaining < cost);
                if cost <= n {
                    let (_, again) = gcra(tat, now + d.retry_after_nanos, quota, cost);
                    prop_assert!(again.allowed);
                    if d.retry_after_nanos > 1 {
                        let (_, early) = gcra(tat, now + d.retry_after_nanos - 1, quota, cost);
                        prop_assert!(!early.allowed);
                    }
                }
            }
        }

        #[test]
        fn fresh_start_allows_exactly_n_at_once(n in 1u32..5_000, now in 0u64..u64::MAX / 2) {
            let quota = q(n);
            let mut tat = 0;
            for i in 0..n {
                let (t, d) = gcra(tat, now, quota, 1);
                prop_assert!(d.allowed);
                prop_assert_eq!(d.remaining, n - i - 1);
                tat = t;
            }
            let (_, d) = gcra(tat, now, quota, 1);
            prop_assert!(!d.allowed);
        }
    }
}
