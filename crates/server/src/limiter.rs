//! Per-key rate limiting: decided locally in memory, shared across replicas
//! through storage.
//!
//! Each key has one GCRA state (a "theoretical arrival time" in one atomic,
//! updated with a CAS loop), so the hot path never waits on storage. When
//! several replicas share a PostgreSQL database, [`RateLimiter::sync`] runs
//! every second or so: it adds this replica's requests since the last sync
//! to a per-key, per-hour counter in storage, reads back the total, and
//! charges the requests the *other* replicas made to the local GCRA state.
//! Together, replicas therefore allow at most the limit plus what the other
//! replicas served during one sync interval (see ARCHITECTURE.md).
//!
//! States are keyed by key id, not lookup id, so a rotation or a cache
//! eviction does not hand a key a fresh allowance.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keygate_domain::ratelimit::{PERIOD_NANOS, Quota, RateDecision, gcra};
use keygate_persistence::{Store, StoreError};
use moka::sync::Cache;

/// Length of the shared counting window, in seconds.
const WINDOW_SECS: i64 = 3600;

/// What a replica knows of one key's consumption in the current window.
#[derive(Debug, Default)]
struct Ledger {
    window_start: i64,
    /// Requests this replica has reported for the window.
    own: u64,
    /// Requests of other replicas already charged to the local state.
    others_charged: u64,
}

#[derive(Debug)]
struct KeyLimit {
    tat: AtomicU64,
    /// Emission interval of the quota last used for this key.
    interval: AtomicU64,
    /// Requests allowed here since the last sync.
    unsynced: AtomicU64,
    ledger: Mutex<Ledger>,
}

/// Rate-limit states of the keys seen recently.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    states: Cache<String, Arc<KeyLimit>>,
    /// Keys with unsynced requests.
    dirty: Arc<Mutex<HashSet<String>>>,
    shared: bool,
    origin: Instant,
}

impl RateLimiter {
    /// Holds up to `capacity` key states; an idle state is dropped after an
    /// hour, when it would be full again anyway. With `shared`, allowed
    /// requests are remembered for [`RateLimiter::sync`].
    pub fn new(capacity: u64, shared: bool) -> Self {
        Self {
            states: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            dirty: Arc::new(Mutex::new(HashSet::new())),
            shared,
            origin: Instant::now(),
        }
    }

    fn state(&self, key_id: &str) -> Arc<KeyLimit> {
        match self.states.get(key_id) {
            Some(state) => state,
            None => self.states.get_with(key_id.to_owned(), || {
                Arc::new(KeyLimit {
                    tat: AtomicU64::new(0),
                    interval: AtomicU64::new(0),
                    unsynced: AtomicU64::new(0),
                    ledger: Mutex::new(Ledger::default()),
                })
            }),
        }
    }

    /// Takes one request from `key_id`'s allowance under `quota`.
    pub fn check(&self, key_id: &str, quota: Quota) -> RateDecision {
        let state = self.state(key_id);
        let now = self.now_nanos();
        let mut tat = state.tat.load(Ordering::Acquire);
        let decision = loop {
            let (next, decision) = gcra(tat, now, quota, 1);
            if !decision.allowed || next == tat {
                break decision;
            }
            match state
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break decision,
                Err(current) => tat = current,
            }
        };
        if decision.allowed && self.shared {
            state
                .interval
                .store(quota.emission_interval_nanos(), Ordering::Relaxed);
            if state.unsynced.fetch_add(1, Ordering::AcqRel) == 0 {
                self.dirty
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key_id.to_owned());
            }
        }
        decision
    }

    /// Charges `requests` made elsewhere to a key's local state.
    fn charge(&self, state: &KeyLimit, requests: u64) {
        let cost = requests.saturating_mul(state.interval.load(Ordering::Relaxed));
        let now = self.now_nanos();
        let _ = state
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
        let keys: Vec<String> = self
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let window_start = unix_now - unix_now.rem_euclid(WINDOW_SECS);
        let mut batch = Vec::with_capacity(keys.len());
        for key_id in keys {
            if let Some(state) = self.states.get(&key_id) {
                let delta = state.unsynced.swap(0, Ordering::AcqRel);
                batch.push((key_id, state, delta));
            }
        }
        let deltas: Vec<(String, i64, u64)> = batch
            .iter()
            .map(|(key_id, _, delta)| (key_id.clone(), window_start, *delta))
            .collect();
        let totals = match store.add_rate_usage(&deltas).await {
            Ok(totals) => totals,
            Err(err) => {
                let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
                for (key_id, state, delta) in batch {
                    state.unsynced.fetch_add(delta, Ordering::AcqRel);
                    dirty.insert(key_id);
                }
                return Err(err);
            }
        };
        for ((_, state, delta), total) in batch.iter().zip(totals) {
            let others_new = {
                let mut ledger = state.ledger.lock().unwrap_or_else(|e| e.into_inner());
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
                self.charge(state, others_new);
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

#[cfg(test)]
mod tests {
    use keygate_persistence::testing::TestDatabase;

    use super::*;

    #[test]
    fn allows_the_burst_then_denies_with_retry_after() {
        let limiter = RateLimiter::new(10, false);
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
        let limiter = RateLimiter::new(10, false);
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

    #[tokio::test]
    async fn replicas_charge_each_other_through_storage() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let quota = Quota::per_hour(10).unwrap();
        let (a, b) = (RateLimiter::new(10, true), RateLimiter::new(10, true));
        let now = 1_800_000_000;

        for _ in 0..6 {
            assert!(a.check("key", quota).allowed);
        }
        assert_eq!(a.sync(&store, now).await.unwrap(), 1);
        // B learns of A's 6 only once it has something to report itself.
        assert!(b.check("key", quota).allowed);
        assert_eq!(b.sync(&store, now).await.unwrap(), 1);
        let allowed_b = (0..10).filter(|_| b.check("key", quota).allowed).count();
        assert_eq!(allowed_b, 3, "10 - 6 from A - 1 already taken by B");
        b.sync(&store, now).await.unwrap();
        // A now hears of B's 4 and has nothing left either.
        assert!(a.check("key", quota).allowed, "A still had 4 locally");
        a.sync(&store, now).await.unwrap();
        assert!(!a.check("key", quota).allowed);
        // Nothing to exchange when nothing was allowed.
        assert_eq!(a.sync(&store, now).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_sync_reports_again_later() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        // No migration: the table is missing and the sync fails.
        let limiter = RateLimiter::new(10, true);
        let quota = Quota::per_hour(10).unwrap();
        limiter.check("key", quota);
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
