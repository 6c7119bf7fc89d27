//! Assembles and runs a Keygate server: storage, the hot path, the gRPC
//! services, health, reflection, the HTTP listener and the background tasks
//! (usage flusher, and those in `tasks.rs`), with a graceful stop.

use std::{
    future::Future,
    sync::{Arc, atomic::AtomicBool},
};

use keygate::v1::{
    authorization_service_server::AuthorizationServiceServer,
    key_management_service_server::KeyManagementServiceServer,
};
use keygate_domain::{
    audit::Actor,
    scope::KEYS_ADMIN,
    validation::{self, NewKeyInput, ValidationError},
};
use keygate_persistence::{Backend, Store, StoreError};
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::StreamExt as _;
use tonic::{
    server::NamedService,
    transport::{ServerTlsConfig, server::TcpIncoming},
};

use crate::{
    api::authorization::AuthorizeService,
    api::ext_authz::{ExtAuthzServer, ExtAuthzService},
    api::management::{ManagementService, issue_key},
    coalesce::CoalescingIo,
    config::{Config, ConfigError},
    hotpath::authorizer::Authorizer,
    hotpath::usage::FlushSchedule,
    http::console,
    http::{self, HttpState},
    metrics::Metrics,
    tasks,
    tls::TlsFiles,
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
        tasks::set_storage_health(&health, true).await;
        health
            .set_serving::<AuthorizationServiceServer<AuthorizeService>>()
            .await;
        health.set_serving::<ExtAuthzServer>().await;

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
        let invalidation = tokio::spawn(tasks::follow_changes(
            first_listener,
            store.clone(),
            authorizer.clone(),
            stop_rx.clone(),
        ));
        let heartbeat = tokio::spawn(tasks::send_heartbeats(store.clone(), stop_rx.clone()));
        let purger = tokio::spawn(tasks::purge_deleted_keys(
            store.clone(),
            config.purge_after,
            stop_rx.clone(),
        ));
        let watchdog = tokio::spawn(tasks::watch_storage(
            store.clone(),
            health.clone(),
            storage_up,
            stop_rx.clone(),
        ));
        let rate_sync = tokio::spawn(tasks::share_rate_limits(
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
        // Small answers written together: see `coalesce`.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map(|accepted| accepted.map(CoalescingIo));
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
        <ExtAuthzServer as NamedService>::NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        builder = builder.with_service_name(service);
    }
    builder
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
