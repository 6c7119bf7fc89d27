//! The repository test-suite, run against both backends: the `both_backends!`
//! macro (the pattern of Quickwit's metastore tests) instantiates every test
//! function once for a SQLite file and once for a throwaway PostgreSQL
//! database (skipped without `KEYGATE_TEST_POSTGRES_URL`, failing under CI).
//!
//! Timestamp precision: PostgreSQL keeps microseconds, SQLite (RFC 3339 text)
//! nanoseconds, so test data is truncated to microseconds and roundtrips
//! compare exactly.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use keygate_domain::scope::Scope;
use keygate_domain::usage::{UsageBucket, UsageCounts};
use keygate_domain::{ApiKey, Credential, KeyState, KeyStatus, audit::Actor};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

use crate::testing::TestDatabase;
use crate::{
    Backend, Change, HourlyUsage, KeyFilter, KeyUpdate, LastUsed, Store, StoreError, StoredVersion,
};

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = crate::testing::TestDatabase::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = crate::testing::TestDatabase::postgres().await else {
                        return;
                    };
                    super::$name(&db).await;
                }
            )*
        }
    };
}

both_backends!(
    roundtrip_every_field,
    find_by_lookup_id_current_and_old,
    find_by_lookup_ids_spans_statements,
    duplicate_lookup_id_is_conflict,
    list_filters_and_statuses,
    list_filters_by_last_use_and_expiry,
    keyset_pagination_is_stable_under_inserts,
    update_key_is_conditional_on_version_and_state,
    storage_refuses_to_unrevoke,
    racing_changes_are_serialized,
    rotate_expires_old_adds_new_and_cleans_up,
    last_used_only_moves_forward,
    current_versions_answer_for_live_keys_only,
    versions_unchanged_only_when_every_key_is_at_its_version,
    migration_6_carries_last_uses_over,
    migration_7_keys_hourly_counts_by_hour,
    usage_counts_add_up_across_replicas_and_prune,
    last_uses_and_counts_are_written_together_or_not_at_all,
    concurrent_usage_flushes_lose_nothing,
    rate_usage_is_shared_between_stores,
    migrate_twice_is_idempotent,
    corrupt_rows_are_reported,
    listen_matches_backend,
    large_usage_batches_span_chunks,
    large_rate_batches_span_chunks,
);

mod lifecycle;

/// On PostgreSQL the tables the usage flushers update are filled to 80%,
/// so those updates can stay on their page without new index entries.
#[tokio::test]
async fn postgres_usage_tables_leave_room_for_updates() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let store = open(&db).await;
    for table in [
        "api_keys",
        "credentials",
        "key_usage_hourly",
        "key_last_uses",
    ] {
        let row = store
            .connection()
            .query_one_raw(Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT array_to_string(reloptions, ',') AS options FROM pg_class \
                 WHERE relname = $1 AND relkind = 'r'",
                [table.into()],
            ))
            .await
            .expect("query pg_class")
            .unwrap_or_else(|| panic!("no table {table}"));
        let options: Option<String> = row.try_get("", "options").expect("options");
        assert_eq!(options.as_deref(), Some("fillfactor=80"), "{table}");
    }
}

pub(crate) async fn open(db: &TestDatabase) -> Store {
    let store = Store::connect(&db.url).await.expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// Now, truncated to microseconds (what both backends keep).
pub(crate) fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("valid time")
}

/// Marks `key` as last used at `at`, through its current credential (a
/// key's last use is the latest of its credentials').
fn used_at(key: &mut ApiKey, at: DateTime<Utc>) {
    key.credentials[0].last_used_at = Some(at);
    key.last_used_at = Some(at);
}

pub(crate) fn credential(lookup_id: &str, created_at: DateTime<Utc>) -> Credential {
    let seed = lookup_id.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    Credential {
        lookup_id: lookup_id.to_owned(),
        salt: [seed; 16],
        hash: [seed.wrapping_add(1); 32],
        hint: format!("h{}", &lookup_id[..3]),
        created_at,
        expires_at: None,
        last_used_at: None,
    }
}

pub(crate) fn key(id: &str, owner: &str, env: &str, lookup_id: &str) -> ApiKey {
    let t = now();
    ApiKey {
        id: id.to_owned(),
        owner_id: owner.to_owned(),
        name: format!("key {id}"),
        environment: env.to_owned(),
        scopes: vec![Scope::parse("dns:read").expect("scope")],
        ip_allowlist: vec![],
        rate_limit_per_hour: None,
        state: KeyState::Active,
        expires_at: None,
        prefix: format!("kg_{env}_"),
        created_at: t,
        updated_at: t,
        last_used_at: None,
        revoked_at: None,
        revoked_reason: None,
        version: 1,
        credentials: vec![credential(lookup_id, t)],
        metadata: Default::default(),
        deleted_at: None,
        purge_at: None,
    }
}

async fn roundtrip_every_field(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let mut k = key("0001-full", "acme", "live", "AAAAaaaa");
    k.name = "Zürich — ключ 🔑".to_owned();
    k.scopes = ["dns:read", "keys:*", "*"]
        .iter()
        .map(|s| Scope::parse(s).expect("scope"))
        .collect();
    k.ip_allowlist = ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "::1/128"]
        .iter()
        .map(|s| s.parse().expect("net"))
        .collect();
    k.rate_limit_per_hour = Some(u32::MAX);
    k.state = KeyState::Revoked;
    k.expires_at = Some(t + TimeDelta::microseconds(123_456_789));
    k.created_at = t - TimeDelta::microseconds(1);
    k.updated_at = t + TimeDelta::microseconds(1);
    k.revoked_at = Some(t);
    k.revoked_reason = Some("leaked in «logs»".to_owned());
    let mut old = credential("BBBBbbbb", t - TimeDelta::seconds(60));
    old.expires_at = Some(t + TimeDelta::microseconds(7));
    old.last_used_at = Some(t - TimeDelta::microseconds(3));
    let mut current = credential("AAAAaaaa", t);
    current.last_used_at = Some(t - TimeDelta::microseconds(999_999));
    k.credentials = vec![current, old];
    // A key's last use is the latest of its credentials'.
    k.last_used_at = Some(t - TimeDelta::microseconds(3));
    k.metadata = [
        ("plan", "pro"),
        ("tenant.id", "t-42"),
        ("note", "ünï \"quoted\""),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    k.deleted_at = Some(t - TimeDelta::microseconds(5));
    k.purge_at = Some(t + TimeDelta::days(30));
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");

    let got = store.get_key(&k.id).await.expect("get").expect("present");
    assert_eq!(got, k);
    assert_eq!(store.get_key("missing").await.expect("get"), None);
}

