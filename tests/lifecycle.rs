//! The whole key lifecycle end to end, on both backends: UpdateKey (and its
//! failure paths: masks, etags, revoked keys, scope widening, metadata
//! limits), metadata returned by Authorize, DeleteKey / UndeleteKey /
//! purge, and the audit log (one event per change, newest first, paged,
//! filtered, bounded by the caller's rights, never a secret).

mod common;

use std::time::Duration;

use common::*;
use keygate::{Client, v1 as pb};
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;
use tonic::Code;

on_both_backends!(
    update_key_changes_what_the_mask_names,
    update_key_failure_paths,
    delete_and_undelete,
    deleted_keys_are_purged_after_their_time,
    every_change_is_audited_once,
    audit_rights_follow_owner_and_environment,
    racing_deletes_never_bring_a_revoked_key_back,
);

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn metadata(entries: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn update(
    client: &mut Client,
    key: pb::ApiKey,
    paths: &[&str],
    etag: &str,
) -> Result<pb::ApiKey, tonic::Status> {
    client
        .keys
        .update_key(pb::UpdateKeyRequest {
            key: Some(key),
            update_mask: mask(paths),
            etag: etag.to_owned(),
        })
        .await
        .map(|r| r.into_inner().key.expect("key"))
}

async fn delete(client: &mut Client, key_id: &str) -> Result<pb::ApiKey, tonic::Status> {
    client
        .keys
        .delete_key(pb::DeleteKeyRequest {
            key_id: key_id.to_owned(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().key.expect("key"))
}

async fn undelete(client: &mut Client, key_id: &str) -> Result<pb::ApiKey, tonic::Status> {
    client
        .keys
        .undelete_key(pb::UndeleteKeyRequest {
            key_id: key_id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().key.expect("key"))
}

async fn events(client: &mut Client, req: pb::ListAuditEventsRequest) -> Vec<pb::AuditEvent> {
    client
        .keys
        .list_audit_events(req)
        .await
        .expect("ListAuditEvents")
        .into_inner()
        .events
}

async fn methods_of(client: &mut Client, key_id: &str) -> Vec<String> {
    events(
        client,
        pb::ListAuditEventsRequest {
            key_id: key_id.to_owned(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|e| e.method)
    .collect()
}

async fn listed_ids(client: &mut Client, req: pb::ListKeysRequest) -> Vec<String> {
    client
        .keys
        .list_keys(req)
        .await
        .expect("ListKeys")
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.key_id)
        .collect()
}

async fn update_key_changes_what_the_mask_names(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(
        &mut admin,
        pb::CreateKeyRequest {
            ip_allowlist: vec!["10.0.0.0/8".to_owned()],
            metadata: metadata(&[("plan", "free"), ("tenant", "t-1")]),
            ..new_key("svc", &["dns:read"])
        },
    )
    .await;
    assert_eq!(
        key.metadata,
        metadata(&[("plan", "free"), ("tenant", "t-1")])
    );
    let mut client = server.client().await;
    let allowed = authorize(&mut client, authz(&secret, &["dns:read"])).await;
    assert_allowed(&allowed);
    assert_eq!(
        allowed.metadata, key.metadata,
        "Authorize returns the metadata"
    );

    // Everything at once; the allowlist is not in the mask and stays.
    let soon = chrono::Utc::now() + chrono::Duration::days(7);
    let changed = update(
        &mut admin,
        pb::ApiKey {
            key_id: key.key_id.clone(),
            name: "renamed".to_owned(),
            scopes: vec!["dns:write".to_owned()],
            ip_allowlist: vec!["192.168.0.0/16".to_owned()],
            rate_limit_per_hour: Some(5),
            metadata: metadata(&[("plan", "pro")]),
            expires_at: Some(timestamp(soon)),
            ..Default::default()
        },
        &[
            "name",
            "scopes",
            "rate_limit_per_hour",
            "metadata",
            "expires_at",
        ],
        &key.etag,
    )
    .await
    .expect("UpdateKey");
    assert_eq!(changed.name, "renamed");
    assert_eq!(changed.scopes, ["dns:write"]);
    assert_eq!(changed.ip_allowlist, ["10.0.0.0/8"]);
    assert_eq!(changed.rate_limit_per_hour, Some(5));
    assert_eq!(changed.metadata, metadata(&[("plan", "pro")]));
    assert_eq!(
        changed.expires_at.as_ref().map(|t| t.seconds),
        Some(soon.timestamp())
    );
    assert_ne!(changed.etag, key.etag);
    assert_eq!(get_key(&mut admin, &key.key_id).await, changed);

    // This replica decides on the new state at once.
    assert_denied(
        &authorize(&mut client, authz(&secret, &["dns:read"])).await,
        pb::DenyReason::ScopeMissing,
    );
    let now_allowed = authorize(&mut client, authz(&secret, &["dns:write"])).await;
    assert_allowed(&now_allowed);
    assert_eq!(now_allowed.metadata, metadata(&[("plan", "pro")]));
    assert_eq!(now_allowed.rate_limit.expect("rate").limit, 5);

    // Named but unset: cleared (rate limit back to the default, no expiry,
    // no metadata).
    let cleared = update(
        &mut admin,
        pb::ApiKey {
            key_id: key.key_id.clone(),
            ..Default::default()
        },
        &["rate_limit_per_hour", "expires_at", "metadata"],
        "",
    )
    .await
    .expect("clear");
    assert_eq!(
        (
            cleared.rate_limit_per_hour,
            cleared.expires_at,
            cleared.metadata.len()
        ),
        (None, None, 0)
    );
    let plain = authorize(&mut client, authz(&secret, &["dns:write"])).await;
    assert!(plain.metadata.is_empty());
    assert_eq!(plain.rate_limit.expect("rate").limit, 1000);
    server.stop().await;
}

async fn update_key_failure_paths(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, _) = create(&mut admin, new_key("svc", &["dns:read"])).await;
    let with_id = || pb::ApiKey {
        key_id: key.key_id.clone(),
        name: "n".to_owned(),
        ..Default::default()
    };

    assert_invalid_field(update(&mut admin, with_id(), &[], "").await, "update_mask");
    assert_invalid_field(
        update(&mut admin, with_id(), &["name", "owner_id"], "").await,
        "update_mask.paths[1]",
    );
    assert_invalid_field(
        update(&mut admin, with_id(), &["status"], "").await,
        "update_mask.paths[0]",
    );
    let no_key = admin
        .keys
        .update_key(pb::UpdateKeyRequest {
            key: None,
            update_mask: mask(&["name"]),
            etag: String::new(),
        })
        .await;
    assert_invalid_field(no_key, "key");
    assert_invalid_field(
        update(
            &mut admin,
            pb::ApiKey {
                name: "x".to_owned(),
                ..Default::default()
            },
            &["name"],
            "",
        )
        .await,
        "key.key_id",
    );
    assert_invalid_field(
        update(
            &mut admin,
            pb::ApiKey {
                scopes: vec!["Not A Scope".to_owned()],
                ..with_id()
            },
            &["scopes"],
            "",
        )
        .await,
        "key.scopes[0]",
    );
    let too_much: std::collections::HashMap<String, String> =
        (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    assert_invalid_field(
        update(
            &mut admin,
            pb::ApiKey {
                metadata: too_much,
                ..with_id()
            },
            &["metadata"],
            "",
        )
        .await,
        "key.metadata",
    );
    assert_invalid_field(
        update(
            &mut admin,
            pb::ApiKey {
                metadata: metadata(&[("bad key!", "v")]),
                ..with_id()
            },
            &["metadata"],
            "",
        )
        .await,
        "key.metadata[\"bad key!\"]",
    );
    assert_invalid_field(
        update(
            &mut admin,
            pb::ApiKey {
                expires_at: Some(timestamp(chrono::Utc::now() - chrono::Duration::hours(1))),
                ..with_id()
            },
            &["expires_at"],
            "",
        )
        .await,
        "key.expires_at",
    );
    assert_status(
        update(
            &mut admin,
            pb::ApiKey {
                key_id: "0190b5a2-0000-7000-8000-00000000dead".to_owned(),
                name: "x".to_owned(),
                ..Default::default()
            },
            &["name"],
            "",
        )
        .await,
        Code::NotFound,
        "KEY_NOT_FOUND",
    );

    // A stale etag changes nothing.
    update(&mut admin, with_id(), &["name"], &key.etag)
        .await
        .expect("first update");
    assert_status(
        update(
            &mut admin,
            pb::ApiKey {
                name: "lost".to_owned(),
                ..with_id()
            },
            &["name"],
            &key.etag,
        )
        .await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    assert_eq!(get_key(&mut admin, &key.key_id).await.name, "n");

    // A manager cannot widen a key beyond its own scopes.
    let (_, manager) = create(&mut admin, new_key("manager", &["keys:write", "dns:*"])).await;
    let mut manager = server.client_with(&manager).await;
    let widened = update(
        &mut manager,
        pb::ApiKey {
            scopes: vec!["dns:read".to_owned(), "billing:read".to_owned()],
            ..with_id()
        },
        &["scopes"],
        "",
    )
    .await;
    assert_status(widened, Code::PermissionDenied, "SCOPE_ESCALATION");
    let narrowed = update(
        &mut manager,
        pb::ApiKey {
            scopes: vec!["dns:write".to_owned()],
            ..with_id()
        },
        &["scopes"],
        "",
    )
    .await
    .expect("within the manager's scopes");
    assert_eq!(narrowed.scopes, ["dns:write"]);

    // A revoked key never changes again.
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    assert_status(
        update(&mut admin, with_id(), &["name"], "").await,
        Code::FailedPrecondition,
        "KEY_REVOKED",
    );
    // Unauthenticated and read-only callers are refused before anything.
    let mut anonymous = server.client().await;
    assert_eq!(
        update(&mut anonymous, with_id(), &["name"], "")
            .await
            .expect_err("no key")
            .code(),
        Code::Unauthenticated
    );
    let (_, reader) = create(&mut admin, new_key("reader", &["keys:read"])).await;
    let mut reader = server.client_with(&reader).await;
    assert_status(
        update(&mut reader, with_id(), &["name"], "").await,
        Code::PermissionDenied,
        "MISSING_RIGHT",
    );
    server.stop().await;
}

async fn delete_and_undelete(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let mut client = server.client().await;
    let (key, secret) = create(&mut admin, new_key("doomed", &["dns:read"])).await;
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    admin
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("disable");

    let started = chrono::Utc::now();
    let deleted = delete(&mut admin, &key.key_id).await.expect("DeleteKey");
    assert_eq!(deleted.status(), pb::KeyStatus::Deleted);
    let delete_time = deleted.delete_time.expect("delete_time");
    let purge_time = deleted.purge_time.expect("purge_time");
    assert!((delete_time.seconds - started.timestamp()).abs() <= 2);
    assert!((purge_time.seconds - delete_time.seconds - 30 * 86_400).abs() <= 1);

    // Gone for Authorize at once, as if it never existed.
    assert_denied(
        &authorize(&mut client, authz(&secret, &["dns:read"])).await,
        pb::DenyReason::KeyInvalid,
    );
    // Out of ListKeys unless asked for.
    assert!(
        !listed_ids(&mut admin, pb::ListKeysRequest::default())
            .await
            .contains(&key.key_id)
    );
    let shown = listed_ids(
        &mut admin,
        pb::ListKeysRequest {
            show_deleted: true,
            status: pb::KeyStatus::Deleted.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(shown, vec![key.key_id.clone()]);
    assert_invalid_field(
        admin
            .keys
            .list_keys(pb::ListKeysRequest {
                status: pb::KeyStatus::Deleted.into(),
                ..Default::default()
            })
            .await,
        "status",
    );
    // GetKey still shows it.
    assert_eq!(
        get_key(&mut admin, &key.key_id).await.status(),
        pb::KeyStatus::Deleted
    );

    // Nothing else changes a deleted key.
    let id = key.key_id.clone();
    assert_status(
        admin
            .keys
            .enable_key(pb::EnableKeyRequest {
                key_id: id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_DELETED",
    );
    assert_status(
        admin
            .keys
            .rotate_key(pb::RotateKeyRequest {
                key_id: id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_DELETED",
    );
    assert_status(
        admin
            .keys
            .revoke_key(pb::RevokeKeyRequest {
                key_id: id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "KEY_DELETED",
    );
    assert_status(
        update(
            &mut admin,
            pb::ApiKey {
                key_id: id.clone(),
                name: "x".to_owned(),
                ..Default::default()
            },
            &["name"],
            "",
        )
        .await,
        Code::FailedPrecondition,
        "KEY_DELETED",
    );
    assert_status(
        delete(&mut admin, &id).await,
        Code::FailedPrecondition,
        "KEY_DELETED",
    );

    // Undelete: back in the state it had (disabled), then enabled works.
    let restored = undelete(&mut admin, &id).await.expect("UndeleteKey");
    assert_eq!(restored.status(), pb::KeyStatus::Disabled);
    assert_eq!((restored.delete_time, restored.purge_time), (None, None));
    assert_denied(
        &authorize(&mut client, authz(&secret, &["dns:read"])).await,
        pb::DenyReason::KeyDisabled,
    );
    admin
        .keys
        .enable_key(pb::EnableKeyRequest {
            key_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("enable");
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    assert_status(
        undelete(&mut admin, &id).await,
        Code::FailedPrecondition,
        "KEY_NOT_DELETED",
    );
    assert_status(
        undelete(&mut admin, "0190b5a2-0000-7000-8000-00000000dead").await,
        Code::NotFound,
        "KEY_NOT_FOUND",
    );
    assert_invalid_field(delete(&mut admin, "not a key id").await, "key_id");

    // A stale etag deletes nothing.
    let current = get_key(&mut admin, &id).await;
    let stale = admin
        .keys
        .delete_key(pb::DeleteKeyRequest {
            key_id: id.clone(),
            etag: key.etag.clone(),
        })
        .await;
    assert_status(stale, Code::Aborted, "ETAG_MISMATCH");
    let by_etag = admin
        .keys
        .delete_key(pb::DeleteKeyRequest {
            key_id: id.clone(),
            etag: current.etag.clone(),
        })
        .await
        .expect("delete with the current etag");
    assert_eq!(
        by_etag.into_inner().key.expect("key").status(),
        pb::KeyStatus::Deleted
    );

    // A deleted management key authenticates nothing.
    let (manager, manager_secret) = create(&mut admin, new_key("mgr", &["keys:read"])).await;
    let mut as_manager = server.client_with(&manager_secret).await;
    listed_ids(&mut as_manager, pb::ListKeysRequest::default()).await;
    delete(&mut admin, &manager.key_id)
        .await
        .expect("delete manager");
    assert_eq!(
        as_manager
            .keys
            .list_keys(pb::ListKeysRequest::default())
            .await
            .expect_err("deleted manager")
            .code(),
        Code::Unauthenticated
    );
    server.stop().await;
}

async fn deleted_keys_are_purged_after_their_time(db: TestDatabase) {
    let config = Config {
        purge_after: Duration::from_millis(600),
        ..test_config(&db)
    };
    let server = TestServer::start(config).await;
    let mut admin = server.admin().await;
    let (key, _) = create(&mut admin, new_key("short-lived", &["dns:read"])).await;
    let deleted = delete(&mut admin, &key.key_id).await.expect("delete");
    let purge = deleted.purge_time.expect("purge_time");
    assert!(purge.seconds >= deleted.delete_time.expect("deleted").seconds);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Past its purge time: refused, whether or not the purge ran yet.
    let late = undelete(&mut admin, &key.key_id)
        .await
        .expect_err("too late");
    assert!(
        matches!(late.code(), Code::FailedPrecondition | Code::NotFound),
        "{late:?}"
    );
    // The background purge removes it; its history stays.
    let started = std::time::Instant::now();
    loop {
        let got = admin
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: key.key_id.clone(),
            })
            .await;
        match got {
            Err(status) if status.code() == Code::NotFound => break,
            Ok(_) => {
                assert!(started.elapsed() < Duration::from_secs(10), "never purged");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_status(
        undelete(&mut admin, &key.key_id).await,
        Code::NotFound,
        "KEY_NOT_FOUND",
    );
    assert_eq!(
        methods_of(&mut admin, &key.key_id).await,
        ["DeleteKey", "CreateKey"]
    );
    server.stop().await;
}

async fn every_change_is_audited_once(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let admin_id = get_admin_id(&mut admin, &server.admin_key).await;
    let (key, secret) = create(&mut admin, new_key("audited", &["dns:read"])).await;
    update(
        &mut admin,
        pb::ApiKey {
            key_id: key.key_id.clone(),
            scopes: vec!["dns:read".to_owned(), "dns:write".to_owned()],
            metadata: metadata(&[("plan", "pro")]),
            ..Default::default()
        },
        &["scopes", "metadata"],
        "",
    )
    .await
    .expect("update");
    let rotated = admin
        .keys
        .rotate_key(pb::RotateKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("rotate")
        .into_inner();
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
            reason: "leaked in a log".to_owned(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    // A no-op (revoking again) and a refused change write nothing.
    admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("revoke again");
    let _ = admin
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("revoked");

    let all = events(
        &mut admin,
        pb::ListAuditEventsRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        },
    )
    .await;
    let methods: Vec<&str> = all.iter().map(|e| e.method.as_str()).collect();
    assert_eq!(
        methods,
        ["RevokeKey", "RotateKey", "UpdateKey", "CreateKey"]
    );
    for event in &all {
        assert_eq!(event.actor_key_id, admin_id);
        assert_eq!(event.actor_owner_id, "acme");
        assert_eq!(
            (event.owner_id.as_str(), event.environment.as_str()),
            ("acme", "live")
        );
        assert_eq!(event.peer_address, "127.0.0.1");
        assert!(event.time.is_some());
        // Never a secret (nor any long random string of one).
        let text = format!("{event:?}");
        for s in [&secret, &rotated.secret] {
            assert!(!text.contains(s.as_str()), "secret in {text}");
            let body = s.rsplit('_').next().unwrap_or_default();
            assert!(!text.contains(&body[8..]), "secret body in {text}");
        }
    }
    let change = |event: &pb::AuditEvent, field: &str| {
        event
            .changes
            .iter()
            .find(|c| c.field == field)
            .map(|c| (c.old_value.clone(), c.new_value.clone()))
    };
    assert_eq!(
        change(&all[2], "scopes"),
        Some(("dns:read".to_owned(), "dns:read,dns:write".to_owned()))
    );
    assert_eq!(
        change(&all[2], "metadata.plan"),
        Some((String::new(), "pro".to_owned()))
    );
    assert_eq!(all[2].changes.len(), 2, "{:?}", all[2].changes);
    assert!(change(&all[1], "credentials").is_some());
    assert_eq!(
        change(&all[0], "status"),
        Some(("active".to_owned(), "revoked".to_owned()))
    );
    assert_eq!(all[0].reason, "leaked in a log");

    // Bootstrap wrote the first event of all.
    let boot = events(
        &mut admin,
        pb::ListAuditEventsRequest {
            method: "Bootstrap".to_owned(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(boot.len(), 1);
    assert_eq!(
        (boot[0].key_id.as_str(), boot[0].actor_key_id.as_str()),
        (admin_id.as_str(), "")
    );

    // Pages of 2 walk every event exactly once, newest first; a token is
    // bound to its filters and tamper-evident.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = admin
            .keys
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.events.len() <= 2);
        seen.extend(page.events.into_iter().map(|e| e.event_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen.len(),
        5,
        "bootstrap, then create, update, rotate, revoke"
    );
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    let first = admin
        .keys
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    let other_filter = admin
        .keys
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 1,
            method: "RotateKey".to_owned(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await;
    assert_invalid_field(other_filter, "page_token");
    let mut tampered = first.next_page_token.clone();
    tampered.replace_range(0..1, if tampered.starts_with('A') { "B" } else { "A" });
    assert_invalid_field(
        admin
            .keys
            .list_audit_events(pb::ListAuditEventsRequest {
                page_token: tampered,
                ..Default::default()
            })
            .await,
        "page_token",
    );
    // Filters and bad input.
    assert_eq!(
        events(
            &mut admin,
            pb::ListAuditEventsRequest {
                actor_key_id: admin_id.clone(),
                method: "RotateKey".to_owned(),
                ..Default::default()
            },
        )
        .await
        .len(),
        1
    );
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!(
        events(
            &mut admin,
            pb::ListAuditEventsRequest {
                start_time: Some(timestamp(later)),
                ..Default::default()
            },
        )
        .await
        .is_empty()
    );
    assert_invalid_field(
        admin
            .keys
            .list_audit_events(pb::ListAuditEventsRequest {
                start_time: Some(timestamp(later)),
                end_time: Some(timestamp(later - chrono::Duration::hours(2))),
                ..Default::default()
            })
            .await,
        "end_time",
    );
    assert_invalid_field(
        admin
            .keys
            .list_audit_events(pb::ListAuditEventsRequest {
                page_size: -1,
                ..Default::default()
            })
            .await,
        "page_size",
    );
    server.stop().await;
}

/// The key id of the management key `secret`.
async fn get_admin_id(admin: &mut Client, secret: &str) -> String {
    let keys = admin
        .keys
        .list_keys(pb::ListKeysRequest::default())
        .await
        .expect("list")
        .into_inner()
        .keys;
    let hint = &secret[secret.len() - 4..];
    keys.into_iter()
        .find(|k| k.hint == hint && k.scopes == ["keys:admin"])
        .expect("the admin key")
        .key_id
}

async fn audit_rights_follow_owner_and_environment(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let in_scope = |owner: &str, environment: &str, name: &str| pb::CreateKeyRequest {
        owner_id: owner.to_owned(),
        environment: environment.to_owned(),
        ..new_key(name, &["dns:read"])
    };
    let (acme_live, _) = create(&mut admin, in_scope("acme", "live", "a")).await;
    let (acme_test, _) = create(&mut admin, in_scope("acme", "test", "b")).await;
    let (beta_live, _) = create(&mut admin, in_scope("beta", "live", "c")).await;
    let (_, reader) = create(
        &mut admin,
        pb::CreateKeyRequest {
            owner_id: "beta".to_owned(),
            ..new_key("beta reader", &["keys:read"])
        },
    )
    .await;
    let mut reader = server.client_with(&reader).await;

    // A keys:read key sees its own owner and environment only.
    let seen: Vec<String> = events(&mut reader, pb::ListAuditEventsRequest::default())
        .await
        .into_iter()
        .map(|e| e.key_id)
        .collect();
    assert!(seen.contains(&beta_live.key_id), "{seen:?}");
    assert!(!seen.contains(&acme_live.key_id));
    assert!(!seen.contains(&acme_test.key_id));
    assert!(
        events(
            &mut reader,
            pb::ListAuditEventsRequest {
                key_id: acme_live.key_id.clone(),
                ..Default::default()
            },
        )
        .await
        .is_empty()
    );
    assert_status(
        reader
            .keys
            .list_audit_events(pb::ListAuditEventsRequest {
                owner_id: "acme".to_owned(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "OUT_OF_BOUNDS",
    );
    // keys:admin sees every owner; owner filter narrows.
    let acme: Vec<String> = events(
        &mut admin,
        pb::ListAuditEventsRequest {
            owner_id: "acme".to_owned(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .map(|e| e.key_id)
    .collect();
    assert!(acme.contains(&acme_live.key_id) && acme.contains(&acme_test.key_id));
    assert!(!acme.contains(&beta_live.key_id));
    // No key at all, or a key without a management right: refused.
    let mut anonymous = server.client().await;
    assert_eq!(
        anonymous
            .keys
            .list_audit_events(pb::ListAuditEventsRequest::default())
            .await
            .expect_err("anonymous")
            .code(),
        Code::Unauthenticated
    );
    let (_, plain) = create(&mut admin, new_key("plain", &["dns:read"])).await;
    let mut plain = server.client_with(&plain).await;
    assert_status(
        plain
            .keys
            .list_audit_events(pb::ListAuditEventsRequest::default())
            .await,
        Code::PermissionDenied,
        "MISSING_RIGHT",
    );
    server.stop().await;
}

/// DeleteKey, UndeleteKey and RevokeKey on one key from many tasks at once,
/// with Authorize calls racing them: whatever order they land in, a key
/// whose RevokeKey answered OK never authorizes again, even after an
/// undelete; and every change that answered OK has exactly one event.
async fn racing_deletes_never_bring_a_revoked_key_back(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let admin = server.admin().await;
    let mut revoke_ok = 0;
    let mut revoke_refused = 0;
    for round in 0..20 {
        let mut setup = admin.clone();
        let (key, secret) =
            create(&mut setup, new_key(&format!("race{round}"), &["dns:read"])).await;
        let id = key.key_id.clone();
        let (revoke, del, undel, flood) = {
            let (mut a, mut b, mut c) = (admin.clone(), admin.clone(), admin.clone());
            let mut authz_client = server.client().await;
            let (i1, i2, i3) = (id.clone(), id.clone(), id.clone());
            let secret = secret.clone();
            (
                tokio::spawn(async move {
                    a.keys
                        .revoke_key(pb::RevokeKeyRequest {
                            key_id: i1,
                            ..Default::default()
                        })
                        .await
                }),
                tokio::spawn(async move { delete(&mut b, &i2).await }),
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    undelete(&mut c, &i3).await
                }),
                tokio::spawn(async move {
                    for _ in 0..20 {
                        authorize(&mut authz_client, authz(&secret, &["dns:read"])).await;
                    }
                }),
            )
        };
        let revoke = revoke.await.expect("join");
        let del = del.await.expect("join");
        let undel = undel.await.expect("join");
        flood.await.expect("join");
        let mut check = admin.clone();
        // Bring it back if it is deleted, to see the state underneath.
        let now = get_key(&mut check, &id).await;
        if now.status() == pb::KeyStatus::Deleted {
            undelete(&mut check, &id).await.expect("final undelete");
        }
        let mut client = server.client().await;
        let decision = authorize(&mut client, authz(&secret, &["dns:read"])).await;
        match &revoke {
            Ok(_) => {
                revoke_ok += 1;
                assert_denied(&decision, pb::DenyReason::KeyRevoked);
                assert_eq!(
                    get_key(&mut check, &id).await.status(),
                    pb::KeyStatus::Revoked
                );
            }
            Err(status) => {
                revoke_refused += 1;
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(del.is_ok(), "revoke refused but the delete failed too");
            }
        }
        // One event per change that answered OK (plus the final undelete).
        let answered_ok = [revoke.is_ok(), del.is_ok(), undel.is_ok()]
            .iter()
            .filter(|ok| **ok)
            .count()
            + usize::from(now.status() == pb::KeyStatus::Deleted);
        assert_eq!(
            methods_of(&mut check, &id).await.len(),
            1 + answered_ok,
            "round {round}: revoke {revoke:?}, delete {del:?}, undelete {undel:?}"
        );
    }
    eprintln!(
        "racing delete/undelete: RevokeKey answered OK {revoke_ok} times, refused as deleted {revoke_refused} times"
    );
    server.stop().await;
}
