//! A misbehaving auth origin: hanging, slow, failing, oversized, and a JWKS that goes away or
//! rotates. Warm accounts keep being served, cold ones follow `on_origin_unavailable`,
//! latency stays bounded by the timeout, and every error is counted and logged sparingly.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The slowest of `n` requests for cold accounts.
async fn worst_cold_request(
    edge: &Edge,
    origin: &TestOrigin,
    n: usize,
    tag: &str,
) -> (Duration, Vec<u16>) {
    let mut worst = Duration::ZERO;
    let mut statuses = Vec::new();
    for i in 0..n {
        let token = origin.token(&format!("cold-{tag}-{i}"), "tv");
        let started = Instant::now();
        statuses.push(edge.get_with_token("/", &token).await.status().as_u16());
        worst = worst.max(started.elapsed());
    }
    (worst, statuses)
}

#[tokio::test]
async fn hanging_origin_costs_cold_requests_at_most_the_timeout() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .refresh_after("1s")
        .start()
        .await;
    let warm = origin.token("warm", "tv");
    assert_eq!(edge.get_with_token("/", &warm).await.status(), 200);

    origin.set_mode(Mode::Hang);
    let (worst, statuses) = worst_cold_request(&edge, &origin, 10, "hang").await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    // auth_origin.timeout is 250 ms; the rest is slack for a loaded machine, far below a hang.
    assert!(
        worst < Duration::from_millis(1500),
        "worst cold request took {worst:?}"
    );
    eprintln!("worst cold request while the origin hangs: {worst:?} (timeout 250 ms)");

    // A warm account is served from cache, stale or not, without waiting on the hang.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    assert_eq!(edge.get_with_token("/", &warm).await.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert!(
        edge.metric(r#"epochgate_origin_requests_total{endpoint="revocations",outcome="timeout"}"#)
            .await
            >= 10.0
    );
}