async fn find_by_lookup_id_current_and_old(db: &TestDatabase) {
    let store = open(db).await;
    let k = key("0001-find", "acme", "live", "OLDlook1");
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    store
        .insert_key(
            &key("0002-other", "acme", "live", "OTHERxx1"),
            &Actor::default(),
        )
        .await
        .expect("insert other");
    let t = now();
    let rotated = store
        .rotate_key(
            &k.id,
            1,
            &credential("NEWlook1", t + TimeDelta::seconds(1)),
            t + TimeDelta::hours(1),
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("rotate");

    for lookup in ["OLDlook1", "NEWlook1"] {
        let found = store
            .find_by_lookup_id(lookup)
            .await
            .expect("find")
            .expect("present");
        assert_eq!(found, rotated, "lookup {lookup}");
        assert_eq!(found.credentials.len(), 2);
        assert_eq!(found.credentials[0].lookup_id, "NEWlook1");
    }
    let rotated = store
        .rotate_key(
            &k.id,
            2,
            &credential("NEWERlk1", t + TimeDelta::seconds(2)),
            t + TimeDelta::hours(1),
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("rotate again");
    for lookup in ["OLDlook1", "NEWlook1", "NEWERlk1"] {
        let found = store
            .find_by_lookup_id(lookup)
            .await
            .expect("find")
            .expect("present");
        assert_eq!(found, rotated, "lookup {lookup}");
        let order: Vec<&str> = found
            .credentials
            .iter()
            .map(|c| c.lookup_id.as_str())
            .collect();
        assert_eq!(order, ["NEWERlk1", "NEWlook1", "OLDlook1"]);
    }
    let other = store
        .find_by_lookup_id("OTHERxx1")
        .await
        .expect("find other")
        .expect("present");
    assert_eq!(other.id, "0002-other");
    assert_eq!(other.credentials.len(), 1);
    assert_eq!(
        store.find_by_lookup_id("NOPEnope").await.expect("find"),
        None
    );

    // Together: each owning key once, whole and with its credentials in
    // order, however many of its lookup ids were asked for; unknown ones
    // left out.
    let mut found = store
        .find_by_lookup_ids(&["NOPEnope", "OLDlook1", "OTHERxx1", "NEWERlk1", "NEWlook1"])
        .await
        .expect("find together");
    found.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(found, [rotated, other]);
    assert_eq!(
        store
            .find_by_lookup_ids(&["NOPEnope", "NOPEnop2"])
            .await
            .expect("find none"),
        []
    );
    assert_eq!(
        store.find_by_lookup_ids(&[]).await.expect("find nothing"),
        []
    );
}

/// More lookup ids than one statement binds: every key is still found,
/// the deleted one is not.
async fn find_by_lookup_ids_spans_statements(db: &TestDatabase) {
    let store = open(db).await;
    let mut lookups = Vec::new();
    for i in 0..700 {
        let lookup = format!("BATCH{i:03}");
        store
            .insert_key(
                &key(&format!("batch-{i:03}"), "acme", "live", &lookup),
                &Actor::default(),
            )
            .await
            .expect("insert");
        lookups.push(lookup);
    }
    store
        .update_key(
            "batch-007",
            1,
            &KeyUpdate::Delete {
                purge_at: now() + TimeDelta::days(30),
            },
            now(),
            &Actor::default(),
            None,
        )
        .await
        .expect("delete");
    let asked: Vec<&str> = lookups.iter().map(String::as_str).collect();
    let mut found: Vec<String> = store
        .find_by_lookup_ids(&asked)
        .await
        .expect("find")
        .into_iter()
        .map(|k| k.id)
        .collect();
    found.sort();
    let expected: Vec<String> = (0..700)
        .filter(|&i| i != 7)
        .map(|i| format!("batch-{i:03}"))
        .collect();
    assert_eq!(found, expected);
}

async fn duplicate_lookup_id_is_conflict(db: &TestDatabase) {
    let store = open(db).await;
    let first = key("0001-dup", "acme", "live", "SAMElook");
    store
        .insert_key(&first, &Actor::default())
        .await
        .expect("insert");
    let err = store
        .insert_key(
            &key("0002-dup", "acme", "live", "SAMElook"),
            &Actor::default(),
        )
        .await
        .expect_err("duplicate lookup id");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The failed insert left nothing behind.
    assert_eq!(store.get_key("0002-dup").await.expect("get"), None);
    assert_eq!(
        store.get_key(&first.id).await.expect("get"),
        Some(first.clone())
    );
    // A reused key id is a conflict too.
    let err = store
        .insert_key(
            &key("0001-dup", "acme", "live", "FRESHlk1"),
            &Actor::default(),
        )
        .await
        .expect_err("duplicate key id");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

async fn list_filters_and_statuses(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let mut keys = vec![
        key("k1-active", "acme", "live", "LOOKUP01"),
        key("k2-future", "acme", "live", "LOOKUP02"),
        key("k3-expired", "acme", "live", "LOOKUP03"),
        key("k4-disabled", "acme", "test", "LOOKUP04"),
        key("k5-revoked", "globex", "live", "LOOKUP05"),
        key("k6-revoked-expired", "globex", "test", "LOOKUP06"),
    ];
    keys[1].expires_at = Some(t + TimeDelta::hours(1));
    keys[2].expires_at = Some(t - TimeDelta::microseconds(1));
    keys[3].state = KeyState::Disabled;
    keys[4].state = KeyState::Revoked;
    keys[5].state = KeyState::Revoked;
    keys[5].expires_at = Some(t - TimeDelta::hours(1));
    for k in &keys {
        store
            .insert_key(k, &Actor::default())
            .await
            .expect("insert");
    }
    let ids = |filter: KeyFilter| {
        let store = store.clone();
        async move {
            store
                .list_keys(&filter, None, 100, t)
                .await
                .expect("list")
                .into_iter()
                .map(|k| k.id)
                .collect::<Vec<_>>()
        }
    };
    let status = |s| KeyFilter {
        status: Some(s),
        ..KeyFilter::default()
    };
    assert_eq!(ids(KeyFilter::default()).await.len(), 6);
    assert_eq!(
        ids(KeyFilter {
            owner_id: Some("acme".into()),
            ..KeyFilter::default()
        })
        .await,
        ["k1-active", "k2-future", "k3-expired", "k4-disabled"]
    );
    assert_eq!(
        ids(KeyFilter {
            environment: Some("test".into()),
            ..KeyFilter::default()
        })
        .await,
        ["k4-disabled", "k6-revoked-expired"]
    );
    assert_eq!(
        ids(status(KeyStatus::Active)).await,
        ["k1-active", "k2-future"]
    );
    assert_eq!(ids(status(KeyStatus::Expired)).await, ["k3-expired"]);
    assert_eq!(ids(status(KeyStatus::Disabled)).await, ["k4-disabled"]);
    assert_eq!(
        ids(status(KeyStatus::Revoked)).await,
        ["k5-revoked", "k6-revoked-expired"]
    );
    assert_eq!(
        ids(KeyFilter {
            owner_id: Some("globex".into()),
            environment: Some("live".into()),
            status: Some(KeyStatus::Revoked),
            ..KeyFilter::default()
        })
        .await,
        ["k5-revoked"]
    );
    // Expiry is evaluated at the given instant, to the microsecond.
    let later = store
        .list_keys(
            &status(KeyStatus::Expired),
            None,
            100,
            t + TimeDelta::hours(1),
        )
        .await
        .expect("list");
    assert_eq!(
        later.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["k2-future", "k3-expired"]
    );
    // Listed keys carry their credentials and match what get_key returns.
    let all = store
        .list_keys(&KeyFilter::default(), None, 100, t)
        .await
        .expect("list");
    for (listed, original) in all.iter().zip(&keys) {
        assert_eq!(listed, original);
    }
}

/// Orphaned keys (`last_used_before`, never used counting as before any
/// time) and expiring keys (`expires_before`), alone, combined with other
/// filters, and across pages.
async fn list_filters_by_last_use_and_expiry(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let mut keys = vec![
        key("u1-never-used", "acme", "live", "UNUSED01"),
        key("u2-used-long-ago", "acme", "live", "UNUSED02"),
        key("u3-used-just-now", "acme", "live", "UNUSED03"),
        key("u4-expires-soon", "acme", "live", "UNUSED04"),
        key("u5-expires-later", "acme", "live", "UNUSED05"),
        key("u6-expired-unused", "globex", "live", "UNUSED06"),
    ];
    used_at(&mut keys[1], t - TimeDelta::days(100));
    used_at(&mut keys[2], t);
    used_at(&mut keys[3], t - TimeDelta::days(1));
    keys[3].expires_at = Some(t + TimeDelta::days(3));
    used_at(&mut keys[4], t);
    keys[4].expires_at = Some(t + TimeDelta::days(60));
    keys[5].expires_at = Some(t - TimeDelta::days(1));
    for k in &keys {
        store
            .insert_key(k, &Actor::default())
            .await
            .expect("insert");
    }
    let ids = |filter: KeyFilter, after: Option<&'static str>, limit: u64| {
        let store = store.clone();
        async move {
            store
                .list_keys(&filter, after, limit, t)
                .await
                .expect("list")
                .into_iter()
                .map(|k| k.id)
                .collect::<Vec<_>>()
        }
    };
    let unused_since = |d: TimeDelta| KeyFilter {
        last_used_before: Some(t - d),
        ..KeyFilter::default()
    };
    let expiring_by = |d: TimeDelta| KeyFilter {
        expires_before: Some(t + d),
        ..KeyFilter::default()
    };
    assert_eq!(
        ids(unused_since(TimeDelta::days(30)), None, 100).await,
        ["u1-never-used", "u2-used-long-ago", "u6-expired-unused"]
    );
    assert_eq!(
        ids(unused_since(TimeDelta::hours(1)), None, 100).await,
        [
            "u1-never-used",
            "u2-used-long-ago",
            "u4-expires-soon",
            "u6-expired-unused"
        ]
    );
    // The bound is exclusive: used exactly at it is not "before".
    assert!(
        !ids(unused_since(TimeDelta::zero()), None, 100)
            .await
            .contains(&"u3-used-just-now".to_owned())
    );
    assert_eq!(
        ids(expiring_by(TimeDelta::days(7)), None, 100).await,
        ["u4-expires-soon", "u6-expired-unused"]
    );
    assert_eq!(
        ids(expiring_by(TimeDelta::days(90)), None, 100).await,
        ["u4-expires-soon", "u5-expires-later", "u6-expired-unused"]
    );
    // Combined with each other and with status and owner.
    assert_eq!(
        ids(
            KeyFilter {
                last_used_before: Some(t - TimeDelta::hours(1)),
                expires_before: Some(t + TimeDelta::days(7)),
                status: Some(KeyStatus::Active),
                owner_id: Some("acme".into()),
                ..KeyFilter::default()
            },
            None,
            100
        )
        .await,
        ["u4-expires-soon"]
    );
    // Paged one at a time, the filter still holds.
    let filter = unused_since(TimeDelta::days(30));
    assert_eq!(ids(filter.clone(), None, 1).await, ["u1-never-used"]);
    assert_eq!(
        ids(filter.clone(), Some("u1-never-used"), 1).await,
        ["u2-used-long-ago"]
    );
    assert_eq!(
        ids(filter, Some("u2-used-long-ago"), 5).await,
        ["u6-expired-unused"]
    );
}

async fn keyset_pagination_is_stable_under_inserts(db: &TestDatabase) {
    let store = open(db).await;
    for i in (0..20).step_by(2) {
        store
            .insert_key(
                &key(
                    &format!("key-{i:03}"),
                    "acme",
                    "live",
                    &format!("LKP{i:05}"),
                ),
                &Actor::default(),
            )
            .await
            .expect("insert");
    }
    let filter = KeyFilter::default();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut inserted = 1;
    loop {
        let page = store
            .list_keys(&filter, after.as_deref(), 3, now())
            .await
            .expect("list");
        if page.is_empty() {
            break;
        }
        seen.extend(page.iter().map(|k| k.id.clone()));
        after = page.last().map(|k| k.id.clone());
        // Between pages, insert keys both before and after the cursor.
        if inserted < 20 {
            store
                .insert_key(
                    &key(
                        &format!("key-{inserted:03}"),
                        "acme",
                        "live",
                        &format!("LKP{inserted:05}"),
                    ),
                    &Actor::default(),
                )
                .await
                .expect("insert between pages");
            inserted += 2;
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages are ordered with no duplicates");
    // Every key that existed at the start is seen exactly once.
    for i in (0..20).step_by(2) {
        assert!(seen.contains(&format!("key-{i:03}")), "key-{i:03} skipped");
    }
}

async fn update_key_is_conditional_on_version_and_state(db: &TestDatabase) {
    let store = open(db).await;
    let k = key("0001-update", "acme", "live", "UPDlook1");
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    let t = now() + TimeDelta::seconds(5);

    let disabled = store
        .update_key(
            &k.id,
            1,
            &KeyUpdate::SetState(KeyState::Disabled),
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("disable at version 1");
    assert_eq!(
        (disabled.state, disabled.version, disabled.updated_at),
        (KeyState::Disabled, 2, t)
    );
    assert_eq!(
        store.get_key(&k.id).await.expect("get"),
        Some(disabled.clone())
    );

    // A change conditional on the old version touches nothing.
    let err = store
        .update_key(
            &k.id,
            1,
            &KeyUpdate::SetState(KeyState::Active),
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect_err("stale version");
    assert!(
        matches!(err, StoreError::VersionMismatch { current: 2 }),
        "{err:?}"
    );
    assert_eq!(store.get_key(&k.id).await.expect("get"), Some(disabled));

    let expiry = Some(t + TimeDelta::days(1));
    let expiring = store
        .update_key(
            &k.id,
            2,
            &KeyUpdate::SetExpiry(expiry),
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("expiry");
    assert_eq!((expiring.expires_at, expiring.version), (expiry, 3));

    let revoked = store
        .update_key(
            &k.id,
            3,
            &KeyUpdate::Revoke {
                reason: Some("leaked".into()),
            },
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("revoke");
    assert_eq!(revoked.state, KeyState::Revoked);
    assert_eq!(revoked.revoked_at, Some(t));
    assert_eq!(revoked.revoked_reason.as_deref(), Some("leaked"));
    assert_eq!(revoked.version, 4);

    // Revoked is terminal: nothing applies, whatever version is named.
    for update in [
        KeyUpdate::SetState(KeyState::Active),
        KeyUpdate::SetState(KeyState::Disabled),
        KeyUpdate::SetExpiry(None),
        KeyUpdate::Revoke { reason: None },
    ] {
        for version in [3, 4, 5] {
            let err = store
                .update_key(&k.id, version, &update, t, &Actor::default(), None)
                .await
                .expect_err("revoked key changed");
            assert!(
                matches!(err, StoreError::KeyRevoked),
                "{update:?}@{version}: {err:?}"
            );
        }
    }
    let err = store
        .rotate_key(
            &k.id,
            4,
            &credential("UPDlook2", t),
            t,
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect_err("revoked key rotated");
    assert!(matches!(err, StoreError::KeyRevoked), "{err:?}");
    assert_eq!(store.get_key(&k.id).await.expect("get"), Some(revoked));

    let err = store
        .update_key(
            "no-such-key",
            1,
            &KeyUpdate::SetExpiry(None),
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect_err("not found");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

/// Even SQL that bypasses the store cannot take a key out of REVOKED: the
/// database refuses it.
async fn storage_refuses_to_unrevoke(db: &TestDatabase) {
    let store = open(db).await;
    let k = key("0001-terminal", "acme", "live", "TERMloo1");
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    store
        .update_key(
            &k.id,
            1,
            &KeyUpdate::Revoke { reason: None },
            now(),
            &Actor::default(),
            None,
        )
        .await
        .expect("revoke");
    let conn = store.connection();
    for state in ["active", "disabled"] {
        let result = conn
            .execute_raw(Statement::from_sql_and_values(
                conn.get_database_backend(),
                "UPDATE api_keys SET state = $1 WHERE id = $2",
                [state.into(), k.id.clone().into()],
            ))
            .await;
        let err = StoreError::from(result.expect_err("un-revoke accepted"));
        assert!(matches!(err, StoreError::KeyRevoked), "{err:?}");
    }
    // Other columns of a revoked key (usage) still update.
    store
        .record_last_used(&[LastUsed {
            key_id: k.id.clone().into(),
            lookup_id: "TERMloo1".into(),
            at: now(),
        }])
        .await
        .expect("usage of a revoked key");
    let stored = store.get_key(&k.id).await.expect("get").expect("present");
    assert_eq!(stored.state, KeyState::Revoked);
    assert_eq!(stored.version, 2, "usage is not a change");
}

/// Many tasks change one key at once, each conditional on the version it
/// read, retrying on a lost race: every change is applied exactly once (the
/// version counts them), and after a revocation nothing else applies.
async fn racing_changes_are_serialized(db: &TestDatabase) {
    let store = open(db).await;
    let k = key("0001-race", "acme", "live", "RACEloo1");
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    let tasks = 12;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let store = store.clone();
        let id = k.id.clone();
        handles.push(tokio::spawn(async move {
            let update = match task % 3 {
                0 => KeyUpdate::SetState(KeyState::Disabled),
                1 => KeyUpdate::SetState(KeyState::Active),
                _ => KeyUpdate::SetExpiry(Some(now() + TimeDelta::days(1))),
            };
            loop {
                let current = store.get_key(&id).await.expect("get").expect("present");
                match store
                    .update_key(
                        &id,
                        current.version,
                        &update,
                        now(),
                        &Actor::default(),
                        None,
                    )
                    .await
                {
                    Ok(changed) => return changed.version,
                    Err(StoreError::VersionMismatch { .. }) => continue,
                    Err(err) => panic!("task {task}: {err:?}"),
                }
            }
        }));
    }
    let mut versions = Vec::new();
    for handle in handles {
        versions.push(handle.await.expect("task"));
    }
    versions.sort_unstable();
    let expected: Vec<u64> = (2..2 + tasks).collect();
    assert_eq!(
        versions, expected,
        "each change applied once, in some order"
    );

    // Revocation racing more changes: whoever comes after it fails.
    let current = store.get_key(&k.id).await.expect("get").expect("present");
    let mut handles = Vec::new();
    for task in 0..8 {
        let store = store.clone();
        let id = k.id.clone();
        let version = current.version;
        handles.push(tokio::spawn(async move {
            let update = if task == 0 {
                KeyUpdate::Revoke { reason: None }
            } else {
                KeyUpdate::SetState(KeyState::Active)
            };
            store
                .update_key(&id, version, &update, now(), &Actor::default(), None)
                .await
        }));
    }
    let mut applied = 0;
    let mut revoked = false;
    for (task, handle) in handles.into_iter().enumerate() {
        match handle.await.expect("task") {
            Ok(_) => {
                applied += 1;
                revoked |= task == 0;
            }
            Err(StoreError::VersionMismatch { .. } | StoreError::KeyRevoked) => {}
            Err(err) => panic!("{err:?}"),
        }
    }
    assert_eq!(applied, 1, "exactly one change at that version applies");
    let stored = store.get_key(&k.id).await.expect("get").expect("present");
    assert_eq!(stored.version, current.version + 1);
    assert_eq!(stored.state == KeyState::Revoked, revoked);
}

async fn rotate_expires_old_adds_new_and_cleans_up(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let mut k = key("0001-rotate", "acme", "live", "CURRENT1");
    let mut ending_soon = credential("SOONxxx1", t - TimeDelta::hours(2));
    ending_soon.expires_at = Some(t + TimeDelta::minutes(5));
    let mut long_gone = credential("GONExxx1", t - TimeDelta::days(10));
    long_gone.expires_at = Some(t - TimeDelta::days(2));
    long_gone.last_used_at = Some(t - TimeDelta::days(3));
    k.credentials = vec![
        credential("CURRENT1", t - TimeDelta::hours(1)),
        ending_soon.clone(),
        long_gone,
    ];
    k.last_used_at = Some(t - TimeDelta::days(3));
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");

    let grace_end = t + TimeDelta::hours(1);
    let new = credential("NEWcred1", t);
    let rotated = store
        .rotate_key(&k.id, 1, &new, grace_end, t, &Actor::default(), None)
        .await
        .expect("rotate");

    let lookups: Vec<&str> = rotated
        .credentials
        .iter()
        .map(|c| c.lookup_id.as_str())
        .collect();
    assert_eq!(
        lookups,
        ["NEWcred1", "CURRENT1", "SOONxxx1"],
        "newest first, long-expired gone"
    );
    assert_eq!(rotated.credentials[0], new);
    assert_eq!(rotated.credentials[1].expires_at, Some(grace_end));
    assert_eq!(
        rotated.credentials[2].expires_at, ending_soon.expires_at,
        "earlier expiry kept"
    );
    assert_eq!(rotated.updated_at, t);
    assert_eq!(rotated.version, 2);
    assert_eq!(
        store.get_key(&k.id).await.expect("get"),
        Some(rotated.clone())
    );
    assert_eq!(
        store.find_by_lookup_id("GONExxx1").await.expect("find"),
        None
    );
    // The deleted credential's last use is still the key's, read either way.
    assert_eq!(rotated.last_used_at, Some(t - TimeDelta::days(3)));
    assert_eq!(
        store.find_by_lookup_id("CURRENT1").await.expect("find"),
        Some(rotated.clone())
    );

    // Immediate rotation ends every older credential now.
    let t2 = t + TimeDelta::seconds(1);
    let rotated = store
        .rotate_key(
            &k.id,
            2,
            &credential("NEWcred2", t2),
            t2,
            t2,
            &Actor::default(),
            None,
        )
        .await
        .expect("rotate again");
    assert!(
        rotated.credentials[1..]
            .iter()
            .all(|c| c.expires_at == Some(t2))
    );

    let err = store
        .rotate_key(
            "no-such-key",
            1,
            &credential("NEWcred3", t),
            t,
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect_err("not found");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    let err = store
        .rotate_key(
            &k.id,
            3,
            &credential("NEWcred1", t),
            t,
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect_err("lookup id taken");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

/// Migration 6 moves last uses out of `api_keys` and `credentials` into
/// `key_last_uses`: a credential's own, and a key's later than all its
/// credentials' (its credential deleted since) under the empty lookup id.
async fn migration_6_carries_last_uses_over(db: &TestDatabase) {
    use sea_orm::EntityTrait;
    use sea_orm_migration::MigratorTrait;

    use crate::convert::{credential_to_active, key_to_active};
    use crate::entity::{api_key, credential};

    let store = Store::connect(&db.url).await.expect("connect");
    let conn = store.connection();
    crate::migration::Migrator::up(conn, Some(5))
        .await
        .expect("migrations 1-5");
    let t = now();
    let mut used = key("0001-used", "acme", "live", "MIGRused");
    used.credentials
        .push(credential("MIGRold1", t - TimeDelta::days(1)));
    let deleted = key("0002-deleted-credential", "acme", "live", "MIGRdel1");
    let never = key("0003-never-used", "acme", "live", "MIGRnev1");
    for k in [&used, &deleted, &never] {
        api_key::Entity::insert(key_to_active(k))
            .exec_without_returning(conn)
            .await
            .expect("insert key row");
        for c in &k.credentials {
            credential::Entity::insert(credential_to_active(&k.id, c))
                .exec_without_returning(conn)
                .await
                .expect("insert credential row");
        }
    }
    let backend = conn.get_database_backend();
    let set = |sql: &str, at: DateTime<Utc>, id: &str| {
        Statement::from_sql_and_values(backend, sql, [at.into(), id.into()])
    };
    for (sql, at, id) in [
        (
            "UPDATE credentials SET last_used_at = $1 WHERE lookup_id = $2",
            t - TimeDelta::hours(2),
            "MIGRold1",
        ),
        (
            "UPDATE api_keys SET last_used_at = $1 WHERE id = $2",
            t - TimeDelta::hours(2),
            "0001-used",
        ),
        (
            "UPDATE api_keys SET last_used_at = $1 WHERE id = $2",
            t - TimeDelta::hours(5),
            "0002-deleted-credential",
        ),
    ] {
        conn.execute_raw(set(sql, at, id))
            .await
            .expect("old column");
    }
    store.migrate().await.expect("migration 6");

    let got = store
        .get_key(&used.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.last_used_at, Some(t - TimeDelta::hours(2)));
    let uses: Vec<_> = got
        .credentials
        .iter()
        .map(|c| (c.lookup_id.as_str(), c.last_used_at))
        .collect();
    assert_eq!(
        uses,
        [
            ("MIGRused", None),
            ("MIGRold1", Some(t - TimeDelta::hours(2)))
        ]
    );
    let got = store
        .get_key(&deleted.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.last_used_at, Some(t - TimeDelta::hours(5)));
    assert_eq!(got.credentials[0].last_used_at, None);
    let got = store
        .get_key(&never.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.last_used_at, None);
}

async fn last_used_only_moves_forward(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let mut k = key("0001-usage", "acme", "live", "USAGEaa1");
    k.credentials
        .push(credential("USAGEbb1", t - TimeDelta::days(1)));
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    let used = |lookup: &str, at| LastUsed {
        key_id: k.id.clone().into(),
        lookup_id: lookup.to_owned().into(),
        at,
    };
    store
        .record_last_used(&[
            used("USAGEaa1", t),
            used("USAGEaa1", t - TimeDelta::seconds(5)),
            used("USAGEbb1", t - TimeDelta::seconds(10)),
            LastUsed {
                key_id: "unknown".into(),
                lookup_id: "UNKNOWN1".into(),
                at: t,
            },
            used("USAGEzz1", t),
        ])
        .await
        .expect("record");
    let rows = store
        .connection()
        .query_one_raw(Statement::from_string(
            store.connection().get_database_backend(),
            "SELECT COUNT(*) AS n FROM key_last_uses",
        ))
        .await
        .expect("count")
        .expect("row");
    assert_eq!(
        rows.try_get::<i64>("", "n").expect("n"),
        2,
        "no row for an unknown key or credential"
    );
    // An older flush (e.g. from a slower replica) must not move times back.
    store
        .record_last_used(&[used("USAGEaa1", t - TimeDelta::hours(1))])
        .await
        .expect("record older");
    store.record_last_used(&[]).await.expect("record nothing");

    let got = store.get_key(&k.id).await.expect("get").expect("present");
    assert_eq!(got.last_used_at, Some(t));
    let by_lookup = |got: &ApiKey, l: &str| {
        got.credentials
            .iter()
            .find(|c| c.lookup_id == l)
            .expect("cred")
            .last_used_at
    };
    assert_eq!(by_lookup(&got, "USAGEaa1"), Some(t));
    assert_eq!(
        by_lookup(&got, "USAGEbb1"),
        Some(t - TimeDelta::seconds(10))
    );

    store
        .record_last_used(&[used("USAGEbb1", t + TimeDelta::microseconds(1))])
        .await
        .expect("record newer");
    let got = store.get_key(&k.id).await.expect("get").expect("present");
    assert_eq!(got.last_used_at, Some(t + TimeDelta::microseconds(1)));
    assert_eq!(by_lookup(&got, "USAGEaa1"), Some(t));
    assert_eq!(got.version, k.version, "usage is not a change");
}

/// The set-based check a cache uses to renew entries past their lifetime:
/// each live key's version (a change bumps it) and newest use, nothing for
/// deleted or unknown ids, and every asked id answered however many.
async fn current_versions_answer_for_live_keys_only(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let mut used = key("0001-vers", "acme", "live", "VERSaaa1");
    used_at(&mut used, t - TimeDelta::minutes(3));
    let changed = key("0002-vers", "acme", "live", "VERSbbb1");
    let deleted = key("0003-vers", "acme", "live", "VERSccc1");
    for k in [&used, &changed, &deleted] {
        store
            .insert_key(k, &Actor::default())
            .await
            .expect("insert");
    }
    let change = |k: &ApiKey, update: KeyUpdate| {
        let store = store.clone();
        let id = k.id.clone();
        async move {
            store
                .update_key(&id, 1, &update, t, &Actor::default(), None)
                .await
                .expect("change")
        }
    };
    assert_eq!(
        change(&changed, KeyUpdate::Revoke { reason: None })
            .await
            .version,
        2
    );
    change(
        &deleted,
        KeyUpdate::Delete {
            purge_at: t + TimeDelta::days(1),
        },
    )
    .await;
    store
        .record_last_used(&[LastUsed {
            key_id: used.id.clone().into(),
            lookup_id: "VERSaaa1".into(),
            at: t,
        }])
        .await
        .expect("record use");

    let mut got = store
        .current_versions(&[&used.id, &changed.id, &deleted.id, "0009-none"])
        .await
        .expect("versions");
    got.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let expected = |k: &ApiKey, version, last_used_at| StoredVersion {
        key_id: k.id.clone(),
        version,
        last_used_at,
    };
    assert_eq!(
        got,
        vec![expected(&used, 1, Some(t)), expected(&changed, 2, None)],
        "deleted and unknown keys are left out"
    );

    // More ids than one statement holds, the live ones last: all answered.
    let mut many: Vec<String> = (0..1_203).map(|i| format!("9{i:04}-none")).collect();
    many.push(used.id.clone());
    many.push(changed.id.clone());
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let got = store.current_versions(&many).await.expect("versions");
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(store.current_versions(&[]).await.expect("none").is_empty());
}

/// The one-row check renewals ask first: yes only when every pair names a
/// live key at exactly that version; any change, deletion, unknown id or
/// contradiction among the pairs is a no, however many ids are asked.
async fn versions_unchanged_only_when_every_key_is_at_its_version(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let keys: Vec<ApiKey> = (0..3)
        .map(|i| {
            key(
                &format!("000{i}-same"),
                "acme",
                "live",
                &format!("SAMEaaa{i}"),
            )
        })
        .collect();
    for k in &keys {
        store
            .insert_key(k, &Actor::default())
            .await
            .expect("insert");
    }
    let [a, b, c] = [&keys[0], &keys[1], &keys[2]];
    let unchanged = |pairs: Vec<(&str, u64)>| {
        let store = store.clone();
        let pairs: Vec<(String, u64)> = pairs.into_iter().map(|(i, v)| (i.to_owned(), v)).collect();
        async move {
            let pairs: Vec<(&str, u64)> = pairs.iter().map(|(i, v)| (i.as_str(), *v)).collect();
            store.versions_unchanged(&pairs).await.expect("check")
        }
    };
    assert!(unchanged(vec![(&a.id, 1), (&b.id, 1), (&c.id, 1)]).await);
    assert!(unchanged(vec![]).await, "nothing asked, nothing moved");
    assert!(
        unchanged(vec![(&a.id, 1), (&a.id, 1)]).await,
        "one key through two credentials"
    );
    assert!(
        !unchanged(vec![(&a.id, 1), (&a.id, 2)]).await,
        "two versions of one key"
    );
    assert!(
        !unchanged(vec![(&a.id, 1), ("0009-none", 1)]).await,
        "unknown id"
    );
    assert!(
        !unchanged(vec![(&a.id, u64::MAX)]).await,
        "beyond any stored version"
    );

    let revoked = store
        .update_key(
            &b.id,
            1,
            &KeyUpdate::Revoke { reason: None },
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("revoke");
    assert_eq!(revoked.version, 2);
    assert!(!unchanged(vec![(&a.id, 1), (&b.id, 1)]).await, "b moved");
    assert!(
        !unchanged(vec![(&a.id, 2), (&b.id, 1)]).await,
        "the versions, not their sum, must match"
    );
    assert!(unchanged(vec![(&a.id, 1), (&b.id, 2)]).await);
    store
        .update_key(
            &c.id,
            1,
            &KeyUpdate::Delete {
                purge_at: t + TimeDelta::days(1),
            },
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("delete");
    assert!(!unchanged(vec![(&a.id, 1), (&c.id, 2)]).await, "deleted");

    // More keys than one statement holds: every statement must agree.
    let many: Vec<ApiKey> = (0..1_100)
        .map(|i| {
            key(
                &format!("1{i:04}-many"),
                "acme",
                "live",
                &format!("M{i:07}"),
            )
        })
        .collect();
    store.insert_keys(&many).await.expect("insert many");
    let pairs = |moved: Option<&str>| -> Vec<(&str, u64)> {
        many.iter()
            .map(|k| {
                (
                    k.id.as_str(),
                    if Some(k.id.as_str()) == moved { 2 } else { 1 },
                )
            })
            .chain([(a.id.as_str(), 1)])
            .collect()
    };
    assert!(unchanged(pairs(None)).await, "1 101 keys, all unchanged");
    let last = many.last().expect("many").id.clone();
    assert!(
        !unchanged(pairs(Some(&last))).await,
        "one key ahead of storage among 1 101"
    );
    store
        .update_key(
            &last,
            1,
            &KeyUpdate::Revoke { reason: None },
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("revoke one of many");
    assert!(!unchanged(pairs(None)).await, "one of 1 101 moved");
    assert!(unchanged(pairs(Some(&last))).await);
}

fn counts(allowed: u64, denied_rate_limited: u64, denied_other: u64) -> UsageCounts {
    UsageCounts {
        allowed,
        denied_rate_limited,
        denied_other,
    }
}

/// The count flush writes due last uses with the counts, in one
/// transaction: a failure of either part writes neither.
async fn last_uses_and_counts_are_written_together_or_not_at_all(db: &TestDatabase) {
    let store = open(db).await;
    let t = now();
    let k = key("0001-together", "acme", "live", "TOGETHR1");
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    let h = t.timestamp() - t.timestamp().rem_euclid(3600);
    let used = |at| LastUsed {
        key_id: k.id.clone().into(),
        lookup_id: "TOGETHR1".into(),
        at,
    };
    let hourly = |c| HourlyUsage {
        key_id: k.id.clone().into(),
        hour_start: h,
        counts: c,
    };
    store
        .record_usage(
            &[used(t - TimeDelta::minutes(2))],
            &[hourly(counts(2, 1, 0))],
        )
        .await
        .expect("record both");
    let got = store.get_key(&k.id).await.expect("get").expect("present");
    assert_eq!(got.last_used_at, Some(t - TimeDelta::minutes(2)));
    let buckets = || async {
        store
            .usage_buckets(&k.id, h, h + 3600)
            .await
            .expect("read")
            .iter()
            .map(|b| b.counts)
            .collect::<Vec<_>>()
    };
    assert_eq!(buckets().await, [counts(2, 1, 0)]);

    // The counts' table is away: the statement after the last uses fails,
    // and the last uses before it are rolled back.
    let backend = store.connection().get_database_backend();
    let rename = |from: &str, to: &str| {
        Statement::from_string(backend, format!("ALTER TABLE {from} RENAME TO {to}"))
    };
    store
        .connection()
        .execute_raw(rename("key_usage_hourly", "key_usage_hourly_aside"))
        .await
        .expect("rename away");
    let failed = store
        .record_usage(&[used(t)], &[hourly(counts(5, 0, 0))])
        .await;
    store
        .connection()
        .execute_raw(rename("key_usage_hourly_aside", "key_usage_hourly"))
        .await
        .expect("rename back");
    assert!(failed.is_err(), "{failed:?}");
    let got = store.get_key(&k.id).await.expect("get").expect("present");
    assert_eq!(
        got.last_used_at,
        Some(t - TimeDelta::minutes(2)),
        "the last use went back with the counts"
    );
    assert_eq!(buckets().await, [counts(2, 1, 0)]);

    // Retried, both land once.
    store
        .record_usage(&[used(t)], &[hourly(counts(5, 0, 0))])
        .await
        .expect("retry");
    let got = store.get_key(&k.id).await.expect("get").expect("present");
    assert_eq!(got.last_used_at, Some(t));
    assert_eq!(buckets().await, [counts(7, 1, 0)]);
    store.record_usage(&[], &[]).await.expect("nothing");
}

/// Two replicas add to the same key-hours: the stored rows are the sums;
/// reads see only the asked key and hours; pruning drops old hours only.
async fn usage_counts_add_up_across_replicas_and_prune(db: &TestDatabase) {
    let replica_a = open(db).await;
    let replica_b = Store::connect(&db.url).await.expect("second store");
    let h = 1_800_000_000; // a multiple of 3600: the start of an hour
    let hourly = |key_id: &str, hour_start, c| HourlyUsage {
        key_id: key_id.to_owned().into(),
        hour_start,
        counts: c,
    };
    replica_a
        .add_usage_counts(&[
            hourly("k1", h, counts(3, 1, 0)),
            hourly("k1", h, counts(2, 0, 1)),
            hourly("k1", h - 3600, counts(7, 0, 0)),
            hourly("k2", h, counts(1, 0, 0)),
            hourly("k2", h - 7200, counts(0, 0, 0)),
        ])
        .await
        .expect("add a");
    replica_b
        .add_usage_counts(&[hourly("k1", h, counts(10, 20, 30))])
        .await
        .expect("add b");
    replica_b.add_usage_counts(&[]).await.expect("add nothing");
    let k1 = replica_b
        .usage_buckets("k1", h - 7200, h + 3600)
        .await
        .expect("read");
    assert_eq!(
        k1,
        [
            UsageBucket {
                hour_start: h - 3600,
                counts: counts(7, 0, 0)
            },
            UsageBucket {
                hour_start: h,
                counts: counts(15, 21, 31)
            },
        ]
    );
    // The end is exclusive; an empty count makes no row.
    let k2 = replica_a
        .usage_buckets("k2", h - 7200, h)
        .await
        .expect("read");
    assert!(k2.is_empty(), "{k2:?}");
    assert!(
        replica_a
            .usage_buckets("nobody", 0, i64::MAX)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(replica_a.prune_usage(h).await.expect("prune"), 1);
    let k1 = replica_a
        .usage_buckets("k1", 0, i64::MAX)
        .await
        .expect("read");
    assert_eq!(k1.len(), 1);
    assert_eq!(k1[0].hour_start, h);
    assert_eq!(replica_a.prune_usage(h).await.expect("prune again"), 0);
}

/// The primary key's columns of `table`, in order.
async fn primary_key(store: &Store, table: &str) -> Vec<String> {
    let backend = store.connection().get_database_backend();
    let sql = match backend {
        sea_orm::DbBackend::Postgres => {
            "SELECT a.attname AS name FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)"
        }
        _ => "SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk",
    };
    store
        .connection()
        .query_all_raw(Statement::from_sql_and_values(backend, sql, [table.into()]))
        .await
        .expect("primary key")
        .iter()
        .map(|row| row.try_get("", "name").expect("name"))
        .collect()
}

/// Migration 7 re-keys `key_usage_hourly` by hour first and keeps every
/// row; reads and purges find a key's rows hour by hour, so ranges that
/// start off an hour boundary, reach past the stored hours or hold none,
/// and keys with rows in many hours among other keys' rows, all answer
/// as before. Down and up again keep the rows too.
async fn migration_7_keys_hourly_counts_by_hour(db: &TestDatabase) {
    use sea_orm_migration::MigratorTrait;

    let store = Store::connect(&db.url).await.expect("connect");
    let conn = store.connection();
    crate::migration::Migrator::up(conn, Some(6))
        .await
        .expect("migrations 1-6");
    assert_eq!(
        primary_key(&store, "key_usage_hourly").await,
        ["key_id", "hour_start"]
    );
    let h = 1_800_000_000; // the start of an hour
    let (gone, kept) = (
        key("0001-purged", "acme", "live", "HOURgon1"),
        key("0002-kept", "acme", "live", "HOURkep1"),
    );
    let backend = conn.get_database_backend();
    for (key_id, hour_start, allowed) in [
        (&gone.id, h, 1),
        (&gone.id, h + 3600, 2),
        (&gone.id, h + 5 * 3600, 3),
        (&kept.id, h - 3600, 10),
        (&kept.id, h + 3600, 20),
        (&kept.id, h + 9 * 3600, 30),
    ] {
        conn.execute_raw(Statement::from_sql_and_values(
            backend,
            "INSERT INTO key_usage_hourly (key_id, hour_start, allowed, denied_rate_limited, denied_other) \
             VALUES ($1, $2, $3, 0, 0)",
            [key_id.as_str().into(), hour_start.into(), allowed.into()],
        ))
        .await
        .expect("row in the old layout");
    }
    store.migrate().await.expect("migration 7");
    assert_eq!(
        primary_key(&store, "key_usage_hourly").await,
        ["hour_start", "key_id"]
    );
    let allowed = |buckets: Vec<UsageBucket>| -> Vec<(i64, u64)> {
        buckets
            .iter()
            .map(|b| (b.hour_start, b.counts.allowed))
            .collect()
    };
    let read = |key_id: &str, from, to| {
        let (store, key_id) = (store.clone(), key_id.to_owned());
        async move { allowed(store.usage_buckets(&key_id, from, to).await.expect("read")) }
    };
    let every_kept = vec![(h - 3600, 10), (h + 3600, 20), (h + 9 * 3600, 30)];
    assert_eq!(read(&kept.id, 0, i64::MAX).await, every_kept);
    assert_eq!(read(&kept.id, i64::MIN, i64::MAX).await, every_kept);
    assert_eq!(
        read(&gone.id, h, h + 5 * 3600).await,
        [(h, 1), (h + 3600, 2)],
        "the end is exclusive"
    );
    assert_eq!(
        read(&gone.id, h + 1, i64::MAX).await,
        [(h + 3600, 2), (h + 5 * 3600, 3)]
    );
    assert_eq!(read(&gone.id, h - 1, h + 1).await, [(h, 1)]);
    assert!(
        read(&gone.id, h + 10 * 3600, i64::MAX).await.is_empty(),
        "past the stored hours"
    );
    assert!(
        read(&gone.id, 0, h).await.is_empty(),
        "before the key's first hour"
    );
    assert!(
        read(&gone.id, h + 3600, h).await.is_empty(),
        "an empty range"
    );

    // Down and up again: the rows stay, and so do the answers.
    crate::migration::Migrator::down(conn, Some(1))
        .await
        .expect("migration 7 down");
    assert_eq!(
        primary_key(&store, "key_usage_hourly").await,
        ["key_id", "hour_start"]
    );
    assert_eq!(read(&kept.id, 0, i64::MAX).await, every_kept);
    store.migrate().await.expect("migration 7 again");
    assert_eq!(read(&kept.id, 0, i64::MAX).await, every_kept);

    // A purge takes the purged key's rows of every hour, and no other's.
    for k in [&gone, &kept] {
        store
            .insert_key(k, &Actor::default())
            .await
            .expect("insert");
    }
    let t = now();
    store
        .update_key(
            &gone.id,
            1,
            &KeyUpdate::Delete {
                purge_at: t - TimeDelta::seconds(1),
            },
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("delete");
    assert_eq!(store.purge_deleted(t).await.expect("purge"), 1);
    assert!(read(&gone.id, 0, i64::MAX).await.is_empty());
    assert_eq!(read(&kept.id, 0, i64::MAX).await, every_kept);

    // With no rows at all, an unbounded range reads nothing (and ends).
    store.prune_usage(i64::MAX).await.expect("prune everything");
    assert!(read(&kept.id, 0, i64::MAX).await.is_empty());
    assert_eq!(store.purge_deleted(t).await.expect("purge nothing"), 0);
}

/// Replicas flushing counts for the same keys at the same time, many
/// times over: no update is lost and nothing deadlocks.
async fn concurrent_usage_flushes_lose_nothing(db: &TestDatabase) {
    let store = open(db).await;
    let h = 1_800_000_000; // a multiple of 3600: the start of an hour
    let mut handles = Vec::new();
    for replica in 0..4 {
        let store = Store::connect(&db.url).await.expect("replica store");
        handles.push(tokio::spawn(async move {
            for round in 0..10u64 {
                // Each replica walks the keys in another order; storage sorts.
                let mut batch: Vec<HourlyUsage> = (0..50)
                    .map(|i| HourlyUsage {
                        key_id: format!("key-{i:02}").into(),
                        hour_start: h,
                        counts: counts(1, round % 2, 0),
                    })
                    .collect();
                if replica % 2 == 1 {
                    batch.reverse();
                }
                store.add_usage_counts(&batch).await.expect("add");
            }
        }));
    }
    for handle in handles {
        handle.await.expect("replica task");
    }
    for i in 0..50 {
        let got = store
            .usage_buckets(&format!("key-{i:02}"), h, h + 3600)
            .await
            .expect("read");
        assert_eq!(got[0].counts, counts(40, 20, 0), "key-{i:02}");
    }
}

async fn rate_usage_is_shared_between_stores(db: &TestDatabase) {
    let replica_a = open(db).await;
    let replica_b = Store::connect(&db.url).await.expect("second store");
    let w = 1_800_000_000;
    let totals = replica_a
        .add_rate_usage(&[
            ("k1".into(), w, 5),
            ("k2".into(), w, 1),
            ("k1".into(), w - 3600, 7),
        ])
        .await
        .expect("add a");
    assert_eq!(totals, [5, 1, 7]);
    let totals = replica_b
        .add_rate_usage(&[
            ("k1".into(), w, 3),
            ("k1".into(), w, 2),
            ("k3".into(), w, 4),
        ])
        .await
        .expect("add b");
    // Duplicates in one batch are merged: each gets the total after the batch.
    assert_eq!(totals, [10, 10, 4]);
    assert_eq!(
        replica_b.add_rate_usage(&[]).await.expect("empty"),
        Vec::<u64>::new()
    );

    assert_eq!(replica_a.prune_rate_windows(w).await.expect("prune"), 1);
    assert_eq!(
        replica_a.prune_rate_windows(w).await.expect("prune again"),
        0
    );
    let totals = replica_a
        .add_rate_usage(&[("k1".into(), w - 3600, 1), ("k1".into(), w, 0)])
        .await
        .expect("add after prune");
    assert_eq!(totals, [1, 10]);
}

async fn migrate_twice_is_idempotent(db: &TestDatabase) {
    let store = open(db).await;
    let k = key("0001-migrate", "acme", "live", "MIGRATE1");
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    store.migrate().await.expect("second migrate");
    Store::connect(&db.url)
        .await
        .expect("connect")
        .migrate()
        .await
        .expect("migrate from another store");
    assert_eq!(store.get_key(&k.id).await.expect("get"), Some(k));
    store.ping().await.expect("ping");
}

async fn corrupt_rows_are_reported(db: &TestDatabase) {
    let store = open(db).await;
    let backend = store.connection().get_database_backend();
    let exec = |sql: &str, values: Vec<sea_orm::Value>| {
        let store = store.clone();
        let stmt = Statement::from_sql_and_values(backend, sql, values);
        async move {
            store
                .connection()
                .execute_raw(stmt)
                .await
                .expect("corrupt the row");
        }
    };
    let cases: [(&str, &str, sea_orm::Value, &str); 6] = [
        (
            "CORRUPT1",
            "UPDATE api_keys SET scopes = $1 WHERE id = $2",
            "not json".into(),
            "api_keys.scopes",
        ),
        (
            "CORRUPT2",
            "UPDATE api_keys SET scopes = $1 WHERE id = $2",
            r#"["no spaces allowed !"]"#.into(),
            "api_keys.scopes",
        ),
        (
            "CORRUPT3",
            "UPDATE api_keys SET ip_allowlist = $1 WHERE id = $2",
            r#"["300.1.1.1/8"]"#.into(),
            "api_keys.ip_allowlist",
        ),
        (
            "CORRUPT4",
            "UPDATE api_keys SET state = $1 WHERE id = $2",
            "paused".into(),
            "api_keys.state",
        ),
        (
            "CORRUPT5",
            "UPDATE credentials SET salt = $1 WHERE key_id = $2",
            vec![0u8; 3].into(),
            "credentials.salt",
        ),
        (
            "CORRUPT6",
            "UPDATE credentials SET hash = $1 WHERE key_id = $2",
            vec![0u8; 31].into(),
            "credentials.hash",
        ),
    ];
    for (lookup, sql, value, column) in cases {
        let k = key(&format!("key-{lookup}"), "acme", "live", lookup);
        store
            .insert_key(&k, &Actor::default())
            .await
            .expect("insert");
        exec(sql, vec![value, k.id.clone().into()]).await;
        let err = store.get_key(&k.id).await.expect_err("corrupt");
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains(column)),
            "{column}: {err:?}"
        );
        let err = store.find_by_lookup_id(lookup).await.expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    }
    let err = store
        .list_keys(&KeyFilter::default(), None, 10, now())
        .await
        .expect_err("corrupt page");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

async fn listen_matches_backend(db: &TestDatabase) {
    let store = open(db).await;
    let listener = store.listen().await.expect("listen");
    match store.backend() {
        Backend::Sqlite => assert!(listener.is_none()),
        Backend::Postgres => assert!(listener.is_some()),
    }
    // Without listeners a heartbeat is harmless on both backends.
    store.send_heartbeat().await.expect("heartbeat");
}

#[tokio::test]
async fn unsupported_url_is_rejected() {
    let err = Store::connect("mysql://localhost/x")
        .await
        .expect_err("unsupported");
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err:?}");
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let store = Store::connect("sqlite::memory:").await.expect("connect");
    store.migrate().await.expect("migrate");
    assert_eq!(store.backend(), Backend::Sqlite);
    let k = key("0001-mem", "acme", "live", "MEMORY01");
    store
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    assert_eq!(store.get_key(&k.id).await.expect("get"), Some(k));
}

#[tokio::test]
async fn unreachable_postgres_is_unavailable() {
    // Nothing listens on port 1.
    let started = std::time::Instant::now();
    let err = Store::connect("postgres://postgres:x@127.0.0.1:1/postgres")
        .await
        .expect_err("unreachable");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// PostgreSQL only: a change committed through one store reaches the
/// listener of another within a second, and not before the commit.
#[tokio::test]
async fn postgres_change_notifications() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let replica_a = open(&db).await;
    let replica_b = Store::connect(&db.url).await.expect("second store");
    let mut listener = replica_a
        .listen()
        .await
        .expect("listen")
        .expect("postgres listener");

    let k = key("0001-notify", "acme", "live", "NOTIFY01");
    replica_b
        .insert_key(&k, &Actor::default())
        .await
        .expect("insert");
    let change = tokio::time::timeout(Duration::from_secs(1), listener.next())
        .await
        .expect("insert notification within a second")
        .expect("change");
    assert_eq!(
        change,
        Change::Key {
            key_id: k.id.clone(),
            version: 1,
            lookup_ids: vec!["NOTIFY01".into()]
        }
    );

    replica_b
        .update_key(
            &k.id,
            1,
            &KeyUpdate::SetState(KeyState::Disabled),
            now(),
            &Actor::default(),
            None,
        )
        .await
        .expect("update");
    let change = tokio::time::timeout(Duration::from_secs(1), listener.next())
        .await
        .expect("update notification within a second")
        .expect("change");
    assert_eq!(
        change,
        Change::Key {
            key_id: k.id.clone(),
            version: 2,
            lookup_ids: vec!["NOTIFY01".into()]
        }
    );

    let t = now();
    replica_b
        .rotate_key(
            &k.id,
            2,
            &credential("NOTIFY02", t),
            t,
            t,
            &Actor::default(),
            None,
        )
        .await
        .expect("rotate");
    let change = tokio::time::timeout(Duration::from_secs(1), listener.next())
        .await
        .expect("rotate notification within a second")
        .expect("change");
    assert_eq!(
        change,
        Change::Key {
            key_id: k.id.clone(),
            version: 3,
            lookup_ids: vec!["NOTIFY01".into(), "NOTIFY02".into()]
        }
    );

    // The notification sent by the mutating methods is held until commit.
    let txn = replica_b.connection().begin().await.expect("begin");
    crate::notify::notify_in(&txn, &k.id, 4, &["NOTIFY02".to_owned()])
        .await
        .expect("notify");
    let early = tokio::time::timeout(Duration::from_millis(300), listener.next()).await;
    assert!(early.is_err(), "notification before commit: {early:?}");
    txn.commit().await.expect("commit");
    let change = tokio::time::timeout(Duration::from_secs(1), listener.next())
        .await
        .expect("notification after commit")
        .expect("change");
    assert!(matches!(change, Change::Key { .. }));

    // Usage writes do not notify.
    replica_b
        .record_last_used(&[LastUsed {
            key_id: k.id.clone().into(),
            lookup_id: "NOTIFY02".into(),
            at: t,
        }])
        .await
        .expect("usage");
    replica_b
        .add_usage_counts(&[HourlyUsage {
            key_id: k.id.clone().into(),
            hour_start: 0,
            counts: UsageCounts {
                allowed: 1,
                ..UsageCounts::default()
            },
        }])
        .await
        .expect("usage counts");
    replica_b
        .add_rate_usage(&[(k.id.clone(), 0, 1)])
        .await
        .expect("rate usage");
    let quiet = tokio::time::timeout(Duration::from_millis(300), listener.next()).await;
    assert!(quiet.is_err(), "usage must not notify: {quiet:?}");

    // Heartbeats reach every listener, as a heartbeat, not a key change.
    replica_b.send_heartbeat().await.expect("heartbeat");
    let beat = tokio::time::timeout(Duration::from_secs(1), listener.next())
        .await
        .expect("heartbeat within a second")
        .expect("change");
    assert_eq!(beat, Change::Heartbeat);
}

/// A flush of 1,200 entries over 700 keys with two credentials each (more
/// than one statement's worth, with repeats per key and per credential)
/// sums counts and keeps the newest time for every row: rows that had no
/// time get the batch's newest, rows that already had a newer time keep it.
async fn large_usage_batches_span_chunks(db: &TestDatabase) {
    use std::collections::HashMap;
    let store = open(db).await;
    let t = now();
    let keys: Vec<ApiKey> = (0..700)
        .map(|i| {
            let mut k = key(
                &format!("0002-{i:04}"),
                "acme",
                "live",
                &format!("BIGa{i:04}"),
            );
            k.credentials
                .push(credential(&format!("BIGb{i:04}"), t - TimeDelta::days(1)));
            k
        })
        .collect();
    for k in &keys {
        store
            .insert_key(k, &Actor::default())
            .await
            .expect("insert");
    }
    // Expected state: per key its time, per credential its time.
    let mut key_state: HashMap<String, Option<DateTime<Utc>>> =
        keys.iter().map(|k| (k.id.clone(), None)).collect();
    let mut cred_state: HashMap<String, Option<DateTime<Utc>>> = keys
        .iter()
        .flat_map(|k| k.credentials.iter().map(|c| (c.lookup_id.clone(), None)))
        .collect();
    let mut apply = |usage: &[LastUsed]| {
        for u in usage {
            let k = key_state.get_mut(&*u.key_id).expect("known key");
            *k = (*k).max(Some(u.at));
            let c = cred_state.get_mut(&*u.lookup_id).expect("known credential");
            *c = (*c).max(Some(u.at));
        }
    };
    // Every third key was already used an hour in the future (by another
    // replica's flush): the batch below must not move those times back.
    let earlier: Vec<LastUsed> = keys
        .iter()
        .step_by(3)
        .map(|k| LastUsed {
            key_id: k.id.clone().into(),
            lookup_id: k.credentials[0].lookup_id.clone().into(),
            at: t + TimeDelta::hours(1),
        })
        .collect();
    store
        .record_last_used(&earlier)
        .await
        .expect("record earlier");
    apply(&earlier);
    let usage: Vec<LastUsed> = (0..1200)
        .map(|j| {
            let k = &keys[j % 700];
            LastUsed {
                key_id: k.id.clone().into(),
                lookup_id: k.credentials[(j / 7) % 2].lookup_id.clone().into(),
                at: t - TimeDelta::microseconds(((j * 13) % 17) as i64 * 250_001),
            }
        })
        .collect();
    store.record_last_used(&usage).await.expect("record");
    apply(&usage);
    // Counts for the same keys, 1,200 rows over two hours, in one call.
    let h = t.timestamp() - t.timestamp() % 3600;
    let hourly: Vec<HourlyUsage> = (0..1200)
        .map(|j| HourlyUsage {
            key_id: keys[j % 700].id.clone().into(),
            hour_start: h - 3600 * (j % 2) as i64,
            counts: counts(1 + (j % 5) as u64, (j % 3) as u64, 0),
        })
        .collect();
    store.add_usage_counts(&hourly).await.expect("counts");
    let mut count_state: HashMap<String, UsageCounts> = HashMap::new();
    for u in &hourly {
        count_state
            .entry(u.key_id.to_string())
            .or_default()
            .merge(&u.counts);
    }

    let stored = store
        .list_keys(&KeyFilter::default(), None, 1000, t)
        .await
        .expect("list");
    assert_eq!(stored.len(), 700);
    let mut untouched_credentials = 0;
    for got in &stored {
        assert_eq!(got.last_used_at, key_state[&got.id], "{}", got.id);
        for c in &got.credentials {
            assert_eq!(c.last_used_at, cred_state[&c.lookup_id], "{}", c.lookup_id);
            untouched_credentials += usize::from(c.last_used_at.is_none());
        }
    }
    for got in stored.iter().step_by(37) {
        let mut total = UsageCounts::default();
        for bucket in store
            .usage_buckets(&got.id, h - 3600, h + 3600)
            .await
            .expect("buckets")
        {
            total.merge(&bucket.counts);
        }
        assert_eq!(total, count_state[&got.id], "{}", got.id);
    }
    // The data set exercises every case: credentials never used, and keys
    // whose stored time is newer than the batch.
    assert!(untouched_credentials > 0);
    assert_eq!(stored[0].last_used_at, Some(t + TimeDelta::hours(1)));
}

/// 1,500 deltas (with repeated pairs) in one call: totals come back in input
/// order, and add up across calls and across two stores.
async fn large_rate_batches_span_chunks(db: &TestDatabase) {
    use std::collections::HashMap;
    let replica_a = open(db).await;
    let replica_b = Store::connect(&db.url).await.expect("second store");
    let w = 1_800_000_000;
    // j and j + 1000 name the same (key, window): 500 repeated pairs.
    let deltas: Vec<(String, i64, u64)> = (0..1500)
        .map(|j| {
            let i = j % 1000;
            (
                format!("key-{:04}", i / 2),
                w - 3600 * (i % 2) as i64,
                1 + (j % 4) as u64,
            )
        })
        .collect();
    let mut sums: HashMap<(String, i64), u64> = HashMap::new();
    for (key_id, window, delta) in &deltas {
        *sums.entry((key_id.clone(), *window)).or_default() += delta;
    }
    let expected = |times: u64| -> Vec<u64> {
        deltas
            .iter()
            .map(|(k, w, _)| times * sums[&(k.clone(), *w)])
            .collect()
    };
    let totals = replica_a.add_rate_usage(&deltas).await.expect("add a");
    assert_eq!(totals, expected(1));
    let totals = replica_b.add_rate_usage(&deltas).await.expect("add b");
    assert_eq!(totals, expected(2));
    let again = replica_a.add_rate_usage(&deltas[..1]).await.expect("again");
    assert_eq!(
        again,
        [2 * sums[&(deltas[0].0.clone(), deltas[0].1)] + deltas[0].2]
    );
}
