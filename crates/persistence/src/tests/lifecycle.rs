//! Soft deletion, purging and the audit log in storage, on both backends:
//! every change writes exactly one event in its own transaction (none when
//! the change is refused or its transaction fails), deletion keeps the
//! state for undeletion, and purging removes a key but not its history.

use chrono::TimeDelta;
use keygate_domain::audit::Actor;
use keygate_domain::validation::KeyPatch;
use keygate_domain::{KeyState, KeyStatus};
use sea_orm::{ConnectionTrait, Statement};

use super::{credential, key, now, open};
use crate::testing::TestDatabase;
use crate::{AuditFilter, HourlyUsage, KeyFilter, KeyUpdate, Store, StoreError};

both_backends!(
    every_change_writes_one_event_in_its_transaction,
    deletion_keeps_state_and_purge_keeps_history,
    audit_events_filter_and_page_newest_first,
);

fn actor(method: &str) -> Actor {
    Actor {
        key_id: "admin-key".to_owned(),
        owner_id: "acme".to_owned(),
        method: method.to_owned(),
        peer_address: "127.0.0.1".to_owned(),
        reason: String::new(),
    }
}

async fn events_of(store: &Store, key_id: &str) -> Vec<String> {
    let filter = AuditFilter {
        key_id: Some(key_id.to_owned()),
        ..AuditFilter::default()
    };
    store
        .list_audit_events(&filter, None, 100)
        .await
        .expect("list events")
        .into_iter()
        .map(|e| e.method)
        .collect()
}

async fn execute(store: &Store, sql: &str) {
    let conn = store.connection();
    conn.execute_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect(sql);
}

async fn every_change_writes_one_event_in_its_transaction(db: &TestDatabase) {
    let store = open(db).await;
    let k = key("0001-audited", "acme", "live", "AUDlook1");
    store
        .insert_key(&k, &actor("CreateKey"))
        .await
        .expect("insert");
    let t = now();
    let patch = KeyPatch {
        rate_limit_per_hour: Some(Some(60)),
        ..KeyPatch::default()
    };
    let updated = store
        .update_key(
            &k.id,
            1,
            &KeyUpdate::Patch(patch),
            t,
            &actor("UpdateKey"),
            Some(&k),
        )
        .await
        .expect("update");
    assert_eq!(updated.rate_limit_per_hour, Some(60));
    let rotated = store
        .rotate_key(
            &k.id,
            2,
            &credential("AUDlook2", t),
            t,
            t,
            &actor("RotateKey"),
            Some(&updated),
        )
        .await
        .expect("rotate");
    assert_eq!(
        events_of(&store, &k.id).await,
        ["RotateKey", "UpdateKey", "CreateKey"]
    );
    let events = store
        .list_audit_events(&AuditFilter::default(), None, 10)
        .await
        .expect("events");
    let update = &events[1];
    assert_eq!(
        (
            update.actor_key_id.as_str(),
            update.key_id.as_str(),
            update.owner_id.as_str()
        ),
        ("admin-key", k.id.as_str(), "acme")
    );
    assert_eq!(update.changes.len(), 1, "{:?}", update.changes);
    assert_eq!(
        (
            update.changes[0].field.as_str(),
            update.changes[0].old_value.as_str(),
            update.changes[0].new_value.as_str()
        ),
        ("rate_limit_per_hour", "", "60")
    );
    let rotation = &events[0].changes[0];
    assert_eq!(
        (
            rotation.field.as_str(),
            rotation.old_value.as_str(),
            rotation.new_value.as_str()
        ),
        ("credentials", "AUDlook1", "AUDlook2,AUDlook1")
    );

    // A refused change (stale version) writes no event.
    let err = store
        .update_key(
            &k.id,
            1,
            &KeyUpdate::SetState(KeyState::Disabled),
            t,
            &actor("DisableKey"),
            Some(&k),
        )
        .await
        .expect_err("stale");
    assert!(
        matches!(err, StoreError::VersionMismatch { current: 3 }),
        "{err:?}"
    );
    assert_eq!(events_of(&store, &k.id).await.len(), 3);

    // The event cannot be written: the change is rolled back with it.
    execute(
        &store,
        "ALTER TABLE audit_events RENAME TO audit_events_away",
    )
    .await;
    let failed = store
        .update_key(
            &k.id,
            rotated.version,
            &KeyUpdate::SetState(KeyState::Disabled),
            t,
            &actor("DisableKey"),
            Some(&rotated),
        )
        .await;
    execute(
        &store,
        "ALTER TABLE audit_events_away RENAME TO audit_events",
    )
    .await;
    assert!(failed.is_err(), "{failed:?}");
    let after = store.get_key(&k.id).await.expect("get").expect("key");
    assert_eq!(
        (after.state, after.version),
        (KeyState::Active, rotated.version)
    );
    assert_eq!(events_of(&store, &k.id).await.len(), 3);

    // Same for a new key: no key without its event.
    execute(
        &store,
        "ALTER TABLE audit_events RENAME TO audit_events_away",
    )
    .await;
    let orphan = key("0002-orphan", "acme", "live", "ORPlook1");
    let failed = store.insert_key(&orphan, &actor("CreateKey")).await;
    execute(
        &store,
        "ALTER TABLE audit_events_away RENAME TO audit_events",
    )
    .await;
    assert!(failed.is_err());
    assert_eq!(store.get_key(&orphan.id).await.expect("get"), None);
}

