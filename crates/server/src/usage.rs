//! Usage recorded by Authorize (last used time and request counts, per key
//! and per credential), gathered in memory and written by a background
//! flusher in batches, so the hot path never writes to storage.
//!
//! A failed flush puts the batch back, so usage is only lost if the process
//! dies without a graceful stop (at most one flush interval).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use chrono::{DateTime, Utc};
use keygate_persistence::{Store, Usage};
use tokio::sync::watch;

/// Pending usage, by lookup id.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: Mutex<HashMap<String, Usage>>,
}

impl UsageRecorder {
    /// Notes one successful use of a credential.
    pub fn record(&self, key_id: &str, lookup_id: &str, at: DateTime<Utc>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(usage) = pending.get_mut(lookup_id) {
            usage.requests += 1;
            usage.last_used_at = usage.last_used_at.max(at);
            return;
        }
        pending.insert(
            lookup_id.to_owned(),
            Usage {
                key_id: key_id.to_owned(),
                lookup_id: lookup_id.to_owned(),
                last_used_at: at,
                requests: 1,
            },
        );
    }

    /// The newest unflushed use of this credential, if any.
    pub fn pending_last_used(&self, lookup_id: &str) -> Option<DateTime<Utc>> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(lookup_id).map(|u| u.last_used_at)
    }

    fn take(&self) -> Vec<Usage> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.drain().map(|(_, usage)| usage).collect()
    }

    fn put_back(&self, batch: Vec<Usage>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for usage in batch {
            match pending.get_mut(&usage.lookup_id) {
                Some(newer) => {
                    newer.requests += usage.requests;
                    newer.last_used_at = newer.last_used_at.max(usage.last_used_at);
                }
                None => {
                    pending.insert(usage.lookup_id.clone(), usage);
                }
            }
        }
    }

    /// Writes everything pending in one batch. On failure the batch is kept
    /// for the next attempt.
    pub async fn flush(&self, store: &Store) -> Result<usize, keygate_persistence::StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        match store.record_usage(&batch).await {
            Ok(()) => Ok(n),
            Err(err) => {
                self.put_back(batch);
                Err(err)
            }
        }
    }

    /// Flushes every `interval` until `stop` turns true, then once more.
    pub async fn run_flusher(
        &self,
        store: Store,
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

    fn stored_key() -> keygate_domain::ApiKey {
        crate::fixtures::api_key("0190b5a2-0000-7000-8000-000000000001", "aaaaaaaa")
    }

    #[tokio::test]
    async fn the_flusher_writes_batches_and_a_final_flush_on_stop() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        store.migrate().await.unwrap();
        let now = Utc::now();
        let key = stored_key();
        store.insert_key(&key).await.unwrap();
        let recorder = std::sync::Arc::new(UsageRecorder::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let flusher = {
            let (recorder, store) = (recorder.clone(), store.clone());
            tokio::spawn(async move {
                recorder
                    .run_flusher(store, Duration::from_millis(20), stop_rx)
                    .await
            })
        };
        recorder.record(&key.id, "aaaaaaaa", now);
        recorder.record(&key.id, "aaaaaaaa", now);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.request_count(&key.id).await.unwrap(), Some(2));
        // Usage recorded just before the stop is written by the final flush.
        recorder.record(&key.id, "aaaaaaaa", now);
        stop_tx.send(true).unwrap();
        flusher.await.unwrap();
        assert_eq!(store.request_count(&key.id).await.unwrap(), Some(3));
        let stored = store.get_key(&key.id).await.unwrap().unwrap();
        assert!(stored.last_used_at.is_some());
        assert!(stored.credentials[0].last_used_at.is_some());
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_batch_for_later() {
        let db = TestDatabase::sqlite();
        let store = Store::connect(&db.url).await.unwrap();
        let recorder = UsageRecorder::default();
        let now = Utc::now();
        recorder.record("0190b5a2-0000-7000-8000-000000000001", "aaaaaaaa", now);
        // No tables yet: the write fails and nothing is lost.
        assert!(recorder.flush(&store).await.is_err());
        assert_eq!(recorder.pending_last_used("aaaaaaaa"), Some(now));
        store.migrate().await.unwrap();
        store.insert_key(&stored_key()).await.unwrap();
        assert_eq!(recorder.flush(&store).await.unwrap(), 1);
        assert_eq!(recorder.pending_last_used("aaaaaaaa"), None);
    }

    #[test]
    fn records_merge_per_credential() {
        let recorder = UsageRecorder::default();
        let t0 = Utc::now();
        let t1 = t0 + chrono::Duration::seconds(1);
        recorder.record("k1", "aaaaaaaa", t1);
        recorder.record("k1", "aaaaaaaa", t0);
        recorder.record("k2", "bbbbbbbb", t0);
        assert_eq!(recorder.pending_last_used("aaaaaaaa"), Some(t1));
        let mut batch = recorder.take();
        batch.sort_by(|a, b| a.lookup_id.cmp(&b.lookup_id));
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].requests, 2);
        assert_eq!(batch[0].last_used_at, t1);
        assert!(recorder.take().is_empty());
    }

    #[test]
    fn a_batch_put_back_merges_with_newer_usage() {
        let recorder = UsageRecorder::default();
        let t0 = Utc::now();
        recorder.record("k1", "aaaaaaaa", t0);
        let batch = recorder.take();
        let t1 = t0 + chrono::Duration::seconds(2);
        recorder.record("k1", "aaaaaaaa", t1);
        recorder.put_back(batch);
        let batch = recorder.take();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].requests, 2);
        assert_eq!(batch[0].last_used_at, t1);
    }
}
