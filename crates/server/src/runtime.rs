//! Per-key mutable state of the hot path, in one [`KeyRuntime`] per key id:
//! the rate-limit state, the usage not yet written, and the newest version
//! of the key this replica has heard of.
//!
//! Runtimes live in [`Runtimes`], not in the cache: a key's cache entries
//! (one per lookup id: a rotation grace period has two) point at its runtime,
//! but an eviction, a reload, an edit or a rotation leaves it where it is, so
//! none of them hands a key a fresh allowance or loses counted usage. A
//! runtime is dropped only once it is idle on its own terms ([`Runtimes::prune`]):
//! no cache entry or pending work holds it, its allowance is back to full,
//! and nothing happened to it for a while.
//!
//! Authorize touches only the runtime it already holds: atomics for the
//! limiter and the version, a per-key mutex for usage, and the shared dirty
//! lists only when a key turns dirty (once per flush or sync interval).

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

/// What a replica knows of one key's consumption in the current shared window.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) window_start: i64,
    /// Requests this replica has reported for the window.
    pub(crate) own: u64,
    /// Requests of other replicas already charged to the local state.
    pub(crate) others_charged: u64,
}

/// Uses of one credential not yet written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PendingUse {
    pub(crate) lookup_id: [u8; 8],
    pub(crate) last_used_at: DateTime<Utc>,
    pub(crate) requests: u64,
}

/// A key's unwritten uses, per credential. The first credential is stored
/// inline: almost every key has one secret in use, and a heap allocation
/// per key would be most of its cost.
#[derive(Debug, Default)]
pub(crate) struct PendingUses {
    first: Option<PendingUse>,
    more: Vec<PendingUse>,
}

impl PendingUses {
    /// Adds `requests` uses of `lookup_id`, the newest at `at`.
    pub(crate) fn add(&mut self, lookup_id: [u8; 8], at: DateTime<Utc>, requests: u64) {
        let slot = match &mut self.first {
            Some(first) if first.lookup_id == lookup_id => Some(first),
            Some(_) => self.more.iter_mut().find(|u| u.lookup_id == lookup_id),
            None => {
                self.first = Some(PendingUse {
                    lookup_id,
                    last_used_at: at,
                    requests,
                });
                return;
            }
        };
        match slot {
            Some(pending) => {
                pending.requests += requests;
                pending.last_used_at = pending.last_used_at.max(at);
            }
            None => self.more.push(PendingUse {
                lookup_id,
                last_used_at: at,
                requests,
            }),
        }
    }

    /// The pending use of a credential.
    pub(crate) fn get(&self, lookup_id: &[u8]) -> Option<&PendingUse> {
        self.first
            .iter()
            .chain(&self.more)
            .find(|u| u.lookup_id.as_slice() == lookup_id)
    }

    /// Takes every pending use, leaving none.
    pub(crate) fn take(&mut self) -> Vec<PendingUse> {
        let first = self.first.take();
        first
            .into_iter()
            .chain(std::mem::take(&mut self.more))
            .collect()
    }
}

/// The hot path's mutable state for one key.
#[derive(Debug)]
pub struct KeyRuntime {
    pub(crate) key_id: Arc<str>,
    /// The highest version of the key heard of: from this replica's own
    /// changes, change notifications, and loads. A snapshot below it is out
    /// of date ([`crate::cache::CachedKey::is_current`]).
    latest_version: AtomicU64,
    /// Seconds after the registry's origin of the last sign of life (created,
    /// loaded or changed); idle expiry counts from here.
    touched: AtomicU64,
    /// GCRA theoretical arrival time, in limiter nanoseconds.
    pub(crate) tat: AtomicU64,
    /// Emission interval of the quota last applied.
    pub(crate) interval: AtomicU64,
    /// Requests allowed here since the last cross-replica sync.
    pub(crate) unsynced: AtomicU64,
    pub(crate) rate_dirty: AtomicBool,
    pub(crate) ledger: Mutex<Ledger>,
    pub(crate) usage: Mutex<PendingUses>,
    pub(crate) usage_dirty: AtomicBool,
}

impl KeyRuntime {
    fn new(key_id: Arc<str>, now_secs: u64) -> Self {
        Self {
            key_id,
            latest_version: AtomicU64::new(0),
            touched: AtomicU64::new(now_secs),
            tat: AtomicU64::new(0),
            interval: AtomicU64::new(0),
            unsynced: AtomicU64::new(0),
            rate_dirty: AtomicBool::new(false),
            ledger: Mutex::new(Ledger::default()),
            usage: Mutex::new(PendingUses::default()),
            usage_dirty: AtomicBool::new(false),
        }
    }

    /// The key this state belongs to.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Records that the key exists at `version` (or later). Never goes back.
    pub fn note_version(&self, version: u64) {
        self.latest_version.fetch_max(version, Ordering::AcqRel);
    }

    /// The highest version of the key heard of; 0 if none yet.
    pub fn latest_version(&self) -> u64 {
        self.latest_version.load(Ordering::Acquire)
    }

    fn touch(&self, now_secs: u64) {
        self.touched.fetch_max(now_secs, Ordering::Relaxed);
    }
}

/// Shards of the registry: loads, changes and pruning of different keys
/// rarely wait on each other.
const SHARDS: usize = 64;

/// How long a runtime must have been idle before [`Runtimes::prune`] may drop
/// it. Far longer than any storage load may take (a load that read a key
/// before a change must find the runtime that heard of the change), and long
/// enough that a key used now and then keeps its state.
pub const MIN_IDLE: Duration = Duration::from_secs(120);

