//! Per-key mutable state of the hot path, in one [`KeyRuntime`] per key id:
//! the rate-limit state, the usage not yet written (last uses and hourly
//! request counts), and the newest version
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
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use keygate_domain::usage::{BUCKET_SECS, UsageBucket, UsageCounts, UseOutcome};

/// What a replica knows of one key's consumption in the current shared window.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub(crate) window_start: i64,
    /// Requests this replica has reported for the window.
    pub(crate) own: u64,
    /// Requests of other replicas already charged to the local state.
    pub(crate) others_charged: u64,
}

/// The newest use of one credential not yet written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LastUse {
    pub(crate) lookup_id: [u8; 8],
    pub(crate) at: DateTime<Utc>,
}

/// Requests of one key in one hour not yet written. Compact (16 bytes):
/// hours since the epoch and 32-bit counts, which one flush interval
/// cannot fill (they saturate rather than wrap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HourTally {
    /// Hours since the unix epoch; with no requests counted, unused.
    hour: u32,
    allowed: u32,
    rate_limited: u32,
    denied: u32,
}

impl HourTally {
    fn is_empty(&self) -> bool {
        self.allowed == 0 && self.rate_limited == 0 && self.denied == 0
    }

    fn add(&mut self, outcome: UseOutcome, n: u64) {
        let counter = match outcome {
            UseOutcome::Allowed => &mut self.allowed,
            UseOutcome::RateLimited => &mut self.rate_limited,
            UseOutcome::Denied => &mut self.denied,
        };
        *counter = counter.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn add_counts(&mut self, counts: &UsageCounts) {
        self.add(UseOutcome::Allowed, counts.allowed);
        self.add(UseOutcome::RateLimited, counts.denied_rate_limited);
        self.add(UseOutcome::Denied, counts.denied_other);
    }

    /// This tally as a bucket of the domain's usage model.
    pub(crate) fn bucket(&self) -> UsageBucket {
        UsageBucket {
            hour_start: i64::from(self.hour) * BUCKET_SECS,
            counts: UsageCounts {
                allowed: u64::from(self.allowed),
                denied_rate_limited: u64::from(self.rate_limited),
                denied_other: u64::from(self.denied),
            },
        }
    }
}

/// The hour (since the epoch) holding `unix_secs`, as [`HourTally`] keeps it.
fn hour_of(unix_secs: i64) -> u32 {
    u32::try_from(unix_secs.div_euclid(BUCKET_SECS)).unwrap_or(0)
}

/// What is rare: a second credential in use (a rotation's grace period) or
/// a second hour pending (a flush across the hour, or storage down).
#[derive(Debug, Default)]
struct Overflow {
    last_uses: Vec<LastUse>,
    tallies: Vec<HourTally>,
}

/// A key's usage not yet written: per credential its newest use (only when
/// it is due for writing, see `UsageRecorder`), and request counts per hour.
/// The common case (one credential, one hour) is stored inline: a heap
/// allocation per key would be most of its cost.
#[derive(Debug, Default)]
pub(crate) struct PendingUsage {
    last_use: Option<LastUse>,
    tally: HourTally,
    overflow: Option<Box<Overflow>>,
}

impl PendingUsage {
    /// Notes a use of `lookup_id` at `at`, keeping the newest per credential.
    pub(crate) fn note_use(&mut self, lookup_id: [u8; 8], at: DateTime<Utc>) {
        let slot = match &mut self.last_use {
            None => {
                self.last_use = Some(LastUse { lookup_id, at });
                return;
            }
            Some(first) if first.lookup_id == lookup_id => Some(first),
            Some(_) => self
                .overflow
                .as_mut()
                .and_then(|o| o.last_uses.iter_mut().find(|u| u.lookup_id == lookup_id)),
        };
        match slot {
            Some(pending) => pending.at = pending.at.max(at),
            None => self
                .overflow
                .get_or_insert_with(Box::default)
                .last_uses
                .push(LastUse { lookup_id, at }),
        }
    }

    /// Counts `n` requests with `outcome` in the hour holding `unix_secs`.
    pub(crate) fn count(&mut self, unix_secs: i64, outcome: UseOutcome, n: u64) {
        self.tally_for(hour_of(unix_secs)).add(outcome, n);
    }

    /// Adds counts taken earlier (a flush that failed) back.
    pub(crate) fn count_bucket(&mut self, bucket: &UsageBucket) {
        if !bucket.counts.is_empty() {
            self.tally_for(hour_of(bucket.hour_start))
                .add_counts(&bucket.counts);
        }
    }

    /// The tally of `hour`: the inline one when it is that hour (or holds
    /// nothing yet); for a later hour the inline one moves aside until the
    /// next flush; an earlier hour (a request stamped before the hour
    /// turned, a failed flush put back) lives in the overflow.
    fn tally_for(&mut self, hour: u32) -> &mut HourTally {
        if self.tally.is_empty() {
            self.tally.hour = hour;
        }
        if self.tally.hour == hour {
            return &mut self.tally;
        }
        let overflow = self.overflow.get_or_insert_with(Box::default);
        if self.tally.hour < hour {
            let fresh = HourTally {
                hour,
                ..HourTally::default()
            };
            overflow
                .tallies
                .push(std::mem::replace(&mut self.tally, fresh));
            return &mut self.tally;
        }
        match overflow.tallies.iter().position(|t| t.hour == hour) {
            Some(index) => &mut overflow.tallies[index],
            None => {
                overflow.tallies.push(HourTally {
                    hour,
                    ..HourTally::default()
                });
                overflow
                    .tallies
                    .last_mut()
                    .unwrap_or_else(|| unreachable!("just pushed"))
            }
        }
    }

