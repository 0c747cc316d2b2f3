//! The revocation cache through the real edge: one lookup for many concurrent requests, a
//! lookup outliving its requester, an unchecked request forwarded when the origin is down,
//! and origin errors counted. The freshness rules themselves are in gate_spec.rs.

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
async fn origin_down_and_cold_is_forwarded_when_allowing() {
    let mut origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .on_origin_unavailable("allow")
        .start()
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
