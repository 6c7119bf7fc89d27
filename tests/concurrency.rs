//! Concurrency: racing changes to one key, changes racing Authorize's cache
//! loads, etags, per-key runtime state across evictions, and a flood of
//! forged keys. Each runs on SQLite and PostgreSQL against a real server.
//!
//! The invariant under test above all: a revocation that answered OK is
//! final. Whatever raced it, the key ends REVOKED, and no Authorize that
//! starts after RevokeKey returned allows it.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use keygate::{Client, v1 as pb};
use keygate_domain::{hashing, keyformat::KeyFormat};
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;
use tonic::Code;

on_both_backends!(
    racing_changes_never_undo_a_revocation,
    revoke_racing_cache_loads_is_final,
    delete_racing_cache_loads_is_final,
    etags_guard_changes,
    racing_etag_changes_apply_once,
    rate_limits_survive_eviction_edits_and_rotation,
    a_flood_of_forged_keys_starves_nothing,
);

/// Racing pairs per test run: RevokeKey against each other change.
const RACING_PAIRS: usize = 200;

/// The change raced against RevokeKey.
#[derive(Clone, Copy, Debug)]
enum Rival {
    Disable,
    Enable,
    UpdateExpiry,
    Rotate,
    Update,
}

const RIVALS: [Rival; 5] = [
    Rival::Disable,
    Rival::Enable,
    Rival::UpdateExpiry,
    Rival::Rotate,
    Rival::Update,
];

/// Runs `rival` on `key_id`; returns the new secret of a rotation.
async fn run_rival(
    mut client: Client,
    key_id: String,
    rival: Rival,
) -> Result<Option<String>, tonic::Status> {
    match rival {
        Rival::Disable => client
            .keys
            .disable_key(pb::DisableKeyRequest {
                key_id,
                ..Default::default()
            })
            .await
            .map(|_| None),
        Rival::Enable => client
            .keys
            .enable_key(pb::EnableKeyRequest {
                key_id,
                ..Default::default()
            })
            .await
            .map(|_| None),
        Rival::UpdateExpiry => client
            .keys
            .update_key_expiry(pb::UpdateKeyExpiryRequest {
                key_id,
                expires_at: Some(timestamp(chrono::Utc::now() + chrono::Duration::days(30))),
                ..Default::default()
            })
            .await
            .map(|_| None),
        Rival::Rotate => client
            .keys
            .rotate_key(pb::RotateKeyRequest {
                key_id,
                grace_period: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .map(|r| Some(r.into_inner().secret)),
        Rival::Update => client
            .keys
            .update_key(pb::UpdateKeyRequest {
                key: Some(pb::ApiKey {
                    key_id,
                    scopes: vec!["dns:read".to_owned(), "dns:write".to_owned()],
                    rate_limit_per_hour: Some(100_000),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["scopes".to_owned(), "rate_limit_per_hour".to_owned()],
                }),
                ..Default::default()
            })
            .await
            .map(|_| None),
    }
}

async fn revoke(client: &mut Client, key_id: &str) -> Result<pb::ApiKey, tonic::Status> {
    client
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: key_id.to_owned(),
            reason: "race".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().key.expect("key"))
}

/// RevokeKey racing Disable, Enable, UpdateKeyExpiry, Rotate and UpdateKey on the same
/// key, hundreds of times: the revocation always answers OK and always
/// sticks; the rival either applied before it or failed cleanly with
/// FAILED_PRECONDITION (KEY_REVOKED); no secret of the key authorizes after.
async fn racing_changes_never_undo_a_revocation(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let mut keys = Vec::with_capacity(RACING_PAIRS);
    for i in 0..RACING_PAIRS {
        let (key, secret) = create(&mut admin, new_key(&format!("race-{i}"), &["dns:read"])).await;
        let rival = RIVALS[i % RIVALS.len()];
        if matches!(rival, Rival::Enable) {
            // So that Enable really changes something.
            admin
                .keys
                .disable_key(pb::DisableKeyRequest {
                    key_id: key.key_id.clone(),
                    ..Default::default()
                })
                .await
                .expect("disable");
        }
        keys.push((key.key_id, secret, rival));
    }

    let mut rival_outcomes = [0usize; 2]; // [applied, refused as revoked]
    for chunk in keys.chunks(20) {
        let mut tasks = Vec::new();
        for (key_id, secret, rival) in chunk.iter().cloned() {
            let (mut revoker, other) = (admin.clone(), admin.clone());
            tasks.push(tokio::spawn(async move {
                let id = key_id.clone();
                let rival_task = tokio::spawn(run_rival(other, id, rival));
                let revoked = revoke(&mut revoker, &key_id).await;
                (
                    key_id,
                    secret,
                    rival,
                    revoked,
                    rival_task.await.expect("rival task"),
                )
            }));
        }
        for task in tasks {
            let (key_id, secret, rival, revoked, rival_result) = task.await.expect("pair");
            let revoked = revoked.unwrap_or_else(|s| panic!("revoke of {key_id} failed: {s:?}"));
            assert_eq!(revoked.status(), pb::KeyStatus::Revoked);
            let mut secrets = vec![secret];
            match rival_result {
                Ok(new_secret) => {
                    rival_outcomes[0] += 1;
                    secrets.extend(new_secret);
                }
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        Code::FailedPrecondition,
                        "{rival:?} on {key_id}: {status:?}"
                    );
                    rival_outcomes[1] += 1;
                }
            }
            // The revocation stuck, in storage and on the hot path.
            let stored = get_key(&mut admin, &key_id).await;
            assert_eq!(
                stored.status(),
                pb::KeyStatus::Revoked,
                "{rival:?} undid the revocation of {key_id}"
            );
            for secret in secrets {
                let resp = authorize(&mut admin, authz(&secret, &["dns:read"])).await;
                assert_denied(&resp, pb::DenyReason::KeyRevoked);
            }
        }
    }
    eprintln!(
        "{RACING_PAIRS} racing pairs: rival applied first {} times, refused as revoked {} times",
        rival_outcomes[0], rival_outcomes[1]
    );
    server.stop().await;
}

