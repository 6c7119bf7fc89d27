//! Usage recorded by Authorize (last used time and request counts, per key
//! and per credential), gathered in each key's [`KeyRuntime`] and written by
//! a background flusher in batches, so the hot path never writes to storage.
//!
//! A failed flush puts the batch back, so usage is only lost if the process
//! dies without a graceful stop (at most one flush interval).

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use keygate_persistence::{Store, StoreError, Usage};
use tokio::sync::watch;

use crate::runtime::{KeyRuntime, PendingUse, Runtimes};

/// Keys with usage not yet written.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    dirty: Mutex<Vec<Arc<KeyRuntime>>>,
}

impl UsageRecorder {
    /// Notes one successful use of the credential `lookup_id` of a key.
    pub fn record(&self, runtime: &Arc<KeyRuntime>, lookup_id: [u8; 8], at: DateTime<Utc>) {
        runtime
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(lookup_id, at, 1);
        if !runtime.usage_dirty.swap(true, Ordering::AcqRel) {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(runtime.clone());
        }
    }

    /// The newest unwritten use of a credential, if any.
    pub fn pending_last_used(
        &self,
        runtimes: &Runtimes,
        key_id: &str,
        lookup_id: &str,
    ) -> Option<DateTime<Utc>> {
        let runtime = runtimes.get(key_id)?;
        let usage = runtime.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage.get(lookup_id.as_bytes()).map(|u| u.last_used_at)
    }

    /// Takes every pending use, marking the keys clean.
    fn take(&self) -> Vec<(Arc<KeyRuntime>, Vec<PendingUse>)> {
        let runtimes = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        runtimes
            .into_iter()
            .filter_map(|runtime| {
                runtime.usage_dirty.store(false, Ordering::Release);
                let pending = runtime
                    .usage
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                (!pending.is_empty()).then_some((runtime, pending))
            })
            .collect()
    }

    /// Merges a batch that could not be written back into the pending uses.
    fn put_back(&self, batch: Vec<(Arc<KeyRuntime>, Vec<PendingUse>)>) {
        for (runtime, uses) in batch {
            {
                let mut usage = runtime.usage.lock().unwrap_or_else(|e| e.into_inner());
                for old in uses {
                    usage.add(old.lookup_id, old.last_used_at, old.requests);
                }
            }
            if !runtime.usage_dirty.swap(true, Ordering::AcqRel) {
                self.dirty
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(runtime);
            }
        }
    }

    /// Writes everything pending in one batch; returns how many credentials
    /// it covered. On failure the batch is kept for the next attempt.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let rows: Vec<Usage> = batch
            .iter()
            .flat_map(|(runtime, uses)| {
                uses.iter().map(|u| Usage {
                    key_id: runtime.key_id.to_string(),
                    lookup_id: String::from_utf8_lossy(&u.lookup_id).into_owned(),
                    last_used_at: u.last_used_at,
                    requests: u.requests,
                })
            })
            .collect();
        match store.record_usage(&rows).await {
            Ok(()) => Ok(rows.len()),
            Err(err) => {
                self.put_back(batch);
                Err(err)
            }
        }
    }

    /// Flushes every `interval` until `stop` turns true, then once more.
    /// Runs `housekeeping` after each periodic flush.
    pub async fn run_flusher(
        &self,
        store: Store,
        housekeeping: impl Fn(),
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
            if let Err(err) = self.flush(&store).await {
                tracing::warn!(error = %err, "usage flush failed; will retry");
            }
            housekeeping();
        }
        match self.flush(&store).await {
            Ok(n) => tracing::debug!(credentials = n, "final usage flush"),
            Err(err) => {
                tracing::error!(error = %err, "final usage flush failed; usage since the last flush is lost")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use keygate_persistence::testing::TestDatabase;

    use super::*;

    const KEY_ID: &str = "0190b5a2-0000-7000-8000-000000000001";

    fn stored_key() -> keygate_domain::ApiKey {
        crate::fixtures::api_key(KEY_ID, "aaaaaaaa")
    }

    #[test]
    fn records_merge_per_credential() {
        let (recorder, runtimes) = (UsageRecorder::default(), Runtimes::default());
        let (k1, k2) = (runtimes.get_or_create("k1"), runtimes.get_or_create("k2"));
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(1);
        recorder.record(&k1, *b"aaaaaaaa", t1);
        recorder.record(&k1, *b"aaaaaaaa", t0);
        recorder.record(&k1, *b"cccccccc", t0);
        recorder.record(&k2, *b"bbbbbbbb", t0);
        assert_eq!(
            recorder.pending_last_used(&runtimes, "k1", "aaaaaaaa"),
            Some(t1)
        );
        assert_eq!(
            recorder.pending_last_used(&runtimes, "k2", "aaaaaaaa"),
            None
        );
        let batch = recorder.take();
        assert_eq!(batch.len(), 2, "one entry per dirty key");
        let (_, uses) = batch.iter().find(|(r, _)| r.key_id() == "k1").unwrap();
        assert_eq!(uses[0].requests, 2);
        assert_eq!(uses[0].last_used_at, t1);
        assert_eq!(uses.len(), 2);
        assert!(recorder.take().is_empty());
    }

    #[test]
    fn a_batch_put_back_merges_with_newer_usage() {
        let (recorder, runtimes) = (UsageRecorder::default(), Runtimes::default());
        let k1 = runtimes.get_or_create("k1");
        let t0 = Utc::now();
        recorder.record(&k1, *b"aaaaaaaa", t0);
        let batch = recorder.take();
        let t1 = t0 + chrono::Duration::seconds(2);
        recorder.record(&k1, *b"aaaaaaaa", t1);
        recorder.put_back(batch);
        let batch = recorder.take();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].1[0].requests, 2);
        assert_eq!(batch[0].1[0].last_used_at, t1);
    }

    #[tokio::test]
    async fn the_flusher_writes_batches_and_a_final_flush_on_stop() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let now = Utc::now();
        store.insert_key(&stored_key()).await.unwrap();
        let recorder = Arc::new(UsageRecorder::default());
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
                        Duration::from_millis(20),
                        stop_rx,
                    )
                    .await
            })
        };
        recorder.record(&runtime, *b"aaaaaaaa", now);
        recorder.record(&runtime, *b"aaaaaaaa", now);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.request_count(KEY_ID).await.unwrap(), Some(2));
        // Usage recorded just before the stop is written by the final flush.
        recorder.record(&runtime, *b"aaaaaaaa", now);
        stop_tx.send(true).unwrap();
        flusher.await.unwrap();
        assert_eq!(store.request_count(KEY_ID).await.unwrap(), Some(3));
        let stored = store.get_key(KEY_ID).await.unwrap().unwrap();
        assert!(stored.last_used_at.is_some());
        assert!(stored.credentials[0].last_used_at.is_some());
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_batch_for_later() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        let (recorder, runtimes) = (UsageRecorder::default(), Runtimes::default());
        let runtime = runtimes.get_or_create(KEY_ID);
        let now = Utc::now();
        recorder.record(&runtime, *b"aaaaaaaa", now);
        // No tables yet: the write fails and nothing is lost.
        assert!(recorder.flush(&store).await.is_err());
        assert_eq!(
            recorder.pending_last_used(&runtimes, KEY_ID, "aaaaaaaa"),
            Some(now)
        );
        store.migrate().await.unwrap();
        store.insert_key(&stored_key()).await.unwrap();
        assert_eq!(recorder.flush(&store).await.unwrap(), 1);
        assert_eq!(
            recorder.pending_last_used(&runtimes, KEY_ID, "aaaaaaaa"),
            None
        );
    }
}
