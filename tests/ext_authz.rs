//! Envoy's ext_authz v3 `Check` end to end, on both backends: real
//! `CheckRequest`s (built from envoy-types, as Envoy sends them) against a
//! real server. Allow with identity headers that overwrite forged ones and
//! the key header removed; every deny class with its HTTP status and JSON
//! body; the scope and environment context extensions; the
//! `x-forwarded-for` hop rule; misconfiguration as an error status; health
//! and reflection.

mod common;

use std::collections::HashMap;

use common::*;
use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
};
use keygate::v1 as pb;
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;
use tonic::{Code, transport::Channel};

on_both_backends!(
    allowed_requests_reach_upstream_with_identity,
    every_deny_class_has_its_status_and_body,
    forwarded_for_is_trusted_only_past_the_configured_hops,
);

/// A CheckRequest as Envoy builds it for an HTTP request from `source`.
fn check_request(
    source: &str,
    headers: &[(&str, &str)],
    extensions: &[(&str, &str)],
) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: source.to_owned(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/zones".into(),
                    host: "api.example".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }),
    }
}

async fn ext_authz(server: &TestServer) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(server.url.clone())
        .await
        .expect("connect")
}

async fn check(client: &mut AuthorizationClient<Channel>, request: CheckRequest) -> CheckResponse {
    client.check(request).await.expect("check").into_inner()
}

/// The headers of an allow, by name, and the headers removed upstream.
fn allowed(
    resp: &CheckResponse,
) -> (
    HashMap<String, String>,
    HashMap<String, String>,
    Vec<String>,
) {
    assert_eq!(resp.status.as_ref().map(|s| s.code), Some(0), "{resp:?}");
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("no ok_response in {resp:?}");
    };
    let upstream = ok
        .headers
        .iter()
        .map(|h| {
            // Overwrite: a copy the client sent cannot survive.
            assert_eq!(h.append_action, 2, "{h:?} does not overwrite");
            let header = h.header.as_ref().expect("header");
            (header.key.clone(), header.value.clone())
        })
        .collect();
    let to_client = ok
        .response_headers_to_add
        .iter()
        .map(|h| {
            let header = h.header.as_ref().expect("header");
            (header.key.clone(), header.value.clone())
        })
        .collect();
    (upstream, to_client, ok.headers_to_remove.clone())
}

/// The status, headers and JSON body of a deny.
fn denied(resp: &CheckResponse) -> (u16, HashMap<String, String>, serde_json::Value) {
    assert_ne!(resp.status.as_ref().map(|s| s.code), Some(0), "{resp:?}");
    let Some(HttpResponse::DeniedResponse(deny)) = &resp.http_response else {
        panic!("no denied_response in {resp:?}");
    };
    let headers = deny
        .headers
        .iter()
        .map(|h| {
            let header = h.header.as_ref().expect("header");
            (header.key.clone(), header.value.clone())
        })
        .collect();
    let status = u16::try_from(deny.status.as_ref().expect("status").code).expect("http status");
    let body = serde_json::from_str(&deny.body).expect("json body");
    (status, headers, body)
}

async fn allowed_requests_reach_upstream_with_identity(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("meshed", &["dns:read", "zones:*"])).await;
    let mut envoy = ext_authz(&server).await;
    let bearer = format!("Bearer {secret}");

    // The client forges identity headers; they are overwritten.
    let resp = check(
        &mut envoy,
        check_request(
            "10.0.0.1",
            &[
                ("authorization", &bearer),
                ("x-keygate-key-id", "someone-else"),
                ("x-keygate-owner-id", "globex"),
            ],
            &[("keygate_scopes", "dns:read, zones:write")],
        ),
    )
    .await;
    let (upstream, to_client, removed) = allowed(&resp);
    assert_eq!(upstream["x-keygate-key-id"], key.key_id);
    assert_eq!(upstream["x-keygate-owner-id"], "acme");
    assert_eq!(upstream["x-keygate-scopes"], "dns:read,zones:*");
    assert_eq!(removed, ["authorization"], "the key is not passed upstream");
    assert_eq!(to_client["x-ratelimit-limit"], "1000");
    assert_eq!(to_client["x-ratelimit-remaining"], "999");
    assert!(to_client["x-ratelimit-reset"].parse::<i64>().unwrap() > 0);

    // x-api-key works too, and no scopes required means any valid key.
    let resp = check(
        &mut envoy,
        check_request("10.0.0.1", &[("x-api-key", &secret)], &[]),
    )
    .await;
    let (_, _, removed) = allowed(&resp);
    assert_eq!(removed, ["x-api-key"]);

    // The environment extension picks the environment; the default is live.
    let mut test_key = new_key("test env", &[]);
    test_key.environment = "test".into();
    let (_, test_secret) = create(&mut admin, test_key).await;
    let in_test = check_request(
        "10.0.0.1",
        &[("x-api-key", &test_secret)],
        &[("keygate_environment", "test")],
    );
    allowed(&check(&mut envoy, in_test).await);

    // A route configured with an unknown environment or a malformed scope
    // is Keygate unable to decide: an error status, for failure_mode_allow.
    for extensions in [
        [("keygate_environment", "staging")],
        [("keygate_scopes", "dns:read,not a scope")],
    ] {
        let status = envoy
            .check(check_request(
                "10.0.0.1",
                &[("x-api-key", &secret)],
                &extensions,
            ))
            .await
            .expect_err("misconfigured route");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(extensions[0].0), "{status:?}");
    }
}

