//! End-to-end tests of AuthorizationService/Authorize: every decision, the
//! request's failure paths, the warm path's zero queries, and restarts.

mod common;

use common::*;
use keygate::v1 as pb;
use keygate_persistence::testing::TestDatabase;
use tonic::Code;

on_both_backends!(
    every_deny_reason_and_allow,
    malformed_requests_are_invalid_argument,
    rate_limit_figures_and_denial,
    warm_path_makes_no_queries_and_unknown_keys_are_cached,
    restart_keeps_keys_and_usage,
);

async fn every_deny_reason_and_allow(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let mut client = server.client().await;
    let (key, secret) = create(
        &mut admin,
        pb::CreateKeyRequest {
            ip_allowlist: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            ..new_key("svc", &["dns:read", "billing:*"])
        },
    )
    .await;

    // Allow, with what a service needs.
    let allowed = authorize(&mut client, authz(&secret, &["dns:read", "billing:write"])).await;
    assert_allowed(&allowed);
    assert_eq!(allowed.key_id, key.key_id);
    assert_eq!(allowed.owner_id, "acme");
    assert_eq!(allowed.environment, "live");
    assert_eq!(allowed.scopes, vec!["dns:read", "billing:*"]);
    let rate = allowed.rate_limit.expect("rate limit figures on allow");
    assert_eq!(rate.limit, 1000);
    assert_eq!(rate.remaining, 999);
    // Bearer scheme and whitespace are stripped; no scopes = authentication only.
    assert_allowed(&authorize(&mut client, authz(&format!("  Bearer {secret}\n"), &[])).await);
    // IPv6 in the list, and an IPv4-mapped IPv6 address judged as its IPv4 address.
    assert_allowed(
        &authorize(
            &mut client,
            pb::AuthorizeRequest {
                client_ip: "2001:db8::7".into(),
                ..authz(&secret, &[])
            },
        )
        .await,
    );
    assert_allowed(
        &authorize(
            &mut client,
            pb::AuthorizeRequest {
                client_ip: "::ffff:10.1.2.3".into(),
                ..authz(&secret, &[])
            },
        )
        .await,
    );

    // KEY_INVALID: empty, malformed, bad checksum, unknown.
    for bad in [
        "",
        "hello",
        &secret[..secret.len() - 1],
        "kg_live_00000000000000000000000000000000000000",
    ] {
        let resp = authorize(&mut client, authz(bad, &[])).await;
        assert_denied(&resp, pb::DenyReason::KeyInvalid);
        assert!(resp.key_id.is_empty() && resp.scopes.is_empty(), "{resp:?}");
        assert_eq!(resp.message, "Invalid API key");
    }
    let mut flipped = secret.clone().into_bytes();
    flipped[12] = if flipped[12] == b'a' { b'b' } else { b'a' };
    assert_denied(
        &authorize(
            &mut client,
            authz(&String::from_utf8(flipped).unwrap(), &[]),
        )
        .await,
        pb::DenyReason::KeyInvalid,
    );
    // A well-formed key that was never issued (valid checksum, unknown lookup id).
    let (_, stranger) = {
        let format = keygate_domain::keyformat::KeyFormat::default();
        let generated = format.generate("live");
        ((), generated.secret)
    };
    assert_denied(
        &authorize(&mut client, authz(&stranger, &[])).await,
        pb::DenyReason::KeyInvalid,
    );

    // SCOPE_MISSING lists what is missing.
    let resp = authorize(
        &mut client,
        authz(&secret, &["dns:read", "dns:write", "admin:all"]),
    )
    .await;
    assert_denied(&resp, pb::DenyReason::ScopeMissing);
    assert_eq!(resp.missing_scopes, vec!["dns:write", "admin:all"]);
    assert_eq!(resp.message, "Insufficient permissions");
    // ENVIRONMENT_MISMATCH.
    let resp = authorize(
        &mut client,
        pb::AuthorizeRequest {
            environment: "test".into(),
            ..authz(&secret, &[])
        },
    )
    .await;
    assert_denied(&resp, pb::DenyReason::EnvironmentMismatch);
    // IP_NOT_ALLOWED: outside the list, missing, unparsable, mapped outside.
    for ip in ["192.168.1.1", "", "not-an-ip", "::ffff:192.168.1.1", "::1"] {
        let resp = authorize(
            &mut client,
            pb::AuthorizeRequest {
                client_ip: ip.into(),
                ..authz(&secret, &[])
            },
        )
        .await;
        assert_denied(&resp, pb::DenyReason::IpNotAllowed);
        assert_eq!(resp.message, "IP address not allowed");
    }
    // KEY_DISABLED, then KEY_REVOKED (checked before anything else about the request).
    admin
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_denied(
        &authorize(&mut client, authz(&secret, &["nope:nope"])).await,
        pb::DenyReason::KeyDisabled,
    );
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
            reason: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_denied(
        &authorize(&mut client, authz(&secret, &["nope:nope"])).await,
        pb::DenyReason::KeyRevoked,
    );

    // KEY_EXPIRED.
    let short = pb::CreateKeyRequest {
        expiry: Some(pb::create_key_request::Expiry::Ttl(prost_types::Duration {
            seconds: 0,
            nanos: 200_000_000,
        })),
        ..new_key("short", &[])
    };
    let (_, short_secret) = create(&mut admin, short).await;
    assert_allowed(&authorize(&mut client, authz(&short_secret, &[])).await);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_denied(
        &authorize(&mut client, authz(&short_secret, &[])).await,
        pb::DenyReason::KeyExpired,
    );
}

