//! End-to-end tests of KeyManagementService: every RPC's happy path and its
//! failure paths, on SQLite and PostgreSQL.

mod common;

use common::*;
use keygate::v1 as pb;
use keygate_persistence::testing::TestDatabase;
use tonic::Code;

on_both_backends!(
    create_returns_the_secret_once_and_never_again,
    create_rejects_bad_input_naming_the_field,
    management_calls_need_a_valid_key,
    rights_are_enforced,
    other_owners_keys_are_invisible,
    get_and_ids_fail_cleanly,
    list_pages_filters_and_rejects_tampered_tokens,
    rotate_with_and_without_grace,
    revoke_is_permanent_and_immediate,
    disable_enable_and_expiry,
    list_finds_unused_and_expiring_keys,
);

async fn create_returns_the_secret_once_and_never_again(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("billing", &["dns:read"])).await;

    assert!(secret.starts_with("kg_live_"), "{secret}");
    assert_eq!(secret.len(), "kg_live_".len() + 38);
    assert_eq!(key.prefix, "kg_live_");
    assert_eq!(key.hint, &secret[secret.len() - 4..]);
    assert_eq!(key.status(), pb::KeyStatus::Active);
    assert_eq!(key.owner_id, "acme");
    assert_eq!(key.scopes, vec!["dns:read"]);
    assert_eq!(key.credentials.len(), 1);
    assert!(key.created_at.is_some() && key.expires_at.is_none());

    let got = get_key(&mut admin, &key.key_id).await;
    assert!(!format!("{got:?}").contains(&secret));
    let listed = admin
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.keys.iter().any(|k| k.key_id == key.key_id));
    assert!(!format!("{listed:?}").contains(&secret));

    // The stored form is not the key: neither the secret nor its random body
    // appears anywhere in the SQLite file.
    server.stop().await;
    if let Some(path) = db
        .url
        .strip_prefix("sqlite://")
        .and_then(|p| p.split('?').next())
    {
        let mut bytes = std::fs::read(path).unwrap();
        for suffix in ["-wal", "-shm"] {
            bytes.extend(std::fs::read(format!("{path}{suffix}")).unwrap_or_default());
        }
        let body = &secret["kg_live_".len()..];
        let haystack = String::from_utf8_lossy(&bytes);
        assert!(
            !haystack.contains(body),
            "secret body found in the database file"
        );
        assert!(
            !haystack.contains(&body[8..]),
            "secret remainder found in the database file"
        );
    }
}

async fn create_rejects_bad_input_naming_the_field(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let cases: Vec<(&str, pb::CreateKeyRequest)> = vec![
        (
            "name",
            pb::CreateKeyRequest {
                name: String::new(),
                ..new_key("x", &[])
            },
        ),
        (
            "name",
            pb::CreateKeyRequest {
                name: "n".repeat(201),
                ..new_key("x", &[])
            },
        ),
        (
            "owner_id",
            pb::CreateKeyRequest {
                owner_id: "  ".into(),
                ..new_key("x", &[])
            },
        ),
        (
            "environment",
            pb::CreateKeyRequest {
                environment: "staging".into(),
                ..new_key("x", &[])
            },
        ),
        (
            "ip_allowlist[0]",
            pb::CreateKeyRequest {
                ip_allowlist: vec!["10.0.0.0/33".into()],
                ..new_key("x", &[])
            },
        ),
        ("scopes[1]", new_key("x", &["dns:read", ""])),
        ("scopes[0]", new_key("x", &["DNS READ"])),
        (
            "rate_limit_per_hour",
            pb::CreateKeyRequest {
                rate_limit_per_hour: Some(0),
                ..new_key("x", &[])
            },
        ),
        (
            "expires_at",
            pb::CreateKeyRequest {
                expiry: Some(pb::create_key_request::Expiry::ExpiresAt(
                    prost_types::Timestamp {
                        seconds: 1_000,
                        nanos: 0,
                    },
                )),
                ..new_key("x", &[])
            },
        ),
        (
            "ttl",
            pb::CreateKeyRequest {
                expiry: Some(pb::create_key_request::Expiry::Ttl(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                })),
                ..new_key("x", &[])
            },
        ),
    ];
    for (field, request) in cases {
        assert_invalid_field(admin.keys.create_key(request).await, field);
    }
    let many: Vec<String> = (0..101).map(|i| format!("svc{i}:read")).collect();
    let request = pb::CreateKeyRequest {
        scopes: many,
        ..new_key("x", &[])
    };
    assert_invalid_field(admin.keys.create_key(request).await, "scopes");
    let many: Vec<String> = (0..101).map(|i| format!("10.0.{i}.0/24")).collect();
    let request = pb::CreateKeyRequest {
        ip_allowlist: many,
        ..new_key("x", &[])
    };
    assert_invalid_field(admin.keys.create_key(request).await, "ip_allowlist");

    // Nothing was created by the rejected requests: only the bootstrap key.
    let listed = admin
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 1, "{listed:?}");

    // A request over the message size limit is refused and harms nothing.
    let huge = pb::CreateKeyRequest {
        name: "n".repeat(1024 * 1024),
        ..new_key("x", &[])
    };
    let status = admin.keys.create_key(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    create(&mut admin, new_key("after the big one", &[])).await;
}

