//! Usage recorded by Authorize and management authentication: when a key
//! (and each of its credentials) was last used, and how many requests it
//! made per hour, allowed or denied. Gathered in each key's [`KeyRuntime`]
//! and written by a background flusher, so the hot path never writes to
//! storage.
//!
//! The write load is bounded by keys, not requests:
//! - `last_used_at` has a precision (`--last-used-precision`, default 60 s):
//!   a use is only kept for writing when nothing, or nothing as recent as
//!   the precision allows, is known to be stored for the key. Each active
//!   key is written at most once per precision (per replica).
//! - Request counts are kept per key per hour and added to storage by
//!   set-based upserts on their own, longer interval
//!   (`--usage-count-flush-interval`, default 60 s): one row per active key
//!   per interval, whatever the request rate.
//! - A due use is written with the next count flush, in the same
//!   transaction as the key's counts: one large batch a minute instead of
//!   twelve small ones. On SQLite a commit writes every page its rows
//!   touched, and at a million keys a small batch pays a page per row (a
//!   row cost 4.5 µs in batches of 83 000, 1.8 µs in one of a million).
//!   Only a key's first use goes with the next last-used flush
//!   (`--usage-flush-interval`, 5 s). A stored `last_used_at` therefore
//!   trails the last use by at most the precision plus the count interval
//!   (2 min by default).
//!
//! A failed flush puts its batch back for the next one; a graceful stop
//! flushes both. A kill loses at most one interval of each.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use keygate_domain::usage::{UsageBucket, UseOutcome};
use keygate_persistence::{HourlyUsage, LastUsed, Store, StoreError};
use tokio::{sync::watch, time::Instant};

use crate::{
    hotpath::dirty::DirtyList,
    hotpath::runtime::{KeyRuntime, LastUse, Runtimes},
    metrics::{Flush, Metrics},
};

/// Keys one transaction of a flush covers. A flush of a million keys in
/// one transaction held a few hundred MB of rows at once (counted in the
/// benchmark's bytes per cached key when it fell in the warm-up) and
/// SQLite's write lock for seconds. Keys are taken in key order, so each
/// transaction covers one key range: on SQLite a page is still written
/// once per flush however the flush is cut, and replicas still lock rows
/// in one order.
const KEYS_PER_TRANSACTION: usize = 20_000;

/// Takes the keys listed in `list`, in key order.
///
/// Sorting the runtimes themselves would compare through two pointers per
/// side (the runtime, then its id), at a million keys mostly cache misses.
/// The sort runs on the ids' first 16 bytes and the keys' positions
/// instead, comparing whole ids only where those bytes tie.
fn take_in_key_order(list: &DirtyList) -> Vec<Arc<KeyRuntime>> {
    let keys = list.take();
    let prefix = |id: &str| {
        let mut bytes = [0u8; 16];
        let n = id.len().min(16);
        bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        u128::from_be_bytes(bytes)
    };
    let mut order: Vec<(u128, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, runtime)| (prefix(&runtime.key_id), i))
        .collect();
    order.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| keys[a.1].key_id.cmp(&keys[b.1].key_id))
    });
    let mut slots: Vec<Option<Arc<KeyRuntime>>> = keys.into_iter().map(Some).collect();
    order
        .into_iter()
        .filter_map(|(_, i)| slots[i].take())
        .collect()
}

/// The rows storage keeps for `batch`'s uses.
fn last_used_rows(batch: &[(Arc<KeyRuntime>, Vec<LastUse>)]) -> Vec<LastUsed> {
    batch
        .iter()
        .flat_map(|(runtime, uses)| {
            uses.iter().map(|u| LastUsed {
                key_id: Arc::clone(&runtime.key_id),
                lookup_id: String::from_utf8_lossy(&u.lookup_id).into(),
                at: u.at,
            })
        })
        .collect()
}

/// How often hourly counts older than the retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The flusher's schedule.
#[derive(Clone, Copy, Debug)]
pub struct FlushSchedule {
    /// How often last uses are written.
    pub last_used: Duration,
    /// How often request counts are written.
    pub counts: Duration,
    /// How long hourly counts are kept.
    pub retention: Duration,
}

