//! Several replicas on one PostgreSQL database: a change made through one
//! reaches the others' caches at once (LISTEN/NOTIFY), rate limits hold
//! across them, and a database outage leaves cached keys working and
//! invalidation working again afterwards.

mod common;

use std::time::{Duration, Instant};

use common::{proxy::Proxy, *};
use keygate::{Client, v1 as pb};
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn replica_config(url: &str) -> Config {
    Config {
        database_url: url.to_owned(),
        usage_flush_interval: Duration::from_millis(200),
        rate_limit_sync_interval: Duration::from_millis(100),
        // Far longer than any bound below: only notifications can explain a
        // fast propagation.
        cache_ttl: Duration::from_secs(300),
        ..Config::default()
    }
}

/// Polls `replica` until `key` gets `reason` or `bound` passes; returns how long it took.
async fn time_until_denied(
    replica: &mut Client,
    key: &str,
    reason: pb::DenyReason,
    bound: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let resp = authorize(replica, authz(key, &["dns:read"])).await;
        if resp.decision() == pb::Decision::Deny {
            assert_eq!(resp.reason(), reason, "{resp:?}");
            return start.elapsed();
        }
        assert!(
            start.elapsed() < bound,
            "replica still allows {key:.12}… after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Retries `call` while it answers UNAVAILABLE, for up to 10 s: right after
/// the database returns, the first new connections may still fail, and a
/// key the replica has never seen cannot be decided without one.
async fn until_available<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let start = Instant::now();
    loop {
        match call().await {
            Ok(value) => return value,
            Err(status)
                if status.code() == Code::Unavailable
                    && start.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("still failing after the database returned: {status:?}"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_reach_the_other_replica_at_once() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let a = TestServer::start(replica_config(&db.url)).await;
    let b = TestServer::restart(replica_config(&db.url), a.admin_key.clone()).await;
    let mut admin_a = a.admin().await;
    let mut on_b = b.client().await;
    let bound = Duration::from_secs(2);

    // Revocations, each on a key B has cached warm.
    let mut revocations = Vec::new();
    for i in 0..20 {
        let (key, secret) = create(&mut admin_a, new_key(&format!("r{i}"), &["dns:read"])).await;
        assert_allowed(&authorize(&mut on_b, authz(&secret, &["dns:read"])).await);
        assert_allowed(&authorize(&mut on_b, authz(&secret, &["dns:read"])).await);
        admin_a
            .keys
            .revoke_key(pb::RevokeKeyRequest {
                key_id: key.key_id,
                reason: String::new(),
                ..Default::default()
            })
            .await
            .unwrap();
        revocations
            .push(time_until_denied(&mut on_b, &secret, pb::DenyReason::KeyRevoked, bound).await);
    }
    revocations.sort();
    println!(
        "revoke through A → denied on B: p50 {:?}, p99 {:?}, max {:?} over {} keys",
        percentile(&revocations, 0.5),
        percentile(&revocations, 0.99),
        revocations.last().unwrap(),
        revocations.len()
    );

    // Disable, expiry and rotation travel the same way.
    let (key, secret) = create(&mut admin_a, new_key("d", &["dns:read"])).await;
    assert_allowed(&authorize(&mut on_b, authz(&secret, &["dns:read"])).await);
    admin_a
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    time_until_denied(&mut on_b, &secret, pb::DenyReason::KeyDisabled, bound).await;
    admin_a
        .keys
        .enable_key(pb::EnableKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let start = Instant::now();
    while authorize(&mut on_b, authz(&secret, &["dns:read"]))
        .await
        .decision()
        != pb::Decision::Allow
    {
        assert!(start.elapsed() < bound, "enable did not reach B");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(200);
    admin_a
        .keys
        .update_key_expiry(pb::UpdateKeyExpiryRequest {
            key_id: key.key_id.clone(),
            expires_at: Some(timestamp(soon)),
            ..Default::default()
        })
        .await
        .unwrap();
    time_until_denied(&mut on_b, &secret, pb::DenyReason::KeyExpired, bound).await;

    let (key, old) = create(&mut admin_a, new_key("rot", &["dns:read"])).await;
    assert_allowed(&authorize(&mut on_b, authz(&old, &["dns:read"])).await);
    let rotated = admin_a
        .keys
        .rotate_key(pb::RotateKeyRequest {
            key_id: key.key_id.clone(),
            grace_period: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    time_until_denied(&mut on_b, &old, pb::DenyReason::KeyExpired, bound).await;
    assert_allowed(&authorize(&mut on_b, authz(&rotated.secret, &["dns:read"])).await);

    // UpdateKey, DeleteKey and UndeleteKey too.
    let (key, secret) = create(&mut admin_a, new_key("upd", &["dns:read"])).await;
    assert_allowed(&authorize(&mut on_b, authz(&secret, &["dns:read"])).await);
    admin_a
        .keys
        .update_key(pb::UpdateKeyRequest {
            key: Some(pb::ApiKey {
                key_id: key.key_id.clone(),
                scopes: vec!["dns:write".to_owned()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["scopes".to_owned()],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    time_until_denied(&mut on_b, &secret, pb::DenyReason::ScopeMissing, bound).await;
    let (key, secret) = create(&mut admin_a, new_key("del", &["dns:read"])).await;
    assert_allowed(&authorize(&mut on_b, authz(&secret, &["dns:read"])).await);
    admin_a
        .keys
        .delete_key(pb::DeleteKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    time_until_denied(&mut on_b, &secret, pb::DenyReason::KeyInvalid, bound).await;
    admin_a
        .keys
        .undelete_key(pb::UndeleteKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .unwrap();
    let start = Instant::now();
    while authorize(&mut on_b, authz(&secret, &["dns:read"]))
        .await
        .decision()
        != pb::Decision::Allow
    {
        assert!(start.elapsed() < bound, "undelete did not reach B");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Replica B keeps loading a key (a 5 ms cache lifetime: background
/// refreshes and misses all the time, half of the keys cached beforehand)
/// while replica A revokes it. Once B denies the key, no later Authorize on
/// B allows it again: no load that read the key before the revocation puts
/// it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_one_replica_racing_loads_on_another_is_final() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let a = TestServer::start(replica_config(&db.url)).await;
    let b_config = Config {
        cache_ttl: Duration::from_millis(5),
        ..replica_config(&db.url)
    };
    let b = TestServer::restart(b_config, a.admin_key.clone()).await;
    let mut admin_a = a.admin().await;
    let on_b = b.client().await;
    let mut resurrections = Vec::new();
    let mut calls = 0usize;
    for i in 0..40 {
        let (key, secret) = create(&mut admin_a, new_key(&format!("x{i}"), &["dns:read"])).await;
        if i % 2 == 0 {
            let mut b_client = on_b.clone();
            assert_allowed(&authorize(&mut b_client, authz(&secret, &["dns:read"])).await);
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut loops = Vec::new();
        for _ in 0..3 {
            let (mut client, secret, stop) = (on_b.clone(), secret.clone(), stop.clone());
            loops.push(tokio::spawn(async move {
                let mut decisions = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    decisions.push(
                        authorize(&mut client, authz(&secret, &["dns:read"]))
                            .await
                            .decision(),
                    );
                }
                decisions
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        admin_a
            .keys
            .revoke_key(pb::RevokeKeyRequest {
                key_id: key.key_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        // Let B hear of it while the loops keep loading, then some more.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, std::sync::atomic::Ordering::Release);
        for task in loops {
            let decisions = task.await.unwrap();
            calls += decisions.len();
            // Allows, then denies; never an allow after the first deny.
            if let Some(first_deny) = decisions.iter().position(|d| *d == pb::Decision::Deny) {
                if decisions[first_deny..].contains(&pb::Decision::Allow) {
                    resurrections.push(key.key_id.clone());
                }
            } else {
                panic!(
                    "B never denied {} within 100 ms of the revocation",
                    key.key_id
                );
            }
        }
        let mut b_client = on_b.clone();
        let resp = authorize(&mut b_client, authz(&secret, &["dns:read"])).await;
        assert_denied(&resp, pb::DenyReason::KeyRevoked);
    }
    assert!(
        resurrections.is_empty(),
        "allowed again after a deny on B: {resurrections:?}"
    );
    println!("40 revocations on A raced by {calls} Authorize calls on B: none allowed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limit_holds_across_replicas() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let a = TestServer::start(replica_config(&db.url)).await;
    let b = TestServer::restart(replica_config(&db.url), a.admin_key.clone()).await;
    let mut admin = a.admin().await;
    let limit = 100;
    let (_, secret) = create(
        &mut admin,
        pb::CreateKeyRequest {
            rate_limit_per_hour: Some(limit),
            ..new_key("shared", &["dns:read"])
        },
    )
    .await;
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    // 25 requests a second, alternating replicas, syncing every 100 ms: each
    // replica hears of the other's requests at most a few requests late.
    // Alone, each would allow the full limit, 200 in all.
    let mut allowed = 0;
    for i in 0..130 {
        let replica = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        let resp = authorize(replica, authz(&secret, &["dns:read"])).await;
        match resp.decision() {
            pb::Decision::Allow => allowed += 1,
            _ => assert_eq!(resp.reason(), pb::DenyReason::RateLimited, "{resp:?}"),
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    println!("limit {limit}/h over two replicas: {allowed} allowed");
    assert!(allowed >= limit, "allowed only {allowed}");
    assert!(
        allowed <= limit + limit / 10,
        "allowed {allowed}, over 10% above the limit {limit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_keeps_cached_keys_working() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let proxy = Proxy::start(proxy::target_of(&db.url)).await;
    // A reaches the database through the proxy; B directly.
    let b = TestServer::start(replica_config(&db.url)).await;
    let a = TestServer::restart(replica_config(&proxy.url_for(&db.url)), b.admin_key.clone()).await;
    let mut admin_b = b.admin().await;
    let (_, cached) = create(&mut admin_b, new_key("cached", &["dns:read"])).await;
    let (revoked, revoked_secret) = create(&mut admin_b, new_key("revoked", &["dns:read"])).await;
    admin_b
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: revoked.key_id,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    let (later, later_secret) = create(&mut admin_b, new_key("revoked later", &["dns:read"])).await;
    // Let B's change notifications reach A before A caches these keys: a
    // late one would evict an entry A just loaded, and an evicted key cannot
    // be decided during the outage.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_a = a.client().await;
    let mut admin_a = a.admin().await;
    assert_allowed(&authorize(&mut on_a, authz(&cached, &["dns:read"])).await);
    assert_allowed(&authorize(&mut on_a, authz(&later_secret, &["dns:read"])).await);
    assert_denied(
        &authorize(&mut on_a, authz(&revoked_secret, &[])).await,
        pb::DenyReason::KeyRevoked,
    );
    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(a.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let management_health = |health: &mut HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "keygate.v1.KeyManagementService".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };

    proxy.cut();
    // Cached keys keep their answers; revoked ones stay denied.
    for _ in 0..5 {
        assert_allowed(&authorize(&mut on_a, authz(&cached, &["dns:read"])).await);
        assert_denied(
            &authorize(&mut on_a, authz(&revoked_secret, &[])).await,
            pb::DenyReason::KeyRevoked,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Management answers UNAVAILABLE, clearly.
    let status = assert_status(
        admin_a.keys.list_keys(pb::ListKeysRequest::default()).await,
        Code::Unavailable,
        "STORAGE_UNAVAILABLE",
    );
    assert!(
        status.message().contains("storage unavailable"),
        "{status:?}"
    );
    // Health turns NOT_SERVING for management, while Authorize stays SERVING.
    let start = Instant::now();
    while management_health(&mut health).await != ServingStatus::NotServing {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "health never turned NOT_SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let authz_health = health
        .check(HealthCheckRequest {
            service: "keygate.v1.AuthorizationService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(authz_health.status(), ServingStatus::Serving);
    // A key A has never seen cannot be decided without the database.
    let (_, unseen) = create(&mut admin_b, new_key("unseen", &[])).await;
    let status = on_a.authz.authorize(authz(&unseen, &[])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    // A revocation made while A was cut off is applied once A is back.
    admin_b
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: later.key_id.clone(),
            reason: String::new(),
            ..Default::default()
        })
        .await
        .unwrap();
    proxy.restore();
    let start = Instant::now();
    while management_health(&mut health).await != ServingStatus::Serving {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "health never returned to SERVING"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    time_until_denied(
        &mut on_a,
        &later_secret,
        pb::DenyReason::KeyRevoked,
        Duration::from_secs(10),
    )
    .await;
    let admin = admin_a.clone();
    until_available(|| {
        let mut admin = admin.clone();
        async move { admin.keys.list_keys(pb::ListKeysRequest::default()).await }
    })
    .await;
    assert_allowed(&authorize(&mut on_a, authz(&cached, &["dns:read"])).await);

    // Invalidation works again after the reconnect: a fresh revoke through B
    // reaches A quickly.
    let (k, s) = create(&mut admin_b, new_key("after", &["dns:read"])).await;
    let first = until_available(|| {
        let mut client = on_a.clone();
        let request = authz(&s, &["dns:read"]);
        async move { client.authz.authorize(request).await }
    })
    .await;
    assert_allowed(&first.into_inner());
    // Give the listener a moment to be LISTENing again before the change.
    let start = Instant::now();
    loop {
        admin_b
            .keys
            .disable_key(pb::DisableKeyRequest {
                key_id: k.key_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let resp = authorize(&mut on_a, authz(&s, &["dns:read"])).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let resp2 = authorize(&mut on_a, authz(&s, &["dns:read"])).await;
        if resp.decision() == pb::Decision::Deny || resp2.decision() == pb::Decision::Deny {
            break;
        }
        admin_b
            .keys
            .enable_key(pb::EnableKeyRequest {
                key_id: k.key_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "invalidation never resumed on A"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_stop_flushes_usage() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let config = Config {
        usage_flush_interval: Duration::from_secs(3600),
        usage_count_flush_interval: Duration::from_secs(3600),
        ..replica_config(&db.url)
    };
    let a = TestServer::start(config.clone()).await;
    let mut admin = a.admin().await;
    let (key, secret) = create(&mut admin, new_key("used", &["dns:read"])).await;
    let mut client = a.client().await;
    for _ in 0..3 {
        assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    }
    let store = keygate_persistence::Store::connect(&db.url).await.unwrap();
    let allowed = |buckets: Vec<keygate_domain::usage::UsageBucket>| {
        buckets.iter().map(|b| b.counts.allowed).sum::<u64>()
    };
    assert_eq!(
        allowed(store.usage_buckets(&key.key_id, 0, i64::MAX).await.unwrap()),
        0,
        "written before the stop"
    );
    a.stop().await;
    let stored = store.get_key(&key.key_id).await.unwrap().unwrap();
    assert!(stored.last_used_at.is_some());
    assert!(stored.credentials[0].last_used_at.is_some());
    assert_eq!(
        allowed(store.usage_buckets(&key.key_id, 0, i64::MAX).await.unwrap()),
        3
    );
}

/// Both replicas count requests of the same key in the same hour: their
/// counts add up in storage, and GetKeyUsage on either shows the sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_counts_of_every_replica_add_up() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let config = Config {
        usage_count_flush_interval: Duration::from_millis(100),
        ..replica_config(&db.url)
    };
    let a = TestServer::start(config.clone()).await;
    let b = TestServer::restart(config, a.admin_key.clone()).await;
    let mut admin_a = a.admin().await;
    let (key, secret) = create(&mut admin_a, new_key("shared", &["dns:read"])).await;
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    for _ in 0..4 {
        assert_allowed(&authorize(&mut on_a, authz(&secret, &["dns:read"])).await);
    }
    for _ in 0..3 {
        assert_allowed(&authorize(&mut on_b, authz(&secret, &["dns:read"])).await);
    }
    assert_denied(
        &authorize(&mut on_b, authz(&secret, &["dns:write"])).await,
        pb::DenyReason::ScopeMissing,
    );
    let mut admin_b = b.admin().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for admin in [&mut admin_a, &mut admin_b] {
        loop {
            let buckets = admin
                .keys
                .get_key_usage(pb::GetKeyUsageRequest {
                    key_id: key.key_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .buckets;
            let allowed: u64 = buckets.iter().map(|b| b.allowed).sum();
            let denied: u64 = buckets.iter().map(|b| b.denied_other).sum();
            // Each replica adds its own unwritten counts to what both wrote,
            // so a replica may see its own share early, never more than 7.
            assert!(allowed <= 7, "counted twice: {allowed}");
            if allowed == 7 && denied == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "counts never added up: {allowed} allowed, {denied} denied"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
