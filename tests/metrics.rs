//! `GET /metrics` end to end: a scrape parses as Prometheus text and every
//! family the operator dashboards read moves when the thing it counts
//! happens: decisions by front end and reason, latency, cache, storage
//! operations and errors, usage flushes, change notifications, management
//! calls by method and code.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{http::get, proxy::Proxy, *};
use keygate::v1 as pb;
use keygate_persistence::testing::TestDatabase;
use keygate_server::Config;

on_both_backends!(scraped_counters_move_with_traffic);

/// One scrape: every sample as (name, labels) → value.
#[derive(Debug)]
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    async fn take(server: &TestServer) -> Scrape {
        let resp = get(server.http_addr.expect("http listener"), "/metrics", &[]).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(
            resp.header("content-type")
                .is_some_and(|t| t.starts_with("application/openmetrics-text")),
            "{resp:?}"
        );
        Scrape::parse(&resp.body)
    }

    fn parse(text: &str) -> Scrape {
        assert!(text.ends_with("# EOF\n"), "not OpenMetrics text: {text}");
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label pair");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Scrape(samples)
    }

    /// The sum of `name`'s samples carrying all of `labels`; `None` when
    /// there is no such series.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"))
    }
}

const DECISIONS: &str = "keygate_decisions_total";

fn decision(
    service: &'static str,
    decision: &'static str,
    reason: &'static str,
) -> Vec<(&'static str, &'static str)> {
    vec![
        ("service", service),
        ("decision", decision),
        ("reason", reason),
    ]
}

