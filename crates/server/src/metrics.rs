//! Prometheus metrics, served as `GET /metrics` on the HTTP listener: what
//! the hot path decided and how fast, what the cache and storage did, how
//! far usage and change notifications lag, and management calls by method
//! and code.
//!
//! Built on `prometheus-client` (the Prometheus project's own crate). The
//! hot path never looks a label set up: every decision counter and latency
//! histogram is resolved once, here, and indexed by plain enums; a decision
//! costs two relaxed atomic adds and one uncontended histogram lock.
//! Figures that are states rather than events (cache entries, flush lag,
//! notification age) are read when scraped.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use keygate_domain::policy::DenyReason;
use keygate_persistence::StoreObserver;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    error::{self, ApiError},
    hotpath::authorizer::Outcome,
    hotpath::cache::CacheCounters,
};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which front end a decision was asked through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// `keygate.v1.AuthorizationService/Authorize`.
    Authorize = 0,
    /// `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthz = 1,
    /// HTTP `/v1/authorize`.
    ForwardAuth = 2,
}

const FRONTENDS: [(Frontend, &str); 3] = [
    (Frontend::Authorize, "authorize"),
    (Frontend::ExtAuthz, "ext_authz"),
    (Frontend::ForwardAuth, "forward_auth"),
];

/// How a decision ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Allowed.
    Allow,
    /// Denied, for this reason.
    Deny(DenyReason),
    /// The request was malformed (no decision).
    Invalid,
    /// Keygate could not decide (storage unavailable, overload).
    Failed,
}

/// Outcomes counted per front end: allow, each deny reason, then the two
/// errors, in [`Decided::index`] order.
const OUTCOMES: usize = DenyReason::ALL.len() + 3;

/// The `(decision, reason)` labels of every outcome, in [`Decided::index`]
/// order; deny reasons by [`DenyReason::name`].
fn outcome_labels() -> [(&'static str, &'static str); OUTCOMES] {
    let mut labels = [("allow", "none"); OUTCOMES];
    for reason in DenyReason::ALL {
        labels[Decided::Deny(reason).index()] = ("deny", reason.name());
    }
    labels[Decided::Invalid.index()] = ("error", "invalid_request");
    labels[Decided::Failed.index()] = ("error", "unavailable");
    labels
}

impl Decided {
    /// How the hot path's `outcome` counts.
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Allow { .. } => Self::Allow,
            Outcome::Deny { reason, .. } => Self::Deny(*reason),
        }
    }

    /// How a call that ended in `error` counts.
    pub fn failed(error: &ApiError) -> Self {
        match error {
            ApiError::Invalid(_) => Self::Invalid,
            _ => Self::Failed,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Allow => 0,
            // `DenyReason::ALL` is in declaration order.
            Self::Deny(reason) => 1 + reason as usize,
            Self::Invalid => OUTCOMES - 2,
            Self::Failed => OUTCOMES - 1,
        }
    }
}

/// Which usage flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// `last_used_at` of keys and credentials.
    LastUsed = 0,
    /// Hourly request counts.
    Counts = 1,
}

