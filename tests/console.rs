//! The admin console (`--console`) over real HTTP, on both backends: sign-in
//! and its limits, sessions (sign-out, expiry, a revoked key ending its
//! sessions), CSRF refusal, the security headers, rights per scope, every
//! page and action, field errors, the secret shown once with `no-store`,
//! and edits racing other edits.

mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use common::{http::HttpResponse, *};
use keygate::v1 as pb;
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;

on_both_backends!(
    console_is_off_unless_asked_for,
    sign_in_page_and_security_headers,
    sign_in_checks_its_token_the_key_and_the_attempt_limit,
    every_form_needs_the_session_csrf_token,
    sessions_end_on_sign_out_and_expiry,
    a_revoked_or_disabled_key_ends_its_sessions,
    create_shows_the_secret_once_and_never_again,
    create_reports_field_errors_next_to_their_fields,
    read_sessions_see_but_cannot_change,
    write_sessions_act_within_their_owner_and_environment,
    key_page_actions_and_the_audit_log,
    an_edit_racing_another_edit_is_reported_not_overwritten,
    rotate_shows_the_new_secret_once,
    each_page_counts_one_use_of_its_key,
);

fn console_config(db: &TestDatabase) -> Config {
    Config {
        http_listen: Some("127.0.0.1:0".parse().expect("address")),
        console: true,
        ..test_config(db)
    }
}

