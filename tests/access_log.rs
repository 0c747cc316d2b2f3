//! The access log: one JSON line per request with the documented fields, and never a token,
//! a query string or a cookie.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// An edge logging requests (`sample_allowed` of the allowed ones), with an ungated route
/// (`/public/`) and an observed one (`/vod/`).
async fn edge_with_log(origin: &TestOrigin, upstream: &Upstream, sample_allowed: f64) -> Edge {
    EdgeConfig::new(origin, upstream)
        .access_log(sample_allowed)
        .route("/public/", "off")
        .route("/vod/", "observe")
        .start()
        .await
}

fn log_text(edge: &Edge) -> String {
    std::fs::read_to_string(edge.dir.path().join("access.log")).unwrap_or_default()
}

/// Waits until the log holds `count` lines (it is written by a background thread).
async fn log_lines(edge: &Edge, count: usize) -> Vec<Value> {
    eventually(
        Duration::from_secs(5),
        &format!("{count} access log lines"),
        || async {
            let text = log_text(edge);
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                .collect();
            (lines.len() >= count).then_some(lines)
        },
    )
    .await
}

#[tokio::test]
async fn allowed_request_is_logged_with_every_field() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with_log(&origin, &upstream, 1.0).await;

    let token = origin.token("alice", "tv");
    let path = format!("/live/seg1.ts?token={token}&session=abc");
    echoed(edge.get(&path).await).await;
    let line = &log_lines(&edge, 1).await[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/live/seg1.ts");
    assert_eq!(line["status"], 200);
    assert_eq!(line["decision"], "allowed");
    assert_eq!(line["mode"], "enforce");
    assert_eq!(line["account"], "alice");
    assert_eq!(line["device"], "tv");
    assert_eq!(line["upstream_status"], 200);
    assert!(line["bytes_sent"].as_u64().unwrap() > 0, "{line}");
    assert!(line["duration_seconds"].as_f64().unwrap() > 0.0, "{line}");
    assert!(
        line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert!(line["timestamp"].is_string(), "{line}");
}

#[tokio::test]
async fn rejection_is_logged_without_identity_or_upstream_status() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with_log(&origin, &upstream, 1.0).await;

    rejection(edge.get("/live/seg1.ts").await, 401).await;
    let line = &log_lines(&edge, 1).await[0];
    assert_eq!(line["status"], 401);
    assert_eq!(line["decision"], "missing_token");
    assert!(line.get("account").is_none(), "{line}");
    assert!(line.get("upstream_status").is_none(), "{line}");
}

#[tokio::test]
async fn observed_and_ungated_requests_are_logged_with_their_mode() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with_log(&origin, &upstream, 1.0).await;

    echoed(edge.get("/vod/seg1.ts").await).await;
    echoed(edge.get("/public/logo.png").await).await;
    let lines = log_lines(&edge, 2).await;
    let observed = lines.iter().find(|l| l["path"] == "/vod/seg1.ts").unwrap();
    assert_eq!(observed["mode"], "observe");
    assert_eq!(observed["decision"], "missing_token");
    assert_eq!(observed["status"], 200);
    let ungated = lines
        .iter()
        .find(|l| l["path"] == "/public/logo.png")
        .unwrap();
    assert_eq!(ungated["mode"], "off");
    assert_eq!(ungated["decision"], "ungated");
}

#[tokio::test]
async fn sampling_never_drops_a_rejection() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with_log(&origin, &upstream, 0.0).await;

    let token = origin.token("alice", "tv");
    for _ in 0..5 {
        echoed(edge.get_with_token("/live/seg1.ts", &token).await).await;
    }
    rejection(edge.get("/live/seg2.ts").await, 401).await;
    let lines = log_lines(&edge, 1).await;
    // The line of the rejection came after the allowed requests: none of those was logged.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines_now = log_text(&edge).lines().count();
    assert_eq!(lines_now, 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "missing_token");
}

#[tokio::test]
async fn access_log_never_contains_a_token_a_query_or_a_cookie() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with_log(&origin, &upstream, 1.0).await;

    let tokens = hostile_tokens(&origin);
    let mut sent = 0;
    for (i, token) in tokens.iter().enumerate() {
        let secret_query = format!("qsecret{i}");
        let secret_cookie = format!("csecret{i}");
        // In each source, with a query string and a cookie of its own next to it.
        let requests = [
            edge.client
                .get(edge.url(&format!("/live/a{i}.ts?k={secret_query}")))
                .bearer_auth(token)
                .header("cookie", format!("other={secret_cookie}")),
            edge.client
                .get(edge.url(&format!("/vod/b{i}.ts?token={token}&k={secret_query}"))),
            edge.client.get(edge.url(&format!("/live/c{i}.ts"))).header(
                "cookie",
                format!("device_token={token}; other={secret_cookie}"),
            ),
        ];
        for request in requests {
            request.send().await.unwrap();
            sent += 1;
        }
    }
    let lines = log_lines(&edge, sent).await;
    assert_eq!(lines.len(), sent);
    let text = log_text(&edge);
    for (i, token) in tokens.iter().enumerate() {
        assert!(
            !text.contains(token.as_str()),
            "token {i} in the access log"
        );
        // Any 16-byte piece of a token (its signature, its payload) would be a leak too.
        for piece in token.as_bytes().chunks(16).filter(|c| c.len() == 16) {
            let piece = String::from_utf8_lossy(piece);
            if !piece.chars().all(|c| c == 'A' || c == '[' || c == ']') {
                assert!(
                    !text.contains(piece.as_ref()),
                    "part of token {i} in the log"
                );
            }
        }
        assert!(
            !text.contains(&format!("qsecret{i}")),
            "query {i} in the log"
        );
        assert!(
            !text.contains(&format!("csecret{i}")),
            "cookie {i} in the log"
        );
    }
    for forbidden in ["token=", "device_token", "?", "Bearer", "cookie"] {
        assert!(!text.contains(forbidden), "`{forbidden}` in the access log");
    }
}
