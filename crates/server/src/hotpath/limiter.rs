//! Per-key rate limiting: decided locally in memory, shared across replicas
//! through storage.
//!
//! Each key has one GCRA state (a "theoretical arrival time" in one atomic of
//! its [`KeyRuntime`], updated with a CAS loop), so the hot path never waits
//! on storage. When several replicas share a PostgreSQL database,
//! [`RateLimiter::sync`] runs every second or so: it adds this replica's
//! requests since the last sync to a per-key, per-hour counter in storage,
//! reads back the total, and charges the requests the *other* replicas made
//! to the local GCRA state. Together, replicas therefore allow at most the
//! limit plus what the other replicas served during one sync interval, plus
//! fewer than 1% of the limit per other replica held back unreported
//! ([`sync_threshold`]; see ARCHITECTURE.md).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use keygate_domain::ratelimit::{PERIOD_NANOS, Quota, RateDecision, gcra};
use keygate_persistence::{Store, StoreError};

use crate::{
    hotpath::dirty::DirtyList,
    hotpath::runtime::{KeyRuntime, Ledger},
};

/// Length of the shared counting window, in seconds.
const WINDOW_SECS: i64 = 3600;

/// Rate-limit decisions, and the exchange with other replicas.
#[derive(Debug)]
pub struct RateLimiter {
    /// Keys with requests not yet reported to the other replicas.
    dirty: DirtyList,
    shared: bool,
    origin: Instant,
}

impl RateLimiter {
    /// With `shared`, allowed requests are remembered for
    /// [`RateLimiter::sync`].
    pub fn new(shared: bool) -> Self {
        Self {
            dirty: DirtyList::new(|r| &r.rate_dirty),
            shared,
            origin: Instant::now(),
        }
    }

    /// Takes one request from the key's allowance under `quota`.
    pub fn check(&self, runtime: &Arc<KeyRuntime>, quota: Quota) -> RateDecision {
        let now = self.now_nanos();
        let mut tat = runtime.tat.load(Ordering::Acquire);
        let decision = loop {
            let (next, decision) = gcra(tat, now, quota, 1);
            if !decision.allowed || next == tat {
                break decision;
            }
            match runtime
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break decision,
                Err(current) => tat = current,
            }
        };
        if decision.allowed && self.shared {
            runtime
                .interval
                .store(quota.emission_interval_nanos(), Ordering::Relaxed);
            let unsynced = runtime.unsynced.fetch_add(1, Ordering::AcqRel) + 1;
            if unsynced >= sync_threshold(quota) {
                self.dirty.mark(runtime);
            }
        }
        decision
    }

    /// Whether forgetting the key's state would change nothing: its allowance
    /// is full again and nothing of the current shared window (at
    /// `unix_now`) is remembered.
    pub fn is_at_rest(&self, runtime: &KeyRuntime, unix_now: i64) -> bool {
        if runtime.tat.load(Ordering::Acquire) > self.now_nanos() {
            return false;
        }
        let ledger = runtime.ledger.lock().unwrap_or_else(|e| e.into_inner());
        ledger.window_start != window_start(unix_now)
            || (ledger.own == 0 && ledger.others_charged == 0)
    }

    /// Charges `requests` made elsewhere to a key's local state.
    fn charge(&self, runtime: &KeyRuntime, requests: u64) {
        let cost = requests.saturating_mul(runtime.interval.load(Ordering::Relaxed));
        let now = self.now_nanos();
        let _ = runtime
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }

    /// Exchanges consumption with the other replicas through `store`: reports
    /// the requests allowed here since the last sync and charges locally what
    /// the others reported. Returns how many keys were exchanged. On failure
    /// nothing is lost: the requests are reported at the next sync.
    pub async fn sync(&self, store: &Store, unix_now: i64) -> Result<usize, StoreError> {
        let runtimes = self.dirty.take();
        if runtimes.is_empty() {
            return Ok(0);
        }
        let window_start = window_start(unix_now);
        let mut batch = Vec::with_capacity(runtimes.len());
        for runtime in runtimes {
            let delta = runtime.unsynced.swap(0, Ordering::AcqRel);
            batch.push((runtime, delta));
        }
        let deltas: Vec<(String, i64, u64)> = batch
            .iter()
            .map(|(runtime, delta)| (runtime.key_id.to_string(), window_start, *delta))
            .collect();
        let totals = match store.add_rate_usage(&deltas).await {
            Ok(totals) => totals,
            Err(err) => {
                for (runtime, delta) in batch {
                    runtime.unsynced.fetch_add(delta, Ordering::AcqRel);
                    self.dirty.mark(&runtime);
                }
                return Err(err);
            }
        };
        for ((runtime, delta), total) in batch.iter().zip(totals) {
            let others_new = {
                let mut ledger = runtime.ledger.lock().unwrap_or_else(|e| e.into_inner());
                if ledger.window_start != window_start {
                    *ledger = Ledger {
                        window_start,
                        ..Ledger::default()
                    };
                }
                ledger.own += delta;
                let others = total.saturating_sub(ledger.own);
                let new = others.saturating_sub(ledger.others_charged);
                ledger.others_charged = ledger.others_charged.max(others);
                new
            };
            if others_new > 0 {
                self.charge(runtime, others_new);
            }
        }
        Ok(deltas.len())
    }

    fn now_nanos(&self) -> u64 {
        // Offset by one period so "now" is never below a fresh state's zero.
        u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_add(PERIOD_NANOS)
    }
}