const FLUSHES: [(Flush, &str); 2] = [(Flush::LastUsed, "last_used"), (Flush::Counts, "counts")];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Upper bounds of the latency buckets, seconds: 10 µs … 5 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Everything Keygate exports, and the handles that feed it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    origin: Instant,
    decisions: [[Counter; OUTCOMES]; FRONTENDS.len()],
    decision_seconds: [Histogram; FRONTENDS.len()],
    /// Keys read from storage by the hot path (cache misses, refreshes,
    /// management authentication). A warm path leaves this unchanged.
    pub key_loads: Counter,
    /// Decisions taken from a stale entry because storage was down.
    pub stale_served: Counter,
    /// Loads refused because their lane stayed full (the caller got
    /// UNAVAILABLE; storage was not marked down).
    pub loads_shed: Counter,
    /// Cached keys past their lifetime that a set-based version check
    /// found unchanged and renewed without reading them again.
    pub key_renewals: Counter,
    /// Cache lookups, fed by the cache itself.
    pub cache: CacheCounters,
    cache_entries: Gauge,
    storage_operations: Family<Labels1, Counter>,
    storage_errors: Family<Labels1, Counter>,
    storage_seconds: Family<Labels1, Histogram, fn() -> Histogram>,
    flush_seconds: [Histogram; FLUSHES.len()],
    flush_lag: [Gauge<f64, AtomicU64>; FLUSHES.len()],
    /// Nanoseconds after `origin` of each flush's last success (0: none yet).
    flushed_at: [AtomicU64; FLUSHES.len()],
    listener_reconnects: Counter,
    notification_age: Gauge<f64, AtomicU64>,
    /// Nanoseconds after `origin` of the last notification heard (0: none).
    notified_at: AtomicU64,
    management_calls: Family<Labels2, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl Metrics {
    /// A registry holding every Keygate metric, all at zero; the change
    /// listener's only when `notifications` (PostgreSQL) are listened to.
    pub fn new(notifications: bool) -> Self {
        let mut registry = Registry::with_prefix("keygate");

        let decisions_by_reason = Family::<[(&'static str, &'static str); 3], Counter>::default();
        // Resolved once, so every series exists from the start and a
        // decision never looks its labels up.
        let decisions = FRONTENDS.map(|(_, frontend)| {
            outcome_labels().map(|(decision, reason)| {
                decisions_by_reason
                    .get_or_create(&[
                        ("service", frontend),
                        ("decision", decision),
                        ("reason", reason),
                    ])
                    .clone()
            })
        });
        registry.register(
            "decisions",
            "Authorization decisions by front end, decision and reason",
            decisions_by_reason,
        );

        let seconds_family = Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let decision_seconds = FRONTENDS.map(|(_, frontend)| {
            seconds_family
                .get_or_create(&[("service", frontend)])
                .clone()
        });
        registry.register(
            "decision_duration_seconds",
            "Time to decide, from request decoded to answer built",
            seconds_family,
        );

        let key_loads = Counter::default();
        registry.register(
            "key_loads",
            "Keys read from storage by the hot path (cache misses, refreshes, management authentication)",
            key_loads.clone(),
        );
        let stale_served = Counter::default();
        registry.register(
            "stale_decisions",
            "Decisions taken from a stale cache entry because storage was unreachable",
            stale_served.clone(),
        );
        let loads_shed = Counter::default();
        registry.register(
            "loads_shed",
            "Key loads refused because their share of the connection pool stayed busy",
            loads_shed.clone(),
        );
        let key_renewals = Counter::default();
        registry.register(
            "key_renewals",
            "Cached keys past their lifetime renewed because storage still held their version (checked in batches, not read again)",
            key_renewals.clone(),
        );

        let cache = CacheCounters::default();
        registry.register(
            "cache_hits",
            "Cache lookups answered by a known key",
            cache.hits.clone(),
        );
        registry.register(
            "cache_negative_hits",
            "Cache lookups answered by a remembered unknown lookup id",
            cache.negative_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Cache lookups that had to load from storage",
            cache.misses.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the key cache (known and unknown lookup ids)",
            cache_entries.clone(),
        );

        let storage_operations = Family::<Labels1, Counter>::default();
        registry.register(
            "storage_operations",
            "Storage operations by operation",
            storage_operations.clone(),
        );
        let storage_errors = Family::<Labels1, Counter>::default();
        registry.register(
            "storage_errors",
            "Storage operations that failed, by operation",
            storage_errors.clone(),
        );
        let storage_seconds = Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register(
            "storage_operation_duration_seconds",
            "Time a storage operation took, by operation",
            storage_seconds.clone(),
        );

        let flush_family = Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let flush_seconds =
            FLUSHES.map(|(_, kind)| flush_family.get_or_create(&[("kind", kind)]).clone());
        registry.register(
            "usage_flush_duration_seconds",
            "Time a usage flush took, by kind",
            flush_family,
        );
        let lag_family = Family::<Labels1, Gauge<f64, AtomicU64>>::default();
        let flush_lag =
            FLUSHES.map(|(_, kind)| lag_family.get_or_create(&[("kind", kind)]).clone());
        registry.register(
            "usage_flush_lag_seconds",
            "Seconds since usage of this kind was last written to storage (since start when never)",
            lag_family,
        );

        let listener_reconnects = Counter::default();
        let notification_age = Gauge::<f64, AtomicU64>::default();
        if notifications {
            registry.register(
                "change_listener_reconnects",
                "Times the key-change listener (PostgreSQL LISTEN) started over; the cache is distrusted each time",
                listener_reconnects.clone(),
            );
            registry.register(
                "change_notification_age_seconds",
                "Seconds since the last key-change notification or heartbeat (since start when none)",
                notification_age.clone(),
            );
        }

        let management_calls = Family::<Labels2, Counter>::default();
        registry.register(
            "management_calls",
            "KeyManagementService calls by method and gRPC code",
            management_calls.clone(),
        );

        Self {
            registry,
            origin: Instant::now(),
            decisions,
            decision_seconds,
            key_loads,
            stale_served,
            loads_shed,
            key_renewals,
            cache,
            cache_entries,
            storage_operations,
            storage_errors,
            storage_seconds,
            flush_seconds,
            flush_lag,
            flushed_at: [AtomicU64::new(0), AtomicU64::new(0)],
            listener_reconnects,
            notification_age,
            notified_at: AtomicU64::new(0),
            management_calls,
        }
    }

    /// Counts one decision and how long it took.
    pub fn decided(&self, frontend: Frontend, decided: Decided, elapsed: Duration) {
        let f = frontend as usize;
        self.decisions[f][decided.index()].inc();
        self.decision_seconds[f].observe(elapsed.as_secs_f64());
    }

    /// A usage flush of `kind` ended after `elapsed`; `ok` when it wrote.
    pub fn flushed(&self, kind: Flush, elapsed: Duration, ok: bool) {
        self.flush_seconds[kind as usize].observe(elapsed.as_secs_f64());
        if ok {
            self.flushed_at[kind as usize].store(self.since_origin(), Ordering::Relaxed);
        }
    }

    /// A key-change notification or heartbeat arrived.
    pub fn notified(&self) {
        self.notified_at
            .store(self.since_origin(), Ordering::Relaxed);
    }

    /// The key-change listener started over.
    pub fn listener_reconnected(&self) {
        self.listener_reconnects.inc();
    }

    /// A management call of `method` ended with `code`.
    pub fn management_call(&self, method: &'static str, code: tonic::Code) {
        self.management_calls
            .get_or_create(&[("method", method), ("code", error::code_name(code))])
            .inc();
    }

    /// The metrics in the OpenMetrics text format, after reading the
    /// figures that are states: `cache_entries` held now.
    pub fn render(&self, cache_entries: usize) -> String {
        self.cache_entries
            .set(i64::try_from(cache_entries).unwrap_or(i64::MAX));
        let now = self.since_origin();
        let age = |at: &AtomicU64| {
            Duration::from_nanos(now.saturating_sub(at.load(Ordering::Relaxed))).as_secs_f64()
        };
        for (lag, at) in self.flush_lag.iter().zip(&self.flushed_at) {
            lag.set(age(at));
        }
        self.notification_age.set(age(&self.notified_at));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    fn since_origin(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl StoreObserver for Metrics {
    fn operation_done(&self, operation: &'static str, elapsed: Duration, failed: bool) {
        let labels = [("operation", operation)];
        self.storage_operations.get_or_create(&labels).inc();
        if failed {
            self.storage_errors.get_or_create(&labels).inc();
        }
        self.storage_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_labels() {
        let labels = outcome_labels();
        let distinct: std::collections::HashSet<_> = labels.iter().collect();
        assert_eq!(distinct.len(), OUTCOMES);
        for reason in DenyReason::ALL {
            assert_eq!(
                labels[Decided::Deny(reason).index()],
                ("deny", reason.name())
            );
        }
        assert_eq!(labels[Decided::Allow.index()], ("allow", "none"));
        assert_eq!(
            labels[Decided::Invalid.index()],
            ("error", "invalid_request")
        );
        assert_eq!(labels[Decided::Failed.index()], ("error", "unavailable"));
    }
}
