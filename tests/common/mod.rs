//! Shared harness for the end-to-end tests: a real Keygate server on a free
//! local port, over a throwaway SQLite or PostgreSQL database, spoken to over
//! gRPC with the public Rust client.

#![allow(dead_code, unreachable_pub)]

pub mod http;
pub mod proxy;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use keygate::{Client, v1 as pb};
use keygate_persistence::testing::TestDatabase;
use keygate_server::{Config, Keygate, ServeError, hotpath::authorizer::Authorizer};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Which storage a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// A fresh database, or `None` when PostgreSQL is not configured outside CI.
    pub async fn database(self) -> Option<TestDatabase> {
        match self {
            Backend::Sqlite => Some(TestDatabase::sqlite()),
            Backend::Postgres => TestDatabase::postgres().await,
        }
    }
}

/// Runs one async test function on both backends, as `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::common::Backend::Sqlite.database().await {
                        super::$name(db).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::common::Backend::Postgres.database().await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}

/// A running server plus an admin client for it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The HTTP listener's address, when the config asked for one
    /// (`http_listen: Some(_)`; the test binds a free port instead).
    pub http_addr: Option<SocketAddr>,
    pub url: String,
    pub admin_key: String,
    pub authorizer: Arc<Authorizer>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

/// Test defaults: everything as shipped, but usage flushed quickly.
pub fn test_config(db: &TestDatabase) -> Config {
    Config {
        database_url: db.url.clone(),
        usage_flush_interval: Duration::from_millis(200),
        ..Config::default()
    }
}

/// Sends the servers' warnings (`RUST_LOG` to choose) to the test's
/// output, which the harness shows when the test fails: a failure in CI
/// then says what the server saw, not only what the client got.
fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Once per test binary; later calls find it installed.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl TestServer {
    /// Starts a server with `config`, bootstrapping an admin key for owner `acme` in `live`.
    pub async fn start(config: Config) -> Self {
        let http = config.http_listen.is_some();
        let keygate = Keygate::open(config.clone()).await.expect("open keygate");
        let admin_key =
            keygate_server::bootstrap(keygate.store(), &config, "acme", "live", "test admin")
                .await
                .expect("bootstrap");
        Self::serve(keygate, admin_key, http).await
    }

    /// Starts a server on an existing database, reusing a known admin key.
    pub async fn restart(config: Config, admin_key: String) -> Self {
        let http = config.http_listen.is_some();
        let keygate = Keygate::open(config).await.expect("open keygate");
        Self::serve(keygate, admin_key, http).await
    }

    async fn serve(keygate: Keygate, admin_key: String, http: bool) -> Self {
        log_to_test_output();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let http_listener = if http {
            Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind http"),
            )
        } else {
            None
        };
        let http_addr = http_listener
            .as_ref()
            .map(|l| l.local_addr().expect("http addr"));
        let authorizer = keygate.authorizer().clone();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(keygate.serve_with_http(listener, http_listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            http_addr,
            url: format!("http://{addr}"),
            admin_key,
            authorizer,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// A client sending the admin key.
    pub async fn admin(&self) -> Client {
        self.client_with(&self.admin_key).await
    }

    /// A client sending `key` as management key.
    pub async fn client_with(&self, key: &str) -> Client {
        self.client()
            .await
            .with_management_key(key)
            .expect("ascii key")
    }

    /// A client sending no management key.
    pub async fn client(&self) -> Client {
        Client::connect(self.url.clone()).await.expect("connect")
    }

    /// Stops gracefully and waits for the server to finish.
    pub async fn stop(mut self) {
        self.stop_in_place().await;
    }

    async fn stop_in_place(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A CreateKey request with sensible defaults for `acme`/`live`.
pub fn new_key(name: &str, scopes: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        owner_id: "acme".into(),
        name: name.into(),
        environment: "live".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

/// Creates a key with the admin client; returns (key, secret).
pub async fn create(client: &mut Client, req: pb::CreateKeyRequest) -> (pb::ApiKey, String) {
    let resp = client
        .keys
        .create_key(req)
        .await
        .expect("create key")
        .into_inner();
    (resp.key.expect("key in response"), resp.secret)
}

/// An Authorize request in `live` from 10.0.0.1.
pub fn authz(key: &str, scopes: &[&str]) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        key: key.into(),
        required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        environment: "live".into(),
        client_ip: "10.0.0.1".into(),
    }
}

/// Calls Authorize and returns the response.
pub async fn authorize(client: &mut Client, req: pb::AuthorizeRequest) -> pb::AuthorizeResponse {
    client
        .authz
        .authorize(req)
        .await
        .expect("authorize rpc")
        .into_inner()
}

/// Asserts a deny with `reason`.
pub fn assert_denied(resp: &pb::AuthorizeResponse, reason: pb::DenyReason) {
    assert_eq!(
        resp.decision(),
        pb::Decision::Deny,
        "expected deny, got {resp:?}"
    );
    assert_eq!(resp.reason(), reason, "wrong reason in {resp:?}");
    assert!(!resp.message.is_empty());
}

/// Asserts an allow.
pub fn assert_allowed(resp: &pb::AuthorizeResponse) {
    assert_eq!(
        resp.decision(),
        pb::Decision::Allow,
        "expected allow, got {resp:?}"
    );
    assert_eq!(resp.reason(), pb::DenyReason::Unspecified);
}

/// Asserts an RPC error with `code` whose ErrorInfo carries `reason`.
pub fn assert_status(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "wrong code: {status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "wrong ErrorInfo reason in {status:?}");
    assert_eq!(info.domain, "keygate.dev");
    status
}

/// Asserts INVALID_ARGUMENT naming `field` in a BadRequest violation.
pub fn assert_invalid_field(result: Result<impl std::fmt::Debug, Status>, field: &str) {
    let status = assert_status(result, Code::InvalidArgument, "INVALID_ARGUMENT");
    let bad = status
        .get_error_details()
        .bad_request()
        .cloned()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "no violation for {field} in {bad:?}"
    );
    assert!(
        status.message().contains(field),
        "message does not name {field}: {}",
        status.message()
    );
}

/// A UTC time on the wire.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("nanos fit"),
    }
}

/// GetKey through `client`, unwrapped.
pub async fn get_key(client: &mut Client, key_id: &str) -> pb::ApiKey {
    client
        .keys
        .get_key(pb::GetKeyRequest {
            key_id: key_id.to_owned(),
        })
        .await
        .expect("get key")
        .into_inner()
        .key
        .expect("key in response")
}