/// Usage not yet written, and the keys it belongs to.
#[derive(Debug)]
pub struct UsageRecorder {
    /// Seconds a stored `last_used_at` may lag behind the real last use
    /// before a use is due for writing (with the next count flush).
    precision_secs: i64,
    /// Keys per transaction of a flush ([`KEYS_PER_TRANSACTION`]).
    keys_per_transaction: usize,
    last_used: DirtyList,
    counts: DirtyList,
}

impl UsageRecorder {
    /// A recorder writing `last_used_at` with `precision`.
    pub fn new(precision: Duration) -> Self {
        Self {
            precision_secs: i64::try_from(precision.as_secs()).unwrap_or(i64::MAX),
            keys_per_transaction: KEYS_PER_TRANSACTION,
            last_used: DirtyList::new(|r| &r.last_used_dirty),
            counts: DirtyList::new(|r| &r.counts_dirty),
        }
    }

    /// The same, cutting flushes into transactions of `keys` keys.
    #[cfg(test)]
    fn with_keys_per_transaction(mut self, keys: usize) -> Self {
        self.keys_per_transaction = keys.max(1);
        self
    }

    /// Notes one authenticated request of a key, through its credential
    /// `lookup_id`, with `outcome`. Allowed requests also count as a use.
    pub fn record(
        &self,
        runtime: &Arc<KeyRuntime>,
        lookup_id: [u8; 8],
        at: DateTime<Utc>,
        outcome: UseOutcome,
    ) {
        let secs = at.timestamp();
        let stored = runtime.last_used_stored.load(Ordering::Relaxed);
        let due =
            outcome == UseOutcome::Allowed && secs.saturating_sub(stored) >= self.precision_secs;
        {
            let mut usage = runtime.pending_usage();
            usage.count(secs, outcome, 1);
            if due {
                usage.note_use(lookup_id, at);
            }
        }
        // Every request lists the key for the count flush, which also
        // writes its due uses; a first use goes with the next, sooner,
        // last-used flush.
        self.counts.mark(runtime);
        if due && stored == 0 {
            self.last_used.mark(runtime);
        }
    }

    /// Notes that the key's stored `last_used_at` is `at` or later (it was
    /// loaded, or written).
    pub fn note_stored(runtime: &KeyRuntime, at: Option<DateTime<Utc>>) {
        if let Some(at) = at {
            runtime
                .last_used_stored
                .fetch_max(at.timestamp(), Ordering::AcqRel);
        }
    }

    /// The newest use of a credential not yet written, if any.
    pub fn pending_last_used(
        &self,
        runtimes: &Runtimes,
        key_id: &str,
        lookup_id: &str,
    ) -> Option<DateTime<Utc>> {
        let runtime = runtimes.get(key_id)?;
        let usage = runtime.pending_usage();
        usage.last_use(lookup_id.as_bytes()).map(|u| u.at)
    }

    /// Request counts of a key not yet written, per hour.
    pub fn pending_counts(&self, runtimes: &Runtimes, key_id: &str) -> Vec<UsageBucket> {
        let Some(runtime) = runtimes.get(key_id) else {
            return Vec::new();
        };
        let usage = runtime.pending_usage();
        usage.buckets().collect()
    }

    /// Writes the pending last uses of the keys listed for this flush (first
    /// uses), in transactions of [`KEYS_PER_TRANSACTION`] keys; returns how
    /// many credentials it covered. The uses stay pending (and visible to
    /// [`UsageRecorder::pending_last_used`]) until the write commits, so a
    /// reader never sees a use in neither place; on failure they are simply
    /// written by the next attempt.
    pub async fn flush_last_used(&self, store: &Store) -> Result<usize, StoreError> {
        let keys = take_in_key_order(&self.last_used);
        let mut written = 0;
        for (i, chunk) in keys.chunks(self.keys_per_transaction).enumerate() {
            let batch: Vec<_> = chunk
                .iter()
                .map(|runtime| (runtime.clone(), runtime.pending_usage().last_uses()))
                .filter(|(_, uses)| !uses.is_empty())
                .collect();
            if batch.is_empty() {
                continue;
            }
            let rows = last_used_rows(&batch);
            if let Err(err) = store.record_last_used(&rows).await {
                // This transaction's keys and the ones not yet written are
                // listed again; their uses are still pending.
                for runtime in &keys[i * self.keys_per_transaction..] {
                    self.last_used.mark(runtime);
                }
                return Err(err);
            }
            Self::written(&batch);
            written += rows.len();
        }
        Ok(written)
    }

