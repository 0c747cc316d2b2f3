//! Rolling the gate out: observe mode, routes by path prefix, and the metrics that tell
//! enforced from observed decisions, through the real edge binary on loopback.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `/public/` ungated, `/vod/` observed, `/live/` enforced.
fn with_routes(config: EdgeConfig) -> EdgeConfig {
    config
        .route("/public/", "off")
        .route("/vod/", "observe")
        .route("/live/", "enforce")
}

/// Sends a request line exactly as written (an HTTP client would normalize the path first)
/// and returns the status code.
async fn raw_get_status(edge: &Edge, target: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

fn header<'a>(echo: &'a Value, name: &str) -> &'a Value {
    &echo["headers"][name]
}

#[tokio::test]
async fn signed_out_token_reaches_the_upstream_with_the_decision_header_in_observe_mode() {
    let origin = TestOrigin::start().await;
    origin.set_record("alice", now() - 10, &[]);
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .mode("observe")
        .start()
        .await;

    let token = origin.token_at("alice", "tv", now() - 100);
    let echo = echoed(edge.get_with_token("/live/seg1.ts", &token).await).await;
    assert_eq!(
        header(&echo, "x-epochgate-decision"),
        &json!(["signed_out"])
    );
    assert!(header(&echo, "x-epochgate-account").is_null(), "{echo}");
    assert!(header(&echo, "x-epochgate-device").is_null(), "{echo}");
    assert!(
        header(&echo, "authorization").is_null(),
        "token must be stripped"
    );

    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="signed_out",mode="observe"}"#)
            .await,
        1.0
    );
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="signed_out",mode="enforce"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn allowed_token_in_observe_mode_gets_its_identity_and_the_allowed_decision() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .mode("observe")
        .start()
        .await;

    let echo = echoed(
        edge.get_with_token("/live/seg1.ts", &origin.token("alice", "tv"))
            .await,
    )
    .await;
    assert_eq!(header(&echo, "x-epochgate-decision"), &json!(["allowed"]));
    assert_eq!(header(&echo, "x-epochgate-account"), &json!(["alice"]));
    assert_eq!(header(&echo, "x-epochgate-device"), &json!(["tv"]));
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="allowed",mode="observe"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn observe_route_forwards_a_request_without_a_token() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = with_routes(EdgeConfig::new(&origin, &upstream))
        .start()
        .await;

    let echo = echoed(edge.get("/vod/movie/seg1.ts").await).await;
    assert_eq!(
        header(&echo, "x-epochgate-decision"),
        &json!(["missing_token"])
    );
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="missing_token",mode="observe"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn enforce_route_rejects_and_counts_as_enforced() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = with_routes(EdgeConfig::new(&origin, &upstream))
        .mode("observe")
        .start()
        .await;

    rejection(edge.get("/live/seg1.ts").await, 401).await;
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 0);
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="missing_token",mode="enforce"}"#)
            .await,
        1.0
    );
    // A path no route matches takes the top-level mode.
    let echo = echoed(edge.get("/other/x").await).await;
    assert_eq!(
        header(&echo, "x-epochgate-decision"),
        &json!(["missing_token"])
    );
}

#[tokio::test]
async fn off_route_needs_no_token_and_counts_no_decision() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = with_routes(EdgeConfig::new(&origin, &upstream))
        .start()
        .await;

    let response = edge
        .client
        .get(edge.url("/public/logo.png"))
        .header("x-epochgate-account", "mallory")
        .header("x-epochgate-device", "laptop")
        .header("x-epochgate-decision", "allowed")
        .header("X-Epochgate-Decision", "allowed")
        .send()
        .await
        .unwrap();
    let echo = echoed(response).await;
    for name in [
        "x-epochgate-account",
        "x-epochgate-device",
        "x-epochgate-decision",
    ] {
        assert!(header(&echo, name).is_null(), "{name} reached: {echo}");
    }
    assert_eq!(edge.metric("epochgate_requests_total").await, 0.0);
    assert_eq!(edge.metric("epochgate_requests_ungated_total").await, 1.0);
    assert_eq!(origin.revocation_requests(), 0);
}

