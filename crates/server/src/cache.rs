//! The verified-key cache: lookup id → the key snapshot (and per-key runtime
//! state) Authorize needs, so a warm Authorize never touches storage.
//!
//! - quick_cache (S3-FIFO) holds the entries: a get is a few tens of
//!   nanoseconds, an entry costs a few dozen bytes beyond its value, and a
//!   flood of made-up lookup ids (seen once) is evicted before real keys.
//! - Unknown lookup ids are remembered for a short time (negative entries),
//!   so a flood of one made-up key costs one query, not one per request.
//! - Loads of one lookup id run one at a time (a striped lock), and a waiter
//!   that finds a fresh entry uses it: concurrent misses make one query.
//! - Every change to a key evicts its lookup ids ([`KeyCache::invalidate`]);
//!   a load that raced with an eviction is kept only as already stale.
//! - A known key is fresh for half to all of the configured lifetime (so
//!   entries loaded together do not expire together). Past it, the entry is
//!   still served and the caller is told to refresh it in the background:
//!   explicit invalidation, not the lifetime, is what makes changes visible.
//! - [`KeyCache::clear`] (invalidation messages may have been lost) makes
//!   every entry stale for real: it is reloaded before use, and if storage
//!   cannot be reached the caller gets the stale entry back alongside the
//!   error and may keep serving from it (fail-static through an outage).

