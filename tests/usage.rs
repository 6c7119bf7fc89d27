//! Key usage end to end, on both backends: GetKeyUsage counts every outcome
//! of a recognised key per hour (from memory before a flush, from storage
//! after, never twice), enforces GetKey's rights and refuses bad ranges by
//! field; `last_used_at` is written once per precision; counts and last use
//! survive a graceful stop.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use keygate::{Client, v1 as pb};
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;
use tonic::Code;

on_both_backends!(
    get_key_usage_counts_every_outcome_once,
    get_key_usage_enforces_rights_and_ranges,
    last_used_is_written_once_per_precision,
    usage_survives_a_graceful_stop,
    racing_requests_and_flushes_lose_no_count,
);

async fn usage(client: &mut Client, key_id: &str) -> Vec<pb::UsageBucket> {
    client
        .keys
        .get_key_usage(pb::GetKeyUsageRequest {
            key_id: key_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("get key usage")
        .into_inner()
        .buckets
}

/// (allowed, denied_rate_limited, denied_other) over all buckets.
fn totals(buckets: &[pb::UsageBucket]) -> (u64, u64, u64) {
    buckets.iter().fold((0, 0, 0), |(a, r, o), b| {
        (a + b.allowed, r + b.denied_rate_limited, o + b.denied_other)
    })
}

/// Three allowed, two over the limit, two denied otherwise (scope,
/// environment), and two that are nobody's usage (a forged key with a
/// valid checksum, a malformed one).
async fn use_key(server: &TestServer, secret: &str) {
    let mut client = server.client().await;
    for _ in 0..3 {
        assert_allowed(&authorize(&mut client, authz(secret, &["dns:read"])).await);
    }
    for _ in 0..2 {
        assert_denied(
            &authorize(&mut client, authz(secret, &["dns:read"])).await,
            pb::DenyReason::RateLimited,
        );
    }
    assert_denied(
        &authorize(&mut client, authz(secret, &["dns:write"])).await,
        pb::DenyReason::ScopeMissing,
    );
    let mut other_env = authz(secret, &["dns:read"]);
    other_env.environment = "test".into();
    assert_denied(
        &authorize(&mut client, other_env).await,
        pb::DenyReason::EnvironmentMismatch,
    );
    let (forged, _) = keygate_domain::hashing::issue_credential(
        &keygate_domain::keyformat::KeyFormat::default(),
        "live",
        Utc::now(),
    );
    assert_denied(
        &authorize(&mut client, authz(&forged.secret, &["dns:read"])).await,
        pb::DenyReason::KeyInvalid,
    );
    assert_denied(
        &authorize(&mut client, authz("kg_live_madeup", &["dns:read"])).await,
        pb::DenyReason::KeyInvalid,
    );
}

fn limited_key(name: &str) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        rate_limit_per_hour: Some(3),
        ..new_key(name, &["dns:read"])
    }
}

async fn get_key_usage_counts_every_outcome_once(db: TestDatabase) {
    // Counts reach storage only at the stop: first they are read from
    // memory, then (after a restart) from storage alone.
    let config = Config {
        usage_count_flush_interval: Duration::from_secs(3600),
        ..test_config(&db)
    };
    let server = TestServer::start(config.clone()).await;
    let admin_key = server.admin_key.clone();
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, limited_key("counted")).await;
    let before = Utc::now();
    use_key(&server, &secret).await;

    // Right away: this replica's counts, not yet written.
    let buckets = usage(&mut admin, &key.key_id).await;
    assert_eq!(buckets.len(), 25, "the last 24 hours and the current one");
    assert_eq!(totals(&buckets), (3, 2, 2));
    let current = buckets.last().expect("current hour");
    assert_eq!((current.allowed, current.denied_rate_limited), (3, 2));
    let hour = |ts: &prost_types::Timestamp| ts.seconds;
    let now_hour = before.timestamp() - before.timestamp().rem_euclid(3600);
    let current_start = hour(current.start_time.as_ref().expect("start"));
    assert!(
        current_start == now_hour || current_start == now_hour + 3600,
        "the newest bucket is the current hour"
    );
    for pair in buckets.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(
            hour(b.start_time.as_ref().unwrap()) - hour(a.start_time.as_ref().unwrap()),
            3600
        );
    }

    // After the stop wrote them: the same figures, from storage alone.
    server.stop().await;
    let store = keygate_persistence::Store::connect(&db.url)
        .await
        .expect("store");
    let stored = store
        .usage_buckets(&key.key_id, 0, i64::MAX)
        .await
        .expect("stored usage");
    let allowed: u64 = stored.iter().map(|b| b.counts.allowed).sum();
    assert_eq!(allowed, 3);
    let server = TestServer::restart(config, admin_key).await;
    let mut admin = server.admin().await;
    assert_eq!(totals(&usage(&mut admin, &key.key_id).await), (3, 2, 2));

    // A range that ends before the use shows nothing; one that covers it,
    // everything.
    let range = |start: chrono::DateTime<Utc>, end: chrono::DateTime<Utc>| pb::GetKeyUsageRequest {
        key_id: key.key_id.clone(),
        start_time: Some(timestamp(start)),
        end_time: Some(timestamp(end)),
    };
    let earlier = admin
        .keys
        .get_key_usage(range(
            before - chrono::Duration::days(3),
            before - chrono::Duration::days(2),
        ))
        .await
        .unwrap()
        .into_inner()
        .buckets;
    assert!((24..=25).contains(&earlier.len()), "{}", earlier.len());
    assert_eq!(totals(&earlier), (0, 0, 0));
    let covering = admin
        .keys
        .get_key_usage(range(
            before - chrono::Duration::days(30),
            Utc::now() + chrono::Duration::seconds(1),
        ))
        .await
        .unwrap()
        .into_inner()
        .buckets;
    assert_eq!(totals(&covering), (3, 2, 2));
}