#[tokio::test]
async fn client_sent_decision_header_never_reaches_the_upstream_from_an_enforced_route() {
    let (origin, _upstream, edge) = started().await;

    let echo = echoed(
        edge.client
            .get(edge.url("/live/seg1.ts"))
            .bearer_auth(origin.token("alice", "tv"))
            .header("x-epochgate-decision", "allowed")
            .header("X-EPOCHGATE-DECISION", "signed_out")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(header(&echo, "x-epochgate-decision").is_null(), "{echo}");
}

#[tokio::test]
async fn paths_that_climb_out_of_an_off_route_are_gated() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = with_routes(EdgeConfig::new(&origin, &upstream))
        .start()
        .await;

    assert_eq!(raw_get_status(&edge, "/public/logo.png").await, 200);
    for target in [
        "/public/../live/seg1.ts",
        "/public/%2e%2e/live/seg1.ts",
        "/public/..%2Flive/seg1.ts",
        "/public/./../live/seg1.ts",
    ] {
        assert_eq!(raw_get_status(&edge, target).await, 401, "{target}");
    }
    // A query string is not part of the path.
    assert_eq!(raw_get_status(&edge, "/live/seg1.ts?x=/public/").await, 401);
}

#[tokio::test]
async fn overlapping_route_prefix_is_a_config_error_naming_the_key() {
    let config = with_routes(EdgeConfig::offline()).route("/live/hd/", "observe");
    let (code, out) = config.check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("routes[3].prefix"), "{out}");
    assert!(out.contains("routes[2].prefix"), "{out}");
}

#[tokio::test]
async fn unknown_mode_is_a_config_error_naming_the_key() {
    let (code, out) = EdgeConfig::offline().route("/vod/", "shadow").check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("routes[0].mode"), "{out}");
}

#[tokio::test]
async fn durations_cache_lookups_and_record_age_are_measured() {
    let origin = TestOrigin::start().await;
    origin.set_record("alice", now() - 600, &[]);
    let upstream = Upstream::start().await;
    let edge = with_routes(EdgeConfig::new(&origin, &upstream))
        .start()
        .await;

    let token = origin.token("alice", "tv");
    for _ in 0..2 {
        echoed(edge.get_with_token("/live/seg1.ts", &token).await).await;
    }
    edge.get("/public/logo.png").await;
    rejection(edge.get("/live/seg2.ts").await, 401).await;

    let text = edge.metrics().await;
    let value = |sample: &str| sum_samples(&text, sample);
    assert_eq!(
        value(r#"epochgate_verified_cache_lookups_total{result="miss"}"#),
        1.0
    );
    assert_eq!(
        value(r#"epochgate_verified_cache_lookups_total{result="hit"}"#),
        1.0
    );
    assert_eq!(value("epochgate_verified_cache_entries"), 1.0);
    assert_eq!(
        value(r#"epochgate_gate_duration_seconds_count{decision="allowed"}"#),
        2.0
    );
    assert_eq!(
        value(r#"epochgate_gate_duration_seconds_count{decision="missing_token"}"#),
        1.0
    );
    assert_eq!(value("epochgate_decision_record_age_seconds_count"), 2.0);
    // The whole request is observed once it is done, after the response: wait for it.
    eventually(
        std::time::Duration::from_secs(5),
        "request durations of all four requests",
        || async {
            let text = edge.metrics().await;
            let allowed = sum_samples(
                &text,
                r#"epochgate_request_duration_seconds_count{decision="allowed"}"#,
            );
            let ungated = sum_samples(
                &text,
                r#"epochgate_request_duration_seconds_count{decision="ungated"}"#,
            );
            let rejected = sum_samples(
                &text,
                r#"epochgate_request_duration_seconds_count{decision="missing_token"}"#,
            );
            (allowed == 2.0 && ungated == 1.0 && rejected == 1.0).then_some(())
        },
    )
    .await;
}
