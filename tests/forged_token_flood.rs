//! A forged-token flood cannot buy the edge's CPU: each client has a budget of failed
//! verifications (`limits.invalid_tokens_per_client`); over it, a token the edge has not
//! verified before gets `429 too_many_invalid_tokens` without being checked, while tokens it
//! has verified before still pass and other clients are not affected.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;

/// A budget that does not refill within a test: 20 failures, then a window of 20 s.
const TIGHT_BUDGET: &str = "{ per_second: 1, burst: 20 }";

/// A client whose connections come from `local` (any 127.0.0.0/8 address is loopback).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn status_of(client: &reqwest::Client, edge: &Edge, token: &str) -> u16 {
    send(client, edge, token, None).await.status().as_u16()
}

async fn send(
    client: &reqwest::Client,
    edge: &Edge,
    token: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut request = client.get(edge.url("/live/seg1.ts")).bearer_auth(token);
    if let Some(value) = forwarded_for {
        request = request.header("x-forwarded-for", value);
    }
    request.send().await.expect("request through the edge")
}

/// Sends `count` forged tokens (each a different one) and returns their statuses in order.
async fn flood(
    client: &reqwest::Client,
    edge: &Edge,
    origin: &TestOrigin,
    count: usize,
    forwarded_for: Option<&str>,
) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(count);
    for i in 0..count {
        let forged = origin.forged_token(&format!("victim-{i}"), "tv");
        statuses.push(
            send(client, edge, &forged, forwarded_for)
                .await
                .status()
                .as_u16(),
        );
    }
    statuses
}

/// An edge whose `limits.invalid_tokens_per_client` is `budget`.
async fn edge_with(origin: &TestOrigin, upstream: &Upstream, budget: &str) -> Edge {
    EdgeConfig::new(origin, upstream)
        .invalid_tokens_per_client(budget)
        .start()
        .await
}

#[tokio::test]
async fn forged_tokens_beyond_the_default_burst_get_429_with_retry_after() {
    // No `limits:` key: the default budget (20 a second, bursts of 100) applies.
    let (origin, upstream, edge) = started().await;
    let client = client_from("127.0.0.1");

    let statuses = flood(&client, &edge, &origin, 130, None).await;
    let invalid = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(invalid + throttled, statuses.len(), "{statuses:?}");
    assert!(
        statuses[..100].iter().all(|s| *s == 401),
        "the first 100 failures are within the burst: {statuses:?}"
    );
    // Failures drop out of the budget's window at 20 a second at most: a few more 401s
    // when the flood is slow.
    assert!(
        (15..=30).contains(&throttled),
        "{throttled} of 30 beyond the burst throttled: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429));

    let response = send(&client, &edge, &origin.forged_token("victim-x", "tv"), None).await;
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    assert!(response.headers().get("www-authenticate").is_none());
    let retry_after: u32 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=6).contains(&retry_after), "Retry-After: {retry_after}");
    let body = rejection(response, 429).await;
    assert_eq!(body["error"], "too_many_invalid_tokens");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));

    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="too_many_invalid_tokens"}"#)
            .await as usize,
        throttled + 1
    );
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="invalid_token"}"#)
            .await as usize,
        invalid
    );
    assert_eq!(origin.revocation_requests(), 0);
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn a_fresh_valid_token_from_another_address_passes_while_one_is_throttled() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with(&origin, &upstream, TIGHT_BUDGET).await;
    let flooder = client_from("127.0.0.1");
    let neighbour = client_from("127.0.0.2");

    let statuses = flood(&flooder, &edge, &origin, 30, None).await;
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    let fresh = origin.token("carol", "tv");
    assert_eq!(status_of(&neighbour, &edge, &fresh).await, 200);
    // The neighbour's own failures are its own: checked, and a 401.
    let forged = origin.forged_token("carol", "tv");
    assert_eq!(status_of(&neighbour, &edge, &forged).await, 401);
}