async fn get_key_usage_enforces_rights_and_ranges(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, _) = create(&mut admin, new_key("watched", &["dns:read"])).await;
    let (_, reader) = create(&mut admin, new_key("reader", &["keys:read"])).await;
    let (_, plain) = create(&mut admin, new_key("plain", &["dns:read"])).await;
    let (_, other_reader) = create(
        &mut admin,
        pb::CreateKeyRequest {
            owner_id: "globex".into(),
            ..new_key("their reader", &["keys:read"])
        },
    )
    .await;
    let request = |key_id: &str| pb::GetKeyUsageRequest {
        key_id: key_id.to_owned(),
        ..Default::default()
    };

    // Same rights as GetKey: a reader of the owner sees it…
    let mut as_reader = server.client_with(&reader).await;
    assert_eq!(usage(&mut as_reader, &key.key_id).await.len(), 25);
    // …no management key, a key without keys:read, another owner: not.
    let mut anonymous = server.client().await;
    assert_status(
        anonymous.keys.get_key_usage(request(&key.key_id)).await,
        Code::Unauthenticated,
        "MANAGEMENT_KEY_MISSING",
    );
    let mut as_plain = server.client_with(&plain).await;
    assert_status(
        as_plain.keys.get_key_usage(request(&key.key_id)).await,
        Code::PermissionDenied,
        "MISSING_RIGHT",
    );
    let mut as_other = server.client_with(&other_reader).await;
    assert_status(
        as_other.keys.get_key_usage(request(&key.key_id)).await,
        Code::NotFound,
        "KEY_NOT_FOUND",
    );
    assert_status(
        admin
            .keys
            .get_key_usage(request("0190b5a2-0000-7000-8000-00000000dead"))
            .await,
        Code::NotFound,
        "KEY_NOT_FOUND",
    );
    assert_invalid_field(admin.keys.get_key_usage(request("")).await, "key_id");

    // Bad ranges name the field, for a key that exists or not.
    let now = Utc::now();
    let with_range = |start: Option<chrono::DateTime<Utc>>, end: Option<chrono::DateTime<Utc>>| {
        pb::GetKeyUsageRequest {
            key_id: key.key_id.clone(),
            start_time: start.map(timestamp),
            end_time: end.map(timestamp),
        }
    };
    for (start, end) in [
        // End before start, and equal.
        (Some(now), Some(now - chrono::Duration::hours(1))),
        (Some(now), Some(now)),
        // Over 31 days.
        (
            Some(now - chrono::Duration::days(31) - chrono::Duration::seconds(1)),
            Some(now),
        ),
        // A start in the future with the default end (now).
        (Some(now + chrono::Duration::hours(2)), None),
    ] {
        assert_invalid_field(
            admin.keys.get_key_usage(with_range(start, end)).await,
            "end_time",
        );
    }
    let bad_nanos = prost_types::Timestamp {
        seconds: now.timestamp(),
        nanos: -1,
    };
    assert_invalid_field(
        admin
            .keys
            .get_key_usage(pb::GetKeyUsageRequest {
                key_id: key.key_id.clone(),
                start_time: Some(bad_nanos),
                end_time: None,
            })
            .await,
        "start_time",
    );
    let too_late = prost_types::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    };
    assert_invalid_field(
        admin
            .keys
            .get_key_usage(pb::GetKeyUsageRequest {
                key_id: key.key_id.clone(),
                start_time: None,
                end_time: Some(too_late),
            })
            .await,
        "end_time",
    );
    // Exactly 31 days is fine: 744 or 745 buckets (a partial first hour).
    let month = admin
        .keys
        .get_key_usage(with_range(
            Some(now - chrono::Duration::days(31)),
            Some(now),
        ))
        .await
        .unwrap()
        .into_inner()
        .buckets;
    assert!((744..=745).contains(&month.len()), "{}", month.len());
}

