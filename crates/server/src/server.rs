//! Assembles and runs a Keygate server: storage, the hot path, both gRPC
//! services, health, reflection, and the background tasks (usage flusher,
//! cross-replica invalidation, storage health), with a graceful stop.

use std::{
    future::Future,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use envoy_types::ext_authz::v3::pb::AuthorizationServer as ExtAuthzServer;
use keygate::v1::{
    authorization_service_server::AuthorizationServiceServer,
    key_management_service_server::KeyManagementServiceServer,
};
use keygate_domain::{
    audit::Actor,
    scope::KEYS_ADMIN,
    validation::{self, NewKeyInput, ValidationError},
};
use keygate_persistence::{Backend, Change, ChangeListener, Store, StoreError};
use tokio::{net::TcpListener, sync::watch};
use tonic::{
    server::NamedService,
    transport::{ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    authorization::AuthorizeService,
    authorizer::Authorizer,
    config::{Config, ConfigError},
    console,
    ext_authz::ExtAuthzService,
    http::{self, HttpState},
    management::{ManagementService, issue_key},
    metrics::Metrics,
    tls::TlsFiles,
    usage::FlushSchedule,
};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Storage failed at start (connect or migrate).
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be built from the descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Listening failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A setting cannot work; the message names its flag.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}

/// A Keygate instance with its storage open and migrated, ready to serve.
#[derive(Debug)]
pub struct Keygate {
    config: Config,
    store: Store,
    authorizer: Arc<Authorizer>,
    tls: Option<ServerTlsConfig>,
}

impl Keygate {
    /// Connects to the configured database and applies migrations.
    pub async fn open(config: Config) -> Result<Self, ServeError> {
        config.validate()?;
        let tls = config.tls.as_ref().map(TlsFiles::load).transpose()?;
        let store = Store::connect(&config.database_url).await?;
        let metrics = Arc::new(Metrics::new(store.backend() == Backend::Postgres));
        let store = store.with_observer(metrics.clone());
        store.migrate().await?;
        let authorizer = Arc::new(Authorizer::with_metrics(store.clone(), &config, metrics));
        Ok(Self {
            config,
            store,
            authorizer,
            tls,
        })
    }

    /// The hot path (its cache and metrics), for tests and embedding.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }

    /// The storage in use.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves gRPC on `listener`, and HTTP on `--http-listen` when
    /// configured, until `shutdown` completes, then lets in-flight calls
    /// finish and flushes pending usage.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let http = match self.config.http_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        self.serve_with_http(listener, http, shutdown).await
    }

    /// [`Keygate::serve`] with the HTTP listener given (tests bind port 0).
    pub async fn serve_with_http(
        self,
        listener: TcpListener,
        http_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Self {
            config,
            store,
            authorizer,
            tls,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);

        let (health, health_service) = tonic_health::server::health_reporter();
        set_storage_health(&health, true).await;
        health
            .set_serving::<AuthorizationServiceServer<AuthorizeService>>()
            .await;
        health
            .set_serving::<ExtAuthzServer<ExtAuthzService>>()
            .await;

        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let management_service = ManagementService::new(
            store.clone(),
            authorizer.clone(),
            config.environments.clone(),
            config.purge_after,
        );
        let console = config.console.then(|| {
            console::ConsoleState::new(management_service.clone(), authorizer.clone(), &config)
        });
        let management = KeyManagementServiceServer::new(management_service)
            .max_decoding_message_size(config.max_message_bytes);
        let authorization = AuthorizationServiceServer::new(AuthorizeService::new(
            authorizer.clone(),
            config.environments.clone(),
        ))
        .max_decoding_message_size(config.max_message_bytes);
        let proxy_settings = Arc::new(config.proxy_settings());
        let ext_authz = ExtAuthzServer::new(ExtAuthzService::new(
            authorizer.clone(),
            config.environments.clone(),
            proxy_settings.clone(),
        ))
        .max_decoding_message_size(config.max_message_bytes);
        let storage_up = Arc::new(AtomicBool::new(true));
        let http = http_listener.map(|listener| {
            let local = listener.local_addr().ok();
            tracing::info!(listen = ?local, "keygate serving HTTP (forward-auth, probes)");
            let mut router = http::router(HttpState {
                authorizer: authorizer.clone(),
                environments: config.environments.clone(),
                proxy: proxy_settings.clone(),
                storage_up: storage_up.clone(),
            });
            if let Some(console) = console {
                tracing::info!(listen = ?local, "keygate serving the admin console at /console/");
                router = router.merge(console::router(console));
            }
            tokio::spawn(http::serve(listener, router, stop_rx.clone()))
        });

        let flusher = {
            let usage = authorizer.usage().clone();
            let housekeeper = authorizer.clone();
            let store = store.clone();
            let schedule = FlushSchedule {
                last_used: config.usage_flush_interval,
                counts: config.usage_count_flush_interval,
                retention: config.usage_retention,
            };
            let stop = stop_rx.clone();
            let metrics = authorizer.metrics().clone();
            tokio::spawn(async move {
                usage
                    .run_flusher(
                        store,
                        move || housekeeper.housekeeping(),
                        schedule,
                        &metrics,
                        stop,
                    )
                    .await
            })
        };
        // LISTEN before serving, so a ready replica misses no change.
        let first_listener = match store.listen().await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for key changes yet; retrying in the background");
                None
            }
        };
        let invalidation = tokio::spawn(follow_changes(
            first_listener,
            store.clone(),
            authorizer.clone(),
            stop_rx.clone(),
        ));
        let heartbeat = tokio::spawn(send_heartbeats(store.clone(), stop_rx.clone()));
        let purger = tokio::spawn(purge_deleted_keys(
            store.clone(),
            config.purge_after,
            stop_rx.clone(),
        ));
        let watchdog = tokio::spawn(watch_storage(
            store.clone(),
            health.clone(),
            storage_up,
            stop_rx.clone(),
        ));
        let rate_sync = tokio::spawn(share_rate_limits(
            authorizer.clone(),
            store.clone(),
            config.rate_limit_sync_interval,
            stop_rx.clone(),
        ));

        let local = listener.local_addr()?;
        tracing::info!(
            listen = %local,
            tls = tls.is_some(),
            client_certificates = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "keygate serving"
        );
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder().timeout(config.request_timeout);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let result = builder
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(management)
            .add_service(authorization)
            .add_service(ext_authz)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;

        tracing::info!("stopping: in-flight calls finished, flushing usage");
        let _ = stop_tx.send(true);
        if let Some(http) = http
            && let Ok(Err(err)) = http.await
        {
            tracing::warn!(error = %err, "HTTP listener failed");
        }
        let _ = flusher.await;
        let _ = rate_sync.await;
        invalidation.abort();
        heartbeat.abort();
        purger.abort();
        watchdog.abort();
        let metrics = authorizer.metrics();
        tracing::info!(
            key_loads = metrics.key_loads.get(),
            cache_hits = metrics.cache.hits.get(),
            cache_misses = metrics.cache.misses.get(),
            "hot path totals"
        );
        result?;
        Ok(())
    }
}

