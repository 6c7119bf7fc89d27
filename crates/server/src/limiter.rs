//! Per-key rate limiting on the hot path: one GCRA state (a single atomic
//! "theoretical arrival time") per key, decided in memory with a CAS loop.
//!
//! The state is keyed by key id, not lookup id, so a rotation or a cache
//! eviction does not hand a key a fresh allowance.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keygate_domain::ratelimit::{Quota, RateDecision, gcra};
use moka::sync::Cache;

/// Rate-limit states of the keys seen recently.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    states: Cache<String, Arc<AtomicU64>>,
    origin: Instant,
}

impl RateLimiter {
    /// Holds up to `capacity` key states; an idle state is dropped after an
    /// hour, when it would be full again anyway.
    pub fn new(capacity: u64) -> Self {
        Self {
            states: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            origin: Instant::now(),
        }
    }

    /// Takes one request from `key_id`'s allowance under `quota`.
    pub fn check(&self, key_id: &str, quota: Quota) -> RateDecision {
        let state = match self.states.get(key_id) {
            Some(state) => state,
            None => self
                .states
                .get_with(key_id.to_owned(), || Arc::new(AtomicU64::new(0))),
        };
        let now = self.now_nanos();
        let mut tat = state.load(Ordering::Acquire);
        loop {
            let (next, decision) = gcra(tat, now, quota, 1);
            if !decision.allowed || next == tat {
                return decision;
            }
            match state.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return decision,
                Err(current) => tat = current,
            }
        }
    }

    fn now_nanos(&self) -> u64 {
        // Offset by one period so "now" is never below a fresh state's zero.
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
            + Quota::period_nanos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_denies_with_retry_after() {
        let limiter = RateLimiter::new(10);
        let quota = Quota::per_hour(3).unwrap();
        for expected_remaining in [2, 1, 0] {
            let d = limiter.check("key-a", quota);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            assert_eq!(d.limit, 3);
        }
        let denied = limiter.check("key-a", quota);
        assert!(!denied.allowed);
        assert!(denied.retry_after_nanos > 0);
        // Another key has its own allowance.
        assert!(limiter.check("key-b", quota).allowed);
    }

    #[test]
    fn concurrent_callers_never_exceed_the_limit() {
        let limiter = RateLimiter::new(10);
        let quota = Quota::per_hour(1000).unwrap();
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..500)
                            .filter(|_| limiter.check("key", quota).allowed)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 1000);
    }
}
