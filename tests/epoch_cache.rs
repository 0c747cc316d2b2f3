//! The revocation cache through the real edge: single flight, max-merge, stale-while-
//! revalidate, and what happens when the auth origin is down.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn cold_account_costs_one_origin_request_for_200_concurrent_requests() {
    let origin = TestOrigin::start().await;
    // Slow enough that all 200 requests arrive while the first fetch is in flight.
    origin.set_mode(Mode::Slow(Duration::from_millis(150)));
    let upstream = Upstream::start().await;
    let edge = Arc::new(Edge::start(&origin, &upstream).await);

    let token = Arc::new(origin.token("cold-account", "tv"));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (edge, token) = (edge.clone(), token.clone());
        requests.spawn(async move { edge.get_with_token("/", &token).await.status().as_u16() });
    }
    let mut statuses = Vec::new();
    while let Some(status) = requests.join_next().await {
        statuses.push(status.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(origin.revocation_requests(), 1);
}

#[tokio::test]
async fn fetch_survives_its_first_requester_going_away() {
    let origin = TestOrigin::start().await;
    origin.set_mode(Mode::Slow(Duration::from_millis(200)));
    let upstream = Upstream::start().await;
    let edge = Edge::start(&origin, &upstream).await;
    let token = origin.token("alice", "tv");

    // The first client gives up after 50 ms, while the fetch is in flight.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    assert!(impatient
        .get(edge.url("/"))
        .bearer_auth(&token)
        .send()
        .await
        .is_err());
    let second = edge.get_with_token("/", &token).await;
    assert_eq!(second.status(), 200);
    assert_eq!(origin.revocation_requests(), 1);
}

#[tokio::test]
async fn epoch_going_backwards_at_the_origin_never_unrevokes() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let epoch = now() - 10;
    origin.set_record("alice", epoch, &[("tv", epoch)]);
    let edge = Edge::start_with(
        &origin.url(),
        upstream.addr,
        "  refresh_after: 1s\n  max_stale: 10m\n",
        "",
    )
    .await;

    let revoked = origin.token_at("alice", "tv", now() - 100);
    assert_eq!(
        rejection(edge.get_with_token("/", &revoked).await, 401).await["error"],
        "signed_out"
    );

    // A lagging replica answers with an older record; wait until the edge has refetched.
    origin.set_record("alice", 0, &[]);
    let before = origin.revocation_requests();
    eventually(Duration::from_secs(10), "a refresh from the origin", || {
        let (edge, revoked, origin) = (&edge, &revoked, &origin);
        async move {
            let status = edge.get_with_token("/", revoked).await.status();
            assert_eq!(status, 401, "a backwards epoch un-revoked a token");
            (origin.revocation_requests() >= before + 2).then_some(())
        }
    })
    .await;
    assert_eq!(edge.get_with_token("/", &revoked).await.status(), 401);
}

#[tokio::test]
async fn sign_out_reaches_the_edge_within_refresh_after() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = Edge::start_with(
        &origin.url(),
        upstream.addr,
        "  refresh_after: 1s\n  max_stale: 10m\n",
        "",
    )
    .await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    origin.set_record("alice", now(), &[]);
    eventually(
        Duration::from_secs(10),
        "the sign-out to take effect",
        || {
            let (edge, token) = (&edge, &token);
            async move { (edge.get_with_token("/", token).await.status() == 401).then_some(()) }
        },
    )
    .await;
    assert!(
        edge.metric(r#"epochgate_epoch_cache_lookups_total{result="stale"}"#)
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn origin_down_with_a_warm_cache_still_serves() {
    let mut origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = Edge::start_with(
        &origin.url(),
        upstream.addr,
        "  refresh_after: 1s\n  max_stale: 10m\n",
        "",
    )
    .await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    origin.stop();
    // Past refresh_after the record is stale; refreshes fail; it is still served.
    eventually(Duration::from_secs(10), "a failed refresh to be counted", || {
        let (edge, token) = (&edge, &token);
        async move {
            assert_eq!(edge.get_with_token("/", token).await.status(), 200);
            let failed = edge.metric(r#"epochgate_origin_requests_total{endpoint="revocations",outcome="error"}"#).await;
            (failed >= 1.0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn origin_down_and_cold_is_503_when_denying() {
    let mut origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = Edge::start(&origin, &upstream).await;
    origin.stop();

    let response = edge.get_with_token("/", &origin.token("cold", "tv")).await;
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(
        rejection(response, 503).await["error"],
        "origin_unavailable"
    );
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="origin_unavailable"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn origin_down_and_cold_is_forwarded_when_allowing() {
    let mut origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = Edge::start_with(
        &origin.url(),
        upstream.addr,
        "  refresh_after: 30s\n  max_stale: 10m\n  on_origin_unavailable: allow\n",
        "",
    )
    .await;
    origin.stop();

    let echo = echoed(edge.get_with_token("/", &origin.token("cold", "tv")).await).await;
    assert_eq!(
        echo["headers"]["x-epochgate-account"],
        serde_json::json!(["cold"])
    );
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="allowed_origin_unavailable"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn record_older_than_max_stale_is_not_used_while_the_origin_is_down() {
    let mut origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = Edge::start_with(
        &origin.url(),
        upstream.addr,
        "  refresh_after: 1s\n  max_stale: 2s\n",
        "",
    )
    .await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    origin.stop();
    let status = eventually(
        Duration::from_secs(10),
        "the record to pass max_stale",
        || {
            let (edge, token) = (&edge, &token);
            async move {
                let status = edge.get_with_token("/", token).await.status().as_u16();
                (status != 200).then_some(status)
            }
        },
    )
    .await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn origin_errors_are_counted_by_outcome() {
    let (origin, _upstream, edge) = started().await;

    origin.set_mode(Mode::Status500);
    assert_eq!(
        edge.get_with_token("/", &origin.token("a500", "tv"))
            .await
            .status(),
        503
    );
    origin.set_mode(Mode::Html);
    assert_eq!(
        edge.get_with_token("/", &origin.token("ahtml", "tv"))
            .await
            .status(),
        503
    );
    origin.set_mode(Mode::Hang);
    assert_eq!(
        edge.get_with_token("/", &origin.token("ahang", "tv"))
            .await
            .status(),
        503
    );
    origin.set_mode(Mode::Normal);
    origin.set_raw_record(
        "aneg",
        serde_json::json!({"account_id": "aneg", "epoch": -5}),
    );
    assert_eq!(
        edge.get_with_token("/", &origin.token("aneg", "tv"))
            .await
            .status(),
        503
    );

    let errors = edge
        .metric(r#"epochgate_origin_requests_total{endpoint="revocations",outcome="error"}"#)
        .await;
    let timeouts = edge
        .metric(r#"epochgate_origin_requests_total{endpoint="revocations",outcome="timeout"}"#)
        .await;
    assert_eq!((errors, timeouts), (3.0, 1.0));
}