/// One shard of [`Runtimes`].
type Shard = Mutex<HashMap<Arc<str>, Arc<KeyRuntime>>>;

/// Every key's runtime, by key id. Holds them itself: a runtime outlives the
/// cache entries that point at it until it is idle (see [`Runtimes::prune`]).
#[derive(Debug)]
pub struct Runtimes {
    shards: Box<[Shard]>,
    hasher: RandomState,
    origin: Instant,
}

impl Default for Runtimes {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            origin: Instant::now(),
        }
    }
}

impl Runtimes {
    fn shard(&self, key_id: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<KeyRuntime>>> {
        let index = (self.hasher.hash_one(key_id) as usize) % self.shards.len();
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_secs(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    /// The runtime of `key_id`, created if there is none. Called on cache
    /// loads and changes, never per request.
    pub fn get_or_create(&self, key_id: &str) -> Arc<KeyRuntime> {
        let now = self.now_secs();
        let mut shard = self.shard(key_id);
        if let Some(runtime) = shard.get(key_id) {
            runtime.touch(now);
            return runtime.clone();
        }
        let key_id: Arc<str> = key_id.into();
        let runtime = Arc::new(KeyRuntime::new(key_id.clone(), now));
        shard.insert(key_id, runtime.clone());
        runtime
    }

    /// The runtime of `key_id`, if there is one.
    pub fn get(&self, key_id: &str) -> Option<Arc<KeyRuntime>> {
        self.shard(key_id).get(key_id).cloned()
    }

    /// Marks a runtime as alive now (work was done for it).
    pub fn touch(&self, runtime: &KeyRuntime) {
        runtime.touch(self.now_secs());
    }

    /// How many runtimes are held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no runtime is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops runtimes that are idle: held by nothing but this registry (no
    /// cache entry, no dirty list, no load in flight), with no unwritten
    /// usage or unreported requests, `at_rest` (the limiter says the
    /// allowance is full again and nothing of the current shared window is
    /// remembered), and untouched for [`MIN_IDLE`]. Returns how many are left.
    pub fn prune(&self, at_rest: impl Fn(&KeyRuntime) -> bool) -> usize {
        self.prune_idle_for(MIN_IDLE, at_rest)
    }

    pub(crate) fn prune_idle_for(
        &self,
        idle: Duration,
        at_rest: impl Fn(&KeyRuntime) -> bool,
    ) -> usize {
        let now = self.now_secs();
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, runtime| {
                let idle_since = runtime.touched.load(Ordering::Relaxed);
                let removable = Arc::strong_count(runtime) == 1
                    && now.saturating_sub(idle_since) >= idle.as_secs()
                    && !runtime.usage_dirty.load(Ordering::Acquire)
                    && !runtime.rate_dirty.load(Ordering::Acquire)
                    && at_rest(runtime);
                !removable
            });
            left += shard.len();
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_uses_merge_per_credential() {
        let mut uses = PendingUses::default();
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(1);
        uses.add(*b"aaaaaaaa", t1, 1);
        uses.add(*b"aaaaaaaa", t0, 2);
        uses.add(*b"bbbbbbbb", t0, 1);
        uses.add(*b"bbbbbbbb", t1, 1);
        assert_eq!(
            uses.get(b"aaaaaaaa").map(|u| (u.requests, u.last_used_at)),
            Some((3, t1))
        );
        assert_eq!(
            uses.get(b"bbbbbbbb").map(|u| (u.requests, u.last_used_at)),
            Some((2, t1))
        );
        assert_eq!(uses.take().len(), 2);
        assert!(uses.get(b"aaaaaaaa").is_none());
        assert!(uses.take().is_empty());
    }

    #[test]
    fn one_runtime_per_key_until_idle() {
        let runtimes = Runtimes::default();
        let a = runtimes.get_or_create("k1");
        let b = runtimes.get_or_create("k1");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &runtimes.get_or_create("k2")));
        // Not idle long enough: both stay, held or not.
        assert_eq!(runtimes.prune(|_| true), 2);
        // Idle, but held (a cache entry points at it): stays.
        assert_eq!(runtimes.prune_idle_for(Duration::ZERO, |_| true), 1);
        assert!(runtimes.get("k2").is_none());
        drop((a, b));
        // Nobody holds it, but the limiter is not at rest: stays.
        assert_eq!(runtimes.prune_idle_for(Duration::ZERO, |_| false), 1);
        // Unwritten usage keeps it too.
        runtimes
            .get("k1")
            .unwrap()
            .usage_dirty
            .store(true, Ordering::Release);
        assert_eq!(runtimes.prune_idle_for(Duration::ZERO, |_| true), 1);
        runtimes
            .get("k1")
            .unwrap()
            .usage_dirty
            .store(false, Ordering::Release);
        assert_eq!(runtimes.prune_idle_for(Duration::ZERO, |_| true), 0);
        assert!(runtimes.get("k1").is_none());
    }

    #[test]
    fn versions_only_move_forward() {
        let runtimes = Runtimes::default();
        let runtime = runtimes.get_or_create("k1");
        assert_eq!(runtime.latest_version(), 0);
        runtime.note_version(3);
        runtime.note_version(2);
        assert_eq!(runtime.latest_version(), 3);
        // Whoever finds the runtime later sees what was heard.
        drop(runtime);
        assert_eq!(runtimes.get_or_create("k1").latest_version(), 3);
    }
}