/// Authorize calls loading a key (cache misses, and background refreshes:
/// the cache lifetime is a few milliseconds, so version checks renewing
/// entries past it run throughout) race its revocation. Every
/// Authorize that starts after RevokeKey returned is denied, for keys
/// cached before the race and keys never seen before it.
async fn revoke_racing_cache_loads_is_final(db: TestDatabase) {
    ending_racing_cache_loads_is_final(db, Ending::Revoke).await;
}

/// The same with DeleteKey: once it answered OK, the key is unknown.
async fn delete_racing_cache_loads_is_final(db: TestDatabase) {
    ending_racing_cache_loads_is_final(db, Ending::Delete).await;
}

/// How a key stops authorizing.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Revoke,
    Delete,
}

async fn ending_racing_cache_loads_is_final(db: TestDatabase, ending: Ending) {
    let config = Config {
        cache_ttl: Duration::from_millis(5),
        ..test_config(&db)
    };
    let server = TestServer::start(config).await;
    let mut admin = server.admin().await;
    let origin = Instant::now();
    let mut late_allows = Vec::new();
    let mut calls = 0u64;
    for i in 0..100 {
        let (key, secret) = create(&mut admin, new_key(&format!("miss-{i}"), &["dns:read"])).await;
        if i % 2 == 0 {
            // Cached before the race (and soon past its tiny lifetime).
            assert_allowed(&authorize(&mut admin, authz(&secret, &["dns:read"])).await);
        }
        let revoked_at = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let mut callers = Vec::new();
        for _ in 0..4 {
            let (mut client, secret) = (admin.clone(), secret.clone());
            let (revoked_at, stop) = (revoked_at.clone(), stop.clone());
            callers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let started = origin.elapsed().as_nanos() as u64;
                    let resp = authorize(&mut client, authz(&secret, &["dns:read"])).await;
                    seen.push((started, resp.decision(), revoked_at.load(Ordering::Acquire)));
                }
                seen
            }));
        }
        tokio::time::sleep(Duration::from_micros(200 * (i % 5))).await;
        let denied_as = match ending {
            Ending::Revoke => {
                revoke(&mut admin, &key.key_id).await.expect("revoke");
                pb::DenyReason::KeyRevoked
            }
            Ending::Delete => {
                admin
                    .keys
                    .delete_key(pb::DeleteKeyRequest {
                        key_id: key.key_id.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("delete");
                pb::DenyReason::KeyInvalid
            }
        };
        revoked_at.store(origin.elapsed().as_nanos() as u64, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(5)).await;
        stop.store(true, Ordering::Release);
        for caller in callers {
            for (started, decision, revoked) in caller.await.expect("caller") {
                calls += 1;
                if started > revoked && decision == pb::Decision::Allow {
                    late_allows.push((key.key_id.clone(), started - revoked));
                }
            }
        }
        // And afterwards, for good.
        assert_denied(
            &authorize(&mut admin, authz(&secret, &["dns:read"])).await,
            denied_as,
        );
    }
    assert!(
        late_allows.is_empty(),
        "allowed after {ending:?} returned (key, ns after): {late_allows:?}"
    );
    let metrics = server.authorizer.metrics();
    eprintln!(
        "100 × {ending:?} raced by {calls} Authorize calls ({} key reads, {} renewals of \
         entries past their lifetime): no allow after it returned",
        metrics.key_loads.get(),
        metrics.key_renewals.get()
    );
    server.stop().await;
}