async fn management_calls_need_a_valid_key(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut anonymous = server.client().await;
    assert_status(
        anonymous
            .keys
            .get_key(pb::GetKeyRequest { key_id: "x".into() })
            .await,
        Code::Unauthenticated,
        "MANAGEMENT_KEY_MISSING",
    );
    let mut garbage = server.client_with("not-a-key").await;
    assert_status(
        garbage.keys.list_keys(pb::ListKeysRequest::default()).await,
        Code::Unauthenticated,
        "MANAGEMENT_KEY_INVALID",
    );

    // A revoked or disabled management key stops working at once.
    let mut admin = server.admin().await;
    let (manager, manager_secret) = create(&mut admin, new_key("manager", &["keys:write"])).await;
    let mut as_manager = server.client_with(&manager_secret).await;
    as_manager
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap();
    admin
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: manager.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_status(
        as_manager
            .keys
            .list_keys(pb::ListKeysRequest::default())
            .await,
        Code::Unauthenticated,
        "MANAGEMENT_KEY_INVALID",
    );
    admin
        .keys
        .enable_key(pb::EnableKeyRequest {
            key_id: manager.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    as_manager
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap();
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: manager.key_id.clone(),
            reason: "left".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_status(
        as_manager
            .keys
            .list_keys(pb::ListKeysRequest::default())
            .await,
        Code::Unauthenticated,
        "MANAGEMENT_KEY_INVALID",
    );
}

async fn rights_are_enforced(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (_, reader) = create(&mut admin, new_key("reader", &["keys:read"])).await;
    let (_, writer) = create(&mut admin, new_key("writer", &["keys:write", "dns:*"])).await;
    let (plain, plain_secret) = create(&mut admin, new_key("plain", &["dns:read"])).await;

    // A key without management scopes can do nothing.
    let mut as_plain = server.client_with(&plain_secret).await;
    assert_status(
        as_plain
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: plain.key_id.clone(),
            })
            .await,
        Code::PermissionDenied,
        "MISSING_RIGHT",
    );
    // keys:read reads but does not write.
    let mut as_reader = server.client_with(&reader).await;
    get_key(&mut as_reader, &plain.key_id).await;
    assert_status(
        as_reader.keys.create_key(new_key("x", &[])).await,
        Code::PermissionDenied,
        "MISSING_RIGHT",
    );
    assert_status(
        as_reader
            .keys
            .revoke_key(pb::RevokeKeyRequest {
                key_id: plain.key_id.clone(),
                reason: String::new(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "MISSING_RIGHT",
    );
    // keys:write creates within its own scopes, owner and environment only.
    let mut as_writer = server.client_with(&writer).await;
    create(&mut as_writer, new_key("child", &["dns:read", "dns:*"])).await;
    assert_status(
        as_writer
            .keys
            .create_key(new_key("x", &["billing:read"]))
            .await,
        Code::PermissionDenied,
        "SCOPE_ESCALATION",
    );
    assert_status(
        as_writer
            .keys
            .create_key(new_key("x", &["keys:admin"]))
            .await,
        Code::PermissionDenied,
        "SCOPE_ESCALATION",
    );
    let other_owner = pb::CreateKeyRequest {
        owner_id: "globex".into(),
        ..new_key("x", &[])
    };
    assert_status(
        as_writer.keys.create_key(other_owner).await,
        Code::PermissionDenied,
        "OUT_OF_BOUNDS",
    );
    let other_env = pb::CreateKeyRequest {
        environment: "test".into(),
        ..new_key("x", &[])
    };
    assert_status(
        as_writer.keys.create_key(other_env).await,
        Code::PermissionDenied,
        "OUT_OF_BOUNDS",
    );
    // It cannot rotate (take over) a key with scopes beyond its own.
    let (wide, _) = create(&mut admin, new_key("wide", &["billing:write"])).await;
    assert_status(
        as_writer
            .keys
            .rotate_key(pb::RotateKeyRequest {
                key_id: wide.key_id.clone(),
                grace_period: None,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "SCOPE_ESCALATION",
    );
    // Listing another owner is refused.
    let other = pb::ListKeysRequest {
        owner_id: "globex".into(),
        ..Default::default()
    };
    assert_status(
        as_reader.keys.list_keys(other).await,
        Code::PermissionDenied,
        "OUT_OF_BOUNDS",
    );
}

async fn other_owners_keys_are_invisible(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let globex = pb::CreateKeyRequest {
        owner_id: "globex".into(),
        ..new_key("theirs", &["dns:read"])
    };
    let (theirs, _) = create(&mut admin, globex).await;
    let test_env = pb::CreateKeyRequest {
        environment: "test".into(),
        ..new_key("test key", &["dns:read"])
    };
    let (test_key, _) = create(&mut admin, test_env).await;
    let (_, manager) = create(&mut admin, new_key("manager", &["keys:write", "dns:read"])).await;
    let mut as_manager = server.client_with(&manager).await;

    for key_id in [&theirs.key_id, &test_key.key_id] {
        assert_status(
            as_manager
                .keys
                .get_key(pb::GetKeyRequest {
                    key_id: key_id.clone(),
                })
                .await,
            Code::NotFound,
            "KEY_NOT_FOUND",
        );
        assert_status(
            as_manager
                .keys
                .revoke_key(pb::RevokeKeyRequest {
                    key_id: key_id.clone(),
                    reason: String::new(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "KEY_NOT_FOUND",
        );
        assert_status(
            as_manager
                .keys
                .disable_key(pb::DisableKeyRequest {
                    key_id: key_id.clone(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
            "KEY_NOT_FOUND",
        );
    }
    // Its list shows only acme/live keys.
    let listed = as_manager
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.keys.is_empty());
    assert!(
        listed
            .keys
            .iter()
            .all(|k| k.owner_id == "acme" && k.environment == "live"),
        "{listed:?}"
    );
    // The admin sees everything.
    let all = admin
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.keys.len(), 4);
}

async fn get_and_ids_fail_cleanly(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    assert_status(
        admin
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: "0190b5a2-0000-7000-8000-000000000000".into(),
            })
            .await,
        Code::NotFound,
        "KEY_NOT_FOUND",
    );
    assert_invalid_field(
        admin
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: String::new(),
            })
            .await,
        "key_id",
    );
    assert_invalid_field(
        admin
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: "'; drop table api_keys; --".into(),
            })
            .await,
        "key_id",
    );
    assert_invalid_field(
        admin
            .keys
            .rotate_key(pb::RotateKeyRequest {
                key_id: String::new(),
                grace_period: None,
                ..Default::default()
            })
            .await,
        "key_id",
    );
    assert_status(
        admin
            .keys
            .update_key_expiry(pb::UpdateKeyExpiryRequest {
                key_id: "0190b5a2-0000-7000-8000-000000000000".into(),
                expires_at: None,
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "KEY_NOT_FOUND",
    );
    assert_status(
        admin
            .keys
            .enable_key(pb::EnableKeyRequest {
                key_id: "0190b5a2-0000-7000-8000-000000000000".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "KEY_NOT_FOUND",
    );
}

async fn list_pages_filters_and_rejects_tampered_tokens(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let mut created = Vec::new();
    for i in 0..7 {
        let (key, _) = create(&mut admin, new_key(&format!("k{i}"), &["dns:read"])).await;
        created.push(key.key_id);
    }
    let (disabled, _) = create(&mut admin, new_key("off", &[])).await;
    admin
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: disabled.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    // Pages of 3, with a key inserted between pages: no duplicates, no skips.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = admin
            .keys
            .list_keys(pb::ListKeysRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 3);
        seen.extend(page.keys.iter().map(|k| k.key_id.clone()));
        pages += 1;
        if pages == 1 {
            create(&mut admin, new_key("late", &[])).await;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "duplicates across pages");
    assert_eq!(seen.len(), 10, "bootstrap + 7 + disabled + late: {seen:?}");
    for id in &created {
        assert!(seen.contains(id));
    }

    // Filters.
    let disabled_only = pb::ListKeysRequest {
        status: pb::KeyStatus::Disabled.into(),
        ..Default::default()
    };
    let page = admin
        .keys
        .list_keys(disabled_only)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.keys.iter().map(|k| &k.key_id).collect::<Vec<_>>(),
        vec![&disabled.key_id]
    );
    let nobody = pb::ListKeysRequest {
        owner_id: "nobody".into(),
        ..Default::default()
    };
    assert!(
        admin
            .keys
            .list_keys(nobody)
            .await
            .unwrap()
            .into_inner()
            .keys
            .is_empty()
    );
    let test_env = pb::ListKeysRequest {
        environment: "test".into(),
        ..Default::default()
    };
    assert!(
        admin
            .keys
            .list_keys(test_env)
            .await
            .unwrap()
            .into_inner()
            .keys
            .is_empty()
    );

    // Bad tokens, sizes and statuses.
    let first = admin
        .keys
        .list_keys(pb::ListKeysRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut tampered = first.next_page_token.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_invalid_field(
        admin
            .keys
            .list_keys(pb::ListKeysRequest {
                page_token: tampered,
                ..Default::default()
            })
            .await,
        "page_token",
    );
    assert_invalid_field(
        admin
            .keys
            .list_keys(pb::ListKeysRequest {
                page_token: "!!not a token!!".into(),
                ..Default::default()
            })
            .await,
        "page_token",
    );
    let other_filter = pb::ListKeysRequest {
        page_token: first.next_page_token.clone(),
        owner_id: "acme".into(),
        ..Default::default()
    };
    assert_invalid_field(admin.keys.list_keys(other_filter).await, "page_token");
    assert_invalid_field(
        admin
            .keys
            .list_keys(pb::ListKeysRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
        "page_size",
    );
    assert_invalid_field(
        admin
            .keys
            .list_keys(pb::ListKeysRequest {
                status: 99,
                ..Default::default()
            })
            .await,
        "status",
    );
    // Oversized pages are served at the maximum, not refused.
    let big = admin
        .keys
        .list_keys(pb::ListKeysRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.keys.len(), 10);
    assert!(big.next_page_token.is_empty());
}

async fn rotate_with_and_without_grace(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, old) = create(&mut admin, new_key("rotating", &["dns:read"])).await;
    let mut client = server.client().await;
    assert_allowed(&authorize(&mut client, authz(&old, &["dns:read"])).await);

    // With a grace period both secrets work.
    let grace = prost_types::Duration {
        seconds: 3600,
        nanos: 0,
    };
    let rotated = admin
        .keys
        .rotate_key(pb::RotateKeyRequest {
            key_id: key.key_id.clone(),
            grace_period: Some(grace),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let new = rotated.secret.clone();
    assert_ne!(new, old);
    let rotated_key = rotated.key.unwrap();
    assert_eq!(rotated_key.key_id, key.key_id);
    assert_eq!(rotated_key.scopes, key.scopes);
    assert_eq!(rotated_key.hint, &new[new.len() - 4..]);
    assert_eq!(rotated_key.credentials.len(), 2);
    let previous_end = rotated.previous_secret_expires_at.unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(
        (previous_end.seconds - (now + 3600)).abs() < 60,
        "{previous_end:?}"
    );
    assert_allowed(&authorize(&mut client, authz(&old, &["dns:read"])).await);
    assert_allowed(&authorize(&mut client, authz(&new, &["dns:read"])).await);

    // Without one the previous secret stops at once.
    let again = admin
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
        &authorize(&mut client, authz(&new, &["dns:read"])).await,
        pb::DenyReason::KeyExpired,
    );
    assert_denied(
        &authorize(&mut client, authz(&old, &["dns:read"])).await,
        pb::DenyReason::KeyExpired,
    );
    assert_allowed(&authorize(&mut client, authz(&again.secret, &["dns:read"])).await);

    // Failure paths.
    assert_invalid_field(
        admin
            .keys
            .rotate_key(pb::RotateKeyRequest {
                key_id: key.key_id.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await,
        "grace_period",
    );
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
            reason: "done".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_status(
        admin
            .keys
            .rotate_key(pb::RotateKeyRequest {
                key_id: key.key_id.clone(),
                grace_period: None,
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );
}

async fn revoke_is_permanent_and_immediate(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("doomed", &["dns:read"])).await;
    let mut client = server.client().await;
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);

    let revoked = admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
            reason: "leaked in a log".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(revoked.status(), pb::KeyStatus::Revoked);
    assert!(revoked.revoked_at.is_some());
    assert_eq!(revoked.revoked_reason, "leaked in a log");
    // The very next Authorize denies (the key was cached warm before).
    assert_denied(
        &authorize(&mut client, authz(&secret, &["dns:read"])).await,
        pb::DenyReason::KeyRevoked,
    );

    // Revoking again is harmless and keeps the first reason.
    let again = admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
            reason: "again".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(again.revoked_reason, "leaked in a log");
    // Nothing brings it back; the record stays readable.
    assert_status(
        admin
            .keys
            .enable_key(pb::EnableKeyRequest {
                key_id: key.key_id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );
    assert_status(
        admin
            .keys
            .disable_key(pb::DisableKeyRequest {
                key_id: key.key_id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );
    assert_status(
        admin
            .keys
            .update_key_expiry(pb::UpdateKeyExpiryRequest {
                key_id: key.key_id.clone(),
                expires_at: None,
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );
    let got = get_key(&mut admin, &key.key_id).await;
    assert_eq!(got.status(), pb::KeyStatus::Revoked);
    assert_invalid_field(
        admin
            .keys
            .revoke_key(pb::RevokeKeyRequest {
                key_id: key.key_id.clone(),
                reason: "r".repeat(501),
                ..Default::default()
            })
            .await,
        "reason",
    );
}

async fn disable_enable_and_expiry(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("switch", &["dns:read"])).await;
    let mut client = server.client().await;

    let off = admin
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        off.into_inner().key.unwrap().status(),
        pb::KeyStatus::Disabled
    );
    assert_denied(
        &authorize(&mut client, authz(&secret, &["dns:read"])).await,
        pb::DenyReason::KeyDisabled,
    );
    let on = admin
        .keys
        .enable_key(pb::EnableKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(on.into_inner().key.unwrap().status(), pb::KeyStatus::Active);
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);

    // Expiry: in the past is refused; soon makes the key expire; clearing revives it.
    let past = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() - 10,
        nanos: 0,
    };
    assert_invalid_field(
        admin
            .keys
            .update_key_expiry(pb::UpdateKeyExpiryRequest {
                key_id: key.key_id.clone(),
                expires_at: Some(past),
                ..Default::default()
            })
            .await,
        "expires_at",
    );
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    let updated = admin
        .keys
        .update_key_expiry(pb::UpdateKeyExpiryRequest {
            key_id: key.key_id.clone(),
            expires_at: Some(timestamp(soon)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert!(updated.expires_at.is_some());
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_denied(
        &authorize(&mut client, authz(&secret, &["dns:read"])).await,
        pb::DenyReason::KeyExpired,
    );
    let got = get_key(&mut admin, &key.key_id).await;
    assert_eq!(got.status(), pb::KeyStatus::Expired);
    let expired_only = pb::ListKeysRequest {
        status: pb::KeyStatus::Expired.into(),
        ..Default::default()
    };
    let listed = admin
        .keys
        .list_keys(expired_only)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 1);
    admin
        .keys
        .update_key_expiry(pb::UpdateKeyExpiryRequest {
            key_id: key.key_id.clone(),
            expires_at: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);

    // A TTL at creation sets the expiry relative to now.
    let ttl = pb::CreateKeyRequest {
        expiry: Some(pb::create_key_request::Expiry::Ttl(prost_types::Duration {
            seconds: 30 * 86_400,
            nanos: 0,
        })),
        ..new_key("thirty days", &[])
    };
    let (with_ttl, _) = create(&mut admin, ttl).await;
    let expires = with_ttl.expires_at.unwrap().seconds;
    let expected = chrono::Utc::now().timestamp() + 30 * 86_400;
    assert!((expires - expected).abs() < 60);
}

/// ListKeys `last_used_before` (orphaned keys; never used counts as before
/// any time) and `expires_before` (expiring soon): with real usage written
/// by the flusher, combined with paging, and their failure paths.
async fn list_finds_unused_and_expiring_keys(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (used, secret) = create(&mut admin, new_key("used", &["dns:read"])).await;
    let (unused, _) = create(&mut admin, new_key("unused", &["dns:read"])).await;
    let (expiring, _) = create(
        &mut admin,
        pb::CreateKeyRequest {
            expiry: Some(pb::create_key_request::Expiry::Ttl(prost_types::Duration {
                seconds: 3 * 86_400,
                nanos: 0,
            })),
            ..new_key("expiring", &["dns:read"])
        },
    )
    .await;
    assert_allowed(&authorize(&mut admin, authz(&secret, &["dns:read"])).await);
    // No wait for the usage flush: ListKeys counts this replica's unwritten
    // uses too. (The storage side is tested in the persistence suite.)
    let now = chrono::Utc::now();
    let list = |req: pb::ListKeysRequest| {
        let mut admin = admin.clone();
        async move { admin.keys.list_keys(req).await }
    };
    let names = |resp: pb::ListKeysResponse| -> Vec<String> {
        resp.keys.into_iter().map(|k| k.name).collect()
    };

    // Unused for the last minute: everything but the key just used and the
    // admin key authenticating these calls.
    let unused_now = names(
        list(pb::ListKeysRequest {
            last_used_before: Some(timestamp(now - chrono::Duration::minutes(1))),
            ..Default::default()
        })
        .await
        .expect("list unused")
        .into_inner(),
    );
    assert_eq!(unused_now, vec![unused.name.clone(), expiring.name.clone()]);
    assert!(!unused_now.contains(&used.name));
    // Expiring within a week: only the key with a 3-day lifetime.
    let soon = names(
        list(pb::ListKeysRequest {
            expires_before: Some(timestamp(now + chrono::Duration::days(7))),
            ..Default::default()
        })
        .await
        .expect("list expiring")
        .into_inner(),
    );
    assert_eq!(soon, vec![expiring.name.clone()]);
    assert!(
        list(pb::ListKeysRequest {
            expires_before: Some(timestamp(now + chrono::Duration::days(1))),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .keys
        .is_empty()
    );

    // Paging keeps the filter; a token is bound to it.
    let unused_filter = Some(timestamp(now - chrono::Duration::minutes(1)));
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(pb::ListKeysRequest {
            last_used_before: unused_filter,
            page_size: 1,
            page_token: token.clone(),
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
        if !page.next_page_token.is_empty() && seen.is_empty() {
            // The same token with another bound is refused.
            assert_invalid_field(
                list(pb::ListKeysRequest {
                    last_used_before: Some(timestamp(now)),
                    page_size: 1,
                    page_token: page.next_page_token.clone(),
                    ..Default::default()
                })
                .await,
                "page_token",
            );
        }
        seen.extend(names(pb::ListKeysResponse {
            keys: page.keys,
            next_page_token: String::new(),
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, unused_now, "paging one at a time saw the same keys");

    // Timestamps outside google.protobuf.Timestamp's range, or with bad nanos.
    for (field, bad) in [
        (
            "last_used_before",
            prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
        ),
        (
            "expires_before",
            prost_types::Timestamp {
                seconds: -62_135_596_801,
                nanos: 0,
            },
        ),
        (
            "expires_before",
            prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            },
        ),
    ] {
        let mut req = pb::ListKeysRequest::default();
        if field == "last_used_before" {
            req.last_used_before = Some(bad);
        } else {
            req.expires_before = Some(bad);
        }
        assert_invalid_field(list(req).await, field);
    }
    server.stop().await;
}
