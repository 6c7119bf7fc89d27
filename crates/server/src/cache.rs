//! The verified-key cache: lookup id → the key record Authorize needs, so a
//! warm Authorize never touches storage.
//!
//! - Unknown lookup ids are remembered for a short time (negative entries),
//!   so a flood of made-up keys costs one query per id, not one per request.
//! - Concurrent misses for one lookup id share a single load: loads run
//!   under moka's per-key lock, and a waiter finding a fresh entry uses it.
//! - Every change to a key evicts its lookup ids ([`KeyCache::invalidate`]);
//!   a load that raced with an eviction is kept only as already stale.
//! - An entry is fresh for a configured lifetime (the safety net behind
//!   explicit invalidation), or until [`KeyCache::clear`] (lost invalidation
//!   messages). A stale entry is reloaded on its next use; if storage cannot
//!   be reached, the caller gets the stale entry back alongside the error and
//!   may keep serving from it (fail-static through a database outage).

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keygate_domain::ApiKey;
use moka::{future::Cache, ops::compute::Op};

/// What the cache knows about one lookup id.
#[derive(Clone, Debug)]
pub enum Entry {
    /// The key owning a credential with this lookup id.
    Known(Arc<ApiKey>),
    /// No credential has this lookup id (as of the load).
    Unknown,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    fresh_until: Instant,
    generation: u64,
}

/// A failed load, with the stale entry it would have replaced, if any.
#[derive(Debug)]
pub struct LoadError<E> {
    /// Why the load failed.
    pub error: E,
    /// What the cache held before, no longer fresh.
    pub stale: Option<Entry>,
}

/// Bounded cache of verified key records, keyed by lookup id.
#[derive(Clone, Debug)]
pub struct KeyCache {
    slots: Cache<String, Arc<Slot>>,
    ttl: Duration,
    negative_ttl: Duration,
    /// Bumped by every invalidation: a load that saw it change is not fresh.
    evictions: Arc<AtomicU64>,
    /// Bumped by [`KeyCache::clear`]: slots of older generations are stale.
    generation: Arc<AtomicU64>,
}

/// How long an idle slot is kept for fail-static use before it is dropped.
const IDLE_LIMIT: Duration = Duration::from_secs(3600);

impl KeyCache {
    /// A cache of at most `capacity` entries; known keys are fresh for `ttl`,
    /// unknown lookup ids for `negative_ttl`.
    pub fn new(capacity: u64, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            slots: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(IDLE_LIMIT.max(ttl))
                .build(),
            ttl,
            negative_ttl,
            evictions: Arc::new(AtomicU64::new(0)),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    fn is_fresh(&self, slot: &Slot) -> bool {
        slot.generation == self.generation.load(Ordering::Acquire)
            && Instant::now() < slot.fresh_until
    }

    /// The entry for `lookup_id`, loading it with `load` when missing or
    /// stale. Concurrent loads of one id are serialized, and a waiter that
    /// finds a fresh entry does not load again.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        lookup_id: &str,
        load: F,
    ) -> Result<Entry, LoadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Entry, E>>,
        E: Send + Sync + 'static,
    {
        let stale = match self.slots.get(lookup_id).await {
            Some(slot) if self.is_fresh(&slot) => return Ok(slot.entry.clone()),
            Some(slot) => Some(slot.entry.clone()),
            None => None,
        };
        let result = self
            .slots
            .entry_by_ref(lookup_id)
            .and_try_compute_with(|current| async move {
                if current
                    .as_ref()
                    .is_some_and(|slot| self.is_fresh(slot.value()))
                {
                    return Ok(Op::Nop);
                }
                let generation = self.generation.load(Ordering::Acquire);
                let evictions = self.evictions.load(Ordering::Acquire);
                let entry = load().await?;
                let lifetime = match entry {
                    Entry::Known(_) => self.ttl,
                    Entry::Unknown => self.negative_ttl,
                };
                // An invalidation during the load may have been for this id:
                // keep the result for this caller, but not as fresh.
                let raced = self.evictions.load(Ordering::Acquire) != evictions;
                let now = Instant::now();
                Ok(Op::Put(Arc::new(Slot {
                    entry,
                    fresh_until: if raced { now } else { now + lifetime },
                    generation,
                })))
            })
            .await;
        match result {
            Ok(outcome) => Ok(outcome
                .into_entry()
                .map(|slot| slot.into_value().entry.clone())
                .unwrap_or(Entry::Unknown)),
            Err(error) => Err(LoadError { error, stale }),
        }
    }