async fn malformed_requests_are_invalid_argument(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (_, secret) = create(&mut admin, new_key("svc", &["dns:read"])).await;
    let mut client = server.client().await;
    assert_invalid_field(
        client
            .authz
            .authorize(pb::AuthorizeRequest {
                environment: String::new(),
                ..authz(&secret, &[])
            })
            .await,
        "environment",
    );
    assert_invalid_field(
        client
            .authz
            .authorize(pb::AuthorizeRequest {
                environment: "staging".into(),
                ..authz(&secret, &[])
            })
            .await,
        "environment",
    );
    assert_invalid_field(
        client
            .authz
            .authorize(authz(&secret, &["dns:read", "BAD SCOPE"]))
            .await,
        "required_scopes[1]",
    );
    assert_invalid_field(
        client.authz.authorize(authz(&secret, &[""])).await,
        "required_scopes[0]",
    );
    let huge = pb::AuthorizeRequest {
        key: "k".repeat(1024 * 1024),
        ..authz(&secret, &[])
    };
    let status = client.authz.authorize(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    // The server is unharmed.
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
}

async fn rate_limit_figures_and_denial(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let limited = pb::CreateKeyRequest {
        rate_limit_per_hour: Some(2),
        ..new_key("slow", &[])
    };
    let (key, secret) = create(&mut admin, limited).await;
    assert_eq!(key.rate_limit_per_hour, Some(2));
    let mut client = server.client().await;
    let first = authorize(&mut client, authz(&secret, &[])).await;
    assert_allowed(&first);
    let rate = first.rate_limit.unwrap();
    assert_eq!((rate.limit, rate.remaining), (2, 1));
    assert_eq!(rate.retry_after.unwrap_or_default().seconds, 0);
    let second = authorize(&mut client, authz(&secret, &[])).await;
    assert_allowed(&second);
    assert_eq!(second.rate_limit.unwrap().remaining, 0);
    let third = authorize(&mut client, authz(&secret, &[])).await;
    assert_denied(&third, pb::DenyReason::RateLimited);
    assert_eq!(third.message, "Rate limit exceeded");
    let rate = third.rate_limit.expect("figures on RATE_LIMITED");
    assert_eq!((rate.limit, rate.remaining), (2, 0));
    let retry = rate.retry_after.unwrap();
    // One request comes back every 30 minutes.
    assert!(retry.seconds > 1700 && retry.seconds <= 1800, "{retry:?}");
    let reset = rate.reset_at.unwrap();
    assert!(reset.seconds > chrono::Utc::now().timestamp());
    // A rotation does not hand out a fresh allowance.
    let rotated = admin
        .keys
        .rotate_key(pb::RotateKeyRequest {
            key_id: key.key_id.clone(),
            grace_period: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_denied(
        &authorize(&mut client, authz(&rotated.secret, &[])).await,
        pb::DenyReason::RateLimited,
    );
}

async fn warm_path_makes_no_queries_and_unknown_keys_are_cached(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (_, secret) = create(&mut admin, new_key("svc", &["dns:read"])).await;
    let mut client = server.client().await;
    let queries = || server.authorizer.metrics().key_loads.get();

    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    let warm = queries();
    for _ in 0..50 {
        assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    }
    assert_eq!(queries(), warm, "the warm path queried storage");

    // A flood of one made-up (well-formed) key costs one query.
    let stranger = keygate_domain::keyformat::KeyFormat::default()
        .generate("live")
        .secret;
    for _ in 0..20 {
        assert_denied(
            &authorize(&mut client, authz(&stranger, &[])).await,
            pb::DenyReason::KeyInvalid,
        );
    }
    assert_eq!(queries(), warm + 1);
    // Malformed keys never reach the cache or storage.
    for _ in 0..20 {
        assert_denied(
            &authorize(&mut client, authz("kg_live_garbage", &[])).await,
            pb::DenyReason::KeyInvalid,
        );
    }
    assert_eq!(queries(), warm + 1);
}

async fn restart_keeps_keys_and_usage(db: TestDatabase) {
    let config = test_config(&db);
    let server = TestServer::start(config.clone()).await;
    let admin_key = server.admin_key.clone();
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("durable", &["dns:read"])).await;
    let (revoked, revoked_secret) = create(&mut admin, new_key("gone", &["dns:read"])).await;
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: revoked.key_id.clone(),
            reason: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut client = server.client().await;
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    // Stop right away: the graceful stop flushes usage.
    server.stop().await;

    let server = TestServer::restart(config, admin_key).await;
    let mut admin = server.admin().await;
    let mut client = server.client().await;
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    assert_denied(
        &authorize(&mut client, authz(&revoked_secret, &[])).await,
        pb::DenyReason::KeyRevoked,
    );
    let got = get_key(&mut admin, &key.key_id).await;
    assert_eq!(got.name, "durable");
    assert!(
        got.last_used_at.is_some(),
        "last_used_at lost across restart"
    );
    assert!(got.credentials[0].last_used_at.is_some());
    server.stop().await;
}