#[tokio::test]
async fn slow_origin_beyond_the_timeout_counts_timeouts() {
    let origin = TestOrigin::start().await;
    origin.set_mode(Mode::Slow(Duration::from_secs(2)));
    let upstream = Upstream::start().await;
    let edge = Edge::start(&origin, &upstream).await;

    let (worst, statuses) = worst_cold_request(&edge, &origin, 3, "slow").await;
    assert_eq!(statuses, vec![503, 503, 503]);
    assert!(worst < Duration::from_millis(1500), "{worst:?}");
    assert_eq!(
        edge.metric(r#"epochgate_origin_requests_total{endpoint="revocations",outcome="timeout"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn oversized_body_is_an_error_and_the_edge_survives() {
    let origin = TestOrigin::start().await;
    origin.set_mode(Mode::Huge);
    let upstream = Upstream::start().await;
    // A test origin slowed by a loaded machine past the default 250 ms would be a timeout,
    // not the oversized body this test is about.
    let edge = EdgeConfig::new(&origin, &upstream)
        .origin_timeout("5s")
        .start()
        .await;

    assert_eq!(
        edge.get_with_token("/", &origin.token("big", "tv"))
            .await
            .status(),
        503
    );
    assert_eq!(
        edge.metric(r#"epochgate_origin_requests_total{endpoint="revocations",outcome="error"}"#)
            .await,
        1.0
    );
    origin.set_mode(Mode::Normal);
    assert_eq!(
        edge.get_with_token("/", &origin.token("big", "tv"))
            .await
            .status(),
        200
    );
    assert!(edge.log().contains("larger than"), "{}", edge.log());
}

#[tokio::test]
async fn origin_errors_are_logged_once_per_interval_without_tokens() {
    let origin = TestOrigin::start().await;
    origin.set_mode(Mode::Status500);
    let upstream = Upstream::start().await;
    let edge = Edge::start(&origin, &upstream).await;

    let mut tokens = Vec::new();
    for i in 0..40 {
        let token = origin.token(&format!("cold-{i}"), "tv");
        assert_eq!(edge.get_with_token("/", &token).await.status(), 503);
        tokens.push(token);
    }
    let log = edge.log();
    let lines = log.matches("revocation lookup failed").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for 40 failures:\n{log}"
    );
    for token in &tokens {
        assert!(!log.contains(token.rsplit('.').next().unwrap()));
    }
}

#[tokio::test]
async fn jwks_down_later_keeps_the_last_good_keys() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .jwks_refresh("1s")
        .start()
        .await;

    origin.set_jwks_down(true);
    let before = origin.jwks_requests();
    eventually(Duration::from_secs(10), "failed JWKS refreshes", || async {
        (origin.jwks_requests() >= before + 2).then_some(())
    })
    .await;
    assert_eq!(
        edge.get_with_token("/", &origin.token("alice", "tv"))
            .await
            .status(),
        200
    );
    assert_eq!(edge.readiness().await["ready"], true);
    assert_eq!(edge.metric("epochgate_jwks_keys").await, 1.0);
}

#[tokio::test]
async fn rotated_key_is_accepted_after_one_jwks_fetch() {
    let (origin, _upstream, edge) = started().await;

    let rotated =
        epochgate::reference::signing::SigningKey::generate_es256("test-es256-next").unwrap();
    origin.set_jwks(vec![origin.key.jwk().clone(), rotated.jwk().clone()]);
    let before = origin.jwks_requests();
    let token = rotated.sign(&claims("alice", "tv", now())).unwrap();
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    assert_eq!(origin.jwks_requests(), before + 1);
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    assert_eq!(origin.jwks_requests(), before + 1);
}

#[tokio::test]
async fn flood_of_random_kids_fetches_the_jwks_at_most_once_per_10_s() {
    // Every token is checked: the per-client budget would refuse most of them unchecked
    // (tests/forged_token_flood.rs), and this is about the key service's own limit.
    let (origin, _upstream, edge) = started_with(|c| c.invalid_tokens_per_client("off")).await;

    let before = origin.jwks_requests();
    let started = Instant::now();
    for i in 0..300 {
        let forger =
            epochgate::reference::signing::SigningKey::generate_es256(&format!("random-kid-{i}"))
                .unwrap();
        let token = forger.sign(&claims("alice", "tv", now())).unwrap();
        assert_eq!(edge.get_with_token("/", &token).await.status(), 401);
    }
    let windows = started.elapsed().as_secs() / 10 + 1;
    let fetched = origin.jwks_requests() - before;
    assert!(
        fetched <= windows,
        "{fetched} JWKS fetches in {:?}",
        started.elapsed()
    );
    assert_eq!(origin.revocation_requests(), 0);
}

#[tokio::test]
async fn key_removed_from_the_jwks_stops_verifying_even_remembered_tokens() {
    let origin = TestOrigin::start().await;
    let retiring = epochgate::reference::signing::SigningKey::generate_es256("retiring").unwrap();
    origin.set_jwks(vec![origin.key.jwk().clone(), retiring.jwk().clone()]);
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .jwks_refresh("1s")
        .start()
        .await;

    let token = retiring.sign(&claims("alice", "tv", now())).unwrap();
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    assert_eq!(
        edge.get_with_token("/", &token).await.status(),
        200,
        "remembered as verified"
    );
    origin.set_jwks(vec![origin.key.jwk().clone()]);
    eventually(
        Duration::from_secs(10),
        "the retired key to stop verifying",
        || {
            let (edge, token) = (&edge, &token);
            async move { (edge.get_with_token("/", token).await.status() == 401).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn redirected_lookup_is_an_error_and_not_followed() {
    let origin = TestOrigin::start().await;
    let elsewhere = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = Edge::start(&origin, &upstream).await;

    // The origin bounces lookups to another host, which would vouch for the account.
    origin.redirect("revocations", &elsewhere.url());
    let response = edge.get_with_token("/", &origin.token("alice", "tv")).await;
    assert_eq!(
        rejection(response, 503).await["error"],
        "origin_unavailable"
    );
    assert_eq!(
        elsewhere.revocation_requests(),
        0,
        "the edge followed the redirect"
    );
    assert!(
        edge.metric(r#"epochgate_origin_requests_total{endpoint="revocations",outcome="error"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn redirected_jwks_and_feed_are_errors_and_not_followed() {
    let origin = TestOrigin::start().await;
    let elsewhere = TestOrigin::start().await;
    elsewhere.enable_feed();
    origin.enable_feed();
    origin.redirect("jwks", &elsewhere.url());
    origin.redirect("feed", &elsewhere.url());
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream).spawn();

    let jwks_errors = r#"epochgate_origin_requests_total{endpoint="jwks",outcome="error"}"#;
    let feed_errors = r#"epochgate_origin_requests_total{endpoint="feed",outcome="error"}"#;
    // The edge tries the JWKS before it opens its listeners: wait for the admin endpoint.
    eventually(Duration::from_secs(10), "the admin endpoint", || {
        let edge = &edge;
        async move {
            let up = edge.client.get(edge.admin_url("/healthz")).send().await;
            up.is_ok().then_some(())
        }
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "redirects counted as errors",
        || {
            let edge = &edge;
            async move {
                (edge.metric(jwks_errors).await >= 2.0 && edge.metric(feed_errors).await >= 2.0)
                    .then_some(())
            }
        },
    )
    .await;
    let readiness = edge.readiness().await;
    assert_eq!(readiness["keys"], 0, "{readiness}");
    assert_eq!(readiness["feed"], "connecting", "{readiness}");
    assert_eq!(
        elsewhere.jwks_requests(),
        0,
        "the edge followed the JWKS redirect"
    );
    assert!(
        elsewhere.feed_connections().is_empty(),
        "the edge followed the feed redirect"
    );
    let response = edge
        .get_with_token("/", &elsewhere.token("alice", "tv"))
        .await;
    assert_eq!(rejection(response, 503).await["error"], "not_ready");
}

#[tokio::test]
async fn record_over_the_device_bound_is_an_error_for_that_lookup() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = Edge::start(&origin, &upstream).await;

    // The default bound is 1,000 devices per account.
    let many: Vec<(String, u64)> = (0..1001).map(|i| (format!("dev-{i}"), 1)).collect();
    let over: Vec<(&str, u64)> = many.iter().map(|(d, e)| (d.as_str(), *e)).collect();
    origin.set_record("crowded", 0, &over);
    origin.set_record("full", 0, &over[..1000]);

    let response = edge
        .get_with_token("/", &origin.token("crowded", "tv"))
        .await;
    assert_eq!(
        rejection(response, 503).await["error"],
        "origin_unavailable"
    );
    assert!(
        edge.metric(r#"epochgate_origin_requests_total{endpoint="revocations",outcome="error"}"#)
            .await
            >= 1.0
    );
    let at_the_bound = edge.get_with_token("/", &origin.token("full", "tv")).await;
    assert_eq!(
        at_the_bound.status(),
        200,
        "1,000 devices are within the bound"
    );
    assert_eq!(
        edge.readiness().await["cached_accounts"],
        1,
        "only the record within the bound was cached"
    );
}

#[tokio::test]
async fn device_bound_is_configurable() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .max_devices_per_account(2)
        .start()
        .await;
    origin.set_record("alice", 0, &[("tv", 1), ("phone", 1), ("car", 1)]);
    origin.set_record("bob", 0, &[("tv", 1), ("phone", 1)]);

    let alice = edge.get_with_token("/", &origin.token("alice", "tv")).await;
    assert_eq!(rejection(alice, 503).await["error"], "origin_unavailable");
    let bob = edge.get_with_token("/", &origin.token("bob", "tv")).await;
    assert_eq!(bob.status(), 200);
}
