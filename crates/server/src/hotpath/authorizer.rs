//! The hot path: turns a presented key into a decision from memory.
//!
//! parse + checksum → cache lookup by lookup id → constant-time hash compare →
//! state, expiry, environment, IP, scopes → rate limiter → usage noted in
//! memory. Storage is read only on a cache miss (or to renew entries past
//! their lifetime, in batches: [`crate::hotpath::renewal`]) and never
//! written here. Management calls authenticate their bearer key
//! through the same path.
//!
//! Storage loads are bounded: at most a quarter of the connection pool
//! serves Authorize's misses and another few serve management
//! authentication, each in its own lane, so a flood of forged keys (each a
//! miss: the checksum is public) queues behind itself, never takes the
//! connections management calls need, and is never mistaken for an outage.
//! Misses that arrive together are read together, one query per batch
//! ([`crate::hotpath::misses`]). Only a storage error that says the
//! database is unreachable, or a query that outlives [`LOAD_TIMEOUT`] while
//! no other load got an answer, marks storage down.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use keygate_domain::ApiKey;
use keygate_domain::{
    keyformat::KeyFormat,
    policy::{self, AccessRequest, DenyReason},
    ratelimit::{Quota, RateDecision},
    rights::Principal,
    scope::Scope,
    snapshot::KeySnapshot,
    usage::{self, UsageBucket, UseOutcome},
};
use keygate_persistence::{Backend, Store, StoreError, StoredVersion};
use tokio::sync::Semaphore;

use crate::{
    config::Config,
    error::ApiError,
    hotpath::cache::{CachedKey, Entry, KeyCache, LoadError},
    hotpath::interner::Interner,
    hotpath::limiter::RateLimiter,
    hotpath::misses::{Found, Miss, MissQueue, Queued},
    hotpath::renewal::{Due, RenewalQueue},
    hotpath::runtime::Runtimes,
    hotpath::usage::UsageRecorder,
    metrics::Metrics,
};

/// Longest a cache miss waits for its lane, and then longest its query may
/// run, before the key is decided from a stale entry (or the call fails as
/// UNAVAILABLE). Only a query that outlives it marks storage down; a wait
/// that outlives it sheds the call.
const LOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// After storage failed, how long loads are not even attempted: stale
/// entries are served at once instead of each request waiting on a timeout.
const UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(1);

/// Runtime registry shards each housekeeping run looks at (of 64).
pub const HOUSEKEEPING_SHARDS: usize = 4;

/// How long the renewal drainer lets entries past their lifetime gather
/// before checking them: they come due one request at a time.
const RENEWAL_GATHER: Duration = Duration::from_millis(50);
/// Entries checked against storage per query.
const RENEWALS_PER_CHECK: usize = 500;
/// Storage loads for management authentication running at once.
const MANAGEMENT_LOADS: usize = 2;
/// Cache misses read per query: a statement's worth of bind parameters on
/// SQLite.
const MISSES_PER_READ: usize = 256;

/// Who is asking for a load: each has its own bounded share of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Authorize's cache misses and background refreshes.
    Authorize,
    /// Management calls authenticating their bearer key.
    Management,
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
    /// Nanoseconds after `origin` when a load last got its answer.
    last_answer: AtomicU64,
    /// Authorize's cache misses waiting to be read together.
    misses: MissQueue,
    /// Entries past their lifetime waiting for a version check.
    renewals: RenewalQueue,
    /// Storage loads allowed at once, per lane.
    authorize_loads: Semaphore,
    management_loads: Semaphore,
    interner: Interner,
}

impl Authorizer {
    /// Builds the hot path over `store` with `config`'s cache and limits,
    /// with metrics of its own.
    pub fn new(store: Store, config: &Config) -> Self {
        Self::with_metrics(store, config, Arc::new(Metrics::default()))
    }

