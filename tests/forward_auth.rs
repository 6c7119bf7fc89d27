//! The HTTP listener end to end: forward-auth (`/v1/authorize`) answers
//! every status a proxy acts on, with identity, rate-limit and JSON, and the
//! probes (`/healthz`, `/readyz`). The same decisions behind a real nginx
//! are in `tests/nginx.rs`.

mod common;

use common::{http::get, *};
use keygate::v1 as pb;
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;

on_both_backends!(forward_auth_answers_every_status, probes_answer);

fn http_config(db: &TestDatabase) -> Config {
    Config {
        // Any address: the harness binds a free port instead.
        http_listen: Some("127.0.0.1:0".parse().expect("address")),
        ..test_config(db)
    }
}

async fn forward_auth_answers_every_status(db: TestDatabase) {
    let server = TestServer::start(http_config(&db)).await;
    let http = server.http_addr.expect("http listener");
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("proxied", &["dns:read"])).await;
    let (_, limited) = create(
        &mut admin,
        pb::CreateKeyRequest {
            rate_limit_per_hour: Some(1),
            ..new_key("limited", &[])
        },
    )
    .await;
    let (disabled, disabled_secret) = create(&mut admin, new_key("off", &[])).await;
    admin
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: disabled.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("disable");
    let bearer = format!("Bearer {secret}");

    // Allowed: 200 with identity and rate-limit headers, any method.
    for method in ["GET", "POST", "DELETE"] {
        let resp = common::http::request(
            http,
            method,
            "/v1/authorize?scopes=dns:read",
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(resp.status, 200, "{method}: {resp:?}");
        assert_eq!(resp.header("x-keygate-key-id"), Some(key.key_id.as_str()));
        assert_eq!(resp.header("x-keygate-owner-id"), Some("acme"));
        assert_eq!(resp.header("x-keygate-scopes"), Some("dns:read"));
        assert_eq!(resp.header("x-ratelimit-limit"), Some("1000"));
        assert!(resp.header("x-ratelimit-reset").is_some());
    }
    // Scopes from the proxy's header when the query names none.
    let resp = get(
        http,
        "/v1/authorize",
        &[("x-api-key", &secret), ("x-keygate-scopes", "dns:write")],
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.json()["error"], "scope_missing");
    assert_eq!(
        resp.json()["missing_scopes"],
        serde_json::json!(["dns:write"])
    );

    // Each deny class.
    for (headers, path, status, error) in [
        (vec![], "/v1/authorize", 401, "key_invalid"),
        (
            vec![("authorization", "Bearer kg_live_nope")],
            "/v1/authorize",
            401,
            "key_invalid",
        ),
        (
            vec![("x-api-key", disabled_secret.as_str())],
            "/v1/authorize",
            401,
            "key_disabled",
        ),
        (
            vec![("x-api-key", secret.as_str())],
            "/v1/authorize?environment=test",
            401,
            "environment_mismatch",
        ),
        (
            vec![("x-api-key", secret.as_str())],
            "/v1/authorize?scopes=dns:read,zones:write",
            403,
            "scope_missing",
        ),
    ] {
        let resp = get(http, path, &headers).await;
        assert_eq!(resp.status, status, "{path} {headers:?}: {resp:?}");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.json()["error"], error);
        if status == 401 {
            assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        }
    }
    // Over the limit: 429 with retry-after.
    let limited_header = [("x-api-key", limited.as_str())];
    assert_eq!(
        get(http, "/v1/authorize", &limited_header).await.status,
        200
    );
    let resp = get(http, "/v1/authorize", &limited_header).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.json()["error"], "rate_limited");
    assert!(resp.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(resp.header("x-ratelimit-remaining"), Some("0"));

    // A proxy configured with a bad scope or environment: 400, naming it.
    for path in [
        "/v1/authorize?scopes=not%20a%20scope",
        "/v1/authorize?environment=staging",
    ] {
        let resp = get(http, path, &[("x-api-key", &secret)]).await;
        assert_eq!(resp.status, 400, "{path}: {resp:?}");
        assert_eq!(resp.json()["error"], "invalid_request");
    }
}

async fn probes_answer(db: TestDatabase) {
    let server = TestServer::start(http_config(&db)).await;
    let http = server.http_addr.expect("http listener");
    let healthz = get(http, "/healthz", &[]).await;
    assert_eq!((healthz.status, healthz.body.trim()), (200, "ok"));
    let readyz = get(http, "/readyz", &[]).await;
    assert_eq!((readyz.status, readyz.body.trim()), (200, "ready"));
    assert_eq!(get(http, "/nope", &[]).await.status, 404);
}