/// A browser: cookies kept between requests.
struct Browser {
    addr: SocketAddr,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new(server: &TestServer) -> Self {
        Self {
            addr: server.http_addr.expect("http listener"),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &HttpResponse) {
        if let Some(set) = response.header("set-cookie") {
            for cookie in set.split(", ") {
                let pair = cookie.split(';').next().unwrap_or_default();
                if let Some((name, value)) = pair.split_once('=') {
                    if value.is_empty() {
                        self.cookies.remove(name);
                    } else {
                        self.cookies.insert(name.to_owned(), value.to_owned());
                    }
                }
            }
        }
    }

    async fn get(&mut self, path: &str) -> HttpResponse {
        let cookie = self.cookie_header();
        let response = http::get(self.addr, path, &[("Cookie", &cookie)]).await;
        self.keep_cookies(&response);
        response
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> HttpResponse {
        let cookie = self.cookie_header();
        let response = http::post_form(self.addr, path, &[("Cookie", &cookie)], form).await;
        self.keep_cookies(&response);
        response
    }

    /// Signs in with `key`; returns the sign-in POST's response.
    async fn sign_in(&mut self, key: &str) -> HttpResponse {
        let page = self.get("/console/sign-in").await;
        let token = csrf(&page.body);
        self.post("/console/sign-in", &[("csrf", &token), ("key", key)])
            .await
    }

    /// Signs in with `key` and returns the session's CSRF token.
    async fn signed_in(server: &TestServer, key: &str) -> (Self, String) {
        let mut browser = Self::new(server);
        let response = browser.sign_in(key).await;
        assert_eq!(response.status, 303, "{}", response.body);
        assert_eq!(response.header("location"), Some("/console/keys"));
        let list = browser.get("/console/keys").await;
        assert_eq!(list.status, 200, "{}", list.body);
        let token = csrf(&list.body);
        (browser, token)
    }
}

/// The value of the first `csrf` hidden field in `html`.
fn csrf(html: &str) -> String {
    hidden(html, "csrf")
}

/// The value of the hidden field `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    value_after(html, &format!("name=\"{name}\" value=\""), name)
}

/// The secret in the secret page's field.
fn secret_of(html: &str) -> String {
    value_after(
        html,
        "id=\"secret\" type=\"text\" readonly value=\"",
        "secret",
    )
}

/// The attribute value that `marker` (ending in `value="`) opens in
/// `html`; `field` names it when it is missing.
fn value_after(html: &str, marker: &str, field: &str) -> String {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no {field} field in {html}"))
        + marker.len();
    html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn assert_security_headers(response: &HttpResponse) {
    let csp = response.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(response.header("x-frame-options"), Some("DENY"));
    assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
}

async fn key_status(server: &TestServer, key_id: &str) -> pb::KeyStatus {
    let mut admin = server.admin().await;
    admin
        .keys
        .get_key(pb::GetKeyRequest {
            key_id: key_id.into(),
        })
        .await
        .expect("get key")
        .into_inner()
        .key
        .expect("key")
        .status()
}

async fn console_is_off_unless_asked_for(db: TestDatabase) {
    let server = TestServer::start(Config {
        http_listen: Some("127.0.0.1:0".parse().expect("address")),
        ..test_config(&db)
    })
    .await;
    let response = http::get(server.http_addr.expect("http"), "/console/", &[]).await;
    assert_eq!(response.status, 404);
    server.stop().await;
}

async fn sign_in_page_and_security_headers(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let mut browser = Browser::new(&server);
    let page = browser.get("/console/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("<label for=\"key\">Management key</label>")
    );
    assert_security_headers(&page);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let set = page.header("set-cookie").expect("sign-in token cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "no TLS, no Secure: {set}");
    // The pages load no inline script, only the vendored file.
    assert!(!page.body.contains("<script>"));
    assert!(page.body.contains("src=\"/console/static/console.js\""));
    let script = browser.get("/console/static/console.js").await;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap_or("")
            .starts_with("text/javascript")
    );
    assert_security_headers(&script);
    // A page that needs a session sends the browser to sign in.
    let list = http::get(server.addr_http(), "/console/keys", &[]).await;
    assert_eq!(list.status, 303);
    assert_eq!(list.header("location"), Some("/console/sign-in"));
    assert_security_headers(&list);
    let missing = browser.get("/console/nothing-here").await;
    assert_eq!(missing.status, 404);
    assert_security_headers(&missing);
    server.stop().await;
}

trait HttpAddr {
    fn addr_http(&self) -> SocketAddr;
}

impl HttpAddr for TestServer {
    fn addr_http(&self) -> SocketAddr {
        self.http_addr.expect("http listener")
    }
}

async fn sign_in_checks_its_token_the_key_and_the_attempt_limit(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let addr = server.addr_http();

    // No token cookie: refused even with the right key.
    let response = http::post_form(
        addr,
        "/console/sign-in",
        &[],
        &[("csrf", "x"), ("key", &server.admin_key)],
    )
    .await;
    assert_eq!(response.status, 403, "{}", response.body);
    assert!(
        response
            .header("set-cookie")
            .unwrap_or("")
            .contains("keygate_console_signin=")
    );
    assert!(!response.body.contains(&server.admin_key));

    // A wrong key.
    let mut browser = Browser::new(&server);
    let response = browser.sign_in("kg_live_notakeyatall").await;
    assert_eq!(response.status, 401, "{}", response.body);
    assert!(response.body.contains("was not accepted"));

    // A key without management rights.
    let mut admin = server.admin().await;
    let (_, plain) = create(&mut admin, new_key("plain", &["dns:read"])).await;
    let response = browser.sign_in(&plain).await;
    assert_eq!(response.status, 403, "{}", response.body);

    // The right key: a session cookie that holds no key.
    let response = browser.sign_in(&server.admin_key).await;
    assert_eq!(response.status, 303, "{}", response.body);
    let set = response.header("set-cookie").expect("session cookie");
    assert!(set.contains("keygate_console="), "{set}");
    assert!(
        set.contains("HttpOnly")
            && set.contains("SameSite=Strict")
            && set.contains("Path=/console"),
        "{set}"
    );
    assert!(!set.contains(&server.admin_key), "{set}");
    let page = browser.get("/console/").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/console/keys"));

    // Ten attempts per address per window, then 429 (even for a good key).
    let mut other = Browser::new(&server);
    // Four attempts came from this address above.
    for _ in 0..6 {
        let response = other.sign_in("kg_live_notakeyatall").await;
        assert_eq!(response.status, 401);
    }
    let response = other.sign_in(&server.admin_key).await;
    assert_eq!(response.status, 429, "{}", response.body);
    assert!(response.body.contains("Too many sign-in attempts"));
    server.stop().await;
}

async fn every_form_needs_the_session_csrf_token(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let (mut browser, token) = Browser::signed_in(&server, &server.admin_key).await;
    let mut admin = server.admin().await;
    let (key, _) = create(&mut admin, new_key("target", &["dns:read"])).await;
    let path = format!("/console/keys/{}", key.key_id);
    let forms: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            "/console/keys".into(),
            vec![("name", "x"), ("environment", "live"), ("expiry", "never")],
        ),
        (format!("{path}/disable"), vec![]),
        (
            format!("{path}/revoke"),
            vec![("reason", "r"), ("confirm", "target")],
        ),
        (format!("{path}/rotate"), vec![("grace", "0")]),
        (format!("{path}/delete"), vec![]),
        (
            format!("{path}/edit"),
            vec![("name", "renamed"), ("expiry", "keep")],
        ),
        ("/console/sign-out".into(), vec![]),
    ];
    for (action, fields) in forms {
        for bad in ["", "0000", &token[..token.len() - 1]] {
            let mut form = fields.clone();
            form.push(("csrf", bad));
            let response = browser.post(&action, &form).await;
            assert_eq!(
                response.status, 403,
                "{action} with csrf {bad:?}: {}",
                response.body
            );
            assert!(response.body.contains("CSRF token"), "{}", response.body);
        }
    }
    assert_eq!(
        key_status(&server, &key.key_id).await,
        pb::KeyStatus::Active
    );
    let listed = admin
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner()
        .keys;
    assert_eq!(listed.len(), 2, "nothing created: {listed:?}");
    // Still signed in: the refused sign-out did nothing.
    assert_eq!(browser.get("/console/keys").await.status, 200);
    server.stop().await;
}

