//! The verified-key cache: lookup id → the key record Authorize needs, so a
//! warm Authorize never touches storage.
//!
//! Unknown lookup ids are remembered for a short time (negative entries), so a
//! flood of made-up keys costs one query per id, not one per request.
//! Concurrent misses for one lookup id share a single load. Every change to a
//! key evicts its lookup ids ([`KeyCache::invalidate`]), and an epoch counter
//! makes sure a load that raced with an eviction is not kept.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keygate_domain::ApiKey;
use moka::{Expiry, future::Cache};

/// What the cache knows about one lookup id.
#[derive(Clone, Debug)]
pub enum Entry {
    /// The key owning a credential with this lookup id.
    Known(Arc<ApiKey>),
    /// No credential has this lookup id (as of the load).
    Unknown,
}

#[derive(Debug)]
struct EntryLifetime {
    known: Duration,
    unknown: Duration,
}

impl Expiry<String, Entry> for EntryLifetime {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(match value {
            Entry::Known(_) => self.known,
            Entry::Unknown => self.unknown,
        })
    }
}

/// Bounded cache of verified key records, keyed by lookup id.
#[derive(Clone, Debug)]
pub struct KeyCache {
    entries: Cache<String, Entry>,
    epoch: Arc<AtomicU64>,
}

/// How many times a miss is retried when invalidations race with its load.
const MAX_RACING_LOADS: usize = 3;

impl KeyCache {
    /// A cache of at most `capacity` entries; known keys live `ttl`, unknown
    /// lookup ids `negative_ttl`.
    pub fn new(capacity: u64, ttl: Duration, negative_ttl: Duration) -> Self {
        let entries = Cache::builder()
            .max_capacity(capacity)
            .expire_after(EntryLifetime {
                known: ttl,
                unknown: negative_ttl,
            })
            .build();
        Self {
            entries,
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The entry for `lookup_id`, loading it with `load` on a miss. Concurrent
    /// misses for the same id wait for one load.
    pub async fn get_or_load<F, Fut, E>(&self, lookup_id: &str, load: F) -> Result<Entry, Arc<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Entry, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(entry) = self.entries.get(lookup_id).await {
            return Ok(entry);
        }
        let mut attempt = 0;
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            let entry = self
                .entries
                .try_get_with(lookup_id.to_owned(), load())
                .await?;
            attempt += 1;
            if self.epoch.load(Ordering::Acquire) == epoch || attempt >= MAX_RACING_LOADS {
                return Ok(entry);
            }
            // An invalidation happened while we loaded: what we hold may be
            // older than it. Drop it and load again.
            self.entries.invalidate(lookup_id).await;
        }
    }

    /// Evicts these lookup ids (all credentials of a changed key).
    pub async fn invalidate<S: AsRef<str>>(&self, lookup_ids: &[S]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for id in lookup_ids {
            self.entries.invalidate(id.as_ref()).await;
        }
    }

    /// Evicts everything (for example after lost invalidation messages).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
    }

    /// Entries held now (approximate; for metrics and tests).
    pub async fn len(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
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

    #[tokio::test]
    async fn a_hit_does_not_load_again() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        for _ in 0..5 {
            let entry = cache
                .get_or_load("abcdefgh", || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Entry::Unknown)
                })
                .await
                .unwrap();
            assert!(matches!(entry, Entry::Unknown));
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
    async fn invalidate_forces_a_reload() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(Entry::Unknown)
        };
        cache.get_or_load("abcdefgh", load).await.unwrap();
        cache.invalidate(&["abcdefgh"]).await;
        cache.get_or_load("abcdefgh", load).await.unwrap();
        cache.clear();
        cache.get_or_load("abcdefgh", load).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn negative_entries_expire_on_their_own_clock() {
        let cache = KeyCache::new(100, Duration::from_secs(60), Duration::from_millis(50));
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(Entry::Unknown)
        };
        cache.get_or_load("abcdefgh", load).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        cache.get_or_load("abcdefgh", load).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_load_that_raced_an_invalidation_is_not_kept() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let racing = cache.clone();
        let entry = cache
            .get_or_load("abcdefgh", || {
                let n = loads.fetch_add(1, Ordering::SeqCst);
                let racing = racing.clone();
                async move {
                    if n == 0 {
                        // The key changes while the first load is in flight.
                        racing.invalidate(&["abcdefgh"]).await;
                        return Ok::<_, ()>(Entry::Unknown);
                    }
                    Ok(Entry::Known(Arc::new(test_key())))
                }
            })
            .await
            .unwrap();
        assert!(matches!(entry, Entry::Known(_)));
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    fn test_key() -> ApiKey {
        let now = chrono::Utc::now();
        ApiKey {
            id: "k".into(),
            owner_id: "o".into(),
            name: "n".into(),
            environment: "live".into(),
            scopes: vec![],
            ip_allowlist: vec![],
            rate_limit_per_hour: None,
            state: keygate_domain::KeyState::Active,
            expires_at: None,
            prefix: "kg_live_".into(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
            credentials: vec![],
        }
    }
}