async fn deletion_keeps_state_and_purge_keeps_history(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let k = key("0001-deleted", "acme", "live", "DELlook1");
    store
        .insert_key(&k, &actor("CreateKey"))
        .await
        .expect("insert");
    let disabled = store
        .update_key(
            &k.id,
            1,
            &KeyUpdate::SetState(KeyState::Disabled),
            t,
            &actor("DisableKey"),
            Some(&k),
        )
        .await
        .expect("disable");
    let purge_at = t + TimeDelta::days(30);
    let deleted = store
        .update_key(
            &k.id,
            2,
            &KeyUpdate::Delete { purge_at },
            t,
            &actor("DeleteKey"),
            Some(&disabled),
        )
        .await
        .expect("delete");
    assert_eq!(
        deleted.state,
        KeyState::Disabled,
        "deletion leaves the state"
    );
    assert_eq!(
        (deleted.deleted_at, deleted.purge_at),
        (Some(t), Some(purge_at))
    );
    assert_eq!(deleted.status_at(t), KeyStatus::Deleted);
    // Unknown to Authorize; out of lists unless asked for.
    assert_eq!(
        store.find_by_lookup_id("DELlook1").await.expect("find"),
        None
    );
    let listed = |filter: KeyFilter| {
        let store = store.clone();
        async move {
            store
                .list_keys(&filter, None, 10, t)
                .await
                .expect("list")
                .into_iter()
                .map(|k| k.id)
                .collect::<Vec<_>>()
        }
    };
    assert!(listed(KeyFilter::default()).await.is_empty());
    assert_eq!(
        listed(KeyFilter {
            show_deleted: true,
            ..KeyFilter::default()
        })
        .await,
        vec![k.id.clone()]
    );
    assert_eq!(
        listed(KeyFilter {
            show_deleted: true,
            status: Some(KeyStatus::Disabled),
            ..KeyFilter::default()
        })
        .await,
        Vec::<String>::new(),
        "a deleted key has status deleted, not its state"
    );
    assert_eq!(
        listed(KeyFilter {
            show_deleted: true,
            status: Some(KeyStatus::Deleted),
            ..KeyFilter::default()
        })
        .await,
        vec![k.id.clone()]
    );
    // Nothing but undelete changes it.
    for update in [
        KeyUpdate::SetState(KeyState::Active),
        KeyUpdate::Revoke { reason: None },
        KeyUpdate::Delete { purge_at },
    ] {
        let err = store
            .update_key(&k.id, 3, &update, t, &actor("X"), Some(&deleted))
            .await
            .expect_err("changed a deleted key");
        assert!(matches!(err, StoreError::KeyDeleted), "{update:?}: {err:?}");
    }
    let err = store
        .rotate_key(
            &k.id,
            3,
            &credential("DELlook2", t),
            t,
            t,
            &actor("RotateKey"),
            None,
        )
        .await
        .expect_err("rotated a deleted key");
    assert!(matches!(err, StoreError::KeyDeleted), "{err:?}");

    let restored = store
        .update_key(
            &k.id,
            3,
            &KeyUpdate::Undelete,
            t,
            &actor("UndeleteKey"),
            Some(&deleted),
        )
        .await
        .expect("undelete");
    assert_eq!(
        (restored.state, restored.deleted_at, restored.purge_at),
        (KeyState::Disabled, None, None)
    );
    assert!(
        store
            .find_by_lookup_id("DELlook1")
            .await
            .expect("find")
            .is_some()
    );
    let err = store
        .update_key(
            &k.id,
            4,
            &KeyUpdate::Undelete,
            t,
            &actor("UndeleteKey"),
            None,
        )
        .await
        .expect_err("undeleted a live key");
    assert!(matches!(err, StoreError::NotDeleted), "{err:?}");

    // A revoked key may be deleted, and comes back revoked.
    let r = key("0002-revoked", "acme", "live", "REVlook1");
    store
        .insert_key(&r, &actor("CreateKey"))
        .await
        .expect("insert");
    store
        .update_key(
            &r.id,
            1,
            &KeyUpdate::Revoke { reason: None },
            t,
            &actor("RevokeKey"),
            None,
        )
        .await
        .expect("revoke");
    store
        .update_key(
            &r.id,
            2,
            &KeyUpdate::Delete { purge_at },
            t,
            &actor("DeleteKey"),
            None,
        )
        .await
        .expect("delete revoked");
    let back = store
        .update_key(
            &r.id,
            3,
            &KeyUpdate::Undelete,
            t,
            &actor("UndeleteKey"),
            None,
        )
        .await
        .expect("undelete revoked");
    assert_eq!(back.state, KeyState::Revoked);

    // Past its purge time: no undelete, and the purge removes the key, its
    // credentials and usage, but not its events.
    let due = t - TimeDelta::seconds(1);
    store
        .update_key(
            &k.id,
            4,
            &KeyUpdate::Delete { purge_at: due },
            t,
            &actor("DeleteKey"),
            None,
        )
        .await
        .expect("delete again");
    store
        .add_usage_counts(&[HourlyUsage {
            key_id: k.id.clone().into(),
            hour_start: 3600,
            counts: keygate_domain::usage::UsageCounts {
                allowed: 1,
                ..Default::default()
            },
        }])
        .await
        .expect("usage");
    let err = store
        .update_key(
            &k.id,
            5,
            &KeyUpdate::Undelete,
            t,
            &actor("UndeleteKey"),
            None,
        )
        .await
        .expect_err("undeleted after purge time");
    assert!(matches!(err, StoreError::Purged), "{err:?}");
    assert_eq!(store.purge_deleted(t).await.expect("purge"), 1);
    assert_eq!(store.get_key(&k.id).await.expect("get"), None);
    assert!(
        store
            .usage_buckets(&k.id, 0, i64::MAX)
            .await
            .expect("usage")
            .is_empty()
    );
    let conn = store.connection();
    let left = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM credentials WHERE lookup_id = 'DELlook1'",
        ))
        .await
        .expect("count")
        .expect("row");
    assert_eq!(left.try_get::<i64>("", "n").expect("n"), 0);
    assert_eq!(
        events_of(&store, &k.id).await,
        [
            "DeleteKey",
            "UndeleteKey",
            "DeleteKey",
            "DisableKey",
            "CreateKey"
        ]
    );
    assert_eq!(store.purge_deleted(t).await.expect("purge again"), 0);
    assert!(
        store.get_key(&r.id).await.expect("get").is_some(),
        "not due"
    );
}

