//! The revocation feed through the real edge: pushed sign-outs, resume, reset, malformed
//! events, origin restarts, and the poll fallback.

mod common;

use std::time::Duration;

use common::*;

/// An origin offering the feed, an upstream, and an edge whose feed is connected.
async fn connected() -> (TestOrigin, Upstream, Edge) {
    let origin = TestOrigin::start().await;
    origin.enable_feed();
    let upstream = Upstream::start().await;
    let edge = feed_config(&origin, &upstream).start().await;
    edge.wait_feed("connected").await;
    (origin, upstream, edge)
}

/// The config of an edge that asks again every second whether the origin offers a feed.
fn feed_config(origin: &TestOrigin, upstream: &Upstream) -> EdgeConfig {
    EdgeConfig::new(origin, upstream).feed_unsupported_retry("1s")
}

#[tokio::test]
async fn pushed_sign_out_takes_effect_without_an_origin_request() {
    let (origin, _upstream, edge) = connected().await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    assert_eq!(origin.revocation_requests(), 1);
    origin.feed_revocation(1, "alice", now(), &[]);
    edge.until_status(&token, 401).await;
    assert_eq!(
        origin.revocation_requests(),
        1,
        "the sign-out came by the feed alone"
    );
    assert_eq!(
        edge.metric(r#"epochgate_feed_events_total{event="revocation"}"#)
            .await,
        1.0
    );
    assert_eq!(edge.metric("epochgate_feed_connected").await, 1.0);
    assert_eq!(
        edge.metric("epochgate_feed_propagation_seconds_count")
            .await,
        1.0
    );
}

#[tokio::test]
async fn pushed_device_sign_out_applies_to_that_device_only() {
    let (origin, _upstream, edge) = connected().await;

    let tv = origin.token("alice", "tv");
    let phone = origin.token("alice", "phone");
    assert_eq!(edge.get_with_token("/", &tv).await.status(), 200);
    origin.feed_revocation(1, "alice", 0, &[("tv", now())]);
    edge.until_status(&tv, 401).await;
    assert_eq!(edge.get_with_token("/", &phone).await.status(), 200);
}

#[tokio::test]
async fn feed_resumes_with_last_event_id_after_the_origin_drops_it() {
    let (origin, _upstream, edge) = connected().await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    origin.feed_revocation(41, "bob", 1, &[]);
    origin.feed_revocation(42, "carol", 1, &[]);
    eventually(Duration::from_secs(5), "two events applied", || async {
        (edge
            .metric(r#"epochgate_feed_events_total{event="revocation"}"#)
            .await
            == 2.0)
            .then_some(())
    })
    .await;
    origin.feed_close();
    eventually(
        Duration::from_secs(10),
        "a second feed connection",
        || async { (origin.feed_connections().len() >= 2).then_some(()) },
    )
    .await;
    assert_eq!(origin.feed_connections()[0], None);
    assert_eq!(origin.feed_connections()[1].as_deref(), Some("42"));
    edge.wait_feed("connected").await;
    // The resumed connection delivers what follows.
    origin.feed_revocation(43, "alice", now(), &[]);
    edge.until_status(&token, 401).await;
    assert!(edge.metric("epochgate_feed_reconnects_total").await >= 1.0);
}

#[tokio::test]
async fn reset_makes_every_cached_record_due_for_refresh() {
    let (origin, _upstream, edge) = connected().await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    // A sign-out whose event the edge never got (the origin lost its replay log).
    origin.set_record("alice", now(), &[]);
    assert_eq!(
        edge.get_with_token("/", &token).await.status(),
        200,
        "covered by the feed, not refetched"
    );
    origin.feed_send("event: reset\ndata: {}\n\n");
    edge.until_status(&token, 401).await;
    assert_eq!(
        edge.metric(r#"epochgate_feed_events_total{event="reset"}"#)
            .await,
        1.0
    );
    assert!(origin.revocation_requests() >= 2);
}

#[tokio::test]
async fn malformed_events_are_skipped_counted_and_the_connection_survives() {
    let (origin, _upstream, edge) = connected().await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    origin.feed_send("event: revocation\nid: 1\ndata: {not json\n\n");
    origin.feed_send("event: revocation\nid: 2\ndata: {\"epoch\": 5}\n\n");
    origin.feed_send(
        "event: revocation\nid: 3\ndata: {\"account_id\": \"alice\", \"epoch\": -5}\n\n",
    );
    let mut huge = b"event: revocation\nid: 4\ndata: ".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    huge.extend_from_slice(b"\n\n");
    origin.feed_send(huge);
    origin.feed_revocation(5, "alice", now(), &[]);
    edge.until_status(&token, 401).await;
    assert_eq!(
        edge.metric(r#"epochgate_feed_events_total{event="malformed"}"#)
            .await,
        4.0
    );
    assert_eq!(
        origin.feed_connections().len(),
        1,
        "the connection survived"
    );
    assert!(edge.pid_alive(), "the edge survived a 10 MB line");
}

#[tokio::test]
async fn origin_restart_is_survived() {
    let mut origin = TestOrigin::start().await;
    origin.enable_feed();
    let upstream = Upstream::start().await;
    let edge = feed_config(&origin, &upstream).start().await;
    edge.wait_feed("connected").await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    origin.restart().await;
    eventually(Duration::from_secs(15), "the feed to reconnect", || async {
        (origin.feed_connections().len() >= 2).then_some(())
    })
    .await;
    edge.wait_feed("connected").await;
    origin.feed_revocation(1, "alice", now(), &[]);
    edge.until_status(&token, 401).await;
}

#[tokio::test]
async fn without_a_feed_the_edge_polls_and_says_unsupported() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = feed_config(&origin, &upstream)
        .refresh_after("1s")
        .start()
        .await;
    edge.wait_feed("unsupported").await;
    assert_eq!(
        edge.readiness().await["ready"],
        true,
        "ready does not need the feed"
    );

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    origin.set_record("alice", now(), &[]);
    edge.until_status(&token, 401).await;
    let log = edge.log();
    assert_eq!(
        log.matches("offers no revocation feed").count(),
        1,
        "logged once:\n{log}"
    );
}

#[tokio::test]
async fn feed_that_appears_later_is_picked_up() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = feed_config(&origin, &upstream).start().await;
    edge.wait_feed("unsupported").await;
    origin.enable_feed();
    edge.wait_feed("connected").await;
}

#[tokio::test]
async fn disabled_feed_is_reported_and_never_requested() {
    let origin = TestOrigin::start().await;
    origin.enable_feed();
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .feed(false)
        .start()
        .await;
    assert_eq!(edge.readiness().await["feed"], "disabled");
    assert!(origin.feed_connections().is_empty());
}

#[tokio::test]
async fn silent_feed_connection_is_replaced() {
    let origin = TestOrigin::start().await;
    origin.enable_feed();
    let upstream = Upstream::start().await;
    // The test origin sends one comment and then nothing: no pings.
    let edge = EdgeConfig::new(&origin, &upstream)
        .feed_idle_timeout("1s")
        .start()
        .await;
    eventually(
        Duration::from_secs(10),
        "a replacement connection",
        || async { (origin.feed_connections().len() >= 2).then_some(()) },
    )
    .await;
    assert!(edge.log().contains("presumed dead"), "{}", edge.log());
}

#[tokio::test]
async fn pushed_record_over_the_device_bound_is_not_cached_and_the_account_is_checked() {
    let (origin, _upstream, edge) = connected().await;

    let token = origin.token("alice", "tv");
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    assert_eq!(origin.revocation_requests(), 1);
    // A pushed record naming more devices than cache.max_devices_per_account (1,000).
    let devices: std::collections::HashMap<String, u64> =
        (0..1001).map(|i| (format!("dev-{i}"), 1)).collect();
    let data = serde_json::json!({"account_id": "alice", "epoch": now(), "devices": devices});
    origin.feed_send(format!("event: revocation\nid: 1\ndata: {data}\n\n"));
    let malformed = r#"epochgate_feed_events_total{event="malformed"}"#;
    eventually(
        Duration::from_secs(10),
        "the event counted malformed",
        || {
            let edge = &edge;
            async move { (edge.metric(malformed).await == 1.0).then_some(()) }
        },
    )
    .await;

    // Not applied: the account is judged by what the origin says on the next lookup.
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    assert_eq!(
        origin.revocation_requests(),
        2,
        "the account was checked with the origin"
    );
    assert_eq!(
        edge.metric(r#"epochgate_feed_events_total{event="revocation"}"#)
            .await,
        0.0
    );
}
