//! The fleet replica on a three-node NATS cluster (bucket on three replicas): the node the
//! edges are connected to goes down and comes back, or the node leading the bucket's stream
//! goes down under edges connected elsewhere, and no sign-out is lost on the way.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use common::nats::{create_bucket, put_record, NatsCluster};
use common::replica_fleet::{connected_ports, spawn_replica_edge};
use common::*;

const BUCKET: &str = "epochgate-revocations";
const MONTH: Duration = Duration::from_secs(30 * 86_400);
/// Restarts of one edge, at most, to get it connected to the chosen node (the client picks
/// a server of its list at random: each try lands there one time in three).
const PLACEMENT_TRIES: usize = 30;

/// The bucket, opened through one node only (the client is given no other URL), retrying
/// while that node catches up with the cluster after a restart (20 s at most).
async fn bucket_through(url: &str) -> kv::Store {
    let client = async_nats::connect(url).await.expect("connect to the node");
    let js = jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match js.get_key_value(BUCKET).await {
            Ok(store) => return store,
            Err(e) if Instant::now() > deadline => panic!("open the bucket through {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Puts a sign-out (epoch one second ahead of every token issued so far), retrying while
/// the cluster moves the stream's leadership after a node left or came back (15 s at most).
async fn sign_out(store: &kv::Store, account: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let value = serde_json::json!({
            "account_id": account, "epoch": now() + 1, "devices": {},
            "changed_at_ms": epochgate::unix_millis(),
        });
        let key = epochgate::revocation::replica::key::encode(account);
        match tokio::time::timeout(
            Duration::from_secs(2),
            store.put(key, value.to_string().into()),
        )
        .await
        {
            Ok(Ok(_)) => return,
            _ if Instant::now() > deadline => panic!("the sign-out of {account} was never acked"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The node (index) an edge's replica is connected to, once it holds exactly one.
async fn node_of(edge: &Edge, ports: &[u16]) -> usize {
    eventually(Duration::from_secs(10), "one NATS connection", || async {
        match connected_ports(edge.pid(), ports).as_slice() {
            [port] => ports.iter().position(|p| p == port),
            _ => None,
        }
    })
    .await
}

/// Restarts each edge until its replica is connected to a node `wanted` accepts.
async fn place_edges(edges: &mut [Edge], ports: &[u16], wanted: impl Fn(usize) -> bool) {
    for edge in edges.iter_mut() {
        let mut tries = 0;
        while !wanted(node_of(edge, ports).await) {
            tries += 1;
            assert!(
                tries <= PLACEMENT_TRIES,
                "an edge never connected to a wanted node"
            );
            edge.restart();
            edge.wait_ready().await;
        }
    }
}

/// The node (index) leading the bucket's stream (the nodes are named n1, n2 and n3).
async fn stream_leader(url: &str) -> usize {
    let client = async_nats::connect(url).await.expect("connect to the node");
    let js = jetstream::new(client);
    eventually(Duration::from_secs(10), "the stream's leader", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream(format!("KV_{BUCKET}")).await.ok()?;
            let info = stream.info().await.ok()?;
            let leader = info.cluster.as_ref()?.leader.as_deref()?;
            leader
                .strip_prefix('n')?
                .parse::<usize>()
                .ok()?
                .checked_sub(1)
        }
    })
    .await
}

/// Waits (30 s at most: the edge reconnects at once, but when the lost node led the stream
/// the cluster elects a new leader first, which took up to 13 s on a 2-core machine) until
/// the edge rejects the token `401 signed_out`.
/// On time-out the panic shows the end of the edge's log.
async fn rejects_signed_out(edge: &Edge, token: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = edge.get_with_token("/", token).await;
        if r.status() == 401 {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            if body["error"] == "signed_out" {
                return;
            }
        }
        if Instant::now() > deadline {
            let log = edge.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "{who} not 401 signed_out at an edge within 30 s; the edge's log ends:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A three-node cluster holding the bucket on three replicas: the nodes, their client ports
/// and URLs, and the bucket opened through the first node.
async fn cluster_with_bucket() -> (NatsCluster, Vec<u16>, Vec<String>, kv::Store) {
    let cluster = NatsCluster::start();
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    // Retries until the cluster has elected its meta leader.
    let store = create_bucket(&urls[0], BUCKET, MONTH, 3).await;
    (cluster, ports, urls, store)
}

/// After the outage, at `edge`: every account signed out so far is still rejected, an
/// account never signed out is served, and the replica holds exactly the signed-out ones.
async fn nothing_lost(edge: &Edge, signed_out: &[(&str, &String)], never_signed_out: &str) {
    for (who, token) in signed_out {
        let r = edge.get_with_token("/", token).await;
        assert_eq!(r.status(), 401, "{who} is still signed out");
    }
    assert_eq!(
        edge.get_with_token("/", never_signed_out).await.status(),
        200,
        "an account never signed out is still served"
    );
    let readiness = edge.readiness().await;
    assert_eq!(readiness["replica"], "complete");
    assert_eq!(readiness["replica_records"], signed_out.len());
}

#[tokio::test]
async fn sign_out_while_the_edges_nats_node_is_down_reaches_every_edge_and_nothing_is_lost() {
    let (mut cluster, ports, urls, first_writer) = cluster_with_bucket().await;
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let (alice, bob, carol, dave) = (
        origin.token("alice", "tv"),
        origin.token("bob", "tv"),
        origin.token("carol", "tv"),
        origin.token("dave", "tv"),
    );
    put_record(&first_writer, "alice", now() + 1, &[]).await;

    // Three edges, each given all three servers, all connected to the same node.
    let mut edges: Vec<Edge> = (0..3)
        .map(|_| spawn_replica_edge(&origin.url(), upstream.addr, &urls, BUCKET))
        .collect();
    let mut nodes = Vec::new();
    for edge in &edges {
        edge.wait_ready().await;
        nodes.push(node_of(edge, &ports).await);
    }
    let down = (0..3)
        .max_by_key(|n| nodes.iter().filter(|m| *m == n).count())
        .unwrap();
    place_edges(&mut edges, &ports, |node| node == down).await;
    for edge in &edges {
        rejects_signed_out(edge, &alice, "alice").await;
        assert_eq!(edge.get_with_token("/", &bob).await.status(), 200);
    }

    // The edges' node goes down; a sign-out is made through another node meanwhile.
    cluster.stop_node(down);
    let other = (down + 1) % 3;
    let writer = bucket_through(&urls[other]).await;
    sign_out(&writer, "bob").await;
    for edge in &edges {
        rejects_signed_out(edge, &bob, "bob").await;
        let now_on = node_of(edge, &ports).await;
        assert_ne!(now_on, down, "the edge reconnected to a node that is up");
        assert_eq!(
            edge.get_with_token("/", &alice).await.status(),
            401,
            "an earlier sign-out still rejects after the reconnect"
        );
    }

    // The node comes back; a sign-out made through it arrives too, and nothing was lost.
    cluster.start_node(down);
    let back = bucket_through(&urls[down]).await;
    sign_out(&back, "carol").await;
    for edge in &edges {
        rejects_signed_out(edge, &carol, "carol").await;
        let signed_out = [("alice", &alice), ("bob", &bob), ("carol", &carol)];
        nothing_lost(edge, &signed_out, &dave).await;
    }
    assert_eq!(
        origin.revocation_requests(),
        0,
        "no edge looked a record up"
    );
}

#[tokio::test]
async fn sign_out_while_the_streams_leader_is_down_reaches_edges_connected_to_other_nodes() {
    let (mut cluster, ports, urls, first_writer) = cluster_with_bucket().await;
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let (alice, bob, carol) = (
        origin.token("alice", "tv"),
        origin.token("bob", "tv"),
        origin.token("carol", "tv"),
    );
    put_record(&first_writer, "alice", now() + 1, &[]).await;
    let leader = stream_leader(&urls[0]).await;

    // Two edges, each connected to a node that does not lead the stream: their watch is
    // served from the leader, so losing it stops their updates while their connection stays.
    let mut edges: Vec<Edge> = (0..2)
        .map(|_| spawn_replica_edge(&origin.url(), upstream.addr, &urls, BUCKET))
        .collect();
    for edge in &edges {
        edge.wait_ready().await;
    }
    place_edges(&mut edges, &ports, |node| node != leader).await;
    for edge in &edges {
        rejects_signed_out(edge, &alice, "alice").await;
        assert_eq!(edge.get_with_token("/", &bob).await.status(), 200);
    }

    cluster.stop_node(leader);
    let writer = bucket_through(&urls[(leader + 1) % 3]).await;
    sign_out(&writer, "bob").await;
    for edge in &edges {
        rejects_signed_out(edge, &bob, "bob").await;
        nothing_lost(edge, &[("alice", &alice), ("bob", &bob)], &carol).await;
    }
    assert_eq!(
        origin.revocation_requests(),
        0,
        "no edge looked a record up"
    );
}
