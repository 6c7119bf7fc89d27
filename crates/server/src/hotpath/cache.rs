//! The verified-key cache: lookup id → the key snapshot (and per-key runtime
//! state) Authorize needs, so a warm Authorize never touches storage.
//!
//! - quick_cache (S3-FIFO) holds the entries: a get is a few tens of
//!   nanoseconds and an entry costs a few dozen bytes beyond its value.
//!   Unknown lookup ids live in a second, smaller cache, so a flood of
//!   made-up keys can evict other made-up keys but never real ones.
//! - Unknown lookup ids are remembered for a short time (negative entries),
//!   so a flood of one made-up key costs one query, not one per request.
//! - Loads of one lookup id run one at a time (a striped lock), and a waiter
//!   that finds a usable entry uses it: concurrent misses make one query.
//!
//! Whether an entry may decide is answered in one place, [`Slot::state`],
//! from three facts:
//!
//! 1. **Version.** Every snapshot carries the stored version it was read at;
//!    the key's runtime holds the newest version this replica has heard of
//!    (its own changes, change notifications, loads). A snapshot below it is
//!    out of date and never decides — not even while storage is down —
//!    whatever loads were in flight when the change happened: the check is
//!    made on every read, not when the entry is stored.
//! 2. **Trust.** [`KeyCache::clear`] (change notifications may have been
//!    lost) distrusts every entry read before it: each is reloaded before its
//!    next use, and serves only as a fail-static fallback while storage
//!    cannot be reached.
//! 3. **Lifetime.** Past its lifetime (50–100% of the configured one, so
//!    entries loaded together do not expire together) a known key is still
//!    served, and one caller is asked to refresh it in the background
//!    (checked against storage's version in batches, [`KeyCache::renew`]d
//!    when unchanged, reloaded otherwise); an unknown lookup id is loaded
//!    again.
//!
//! A negative entry has no version to compare: a load that found nothing is
//! kept only if no change was announced while it ran ([`KeyCache::invalidate`]
//! counts them), so a key created during the load is not hidden by it.

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
use prometheus_client::metrics::counter::Counter;
use quick_cache::sync::Cache;
use tokio::sync::Mutex;

use crate::hotpath::runtime::KeyRuntime;

/// A lookup id as the cache keys it: the 8 characters, no allocation.
type LookupKey = [u8; 8];

/// A known key as the hot path holds it.
#[derive(Debug)]
pub struct CachedKey {
    /// What a decision reads.
    pub snapshot: KeySnapshot,
    /// The key's rate-limit state, pending usage and newest known version.
    pub runtime: Arc<KeyRuntime>,
}

impl CachedKey {
    /// Whether this snapshot is the newest state of the key this replica has
    /// heard of. The one comparison that keeps a decision from ever reading
    /// a key older than a change already made or announced.
    pub fn is_current(&self) -> bool {
        self.snapshot.version >= self.runtime.latest_version()
    }
}

/// What the cache knows about one lookup id.
#[derive(Clone, Debug)]
pub enum Entry {
    /// The key owning a credential with this lookup id.
    Known(Arc<CachedKey>),
    /// No credential has this lookup id (as of the load).
    Unknown,
}

impl Entry {
    fn is_current(&self) -> bool {
        match self {
            Entry::Known(key) => key.is_current(),
            Entry::Unknown => true,
        }
    }
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    /// Cache-clock nanoseconds when the load that produced this began.
    read_at: u64,
    /// Cache-clock nanoseconds until which the entry is within its lifetime.
    fresh_until: u64,
    /// Cache-clock nanoseconds before which no new background refresh is
    /// started (one refresh at a time, retried after a second on failure).
    refresh_not_before: AtomicU64,
}

/// How an entry may be used, by [`Slot::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Decide with it.
    Fresh,
    /// Decide with it and refresh it in the background (known keys only).
    Aging,
    /// Reload it first; if storage is down, decide with it (fail-static).
    Untrusted,
    /// Never decide with it: reload.
    Outdated,
}

