//! A real nginx in front of a tiny upstream, asking Keygate's forward-auth
//! with the configuration shipped in `docs/nginx.conf` (its addresses
//! swapped for free ports). Allowed requests reach the upstream with the
//! identity headers and without the key; the others get 401 / 403 / 429 from
//! nginx and never reach it.
//!
//! Needs the `nginx` binary (Debian's `nginx` package; `.ci/run` installs
//! it). Without it the test fails under CI and is skipped elsewhere.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{http::get, *};
use keygate::v1 as pb;
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// The nginx binary, or `None` (skip) outside CI.
fn nginx_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "nginx is not installed: the nginx test must run under CI (.ci/run installs it)"
            );
        }
        eprintln!("skipping the nginx test: nginx is not installed");
    }
    found
}

/// An upstream that answers every request with 200 and the request's head
/// as its body, and remembers the heads.
async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                record.lock().unwrap().push(head.clone());
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
                    head.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

/// nginx running in the foreground; stopped when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(binary: &Path, keygate: SocketAddr, upstream: SocketAddr, port: u16) -> Nginx {
        let dir = tempfile::tempdir().expect("nginx dir");
        let shipped =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/nginx.conf"))
                .expect("docs/nginx.conf");
        let site = shipped
            .replace("server 127.0.0.1:8081;", &format!("server {keygate};"))
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
            .replace("http://127.0.0.1:9000", &format!("http://{upstream}"));
        assert_ne!(site, shipped, "the addresses in docs/nginx.conf changed");
        std::fs::write(dir.path().join("keygate.conf"), site).expect("write site");
        let d = dir.path().display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log notice;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             include {d}/keygate.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).expect("write nginx.conf");
        let test = Command::new(binary)
            .args(["-t", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .output()
            .expect("nginx -t");
        assert!(
            test.status.success(),
            "nginx rejects the configuration: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx { child, dir }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_lets_only_allowed_keys_through() {
    let Some(binary) = nginx_binary() else {
        return;
    };
    let db = TestDatabase::sqlite();
    let server = TestServer::start(Config {
        http_listen: Some("127.0.0.1:0".parse().expect("address")),
        trusted_proxy_hops: 1,
        ..test_config(&db)
    })
    .await;
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("behind nginx", &["dns:read"])).await;
    let (_, unscoped) = create(&mut admin, new_key("no dns", &["zones:read"])).await;
    let (_, limited) = create(
        &mut admin,
        pb::CreateKeyRequest {
            rate_limit_per_hour: Some(1),
            ..new_key("limited", &["dns:read"])
        },
    )
    .await;
    let (upstream_addr, seen) = upstream().await;
    let port = free_port();
    let nginx = Nginx::start(
        &binary,
        server.http_addr.expect("http listener"),
        upstream_addr,
        port,
    );
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(front).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            nginx.error_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reached = || seen.lock().unwrap().len();

    // Allowed, with forged identity headers: the upstream sees Keygate's.
    let bearer = format!("Bearer {secret}");
    let resp = get(
        front,
        "/zones/example.com",
        &[
            ("authorization", &bearer),
            ("x-keygate-key-id", "forged"),
            ("x-keygate-owner-id", "globex"),
        ],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}\n{}", nginx.error_log());
    let head = resp.body.to_ascii_lowercase();
    assert!(head.starts_with("get /zones/example.com "), "{head}");
    assert!(
        head.contains(&format!(
            "x-keygate-key-id: {}\r\n",
            key.key_id.to_ascii_lowercase()
        )),
        "{head}"
    );
    assert!(head.contains("x-keygate-owner-id: acme\r\n"), "{head}");
    assert!(head.contains("x-keygate-scopes: dns:read\r\n"), "{head}");
    assert!(
        !head.contains("forged") && !head.contains("globex"),
        "{head}"
    );
    assert!(
        !head.contains("authorization"),
        "the key reached the upstream: {head}"
    );
    assert_eq!(resp.header("x-ratelimit-limit"), Some("1000"));
    assert_eq!(reached(), 1);

    // Refused by nginx, never reaching the upstream.
    let resp = get(front, "/zones/example.com", &[]).await;
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(resp.json()["error"], "unauthorized");
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    let resp = get(front, "/zones/example.com", &[("x-api-key", &unscoped)]).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.json()["error"], "forbidden");
    let limited_header = [("x-api-key", limited.as_str())];
    assert_eq!(get(front, "/zones/a", &limited_header).await.status, 200);
    let resp = get(front, "/zones/a", &limited_header).await;
    assert_eq!(resp.status, 429, "{resp:?}\n{}", nginx.error_log());
    assert_eq!(resp.json()["error"], "rate_limited");
    assert!(resp.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(
        reached(),
        2,
        "only the two allowed requests reach the upstream"
    );
}