async fn sessions_end_on_sign_out_and_expiry(db: TestDatabase) {
    let server = TestServer::start(Config {
        console_session_ttl: Duration::from_secs(1),
        ..console_config(&db)
    })
    .await;
    let (mut browser, token) = Browser::signed_in(&server, &server.admin_key).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = browser.get("/console/keys").await;
    assert_eq!(response.status, 303);
    assert_eq!(
        response.header("location"),
        Some("/console/sign-in?notice=expired")
    );
    let response = browser.post("/console/sign-out", &[("csrf", &token)]).await;
    assert_eq!(response.status, 303, "an ended session cannot post");
    assert_eq!(response.header("location"), Some("/console/sign-in"));
    server.stop().await;

    let server = TestServer::start(console_config(&db)).await;
    let (mut browser, token) = Browser::signed_in(&server, &server.admin_key).await;
    let response = browser.post("/console/sign-out", &[("csrf", &token)]).await;
    assert_eq!(response.status, 303);
    assert_eq!(
        response.header("location"),
        Some("/console/sign-in?notice=out")
    );
    assert!(!browser.cookies.contains_key("keygate_console"));
    let page = browser.get("/console/sign-in?notice=out").await;
    assert!(page.body.contains("You are signed out."));
    server.stop().await;
}

async fn a_revoked_or_disabled_key_ends_its_sessions(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let mut admin = server.admin().await;
    for action in ["revoke", "disable"] {
        let (key, secret) = create(&mut admin, new_key(action, &["keys:admin"])).await;
        let (mut browser, _) = Browser::signed_in(&server, &secret).await;
        if action == "revoke" {
            admin
                .keys
                .revoke_key(pb::RevokeKeyRequest {
                    key_id: key.key_id.clone(),
                    reason: "left".into(),
                    etag: String::new(),
                })
                .await
                .expect("revoke");
        } else {
            admin
                .keys
                .disable_key(pb::DisableKeyRequest {
                    key_id: key.key_id.clone(),
                    etag: String::new(),
                })
                .await
                .expect("disable");
        }
        let response = browser.get("/console/keys").await;
        assert_eq!(response.status, 303, "{action}: {}", response.body);
        assert_eq!(
            response.header("location"),
            Some("/console/sign-in?notice=key")
        );
        let page = browser.get("/console/sign-in?notice=key").await;
        assert!(page.body.contains("no longer authenticates"));
        // Signing in again with it fails too.
        assert_eq!(browser.sign_in(&secret).await.status, 401);
    }
    server.stop().await;
}