    /// The pending use of a credential.
    pub(crate) fn last_use(&self, lookup_id: &[u8]) -> Option<&LastUse> {
        self.last_use
            .iter()
            .chain(self.overflow.iter().flat_map(|o| o.last_uses.iter()))
            .find(|u| u.lookup_id.as_slice() == lookup_id)
    }

    /// The pending counts, one bucket per hour.
    pub(crate) fn buckets(&self) -> impl Iterator<Item = UsageBucket> + '_ {
        std::iter::once(&self.tally)
            .chain(self.overflow.iter().flat_map(|o| o.tallies.iter()))
            .filter(|t| !t.is_empty())
            .map(HourTally::bucket)
    }

    /// Every pending last use (they stay pending until
    /// [`PendingUsage::forget_written`]).
    pub(crate) fn last_uses(&self) -> Vec<LastUse> {
        self.last_use
            .iter()
            .chain(self.overflow.iter().flat_map(|o| o.last_uses.iter()))
            .copied()
            .collect()
    }

    /// Drops the pending last uses that `written` (now in storage) covers;
    /// a use newer than what was written stays for the next flush.
    pub(crate) fn forget_written(&mut self, written: &[LastUse]) {
        let covered = |u: &LastUse| {
            written
                .iter()
                .any(|w| w.lookup_id == u.lookup_id && u.at <= w.at)
        };
        if self.last_use.as_ref().is_some_and(covered) {
            self.last_use = None;
        }
        if let Some(overflow) = &mut self.overflow {
            overflow.last_uses.retain(|u| !covered(u));
            if self.last_use.is_none() && !overflow.last_uses.is_empty() {
                self.last_use = Some(overflow.last_uses.remove(0));
            }
        }
        self.shrink();
    }

    /// Takes every pending count, leaving none.
    pub(crate) fn take_buckets(&mut self) -> Vec<UsageBucket> {
        let taken = self.buckets().collect();
        self.tally = HourTally::default();
        if let Some(overflow) = &mut self.overflow {
            overflow.tallies.clear();
        }
        self.shrink();
        taken
    }

    /// Frees the overflow once it holds nothing.
    fn shrink(&mut self) {
        if self
            .overflow
            .as_ref()
            .is_some_and(|o| o.last_uses.is_empty() && o.tallies.is_empty())
        {
            self.overflow = None;
        }
    }
}

/// The hot path's mutable state for one key.
#[derive(Debug)]
pub struct KeyRuntime {
    pub(crate) key_id: Arc<str>,
    /// The highest version of the key heard of: from this replica's own
    /// changes, change notifications, and loads. A snapshot below it is out
    /// of date ([`crate::hotpath::cache::CachedKey::is_current`]).
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
    pub(crate) usage: Mutex<PendingUsage>,
    /// Unix seconds of the newest `last_used_at` known to be stored for the
    /// key (loaded, or written by this replica); 0 if none.
    pub(crate) last_used_stored: AtomicI64,
    /// Listed for the last-used flush.
    pub(crate) last_used_dirty: AtomicBool,
    /// Listed for the request-count flush.
    pub(crate) counts_dirty: AtomicBool,
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
            usage: Mutex::new(PendingUsage::default()),
            last_used_stored: AtomicI64::new(0),
            last_used_dirty: AtomicBool::new(false),
            counts_dirty: AtomicBool::new(false),
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

    /// The key's unwritten usage, locked.
    pub(crate) fn pending_usage(&self) -> MutexGuard<'_, PendingUsage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
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
    /// The next shard [`Runtimes::prune_some`] looks at.
    next_shard: AtomicU64,
}

impl Default for Runtimes {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            origin: Instant::now(),
            next_shard: AtomicU64::new(0),
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

    /// [`Runtimes::prune`] over `shards` of the [`SHARDS`] shards, the
    /// next ones after those the previous call looked at: a periodic caller
    /// sweeps every runtime once per `SHARDS / shards` calls, and each call
    /// costs a fraction of a full sweep (at a million keys a full one is
    /// ~100 ms of cold memory reads). Returns how many runtimes the shards
    /// looked at still hold.
    pub fn prune_some(&self, shards: usize, at_rest: impl Fn(&KeyRuntime) -> bool) -> usize {
        let count = shards.clamp(1, self.shards.len());
        let start = self.next_shard.fetch_add(count as u64, Ordering::Relaxed);
        let now = self.now_secs();
        (0..count)
            .map(|i| {
                let index = (start as usize + i) % self.shards.len();
                self.prune_shard(&self.shards[index], now, MIN_IDLE, &at_rest)
            })
            .sum()
    }