async fn last_used_is_written_once_per_precision(db: TestDatabase) {
    let config = Config {
        usage_flush_interval: Duration::from_millis(100),
        last_used_precision: Duration::from_secs(3600),
        ..test_config(&db)
    };
    let server = TestServer::start(config).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("precise", &["dns:read"])).await;
    let mut client = server.client().await;
    let store = keygate_persistence::Store::connect(&db.url)
        .await
        .expect("store");

    // The first use is stored within one flush interval.
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let stored = store.get_key(&key.key_id).await.unwrap().unwrap();
        if let Some(at) = stored.last_used_at {
            break at;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first use never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Later uses within the precision are not written again: ten flush
    // intervals of use leave the stored time, and GetKey, as they were.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..10 {
        assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = store.get_key(&key.key_id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(first));
    assert_eq!(stored.credentials[0].last_used_at, Some(first));
    let shown = get_key(&mut admin, &key.key_id).await;
    assert_eq!(
        shown.last_used_at.map(|t| t.seconds),
        Some(first.timestamp())
    );
    // Every request still counts.
    assert_eq!(totals(&usage(&mut admin, &key.key_id).await).0, 11);
}

async fn usage_survives_a_graceful_stop(db: TestDatabase) {
    let config = Config {
        // Nothing is written before the stop but by the stop itself.
        usage_flush_interval: Duration::from_secs(3600),
        usage_count_flush_interval: Duration::from_secs(3600),
        ..test_config(&db)
    };
    let server = TestServer::start(config.clone()).await;
    let admin_key = server.admin_key.clone();
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, limited_key("kept")).await;
    use_key(&server, &secret).await;
    let store = keygate_persistence::Store::connect(&db.url)
        .await
        .expect("store");
    assert!(
        store
            .usage_buckets(&key.key_id, 0, i64::MAX)
            .await
            .unwrap()
            .is_empty(),
        "written before the stop"
    );
    server.stop().await;

    let stored = store.get_key(&key.key_id).await.unwrap().unwrap();
    assert!(stored.last_used_at.is_some());
    assert!(stored.credentials[0].last_used_at.is_some());
    let server = TestServer::restart(config, admin_key).await;
    let mut admin = server.admin().await;
    assert_eq!(totals(&usage(&mut admin, &key.key_id).await), (3, 2, 2));
    // The rate limit's state is in memory only, but the counts are not.
    let shown = get_key(&mut admin, &key.key_id).await;
    assert_eq!(
        shown.last_used_at.map(|t| t.seconds),
        stored.last_used_at.map(|t| t.timestamp())
    );
}

/// Many tasks authorize the same key while both flushers run every few
/// milliseconds (taking the key's pending usage, writing, taking again):
/// after the stop, storage holds exactly one count per request, and the
/// key's last use.
async fn racing_requests_and_flushes_lose_no_count(db: TestDatabase) {
    let config = Config {
        usage_flush_interval: Duration::from_millis(5),
        usage_count_flush_interval: Duration::from_millis(7),
        last_used_precision: Duration::from_millis(1),
        ..test_config(&db)
    };
    let server = TestServer::start(config).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(
        &mut admin,
        pb::CreateKeyRequest {
            rate_limit_per_hour: Some(1_000_000),
            ..new_key("raced", &["dns:read"])
        },
    )
    .await;
    const TASKS: usize = 8;
    const CALLS: usize = 60;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = server.client().await;
        let secret = secret.clone();
        tasks.push(tokio::spawn(async move {
            for call in 0..CALLS {
                // Every fifth request is denied (scope): counted apart.
                let scope = if (task + call) % 5 == 0 {
                    "dns:write"
                } else {
                    "dns:read"
                };
                authorize(&mut client, authz(&secret, &[scope])).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    server.stop().await;
    let store = keygate_persistence::Store::connect(&db.url)
        .await
        .expect("store");
    let mut total = keygate_domain::usage::UsageCounts::default();
    for bucket in store
        .usage_buckets(&key.key_id, 0, i64::MAX)
        .await
        .expect("stored usage")
    {
        total.merge(&bucket.counts);
    }
    let denied = (0..TASKS)
        .flat_map(|t| (0..CALLS).map(move |c| (t + c) % 5 == 0))
        .filter(|d| *d)
        .count() as u64;
    assert_eq!(total.denied_other, denied);
    assert_eq!(total.allowed, (TASKS * CALLS) as u64 - denied);
    let stored = store.get_key(&key.key_id).await.unwrap().unwrap();
    assert!(stored.last_used_at.is_some());
}