    /// Evicts these lookup ids (all credentials of a changed key).
    pub async fn invalidate<S: AsRef<str>>(&self, lookup_ids: &[S]) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        for id in lookup_ids {
            self.slots.invalidate(id.as_ref()).await;
        }
    }

    /// Makes every entry stale (for example after invalidation messages may
    /// have been lost): each is reloaded on its next use, but stays available
    /// as a fail-static fallback while storage is unreachable.
    pub fn clear(&self) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Entries held now, fresh or stale (for metrics and tests).
    pub async fn len(&self) -> u64 {
        self.slots.run_pending_tasks().await;
        self.slots.entry_count()
    }

    /// Whether the cache holds no entry.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn cache() -> KeyCache {
        KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(60))
    }

    async fn load_counting(cache: &KeyCache, loads: &AtomicUsize) -> Entry {
        cache
            .get_or_load("abcdefgh", || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(Entry::Unknown)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_hit_does_not_load_again() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        for _ in 0..5 {
            assert!(matches!(
                load_counting(&cache, &loads).await,
                Entry::Unknown
            ));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_load() {
        let cache = cache();
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let cache = cache.clone();
            let loads = loads.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load("abcdefgh", || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(Entry::Unknown)
                    })
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_and_clear_force_a_reload() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        load_counting(&cache, &loads).await;
        cache.invalidate(&["abcdefgh"]).await;
        load_counting(&cache, &loads).await;
        cache.clear();
        load_counting(&cache, &loads).await;
        load_counting(&cache, &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn negative_entries_expire_on_their_own_clock() {
        let cache = KeyCache::new(100, Duration::from_secs(60), Duration::from_millis(50));
        let loads = AtomicUsize::new(0);
        load_counting(&cache, &loads).await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        load_counting(&cache, &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_load_that_raced_an_invalidation_is_not_kept_fresh() {
        let cache = cache();
        let racing = cache.clone();
        let first = cache
            .get_or_load("abcdefgh", || async move {
                // The key changes while this load is in flight.
                racing.invalidate(&["abcdefgh"]).await;
                Ok::<_, ()>(Entry::Unknown)
            })
            .await
            .unwrap();
        assert!(matches!(first, Entry::Unknown));
        let second = cache
            .get_or_load("abcdefgh", || async {
                Ok::<_, ()>(Entry::Known(Arc::new(crate::fixtures::api_key(
                    "k", "abcdefgh",
                ))))
            })
            .await
            .unwrap();
        assert!(
            matches!(second, Entry::Known(_)),
            "the raced load was served as fresh"
        );
    }

    #[tokio::test]
    async fn a_failed_reload_hands_back_the_stale_entry() {
        let cache = cache();
        cache
            .get_or_load("abcdefgh", || async {
                Ok::<_, ()>(Entry::Known(Arc::new(crate::fixtures::api_key(
                    "k", "abcdefgh",
                ))))
            })
            .await
            .unwrap();
        cache.clear();
        let err = cache
            .get_or_load("abcdefgh", || async { Err::<Entry, _>("database down") })
            .await
            .unwrap_err();
        assert_eq!(err.error, "database down");
        assert!(matches!(err.stale, Some(Entry::Known(_))));
        // A miss with no previous entry has nothing to fall back on.
        let err = cache
            .get_or_load("zzzzzzzz", || async { Err::<Entry, _>("database down") })
            .await
            .unwrap_err();
        assert!(err.stale.is_none());
    }
}