/// Etags: every change moves the etag; a stale one is ABORTED and changes
/// nothing; a malformed one is INVALID_ARGUMENT naming `etag`; a revoked key
/// refuses changes with FAILED_PRECONDITION whatever the etag.
async fn etags_guard_changes(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let (key, _) = create(&mut admin, new_key("etag", &["dns:read"])).await;
    let id = key.key_id.clone();
    let first = key.etag.clone();
    assert!(!first.is_empty());
    assert_eq!(
        get_key(&mut admin, &id).await.etag,
        first,
        "reads do not move it"
    );

    let disabled = admin
        .keys
        .disable_key(pb::DisableKeyRequest {
            key_id: id.clone(),
            etag: first.clone(),
        })
        .await
        .expect("disable with the current etag")
        .into_inner()
        .key
        .expect("key");
    assert_ne!(disabled.etag, first, "a change moves the etag");

    // The old etag is stale: ABORTED, and nothing changed.
    let status = assert_status(
        admin
            .keys
            .enable_key(pb::EnableKeyRequest {
                key_id: id.clone(),
                etag: first.clone(),
            })
            .await,
        Code::Aborted,
        "ETAG_MISMATCH",
    );
    assert!(status.message().contains(&disabled.etag), "{status:?}");
    let now = get_key(&mut admin, &id).await;
    assert_eq!(now.status(), pb::KeyStatus::Disabled);
    assert_eq!(now.etag, disabled.etag);
    for stale in [
        admin
            .keys
            .update_key_expiry(pb::UpdateKeyExpiryRequest {
                key_id: id.clone(),
                expires_at: None,
                etag: first.clone(),
            })
            .await
            .map(|_| ()),
        admin
            .keys
            .rotate_key(pb::RotateKeyRequest {
                key_id: id.clone(),
                etag: first.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        admin
            .keys
            .revoke_key(pb::RevokeKeyRequest {
                key_id: id.clone(),
                etag: first.clone(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    ] {
        assert_status(stale, Code::Aborted, "ETAG_MISMATCH");
    }
    assert_eq!(
        get_key(&mut admin, &id).await,
        now,
        "stale calls changed the key"
    );

    // Not one of ours: INVALID_ARGUMENT naming the field.
    for bad in ["nonsense", "v", "v-1", &"v9".repeat(500)] {
        assert_invalid_field(
            admin
                .keys
                .disable_key(pb::DisableKeyRequest {
                    key_id: id.clone(),
                    etag: bad.to_owned(),
                })
                .await,
            "etag",
        );
    }

    // No etag: applies to whatever the key is now.
    let enabled = admin
        .keys
        .enable_key(pb::EnableKeyRequest {
            key_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("enable without etag")
        .into_inner()
        .key
        .expect("key");
    let revoked = admin
        .keys
        .revoke_key(pb::RevokeKeyRequest {
            key_id: id.clone(),
            etag: enabled.etag.clone(),
            ..Default::default()
        })
        .await
        .expect("revoke with the current etag")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(revoked.status(), pb::KeyStatus::Revoked);
    // Revoked: refused as such, with or without the current etag.
    for etag in [String::new(), revoked.etag.clone()] {
        assert_status(
            admin
                .keys
                .enable_key(pb::EnableKeyRequest {
                    key_id: id.clone(),
                    etag,
                })
                .await,
            Code::FailedPrecondition,
            "KEY_REVOKED",
        );
    }
    // Revoking again is idempotent and keeps the etag.
    let again = revoke(&mut admin, &id).await.expect("revoke again");
    assert_eq!(again.etag, revoked.etag);
    server.stop().await;
}

/// Many callers change one key with the same etag at once: exactly one wins,
/// every other is ABORTED, and the key moved exactly once.
async fn racing_etag_changes_apply_once(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    for round in 0..10 {
        let (key, _) = create(
            &mut admin,
            new_key(&format!("etag-race-{round}"), &["dns:read"]),
        )
        .await;
        let mut tasks = Vec::new();
        for task in 0..16 {
            let mut client = admin.clone();
            let (id, etag) = (key.key_id.clone(), key.etag.clone());
            tasks.push(tokio::spawn(async move {
                let expires_at = chrono::Utc::now() + chrono::Duration::days(1 + task);
                client
                    .keys
                    .update_key_expiry(pb::UpdateKeyExpiryRequest {
                        key_id: id,
                        expires_at: Some(timestamp(expires_at)),
                        etag,
                    })
                    .await
                    .map(|r| r.into_inner().key.expect("key"))
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                Ok(key) => winners.push(key),
                Err(status) => {
                    assert_eq!(status.code(), Code::Aborted, "{status:?}");
                }
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let stored = get_key(&mut admin, &key.key_id).await;
        assert_eq!(stored.expires_at, winners[0].expires_at);
        assert_eq!(stored.etag, winners[0].etag);
    }
    server.stop().await;
}

/// A key's rate-limit state lives as long as it matters, not as long as a
/// cache entry: an edit, an eviction, a capacity eviction, housekeeping and
/// a rotation all leave a spent allowance spent.
async fn rate_limits_survive_eviction_edits_and_rotation(db: TestDatabase) {
    let config = Config {
        cache_capacity: 4,
        ..test_config(&db)
    };
    let server = TestServer::start(config).await;
    let mut admin = server.admin().await;
    let (key, secret) = create(
        &mut admin,
        pb::CreateKeyRequest {
            rate_limit_per_hour: Some(3),
            ..new_key("limited", &["dns:read"])
        },
    )
    .await;
    for _ in 0..3 {
        assert_allowed(&authorize(&mut admin, authz(&secret, &["dns:read"])).await);
    }
    let limited = |resp: &pb::AuthorizeResponse| assert_denied(resp, pb::DenyReason::RateLimited);
    limited(&authorize(&mut admin, authz(&secret, &["dns:read"])).await);

    // A no-op edit and a real one.
    for _ in 0..2 {
        admin
            .keys
            .enable_key(pb::EnableKeyRequest {
                key_id: key.key_id.clone(),
                ..Default::default()
            })
            .await
            .expect("no-op enable");
        admin
            .keys
            .update_key_expiry(pb::UpdateKeyExpiryRequest {
                key_id: key.key_id.clone(),
                expires_at: Some(timestamp(chrono::Utc::now() + chrono::Duration::days(9))),
                ..Default::default()
            })
            .await
            .expect("edit");
        limited(&authorize(&mut admin, authz(&secret, &["dns:read"])).await);
    }
    // Dropped from the cache outright, and everything distrusted.
    let lookup_id = &secret["kg_live_".len().."kg_live_".len() + 8];
    server.authorizer.cache().invalidate(&[lookup_id]);
    limited(&authorize(&mut admin, authz(&secret, &["dns:read"])).await);
    server.authorizer.cache().clear();
    limited(&authorize(&mut admin, authz(&secret, &["dns:read"])).await);
    // Pushed out by capacity: other keys fill the 4-entry cache.
    for i in 0..12 {
        let (_, other) = create(&mut admin, new_key(&format!("filler-{i}"), &["dns:read"])).await;
        assert_allowed(&authorize(&mut admin, authz(&other, &["dns:read"])).await);
    }
    server.authorizer.housekeeping();
    limited(&authorize(&mut admin, authz(&secret, &["dns:read"])).await);
    // A rotation: the new secret shares the key's allowance.
    let rotated = admin
        .keys
        .rotate_key(pb::RotateKeyRequest {
            key_id: key.key_id.clone(),
            ..Default::default()
        })
        .await
        .expect("rotate")
        .into_inner();
    limited(&authorize(&mut admin, authz(&rotated.secret, &["dns:read"])).await);
    server.stop().await;
}

/// Tens of callers present forged keys (well-formed, valid checksum, each a
/// new lookup id, so each a storage lookup) as fast as they can. Meanwhile
/// real keys never seen before are authorized, and management calls work:
/// none of them fails, and storage is never reported down.
///
/// The flood runs on a thread and runtime of its own, as an attacker's load
/// runs on machines of its own: what is under test is what the flood costs
/// the server's storage and lanes. Spawned on the server's two runtime
/// workers, 32 busy flooders took most of their turns, so on a loaded
/// 2-CPU machine the server's own tasks stalled for seconds whatever it did.
async fn a_flood_of_forged_keys_starves_nothing(db: TestDatabase) {
    let server = TestServer::start(test_config(&db)).await;
    let mut admin = server.admin().await;
    let mut real = Vec::new();
    for i in 0..20 {
        real.push(create(&mut admin, new_key(&format!("real-{i}"), &["dns:read"])).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the flood however this test ends, a failed assertion included.
    let _stop_on_exit = StopOnDrop(stop.clone());
    let forged_sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (url, stop, sent) = (server.url.clone(), stop.clone(), forged_sent.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("flood runtime");
            runtime.block_on(flood_forged_keys(url, 32, stop, sent));
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (i, (key, secret)) in real.iter().enumerate() {
        let call = Instant::now();
        let resp = admin
            .authz
            .authorize(authz(secret, &["dns:read"]))
            .await
            .unwrap_or_else(|s| panic!("real key {i} failed during the flood: {s:?}"))
            .into_inner();
        assert_allowed(&resp);
        slowest = slowest.max(call.elapsed());
        get_key(&mut admin, &key.key_id).await;
        create(&mut admin, new_key(&format!("during-flood-{i}"), &[])).await;
    }
    let real_elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    tokio::task::spawn_blocking(move || flood.join())
        .await
        .expect("join")
        .expect("a flooder failed");
    let metrics = server.authorizer.metrics();
    assert_eq!(metrics.stale_served.get(), 0, "storage was treated as down");
    eprintln!(
        "flood: {} forged keys while 20 real misses + 40 management calls took {real_elapsed:?} \
         (slowest real Authorize {slowest:?}), loads shed {}",
        forged_sent.load(Ordering::Relaxed),
        metrics.loads_shed.get()
    );
    server.stop().await;
}

/// `callers` clients of the server at `url` presenting forged keys, each
/// its next as soon as the last is answered, until `stop`; counts them in
/// `sent`. Each is denied as invalid, or fails (a shed load).
async fn flood_forged_keys(
    url: String,
    callers: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    let mut flooders = Vec::new();
    for _ in 0..callers {
        let (url, stop, sent) = (url.clone(), stop.clone(), sent.clone());
        flooders.push(tokio::spawn(async move {
            let mut client = Client::connect(url).await.expect("connect");
            let format = KeyFormat::default();
            while !stop.load(Ordering::Acquire) {
                let (forged, _) = hashing::issue_credential(&format, "live", chrono::Utc::now());
                // Errors (load shed) are allowed for the flood itself.
                if let Ok(resp) = client.authz.authorize(authz(&forged.secret, &[])).await {
                    assert_denied(&resp.into_inner(), pb::DenyReason::KeyInvalid);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                // A call that fails at once (server gone) must not spin the
                // worker: the runtime could never shut down.
                tokio::task::yield_now().await;
            }
        }));
    }
    for flooder in flooders {
        flooder.await.expect("flooder");
    }
}

/// Sets its flag when dropped, so background loops end with the test that
/// started them, whether it passed or panicked.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}