#[tokio::test]
async fn a_throttled_address_gets_no_key_fetch_for_an_unknown_kid() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with(&origin, &upstream, TIGHT_BUDGET).await;
    let flooder = client_from("127.0.0.1");
    let stranger_key =
        epochgate::reference::signing::SigningKey::generate_es256("unknown-kid").unwrap();
    let unknown_kid = stranger_key.sign(&claims("dave", "tv", now())).unwrap();

    let statuses = flood(&flooder, &edge, &origin, 30, None).await;
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let fetches = origin.jwks_requests();
    // Nothing about a refused token is looked at: its unknown kid makes no JWKS fetch.
    assert_eq!(status_of(&flooder, &edge, &unknown_kid).await, 429);
    assert_eq!(origin.jwks_requests(), fetches);
    // From a client with budget left, the same token is checked: a fetch, then a 401.
    let neighbour = client_from("127.0.0.2");
    assert_eq!(status_of(&neighbour, &edge, &unknown_kid).await, 401);
    assert_eq!(origin.jwks_requests(), fetches + 1);
}

#[tokio::test]
async fn a_throttled_address_has_its_budget_back_after_retry_after() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    // Window of 1 s: 5 failures, then back at 5 a second.
    let edge = edge_with(&origin, &upstream, "{ per_second: 5, burst: 5 }").await;
    let client = client_from("127.0.0.1");

    let mut sent = 0;
    let response = loop {
        let forged = origin.forged_token(&format!("victim-{sent}"), "tv");
        let response = send(&client, &edge, &forged, None).await;
        if response.status() == 429 {
            break response;
        }
        sent += 1;
        assert!(sent < 50, "no 429 after {sent} forged tokens");
    };
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let forged = origin.forged_token("eve", "tv");
    assert_eq!(status_of(&client, &edge, &forged).await, 401);
}

/// An edge with the tight budget that takes the client address from `X-Forwarded-For` when
/// the peer is one of `trusted`.
async fn edge_behind_proxy(origin: &TestOrigin, upstream: &Upstream, trusted: &str) -> Edge {
    EdgeConfig::new(origin, upstream)
        .invalid_tokens_per_client(TIGHT_BUDGET)
        .trusted_proxies(&[trusted])
        .start()
        .await
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_behind_proxy(&origin, &upstream, "127.0.0.1").await;
    let proxy = client_from("127.0.0.1");

    // The client wrote the first address itself; the proxy appended the real one.
    let flooder = Some("198.51.100.1, 203.0.113.7");
    let statuses = flood(&proxy, &edge, &origin, 30, flooder).await;
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    let fresh = origin.token("frank", "tv");
    let other_client = send(&proxy, &edge, &fresh, Some("203.0.113.8")).await;
    assert_eq!(other_client.status(), 200);
    let fresh = origin.token("grace", "tv");
    let same_client = send(&proxy, &edge, &fresh, Some("192.0.2.9, 203.0.113.7")).await;
    assert_eq!(same_client.status(), 429);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_pick_its_budget_with_forwarded_for() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_behind_proxy(&origin, &upstream, "127.0.0.1/32").await;
    let client = client_from("127.0.0.2");

    let mut statuses = Vec::new();
    for i in 0..30 {
        let forged = origin.forged_token(&format!("victim-{i}"), "tv");
        let forwarded_for = format!("203.0.113.{i}");
        statuses.push(
            send(&client, &edge, &forged, Some(&forwarded_for))
                .await
                .status(),
        );
    }
    assert_eq!(
        statuses.last().map(|s| s.as_u16()),
        Some(429),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn the_budget_can_be_turned_off() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with(&origin, &upstream, "off").await;
    let client = client_from("127.0.0.1");

    let statuses = flood(&client, &edge, &origin, 130, None).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
}

#[test]
fn a_bad_trusted_proxy_is_a_config_error_naming_the_key() {
    let (code, output) = EdgeConfig::offline()
        .trusted_proxies(&["10.0.0.0/8", "proxy.internal"])
        .check();
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("proxy.trusted_proxies[1]"), "{output}");
}