async fn every_deny_class_has_its_status_and_body(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (_, secret) = create(&mut admin, new_key("plain", &["dns:read"])).await;
    let (revoked, revoked_secret) = create(&mut admin, new_key("revoked", &["dns:read"])).await;
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: revoked.key_id.clone(),
            reason: "leaked".into(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    let (_, fenced) = create(
        &mut admin,
        pb::CreateKeyRequest {
            ip_allowlist: vec!["10.0.0.0/8".into()],
            ..new_key("fenced", &[])
        },
    )
    .await;
    let (_, limited) = create(
        &mut admin,
        pb::CreateKeyRequest {
            rate_limit_per_hour: Some(1),
            ..new_key("limited", &[])
        },
    )
    .await;
    let mut envoy = ext_authz(&server).await;
    let with_key = |key: &str, source: &str, extensions: &[(&str, &str)]| {
        check_request(source, &[("x-api-key", key)], extensions)
    };

    let cases: Vec<(CheckRequest, u16, &str)> = vec![
        (check_request("10.0.0.1", &[], &[]), 401, "key_invalid"),
        (
            with_key("kg_live_nonsense", "10.0.0.1", &[]),
            401,
            "key_invalid",
        ),
        (
            with_key(&revoked_secret, "10.0.0.1", &[]),
            401,
            "key_revoked",
        ),
        (
            with_key(&secret, "10.0.0.1", &[("keygate_environment", "test")]),
            401,
            "environment_mismatch",
        ),
        (
            with_key(&secret, "10.0.0.1", &[("keygate_scopes", "dns:write")]),
            403,
            "scope_missing",
        ),
        (with_key(&fenced, "192.0.2.1", &[]), 403, "ip_not_allowed"),
    ];
    for (request, want_status, want_error) in cases {
        let (status, headers, body) = denied(&check(&mut envoy, request).await);
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_error))
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(headers["content-type"], "application/json");
        if status == 401 {
            assert_eq!(headers["www-authenticate"], "Bearer");
        }
        if want_error == "scope_missing" {
            assert_eq!(body["missing_scopes"], serde_json::json!(["dns:write"]));
        }
    }
    allowed(&check(&mut envoy, with_key(&fenced, "10.1.2.3", &[])).await);

    // Over the limit: 429 with retry-after and the rate-limit figures.
    allowed(&check(&mut envoy, with_key(&limited, "10.0.0.1", &[])).await);
    let (status, headers, body) =
        denied(&check(&mut envoy, with_key(&limited, "10.0.0.1", &[])).await);
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited"))
    );
    assert!(headers["retry-after"].parse::<u64>().unwrap() >= 1);
    assert_eq!(headers["x-ratelimit-limit"], "1");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
}

async fn forwarded_for_is_trusted_only_past_the_configured_hops(db: TestDatabase) {
    // One trusted proxy in front of Envoy: it appended the real client.
    let config = Config {
        trusted_proxy_hops: 1,
        ..test_config(&db)
    };
    let server = TestServer::start(config).await;
    let mut admin = server.admin().await;
    let (_, fenced) = create(
        &mut admin,
        pb::CreateKeyRequest {
            ip_allowlist: vec!["203.0.113.0/24".into()],
            ..new_key("fenced", &[])
        },
    )
    .await;
    let mut envoy = ext_authz(&server).await;
    let from = |xff: &str| {
        check_request(
            "10.9.9.9",
            &[("x-api-key", &fenced), ("x-forwarded-for", xff)],
            &[],
        )
    };
    // The rightmost entry is what the trusted proxy saw.
    allowed(&check(&mut envoy, from("1.1.1.1, 203.0.113.5")).await);
    // The client wrote an allowed address on the left: not believed.
    let (status, _, body) = denied(&check(&mut envoy, from("203.0.113.5, 1.1.1.1")).await);
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("ip_not_allowed"))
    );
    // No header: the source address (outside the allowlist).
    let (status, _, _) = denied(
        &check(
            &mut envoy,
            check_request("10.9.9.9", &[("x-api-key", &fenced)], &[]),
        )
        .await,
    );
    assert_eq!(status, 403);

    // Without trusted hops the header is ignored altogether.
    let plain_db = TestDatabase::sqlite();
    let plain = TestServer::start(test_config(&plain_db)).await;
    let mut plain_admin = plain.admin().await;
    let (_, fenced) = create(
        &mut plain_admin,
        pb::CreateKeyRequest {
            ip_allowlist: vec!["203.0.113.0/24".into()],
            ..new_key("fenced", &[])
        },
    )
    .await;
    let mut envoy = ext_authz(&plain).await;
    let request = check_request(
        "10.9.9.9",
        &[("x-api-key", &fenced), ("x-forwarded-for", "203.0.113.5")],
        &[],
    );
    let (status, _, _) = denied(&check(&mut envoy, request).await);
    assert_eq!(status, 403);
}
