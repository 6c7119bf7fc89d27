//! The `keygate` binary as an operator runs it: `migrate`, `bootstrap`
//! printing exactly one key on stdout, and `serve` stopping cleanly on
//! SIGTERM with exit code 0.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use keygate::{Client, v1 as pb};

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