impl Slot {
    fn state(&self, now: u64, cleared_at: u64) -> SlotState {
        if !self.entry.is_current() {
            SlotState::Outdated
        } else if self.read_at <= cleared_at {
            SlotState::Untrusted
        } else if now < self.fresh_until {
            SlotState::Fresh
        } else if matches!(self.entry, Entry::Known(_)) {
            SlotState::Aging
        } else {
            SlotState::Outdated
        }
    }

    /// Whether this caller should refresh the slot (past its lifetime, and
    /// no other refresh started within the last second).
    fn claim_refresh(&self, now: u64) -> bool {
        let not_before = self.refresh_not_before.load(Ordering::Acquire);
        now >= not_before
            && self
                .refresh_not_before
                .compare_exchange(
                    not_before,
                    now.saturating_add(nanos(REFRESH_RETRY)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }
}

/// A failed load, with the entry it would have replaced if that may still
/// decide while storage is down.
#[derive(Debug)]
pub struct LoadError<E> {
    /// Why the load failed.
    pub error: E,
    /// What the cache held before: current, but not trusted or fresh.
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

/// When a check of entries against storage began, on the cache's clock: an
/// entry renewed by the check counts as read then ([`KeyCache::renew`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadStamp(u64);

/// Locks serializing loads per lookup id (by hash), without a lock per entry.
const LOAD_STRIPES: usize = 1024;
/// Pause between background refresh attempts of one entry.
const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// Loads of one lookup id in a row that may come back older than a version
/// heard of meanwhile (the key kept changing) before the caller decides
/// from the last one without caching it.
const MAX_OUTDATED_LOADS: usize = 3;
/// Most unknown lookup ids remembered.
const MAX_NEGATIVE_ENTRIES: u64 = 100_000;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What lookups found, counted for the metrics.
#[derive(Clone, Debug, Default)]
pub struct CacheCounters {
    /// Answered by a known key.
    pub hits: Counter,
    /// Answered by a remembered unknown lookup id.
    pub negative_hits: Counter,
    /// Had to load (absent, untrusted or outdated).
    pub misses: Counter,
}

/// Bounded cache of verified key snapshots, keyed by lookup id.
#[derive(Clone, Debug)]
pub struct KeyCache {
    known: Arc<Cache<LookupKey, Arc<Slot>>>,
    unknown: Arc<Cache<LookupKey, Arc<Slot>>>,
    loading: Arc<[Mutex<()>]>,
    hasher: RandomState,
    ttl: Duration,
    negative_ttl: Duration,
    origin: Instant,
    /// Changes announced so far (by [`KeyCache::invalidate`] and
    /// [`KeyCache::clear`]); a negative load that saw it move is not kept.
    changes: Arc<AtomicU64>,
    /// Cache-clock nanoseconds of the last [`KeyCache::clear`]: entries
    /// read before it are untrusted.
    cleared_at: Arc<AtomicU64>,
    counters: CacheCounters,
}

impl KeyCache {
    /// A cache of at most `capacity` known keys (and a smaller number of
    /// unknown lookup ids); known keys are fresh for about `ttl`, unknown
    /// lookup ids for `negative_ttl`.
    pub fn new(capacity: u64, ttl: Duration, negative_ttl: Duration) -> Self {
        let capacity = capacity.max(1);
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Self {
            known: Arc::new(Cache::new(to_usize(capacity))),
            unknown: Arc::new(Cache::new(to_usize(capacity.min(MAX_NEGATIVE_ENTRIES)))),
            loading: (0..LOAD_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
            ttl,
            negative_ttl,
            origin: Instant::now(),
            changes: Arc::new(AtomicU64::new(0)),
            cleared_at: Arc::new(AtomicU64::new(0)),
            counters: CacheCounters::default(),
        }
    }

    /// This cache, counting its lookups in `counters`.
    #[must_use]
    pub fn with_counters(mut self, counters: CacheCounters) -> Self {
        self.counters = counters;
        self
    }

    fn count_hit(&self, entry: &Entry) {
        match entry {
            Entry::Known(_) => self.counters.hits.inc(),
            Entry::Unknown => self.counters.negative_hits.inc(),
        };
    }

    /// Nanoseconds on the cache's clock; starts at 1 so that 0 means "never".
    fn now(&self) -> u64 {
        nanos(self.origin.elapsed()).saturating_add(1)
    }

    fn slot(&self, key: &LookupKey) -> Option<Arc<Slot>> {
        self.known.get(key).or_else(|| self.unknown.get(key))
    }

    /// The entry for `lookup_id`. A fresh entry, or a known key merely past
    /// its lifetime, is returned at once (the latter with `refresh` set for
    /// one caller); a missing, untrusted or outdated one is loaded with
    /// `load`, one load at a time per id.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        lookup_id: &str,
        load: F,
    ) -> Result<Lookup, LoadError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Entry, E>>,
    {
        let key = lookup_id_bytes(lookup_id);
        let now = self.now();
        let stale = match self.slot(&key) {
            Some(slot) => match slot.state(now, self.cleared_at.load(Ordering::Acquire)) {
                SlotState::Fresh => {
                    self.count_hit(&slot.entry);
                    return Ok(Lookup {
                        entry: slot.entry.clone(),
                        refresh: false,
                    });
                }
                SlotState::Aging => {
                    self.count_hit(&slot.entry);
                    return Ok(Lookup {
                        entry: slot.entry.clone(),
                        refresh: slot.claim_refresh(now),
                    });
                }
                SlotState::Untrusted => Some(slot.entry.clone()),
                SlotState::Outdated => None,
            },
            None => None,
        };
        self.counters.misses.inc();
        match self.load_into(key, load, false).await {
            Ok(entry) => Ok(Lookup {
                entry,
                refresh: false,
            }),
            Err(error) => Err(LoadError {
                error,
                // Re-check: a change may have arrived while loading.
                stale: stale.filter(Entry::is_current),
            }),
        }
    }

    /// Reloads `lookup_id` now, unless someone else just did or it was
    /// evicted meanwhile (then its next use loads it).
    pub async fn refresh<F, Fut, E>(&self, lookup_id: &str, load: F) -> Result<(), E>
    where
        F: Fn() -> Fut,
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
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Entry, E>>,
    {
        let _loading = self.load_lock(&key).lock().await;
        match self.slot(&key) {
            Some(slot) => {
                // Someone loaded it while this caller waited.
                let cleared_at = self.cleared_at.load(Ordering::Acquire);
                if slot.state(self.now(), cleared_at) == SlotState::Fresh {
                    return Ok(slot.entry.clone());
                }
            }
            None if refreshing => return Ok(Entry::Unknown),
            None => {}
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let read_at = self.now();
            let changes = self.changes.load(Ordering::SeqCst);
            let entry = load().await?;
            match &entry {
                Entry::Known(key_entry) if !key_entry.is_current() => {
                    // Read before a change this replica has heard of since:
                    // read again (the change is visible now), and never keep
                    // or decide from it unless the key keeps changing.
                    if attempt < MAX_OUTDATED_LOADS {
                        continue;
                    }
                    return Ok(entry);
                }
                Entry::Known(_) => {
                    self.unknown.remove(&key);
                    self.store(&self.known, key, &entry, read_at, self.lifetime());
                }
                Entry::Unknown => {
                    self.known.remove(&key);
                    let slot = self.store(&self.unknown, key, &entry, read_at, self.negative_ttl);
                    // A change announced during the load (a key created
                    // with this lookup id?) makes the answer doubtful: it
                    // is this caller's, not the cache's. The counter is
                    // bumped before the eviction, so either the eviction
                    // removes this slot or this check sees the bump.
                    if self.changes.load(Ordering::SeqCst) != changes {
                        self.unknown.remove_if(&key, |s| Arc::ptr_eq(s, &slot));
                    }
                }
            }
            return Ok(entry);
        }
    }

    /// The lock serializing loads (and renewals) of lookup id `key`.
    fn load_lock(&self, key: &LookupKey) -> &Mutex<()> {
        &self.loading[(self.hasher.hash_one(key) as usize) % self.loading.len()]
    }

    /// A known entry's lifetime: 50–100% of the configured one, so entries
    /// loaded together do not expire together.
    fn lifetime(&self) -> Duration {
        self.ttl.mul_f64(0.5 + 0.5 * rand::random::<f64>())
    }

    fn store(
        &self,
        cache: &Cache<LookupKey, Arc<Slot>>,
        key: LookupKey,
        entry: &Entry,
        read_at: u64,
        lifetime: Duration,
    ) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            entry: entry.clone(),
            read_at,
            fresh_until: read_at.saturating_add(nanos(lifetime)),
            refresh_not_before: AtomicU64::new(read_at.saturating_add(nanos(lifetime))),
        });
        cache.insert(key, slot.clone());
        slot
    }