async fn create_shows_the_secret_once_and_never_again(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let (mut browser, token) = Browser::signed_in(&server, &server.admin_key).await;
    let form = browser.get("/console/keys/new").await;
    assert_eq!(form.status, 200);
    for field in [
        "name",
        "scopes",
        "ip_allowlist",
        "rate_limit_per_hour",
        "metadata",
        "expires_on",
        "owner_id",
        "environment",
    ] {
        assert!(
            form.body.contains(&format!("<label for=\"{field}\"")),
            "label for {field}"
        );
    }
    assert!(
        form.body.contains("default: 1000"),
        "the default rate limit is shown"
    );
    let response = browser
        .post(
            "/console/keys",
            &[
                ("csrf", &token),
                ("owner_id", "acme"),
                ("name", "from the console"),
                ("environment", "live"),
                ("scopes", "dns:read, dns:write"),
                ("ip_allowlist", "10.0.0.0/8\n"),
                ("rate_limit_per_hour", "500"),
                ("metadata", "plan = pro\n"),
                ("expiry", "30d"),
            ],
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert_security_headers(&response);
    assert!(response.body.contains("will not be shown again"));
    assert!(response.body.contains("data-copy=\"secret\""));
    let secret = secret_of(&response.body);
    assert!(secret.starts_with("kg_live_"), "{secret}");

    let mut client = server.client().await;
    let allowed = authorize(&mut client, authz(&secret, &["dns:read"])).await;
    assert_allowed(&allowed);
    assert_eq!(
        allowed.metadata.get("plan").map(String::as_str),
        Some("pro")
    );
    let key_id = allowed.key_id.clone();
    let mut admin = server.admin().await;
    let key = admin
        .keys
        .get_key(pb::GetKeyRequest {
            key_id: key_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(key.name, "from the console");
    assert_eq!(key.rate_limit_per_hour, Some(500));
    assert_eq!(key.ip_allowlist, ["10.0.0.0/8"]);
    assert!(key.expires_at.is_some());

    // No later page shows it.
    for path in [
        "/console/keys".to_owned(),
        format!("/console/keys/{key_id}"),
        format!("/console/keys/{key_id}/edit"),
        "/console/audit".to_owned(),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains(&secret), "{path} shows the secret");
        assert!(
            !page.body.contains(&secret[8..]),
            "{path} shows the secret body"
        );
    }
    // The audit event names the console user's key and the browser's address.
    let events = admin
        .keys
        .list_audit_events(pb::ListAuditEventsRequest {
            key_id: key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("events")
        .into_inner()
        .events;
    let created = events
        .iter()
        .find(|e| e.method == "CreateKey")
        .expect("CreateKey event");
    assert_eq!(created.actor_owner_id, "acme");
    assert!(!created.actor_key_id.is_empty());
    assert_eq!(created.peer_address, "127.0.0.1");
    server.stop().await;
}

async fn create_reports_field_errors_next_to_their_fields(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let (mut browser, token) = Browser::signed_in(&server, &server.admin_key).await;
    let response = browser
        .post(
            "/console/keys",
            &[
                ("csrf", &token),
                ("name", "bad"),
                ("environment", "live"),
                ("scopes", "dns:read not a scope!"),
                ("ip_allowlist", "10.0.0.0/8\nnot-a-network"),
                ("expiry", "never"),
            ],
        )
        .await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(
        response.body.contains("id=\"scopes-error\""),
        "{}",
        response.body
    );
    assert!(
        response.body.contains("id=\"ip_allowlist-error\""),
        "{}",
        response.body
    );
    assert!(
        response.body.contains("scopes["),
        "the API's field path is shown"
    );
    // What was typed is kept.
    assert!(response.body.contains("not-a-network"));

    let response = browser
        .post(
            "/console/keys",
            &[
                ("csrf", &token),
                ("name", ""),
                ("environment", "live"),
                ("rate_limit_per_hour", "lots"),
                ("metadata", "no equals"),
                ("expiry", "custom"),
                ("expires_on", ""),
            ],
        )
        .await;
    assert_eq!(response.status, 400, "{}", response.body);
    for field in ["rate_limit_per_hour", "metadata", "expires_at"] {
        assert!(
            response.body.contains(&format!("id=\"{field}-error\"")),
            "{field}: {}",
            response.body
        );
    }
    let response = browser
        .post(
            "/console/keys",
            &[
                ("csrf", &token),
                ("name", ""),
                ("environment", "live"),
                ("expiry", "never"),
            ],
        )
        .await;
    assert_eq!(response.status, 400);
    assert!(
        response.body.contains("id=\"name-error\""),
        "{}",
        response.body
    );
    server.stop().await;
}

async fn read_sessions_see_but_cannot_change(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let mut admin = server.admin().await;
    let (_, reader) = create(&mut admin, new_key("reader", &["keys:read"])).await;
    let (target, _) = create(&mut admin, new_key("target", &["dns:read"])).await;
    let (mut browser, token) = Browser::signed_in(&server, &reader).await;
    let list = browser.get("/console/keys").await;
    assert!(list.body.contains("target"));
    assert!(!list.body.contains("/console/keys/new"), "no create link");
    let path = format!("/console/keys/{}", target.key_id);
    let page = browser.get(&path).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("Revoke key"));
    assert!(!page.body.contains("/disable"));
    assert!(!page.body.contains("/edit"));
    assert_eq!(browser.get("/console/keys/new").await.status, 403);
    // Posting anyway is refused by the API's own rights check.
    let etag = target.etag.clone();
    for (action, form) in [
        ("revoke", vec![("reason", "r"), ("confirm", "target")]),
        ("disable", vec![]),
        ("rotate", vec![("grace", "0")]),
        ("delete", vec![]),
    ] {
        let mut form = form;
        form.push(("csrf", &token));
        form.push(("etag", &etag));
        let response = browser.post(&format!("{path}/{action}"), &form).await;
        assert_eq!(response.status, 403, "{action}: {}", response.body);
    }
    let response = browser
        .post(
            "/console/keys",
            &[
                ("csrf", &token),
                ("name", "x"),
                ("environment", "live"),
                ("expiry", "never"),
            ],
        )
        .await;
    assert_eq!(response.status, 403, "{}", response.body);
    let response = browser
        .post(
            &format!("{path}/edit"),
            &[("csrf", &token), ("name", "renamed"), ("expiry", "keep")],
        )
        .await;
    assert_eq!(response.status, 403, "{}", response.body);
    assert_eq!(
        key_status(&server, &target.key_id).await,
        pb::KeyStatus::Active
    );
    server.stop().await;
}

async fn write_sessions_act_within_their_owner_and_environment(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let mut admin = server.admin().await;
    let (_, writer) = create(&mut admin, new_key("writer", &["keys:write", "dns:*"])).await;
    let (own, _) = create(&mut admin, new_key("own", &["dns:read"])).await;
    let (other, _) = create(
        &mut admin,
        pb::CreateKeyRequest {
            owner_id: "globex".into(),
            ..new_key("other", &["dns:read"])
        },
    )
    .await;
    let (mut browser, token) = Browser::signed_in(&server, &writer).await;
    let list = browser.get("/console/keys").await;
    assert!(list.body.contains(">own<"));
    assert!(!list.body.contains(">other<"));
    assert!(
        !list.body.contains("id=\"owner\""),
        "no owner filter for non-admins"
    );
    let response = browser
        .post(
            &format!("/console/keys/{}/disable", own.key_id),
            &[("csrf", &token)],
        )
        .await;
    assert_eq!(response.status, 303, "{}", response.body);
    assert_eq!(
        key_status(&server, &own.key_id).await,
        pb::KeyStatus::Disabled
    );
    let response = browser
        .post(
            &format!("/console/keys/{}/disable", other.key_id),
            &[("csrf", &token)],
        )
        .await;
    assert_eq!(response.status, 404, "{}", response.body);
    assert_eq!(
        browser
            .get(&format!("/console/keys/{}", other.key_id))
            .await
            .status,
        404
    );
    // A grant beyond its own scopes is refused, named.
    let response = browser
        .post(
            "/console/keys",
            &[
                ("csrf", &token),
                ("name", "wide"),
                ("environment", "live"),
                ("scopes", "billing:read"),
                ("expiry", "never"),
            ],
        )
        .await;
    assert_eq!(response.status, 403, "{}", response.body);
    assert!(response.body.contains("billing:read"), "{}", response.body);
    server.stop().await;
}

async fn key_page_actions_and_the_audit_log(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("svc", &["dns:read"])).await;
    let mut client = server.client().await;
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    let (mut browser, token) = Browser::signed_in(&server, &server.admin_key).await;
    let path = format!("/console/keys/{}", key.key_id);

    let page = browser.get(&path).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("data-status=\"Active\""));
    assert!(page.body.contains("<svg"), "usage chart");
    assert!(page.body.contains("Last 24 hours") && page.body.contains("Last 7 days"));
    assert!(page.body.contains("CreateKey"), "the key's audit events");
    let etag = hidden(&page.body, "etag");

    // Disable, enable.
    let response = browser
        .post(
            &format!("{path}/disable"),
            &[("csrf", &token), ("etag", &etag)],
        )
        .await;
    assert_eq!(response.status, 303, "{}", response.body);
    let page = browser
        .get(response.header("location").expect("location"))
        .await;
    assert!(page.body.contains("The key is disabled."));
    assert!(page.body.contains("data-status=\"Disabled\""));
    // The old etag is stale now: reported, not applied.
    let response = browser
        .post(
            &format!("{path}/delete"),
            &[("csrf", &token), ("etag", &etag)],
        )
        .await;
    assert_eq!(response.status, 409, "{}", response.body);
    assert!(response.body.contains("changed since this page was loaded"));
    let etag = hidden(&page.body, "etag");
    let response = browser
        .post(
            &format!("{path}/enable"),
            &[("csrf", &token), ("etag", &etag)],
        )
        .await;
    assert_eq!(response.status, 303, "{}", response.body);

    // Revoke needs a reason and the typed name.
    let response = browser
        .post(
            &format!("{path}/revoke"),
            &[("csrf", &token), ("reason", ""), ("confirm", "wrong")],
        )
        .await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.body.contains("id=\"reason-error\""));
    assert!(response.body.contains("id=\"confirm-error\""));
    assert_eq!(
        key_status(&server, &key.key_id).await,
        pb::KeyStatus::Active
    );
    let response = browser
        .post(
            &format!("{path}/revoke"),
            &[("csrf", &token), ("reason", "leaked"), ("confirm", "svc")],
        )
        .await;
    assert_eq!(response.status, 303, "{}", response.body);
    let page = browser.get(&path).await;
    assert!(page.body.contains("data-status=\"Revoked\""));
    assert!(page.body.contains("leaked"));
    assert_denied(
        &authorize(&mut client, authz(&secret, &["dns:read"])).await,
        pb::DenyReason::KeyRevoked,
    );
    // Delete, undelete.
    let response = browser
        .post(&format!("{path}/delete"), &[("csrf", &token)])
        .await;
    assert_eq!(response.status, 303, "{}", response.body);
    let list = browser.get("/console/keys?status=deleted").await;
    assert!(list.body.contains(">svc<"), "{}", list.body);
    assert!(list.body.contains("data-status=\"Deleted\""));
    let response = browser
        .post(&format!("{path}/undelete"), &[("csrf", &token)])
        .await;
    assert_eq!(response.status, 303, "{}", response.body);
    assert_eq!(
        key_status(&server, &key.key_id).await,
        pb::KeyStatus::Revoked
    );

    // The audit log: newest first, filtered, with the console key as actor.
    let audit = browser
        .get(&format!("/console/audit?key={}", key.key_id))
        .await;
    assert_eq!(audit.status, 200, "{}", audit.body);
    let table = &audit.body[audit.body.find("<table").expect("events table")..];
    let undelete = table.find("UndeleteKey").expect("undelete event");
    let revoke = table.find("RevokeKey").expect("revoke event");
    let create = table.find("CreateKey").expect("create event");
    assert!(undelete < revoke && revoke < create, "newest first");
    assert!(audit.body.contains("Reason: leaked"));
    assert!(audit.body.contains("127.0.0.1"));
    let filtered = browser.get("/console/audit?method=RevokeKey").await;
    assert!(filtered.body.contains("RevokeKey") && !filtered.body.contains("CreateKey</td>"));
    let bad = browser.get("/console/audit?from=yesterday").await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("id=\"start_time-error\""));
    // The list's filters.
    let list = browser.get("/console/keys?status=revoked").await;
    assert!(list.body.contains(">svc<"));
    let list = browser.get("/console/keys?name=nomatch").await;
    assert!(list.body.contains("No key matches these filters"));
    let list = browser
        .get("/console/keys?expiring=7&unused=30&name=SV")
        .await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains("No key matches"), "svc never expires");
    let list = browser
        .get("/console/keys?unused=90&name=SV&status=revoked")
        .await;
    assert!(!list.body.contains(">svc<"), "svc was used just now");
    let list = browser.get("/console/keys?status=bogus").await;
    assert_eq!(list.status, 400);
    server.stop().await;
}