use std::{
    future::Future,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keygate_domain::snapshot::{KeySnapshot, lookup_id_bytes};
use quick_cache::sync::Cache;
use tokio::sync::Mutex;

use crate::runtime::KeyRuntime;

/// A lookup id as the cache keys it: the 8 characters, no allocation.
type LookupKey = [u8; 8];

/// A known key as the hot path holds it.
#[derive(Debug)]
pub struct CachedKey {
    /// What a decision reads.
    pub snapshot: KeySnapshot,
    /// The key's rate-limit state and pending usage, shared by all its entries.
    pub runtime: Arc<KeyRuntime>,
}

/// What the cache knows about one lookup id.
#[derive(Clone, Debug)]
pub enum Entry {
    /// The key owning a credential with this lookup id.
    Known(Arc<CachedKey>),
    /// No credential has this lookup id (as of the load).
    Unknown,
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    loaded_at: Instant,
    fresh_until: Instant,
    generation: u64,
    /// Nanoseconds after `loaded_at` before which no new background refresh
    /// is started (one refresh at a time, retried after a second on failure).
    refresh_not_before: AtomicU64,
}

/// A failed load, with the stale entry it would have replaced, if any.
#[derive(Debug)]
pub struct LoadError<E> {
    /// Why the load failed.
    pub error: E,
    /// What the cache held before, no longer fresh.
    pub stale: Option<Entry>,
}

/// A cache answer.
#[derive(Debug)]
pub struct Lookup {
    /// The entry to decide with.
    pub entry: Entry,
    /// Past its lifetime: the caller should start [`KeyCache::refresh`]
    /// (this caller won the right to; others were not told).
    pub refresh: bool,
}

/// Locks serializing loads per lookup id (by hash), without a lock per entry.
const LOAD_STRIPES: usize = 1024;
/// Pause between background refresh attempts of one entry.
const REFRESH_RETRY: Duration = Duration::from_secs(1);

/// Bounded cache of verified key snapshots, keyed by lookup id.
#[derive(Clone, Debug)]
pub struct KeyCache {
    slots: Arc<Cache<LookupKey, Arc<Slot>>>,
    loading: Arc<[Mutex<()>]>,
    hasher: RandomState,
    ttl: Duration,
    negative_ttl: Duration,
    /// Bumped by every invalidation: a load that saw it change is not fresh.
    evictions: Arc<AtomicU64>,
    /// Bumped by [`KeyCache::clear`]: slots of older generations are stale.
    generation: Arc<AtomicU64>,
}

impl KeyCache {
    /// A cache of at most `capacity` entries; known keys are fresh for about
    /// `ttl`, unknown lookup ids for `negative_ttl`.
    pub fn new(capacity: u64, ttl: Duration, negative_ttl: Duration) -> Self {
        Self {
            slots: Arc::new(Cache::new(
                usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            )),
            loading: (0..LOAD_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
            ttl,
            negative_ttl,
            evictions: Arc::new(AtomicU64::new(0)),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    fn same_generation(&self, slot: &Slot) -> bool {
        slot.generation == self.generation.load(Ordering::Acquire)
    }

    fn is_fresh(&self, slot: &Slot) -> bool {
        self.same_generation(slot) && Instant::now() < slot.fresh_until
    }

    /// Whether this caller should refresh `slot` (past its lifetime, and no
    /// other refresh started within the last second).
    fn claim_refresh(slot: &Slot) -> bool {
        let now = u64::try_from(slot.loaded_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let not_before = slot.refresh_not_before.load(Ordering::Acquire);
        now >= not_before
            && slot
                .refresh_not_before
                .compare_exchange(
                    not_before,
                    now.saturating_add(REFRESH_RETRY.as_nanos() as u64),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    /// The entry for `lookup_id`. A fresh entry, or a known key merely past
    /// its lifetime, is returned at once (the latter with `refresh` set for
    /// one caller); a missing or invalidated one is loaded with `load`, one
    /// load at a time per id.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        lookup_id: &str,
        load: F,
    ) -> Result<Lookup, LoadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Entry, E>>,
    {
        let key = lookup_id_bytes(lookup_id);
        let stale = match self.slots.get(&key) {
            Some(slot) if self.is_fresh(&slot) => {
                return Ok(Lookup {
                    entry: slot.entry.clone(),
                    refresh: false,
                });
            }
            Some(slot) if self.same_generation(&slot) && matches!(slot.entry, Entry::Known(_)) => {
                return Ok(Lookup {
                    entry: slot.entry.clone(),
                    refresh: Self::claim_refresh(&slot),
                });
            }
            Some(slot) => Some(slot.entry.clone()),
            None => None,
        };
        match self.load_into(key, load, false).await {
            Ok(entry) => Ok(Lookup {
                entry,
                refresh: false,
            }),
            Err(error) => Err(LoadError { error, stale }),
        }
    }

    /// Reloads `lookup_id` now, unless someone else just did or it was
    /// evicted meanwhile (then its next use loads it).
    pub async fn refresh<F, Fut, E>(&self, lookup_id: &str, load: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Entry, E>>,
    {
        self.load_into(lookup_id_bytes(lookup_id), load, true)
            .await
            .map(|_| ())
    }

    async fn load_into<F, Fut, E>(
        &self,
        key: LookupKey,
        load: F,
        refreshing: bool,
    ) -> Result<Entry, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Entry, E>>,
    {
        let stripe = (self.hasher.hash_one(key) as usize) % self.loading.len();
        let _loading = self.loading[stripe].lock().await;
        let current = self.slots.get(&key);
        if let Some(slot) = &current {
            if self.is_fresh(slot) {
                return Ok(slot.entry.clone());
            }
        } else if refreshing {
            return Ok(Entry::Unknown);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let evictions = self.evictions.load(Ordering::Acquire);
        let entry = load().await?;
        let lifetime = match entry {
            // 50–100% of the lifetime, so a batch of keys loaded together
            // is refreshed spread out.
            Entry::Known(_) => self.ttl.mul_f64(0.5 + 0.5 * rand::random::<f64>()),
            Entry::Unknown => self.negative_ttl,
        };
        // An invalidation during the load may have been for this id: keep
        // the result for this caller, but not as fresh.
        let raced = self.evictions.load(Ordering::Acquire) != evictions;
        let now = Instant::now();
        self.slots.insert(
            key,
            Arc::new(Slot {
                entry: entry.clone(),
                loaded_at: now,
                fresh_until: if raced { now } else { now + lifetime },
                generation,
                refresh_not_before: AtomicU64::new(lifetime.as_nanos() as u64),
            }),
        );
        Ok(entry)
    }

    /// Evicts these lookup ids (all credentials of a changed key).
    pub fn invalidate<S: AsRef<str>>(&self, lookup_ids: &[S]) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        for id in lookup_ids {
            self.slots.remove(&lookup_id_bytes(id.as_ref()));
        }
    }

    /// Makes every entry stale (for example after invalidation messages may
    /// have been lost): each is reloaded before its next use, but stays
    /// available as a fail-static fallback while storage is unreachable.
    pub fn clear(&self) {
        self.evictions.fetch_add(1, Ordering::AcqRel);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Entries held now, fresh or stale (for metrics and tests).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::runtime::Runtimes;

    fn cache() -> KeyCache {
        KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(60))
    }

    fn known() -> Entry {
        let key = crate::fixtures::api_key("k", "abcdefgh");
        Entry::Known(Arc::new(CachedKey {
            snapshot: KeySnapshot::from(&key),
            runtime: Runtimes::default().get_or_create("k"),
        }))
    }

    async fn load_counting(cache: &KeyCache, loads: &AtomicUsize) -> Lookup {
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
                load_counting(&cache, &loads).await.entry,
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
        cache.invalidate(&["abcdefgh"]);
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
    async fn a_known_key_past_its_lifetime_is_served_and_refreshed_once() {
        let cache = KeyCache::new(100, Duration::from_millis(20), Duration::from_secs(60));
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(known())
        };
        cache.get_or_load("abcdefgh", load).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        // Served at once; one caller (only) is asked to refresh.
        let first = cache.get_or_load("abcdefgh", load).await.unwrap();
        let second = cache.get_or_load("abcdefgh", load).await.unwrap();
        assert!(matches!(first.entry, Entry::Known(_)) && first.refresh);
        assert!(!second.refresh);
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "no load on the request path"
        );
        cache.refresh("abcdefgh", load).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        let after = cache.get_or_load("abcdefgh", load).await.unwrap();
        assert!(!after.refresh, "fresh again");
    }

    #[tokio::test]
    async fn a_load_that_raced_an_invalidation_is_not_kept_fresh() {
        let cache = cache();
        let racing = cache.clone();
        let first = cache
            .get_or_load("abcdefgh", || async move {
                // The key changes while this load is in flight.
                racing.invalidate(&["abcdefgh"]);
                Ok::<_, ()>(Entry::Unknown)
            })
            .await
            .unwrap();
        assert!(matches!(first.entry, Entry::Unknown));
        let second = cache
            .get_or_load("abcdefgh", || async { Ok::<_, ()>(known()) })
            .await
            .unwrap();
        assert!(
            matches!(second.entry, Entry::Known(_)),
            "the raced load was served as fresh"
        );
    }

    #[tokio::test]
    async fn a_failed_reload_hands_back_the_stale_entry() {
        let cache = cache();
        cache
            .get_or_load("abcdefgh", || async { Ok::<_, ()>(known()) })
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