    /// Now, for a check of entries against storage about to begin.
    pub fn stamp(&self) -> ReadStamp {
        ReadStamp(self.now())
    }

    /// Starts a new lifetime for `key`, the entry served for `lookup_id`,
    /// because storage still held its version at `read_at`: as if it had
    /// been read again then. Returns whether it did; it does not when the
    /// entry is no longer the one cached (changed, reloaded or evicted
    /// since), is no longer current, or the cache was cleared after
    /// `read_at`. A change noted after the check can still land between
    /// these tests and the store; the renewed entry then fails
    /// [`CachedKey::is_current`] on every read, as a load's would.
    pub async fn renew(&self, lookup_id: &str, key: &Arc<CachedKey>, read_at: ReadStamp) -> bool {
        let lookup = lookup_id_bytes(lookup_id);
        // Serialized with loads of this lookup id: one storing a newer
        // entry meanwhile is seen here, never overwritten.
        let _loading = self.load_lock(&lookup).lock().await;
        let Some(slot) = self.known.get(&lookup) else {
            return false;
        };
        let unchanged = matches!(&slot.entry, Entry::Known(cached) if Arc::ptr_eq(cached, key));
        if !unchanged
            || !key.is_current()
            || read_at.0 <= self.cleared_at.load(Ordering::Acquire)
            || read_at.0 <= slot.read_at
        {
            return false;
        }
        self.store(&self.known, lookup, &slot.entry, read_at.0, self.lifetime());
        true
    }