    /// Notes uses as stored, and no longer pending.
    fn written(batch: &[(Arc<KeyRuntime>, Vec<LastUse>)]) {
        for (runtime, uses) in batch {
            Self::note_stored(runtime, uses.iter().map(|u| u.at).max());
            runtime.pending_usage().forget_written(uses);
        }
    }

    /// Adds every pending request count to storage and writes every pending
    /// last use of the same keys, in transactions of
    /// [`KEYS_PER_TRANSACTION`] keys (each key's counts and uses in one);
    /// returns how many key-hours it covered. On failure the counts of the
    /// failed transaction are put back, and its keys and the ones not yet
    /// written are listed for the next attempt (the uses, pending until
    /// written, stay).
    pub async fn flush_counts(&self, store: &Store) -> Result<usize, StoreError> {
        let keys = take_in_key_order(&self.counts);
        let mut written = 0;
        for (i, chunk) in keys.chunks(self.keys_per_transaction).enumerate() {
            let (mut counts, mut uses) = (Vec::new(), Vec::new());
            for runtime in chunk {
                let (buckets, pending) = {
                    let mut usage = runtime.pending_usage();
                    (usage.take_buckets(), usage.last_uses())
                };
                if !pending.is_empty() {
                    uses.push((runtime.clone(), pending));
                }
                if !buckets.is_empty() {
                    counts.push((runtime, buckets));
                }
            }
            if counts.is_empty() && uses.is_empty() {
                continue;
            }
            let rows: Vec<HourlyUsage> = counts
                .iter()
                .flat_map(|(runtime, buckets)| {
                    buckets.iter().map(|b| HourlyUsage {
                        key_id: Arc::clone(&runtime.key_id),
                        hour_start: b.hour_start,
                        counts: b.counts,
                    })
                })
                .collect();
            if let Err(err) = store.record_usage(&last_used_rows(&uses), &rows).await {
                for (runtime, buckets) in counts {
                    let mut usage = runtime.pending_usage();
                    buckets.iter().for_each(|bucket| usage.count_bucket(bucket));
                }
                for runtime in &keys[i * self.keys_per_transaction..] {
                    self.counts.mark(runtime);
                }
                return Err(err);
            }
            Self::written(&uses);
            written += rows.len();
        }
        Ok(written)
    }