/// Reflection over every message a client may meet: ours, health, and the
/// google.rpc error details attached to errors (so grpcurl can print them).
/// The services listed are named here, Envoy's ext_authz among them;
/// envoy-types ships no descriptors, so describing Check needs Envoy's own
/// protos (`grpcurl -import-path`).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keygate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
    for service in [
        <KeyManagementServiceServer<ManagementService> as NamedService>::NAME,
        <AuthorizationServiceServer<AuthorizeService> as NamedService>::NAME,
        <ExtAuthzServer<ExtAuthzService> as NamedService>::NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        builder = builder.with_service_name(service);
    }
    builder
}

async fn set_storage_health(health: &HealthReporter, up: bool) {
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
async fn share_rate_limits(
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
async fn watch_storage(
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
async fn follow_changes(
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
async fn purge_deleted_keys(store: Store, purge_after: Duration, mut stop: watch::Receiver<bool>) {
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
async fn send_heartbeats(store: Store, mut stop: watch::Receiver<bool>) {
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

/// Creates the first management key (`keys:admin`) directly in storage and
/// returns its secret. Whoever can reach the database is already trusted.
pub async fn bootstrap(
    store: &Store,
    config: &Config,
    owner_id: &str,
    environment: &str,
    name: &str,
) -> Result<String, BootstrapError> {
    let now = chrono::Utc::now();
    let input = NewKeyInput {
        owner_id: owner_id.to_owned(),
        name: name.to_owned(),
        environment: environment.to_owned(),
        scopes: vec![KEYS_ADMIN.to_owned()],
        ..NewKeyInput::default()
    };
    let new = validation::validate_new_key(input, &config.environments, now)?;
    let (secret, key) = issue_key(new, &config.key_format, now);
    let actor = Actor {
        method: "Bootstrap".to_owned(),
        ..Actor::default()
    };
    store.insert_key(&key, &actor).await?;
    tracing::info!(key_id = %key.id, owner_id = %key.owner_id, "bootstrap management key created");
    Ok(secret)
}

/// Why bootstrap failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A bad argument.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}