    /// Evicts these lookup ids (all credentials of a changed key). Whoever
    /// changed the key notes its new version in the key's runtime first
    /// ([`crate::hotpath::authorizer::Authorizer::note_change`]).
    pub fn invalidate<S: AsRef<str>>(&self, lookup_ids: &[S]) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        for id in lookup_ids {
            let key = lookup_id_bytes(id.as_ref());
            self.known.remove(&key);
            self.unknown.remove(&key);
        }
    }

    /// Distrusts every entry (for example after change notifications may
    /// have been lost): each is reloaded before its next use, but stays
    /// available as a fail-static fallback while storage is unreachable.
    pub fn clear(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.cleared_at.fetch_max(self.now(), Ordering::AcqRel);
    }

    /// Entries held now, fresh or stale, known or unknown (for metrics and
    /// tests).
    pub fn len(&self) -> usize {
        self.known.len() + self.unknown.len()
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
    use crate::hotpath::runtime::Runtimes;

    fn cache() -> KeyCache {
        KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(60))
    }

    /// A known key at `version`, sharing `runtime`.
    fn known_at(runtime: &Arc<KeyRuntime>, version: u64) -> Entry {
        let mut key = crate::fixtures::api_key("k", "abcdefgh");
        key.version = version;
        runtime.note_version(version);
        Entry::Known(Arc::new(CachedKey {
            snapshot: KeySnapshot::from(&key),
            runtime: runtime.clone(),
        }))
    }

    fn known() -> Entry {
        known_at(&Runtimes::default().get_or_create("k"), 1)
    }

    fn version_of(entry: &Entry) -> u64 {
        match entry {
            Entry::Known(key) => key.snapshot.version,
            Entry::Unknown => 0,
        }
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
                    .get_or_load("abcdefgh", || {
                        let loads = loads.clone();
                        async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, ()>(Entry::Unknown)
                        }
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
        let runtime = Runtimes::default().get_or_create("k");
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(known_at(&runtime, 1))
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

    fn cached(entry: &Entry) -> Arc<CachedKey> {
        match entry {
            Entry::Known(key) => key.clone(),
            Entry::Unknown => panic!("expected a known key"),
        }
    }

    /// A cache of 20 ms lifetimes holding a known key past its lifetime,
    /// loaded once; answers the cache, the entry served and its runtime.
    async fn aged() -> (KeyCache, Arc<CachedKey>, Arc<KeyRuntime>) {
        let cache = KeyCache::new(100, Duration::from_millis(20), Duration::from_secs(60));
        let runtime = Runtimes::default().get_or_create("k");
        let load = || async { Ok::<_, ()>(known_at(&runtime, 1)) };
        cache.get_or_load("abcdefgh", load).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        let due = cache.get_or_load("abcdefgh", load).await.unwrap();
        assert!(due.refresh, "past its lifetime");
        (cache, cached(&due.entry), runtime)
    }

    #[tokio::test]
    async fn a_renewed_entry_is_fresh_again_without_a_load() {
        let (cache, key, _) = aged().await;
        let read_at = cache.stamp();
        assert!(cache.renew("abcdefgh", &key, read_at).await);
        let loads = AtomicUsize::new(0);
        let after = cache
            .get_or_load("abcdefgh", || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(Entry::Unknown)
            })
            .await
            .unwrap();
        assert!(!after.refresh, "fresh again");
        assert!(Arc::ptr_eq(&cached(&after.entry), &key), "the same entry");
        assert_eq!(loads.load(Ordering::SeqCst), 0);
        assert!(
            !cache.renew("abcdefgh", &key, read_at).await,
            "a check no newer than the entry's read renews nothing"
        );
    }

    #[tokio::test]
    async fn a_renewal_never_outlives_a_change_a_reload_or_a_clear() {
        // A change noted after the check read the version: never renewed,
        // and never decides.
        let (cache, key, runtime) = aged().await;
        let read_at = cache.stamp();
        runtime.note_version(2);
        assert!(!cache.renew("abcdefgh", &key, read_at).await);
        let load = || async { Ok::<_, ()>(known_at(&runtime, 2)) };
        let now = cache.get_or_load("abcdefgh", load).await.unwrap();
        assert_eq!(version_of(&now.entry), 2, "reloaded, not the checked entry");

        // Evicted by a change's invalidation.
        let (cache, key, _) = aged().await;
        let read_at = cache.stamp();
        cache.invalidate(&["abcdefgh"]);
        assert!(!cache.renew("abcdefgh", &key, read_at).await);
        assert!(cache.is_empty(), "the renewal brought nothing back");

        // Reloaded meanwhile: the newer entry stays.
        let (cache, key, runtime) = aged().await;
        let read_at = cache.stamp();
        cache
            .refresh("abcdefgh", || async { Ok::<_, ()>(known_at(&runtime, 1)) })
            .await
            .unwrap();
        assert!(!cache.renew("abcdefgh", &key, read_at).await);

        // Cleared after the check began (notifications maybe lost): the
        // check proves nothing about what came after it.
        let (cache, key, _) = aged().await;
        let read_at = cache.stamp();
        cache.clear();
        assert!(!cache.renew("abcdefgh", &key, read_at).await);
        let loads = AtomicUsize::new(0);
        load_counting(&cache, &loads).await;
        assert_eq!(loads.load(Ordering::SeqCst), 1, "still reloaded before use");
    }

    #[tokio::test]
    async fn a_negative_load_that_raced_a_change_is_not_kept() {
        let cache = cache();
        let racing = cache.clone();
        let first = cache
            .get_or_load("abcdefgh", || {
                // A key with this lookup id is created while the load (which
                // found nothing) is in flight.
                racing.invalidate(&["abcdefgh"]);
                async { Ok::<_, ()>(Entry::Unknown) }
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
            "the raced negative load was kept"
        );
    }

    #[tokio::test]
    async fn an_entry_older_than_a_version_heard_of_never_decides() {
        let cache = cache();
        let runtime = Runtimes::default().get_or_create("k");
        cache
            .get_or_load("abcdefgh", || async { Ok::<_, ()>(known_at(&runtime, 1)) })
            .await
            .unwrap();
        // A change to version 2 is heard of (say, by a notification that
        // named other lookup ids, or before the eviction ran).
        runtime.note_version(2);
        let loads = AtomicUsize::new(0);
        let lookup = cache
            .get_or_load("abcdefgh", || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(known_at(&runtime, 2))
            })
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 1, "reloaded");
        assert_eq!(version_of(&lookup.entry), 2);
        // With storage down, an outdated entry is no fallback either.
        runtime.note_version(3);
        let err = cache
            .get_or_load("abcdefgh", || async { Err::<Entry, _>("database down") })
            .await
            .unwrap_err();
        assert!(err.stale.is_none(), "outdated entry offered as fallback");
    }

    #[tokio::test]
    async fn a_load_older_than_a_version_heard_of_is_read_again() {
        let cache = cache();
        let runtime = Runtimes::default().get_or_create("k");
        runtime.note_version(5);
        let loads = AtomicUsize::new(0);
        let lookup = cache
            .get_or_load("abcdefgh", || {
                // The first read comes back from before version 5.
                let version = if loads.fetch_add(1, Ordering::SeqCst) == 0 {
                    4
                } else {
                    5
                };
                let entry = known_at(&runtime, version);
                async move { Ok::<_, ()>(entry) }
            })
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        assert_eq!(version_of(&lookup.entry), 5);
        // A key that keeps changing: after a few outdated reads the caller
        // decides from the last one, which is not cached.
        runtime.note_version(9);
        let loads = AtomicUsize::new(0);
        let lookup = cache
            .get_or_load("abcdefgh", || {
                loads.fetch_add(1, Ordering::SeqCst);
                let mut key = crate::fixtures::api_key("k", "abcdefgh");
                key.version = 8;
                let entry = Entry::Known(Arc::new(CachedKey {
                    snapshot: KeySnapshot::from(&key),
                    runtime: runtime.clone(),
                }));
                async move { Ok::<_, ()>(entry) }
            })
            .await
            .unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), MAX_OUTDATED_LOADS);
        assert_eq!(version_of(&lookup.entry), 8);
        let again = cache
            .get_or_load("abcdefgh", || async { Ok::<_, ()>(known_at(&runtime, 9)) })
            .await
            .unwrap();
        assert_eq!(version_of(&again.entry), 9, "the outdated read was cached");
    }

    #[tokio::test]
    async fn a_failed_reload_hands_back_the_untrusted_entry() {
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

    #[tokio::test]
    async fn unknown_ids_cannot_push_out_known_keys() {
        let cache = KeyCache::new(10, Duration::from_secs(60), Duration::from_secs(60));
        cache
            .get_or_load("abcdefgh", || async { Ok::<_, ()>(known()) })
            .await
            .unwrap();
        for i in 0..1000 {
            cache
                .get_or_load(&format!("{i:08}"), || async { Ok::<_, ()>(Entry::Unknown) })
                .await
                .unwrap();
        }
        let loads = AtomicUsize::new(0);
        let lookup = cache
            .get_or_load("abcdefgh", || async {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(known())
            })
            .await
            .unwrap();
        assert!(matches!(lookup.entry, Entry::Known(_)));
        assert_eq!(loads.load(Ordering::SeqCst), 0, "the known key was evicted");
    }
}