    /// Flushes last uses and counts on their schedules until `stop` turns
    /// true, then both once more; prunes hourly counts past the retention
    /// at start and hourly. Runs `housekeeping` after each last-used flush.
    pub async fn run_flusher(
        &self,
        store: Store,
        housekeeping: impl Fn(),
        schedule: FlushSchedule,
        metrics: &Metrics,
        mut stop: watch::Receiver<bool>,
    ) {
        let ticker = |every: Duration| {
            let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        };
        let mut last_used = ticker(schedule.last_used);
        let mut counts = ticker(schedule.counts);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        enum Due {
            LastUsed,
            Counts,
            Prune,
            Stop,
        }
        loop {
            let due = tokio::select! {
                _ = last_used.tick() => Due::LastUsed,
                _ = counts.tick() => Due::Counts,
                _ = prune.tick() => Due::Prune,
                _ = stop.wait_for(|stopped| *stopped) => Due::Stop,
            };
            match due {
                Due::LastUsed => {
                    let started = std::time::Instant::now();
                    let result = self.flush_last_used(&store).await;
                    metrics.flushed(Flush::LastUsed, started.elapsed(), result.is_ok());
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "last-used flush failed; will retry");
                    }
                    housekeeping();
                }
                Due::Counts => {
                    let started = std::time::Instant::now();
                    let result = self.flush_counts(&store).await;
                    metrics.flushed(Flush::Counts, started.elapsed(), result.is_ok());
                    if let Err(err) = result {
                        tracing::warn!(error = %err, "usage count flush failed; will retry");
                    }
                }
                Due::Prune => {
                    let retention = chrono::Duration::from_std(schedule.retention)
                        .unwrap_or(chrono::Duration::MAX);
                    let cutoff = Utc::now()
                        .checked_sub_signed(retention)
                        .map_or(i64::MIN, |t| t.timestamp());
                    match store.prune_usage(cutoff).await {
                        Ok(rows) => tracing::debug!(rows, "pruned hourly usage past retention"),
                        Err(err) => {
                            tracing::warn!(error = %err, "usage pruning failed; will retry")
                        }
                    }
                }
                Due::Stop => break,
            }
        }
        match self.flush_last_used(&store).await {
            Ok(n) => tracing::debug!(credentials = n, "final last-used flush"),
            Err(err) => {
                tracing::error!(error = %err, "final last-used flush failed; uses since the last flush are lost")
            }
        }
        match self.flush_counts(&store).await {
            Ok(n) => tracing::debug!(key_hours = n, "final usage count flush"),
            Err(err) => {
                tracing::error!(error = %err, "final usage count flush failed; counts since the last flush are lost")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use keygate_domain::{audit::Actor, usage::UsageCounts};
    use keygate_persistence::testing::TestDatabase;

    use super::*;

    const KEY_ID: &str = "0190b5a2-0000-7000-8000-000000000001";
    const MINUTE: Duration = Duration::from_secs(60);

    fn stored_key() -> keygate_domain::ApiKey {
        crate::fixtures::api_key(KEY_ID, "aaaaaaaa")
    }

    /// A migrated SQLite store holding the key [`KEY_ID`] (the database
    /// lives as long as the returned handle).
    async fn store_with_key() -> (TestDatabase, Store) {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        store
            .insert_key(&stored_key(), &Actor::default())
            .await
            .unwrap();
        (db, store)
    }

    fn allowed(n: u64) -> UsageCounts {
        UsageCounts {
            allowed: n,
            ..UsageCounts::default()
        }
    }

    async fn stored_counts(store: &Store) -> UsageCounts {
        let mut total = UsageCounts::default();
        for bucket in store.usage_buckets(KEY_ID, 0, i64::MAX).await.unwrap() {
            total.merge(&bucket.counts);
        }
        total
    }

    #[test]
    fn keys_are_taken_in_key_order() {
        let runtimes = Runtimes::default();
        let list = DirtyList::new(|r| &r.counts_dirty);
        // Ties in the first 16 bytes, shorter ids, and a byte order that is
        // not insertion order.
        let ids = [
            "0190b5a2-0000-7000-8000-000000000002",
            "0190b5a2-0000-7000-8000-000000000001",
            "0190b5a2-0000-7",
            "0190b5a2-0000-6fff",
            "a",
            "0190b5a2-0000-7000",
            "",
        ];
        for id in ids {
            list.mark(&runtimes.get_or_create(id));
        }
        let taken: Vec<String> = take_in_key_order(&list)
            .iter()
            .map(|r| r.key_id.to_string())
            .collect();
        let mut sorted: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        sorted.sort();
        assert_eq!(taken, sorted);
    }

    #[test]
    fn last_uses_are_kept_only_when_due() {
        let (recorder, runtimes) = (UsageRecorder::new(MINUTE), Runtimes::default());
        let k1 = runtimes.get_or_create("k1");
        let t0 = Utc::now();
        // Nothing stored: the first use is due.
        recorder.record(&k1, *b"aaaaaaaa", t0, UseOutcome::Allowed);
        assert_eq!(
            recorder.pending_last_used(&runtimes, "k1", "aaaaaaaa"),
            Some(t0)
        );
        // Stored at t0: uses within the precision are not kept…
        UsageRecorder::note_stored(&k1, Some(t0));
        let pending = k1.usage.lock().unwrap().last_uses();
        k1.usage.lock().unwrap().forget_written(&pending);
        let t1 = t0 + chrono::Duration::seconds(59);
        recorder.record(&k1, *b"aaaaaaaa", t1, UseOutcome::Allowed);
        assert_eq!(
            recorder.pending_last_used(&runtimes, "k1", "aaaaaaaa"),
            None
        );
        // …denials never count as a use…
        let t2 = t0 + chrono::Duration::seconds(60);
        recorder.record(&k1, *b"aaaaaaaa", t2, UseOutcome::Denied);
        assert_eq!(
            recorder.pending_last_used(&runtimes, "k1", "aaaaaaaa"),
            None
        );
        // …and the first allowed use a precision later is.
        recorder.record(&k1, *b"bbbbbbbb", t2, UseOutcome::Allowed);
        assert_eq!(
            recorder.pending_last_used(&runtimes, "k1", "bbbbbbbb"),
            Some(t2)
        );
        // Every request was counted, whatever its outcome.
        let buckets = recorder.pending_counts(&runtimes, "k1");
        let mut total = UsageCounts::default();
        buckets.iter().for_each(|b| total.merge(&b.counts));
        assert_eq!(
            total,
            UsageCounts {
                allowed: 3,
                denied_rate_limited: 0,
                denied_other: 1
            }
        );
        assert!(recorder.pending_counts(&runtimes, "k2").is_empty());
    }

    #[tokio::test]
    async fn within_the_precision_storage_is_written_once() {
        let (_db, store) = store_with_key().await;
        let (recorder, runtimes) = (UsageRecorder::new(MINUTE), Runtimes::default());
        let runtime = runtimes.get_or_create(KEY_ID);
        // Early in an hour, so all 12 uses below fall in one hourly bucket
        // whenever the test runs.
        let hour = Utc::now().timestamp() / 3600 * 3600;
        let t0 = chrono::DateTime::from_timestamp(hour + 10, 0).unwrap();
        recorder.record(&runtime, *b"aaaaaaaa", t0, UseOutcome::Allowed);
        assert_eq!(recorder.flush_last_used(&store).await.unwrap(), 1);
        // Ten flush intervals of steady use within one precision: nothing
        // more to write.
        for s in 1..=10 {
            let at = t0 + chrono::Duration::seconds(5 * s);
            recorder.record(&runtime, *b"aaaaaaaa", at, UseOutcome::Allowed);
            assert_eq!(recorder.flush_last_used(&store).await.unwrap(), 0);
        }
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert_eq!(
            stored.last_used_at.map(|t| t.timestamp()),
            Some(t0.timestamp())
        );
        // A precision later the use is due, but it waits for the count
        // flush, which writes it with the counts: one row for the 12
        // requests.
        let later = t0 + chrono::Duration::seconds(61);
        recorder.record(&runtime, *b"aaaaaaaa", later, UseOutcome::Allowed);
        assert_eq!(recorder.flush_last_used(&store).await.unwrap(), 0);
        assert_eq!(
            recorder.pending_last_used(&runtimes, KEY_ID, "aaaaaaaa"),
            Some(later)
        );
        assert_eq!(recorder.flush_counts(&store).await.unwrap(), 1);
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert_eq!(
            stored.last_used_at.map(|t| t.timestamp()),
            Some(later.timestamp())
        );
        assert_eq!(
            recorder.pending_last_used(&runtimes, KEY_ID, "aaaaaaaa"),
            None
        );
        assert_eq!(stored_counts(&store).await, allowed(12));
        assert_eq!(recorder.flush_counts(&store).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn only_a_first_use_takes_the_short_flush() {
        let (_db, store) = store_with_key().await;
        let (recorder, runtimes) = (UsageRecorder::new(MINUTE), Runtimes::default());
        let runtime = runtimes.get_or_create(KEY_ID);
        let t0 = Utc::now() - chrono::Duration::hours(2);
        recorder.record(&runtime, *b"aaaaaaaa", t0, UseOutcome::Allowed);
        assert_eq!(recorder.flush_last_used(&store).await.unwrap(), 1);
        // Back after an hour's pause: due, but for the count flush.
        let back = t0 + chrono::Duration::hours(1);
        recorder.record(&runtime, *b"aaaaaaaa", back, UseOutcome::Allowed);
        assert_eq!(recorder.flush_last_used(&store).await.unwrap(), 0);
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert_eq!(
            stored.last_used_at.map(|t| t.timestamp()),
            Some(t0.timestamp())
        );
        // Two hours' counts, and the use.
        assert_eq!(recorder.flush_counts(&store).await.unwrap(), 2);
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert_eq!(
            stored.last_used_at.map(|t| t.timestamp()),
            Some(back.timestamp())
        );
        assert_eq!(stored_counts(&store).await, allowed(2));
    }

    /// A flush cut into transactions: one that fails leaves the ones
    /// before it written and puts its own and the later keys back, so the
    /// next flush writes each count exactly once.
    #[tokio::test]
    async fn a_flush_failing_midway_writes_each_count_once() {
        use sea_orm::ConnectionTrait;
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let recorder = UsageRecorder::new(MINUTE).with_keys_per_transaction(2);
        let runtimes = Runtimes::default();
        let ids = ["k5", "k3", "k1", "k4", "k2"];
        let now = Utc::now();
        for id in ids {
            recorder.record(
                &runtimes.get_or_create(id),
                *b"aaaaaaaa",
                now,
                UseOutcome::Allowed,
            );
        }
        let backend = store.connection().get_database_backend();
        let sql = |sql: &str| sea_orm::Statement::from_string(backend, sql.to_owned());
        store
            .connection()
            .execute_raw(sql(
                "CREATE TRIGGER refuse_k3 BEFORE INSERT ON key_usage_hourly \
                 WHEN NEW.key_id = 'k3' BEGIN SELECT RAISE(ABORT, 'refused'); END",
            ))
            .await
            .unwrap();
        assert!(recorder.flush_counts(&store).await.is_err());
        let stored = || async {
            let mut allowed = Vec::new();
            for id in ["k1", "k2", "k3", "k4", "k5"] {
                let mut total = UsageCounts::default();
                for b in store.usage_buckets(id, 0, i64::MAX).await.unwrap() {
                    total.merge(&b.counts);
                }
                allowed.push(total.allowed);
            }
            allowed
        };
        // Key order: k1 and k2 went first and are written; k3 and k4
        // failed together; k5 was never tried.
        let written = stored().await;
        assert_eq!(written, [1, 1, 0, 0, 0]);
        store
            .connection()
            .execute_raw(sql("DROP TRIGGER refuse_k3"))
            .await
            .unwrap();
        assert_eq!(recorder.flush_counts(&store).await.unwrap(), 3);
        let written = stored().await;
        assert_eq!(written, [1, 1, 1, 1, 1]);
        assert_eq!(recorder.flush_counts(&store).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_count_flush_keeps_the_due_uses_with_the_counts() {
        let (_db, store) = store_with_key().await;
        let (recorder, runtimes) = (UsageRecorder::new(MINUTE), Runtimes::default());
        let runtime = runtimes.get_or_create(KEY_ID);
        let t0 = Utc::now() - chrono::Duration::seconds(90);
        UsageRecorder::note_stored(&runtime, Some(t0));
        let due = t0 + chrono::Duration::seconds(80);
        recorder.record(&runtime, *b"aaaaaaaa", due, UseOutcome::Allowed);
        // The count flush fails (the hourly table is gone): neither the use
        // nor the count is written, and both are kept.
        let backend = store.connection().get_database_backend();
        let rename = |from: &str, to: &str| {
            sea_orm::Statement::from_string(backend, format!("ALTER TABLE {from} RENAME TO {to}"))
        };
        use sea_orm::ConnectionTrait;
        store
            .connection()
            .execute_raw(rename("key_usage_hourly", "hourly_aside"))
            .await
            .unwrap();
        assert!(recorder.flush_counts(&store).await.is_err());
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert_eq!(stored.last_used_at, None, "rolled back with the counts");
        assert_eq!(
            recorder.pending_last_used(&runtimes, KEY_ID, "aaaaaaaa"),
            Some(due)
        );
        store
            .connection()
            .execute_raw(rename("hourly_aside", "key_usage_hourly"))
            .await
            .unwrap();
        assert_eq!(recorder.flush_counts(&store).await.unwrap(), 1);
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert_eq!(
            stored.last_used_at.map(|t| t.timestamp()),
            Some(due.timestamp())
        );
        assert_eq!(stored_counts(&store).await, allowed(1));
    }

    #[tokio::test]
    async fn the_flusher_writes_on_schedule_and_flushes_both_on_stop() {
        let (_db, store) = store_with_key().await;
        let recorder = Arc::new(UsageRecorder::new(MINUTE));
        let runtimes = Arc::new(Runtimes::default());
        let runtime = runtimes.get_or_create(KEY_ID);
        let (stop_tx, stop_rx) = watch::channel(false);
        let flusher = {
            let (recorder, store, runtimes) = (recorder.clone(), store.clone(), runtimes.clone());
            tokio::spawn(async move {
                recorder
                    .run_flusher(
                        store,
                        move || {
                            runtimes.prune(|_| true);
                        },
                        FlushSchedule {
                            last_used: Duration::from_millis(20),
                            counts: Duration::from_secs(3600),
                            retention: Duration::from_secs(3600),
                        },
                        &Metrics::default(),
                        stop_rx,
                    )
                    .await
            })
        };
        let now = Utc::now();
        recorder.record(&runtime, *b"aaaaaaaa", now, UseOutcome::Allowed);
        recorder.record(&runtime, *b"aaaaaaaa", now, UseOutcome::RateLimited);
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Last use written on its short interval; counts wait for theirs.
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert!(stored.last_used_at.is_some());
        assert!(stored.credentials[0].last_used_at.is_some());
        assert_eq!(stored_counts(&store).await, UsageCounts::default());
        // The stop writes the counts.
        recorder.record(&runtime, *b"aaaaaaaa", now, UseOutcome::Allowed);
        stop_tx.send(true).unwrap();
        flusher.await.unwrap();
        assert_eq!(
            stored_counts(&store).await,
            UsageCounts {
                allowed: 2,
                denied_rate_limited: 1,
                denied_other: 0
            }
        );
    }

    #[tokio::test]
    async fn the_flusher_prunes_counts_past_the_retention() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let hour = |h: i64| {
            let now = Utc::now().timestamp();
            now - now.rem_euclid(3600) - h * 3600
        };
        let row = |hours_ago| HourlyUsage {
            key_id: KEY_ID.into(),
            hour_start: hour(hours_ago),
            counts: allowed(1),
        };
        store
            .add_usage_counts(&[row(0), row(2), row(30)])
            .await
            .unwrap();
        let recorder = UsageRecorder::new(MINUTE);
        let (stop_tx, stop_rx) = watch::channel(false);
        let schedule = FlushSchedule {
            last_used: Duration::from_secs(3600),
            counts: Duration::from_secs(3600),
            retention: Duration::from_secs(24 * 3600),
        };
        let metrics = Metrics::default();
        let run = recorder.run_flusher(store.clone(), || {}, schedule, &metrics, stop_rx);
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stop_tx.send(true).unwrap();
        };
        tokio::join!(run, stopper);
        let left: Vec<i64> = store
            .usage_buckets(KEY_ID, 0, i64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|b| b.hour_start)
            .collect();
        assert_eq!(left, [hour(2), hour(0)]);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_batch_for_later() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        let (recorder, runtimes) = (UsageRecorder::new(MINUTE), Runtimes::default());
        let runtime = runtimes.get_or_create(KEY_ID);
        let now = Utc::now();
        recorder.record(&runtime, *b"aaaaaaaa", now, UseOutcome::Allowed);
        // No tables yet: both writes fail and nothing is lost.
        assert!(recorder.flush_last_used(&store).await.is_err());
        assert!(recorder.flush_counts(&store).await.is_err());
        assert_eq!(
            recorder.pending_last_used(&runtimes, KEY_ID, "aaaaaaaa"),
            Some(now)
        );
        // Requests counted meanwhile join the kept batch.
        recorder.record(&runtime, *b"aaaaaaaa", now, UseOutcome::Allowed);
        store.migrate().await.unwrap();
        store
            .insert_key(&stored_key(), &Actor::default())
            .await
            .unwrap();
        assert_eq!(recorder.flush_last_used(&store).await.unwrap(), 1);
        assert_eq!(recorder.flush_counts(&store).await.unwrap(), 1);
        assert_eq!(
            recorder.pending_last_used(&runtimes, KEY_ID, "aaaaaaaa"),
            None
        );
        assert_eq!(stored_counts(&store).await, allowed(2));
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert_eq!(
            stored.last_used_at.map(|t| t.timestamp()),
            Some(now.timestamp())
        );
    }
}
