//! The `keygate` binary as an operator runs it: `migrate`, `bootstrap`
//! printing exactly one key on stdout, `serve` stopping cleanly on SIGTERM
//! with exit code 0, refusing unusable settings by flag, and never writing a
//! secret to its log.

use std::{
    fs::File,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use keygate::{Client, v1 as pb};
use keygate_domain::keyformat::{KeyFormat, LOOKUP_ID_CHARS};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}?mode=rwc", dir.path().join("kg.db").display())
}

#[test]
fn migrate_then_bootstrap_prints_exactly_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let migrate = Command::new(BIN)
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(migrate.stdout.is_empty());

    let out = Command::new(BIN)
        .args(["bootstrap", "--owner", "acme", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout:?}");
    let key = keygate_domain::keyformat::KeyFormat::default()
        .parse(lines[0])
        .expect("a valid key");
    assert_eq!(key.environment, "live");
}

#[test]
fn bootstrap_rejects_bad_arguments_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let out = Command::new(BIN)
        .args(["bootstrap", "--owner", " ", "--database-url", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owner_id"));
    let out = Command::new(BIN)
        .args([
            "bootstrap",
            "--owner",
            "acme",
            "--environment",
            "prod",
            "--database-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("environment"));
}

#[test]
fn serve_answers_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let admin = Command::new(BIN)
        .args(["bootstrap", "--owner", "acme", "--database-url", &url])
        .output()
        .unwrap();
    let admin = String::from_utf8(admin.stdout).unwrap().trim().to_owned();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &listen])
        .env("KEYGATE_DATABASE_URL", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let created = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match Client::connect(format!("http://{listen}")).await {
                Ok(client) => break client,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(err) => panic!("server did not come up: {err}"),
            }
        };
        let mut admin = client.with_management_key(&admin).unwrap();
        admin
            .keys
            .create_key(pb::CreateKeyRequest {
                owner_id: "acme".into(),
                name: "from the cli test".into(),
                environment: "live".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    assert!(created.secret.starts_with("kg_live_"));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = Command::new(BIN)
        .args([
            "serve",
            "--cache-ttl",
            "soon",
            "--database-url",
            "sqlite::memory:",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cache-ttl"));
}

/// Sends SIGTERM and waits for a clean exit.
fn stop(child: &mut Child) {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("server did not stop after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

async fn connect(listen: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(format!("http://{listen}")).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(err) => panic!("server did not come up: {err}"),
        }
    }
}

fn key_request(name: &str, environment: &str, scopes: &[&str]) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        owner_id: "acme".into(),
        name: name.into(),
        environment: environment.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn authz(key: &str, environment: &str, scopes: &[&str]) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        key: key.into(),
        required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        environment: environment.into(),
        client_ip: "10.0.0.1".into(),
    }
}

async fn create(client: &mut Client, req: pb::CreateKeyRequest) -> (pb::ApiKey, String) {
    let resp = client.keys.create_key(req).await.unwrap().into_inner();
    (resp.key.unwrap(), resp.secret)
}

async fn check(client: &mut Client, req: pb::AuthorizeRequest) -> (pb::Decision, pb::DenyReason) {
    let resp = client.authz.authorize(req).await.unwrap().into_inner();
    (resp.decision(), resp.reason())
}

const ALLOW: (pb::Decision, pb::DenyReason) = (pb::Decision::Allow, pb::DenyReason::Unspecified);

fn deny(reason: pb::DenyReason) -> (pb::Decision, pb::DenyReason) {
    (pb::Decision::Deny, reason)
}

/// Runs the whole key lifecycle, good and bad calls, against a server
/// logging at debug level; returns every secret issued or presented.
async fn exercise(listen: &str, admin_key: &str) -> Vec<String> {
    let client = connect(listen).await;
    let mut admin = client.with_management_key(admin_key).unwrap();
    let mut anon = client.clone();
    let mut secrets = vec![admin_key.to_owned()];

    let (a, a_secret) = create(&mut admin, key_request("a", "live", &["dns:read"])).await;
    let (b, b_secret) = create(&mut admin, key_request("b", "test", &["dns:*"])).await;
    let (_, manager_secret) = create(
        &mut admin,
        key_request("m", "live", &["keys:write", "dns:*"]),
    )
    .await;
    secrets.extend([a_secret.clone(), b_secret.clone(), manager_secret.clone()]);

    assert_eq!(
        check(&mut anon, authz(&a_secret, "live", &["dns:read"])).await,
        ALLOW
    );
    let bearer = format!("Bearer {a_secret}");
    assert_eq!(
        check(&mut anon, authz(&bearer, "live", &["dns:read"])).await,
        ALLOW
    );
    assert_eq!(
        check(&mut anon, authz(&b_secret, "test", &["dns:write"])).await,
        ALLOW
    );
    // Wrong environment, missing scope.
    assert_eq!(
        check(&mut anon, authz(&a_secret, "test", &["dns:read"])).await,
        deny(pb::DenyReason::EnvironmentMismatch)
    );
    assert_eq!(
        check(&mut anon, authz(&a_secret, "live", &["dns:write"])).await,
        deny(pb::DenyReason::ScopeMissing)
    );
    // A mistyped key (checksum), and a forged one (valid checksum, unknown
    // lookup id, so one storage lookup).
    let mut typo = a_secret.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'x' { 'y' } else { 'x' });
    let forged = KeyFormat::default().generate("live").secret;
    for bad in [&typo, &forged] {
        assert_eq!(
            check(&mut anon, authz(bad, "live", &["dns:read"])).await,
            deny(pb::DenyReason::KeyInvalid)
        );
    }
    secrets.extend([typo.clone(), forged.clone()]);

    // Bad requests that carry a secret.
    for req in [
        authz(&a_secret, "prod", &["dns:read"]),
        authz(&a_secret, "live", &["NOT A SCOPE"]),
    ] {
        let status = anon.authz.authorize(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }

    // Management with keys that may not, or are not keys at all.
    let mut not_manager = client.with_management_key(&a_secret).unwrap();
    let status = not_manager
        .keys
        .create_key(key_request("x", "live", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    for bad in [&typo, &forged] {
        let mut wrong = client.with_management_key(bad).unwrap();
        let status = wrong
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: a.key_id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let mut manager = client.with_management_key(&manager_secret).unwrap();
    let status = manager
        .keys
        .create_key(key_request("escalate", "live", &["keys:admin"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = manager
        .keys
        .get_key(pb::GetKeyRequest {
            key_id: b.key_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let (_, managed_secret) =
        create(&mut manager, key_request("managed", "live", &["dns:read"])).await;
    secrets.push(managed_secret.clone());
    assert_eq!(
        check(&mut anon, authz(&managed_secret, "live", &["dns:read"])).await,
        ALLOW
    );

    // Rotate with grace: both secrets work; then without: only the newest.
    let a2 = admin
        .keys
        .rotate_key(pb::RotateKeyRequest {
            key_id: a.key_id.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert_eq!(
        check(&mut anon, authz(&a_secret, "live", &["dns:read"])).await,
        ALLOW
    );
    assert_eq!(
        check(&mut anon, authz(&a2, "live", &["dns:read"])).await,
        ALLOW
    );
    let a3 = admin
        .keys
        .rotate_key(pb::RotateKeyRequest {
            key_id: a.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    secrets.extend([a2.clone(), a3.clone()]);
    assert_eq!(
        check(&mut anon, authz(&a3, "live", &["dns:read"])).await,
        ALLOW
    );
    for old in [&a_secret, &a2] {
        let (decision, _) = check(&mut anon, authz(old, "live", &["dns:read"])).await;
        assert_eq!(decision, pb::Decision::Deny);
    }

    // Revoke, then the revoked key is refused.
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: b.key_id.clone(),
            reason: "leaked in a test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        check(&mut anon, authz(&b_secret, "test", &["dns:read"])).await,
        deny(pb::DenyReason::KeyRevoked)
    );
    let listed = admin
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.keys.len() >= 5);
    secrets
}

#[test]
fn no_secret_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let log_path = dir.path().join("keygate.log");
    let admin = Command::new(BIN)
        .args(["bootstrap", "--owner", "acme", "--database-url", &url])
        .env("KEYGATE_LOG", "debug")
        .stderr(File::create(dir.path().join("bootstrap.log")).unwrap())
        .output()
        .unwrap();
    assert!(admin.status.success());
    let admin = String::from_utf8(admin.stdout).unwrap().trim().to_owned();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &listen,
            "--usage-flush-interval",
            "100ms",
        ])
        .env("KEYGATE_DATABASE_URL", &url)
        .env("KEYGATE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secrets = rt.block_on(exercise(&listen, &admin));
    // Let usage flushes (which log at debug) happen with the keys in use.
    std::thread::sleep(Duration::from_millis(300));
    stop(&mut child);

    let mut log = std::fs::read_to_string(&log_path).unwrap();
    log.push_str(&std::fs::read_to_string(dir.path().join("bootstrap.log")).unwrap());
    assert!(log.contains("DEBUG"), "not logging at debug: {log}");
    assert!(log.contains("key created"), "{log}");
    assert_eq!(secrets.len(), 9);
    for secret in &secrets {
        // Neither the key nor the part of it after the (public) lookup id.
        let body_start = secret.len() - keygate_domain::keyformat::BODY_CHARS;
        let private = &secret[body_start + LOOKUP_ID_CHARS..];
        assert!(!log.contains(secret.as_str()), "{secret} is in the log");
        assert!(!log.contains(private), "part of {secret} is in the log");
    }
}

/// Runs `keygate serve` with `args` on a fresh database and returns its
/// stderr, checking it refused to start and created no database.
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &url])
        .args(args)
        .env_remove("KEYGATE_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} was accepted");
    assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(
        !dir.path().join("kg.db").exists(),
        "{args:?}: storage was opened before the settings were checked"
    );
    stderr
}

#[test]
fn serve_refuses_unusable_settings_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--usage-flush-interval", "0s"],
            "--usage-flush-interval must be greater than 0",
        ),
        (
            &["--cache-ttl", "876000h"],
            "--cache-ttl must be at most 24h, got 876000h",
        ),
        (&["--cache-ttl", "0"], "--cache-ttl must be greater than 0"),
        (
            &["--negative-cache-ttl", "2h"],
            "--negative-cache-ttl must be at most 1h, got 2h",
        ),
        (
            &["--default-rate-limit", "0"],
            "--default-rate-limit must be greater than 0",
        ),
        (
            &["--cache-capacity", "0"],
            "--cache-capacity must be greater than 0",
        ),
        (
            &["--max-message-bytes", "100"],
            "--max-message-bytes must be at least 1024, got 100",
        ),
        (
            &["--max-message-bytes", "1000000000"],
            "--max-message-bytes must be at most 67108864, got 1000000000",
        ),
    ];
    for (args, want) in cases {
        let stderr = refused(args);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[test]
fn serve_refuses_overflowing_and_negative_values_naming_the_flag() {
    let cases: &[(&[&str], &str, &str)] = &[
        // n * 3600 does not fit a u64: refused, not wrapped or panicking.
        (
            &["--cache-ttl", "5124095576030432h"],
            "--cache-ttl",
            "too large",
        ),
        (
            &["--usage-flush-interval", "99999999999999999999999s"],
            "--usage-flush-interval",
            "too large",
        ),
        (
            &["--negative-cache-ttl=-5s"],
            "--negative-cache-ttl",
            "negative",
        ),
        (
            &["--max-message-bytes", "99999999999999999999999"],
            "--max-message-bytes",
            "too large",
        ),
        (
            &["--default-rate-limit", "4294967296"],
            "--default-rate-limit",
            "",
        ),
        (&["--cache-capacity=-1"], "--cache-capacity", ""),
    ];
    for (args, flag, why) in cases {
        let stderr = refused(args);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // Through the environment too.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("KEYGATE_DATABASE_URL", sqlite_url(&dir))
        .env("KEYGATE_USAGE_FLUSH_INTERVAL", "0ms")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--usage-flush-interval must be greater than 0"),
        "{stderr}"
    );
}

/// `kill -9` loses at most one flush interval of usage, and nothing else:
/// uses and counts older than that are in storage, on both backends, and a
/// restarted server shows them.
#[test]
fn a_kill_loses_at_most_one_flush_interval_of_usage() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let postgres = rt.block_on(keygate_persistence::testing::TestDatabase::postgres());
    let databases = [
        Some(keygate_persistence::testing::TestDatabase::sqlite()),
        postgres,
    ];
    for db in databases.into_iter().flatten() {
        let admin = Command::new(BIN)
            .args(["bootstrap", "--owner", "acme", "--database-url", &db.url])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(admin.status.success());
        let admin = String::from_utf8(admin.stdout).unwrap().trim().to_owned();
        let serve = |listen: &str| {
            Command::new(BIN)
                .args([
                    "serve",
                    "--listen",
                    listen,
                    "--usage-flush-interval",
                    "100ms",
                    "--usage-count-flush-interval",
                    "200ms",
                ])
                .env("KEYGATE_DATABASE_URL", &db.url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let listen = format!("127.0.0.1:{}", free_port());
        let mut child = serve(&listen);
        let key = rt.block_on(async {
            let mut admin = connect(&listen).await.with_management_key(&admin).unwrap();
            let (key, secret) =
                create(&mut admin, key_request("killed", "live", &["dns:read"])).await;
            for _ in 0..5 {
                assert_eq!(
                    check(&mut admin, authz(&secret, "live", &["dns:read"])).await,
                    ALLOW
                );
            }
            assert_eq!(
                check(&mut admin, authz(&secret, "live", &["dns:write"])).await,
                deny(pb::DenyReason::ScopeMissing)
            );
            key
        });
        // Several flush intervals pass, then the process dies without a
        // chance to flush.
        std::thread::sleep(Duration::from_millis(1000));
        child.kill().unwrap();
        child.wait().unwrap();

        let (stored, buckets) = rt.block_on(async {
            let store = keygate_persistence::Store::connect(&db.url).await.unwrap();
            let stored = store.get_key(&key.key_id).await.unwrap().unwrap();
            let buckets = store.usage_buckets(&key.key_id, 0, i64::MAX).await.unwrap();
            (stored, buckets)
        });
        assert!(stored.last_used_at.is_some(), "{}: last use lost", db.url);
        assert!(stored.credentials[0].last_used_at.is_some());
        let allowed: u64 = buckets.iter().map(|b| b.counts.allowed).sum();
        let denied: u64 = buckets.iter().map(|b| b.counts.denied_other).sum();
        assert_eq!((allowed, denied), (5, 1), "{}: counts lost", db.url);

        // A restarted server has the key and shows the same usage.
        let listen = format!("127.0.0.1:{}", free_port());
        let mut child = serve(&listen);
        rt.block_on(async {
            let mut admin = connect(&listen).await.with_management_key(&admin).unwrap();
            let usage = admin
                .keys
                .get_key_usage(pb::GetKeyUsageRequest {
                    key_id: key.key_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let allowed: u64 = usage.buckets.iter().map(|b| b.allowed).sum();
            assert_eq!(allowed, 5);
        });
        stop(&mut child);
    }
}

/// `KEYGATE_LOG_FORMAT=json`: one JSON object per line; every management
/// call is logged once with its method, target key, actor and result (the
/// failed ones too), and no secret appears.
#[test]
fn json_logs_name_every_management_call() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let log_path = dir.path().join("keygate.log");
    let admin = Command::new(BIN)
        .args(["bootstrap", "--owner", "acme", "--database-url", &url])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let admin = String::from_utf8(admin.stdout).unwrap().trim().to_owned();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &listen])
        .env("KEYGATE_DATABASE_URL", &url)
        .env("KEYGATE_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (key, secrets) = rt.block_on(async {
        let mut admin = connect(&listen).await.with_management_key(&admin).unwrap();
        let (key, secret) = create(&mut admin, key_request("logged", "live", &["dns:read"])).await;
        admin
            .keys
            .revoke_key(pb::RevokeKeyRequest {
                key_id: key.key_id.clone(),
                reason: "done".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let missing = admin
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: "0190b5a2-0000-7000-8000-00000000dead".into(),
            })
            .await;
        assert_eq!(missing.unwrap_err().code(), Code::NotFound);
        // A secret pasted where a key id belongs is not logged.
        let pasted = admin
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: secret.clone(),
            })
            .await;
        assert!(pasted.is_err());
        (key, vec![secret])
    });
    stop(&mut child);

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let calls: Vec<(String, String, String, String)> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "management call")
        .map(|l| {
            let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                field(&l["span"]["method"]),
                field(&l["span"]["key_id"]),
                field(&l["span"]["actor"]),
                field(&l["fields"]["result"]),
            )
        })
        .collect();
    let admin_id = calls[0].2.clone();
    assert!(!admin_id.is_empty(), "{calls:?}");
    assert_eq!(
        calls,
        [
            (
                "CreateKey".into(),
                String::new(),
                admin_id.clone(),
                "OK".into()
            ),
            (
                "RevokeKey".into(),
                key.key_id.clone(),
                admin_id.clone(),
                "OK".into()
            ),
            (
                "GetKey".into(),
                "0190b5a2-0000-7000-8000-00000000dead".into(),
                admin_id.clone(),
                "NotFound".into()
            ),
            (
                "GetKey".into(),
                "(not a key id)".into(),
                admin_id,
                "InvalidArgument".into()
            ),
        ]
    );
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} is in the log");
    }
}
