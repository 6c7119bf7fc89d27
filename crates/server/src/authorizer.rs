//! The hot path: turns a presented key into a decision from memory.
//!
//! parse + checksum → cache lookup by lookup id → constant-time hash compare →
//! state, expiry, environment, IP, scopes → rate limiter → usage noted in
//! memory. Storage is read only on a cache miss (or by a background refresh)
//! and never written here. Management calls authenticate their bearer key
//! through the same path.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use keygate_domain::{
    keyformat::KeyFormat,
    policy::{self, AccessRequest, DenyReason},
    ratelimit::{Quota, RateDecision},
    rights::Principal,
    scope::Scope,
    snapshot::KeySnapshot,
};
use keygate_persistence::{Backend, Store, StoreError};
use tokio::sync::Semaphore;

use crate::{
    cache::{CachedKey, Entry, KeyCache, LoadError},
    config::Config,
    error::ApiError,
    interner::Interner,
    limiter::RateLimiter,
    runtime::Runtimes,
    usage::UsageRecorder,
};

/// Longest a cache miss waits for storage before the key is decided from a
/// stale entry (or the call fails as UNAVAILABLE).
const LOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// After storage failed, how long loads are not even attempted: stale
/// entries are served at once instead of each request waiting on a timeout.
const UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(1);

/// Background refreshes of entries past their lifetime running at once.
const MAX_CONCURRENT_REFRESHES: usize = 2;

/// Counters a test or an operator reads to see what the hot path did.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Storage queries made for Authorize and management authentication
    /// (cache misses and background refreshes). A warm path leaves this
    /// unchanged.
    pub authorize_db_queries: AtomicU64,
    /// Authorize calls answered.
    pub authorize_calls: AtomicU64,
    /// Decisions taken from a stale cache entry because storage was down.
    pub stale_served: AtomicU64,
}

/// What Authorize decided.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The key may proceed.
    Allow {
        /// The key.
        key: Arc<CachedKey>,
        /// Its rate-limit figures after this request.
        rate: RateDecision,
    },
    /// The key may not proceed.
    Deny {
        /// Why.
        reason: DenyReason,
        /// The key, once it was recognised.
        key: Option<Arc<CachedKey>>,
        /// Required scopes the key lacks.
        missing_scopes: Vec<Scope>,
        /// Rate-limit figures, for a rate-limited key.
        rate: Option<RateDecision>,
    },
}

/// Shared hot-path state: the key cache, per-key runtimes, the limiter and
/// pending usage.
#[derive(Debug)]
pub struct Authorizer {
    store: Store,
    format: KeyFormat,
    default_quota: Quota,
    cache: KeyCache,
    runtimes: Arc<Runtimes>,
    limiter: RateLimiter,
    usage: Arc<UsageRecorder>,
    metrics: Arc<Metrics>,
    origin: Instant,
    /// Nanoseconds after `origin` until which storage is presumed down.
    unavailable_until: AtomicU64,
    /// Background refreshes allowed at once.
    refreshes: Arc<Semaphore>,
    interner: Interner,
}

impl Authorizer {
    /// Builds the hot path over `store` with `config`'s cache and limits.
    pub fn new(store: Store, config: &Config) -> Self {
        Self {
            format: config.key_format.clone(),
            default_quota: Quota::per_hour(config.default_rate_limit_per_hour.max(1))
                .expect("non-zero quota"),
            cache: KeyCache::new(
                config.cache_capacity,
                config.cache_ttl,
                config.negative_cache_ttl,
            ),
            runtimes: Arc::new(Runtimes::default()),
            limiter: RateLimiter::new(store.backend() == Backend::Postgres),
            usage: Arc::new(UsageRecorder::default()),
            metrics: Arc::new(Metrics::default()),
            origin: Instant::now(),
            unavailable_until: AtomicU64::new(0),
            refreshes: Arc::new(Semaphore::new(MAX_CONCURRENT_REFRESHES)),
            interner: Interner::default(),
            store,
        }
    }

    /// The verified-key cache (for invalidation).
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// Per-key runtime states.
    pub fn runtimes(&self) -> &Arc<Runtimes> {
        &self.runtimes
    }

    /// The rate limiter (for the cross-replica sync).
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Pending usage (for the flusher).
    pub fn usage(&self) -> &Arc<UsageRecorder> {
        &self.usage
    }

    /// Hot-path counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The key format in force.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// Forgets per-key state and shared snapshot parts no cache entry uses
    /// any more (run by the usage flusher).
    pub fn housekeeping(&self) {
        self.runtimes.prune();
        self.interner.prune();
    }

    /// The newest use of a credential not yet written to storage.
    pub fn pending_last_used(&self, key_id: &str, lookup_id: &str) -> Option<DateTime<Utc>> {
        self.usage
            .pending_last_used(&self.runtimes, key_id, lookup_id)
    }