async fn an_edit_racing_another_edit_is_reported_not_overwritten(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, _) = create(&mut admin, new_key("racer", &["dns:read"])).await;
    let (mut browser, token) = Browser::signed_in(&server, &server.admin_key).await;
    let path = format!("/console/keys/{}/edit", key.key_id);
    let form = browser.get(&path).await;
    assert_eq!(form.status, 200);
    let etag = hidden(&form.body, "etag");
    assert!(form.body.contains("value=\"racer\""));

    // Someone else renames it meanwhile.
    admin
        .keys
        .update_key(pb::UpdateKeyRequest {
            key: Some(pb::ApiKey {
                key_id: key.key_id.clone(),
                name: "theirs".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
            etag: String::new(),
        })
        .await
        .expect("other edit");
    let edit = [
        ("csrf", token.as_str()),
        ("etag", etag.as_str()),
        ("name", "mine"),
        ("scopes", "dns:read dns:write"),
        ("metadata", "team = core"),
        ("rate_limit_per_hour", "42"),
        ("expiry", "keep"),
    ];
    let response = browser.post(&path, &edit).await;
    assert_eq!(response.status, 409, "{}", response.body);
    assert!(response.body.contains("changed since this page was loaded"));
    assert!(
        response.body.contains("value=\"mine\""),
        "the user's input is kept"
    );
    let get = admin
        .keys
        .get_key(pb::GetKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(get.name, "theirs", "not overwritten");

    // With the fresh etag it applies.
    let form = browser.get(&path).await;
    let etag = hidden(&form.body, "etag");
    let mut edit = edit;
    edit[1].1 = &etag;
    let response = browser.post(&path, &edit).await;
    assert_eq!(response.status, 303, "{}", response.body);
    let done = response.header("location").expect("location").to_owned();
    let get = admin
        .keys
        .get_key(pb::GetKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(get.name, "mine");
    assert_eq!(get.scopes, ["dns:read", "dns:write"]);
    assert_eq!(get.rate_limit_per_hour, Some(42));
    assert_eq!(get.metadata.get("team").map(String::as_str), Some("core"));
    let page = browser.get(&done).await;
    assert!(page.body.contains("Your changes are saved."));
    assert!(page.body.contains("UpdateKey"));
    server.stop().await;
}

async fn rotate_shows_the_new_secret_once(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, old) = create(&mut admin, new_key("rotating", &["dns:read"])).await;
    let (mut browser, token) = Browser::signed_in(&server, &server.admin_key).await;
    let path = format!("/console/keys/{}", key.key_id);
    let response = browser
        .post(
            &format!("{path}/rotate"),
            &[("csrf", &token), ("grace", "1h"), ("etag", &key.etag)],
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(response.body.contains("keeps working until"));
    let new = secret_of(&response.body);
    assert_ne!(new, old);
    let mut client = server.client().await;
    assert_allowed(&authorize(&mut client, authz(&new, &["dns:read"])).await);
    assert_allowed(&authorize(&mut client, authz(&old, &["dns:read"])).await);
    let page = browser.get(&path).await;
    assert!(!page.body.contains(&new));
    let response = browser
        .post(
            &format!("{path}/rotate"),
            &[("csrf", &token), ("grace", "forever")],
        )
        .await;
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.body.contains("grace periods"));
    server.stop().await;
}

/// A page re-checks its session's key but counts one use of it: the
/// management call the page makes, not the check before it.
async fn each_page_counts_one_use_of_its_key(db: TestDatabase) {
    let server = TestServer::start(console_config(&db)).await;
    let mut admin = server.admin().await;
    let (reader, secret) = create(&mut admin, new_key("console reader", &["keys:read"])).await;
    let (mut browser, _) = Browser::signed_in(&server, &secret).await;
    for _ in 0..3 {
        assert_eq!(browser.get("/console/keys").await.status, 200);
    }
    let usage = admin
        .keys
        .get_key_usage(pb::GetKeyUsageRequest {
            key_id: reader.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("usage")
        .into_inner();
    let allowed: u64 = usage.buckets.iter().map(|b| b.allowed).sum();
    // The sign-in, then one ListKeys per list page (four of them).
    assert_eq!(allowed, 5, "{usage:?}");
    server.stop().await;
}