async fn scraped_counters_move_with_traffic(db: TestDatabase) {
    let postgres = db.url.starts_with("postgres");
    // On PostgreSQL, storage goes through a proxy the test can cut.
    let proxy = if postgres {
        Some(Proxy::start(common::proxy::target_of(&db.url)).await)
    } else {
        None
    };
    let config = Config {
        database_url: proxy
            .as_ref()
            .map_or_else(|| db.url.clone(), |p| p.url_for(&db.url)),
        http_listen: Some("127.0.0.1:0".parse().expect("address")),
        usage_count_flush_interval: Duration::from_millis(200),
        ..test_config(&db)
    };
    let server = TestServer::start(config).await;
    let http = server.http_addr.expect("http listener");
    let mut admin = server.admin().await;
    let (key, secret) = create(&mut admin, new_key("scraped", &["dns:read"])).await;
    let before = Scrape::take(&server).await;

    // Every decision series exists from the start, at zero or more.
    for (service, reason) in [
        ("authorize", "key_revoked"),
        ("ext_authz", "rate_limited"),
        ("forward_auth", "none"),
    ] {
        assert!(
            before
                .value(DECISIONS, &[("service", service), ("reason", reason)])
                .is_some(),
            "{service}/{reason} missing"
        );
    }
    // Latency buckets reach down to 10 µs.
    assert!(
        before
            .value(
                "keygate_decision_duration_seconds_bucket",
                &[("service", "authorize"), ("le", "0.00001")]
            )
            .is_some(),
        "no 10 µs bucket"
    );

    let mut client = server.client().await;
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    assert_allowed(&authorize(&mut client, authz(&secret, &["dns:read"])).await);
    assert_denied(
        &authorize(&mut client, authz(&secret, &["dns:write"])).await,
        pb::DenyReason::ScopeMissing,
    );
    assert_denied(
        &authorize(&mut client, authz("kg_live_nonsense", &[])).await,
        pb::DenyReason::KeyInvalid,
    );
    let bad_environment = pb::AuthorizeRequest {
        environment: "nowhere".to_owned(),
        ..authz(&secret, &[])
    };
    assert!(client.authz.authorize(bad_environment).await.is_err());
    let bearer = format!("Bearer {secret}");
    let resp = get(
        http,
        "/v1/authorize?scopes=dns:read",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let resp = get(http, "/v1/authorize", &[]).await;
    assert_eq!(resp.status, 401, "{resp:?}");
    get_key(&mut admin, &key.key_id).await;
    let missing = admin
        .keys
        .get_key(pb::GetKeyRequest {
            key_id: "0190b5a2-0000-7000-8000-00000000dead".to_owned(),
        })
        .await;
    assert_status(missing, tonic::Code::NotFound, "KEY_NOT_FOUND");
    // Let a usage flush of each kind run.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let after = Scrape::take(&server).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.get(name, labels) - before.value(name, labels).unwrap_or(0.0)
    };
    assert_eq!(
        moved(DECISIONS, &decision("authorize", "allow", "none")),
        2.0
    );
    assert_eq!(
        moved(DECISIONS, &decision("authorize", "deny", "scope_missing")),
        1.0
    );
    assert_eq!(
        moved(DECISIONS, &decision("authorize", "deny", "key_invalid")),
        1.0
    );
    assert_eq!(
        moved(
            DECISIONS,
            &decision("authorize", "error", "invalid_request")
        ),
        1.0
    );
    assert_eq!(
        moved(DECISIONS, &decision("forward_auth", "allow", "none")),
        1.0
    );
    assert_eq!(
        moved(DECISIONS, &decision("forward_auth", "deny", "key_invalid")),
        1.0
    );
    assert_eq!(moved(DECISIONS, &[("service", "ext_authz")]), 0.0);
    assert_eq!(
        moved(
            "keygate_decision_duration_seconds_count",
            &[("service", "authorize")]
        ),
        5.0
    );
    assert!(
        moved(
            "keygate_decision_duration_seconds_sum",
            &[("service", "authorize")]
        ) > 0.0
    );

    // The key was loaded once, then answered from the cache; the forged
    // key's lookup id is remembered as unknown only when it parsed.
    assert!(moved("keygate_cache_misses_total", &[]) >= 1.0);
    assert!(moved("keygate_cache_hits_total", &[]) >= 2.0);
    assert!(after.get("keygate_cache_entries", &[]) >= 1.0);
    assert!(moved("keygate_key_loads_total", &[]) >= 1.0);
    assert!(
        moved(
            "keygate_storage_operations_total",
            &[("operation", "find_by_lookup_ids")]
        ) >= 1.0
    );
    assert!(
        moved(
            "keygate_storage_operations_total",
            &[("operation", "get_key")]
        ) >= 2.0
    );
    assert!(
        moved(
            "keygate_storage_operation_duration_seconds_count",
            &[("operation", "get_key")]
        ) >= 2.0
    );
    assert!(
        moved(
            "keygate_usage_flush_duration_seconds_count",
            &[("kind", "last_used")]
        ) >= 1.0
    );
    assert!(
        moved(
            "keygate_usage_flush_duration_seconds_count",
            &[("kind", "counts")]
        ) >= 1.0
    );
    assert!(after.get("keygate_usage_flush_lag_seconds", &[("kind", "last_used")]) < 5.0);
    assert_eq!(
        moved(
            "keygate_management_calls_total",
            &[("method", "GetKey"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "keygate_management_calls_total",
            &[("method", "GetKey"), ("code", "NOT_FOUND")]
        ),
        1.0
    );
    assert_eq!(
        after.get(
            "keygate_management_calls_total",
            &[("method", "CreateKey"), ("code", "OK")]
        ),
        1.0
    );

    if postgres {
        // Heartbeats arrive every second.
        assert!(after.get("keygate_change_notification_age_seconds", &[]) < 3.0);
        // Storage cut: the failed operations are counted as errors, and the
        // listener's reconnect once storage is back.
        let proxy = proxy.expect("proxy");
        let errors = after
            .value("keygate_storage_errors_total", &[])
            .unwrap_or(0.0);
        proxy.cut();
        let down = admin
            .keys
            .get_key(pb::GetKeyRequest {
                key_id: key.key_id.clone(),
            })
            .await;
        assert_status(down, tonic::Code::Unavailable, "STORAGE_UNAVAILABLE");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cut = Scrape::take(&server).await;
        assert!(
            cut.get("keygate_storage_errors_total", &[]) > errors,
            "{cut:?}"
        );
        assert_eq!(
            cut.get(
                "keygate_management_calls_total",
                &[("method", "GetKey"), ("code", "UNAVAILABLE")]
            ),
            1.0
        );
        proxy.restore();
        let reconnected = async {
            loop {
                let scrape = Scrape::take(&server).await;
                if scrape.get("keygate_change_listener_reconnects_total", &[]) >= 1.0 {
                    return scrape;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let scrape = tokio::time::timeout(Duration::from_secs(15), reconnected)
            .await
            .expect("the listener reconnects after the cut");
        assert!(scrape.get("keygate_change_notification_age_seconds", &[]) < 3.0);
    } else {
        assert!(proxy.is_none());
        // One process, no notifications: no listener series to mislead.
        assert_eq!(
            after.value("keygate_change_notification_age_seconds", &[]),
            None
        );
    }
    server.stop().await;
}