    fn nanos_since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reads the key owning `lookup_id` from storage.
    async fn load(&self, lookup_id: &str) -> Result<Entry, ApiError> {
        if self.nanos_since_origin() < self.unavailable_until.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable("storage unreachable".into()));
        }
        self.metrics
            .authorize_db_queries
            .fetch_add(1, Ordering::Relaxed);
        let found =
            match tokio::time::timeout(LOAD_TIMEOUT, self.store.find_by_lookup_id(lookup_id)).await
            {
                Ok(Ok(found)) => found,
                Ok(Err(StoreError::Unavailable(msg))) => return Err(self.storage_down(msg)),
                Ok(Err(other)) => return Err(other.into()),
                Err(_) => {
                    return Err(self.storage_down(format!("no answer within {LOAD_TIMEOUT:?}")));
                }
            };
        Ok(match found {
            Some(key) => {
                let runtime = self.runtimes.get_or_create(&key.id);
                let mut snapshot = KeySnapshot::from(&key);
                // One copy of the id for the snapshot and the runtime, and
                // shared copies of what many keys have in common.
                snapshot.id = runtime.key_id.clone();
                self.interner.share(&mut snapshot);
                Entry::Known(Arc::new(CachedKey { snapshot, runtime }))
            }
            None => Entry::Unknown,
        })
    }

    fn storage_down(&self, message: String) -> ApiError {
        let until = self.nanos_since_origin() + UNAVAILABLE_BACKOFF.as_nanos() as u64;
        self.unavailable_until.fetch_max(until, Ordering::AcqRel);
        ApiError::Unavailable(message)
    }

    /// The cached key a lookup id belongs to, loading it on a miss. `None`
    /// means no key has that lookup id.
    async fn lookup(self: &Arc<Self>, lookup_id: &str) -> Result<Option<Arc<CachedKey>>, ApiError> {
        let entry = match self
            .cache
            .get_or_load(lookup_id, || self.load(lookup_id))
            .await
        {
            Ok(lookup) => {
                // At most a few refreshes at a time, so they never crowd out
                // cache misses; a refresh not started now is retried by a
                // later request (the cache spaces the attempts).
                if let Some(permit) = lookup
                    .refresh
                    .then(|| self.refreshes.clone().try_acquire_owned().ok())
                    .flatten()
                {
                    let this = self.clone();
                    let id = lookup_id.to_owned();
                    tokio::spawn(async move {
                        if let Err(err) = this.cache.refresh(&id, || this.load(&id)).await {
                            tracing::debug!(error = %err, "background refresh failed");
                        }
                        drop(permit);
                    });
                }
                lookup.entry
            }
            // Storage is down: keep deciding from what we knew (fail-static).
            Err(LoadError {
                error: ApiError::Unavailable(_),
                stale: Some(stale),
            }) => {
                self.metrics.stale_served.fetch_add(1, Ordering::Relaxed);
                stale
            }
            Err(LoadError { error, .. }) => return Err(error),
        };
        Ok(match entry {
            Entry::Known(key) => Some(key),
            Entry::Unknown => None,
        })
    }

    /// Decides on one presented key.
    pub async fn authorize(
        self: &Arc<Self>,
        presented: &str,
        request: &AccessRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Outcome, ApiError> {
        self.metrics.authorize_calls.fetch_add(1, Ordering::Relaxed);
        let invalid = || Outcome::Deny {
            reason: DenyReason::KeyInvalid,
            key: None,
            missing_scopes: Vec::new(),
            rate: None,
        };
        let Ok(parsed) = self.format.parse(presented) else {
            return Ok(invalid());
        };
        let Some(key) = self.lookup(parsed.lookup_id).await? else {
            return Ok(invalid());
        };
        let Some(secret) = key.snapshot.find_secret(parsed.lookup_id, parsed.key) else {
            return Ok(invalid());
        };
        if let Err(denial) = policy::check(&key.snapshot, secret, request, now) {
            return Ok(Outcome::Deny {
                reason: denial.reason,
                key: Some(key.clone()),
                missing_scopes: denial.missing_scopes,
                rate: None,
            });
        }
        let quota = key
            .snapshot
            .rate_limit_per_hour
            .and_then(Quota::per_hour)
            .unwrap_or(self.default_quota);
        let rate = self.limiter.check(&key.runtime, quota);
        if !rate.allowed {
            return Ok(Outcome::Deny {
                reason: DenyReason::RateLimited,
                key: Some(key.clone()),
                missing_scopes: Vec::new(),
                rate: Some(rate),
            });
        }
        self.usage.record(&key.runtime, secret.lookup_id, now);
        Ok(Outcome::Allow {
            key: key.clone(),
            rate,
        })
    }

    /// Authenticates a management call's bearer key. The key must be usable
    /// now (active, unexpired, its secret live) and, if it has an allowlist,
    /// the caller's address must be in it.
    pub async fn authenticate(
        self: &Arc<Self>,
        bearer: Option<&str>,
        peer: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Principal, ApiError> {
        let Some(bearer) = bearer else {
            return Err(ApiError::Unauthenticated {
                reason: "MANAGEMENT_KEY_MISSING",
                message:
                    "missing authorization metadata: send `authorization: Bearer <management key>`"
                        .into(),
            });
        };
        let invalid = || ApiError::Unauthenticated {
            reason: "MANAGEMENT_KEY_INVALID",
            message: "invalid management key".into(),
        };
        let parsed = self.format.parse(bearer).map_err(|_| invalid())?;
        let key = self.lookup(parsed.lookup_id).await?.ok_or_else(invalid)?;
        let secret = key
            .snapshot
            .find_secret(parsed.lookup_id, parsed.key)
            .ok_or_else(invalid)?;
        let request = AccessRequest {
            environment: &key.snapshot.environment,
            required_scopes: &[],
            client_ip: peer,
        };
        if let Err(denial) = policy::check(&key.snapshot, secret, &request, now) {
            return Err(ApiError::Unauthenticated {
                reason: "MANAGEMENT_KEY_INVALID",
                message: format!("management key refused: {}", denial.reason.message()),
            });
        }
        self.usage.record(&key.runtime, secret.lookup_id, now);
        Ok(Principal::from_snapshot(&key.snapshot))
    }
}