/// Requests a replica allows on a key before it reports them at the next
/// sync: 1% of the hourly limit, at least 1. A key far below its limit is
/// thus not written to storage every second it is used (at 100 000 keys
/// each used now and then, that was one row per key per second per
/// replica), and the overshoot this adds is bounded: another replica
/// holds back fewer than 1% of the limit, unreported.
pub fn sync_threshold(quota: Quota) -> u64 {
    u64::from(quota.limit() / 100).max(1)
}

/// The start of the shared counting window holding `unix_now`.
fn window_start(unix_now: i64) -> i64 {
    unix_now - unix_now.rem_euclid(WINDOW_SECS)
}

#[cfg(test)]
mod tests {
    use keygate_persistence::testing::TestDatabase;

    use super::*;
    use crate::hotpath::runtime::Runtimes;

    #[test]
    fn allows_the_burst_then_denies_with_retry_after() {
        let limiter = RateLimiter::new(false);
        let runtimes = Runtimes::default();
        let (a, b) = (
            runtimes.get_or_create("key-a"),
            runtimes.get_or_create("key-b"),
        );
        let quota = Quota::per_hour(3).unwrap();
        for expected_remaining in [2, 1, 0] {
            let d = limiter.check(&a, quota);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            assert_eq!(d.limit, 3);
        }
        let denied = limiter.check(&a, quota);
        assert!(!denied.allowed);
        assert!(denied.retry_after_nanos > 0);
        // Another key has its own allowance.
        assert!(limiter.check(&b, quota).allowed);
        // A spent allowance is state worth keeping; an untouched one is not.
        assert!(!limiter.is_at_rest(&a, 0));
        assert!(limiter.is_at_rest(&runtimes.get_or_create("key-c"), 0));
    }

    #[test]
    fn concurrent_callers_never_exceed_the_limit() {
        let limiter = RateLimiter::new(false);
        let runtime = Runtimes::default().get_or_create("key");
        let quota = Quota::per_hour(1000).unwrap();
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..500)
                            .filter(|_| limiter.check(&runtime, quota).allowed)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 1000);
    }

    #[tokio::test]
    async fn replicas_charge_each_other_through_storage() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let quota = Quota::per_hour(10).unwrap();
        // Two replicas: their own limiters and runtimes, one database.
        let (a, b) = (RateLimiter::new(true), RateLimiter::new(true));
        let (on_a, on_b) = (Runtimes::default(), Runtimes::default());
        let (key_a, key_b) = (on_a.get_or_create("key"), on_b.get_or_create("key"));
        let now = 1_800_000_000;

        for _ in 0..6 {
            assert!(a.check(&key_a, quota).allowed);
        }
        assert_eq!(a.sync(&store, now).await.unwrap(), 1);
        // B learns of A's 6 once it has something to report itself.
        assert!(b.check(&key_b, quota).allowed);
        assert_eq!(b.sync(&store, now).await.unwrap(), 1);
        let allowed_b = (0..10).filter(|_| b.check(&key_b, quota).allowed).count();
        assert_eq!(allowed_b, 3, "10 - 6 from A - 1 already taken by B");
        b.sync(&store, now).await.unwrap();
        // A now hears of B's 4 and has nothing left either.
        assert!(a.check(&key_a, quota).allowed, "A still had 4 locally");
        a.sync(&store, now).await.unwrap();
        assert!(!a.check(&key_a, quota).allowed);
        // Nothing to exchange when nothing was allowed.
        assert_eq!(a.sync(&store, now).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn keys_far_below_their_limit_are_reported_in_batches() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let quota = Quota::per_hour(1000).unwrap();
        assert_eq!(sync_threshold(quota), 10);
        let limiter = RateLimiter::new(true);
        let runtime = Runtimes::default().get_or_create("key");
        for _ in 0..9 {
            assert!(limiter.check(&runtime, quota).allowed);
        }
        assert_eq!(limiter.sync(&store, 0).await.unwrap(), 0, "below 1%: kept");
        assert!(limiter.check(&runtime, quota).allowed);
        assert_eq!(limiter.sync(&store, 0).await.unwrap(), 1);
        let totals = store
            .add_rate_usage(&[("key".to_owned(), 0, 0)])
            .await
            .unwrap();
        assert_eq!(totals, vec![10], "all ten reported at once");
        // Small limits report every request, as before.
        assert_eq!(sync_threshold(Quota::per_hour(150).unwrap()), 1);
        assert_eq!(
            sync_threshold(Quota::per_hour(u32::MAX).unwrap()),
            42_949_672
        );
    }

    #[tokio::test]
    async fn a_failed_sync_reports_again_later() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        // No migration: the table is missing and the sync fails.
        let limiter = RateLimiter::new(true);
        let runtime = Runtimes::default().get_or_create("key");
        let quota = Quota::per_hour(10).unwrap();
        limiter.check(&runtime, quota);
        assert!(limiter.sync(&store, 0).await.is_err());
        store.migrate().await.unwrap();
        assert_eq!(limiter.sync(&store, 0).await.unwrap(), 1);
        let totals = store
            .add_rate_usage(&[("key".to_owned(), 0, 0)])
            .await
            .unwrap();
        assert_eq!(totals, vec![1], "the request was reported exactly once");
    }
}