async fn audit_events_filter_and_page_newest_first(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    for (i, (owner, env)) in [("acme", "live"), ("acme", "test"), ("beta", "live")]
        .iter()
        .enumerate()
    {
        let k = key(&format!("000{i}-k"), owner, env, &format!("PAGlook{i}"));
        store
            .insert_key(&k, &actor("CreateKey"))
            .await
            .expect("insert");
        store
            .update_key(
                &k.id,
                1,
                &KeyUpdate::SetExpiry(Some(t + TimeDelta::days(1))),
                t,
                &actor("UpdateKeyExpiry"),
                Some(&k),
            )
            .await
            .expect("expiry");
    }
    let all = store
        .list_audit_events(&AuditFilter::default(), None, 100)
        .await
        .expect("all");
    assert_eq!(all.len(), 6);
    assert!(
        all.windows(2).all(|w| w[0].event_id > w[1].event_id),
        "newest first"
    );
    // Pages of 4 then 2, each strictly older than the last.
    let first = store
        .list_audit_events(&AuditFilter::default(), None, 4)
        .await
        .expect("page 1");
    let second = store
        .list_audit_events(&AuditFilter::default(), Some(&first[3].event_id), 4)
        .await
        .expect("page 2");
    let paged: Vec<_> = first.iter().chain(&second).map(|e| &e.event_id).collect();
    assert_eq!(paged, all.iter().map(|e| &e.event_id).collect::<Vec<_>>());

    let count = |filter: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .list_audit_events(&filter, None, 100)
                .await
                .expect("filtered")
                .len()
        }
    };
    let acme_live = AuditFilter {
        owner_id: Some("acme".into()),
        environment: Some("live".into()),
        ..AuditFilter::default()
    };
    assert_eq!(count(acme_live.clone()).await, 2);
    assert_eq!(
        count(AuditFilter {
            method: Some("CreateKey".into()),
            ..AuditFilter::default()
        })
        .await,
        3
    );
    assert_eq!(
        count(AuditFilter {
            actor_key_id: Some("someone-else".into()),
            ..AuditFilter::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(AuditFilter {
            start: Some(t + TimeDelta::seconds(1)),
            ..AuditFilter::default()
        })
        .await,
        0
    );
    assert_eq!(
        count(AuditFilter {
            end: Some(t + TimeDelta::seconds(1)),
            key_id: Some("0002-k".into()),
            ..AuditFilter::default()
        })
        .await,
        2
    );
}