    /// [`Authorizer::new`], counting in `metrics` (which the store may
    /// report to as well).
    pub fn with_metrics(store: Store, config: &Config, metrics: Arc<Metrics>) -> Self {
        let pool = usize::try_from(store.pool_size()).unwrap_or(1);
        Self {
            format: config.key_format.clone(),
            // `Config::validate` refuses a limit with no quota; should one
            // slip through, fall back to one request per hour, never panic.
            default_quota: Quota::per_hour(config.default_rate_limit_per_hour)
                .or_else(|| Quota::per_hour(1))
                .unwrap_or_else(|| unreachable!("one request per hour is a quota")),
            cache: KeyCache::new(
                config.cache_capacity,
                config.cache_ttl,
                config.negative_cache_ttl,
            )
            .with_counters(metrics.cache.clone()),
            runtimes: Arc::new(Runtimes::default()),
            limiter: RateLimiter::new(store.backend() == Backend::Postgres),
            usage: Arc::new(UsageRecorder::new(config.last_used_precision)),
            metrics,
            origin: Instant::now(),
            unavailable_until: AtomicU64::new(0),
            last_answer: AtomicU64::new(0),
            renewals: RenewalQueue::default(),
            // A reader per permit: misses never wait for a permit behind
            // other misses, only behind renewals.
            misses: MissQueue::new((pool / 4).max(1)),
            authorize_loads: Semaphore::new((pool / 4).max(1)),
            management_loads: Semaphore::new(MANAGEMENT_LOADS.min(pool).max(1)),
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

    /// Keygate's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The key format in force.
    pub fn format(&self) -> &KeyFormat {
        &self.format
    }

    /// Forgets per-key state that is idle and shared snapshot parts no cache
    /// entry uses any more (run by the usage flusher, every 5 s by default).
    /// Each run looks at [`HOUSEKEEPING_SHARDS`] of the runtime registry's
    /// shards, so its cost does not grow with every key held: a full sweep
    /// takes 16 runs (80 s at the default interval), well within the
    /// 2 minutes a runtime must be idle before it goes anyway.
    pub fn housekeeping(&self) {
        let unix_now = Utc::now().timestamp();
        self.runtimes.prune_some(HOUSEKEEPING_SHARDS, |runtime| {
            self.limiter.is_at_rest(runtime, unix_now)
        });
        self.interner.prune();
    }

    /// Applies a change of key `key_id` to version `version` (0: unknown)
    /// that touched `lookup_ids`: made by this replica, or announced by
    /// another. From the moment this returns no decision on this replica
    /// reads an older state of the key, whatever loads are in flight.
    pub fn note_change<S: AsRef<str>>(&self, key_id: &str, version: u64, lookup_ids: &[S]) {
        if version > 0 {
            // Created if need be, so a load now in flight finds it.
            self.runtimes.get_or_create(key_id).note_version(version);
        }
        self.cache.invalidate(lookup_ids);
    }

    /// Whether this replica already heard of key `key_id` at `version` or
    /// later (a notification of it changes nothing here).
    pub fn has_heard_of(&self, key_id: &str, version: u64) -> bool {
        version > 0
            && self
                .runtimes
                .get(key_id)
                .is_some_and(|runtime| runtime.latest_version() >= version)
    }

    /// Request counts of a key not yet written to storage, per hour.
    pub fn pending_counts(&self, key_id: &str) -> Vec<UsageBucket> {
        self.usage.pending_counts(&self.runtimes, key_id)
    }

    /// The newest use of a credential not yet written to storage, as
    /// storage will keep it ([`usage::last_use_precision`]).
    pub fn pending_last_used(&self, key_id: &str, lookup_id: &str) -> Option<DateTime<Utc>> {
        self.usage
            .pending_last_used(&self.runtimes, key_id, lookup_id)
            .map(usage::last_use_precision)
    }

    fn nanos_since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Runs `read` within `lane`'s share of the pool, unless storage is
    /// presumed down.
    async fn read<T>(
        &self,
        lane: Lane,
        read: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ApiError> {
        if self.nanos_since_origin() < self.unavailable_until.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(
                "storage presumed down after a failure".into(),
            ));
        }
        let semaphore = match lane {
            Lane::Authorize => &self.authorize_loads,
            Lane::Management => &self.management_loads,
        };
        let Ok(Ok(_permit)) = tokio::time::timeout(LOAD_TIMEOUT, semaphore.acquire()).await else {
            self.metrics.loads_shed.inc();
            return Err(ApiError::Unavailable(format!(
                "{lane:?} loads stayed busy for {LOAD_TIMEOUT:?}; load shed"
            )));
        };
        // The query gets its own LOAD_TIMEOUT: a load that queued behind a
        // flood and then ran a quick query is no sign of an outage, and
        // must not mark storage down (it once did, with the wait's leftover
        // as the query's budget).
        match tokio::time::timeout(LOAD_TIMEOUT, read).await {
            Ok(Ok(found)) => {
                self.last_answer
                    .fetch_max(self.nanos_since_origin(), Ordering::AcqRel);
                Ok(found)
            }
            Ok(Err(StoreError::Unavailable(msg))) => Err(self.storage_down(msg)),
            // The pool is busy, not the database down: shed this call only.
            Ok(Err(StoreError::Saturated(msg))) => Err(ApiError::Unavailable(msg)),
            Ok(Err(other)) => Err(other.into()),
            // Another load got its answer while this one waited: storage
            // is reachable, only slow (a busy machine). Fail this call
            // only; a silent database answers no one and is marked down.
            Err(_) if self.answered_within(LOAD_TIMEOUT) => Err(ApiError::Unavailable(format!(
                "no answer within {LOAD_TIMEOUT:?}, though storage answered others"
            ))),
            Err(_) => Err(self.storage_down(format!("no answer within {LOAD_TIMEOUT:?}"))),
        }
    }

    /// Whether a load got its answer in the last `window`.
    fn answered_within(&self, window: Duration) -> bool {
        let last = self.last_answer.load(Ordering::Acquire);
        last > 0 && self.nanos_since_origin().saturating_sub(last) < window.as_nanos() as u64
    }

    /// Reads the key owning `lookup_id` from storage: Authorize's misses
    /// together with the others waiting ([`crate::hotpath::misses`]),
    /// management authentication on its own within its lane.
    async fn load(self: &Arc<Self>, lookup_id: &str, lane: Lane) -> Result<Entry, ApiError> {
        let found = match lane {
            Lane::Management => {
                self.read(lane, async {
                    self.metrics.key_loads.inc();
                    self.store.find_by_lookup_id(lookup_id).await
                })
                .await?
            }
            Lane::Authorize => match self.misses.push(lookup_id) {
                Queued::Waiting {
                    answer,
                    start_reader,
                } => {
                    if start_reader {
                        tokio::spawn(self.clone().read_misses());
                    }
                    answer.await.unwrap_or_else(|_| {
                        Err(ApiError::Internal(
                            "a miss reader ended without answering".into(),
                        ))
                    })?
                }
                Queued::Full => {
                    self.metrics.loads_shed.inc();
                    return Err(ApiError::Unavailable(
                        "too many cache misses waiting; load shed".into(),
                    ));
                }
            },
        };
        Ok(match found {
            Some(key) => {
                let runtime = self.runtimes.get_or_create(&key.id);
                runtime.note_version(key.version);
                UsageRecorder::note_stored(&runtime, key.last_used_at);
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

    /// A miss reader: reads the waiting misses a batch per query until none
    /// is left, and answers each.
    async fn read_misses(self: Arc<Self>) {
        let mut reader = self.misses.reader();
        loop {
            let misses = reader.take(MISSES_PER_READ);
            if misses.is_empty() {
                return;
            }
            let ids: Vec<&str> = misses.iter().map(|miss| &*miss.lookup_id).collect();
            let read = self
                .read(Lane::Authorize, async {
                    self.metrics.key_loads.inc_by(ids.len() as u64);
                    self.store.find_by_lookup_ids(&ids).await
                })
                .await;
            answer_misses(misses, read);
        }
    }

    /// The renewal drainer: checks the entries queued past their lifetime
    /// a batch at a time until none are left.
    async fn renew_due(self: Arc<Self>) {
        let mut drainer = self.renewals.drainer();
        loop {
            tokio::time::sleep(RENEWAL_GATHER).await;
            let due = drainer.take(RENEWALS_PER_CHECK);
            if due.is_empty() {
                return;
            }
            // Not checked now: their next use past the retry pause asks again.
            if let Err(err) = self.renew(due).await {
                tracing::debug!(error = %err, "renewal check failed");
            }
        }
    }

    /// Checks `due` against storage: an entry whose version storage still
    /// holds starts a new lifetime; one whose key changed (a change this
    /// replica did not hear of) or is gone is read again and, meanwhile,
    /// decides nothing. Almost always nothing moved, which one aggregate
    /// query tells; only otherwise are the versions read key by key.
    async fn renew(self: &Arc<Self>, due: Vec<Due>) -> Result<(), ApiError> {
        let read_at = self.cache.stamp();
        let expected: Vec<(&str, u64)> = due
            .iter()
            .map(|(_, key)| (&*key.snapshot.id, key.snapshot.version))
            .collect();
        let unchanged = self
            .read(Lane::Authorize, self.store.versions_unchanged(&expected))
            .await?;
        if unchanged {
            for (lookup_id, key) in &due {
                if self.cache.renew(lookup_id, key, read_at).await {
                    self.metrics.key_renewals.inc();
                }
            }
            return Ok(());
        }
        let ids: Vec<&str> = due.iter().map(|(_, key)| &*key.snapshot.id).collect();
        let stored = self
            .read(Lane::Authorize, self.store.current_versions(&ids))
            .await?;
        let stored: HashMap<&str, &StoredVersion> =
            stored.iter().map(|s| (s.key_id.as_str(), s)).collect();
        for (lookup_id, key) in &due {
            match stored.get(&*key.snapshot.id) {
                Some(found) if found.version == key.snapshot.version => {
                    UsageRecorder::note_stored(&key.runtime, found.last_used_at);
                    if self.cache.renew(lookup_id, key, read_at).await {
                        self.metrics.key_renewals.inc();
                    }
                }
                moved => {
                    if let Some(found) = moved {
                        key.runtime.note_version(found.version);
                    }
                    let load = || self.load(lookup_id, Lane::Authorize);
                    if let Err(err) = self.cache.refresh(lookup_id, load).await {
                        tracing::debug!(error = %err, "reload of a changed key failed");
                    }
                }
            }
        }
        Ok(())
    }

    fn storage_down(&self, message: String) -> ApiError {
        let until = self.nanos_since_origin() + UNAVAILABLE_BACKOFF.as_nanos() as u64;
        self.unavailable_until.fetch_max(until, Ordering::AcqRel);
        ApiError::Unavailable(message)
    }

    /// The cached key a lookup id belongs to, loading it on a miss. `None`
    /// means no key has that lookup id.
    async fn lookup(
        self: &Arc<Self>,
        lookup_id: &str,
        lane: Lane,
    ) -> Result<Option<Arc<CachedKey>>, ApiError> {
        let entry = match self
            .cache
            .get_or_load(lookup_id, || self.load(lookup_id, lane))
            .await
        {
            Ok(lookup) => {
                if let (true, Entry::Known(key)) = (lookup.refresh, &lookup.entry)
                    && self.renewals.push(lookup_id, key.clone())
                {
                    tokio::spawn(self.clone().renew_due());
                }
                lookup.entry
            }
            // Storage is down: keep deciding from what we knew (fail-static).
            Err(LoadError {
                error: ApiError::Unavailable(_),
                stale: Some(stale),
            }) => {
                self.metrics.stale_served.inc();
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
        let invalid = || Outcome::Deny {
            reason: DenyReason::KeyInvalid,
            key: None,
            missing_scopes: Vec::new(),
            rate: None,
        };
        let Ok(parsed) = self.format.parse(presented) else {
            return Ok(invalid());
        };
        let Some(key) = self.lookup(parsed.lookup_id, Lane::Authorize).await? else {
            return Ok(invalid());
        };
        let Some(secret) = key.snapshot.find_secret(parsed.lookup_id, parsed.key) else {
            return Ok(invalid());
        };
        // From here the key is recognised: every outcome counts as its usage.
        let record = |outcome| {
            self.usage
                .record(&key.runtime, secret.lookup_id, now, outcome);
        };
        if let Err(denial) = policy::check(&key.snapshot, secret, request, now) {
            record(UseOutcome::Denied);
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
            record(UseOutcome::RateLimited);
            return Ok(Outcome::Deny {
                reason: DenyReason::RateLimited,
                key: Some(key.clone()),
                missing_scopes: Vec::new(),
                rate: Some(rate),
            });
        }
        record(UseOutcome::Allowed);
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
        let (key, lookup_id) = self.verify_bearer(bearer, peer, now).await?;
        self.usage
            .record(&key.runtime, lookup_id, now, UseOutcome::Allowed);
        Ok(Principal::from_snapshot(&key.snapshot))
    }

    /// [`Authorizer::authenticate`] without counting a use of the key: for
    /// checks that are not calls of their own (the console re-checks its
    /// session's key on every page, then makes the call that counts).
    pub async fn verify_management_key(
        self: &Arc<Self>,
        bearer: Option<&str>,
        peer: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Principal, ApiError> {
        let (key, _) = self.verify_bearer(bearer, peer, now).await?;
        Ok(Principal::from_snapshot(&key.snapshot))
    }

    /// The cached key `bearer` belongs to, and its secret's lookup id, if
    /// it may manage now from `peer`.
    async fn verify_bearer(
        self: &Arc<Self>,
        bearer: Option<&str>,
        peer: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<(Arc<CachedKey>, [u8; 8]), ApiError> {
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
        let key = self
            .lookup(parsed.lookup_id, Lane::Management)
            .await?
            .ok_or_else(invalid)?;
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
        let lookup_id = secret.lookup_id;
        Ok((key, lookup_id))
    }
}

/// Answers each of `misses` from what one read found: the key owning its
/// lookup id, `None` when no key does, or the read's error.
fn answer_misses(misses: Vec<Miss>, read: Result<Vec<ApiKey>, ApiError>) {
    let keys = match read {
        Ok(keys) => keys,
        Err(err) => {
            for miss in misses {
                miss.answer(Err(same_error(&err)));
            }
            return;
        }
    };
    let owners: HashMap<&str, &ApiKey> = keys
        .iter()
        .flat_map(|key| {
            key.credentials
                .iter()
                .map(move |c| (c.lookup_id.as_str(), key))
        })
        .collect();
    for miss in misses {
        let found: Found = Ok(owners.get(&*miss.lookup_id).map(|&key| key.clone()));
        miss.answer(found);
    }
}

/// `err` again, for each caller of a failed read: a storage read fails as
/// unavailable or internal, and keeps its detail either way.
fn same_error(err: &ApiError) -> ApiError {
    match err {
        ApiError::Unavailable(detail) => ApiError::Unavailable(detail.clone()),
        other => ApiError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! The race that once left revoked keys authorizing, driven step by step
    //! against real storage: a load reads the key, the key is revoked and
    //! the change noted, then the load finishes.

    use std::sync::atomic::AtomicUsize;

    use keygate_domain::{
        ApiKey, KeyState,
        audit::Actor,
        environment::Environments,
        validation::{self, NewKeyInput},
    };
    use keygate_persistence::{KeyUpdate, testing::TestDatabase};
    use tokio::sync::{Notify, oneshot};

    use super::*;
    use crate::api::management::issue_key;

    struct Fixture {
        _db: TestDatabase,
        store: Store,
        authorizer: Arc<Authorizer>,
        key_id: String,
        secret: String,
        lookup_id: String,
    }

    async fn fixture(db: TestDatabase, cache_ttl: Duration) -> Fixture {
        let store = Store::connect(&db.url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let config = Config {
            database_url: db.url.clone(),
            cache_ttl,
            ..Config::default()
        };
        let now = Utc::now();
        let input = NewKeyInput {
            owner_id: "acme".into(),
            name: "raced".into(),
            environment: "live".into(),
            ..NewKeyInput::default()
        };
        let new =
            validation::validate_new_key(input, &Environments::default(), now).expect("valid");
        let (secret, key) = issue_key(new, &config.key_format, now);
        store
            .insert_key(&key, &Actor::default())
            .await
            .expect("insert");
        Fixture {
            authorizer: Arc::new(Authorizer::new(store.clone(), &config)),
            store,
            _db: db,
            key_id: key.id.clone(),
            lookup_id: key.credentials[0].lookup_id.clone(),
            secret,
        }
    }

    fn live() -> AccessRequest<'static> {
        AccessRequest {
            environment: "live",
            required_scopes: &[],
            client_ip: None,
        }
    }

    async fn decide(f: &Fixture) -> Result<DenyReason, ()> {
        match f.authorizer.authorize(&f.secret, &live(), Utc::now()).await {
            Ok(Outcome::Allow { .. }) => Err(()),
            Ok(Outcome::Deny { reason, .. }) => Ok(reason),
            Err(err) => panic!("authorize failed: {err:?}"),
        }
    }

    /// Starts a load of the fixture's lookup id through `load_with` whose
    /// first storage read completes and then waits for `release`; returns
    /// once that read is done, plus the task and the number of reads made.
    async fn start_held_load(
        f: &Fixture,
        refresh: bool,
    ) -> (
        tokio::task::JoinHandle<Option<u64>>,
        Arc<Notify>,
        Arc<AtomicUsize>,
    ) {
        let release = Arc::new(Notify::new());
        let reads = Arc::new(AtomicUsize::new(0));
        let (read_done, read_done_rx) = oneshot::channel();
        let read_done = std::sync::Mutex::new(Some(read_done));
        let read_done = Arc::new(read_done);
        let task = {
            let (authorizer, lookup_id) = (f.authorizer.clone(), f.lookup_id.clone());
            let (release, reads) = (release.clone(), reads.clone());
            tokio::spawn(async move {
                let load = || {
                    let (authorizer, lookup_id) = (authorizer.clone(), lookup_id.clone());
                    let (release, reads, read_done) =
                        (release.clone(), reads.clone(), read_done.clone());
                    async move {
                        let entry = authorizer.load(&lookup_id, Lane::Authorize).await;
                        if reads.fetch_add(1, Ordering::SeqCst) == 0 {
                            if let Some(done) = read_done.lock().unwrap().take() {
                                let _ = done.send(());
                            }
                            release.notified().await;
                        }
                        entry
                    }
                };
                let entry = if refresh {
                    authorizer
                        .cache()
                        .refresh(&lookup_id, load)
                        .await
                        .expect("refresh");
                    None
                } else {
                    Some(
                        authorizer
                            .cache()
                            .get_or_load(&lookup_id, load)
                            .await
                            .expect("load")
                            .entry,
                    )
                };
                entry.map(|entry| match entry {
                    Entry::Known(key) => key.snapshot.version,
                    Entry::Unknown => 0,
                })
            })
        };
        read_done_rx.await.expect("first read done");
        (task, release, reads)
    }

    /// Revokes the key in storage only: no replica hears of it.
    async fn revoke_unannounced(f: &Fixture) -> ApiKey {
        let key = f.store.get_key(&f.key_id).await.unwrap().unwrap();
        let revoked = f
            .store
            .update_key(
                &f.key_id,
                key.version,
                &KeyUpdate::Revoke { reason: None },
                Utc::now(),
                &Actor::default(),
                None,
            )
            .await
            .expect("revoke");
        assert_eq!(revoked.state, KeyState::Revoked);
        revoked
    }

    /// Revokes the key in storage and notes the change, as RevokeKey does.
    async fn revoke(f: &Fixture) {
        let revoked = revoke_unannounced(f).await;
        f.authorizer
            .note_change(&f.key_id, revoked.version, &[f.lookup_id.as_str()]);
    }

    async fn a_load_of_an_uncached_key_that_read_before_a_revocation(db: TestDatabase) {
        let f = fixture(db, Duration::from_secs(300)).await;
        // Load started and read (version 1, active) …
        let (task, release, reads) = start_held_load(&f, false).await;
        // … the revocation commits and is noted …
        revoke(&f).await;
        // … then the load finishes.
        release.notify_one();
        assert_eq!(
            task.await.unwrap(),
            Some(2),
            "the caller got the revoked key"
        );
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "the outdated read was read again"
        );
        assert_eq!(decide(&f).await, Ok(DenyReason::KeyRevoked));
    }

    async fn a_refresh_of_a_cached_key_that_read_before_a_revocation(db: TestDatabase) {
        // A long lifetime: whatever the refresh stores is fresh for minutes.
        let f = fixture(db, Duration::from_secs(300)).await;
        assert_eq!(decide(&f).await, Err(()), "cached while active");
        // Due for a reload (as past its lifetime, or after lost notifications).
        f.authorizer.cache().clear();
        // A background refresh started and read (version 1) …
        let (task, release, _) = start_held_load(&f, true).await;
        // … the revocation commits and is noted …
        revoke(&f).await;
        // A caller now misses (the entry was evicted) and waits for the
        // load of its lookup id in flight: the refresh holding the old read.
        let f = Arc::new(f);
        let waiting = {
            let f = f.clone();
            tokio::spawn(async move { decide(&f).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // … then the refresh finishes: it must not bring the old state back.
        release.notify_one();
        task.await.unwrap();
        assert_eq!(waiting.await.unwrap(), Ok(DenyReason::KeyRevoked));
        assert_eq!(decide(&f).await, Ok(DenyReason::KeyRevoked));
    }

    async fn a_cached_key_reloading_after_distrust_during_a_revocation(db: TestDatabase) {
        let f = fixture(db, Duration::from_secs(300)).await;
        assert_eq!(decide(&f).await, Err(()), "cached while active");
        // Notifications may have been lost: the entry must be re-read.
        f.authorizer.cache().clear();
        let (task, release, _) = start_held_load(&f, false).await;
        revoke(&f).await;
        release.notify_one();
        assert_eq!(task.await.unwrap(), Some(2));
        assert_eq!(decide(&f).await, Ok(DenyReason::KeyRevoked));
    }

    /// Polls `done` every 10 ms for up to 5 s; whether it came true.
    async fn eventually(mut done: impl AsyncFnMut() -> bool) -> bool {
        for _ in 0..500 {
            if done().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// A key past its lifetime that storage still holds at the cached
    /// version starts a new lifetime from a version check, not a read.
    async fn an_unchanged_key_past_its_lifetime_is_renewed_without_a_read(db: TestDatabase) {
        let f = fixture(db, Duration::from_millis(40)).await;
        let metrics = f.authorizer.metrics().clone();
        assert_eq!(decide(&f).await, Err(()), "allowed");
        assert_eq!(metrics.key_loads.get(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(decide(&f).await, Err(()), "served while due");
        assert!(
            eventually(async || metrics.key_renewals.get() == 1).await,
            "renewed"
        );
        assert_eq!(metrics.key_loads.get(), 1, "not read again");
        assert_eq!(decide(&f).await, Err(()));
    }

    /// A change this replica never heard of (a lost notification) is caught
    /// when the entry comes due: the version check sees the version moved,
    /// and the key is read again.
    async fn a_change_not_heard_of_is_caught_when_the_entry_comes_due(db: TestDatabase) {
        let f = fixture(db, Duration::from_millis(40)).await;
        let metrics = f.authorizer.metrics().clone();
        assert_eq!(decide(&f).await, Err(()), "allowed");
        revoke_unannounced(&f).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            eventually(async || decide(&f).await == Ok(DenyReason::KeyRevoked)).await,
            "the revocation was never seen"
        );
        assert_eq!(
            metrics.key_renewals.get(),
            0,
            "a moved version renews nothing"
        );
        assert_eq!(metrics.key_loads.get(), 2, "read again once");
    }

    /// Twenty unchanged keys and one changed unheard of come due together:
    /// the one-row check says something moved, the per-key read finds
    /// which, the twenty are renewed and the changed one is read again.
    async fn a_moved_key_among_unchanged_ones_is_caught_and_the_rest_renewed(db: TestDatabase) {
        let f = fixture(db, Duration::from_secs(60)).await;
        let operations = Arc::new(Operations::default());
        let config = Config {
            database_url: f._db.url.clone(),
            cache_ttl: Duration::from_millis(40),
            ..Config::default()
        };
        let authorizer = Arc::new(Authorizer::new(
            f.store.clone().with_observer(operations.clone()),
            &config,
        ));
        let mut secrets = Vec::new();
        for i in 0..20 {
            let now = Utc::now();
            let input = NewKeyInput {
                owner_id: "acme".into(),
                name: format!("unchanged {i}"),
                environment: "live".into(),
                ..NewKeyInput::default()
            };
            let new =
                validation::validate_new_key(input, &Environments::default(), now).expect("valid");
            let (secret, key) = issue_key(new, &config.key_format, now);
            f.store
                .insert_key(&key, &Actor::default())
                .await
                .expect("insert");
            secrets.push(secret);
        }
        secrets.push(f.secret.clone());
        let present = async |secrets: &[String]| {
            let mut denied = Vec::new();
            for secret in secrets {
                match authorizer.authorize(secret, &live(), Utc::now()).await {
                    Ok(Outcome::Allow { .. }) => {}
                    Ok(Outcome::Deny { reason, .. }) => denied.push(reason),
                    Err(err) => panic!("authorize failed: {err:?}"),
                }
            }
            denied
        };
        assert!(present(&secrets).await.is_empty(), "all allowed");
        revoke_unannounced(&f).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // All due now: served as cached, and queued for one check.
        assert!(present(&secrets).await.is_empty(), "served while due");
        let metrics = authorizer.metrics().clone();
        assert!(
            eventually(async || present(&secrets[20..]).await == [DenyReason::KeyRevoked]).await,
            "the revocation was never seen"
        );
        assert_eq!(metrics.key_renewals.get(), 20, "the unchanged renewed");
        assert_eq!(metrics.key_loads.get(), 22, "only the moved one read again");
        // One check, or two if a slow machine split the keys over two
        // batches; the per-key read only for the batch holding the moved key.
        let ops = operations.0.lock().unwrap();
        assert!(
            matches!(ops.get("versions_unchanged"), Some(1 | 2)),
            "{ops:?}"
        );
        assert_eq!(ops.get("current_versions"), Some(&1), "{ops:?}");
    }

    /// A version check reads the key unchanged, then a revocation commits
    /// and is noted, then the check's renewal arrives: it must not keep the
    /// old state (the steps of `Authorizer::renew`, interleaved by hand).
    async fn a_renewal_check_that_read_before_a_revocation(db: TestDatabase) {
        let f = fixture(db, Duration::from_secs(300)).await;
        assert_eq!(decide(&f).await, Err(()), "cached while active");
        let Entry::Known(cached) = f
            .authorizer
            .cache()
            .get_or_load(&f.lookup_id, || {
                f.authorizer.load(&f.lookup_id, Lane::Authorize)
            })
            .await
            .expect("cached")
            .entry
        else {
            panic!("the key is known");
        };
        let read_at = f.authorizer.cache().stamp();
        let stored = f.store.current_versions(&[&f.key_id]).await.expect("check");
        assert_eq!(
            stored[0].version, cached.snapshot.version,
            "unchanged when read"
        );
        revoke(&f).await;
        assert!(
            !f.authorizer
                .cache()
                .renew(&f.lookup_id, &cached, read_at)
                .await,
            "renewed an entry older than the revocation"
        );
        assert_eq!(decide(&f).await, Ok(DenyReason::KeyRevoked));
    }

    /// A use not yet flushed shows exactly what storage shows once it is:
    /// a key read just before and just after the flush is the same.
    async fn a_pending_use_shows_the_time_storage_will_keep(db: TestDatabase) {
        let f = fixture(db, Duration::from_secs(60)).await;
        // A time with nanoseconds, as the clock gives them.
        let at = DateTime::from_timestamp(Utc::now().timestamp(), 123_456_789).expect("time");
        let allowed = f.authorizer.authorize(&f.secret, &live(), at).await;
        assert!(matches!(allowed, Ok(Outcome::Allow { .. })), "{allowed:?}");
        let pending = f
            .authorizer
            .pending_last_used(&f.key_id, &f.lookup_id)
            .expect("pending use");
        f.authorizer
            .usage()
            .flush_last_used(&f.store)
            .await
            .expect("flush");
        assert_eq!(
            f.authorizer.pending_last_used(&f.key_id, &f.lookup_id),
            None
        );
        let stored = f.store.get_key(&f.key_id).await.expect("get").expect("key");
        assert_eq!(stored.credentials[0].last_used_at, Some(pending));
        assert_eq!(stored.last_used_at, Some(pending));
    }

    /// Counts the storage operations made, by name.
    #[derive(Debug, Default)]
    struct Operations(std::sync::Mutex<HashMap<&'static str, usize>>);

    impl keygate_persistence::StoreObserver for Operations {
        fn operation_done(&self, operation: &'static str, _: Duration, _: bool) {
            *self.0.lock().unwrap().entry(operation).or_default() += 1;
        }
    }

    /// The fixture's key and `forged` well-formed keys no one owns, all
    /// presented at once (tasks on the test's one thread, so all are
    /// waiting before any read runs), through an authorizer over `store`.
    async fn present_together(
        f: &Fixture,
        store: Store,
        forged: usize,
    ) -> (Arc<Authorizer>, Vec<Result<Outcome, ApiError>>) {
        let config = Config {
            database_url: f._db.url.clone(),
            ..Config::default()
        };
        let authorizer = Arc::new(Authorizer::new(store, &config));
        let format = KeyFormat::default();
        let mut keys: Vec<String> = (0..forged)
            .map(|_| {
                keygate_domain::hashing::issue_credential(&format, "live", Utc::now())
                    .0
                    .secret
            })
            .collect();
        keys.push(f.secret.clone());
        let calls: Vec<_> = keys
            .into_iter()
            .map(|key| {
                let authorizer = authorizer.clone();
                tokio::spawn(async move { authorizer.authorize(&key, &live(), Utc::now()).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for call in calls {
            outcomes.push(call.await.expect("authorize task"));
        }
        (authorizer, outcomes)
    }

    /// A hundred forged keys and a real one, all misses at once, cost a
    /// query or a few (two misses may share a load lock, and wait for the
    /// next read), not a query each; each gets its own answer.
    async fn misses_that_arrive_together_are_read_together(db: TestDatabase) {
        let f = fixture(db, Duration::from_secs(60)).await;
        let operations = Arc::new(Operations::default());
        let store = f.store.clone().with_observer(operations.clone());
        let (authorizer, outcomes) = present_together(&f, store, 100).await;
        let (real, forged) = outcomes.split_last().expect("outcomes");
        assert!(matches!(real, Ok(Outcome::Allow { .. })), "{real:?}");
        for outcome in forged {
            assert!(
                matches!(
                    outcome,
                    Ok(Outcome::Deny {
                        reason: DenyReason::KeyInvalid,
                        ..
                    })
                ),
                "{outcome:?}"
            );
        }
        assert_eq!(authorizer.metrics().key_loads.get(), 101);
        let reads = operations
            .0
            .lock()
            .unwrap()
            .get("find_by_lookup_ids")
            .copied();
        assert!(
            reads.is_some_and(|reads| reads <= 5),
            "101 misses took {reads:?} reads"
        );
        // Remembered: presented again, none is read.
        assert!(matches!(decide(&f).await, Err(())));
        assert_eq!(authorizer.metrics().key_loads.get(), 101);
    }

    /// A read that fails answers every miss waiting on it with the error,
    /// and caches nothing.
    async fn a_failed_read_fails_every_miss_in_it(db: TestDatabase) {
        use sea_orm::ConnectionTrait as _;
        let f = fixture(db, Duration::from_secs(60)).await;
        f.store
            .connection()
            .execute_unprepared("ALTER TABLE credentials RENAME TO credentials_gone")
            .await
            .expect("break the table");
        let (authorizer, outcomes) = present_together(&f, f.store.clone(), 20).await;
        for outcome in &outcomes {
            assert!(matches!(outcome, Err(ApiError::Internal(_))), "{outcome:?}");
        }
        f.store
            .connection()
            .execute_unprepared("ALTER TABLE credentials_gone RENAME TO credentials")
            .await
            .expect("repair the table");
        let outcome = authorizer.authorize(&f.secret, &live(), Utc::now()).await;
        assert!(matches!(outcome, Ok(Outcome::Allow { .. })), "{outcome:?}");
    }

    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $(
                    #[tokio::test]
                    async fn $name() {
                        super::$name(keygate_persistence::testing::TestDatabase::sqlite()).await;
                    }
                )*
            }
            mod postgres {
                $(
                    #[tokio::test]
                    async fn $name() {
                        if let Some(db) = keygate_persistence::testing::TestDatabase::postgres().await {
                            super::$name(db).await;
                        }
                    }
                )*
            }
        };
    }

    on_both_backends!(
        a_load_of_an_uncached_key_that_read_before_a_revocation,
        a_refresh_of_a_cached_key_that_read_before_a_revocation,
        a_cached_key_reloading_after_distrust_during_a_revocation,
        a_pending_use_shows_the_time_storage_will_keep,
        misses_that_arrive_together_are_read_together,
        a_failed_read_fails_every_miss_in_it,
        an_unchanged_key_past_its_lifetime_is_renewed_without_a_read,
        a_change_not_heard_of_is_caught_when_the_entry_comes_due,
        a_moved_key_among_unchanged_ones_is_caught_and_the_rest_renewed,
        a_renewal_check_that_read_before_a_revocation,
    );
}