    pub(crate) fn prune_idle_for(
        &self,
        idle: Duration,
        at_rest: impl Fn(&KeyRuntime) -> bool,
    ) -> usize {
        let now = self.now_secs();
        self.shards
            .iter()
            .map(|shard| self.prune_shard(shard, now, idle, &at_rest))
            .sum()
    }

    fn prune_shard(
        &self,
        shard: &Shard,
        now: u64,
        idle: Duration,
        at_rest: &impl Fn(&KeyRuntime) -> bool,
    ) -> usize {
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        shard.retain(|_, runtime| {
            let idle_since = runtime.touched.load(Ordering::Relaxed);
            let removable = Arc::strong_count(runtime) == 1
                && now.saturating_sub(idle_since) >= idle.as_secs()
                && !runtime.last_used_dirty.load(Ordering::Acquire)
                && !runtime.counts_dirty.load(Ordering::Acquire)
                && !runtime.rate_dirty.load(Ordering::Acquire)
                && at_rest(runtime);
            !removable
        });
        shard.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_last_uses_keep_the_newest_per_credential() {
        let mut usage = PendingUsage::default();
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(1);
        usage.note_use(*b"aaaaaaaa", t1);
        usage.note_use(*b"aaaaaaaa", t0);
        usage.note_use(*b"bbbbbbbb", t0);
        usage.note_use(*b"bbbbbbbb", t1);
        assert_eq!(usage.last_use(b"aaaaaaaa").map(|u| u.at), Some(t1));
        assert_eq!(usage.last_use(b"bbbbbbbb").map(|u| u.at), Some(t1));
        let written = usage.last_uses();
        assert_eq!(written.len(), 2);
        // A newer use of one credential arrives while the two are written.
        let t2 = t1 + chrono::Duration::seconds(1);
        usage.note_use(*b"bbbbbbbb", t2);
        usage.forget_written(&written);
        assert!(usage.last_use(b"aaaaaaaa").is_none());
        assert_eq!(usage.last_use(b"bbbbbbbb").map(|u| u.at), Some(t2));
        usage.forget_written(&usage.last_uses());
        assert!(usage.last_uses().is_empty());
        assert!(usage.overflow.is_none(), "an empty overflow is freed");
    }

    #[test]
    fn counts_are_kept_per_hour_and_outcome() {
        let mut usage = PendingUsage::default();
        let h = 1_800_000_000; // a multiple of 3600: the start of an hour
        usage.count(h + 10, UseOutcome::Allowed, 1);
        usage.count(h + 20, UseOutcome::Allowed, 1);
        usage.count(h + 30, UseOutcome::RateLimited, 1);
        assert!(usage.overflow.is_none(), "one hour stays inline");
        // The hour turns; then a request stamped before it arrives late.
        usage.count(h + 3600, UseOutcome::Denied, 1);
        usage.count(h + 3599, UseOutcome::Allowed, 1);
        usage.count(h - 3600, UseOutcome::Allowed, u64::MAX);
        let mut buckets = usage.take_buckets();
        buckets.sort_by_key(|b| b.hour_start);
        let got: Vec<(i64, u64, u64, u64)> = buckets
            .iter()
            .map(|b| {
                (
                    b.hour_start,
                    b.counts.allowed,
                    b.counts.denied_rate_limited,
                    b.counts.denied_other,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (h - 3600, u64::from(u32::MAX), 0, 0),
                (h, 3, 1, 0),
                (h + 3600, 0, 0, 1),
            ]
        );
        assert_eq!(usage.buckets().count(), 0);
        assert!(usage.overflow.is_none());
        // A failed flush puts them back, merged with what came since.
        usage.count(h + 3600, UseOutcome::Denied, 1);
        for bucket in &buckets {
            usage.count_bucket(bucket);
        }
        let mut again = usage.take_buckets();
        again.sort_by_key(|b| b.hour_start);
        assert_eq!(again.len(), 3);
        assert_eq!(again[1].counts, buckets[1].counts);
        assert_eq!(again[2].counts.denied_other, 2);
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
            .last_used_dirty
            .store(true, Ordering::Release);
        assert_eq!(runtimes.prune_idle_for(Duration::ZERO, |_| true), 1);
        runtimes
            .get("k1")
            .unwrap()
            .last_used_dirty
            .store(false, Ordering::Release);
        assert_eq!(runtimes.prune_idle_for(Duration::ZERO, |_| true), 0);
        assert!(runtimes.get("k1").is_none());
    }

    #[test]
    fn prune_some_sweeps_a_few_shards_per_call() {
        let runtimes = Runtimes::default();
        for i in 0..500 {
            drop(runtimes.get_or_create(&format!("k{i}")));
        }
        // Not idle for MIN_IDLE yet: nothing goes, whichever shards.
        let looked_at: usize = (0..SHARDS / 4)
            .map(|_| runtimes.prune_some(4, |_| true))
            .sum();
        assert_eq!(
            looked_at, 500,
            "SHARDS / 4 calls of 4 shards see every runtime once"
        );
        assert_eq!(runtimes.len(), 500);
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
