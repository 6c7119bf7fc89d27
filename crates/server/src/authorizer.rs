//! The hot path: turns a presented key into a decision from memory.
//!
//! parse + checksum → cache lookup by lookup id → constant-time hash compare →
//! status, expiry, environment, IP, scopes → rate limiter → usage recorded in
//! memory. Storage is only read on a cache miss, and never written here.
//! Management calls authenticate their bearer key through the same path.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use keygate_domain::{
    ApiKey, Credential,
    keyformat::KeyFormat,
    policy::{self, AccessRequest, DenyReason},
    ratelimit::{Quota, RateDecision},
    rights::Principal,
    scope::Scope,
};
use keygate_persistence::{Backend, Store};

use crate::{
    cache::{Entry, KeyCache, LoadError},
    config::Config,
    error::ApiError,
    limiter::RateLimiter,
    usage::UsageRecorder,
};

/// Longest a cache miss waits for storage before the key is decided from a
/// stale entry (or the call fails as UNAVAILABLE).
const LOAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters a test or an operator reads to see what the hot path did.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Storage queries made by Authorize and management authentication
    /// (cache misses). A warm path leaves this unchanged.
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
        key: Arc<ApiKey>,
        /// Its rate-limit figures after this request.
        rate: RateDecision,
    },
    /// The key may not proceed.
    Deny {
        /// Why.
        reason: DenyReason,
        /// The key, once it was recognised.
        key: Option<Arc<ApiKey>>,
        /// Required scopes the key lacks.
        missing_scopes: Vec<Scope>,
        /// Rate-limit figures, for a rate-limited key.
        rate: Option<RateDecision>,
    },
}

impl Outcome {
    fn deny(reason: DenyReason, key: Option<Arc<ApiKey>>) -> Self {
        Self::Deny {
            reason,
            key,
            missing_scopes: Vec::new(),
            rate: None,
        }
    }
}

/// Shared hot-path state: the key cache, the limiter and pending usage.
#[derive(Debug)]
pub struct Authorizer {
    store: Store,
    format: KeyFormat,
    default_quota: Quota,
    cache: KeyCache,
    limiter: RateLimiter,
    usage: Arc<UsageRecorder>,
    metrics: Arc<Metrics>,
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
            limiter: RateLimiter::new(config.cache_capacity, store.backend() == Backend::Postgres),
            usage: Arc::new(UsageRecorder::default()),
            metrics: Arc::new(Metrics::default()),
            store,
        }
    }

    /// The verified-key cache (for invalidation).
    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// The rate limiter (for the cross-replica sync).
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Pending usage (for the flusher and for fresher management views).
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

    /// Finds the key and credential a presented secret belongs to, through
    /// the cache. `Ok(None)` means the key is malformed or unknown, or the
    /// secret does not match: all look the same to the caller.
    async fn resolve(
        &self,
        presented: &str,
    ) -> Result<Option<(Arc<ApiKey>, Credential)>, ApiError> {
        let Ok(parsed) = self.format.parse(presented) else {
            return Ok(None);
        };
        let loaded = self
            .cache
            .get_or_load(parsed.lookup_id, || async {
                self.metrics
                    .authorize_db_queries
                    .fetch_add(1, Ordering::Relaxed);
                let found = tokio::time::timeout(
                    LOAD_TIMEOUT,
                    self.store.find_by_lookup_id(parsed.lookup_id),
                )
                .await
                .map_err(|_| {
                    ApiError::Unavailable(format!("storage did not answer within {LOAD_TIMEOUT:?}"))
                })??;
                Ok::<_, ApiError>(match found {
                    Some(key) => Entry::Known(Arc::new(key)),
                    None => Entry::Unknown,
                })
            })
            .await;
        let entry = match loaded {
            Ok(entry) => entry,
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
        let Entry::Known(key) = entry else {
            return Ok(None);
        };
        let credential = policy::find_credential(&key, parsed.lookup_id, parsed.key).cloned();
        Ok(credential.map(|c| (key, c)))
    }

    /// Decides on one presented key.
    pub async fn authorize(
        &self,
        presented: &str,
        request: &AccessRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Outcome, ApiError> {
        self.metrics.authorize_calls.fetch_add(1, Ordering::Relaxed);
        let Some((key, credential)) = self.resolve(presented).await? else {
            return Ok(Outcome::deny(DenyReason::KeyInvalid, None));
        };
        if let Err(denial) = policy::check(&key, &credential, request, now) {
            return Ok(Outcome::Deny {
                reason: denial.reason,
                key: Some(key),
                missing_scopes: denial.missing_scopes,
                rate: None,
            });
        }
        let quota = key
            .rate_limit_per_hour
            .and_then(Quota::per_hour)
            .unwrap_or(self.default_quota);
        let rate = self.limiter.check(&key.id, quota);
        if !rate.allowed {
            return Ok(Outcome::Deny {
                reason: DenyReason::RateLimited,
                key: Some(key),
                missing_scopes: Vec::new(),
                rate: Some(rate),
            });
        }
        self.usage.record(&key.id, &credential.lookup_id, now);
        Ok(Outcome::Allow { key, rate })
    }

    /// Authenticates a management call's bearer key. The key must be usable
    /// now (active, unexpired, its secret live) and, if it has an allowlist,
    /// the caller's address must be in it.
    pub async fn authenticate(
        &self,
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
        let Some((key, credential)) = self.resolve(bearer).await? else {
            return Err(invalid());
        };
        let request = AccessRequest {
            environment: &key.environment,
            required_scopes: &[],
            client_ip: peer,
        };
        if let Err(denial) = policy::check(&key, &credential, &request, now) {
            return Err(ApiError::Unauthenticated {
                reason: "MANAGEMENT_KEY_INVALID",
                message: format!("management key refused: {}", denial.reason.message()),
            });
        }
        self.usage.record(&key.id, &credential.lookup_id, now);
        Ok(Principal::from_key(&key))
    }
}
