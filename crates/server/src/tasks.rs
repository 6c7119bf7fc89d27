//! The background tasks every replica runs beside serving: sharing
//! rate-limit consumption, watching storage (management health), following
//! other replicas' key changes (LISTEN/NOTIFY, with heartbeats to tell a
//! live connection from a dead one), and purging deleted keys past their
//! time. [`crate::server::Keygate::serve`] starts them and stops them with
//! the server.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use keygate::v1::key_management_service_server::KeyManagementServiceServer;
use keygate_persistence::{Backend, Change, ChangeListener, Store};
use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{api::management::ManagementService, hotpath::authorizer::Authorizer};

pub(crate) async fn set_storage_health(health: &HealthReporter, up: bool) {
    let status = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health
        .set_service_status(
            <KeyManagementServiceServer<ManagementService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Exchanges rate-limit consumption with the other replicas every
/// `interval` (PostgreSQL only: on SQLite there is one process), and once
/// more at a graceful stop.
pub(crate) async fn share_rate_limits(
    authorizer: Arc<Authorizer>,
    store: Store,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    if store.backend() != Backend::Postgres {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_prune = 0;
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let now = chrono::Utc::now().timestamp();
        if let Err(err) = authorizer.limiter().sync(&store, now).await {
            tracing::warn!(error = %err, "rate-limit sync failed; limits are local until it recovers");
        }
        // Windows older than the previous hour are never read again.
        if now >= next_prune {
            next_prune = now + 600;
            if let Err(err) = store.prune_rate_windows(now - 2 * 3600).await {
                tracing::debug!(error = %err, "rate-limit window pruning failed");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Turns KeyManagementService NOT_SERVING while storage is unreachable, and
/// back to SERVING when it returns. Authorize keeps serving from the cache.
pub(crate) async fn watch_storage(
    store: Store,
    health: HealthReporter,
    storage_up: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut up = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now_up = matches!(
            tokio::time::timeout(Duration::from_secs(2), store.ping()).await,
            Ok(Ok(()))
        );
        storage_up.store(now_up, std::sync::atomic::Ordering::Release);
        if now_up != up {
            up = now_up;
            if up {
                tracing::info!("storage reachable again");
            } else {
                tracing::warn!(
                    "storage unreachable; management answers UNAVAILABLE, Authorize serves cached keys"
                );
            }
            set_storage_health(&health, up).await;
        }
    }
}

/// Applies key changes announced by every replica (PostgreSQL LISTEN/NOTIFY)
/// to this one's cache: the change's version is noted for the key, so no
/// older snapshot decides from then on, and its lookup ids are evicted. A
/// change this replica already knows of (its own, or one a load already
/// saw) changes nothing. When the listening connection drops, notifications
/// may be lost, so the whole cache is distrusted. On SQLite there are no
/// other replicas and this returns at once.
pub(crate) async fn follow_changes(
    mut first: Option<ChangeListener>,
    store: Store,
    authorizer: Arc<Authorizer>,
    mut stop: watch::Receiver<bool>,
) {
    let cache = authorizer.cache();
    let metrics = authorizer.metrics();
    if store.backend() != Backend::Postgres {
        return;
    }
    let mut started_once = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = match first.take() {
            Some(listener) => Ok(Some(listener)),
            None => tokio::select! {
                listener = store.listen() => listener,
                _ = stop.wait_for(|s| *s) => return,
            },
        };
        let mut listener = match listener {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for key changes; retrying");
                cache.clear();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Anything missed before LISTEN started is gone: revalidate.
        cache.clear();
        if std::mem::replace(&mut started_once, true) {
            metrics.listener_reconnected();
        }
        metrics.notified();
        backoff = Duration::from_millis(100);
        loop {
            let change = tokio::select! {
                change = tokio::time::timeout(LISTENER_SILENCE_LIMIT, listener.next()) => change,
                _ = stop.wait_for(|s| *s) => return,
            };
            if matches!(change, Ok(Ok(_))) {
                metrics.notified();
            }
            match change {
                Ok(Ok(Change::Key {
                    key_id,
                    version,
                    lookup_ids,
                })) => {
                    if !authorizer.has_heard_of(&key_id, version) {
                        authorizer.note_change(&key_id, version, &lookup_ids);
                    }
                }
                Ok(Ok(Change::Heartbeat)) => {}
                Ok(Ok(Change::Reset)) => {
                    tracing::warn!("key change listener reconnected; cache marked stale");
                    metrics.listener_reconnected();
                    cache.clear();
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "key change listener failed; cache marked stale");
                    cache.clear();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(_silence) => {
                    // Not even a heartbeat: the connection may be dead
                    // without knowing it. Start over on a new one.
                    tracing::warn!(
                        "key change listener went silent; reconnecting, cache marked stale"
                    );
                    cache.clear();
                    break;
                }
            }
        }
    }
}

/// Removes deleted keys whose purge time has come, every
/// `min(purge_after / 4, 1 min)`. Every replica runs it; a purge is one
/// idempotent statement set, so they do not conflict.
pub(crate) async fn purge_deleted_keys(
    store: Store,
    purge_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = (purge_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match store.purge_deleted(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "purged deleted keys past their purge time"),
            Err(err) => tracing::warn!(error = %err, "purging deleted keys failed; will retry"),
        }
    }
}

/// How often each replica sends a heartbeat notification.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a listener may hear nothing (not even a heartbeat) before its
/// connection is presumed dead. Bounds how stale a replica's cache can get
/// when notifications stop arriving: about this plus one reconnect.
const LISTENER_SILENCE_LIMIT: Duration = Duration::from_secs(3);

/// Sends a heartbeat every [`HEARTBEAT_INTERVAL`] so that listeners (this
/// replica's and the others') can tell a live connection from a dead one.
pub(crate) async fn send_heartbeats(store: Store, mut stop: watch::Receiver<bool>) {
    if store.backend() != Backend::Postgres {
        return;
    }
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(err) = store.send_heartbeat().await {
            tracing::debug!(error = %err, "heartbeat not sent");
        }
    }
}
