//! `keygate keys …` and `keygate audit` as an operator or a script runs
//! them: the real binary against a live `keygate serve` (SQLite in a temp
//! dir, a management key from `keygate bootstrap`). stdout is a pipe here,
//! as in `SECRET=$(keygate keys create …)`.

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use keygate::{Client, v1 as pb};
use keygate_domain::keyformat::KeyFormat;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// A `keygate serve` of its own, stopped (SIGTERM) when dropped.
struct Server {
    child: Child,
    addr: String,
    token: String,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), &[], "http://127.0.0.1")
    }

    /// Starts a server with its database in `dir`, `serve` flags `extra`,
    /// reached at `base` (scheme and host) and its port.
    fn start_in(dir: tempfile::TempDir, extra: &[&str], base: &str) -> Self {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("kg.db").display());
        let out = Command::new(BIN)
            .args(["bootstrap", "--owner", "acme", "--database-url", &url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let token = text(&out.stdout).trim().to_owned();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &listen,
                "--database-url",
                &url,
                // Usage counts reach storage within a second.
                "--usage-count-flush-interval",
                "1s",
            ])
            .args(extra)
            .env_remove("KEYGATE_TLS_CLIENT_CA")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            addr: format!("{base}:{port}"),
            token,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The binary with this server's address and management key, and none
    /// of the caller's own Keygate settings.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("KEYGATE_ADDR", &self.addr)
            .env("KEYGATE_TOKEN", &self.token)
            .stdin(Stdio::null());
        for var in [
            "KEYGATE_TOKEN_FILE",
            "KEYGATE_CLIENT_TLS_CA",
            "KEYGATE_CLIENT_TLS_CERT",
            "KEYGATE_CLIENT_TLS_KEY",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs `keygate args…`, whatever the outcome.
    fn try_run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `keygate args…`, which must succeed; returns stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(
            out.status.success(),
            "keygate {args:?} failed ({:?}): {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs `keygate args… --json` and parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.run(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"))
    }

    /// Creates a key in `environment` named `name`; returns its id.
    fn create(&self, name: &str, environment: &str, scopes: &str) -> String {
        let created = self.json(&[
            "keys",
            "create",
            "--owner",
            "acme",
            "--name",
            name,
            "--environment",
            environment,
            "--scopes",
            scopes,
        ]);
        created["key"]["keyId"].as_str().unwrap().to_owned()
    }

    fn get(&self, key_id: &str) -> Value {
        self.json(&["keys", "get", key_id])["key"].clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `method` of each audit event of `key_id`, in the order printed.
fn audit_methods(server: &Server, key_id: &str) -> Vec<String> {
    let events = server.json(&["audit", "--key", key_id]);
    events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["method"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn create_prints_only_the_secret_on_stdout_and_the_details_on_stderr() {
    let server = Server::start();
    let out = server.try_run(&[
        "keys",
        "create",
        "--owner",
        "acme",
        "--name",
        "billing",
        "--environment",
        "test",
        "--scope",
        "dns:read",
        "--scopes",
        "dns:write,zones:*",
        "--ip",
        "10.0.0.0/8",
        "--rate-limit",
        "100",
        "--ttl",
        "30d",
        "--metadata",
        "plan=pro",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout:?}");
    let secret = lines[0];
    let parsed = KeyFormat::default().parse(secret).expect("a valid key");
    assert_eq!(parsed.environment, "test");

    let stderr = text(&out.stderr);
    for want in [
        "billing",
        "dns:read, dns:write, zones:*",
        "10.0.0.0/8",
        "100 per hour",
        "plan=pro",
        "shown this once",
    ] {
        assert!(stderr.contains(want), "{want:?} not in stderr: {stderr}");
    }
    assert!(!stderr.contains(secret), "the secret leaked to stderr");

    // The secret works.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let decision = rt.block_on(async {
        let mut client = Client::connect(server.addr.clone()).await.unwrap();
        client
            .authorize(secret, &["dns:read"], "test", "10.1.2.3")
            .await
            .unwrap()
            .decision()
    });
    assert_eq!(decision, pb::Decision::Allow);
}

#[test]
fn json_output_is_the_proto3_json_mapping() {
    let server = Server::start();
    let created = server.json(&[
        "keys",
        "create",
        "--owner",
        "acme",
        "--name",
        "scripted",
        "--environment",
        "live",
        "--expires-at",
        "2099-01-31T00:00:00Z",
    ]);
    let key = &created["key"];
    let key_id = key["keyId"].as_str().expect("keyId, camelCase");
    assert_eq!(key["ownerId"], "acme");
    assert_eq!(key["status"], "KEY_STATUS_ACTIVE");
    assert_eq!(key["expiresAt"], "2099-01-31T00:00:00Z");
    assert!(key.get("key_id").is_none());
    // --json is the whole response: the secret is in it, once.
    KeyFormat::default()
        .parse(created["secret"].as_str().unwrap())
        .expect("a valid key");

    let got = server.get(key_id);
    assert_eq!(got["name"], "scripted");
    assert!(got.get("secret").is_none());
    assert!(got["createdAt"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn list_pages_through_every_key_as_a_table_with_filters() {
    let server = Server::start();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(server.create(&format!("svc-{i}"), "test", "dns:read"));
    }
    let stdout = server.run(&["keys", "list", "--page-size", "2"]);
    let lines: Vec<&str> = stdout.lines().collect();
    // Header, the bootstrap key and the five: three pages of two.
    assert_eq!(lines.len(), 7, "{stdout}");
    let header: Vec<&str> = lines[0].split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(
        header,
        [
            "ID",
            "NAME",
            "ENVIRONMENT",
            "STATUS",
            "SCOPES",
            "LAST USED",
            "EXPIRES"
        ]
    );
    for (i, id) in ids.iter().enumerate() {
        let row = lines
            .iter()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("no row for {id}: {stdout}"));
        let cells: Vec<&str> = row
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                id.as_str(),
                &format!("svc-{i}"),
                "test",
                "active",
                "dns:read",
                "never",
                "never"
            ]
        );
    }
    // Columns line up: every cell starts where its header does, two
    // spaces after the column before.
    for column in [
        "NAME",
        "ENVIRONMENT",
        "STATUS",
        "SCOPES",
        "LAST USED",
        "EXPIRES",
    ] {
        let at = lines[0].find(column).unwrap();
        for line in &lines[1..] {
            assert_eq!(&line[at - 2..at], "  ", "{column}: {line}");
            assert_ne!(line.as_bytes()[at], b' ', "{column}: {line}");
        }
    }
    // The bootstrap key has been used (it authenticated these calls).
    assert!(
        lines
            .iter()
            .any(|l| l.contains("bootstrap management key") && l.contains("just now")),
        "{stdout}"
    );

    let listed = server.json(&["keys", "list", "--page-size", "2"]);
    assert_eq!(listed["keys"].as_array().unwrap().len(), 6);
    let test_only = server.json(&["keys", "list", "--environment", "test", "--page-size", "1"]);
    assert_eq!(test_only["keys"].as_array().unwrap().len(), 5);
    let none = server.json(&["keys", "list", "--owner", "someone-else"]);
    assert!(none.get("keys").is_none(), "{none}");
    let expiring = server.json(&["keys", "list", "--expires-before", "30d"]);
    assert!(expiring.get("keys").is_none(), "{expiring}");
    // Never used counts as used before any time.
    let unused = server.json(&[
        "keys",
        "list",
        "--environment",
        "test",
        "--last-used-before",
        "1m",
    ]);
    assert_eq!(unused["keys"].as_array().unwrap().len(), 5);
}

#[test]
fn get_and_update_change_scopes_and_metadata() {
    let server = Server::start();
    let key_id = server.create("updatable", "live", "dns:read");
    let details = server.run(&["keys", "get", &key_id]);
    assert!(details.contains(&key_id), "{details}");
    assert!(details.contains("updatable"), "{details}");
    let etag = server.get(&key_id)["etag"].as_str().unwrap().to_owned();

    let updated = server.run(&[
        "keys",
        "update",
        &key_id,
        "--scopes",
        "dns:write,billing:*",
        "--metadata",
        "plan=pro",
        "--metadata",
        "region=eu",
        "--rate-limit",
        "50",
        "--etag",
        &etag,
    ]);
    assert!(updated.contains("billing:*"), "{updated}");
    let key = server.get(&key_id);
    assert_eq!(key["scopes"], serde_json::json!(["dns:write", "billing:*"]));
    assert_eq!(
        key["metadata"],
        serde_json::json!({"plan": "pro", "region": "eu"})
    );
    assert_eq!(key["rateLimitPerHour"], 50);
    assert_eq!(key["name"], "updatable");

    // A stale etag changes nothing.
    let stale = server.try_run(&["keys", "update", &key_id, "--name", "x", "--etag", &etag]);
    assert_eq!(stale.status.code(), Some(1), "{}", text(&stale.stderr));
    assert!(
        text(&stale.stderr).contains("ABORTED"),
        "{}",
        text(&stale.stderr)
    );

    server.run(&[
        "keys",
        "update",
        &key_id,
        "--name",
        "renamed",
        "--clear-metadata",
        "--clear-rate-limit",
    ]);
    let key = server.get(&key_id);
    assert_eq!(key["name"], "renamed");
    assert!(key.get("metadata").is_none(), "{key}");
    assert!(key.get("rateLimitPerHour").is_none(), "{key}");
    assert_eq!(key["scopes"], serde_json::json!(["dns:write", "billing:*"]));
}

#[test]
fn the_lifecycle_from_the_command_line_and_its_audit_trail() {
    let server = Server::start();
    let key_id = server.create("lifecycle", "live", "dns:read");

    let out = server.try_run(&["keys", "rotate", &key_id, "--grace", "1h"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rotated = text(&out.stdout);
    assert_eq!(rotated.lines().count(), 1, "{rotated:?}");
    KeyFormat::default()
        .parse(rotated.trim())
        .expect("a valid key");
    assert!(
        text(&out.stderr).contains("previous secret works until"),
        "{}",
        text(&out.stderr)
    );

    assert!(
        server
            .run(&["keys", "disable", &key_id])
            .contains("disabled")
    );
    assert_eq!(server.get(&key_id)["status"], "KEY_STATUS_DISABLED");
    assert!(server.run(&["keys", "enable", &key_id]).contains("active"));
    assert_eq!(server.get(&key_id)["status"], "KEY_STATUS_ACTIVE");

    let deleted = server.run(&["keys", "delete", &key_id]);
    assert!(deleted.contains("deleted"), "{deleted}");
    assert!(!server.run(&["keys", "list"]).contains(&key_id));
    let with_deleted = server.run(&["keys", "list", "--show-deleted"]);
    let row = with_deleted
        .lines()
        .find(|l| l.starts_with(&key_id))
        .unwrap();
    assert!(row.contains("deleted"), "{row}");
    let only_deleted = server.json(&["keys", "list", "--status", "deleted"]);
    assert_eq!(only_deleted["keys"].as_array().unwrap().len(), 1);
    server.run(&["keys", "undelete", &key_id]);
    assert_eq!(server.get(&key_id)["status"], "KEY_STATUS_ACTIVE");

    let revoked = server.run(&["keys", "revoke", &key_id, "--reason", "leaked in a test"]);
    assert!(revoked.contains("leaked in a test"), "{revoked}");
    let key = server.get(&key_id);
    assert_eq!(key["status"], "KEY_STATUS_REVOKED");
    assert_eq!(key["revokedReason"], "leaked in a test");
    // A revoked key cannot come back: FAILED_PRECONDITION, exit 1.
    let out = server.try_run(&["keys", "enable", &key_id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("KEY_REVOKED"),
        "{}",
        text(&out.stderr)
    );

    assert_eq!(
        audit_methods(&server, &key_id),
        [
            "RevokeKey",
            "UndeleteKey",
            "DeleteKey",
            "EnableKey",
            "DisableKey",
            "RotateKey",
            "CreateKey"
        ]
    );
    let table = server.run(&["audit", "--key", &key_id, "--limit", "2"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("TIME"), "{table}");
    assert!(lines[1].contains("RevokeKey") && lines[1].contains("leaked in a test"));
    assert!(lines[2].contains("UndeleteKey"), "{table}");
    let creates = server.json(&["audit", "--method", "CreateKey"]);
    assert_eq!(creates["events"].as_array().unwrap().len(), 1);
}

#[test]
fn usage_shows_requests_per_hour() {
    let server = Server::start();
    let created = server.json(&[
        "keys",
        "create",
        "--owner",
        "acme",
        "--name",
        "used",
        "--environment",
        "live",
        "--scope",
        "dns:read",
    ]);
    let key_id = created["key"]["keyId"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = Client::connect(server.addr.clone()).await.unwrap();
        for scope in ["dns:read", "dns:read", "dns:write"] {
            client
                .authorize(&secret, &[scope], "live", "10.0.0.1")
                .await
                .unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let totals = loop {
        let usage = server.json(&["keys", "usage", &key_id, "--hours", "2"]);
        let buckets = usage["buckets"].as_array().unwrap();
        assert!((2..=3).contains(&buckets.len()), "{usage}");
        // uint64 is a string in the proto3 JSON mapping; zero is left out.
        let sum = |field: &str| -> u64 {
            buckets
                .iter()
                .map(|b| b[field].as_str().map_or(0, |n| n.parse::<u64>().unwrap()))
                .sum()
        };
        let totals = (sum("allowed"), sum("deniedOther"));
        if totals == (2, 1) || Instant::now() > deadline {
            break totals;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(totals, (2, 1));
    let table = server.run(&["keys", "usage", &key_id, "--since", "1h"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("HOUR (UTC)"), "{table}");
    let total: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
    assert_eq!(total, ["total", "2", "0", "1"], "{table}");
}

#[test]
fn errors_exit_2_for_bad_input_and_1_otherwise() {
    let server = Server::start();
    let key_id = server.create("target", "live", "dns:read");

    // INVALID_ARGUMENT from the server: exit 2, the field on stderr.
    let out = server.try_run(&["keys", "update", &key_id, "--scope", "NOT A SCOPE"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("key.scopes[0]"), "{stderr}");
    assert!(stderr.contains("INVALID_ARGUMENT"), "{stderr}");
    assert!(out.stdout.is_empty());
    let out = server.try_run(&["keys", "get", "not a key id!"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("key_id"),
        "{}",
        text(&out.stderr)
    );

    // NOT_FOUND: exit 1.
    let unknown = "01a2320d-0000-7000-8000-000000000000";
    let out = server.try_run(&["keys", "get", unknown]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
    assert!(stderr.contains(unknown), "{stderr}");

    // No management key: exit 2 before anything is sent.
    let out = server
        .command(&["keys", "list"])
        .env_remove("KEYGATE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("KEYGATE_TOKEN"), "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    // And there is no flag to pass one.
    let out = server.try_run(&["keys", "list", "--token", &server.token]);
    assert_eq!(out.status.code(), Some(2));

    // A wrong management key: UNAUTHENTICATED, exit 1.
    let out = server
        .command(&["keys", "list"])
        .env("KEYGATE_TOKEN", "kg_live_notarealkey")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("UNAUTHENTICATED"));

    // Usage errors: exit 2.
    for args in [
        &["keys", "update", key_id.as_str()][..],
        &["keys", "create", "--owner", "acme"],
        &["keys", "list", "--status", "sleeping"],
        &["keys", "usage", &key_id, "--since", "yesterday"],
    ] {
        let out = server.try_run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = server.try_run(&["--database-url", "sqlite::memory:", "keys", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--database-url is for serve"));

    // Nobody listening: exit 1, saying where it tried.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nowhere = format!("http://127.0.0.1:{port}");
    let out = server
        .command(&["keys", "list"])
        .env("KEYGATE_ADDR", &nowhere)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.contains(&nowhere), "{stderr}");
}

#[test]
fn the_management_key_can_come_from_a_file() {
    let server = Server::start();
    let file = server.dir.path().join("token");
    std::fs::write(&file, format!("{}\n", server.token)).unwrap();
    let path = file.to_str().unwrap();
    let out = server
        .command(&["keys", "list", "--token-file", path])
        .env_remove("KEYGATE_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("bootstrap management key"));
    // Before the subcommand works too, and KEYGATE_TOKEN_FILE.
    let out = server
        .command(&["keys", "--token-file", path, "get", "x"])
        .env_remove("KEYGATE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = server
        .command(&["audit"])
        .env_remove("KEYGATE_TOKEN")
        .env("KEYGATE_TOKEN_FILE", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let missing = server.dir.path().join("missing");
    let out = server
        .command(&["keys", "list", "--token-file", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read --token-file"));
}

/// A CA for the TLS test, and certificates it signs: (certificate, key),
/// PEM.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn sign(&self, name: &str, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![purpose];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[test]
fn mutual_tls_with_the_tls_flags_or_their_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = Ca::new("keygate test CA");
    let client_ca = Ca::new("keygate test client CA");
    let (server_cert, server_key) = ca.sign("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = client_ca.sign("cli", ExtendedKeyUsagePurpose::ClientAuth);
    let ca_pem = write("ca.pem", &ca.0.pem());
    let server_cert = write("server.pem", &server_cert);
    let server_key = write("server.key", &server_key);
    let client_ca_pem = write("client-ca.pem", &client_ca.0.pem());
    let client_cert = write("client.pem", &client_cert);
    let client_key = write("client.key", &client_key);
    let not_pem = write("not.pem", "hello");
    let server = Server::start_in(
        dir,
        &[
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--tls-client-ca",
            &client_ca_pem,
        ],
        "https://localhost",
    );
    let tls = [
        "--tls-ca",
        ca_pem.as_str(),
        "--tls-cert",
        &client_cert,
        "--tls-key",
        &client_key,
    ];

    let mut args = vec!["keys", "list"];
    args.extend(tls);
    assert!(server.run(&args).contains("bootstrap management key"));
    let out = server
        .command(&["keys", "list"])
        .env("KEYGATE_CLIENT_TLS_CA", &ca_pem)
        .env("KEYGATE_CLIENT_TLS_CERT", &client_cert)
        .env("KEYGATE_CLIENT_TLS_KEY", &client_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    // No client certificate, or a server certificate nobody vouches for:
    // the connection fails, exit 1.
    for args in [
        &["keys", "list", "--tls-ca", &ca_pem][..],
        &[
            "keys",
            "list",
            "--tls-cert",
            &client_cert,
            "--tls-key",
            &client_key,
        ],
    ] {
        let out = server.try_run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).starts_with("error: "),
            "{}",
            text(&out.stderr)
        );
    }

    // Unusable TLS input: exit 2 before connecting.
    let out = server.try_run(&["keys", "list", "--tls-ca", &not_pem]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--tls-ca"),
        "{}",
        text(&out.stderr)
    );
    let out = server
        .command(&["keys", "list", "--tls-ca", &ca_pem])
        .env("KEYGATE_ADDR", server.addr.replace("https", "http"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("https://"),
        "{}",
        text(&out.stderr)
    );
    let out = server.try_run(&["keys", "list", "--tls-cert", &client_cert]);
    assert_eq!(out.status.code(), Some(2), "--tls-cert needs --tls-key");
}
