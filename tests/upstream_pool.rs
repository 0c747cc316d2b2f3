//! The health-checked upstream pool: a stopped server is skipped after its health check
//! with no request failing and gets traffic again once back, a request that meets it
//! before the check is retried on another server, a failing HTTP check takes a server out,
//! consistent hashing keeps a path on one server, and with no healthy server the edge
//! answers a JSON 502.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::task::JoinSet;

/// An origin server that can be stopped (refusing connections, open ones dropped) and
/// restarted on the same port; it records the paths it served.
struct OriginServer {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    paths: Arc<Mutex<Vec<String>>>,
    /// What `/healthz` answers.
    health_status: Arc<AtomicU16>,
    accept: Option<tokio::task::JoinHandle<()>>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl OriginServer {
    async fn start() -> OriginServer {
        let mut server = OriginServer {
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            requests: Arc::new(AtomicU64::new(0)),
            paths: Arc::new(Mutex::new(Vec::new())),
            health_status: Arc::new(AtomicU16::new(200)),
            accept: None,
            connections: Arc::new(Mutex::new(JoinSet::new())),
        };
        server.listen().await;
        server
    }

    async fn listen(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("bind {}: {e}", self.addr),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let (requests, paths, health) = (
            self.requests.clone(),
            self.paths.clone(),
            self.health_status.clone(),
        );
        let connections = self.connections.clone();
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (requests, paths, health) = (requests.clone(), paths.clone(), health.clone());
                let router = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                    let (requests, paths, health) =
                        (requests.clone(), paths.clone(), health.clone());
                    async move {
                        let path = uri.path().to_string();
                        if path == "/healthz" {
                            let status =
                                axum::http::StatusCode::from_u16(health.load(Ordering::SeqCst))
                                    .unwrap();
                            return (status, "health");
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        paths.lock().unwrap().push(path);
                        (axum::http::StatusCode::OK, "segment")
                    }
                });
                let service = hyper_util::service::TowerToHyperService::new(router);
                connections.lock().unwrap().spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        }));
    }

    fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.connections.lock().unwrap().abort_all();
    }

    async fn restart(&mut self) {
        self.stop();
        self.listen().await;
    }

    fn served(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for OriginServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An edge in front of `peers`, with `proxy.upstream.{key}` set to `value` (YAML).
async fn pool_edge(origin: &TestOrigin, peers: &[SocketAddr], key: &str, value: &str) -> Edge {
    EdgeConfig::to(&origin.url(), peers[0])
        .peers(peers)
        .set(&format!("proxy.upstream.{key}"), value)
        .start()
        .await
}

async fn wait_healthy(edge: &Edge, healthy: f64) {
    eventually(
        Duration::from_secs(10),
        &format!("{healthy} healthy peers"),
        || async move {
            (edge
                .metric("epochgate_upstream_peers{state=\"healthy\"}")
                .await
                == healthy)
                .then_some(())
        },
    )
    .await;
}

/// Sends `count` requests one after another; every one must be answered 200.
async fn all_succeed(edge: &Edge, token: &str, count: usize, what: &str) {
    for i in 0..count {
        let response = edge
            .get_with_token(&format!("/live/seg{i}.ts"), token)
            .await;
        assert_eq!(response.status(), 200, "{what}: request {i}");
    }
}

#[tokio::test]
async fn a_stopped_server_is_skipped_without_failed_requests_and_used_again_once_back() {
    let origin = TestOrigin::start().await;
    origin.set_record("alice", 0, &[]);
    let token = origin.token("alice", "tv");
    let a = OriginServer::start().await;
    let mut b = OriginServer::start().await;
    let edge = pool_edge(
        &origin,
        &[a.addr, b.addr],
        "health_check",
        "{ interval: 300ms, timeout: 200ms }",
    )
    .await;
    assert_eq!(
        edge.metric("epochgate_upstream_peers{state=\"total\"}")
            .await,
        2.0
    );
    wait_healthy(&edge, 2.0).await;
    all_succeed(&edge, &token, 20, "both up").await;
    assert!(a.served() > 0 && b.served() > 0, "round robin uses both");

    b.stop();
    // Until the health check notices, requests that meet the stopped server are retried on
    // the other one.
    all_succeed(&edge, &token, 30, "right after the stop").await;
    wait_healthy(&edge, 1.0).await;
    let connect_errors = edge
        .metric("epochgate_upstream_errors_total{kind=\"connect\"}")
        .await;
    let a_before = a.served();
    all_succeed(&edge, &token, 30, "after the health check").await;
    assert_eq!(
        a.served() - a_before,
        30,
        "every request went to the server still up"
    );
    assert_eq!(
        edge.metric("epochgate_upstream_errors_total{kind=\"connect\"}")
            .await,
        connect_errors,
        "no request was sent to the stopped server"
    );

    b.restart().await;
    wait_healthy(&edge, 2.0).await;
    let b_before = b.served();
    all_succeed(&edge, &token, 20, "after the restart").await;
    assert!(
        b.served() > b_before,
        "the restarted server gets traffic again"
    );
}

#[tokio::test]
async fn a_request_meeting_a_stopped_server_before_its_check_is_retried_on_another() {
    let origin = TestOrigin::start().await;
    origin.set_record("alice", 0, &[]);
    let token = origin.token("alice", "tv");
    let a = OriginServer::start().await;
    let mut b = OriginServer::start().await;
    // One check at start, the next one long after the test: only the retry can help.
    let edge = pool_edge(
        &origin,
        &[a.addr, b.addr],
        "health_check",
        "{ interval: 1h, timeout: 200ms }",
    )
    .await;
    wait_healthy(&edge, 2.0).await;
    b.stop();
    all_succeed(
        &edge,
        &token,
        10,
        "with a stopped server still counted healthy",
    )
    .await;
    assert_eq!(a.served(), 10);
    assert!(
        edge.metric("epochgate_upstream_errors_total{kind=\"connect\"}")
            .await
            >= 1.0,
        "no request met the stopped server"
    );
}

#[tokio::test]
async fn with_no_healthy_server_the_edge_answers_502_json() {
    let origin = TestOrigin::start().await;
    origin.set_record("alice", 0, &[]);
    let mut down = OriginServer::start().await;
    down.stop();
    let edge = pool_edge(
        &origin,
        &[down.addr],
        "health_check",
        "{ interval: 200ms, timeout: 200ms }",
    )
    .await;
    wait_healthy(&edge, 0.0).await;
    let response = edge
        .get_with_token("/live/seg1.ts", &origin.token("alice", "tv"))
        .await;
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body = rejection(response, 502).await;
    assert_eq!(body["error"], "no_healthy_upstream");
    assert!(
        edge.metric("epochgate_upstream_errors_total{kind=\"no_healthy_peer\"}")
            .await
            >= 1.0
    );
    // Rejections by the gate do not depend on the upstream.
    let missing = edge.get("/live/seg1.ts").await;
    assert_eq!(rejection(missing, 401).await["error"], "missing_token");
}

#[tokio::test]
async fn a_server_failing_its_http_health_check_gets_no_requests() {
    let origin = TestOrigin::start().await;
    origin.set_record("alice", 0, &[]);
    let token = origin.token("alice", "tv");
    let a = OriginServer::start().await;
    let b = OriginServer::start().await;
    b.health_status.store(503, Ordering::SeqCst);
    let edge = pool_edge(
        &origin,
        &[a.addr, b.addr],
        "health_check",
        "{ interval: 200ms, timeout: 200ms, path: /healthz, expected_status: 200 }",
    )
    .await;
    wait_healthy(&edge, 1.0).await;
    all_succeed(&edge, &token, 20, "one server failing its check").await;
    assert_eq!(b.served(), 0, "the failing server got requests");
    assert_eq!(a.served(), 20);

    b.health_status.store(200, Ordering::SeqCst);
    wait_healthy(&edge, 2.0).await;
    all_succeed(&edge, &token, 20, "both passing").await;
    assert!(b.served() > 0);
}

#[tokio::test]
async fn consistent_hashing_keeps_each_path_on_one_server() {
    let origin = TestOrigin::start().await;
    origin.set_record("alice", 0, &[]);
    let token = origin.token("alice", "tv");
    let a = OriginServer::start().await;
    let b = OriginServer::start().await;
    let edge = pool_edge(&origin, &[a.addr, b.addr], "selection", "consistent_hash").await;
    for round in 0..5 {
        for segment in 0..20 {
            let response = edge
                .get_with_token(&format!("/live/seg{segment}.ts?token=x{round}"), &token)
                .await;
            assert_eq!(response.status(), 200);
        }
    }
    let on_a: HashSet<String> = a.paths.lock().unwrap().iter().cloned().collect();
    let on_b: HashSet<String> = b.paths.lock().unwrap().iter().cloned().collect();
    assert!(on_a.is_disjoint(&on_b), "a path went to both servers");
    assert!(!on_a.is_empty() && !on_b.is_empty(), "the paths are spread");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for path in a
        .paths
        .lock()
        .unwrap()
        .iter()
        .chain(b.paths.lock().unwrap().iter())
    {
        *counts.entry(path.clone()).or_default() += 1;
    }
    assert!(counts.values().all(|&n| n == 5), "{counts:?}");
}
