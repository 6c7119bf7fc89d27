//! What a caller gets back for a bad request: INVALID_ARGUMENT naming the
//! field, and a status (message and details) that stays small however large
//! or numerous the bad values are. A real server on a real port, over a
//! throwaway SQLite database, spoken to with `keygate::Client`.

use keygate::{Client, v1 as pb};
use keygate_persistence::testing::TestDatabase;
use keygate_server::{Config, Keygate, bootstrap};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A running server and an admin client for it.
struct Server {
    client: Client,
    admin: Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), keygate_server::ServeError>>>,
    _db: TestDatabase,
}

impl Server {
    async fn start() -> Self {
        let db = TestDatabase::sqlite();
        let config = Config {
            database_url: db.url.clone(),
            ..Config::default()
        };
        let keygate = Keygate::open(config.clone()).await.expect("open");
        let admin_key = bootstrap(keygate.store(), &config, "acme", "live", "admin")
            .await
            .expect("bootstrap");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(keygate.serve(listener, async {
            let _ = rx.await;
        }));
        let client = Client::connect(url).await.expect("connect");
        let admin = client.with_management_key(&admin_key).expect("ascii");
        Self {
            client,
            admin,
            stop: Some(tx),
            handle: Some(handle),
            _db: db,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server result");
        }
    }
}

/// Bytes a caller receives for a status: the message plus the encoded
/// details (`grpc-status-details-bin`).
fn size(status: &Status) -> usize {
    status.message().len() + status.details().len()
}

/// Checks `status` is INVALID_ARGUMENT, that its first violation is on
/// `field` (and the message names it), and returns its violations.
fn invalid(status: &Status, field: &str) -> Vec<(String, String)> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "message does not name {field}: {}",
        status.message()
    );
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().expect("error info").reason,
        "INVALID_ARGUMENT"
    );
    let bad = details.bad_request().expect("bad request");
    assert_eq!(bad.field_violations[0].field, field);
    bad.field_violations
        .iter()
        .map(|v| (v.field.clone(), v.description.clone()))
        .collect()
}

fn authorize_request(scopes: Vec<String>) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        key: "kg_live_notarealkey".into(),
        required_scopes: scopes,
        environment: "live".into(),
        client_ip: String::new(),
    }
}

fn create_request(scopes: Vec<String>, ip_allowlist: Vec<String>) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        owner_id: "acme".into(),
        name: "hygiene".into(),
        environment: "live".into(),
        scopes,
        ip_allowlist,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_values_give_small_statuses_naming_the_field() {
    let mut server = Server::start().await;

    // One 5 000-character required scope.
    let huge = "s".repeat(5_000);
    let status = server
        .client
        .authz
        .authorize(authorize_request(vec![huge.clone()]))
        .await
        .unwrap_err();
    let violations = invalid(&status, "required_scopes[0]");
    assert_eq!(violations.len(), 1);
    assert!(violations[0].1.contains("too long"), "{violations:?}");
    assert!(!status.message().contains(&"s".repeat(65)));
    assert!(size(&status) < 2 * 1024, "{} bytes", size(&status));

    // A 5 000-character environment.
    let mut req = authorize_request(vec!["dns:read".into()]);
    req.environment = "e".repeat(5_000);
    let status = server.client.authz.authorize(req).await.unwrap_err();
    invalid(&status, "environment");
    assert!(status.message().contains("configured: live, test"));
    assert!(size(&status) < 2 * 1024, "{} bytes", size(&status));

    // A 5 000-character scope and allowlist entry on CreateKey.
    let status = server
        .admin
        .keys
        .create_key(create_request(vec![huge.clone()], vec![huge.clone()]))
        .await
        .unwrap_err();
    let violations = invalid(&status, "scopes[0]");
    assert_eq!(violations[1].0, "ip_allowlist[0]");
    assert!(size(&status) < 2 * 1024, "{} bytes", size(&status));

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_bad_values_give_small_statuses() {
    let mut server = Server::start().await;

    // Thousands of bad scopes: one violation on the list itself.
    let many: Vec<String> = (0..5_000).map(|i| format!("BAD SCOPE {i}")).collect();
    let status = server
        .client
        .authz
        .authorize(authorize_request(many.clone()))
        .await
        .unwrap_err();
    let violations = invalid(&status, "required_scopes");
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(size(&status) < 2 * 1024, "{} bytes", size(&status));

    let status = server
        .admin
        .keys
        .create_key(create_request(many.clone(), many.clone()))
        .await
        .unwrap_err();
    let violations = invalid(&status, "scopes");
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert_eq!(violations[1].0, "ip_allowlist");
    assert!(size(&status) < 2 * 1024, "{} bytes", size(&status));

    // As many bad values as are allowed, each long: the first ten are
    // reported, then one violation counts the rest; the message repeats
    // the first three.
    let long_bad = |tag: &str| -> Vec<String> {
        (0..100)
            .map(|i| format!("{tag}{i}{}", "!".repeat(1_000)))
            .collect()
    };
    let status = server
        .admin
        .keys
        .create_key(create_request(long_bad("scope"), long_bad("net")))
        .await
        .unwrap_err();
    let violations = invalid(&status, "scopes[0]");
    assert_eq!(violations.len(), 11, "{violations:?}");
    assert_eq!(violations[10].0, "scopes[10]");
    assert_eq!(
        violations[10].1,
        "190 more problems from this field on are not shown"
    );
    assert!(size(&status) < 5 * 1024, "{} bytes", size(&status));

    let status = server
        .client
        .authz
        .authorize(authorize_request(long_bad("scope")))
        .await
        .unwrap_err();
    let violations = invalid(&status, "required_scopes[0]");
    assert_eq!(violations.len(), 11);
    assert!(size(&status) < 5 * 1024, "{} bytes", size(&status));

    // Control characters are escaped, and the escapes count towards the
    // 64 quoted characters.
    let control: Vec<String> = (0..100).map(|_| "\u{1}".repeat(1_000)).collect();
    let status = server
        .client
        .authz
        .authorize(authorize_request(control))
        .await
        .unwrap_err();
    let violations = invalid(&status, "required_scopes[0]");
    assert!(violations[0].1.contains(r#""\u{1}\u{1}"#), "{violations:?}");
    assert!(size(&status) < 5 * 1024, "{} bytes", size(&status));

    server.stop().await;
}
