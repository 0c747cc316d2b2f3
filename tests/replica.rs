//! The fleet replica: revocation records from a NATS JetStream bucket (real nats-server
//! processes on loopback, storage in temp dirs), decisions on the real edge binary.

mod common;

use std::time::Duration;

use common::nats::{
    create_bucket, heartbeats, put_heartbeat, put_many, put_raw, put_record, NatsServer, Relay,
};
use common::replica_fleet::{
    replica_edge, ReplicaBackends, MAX_LIFETIME, ON_ORIGIN_UNAVAILABLE, REPLICA_MAX_STALE,
};
use common::*;

const BUCKET: &str = "epochgate-revocations";
const MONTH: Duration = Duration::from_secs(30 * 86_400);

/// How an edge of these tests is configured: the replica edge of tests/common, with these
/// keys.
struct ReplicaEdge<'a> {
    servers: Vec<String>,
    max_stale: &'a str,
    policy: &'a str,
    max_lifetime: Option<&'a str>,
    bucket: &'a str,
}

impl Default for ReplicaEdge<'_> {
    fn default() -> Self {
        ReplicaEdge {
            servers: Vec::new(),
            max_stale: REPLICA_MAX_STALE,
            policy: ON_ORIGIN_UNAVAILABLE,
            max_lifetime: Some(MAX_LIFETIME),
            bucket: BUCKET,
        }
    }
}

impl ReplicaEdge<'_> {
    fn config(&self, origin_url: &str, upstream: &Upstream) -> EdgeConfig {
        let config = replica_edge(origin_url, upstream.addr, &self.servers, self.bucket)
            .replica_max_stale(self.max_stale)
            .on_origin_unavailable(self.policy);
        match self.max_lifetime {
            Some(lifetime) => config.max_lifetime(lifetime),
            None => config.remove("token.max_lifetime"),
        }
    }

    /// Starts the edge process without waiting for readiness.
    fn spawn(&self, origin_url: &str, upstream: &Upstream) -> Edge {
        self.config(origin_url, upstream).spawn()
    }

    async fn start(&self, origin_url: &str, upstream: &Upstream) -> Edge {
        let edge = self.spawn(origin_url, upstream);
        edge.wait_ready().await;
        edge
    }
}

/// A ready edge whose only NATS server is `nats` behind a relay the test can cut.
async fn edge_behind_relay(
    nats: &NatsServer,
    origin: &TestOrigin,
    upstream: &Upstream,
) -> (Relay, Edge) {
    let relay = Relay::start(nats.port).await;
    let edge = ReplicaEdge {
        servers: vec![relay.url()],
        ..ReplicaEdge::default()
    }
    .start(&origin.url(), upstream)
    .await;
    (relay, edge)
}

/// A nats-server whose bucket holds the accounts `signed_out` (signed out a second from
/// now), the bucket, the test origin and an upstream: what most tests here start from.
async fn backends(
    signed_out: &[&str],
) -> (
    NatsServer,
    async_nats::jetstream::kv::Store,
    TestOrigin,
    Upstream,
) {
    let nats = NatsServer::start();
    let store = create_bucket(&nats.url(), BUCKET, MONTH, 1).await;
    for account in signed_out {
        put_record(&store, account, now() + 1, &[]).await;
    }
    (
        nats,
        store,
        TestOrigin::start().await,
        Upstream::start().await,
    )
}

fn on(server: &NatsServer) -> ReplicaEdge<'static> {
    ReplicaEdge {
        servers: vec![server.url()],
        ..ReplicaEdge::default()
    }
}

async fn status(edge: &Edge, token: &str) -> u16 {
    edge.get_with_token("/", token).await.status().as_u16()
}

/// The `error` of a rejection.
async fn error_of(edge: &Edge, token: &str, expected_status: u16) -> String {
    let body = rejection(edge.get_with_token("/", token).await, expected_status).await;
    body["error"].as_str().unwrap_or_default().to_string()
}

// ---------------------------------------------------------------------------
// A sign-out at the reference auth origin, through the bucket, to three edges
// ---------------------------------------------------------------------------

struct Fleet {
    backends: ReplicaBackends,
    edges: Vec<Edge>,
    client: reqwest::Client,
}

/// One NATS server, the reference auth origin publishing to it (`--nats`), three edges.
async fn fleet() -> Fleet {
    let backends = ReplicaBackends::start(BUCKET).await;
    let edges = futures::future::join_all((0..3).map(|_| backends.edge().start())).await;
    Fleet {
        backends,
        edges,
        client: reqwest::Client::new(),
    }
}

impl Fleet {
    async fn post(&self, path: &str) {
        let r = self
            .client
            .post(format!("{}{path}", self.backends.origin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    /// Waits (one second at most) until every edge answers `status` with `error`.
    async fn every_edge_rejects(&self, token: &str, status: u16, error: &str) {
        for edge in &self.edges {
            eventually(
                Duration::from_secs(1),
                &format!("{status} {error}"),
                || async move {
                    let r = edge.get_with_token("/", token).await;
                    if r.status() != status {
                        return None;
                    }
                    let body: serde_json::Value = r.json().await.ok()?;
                    (body["error"] == error).then_some(())
                },
            )
            .await;
        }
    }
}

#[tokio::test]
async fn sign_out_at_the_reference_origin_reaches_every_edge_within_a_second_without_lookups() {
    let fleet = fleet().await;
    let token = fleet.backends.origin.issue_token("alice", "tv").unwrap();
    for edge in &fleet.edges {
        assert_eq!(status(edge, &token).await, 200);
    }
    fleet.post("/v1/accounts/alice/signout-all").await;
    fleet.every_edge_rejects(&token, 401, "signed_out").await;
    assert_eq!(
        fleet
            .backends
            .origin
            .revocation_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no edge looked a record up at the auth origin"
    );
}

#[tokio::test]
async fn device_sign_out_at_the_reference_origin_rejects_only_that_device_on_every_edge() {
    let fleet = fleet().await;
    let tv = fleet.backends.origin.issue_token("alice", "tv").unwrap();
    let phone = fleet.backends.origin.issue_token("alice", "phone").unwrap();
    fleet.post("/v1/accounts/alice/devices/tv/signout").await;
    fleet
        .every_edge_rejects(&tv, 401, "device_signed_out")
        .await;
    for edge in &fleet.edges {
        assert_eq!(
            status(edge, &phone).await,
            200,
            "the other device still plays"
        );
    }
    assert_eq!(
        fleet
            .backends
            .origin
            .revocation_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

// ---------------------------------------------------------------------------
// Start-up and readiness
// ---------------------------------------------------------------------------

#[tokio::test]
async fn restarted_edge_is_ready_only_with_all_10000_records_and_rejects_on_its_first_request() {
    let (nats, store, origin, upstream) = backends(&[]).await;
    let token = origin.token("account-9999", "tv");
    put_many(&store, "account-", 10_000, now() + 1).await;
    let mut edge = on(&nats).start(&origin.url(), &upstream).await;
    edge.restart();
    // Every /readyz is looked at: none may say ready before all records are in.
    eventually(
        Duration::from_secs(15),
        "ready after the restart",
        || async {
            let (status, body) = edge.try_readiness().await?;
            let ready = status == 200;
            if ready {
                assert_eq!(body["replica"], "complete");
                assert_eq!(body["replica_records"], 10_000, "ready with every record");
            }
            ready.then_some(())
        },
    )
    .await;
    assert_eq!(error_of(&edge, &token, 401).await, "signed_out");
    assert_eq!(origin.revocation_requests(), 0);
    assert_eq!(edge.metric("epochgate_replica_records").await, 10_000.0);
}

#[tokio::test]
async fn empty_bucket_is_complete_at_once() {
    let (nats, _store, origin, upstream) = backends(&[]).await;
    let edge = on(&nats).start(&origin.url(), &upstream).await;
    let body = edge.readiness().await;
    assert_eq!(body["replica"], "complete");
    assert_eq!(body["replica_records"], 0);
    assert_eq!(status(&edge, &origin.token("alice", "tv")).await, 200);
    assert_eq!(origin.revocation_requests(), 0);
}

#[tokio::test]
async fn nats_down_at_start_keeps_the_edge_not_ready_until_it_comes() {
    let (mut nats, _store, origin, upstream) = backends(&["alice"]).await;
    nats.stop();
    let edge = on(&nats).spawn(&origin.url(), &upstream);
    let token = origin.token("alice", "tv");
    let (_, body) = eventually(Duration::from_secs(10), "readyz answers", || {
        edge.try_readiness()
    })
    .await;
    assert_eq!(body["ready"], false);
    assert_eq!(body["replica"], "disconnected");
    assert_eq!(
        error_of(&edge, &origin.token("bob", "tv"), 503).await,
        "not_ready"
    );

    nats.start_again();
    edge.wait_ready().await;
    assert_eq!(edge.readiness().await["replica"], "complete");
    assert_eq!(error_of(&edge, &token, 401).await, "signed_out");
}

// ---------------------------------------------------------------------------
// NATS lost after start
// ---------------------------------------------------------------------------

#[tokio::test]
async fn nats_down_later_is_served_from_the_replica_until_max_stale_then_by_the_policy() {
    let (mut nats, _store, origin, upstream) = backends(&["alice"]).await;
    let edge = ReplicaEdge {
        max_stale: "3s",
        ..on(&nats)
    }
    .start(&origin.url(), &upstream)
    .await;
    let (alice, bob) = (origin.token("alice", "tv"), origin.token("bob", "tv"));

    nats.stop();
    // Within max_stale: the replica decides.
    assert_eq!(error_of(&edge, &alice, 401).await, "signed_out");
    assert_eq!(status(&edge, &bob).await, 200);
    eventually(Duration::from_secs(5), "replica disconnected", || async {
        (edge.readiness().await["replica"] == "disconnected").then_some(())
    })
    .await;
    // Past it: `deny` for every request.
    eventually(
        Duration::from_secs(10),
        "503 origin_unavailable",
        || async { (status(&edge, &bob).await == 503).then_some(()) },
    )
    .await;
    assert_eq!(error_of(&edge, &bob, 503).await, "origin_unavailable");
    assert_eq!(error_of(&edge, &alice, 503).await, "origin_unavailable");
    assert!(
        edge.metric("epochgate_replica_last_contact_age_seconds")
            .await
            >= 3.0
    );
    assert_eq!(
        edge.metric("epochgate_replica_state{state=\"disconnected\"}")
            .await,
        1.0
    );

    nats.start_again();
    eventually(Duration::from_secs(10), "served again", || async {
        (status(&edge, &bob).await == 200).then_some(())
    })
    .await;
    assert_eq!(error_of(&edge, &alice, 401).await, "signed_out");
    assert_eq!(origin.revocation_requests(), 0);
}

#[tokio::test]
async fn a_quiet_bucket_does_not_make_the_replica_stale() {
    let (nats, _store, origin, upstream) = backends(&["alice"]).await;
    let edge = ReplicaEdge {
        max_stale: "2s",
        ..on(&nats)
    }
    .start(&origin.url(), &upstream)
    .await;
    // Twice max_stale without a single entry: the round trips keep the contact fresh.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(status(&edge, &origin.token("bob", "tv")).await, 200);
    assert_eq!(
        error_of(&edge, &origin.token("alice", "tv"), 401).await,
        "signed_out"
    );
    assert!(
        edge.metric("epochgate_replica_last_contact_age_seconds")
            .await
            < 2.0
    );
    assert_eq!(
        edge.metric("epochgate_replica_state{state=\"complete\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn past_max_stale_the_allow_policy_forwards_unchecked() {
    let (mut nats, _store, origin, upstream) = backends(&["alice"]).await;
    let edge = ReplicaEdge {
        max_stale: "2s",
        policy: "allow",
        ..on(&nats)
    }
    .start(&origin.url(), &upstream)
    .await;
    let alice = origin.token("alice", "tv");
    nats.stop();
    eventually(Duration::from_secs(10), "allowed unchecked", || async {
        (status(&edge, &alice).await == 200).then_some(())
    })
    .await;
    assert_eq!(
        edge.metric("epochgate_requests_total{decision=\"allowed_origin_unavailable\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn updates_made_while_the_edge_was_cut_off_arrive_when_it_reconnects() {
    let (nats, store, origin, upstream) = backends(&[]).await;
    put_record(&store, "alice", 1_000, &[]).await;
    let (mut relay, edge) = edge_behind_relay(&nats, &origin, &upstream).await;
    let (alice, bob) = (origin.token("alice", "tv"), origin.token("bob", "phone"));
    assert_eq!(status(&edge, &alice).await, 200);

    relay.cut();
    eventually(Duration::from_secs(10), "replica disconnected", || async {
        (edge.readiness().await["replica"] == "disconnected").then_some(())
    })
    .await;
    // Sign-outs published while this edge cannot hear them.
    put_record(&store, "alice", now() + 1, &[]).await;
    put_record(&store, "bob", 1_000, &[("phone", now() + 1)]).await;
    assert_eq!(status(&edge, &alice).await, 200, "not heard yet");

    relay.restore().await;
    edge.until_status(&alice, 401).await;
    assert_eq!(error_of(&edge, &alice, 401).await, "signed_out");
    assert_eq!(error_of(&edge, &bob, 401).await, "device_signed_out");
    assert_eq!(edge.readiness().await["replica"], "complete");
}

// ---------------------------------------------------------------------------
// Values the edge cannot use
// ---------------------------------------------------------------------------

/// A ready edge on a bucket holding a signed-out `carol`, and the bucket.
async fn edge_with_carol() -> (
    NatsServer,
    async_nats::jetstream::kv::Store,
    TestOrigin,
    Upstream,
    Edge,
) {
    let (nats, store, origin, upstream) = backends(&["carol"]).await;
    let edge = on(&nats).start(&origin.url(), &upstream).await;
    (nats, store, origin, upstream, edge)
}

/// After a bad entry for `alice`: counted as malformed, alice falls to the policy (deny),
/// carol is still signed out, and a valid value makes alice usable again.
async fn alice_is_unusable_until_a_valid_value(
    edge: &Edge,
    store: &async_nats::jetstream::kv::Store,
    origin: &TestOrigin,
    key: &str,
) {
    let alice = origin.token("alice", "tv");
    eventually(Duration::from_secs(5), "counted malformed", || async {
        (edge
            .metric("epochgate_replica_updates_total{outcome=\"malformed\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(error_of(edge, &alice, 503).await, "origin_unavailable");
    assert_eq!(
        error_of(edge, &origin.token("carol", "tv"), 401).await,
        "signed_out"
    );
    assert_eq!(status(edge, &origin.token("bob", "tv")).await, 200);

    put_raw(
        store,
        key,
        &serde_json::json!({"account_id": "alice", "epoch": 1_000, "devices": {}}).to_string(),
    )
    .await;
    edge.until_status(&alice, 200).await;
    assert_eq!(origin.revocation_requests(), 0);
}

#[tokio::test]
async fn malformed_value_is_counted_and_its_account_falls_to_the_policy() {
    let (_nats, store, origin, _upstream, edge) = edge_with_carol().await;
    put_raw(&store, "alice", "{not json").await;
    alice_is_unusable_until_a_valid_value(&edge, &store, &origin, "alice").await;
}

#[tokio::test]
async fn value_for_another_account_than_its_key_is_counted_and_that_key_falls_to_the_policy() {
    let (_nats, store, origin, _upstream, edge) = edge_with_carol().await;
    let value = serde_json::json!({"account_id": "mallory", "epoch": 1, "devices": {}});
    put_raw(&store, "alice", &value.to_string()).await;
    alice_is_unusable_until_a_valid_value(&edge, &store, &origin, "alice").await;
    // The value named mallory, but mallory's record was not touched.
    assert_eq!(status(&edge, &origin.token("mallory", "tv")).await, 200);
}

#[tokio::test]
async fn key_in_the_wrong_encoding_is_counted_and_its_account_falls_to_the_policy() {
    let (_nats, store, origin, _upstream, edge) = edge_with_carol().await;
    // `alice` written base64url-encoded: not how her key is spelled.
    let value = serde_json::json!({"account_id": "alice", "epoch": 1, "devices": {}});
    put_raw(&store, "b64.YWxpY2U", &value.to_string()).await;
    alice_is_unusable_until_a_valid_value(&edge, &store, &origin, "alice").await;
}

#[tokio::test]
async fn value_naming_more_devices_than_max_devices_per_account_is_counted_and_falls_to_the_policy()
{
    let (_nats, store, origin, _upstream, edge) = edge_with_carol().await;
    // The default cache.max_devices_per_account is 1,000.
    let devices: std::collections::HashMap<String, u64> =
        (0..1_001).map(|i| (format!("device-{i}"), 1)).collect();
    let value = serde_json::json!({"account_id": "alice", "epoch": 1, "devices": devices});
    put_raw(&store, "alice", &value.to_string()).await;
    alice_is_unusable_until_a_valid_value(&edge, &store, &origin, "alice").await;
}

#[tokio::test]
async fn key_that_names_no_account_is_counted_and_changes_nothing() {
    let (_nats, store, origin, _upstream, edge) = edge_with_carol().await;
    put_raw(&store, "b64.____", "{}").await;
    eventually(Duration::from_secs(5), "counted malformed", || async {
        (edge
            .metric("epochgate_replica_updates_total{outcome=\"malformed\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        error_of(&edge, &origin.token("carol", "tv"), 401).await,
        "signed_out"
    );
    assert_eq!(status(&edge, &origin.token("alice", "tv")).await, 200);
}

#[tokio::test]
async fn an_email_account_id_is_found_under_its_encoded_key() {
    let (_nats, store, origin, _upstream, edge) = edge_with_carol().await;
    put_record(&store, "dave@example.com", now() + 1, &[]).await;
    edge.until_status(&origin.token("dave@example.com", "tv"), 401)
        .await;
    assert_eq!(
        edge.metric("epochgate_replica_updates_total{outcome=\"malformed\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn deleted_key_unrevokes_nobody_else_and_removes_the_record() {
    let (_nats, store, origin, _upstream, edge) = edge_with_carol().await;
    let carol = origin.token("carol", "tv");
    assert_eq!(status(&edge, &carol).await, 401);
    store.delete("carol").await.unwrap();
    edge.until_status(&carol, 200).await;
    assert_eq!(edge.metric("epochgate_replica_records").await, 0.0);
}

#[tokio::test]
async fn bucket_deleted_and_created_again_is_read_from_its_start() {
    let (nats, store, origin, _upstream, edge) = edge_with_carol().await;
    let dave = origin.token("dave", "tv");
    put_record(&store, "dave", now() + 1, &[]).await;
    edge.until_status(&dave, 401).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.delete_stream(format!("KV_{BUCKET}")).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the edge sees the bucket gone",
        || async { (edge.readiness().await["replica"] == "disconnected").then_some(()) },
    )
    .await;
    // The records held stay: epochs only go forward.
    assert_eq!(status(&edge, &dave).await, 401);

    // The new bucket numbers its revisions from 1 again, below where the edge had read to.
    let store = create_bucket(&nats.url(), BUCKET, MONTH, 1).await;
    put_record(&store, "erin", now() + 1, &[]).await;
    edge.until_status(&origin.token("erin", "tv"), 401).await;
    assert_eq!(status(&edge, &origin.token("bob", "tv")).await, 200);
    assert_eq!(edge.readiness().await["replica"], "complete");
}

#[tokio::test]
async fn bucket_replaced_while_the_edge_was_cut_off_is_read_from_its_start() {
    let (nats, _store, origin, upstream) = backends(&["carol", "dave"]).await;
    let (mut relay, edge) = edge_behind_relay(&nats, &origin, &upstream).await;
    let dave = origin.token("dave", "tv");
    assert_eq!(status(&edge, &dave).await, 401);

    relay.cut();
    eventually(Duration::from_secs(10), "replica disconnected", || async {
        (edge.readiness().await["replica"] == "disconnected").then_some(())
    })
    .await;
    // Replaced while this edge cannot hear it: the new bucket numbers its revisions from 1,
    // below where the edge's reading would resume on reconnecting.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.delete_stream(format!("KV_{BUCKET}")).await.unwrap();
    let store = create_bucket(&nats.url(), BUCKET, MONTH, 1).await;
    put_record(&store, "erin", now() + 1, &[]).await;

    relay.restore().await;
    let erin = origin.token("erin", "tv");
    eventually(
        Duration::from_secs(20),
        "erin signed out at the edge",
        || {
            let erin = erin.clone();
            let edge = &edge;
            async move { (status(edge, &erin).await == 401).then_some(()) }
        },
    )
    .await;
    assert_eq!(status(&edge, &dave).await, 401, "records held stay");
    assert_eq!(status(&edge, &origin.token("bob", "tv")).await, 200);
}

// ---------------------------------------------------------------------------
// Configuration and start-up checks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn replica_without_token_max_lifetime_is_a_config_error_naming_the_key() {
    let nats = NatsServer::start();
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let (code, out) = ReplicaEdge {
        max_lifetime: None,
        ..on(&nats)
    }
    .config(&origin.url(), &upstream)
    .check();
    assert_ne!(code, 0);
    assert!(out.contains("token.max_lifetime"), "{out}");
}

#[tokio::test]
async fn missing_bucket_refuses_to_start() {
    let nats = NatsServer::start();
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let mut edge = on(&nats).spawn(&origin.url(), &upstream);
    let status = edge
        .wait_exit(Duration::from_secs(15))
        .expect("the edge exits");
    assert!(!status.success());
    let log = edge.log();
    assert!(
        log.contains("epochgate-revocations") && log.contains("does not exist"),
        "{log}"
    );
}

#[tokio::test]
async fn bucket_max_age_shorter_than_token_max_lifetime_refuses_to_start_naming_both() {
    let nats = NatsServer::start();
    create_bucket(&nats.url(), BUCKET, Duration::from_secs(3600), 1).await;
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let mut edge = ReplicaEdge {
        max_lifetime: Some("2h"),
        ..on(&nats)
    }
    .spawn(&origin.url(), &upstream);
    let status = edge
        .wait_exit(Duration::from_secs(15))
        .expect("the edge exits");
    assert!(!status.success());
    let log = edge.log();
    assert!(
        log.contains("max_age 1h") && log.contains("token.max_lifetime is 2h"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------
// The publisher's heartbeat (`replica.require_heartbeat`)
// ---------------------------------------------------------------------------

/// An edge that counts only heartbeats as contact, stale 2 s after the last one, policy deny.
async fn heartbeat_edge(nats: &NatsServer, origin: &TestOrigin, upstream: &Upstream) -> Edge {
    ReplicaEdge {
        max_stale: "2s",
        ..on(nats)
    }
    .config(&origin.url(), upstream)
    .set("replica.require_heartbeat", "true")
    .start()
    .await
}

#[tokio::test]
async fn with_require_heartbeat_a_replica_the_heartbeat_stops_reaching_goes_stale_while_connected()
{
    let (nats, store, origin, upstream) = backends(&["alice"]).await;
    let beating = heartbeats(store.clone());
    let edge = heartbeat_edge(&nats, &origin, &upstream).await;
    let bob = origin.token("bob", "tv");
    edge.until_status(&bob, 200).await;
    assert_eq!(
        error_of(&edge, &origin.token("alice", "tv"), 401).await,
        "signed_out"
    );

    // The publisher's heartbeats stop arriving (as when the edge's leaf node is cut off
    // from the hub); the edge's own connection is fine.
    beating.abort();
    edge.until_status(&bob, 503).await;
    assert_eq!(error_of(&edge, &bob, 503).await, "origin_unavailable");
    assert!(
        edge.metric("epochgate_replica_last_contact_age_seconds")
            .await
            >= 2.0
    );
    assert_eq!(
        edge.metric("epochgate_replica_state{state=\"complete\"}")
            .await,
        1.0,
        "still connected to its server"
    );

    let _beating = heartbeats(store.clone());
    edge.until_status(&bob, 200).await;
    assert_eq!(origin.revocation_requests(), 0);
}

#[tokio::test]
async fn with_require_heartbeat_an_old_heartbeat_read_at_start_is_not_fresh() {
    let (nats, store, origin, upstream) = backends(&[]).await;
    // The newest heartbeat in the bucket is an hour old: its publisher stopped, or this
    // copy of the bucket was cut off from it.
    put_heartbeat(&store, epochgate::unix_millis() - 3_600_000).await;
    let edge = heartbeat_edge(&nats, &origin, &upstream).await;
    let bob = origin.token("bob", "tv");
    assert_eq!(error_of(&edge, &bob, 503).await, "origin_unavailable");
    assert!(
        edge.metric("epochgate_replica_last_contact_age_seconds")
            .await
            >= 3_600.0
    );

    put_heartbeat(&store, epochgate::unix_millis()).await;
    edge.until_status(&bob, 200).await;
}

#[tokio::test]
async fn without_require_heartbeat_the_heartbeat_key_is_not_a_record() {
    let (_nats, store, origin, _upstream, edge) = edge_with_carol().await;
    put_heartbeat(&store, epochgate::unix_millis() - 3_600_000).await;
    put_record(&store, "alice", now() + 1, &[]).await;
    edge.until_status(&origin.token("alice", "tv"), 401).await;
    assert_eq!(status(&edge, &origin.token("bob", "tv")).await, 200);
    assert_eq!(
        edge.metric("epochgate_replica_updates_total{outcome=\"malformed\"}")
            .await,
        0.0
    );
    assert_eq!(edge.metric("epochgate_replica_records").await, 2.0);
}

/// The permissions README.md gives the edge's NATS user (its block under "The edge's NATS
/// user"), as nats-server config: a `publish` and a `subscribe` allow list.
fn documented_edge_permissions() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .find("**The edge's NATS user**")
        .expect("the README's section on the edge's NATS user");
    let block = readme[section..]
        .split("```text\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section's permission block");
    let (mut publish, mut subscribe) = (Vec::new(), Vec::new());
    let mut in_subscribe = false;
    for line in block.lines() {
        let mut subject = line.split('#').next().unwrap_or_default().trim();
        if let Some(rest) = subject.strip_prefix("publish:") {
            (in_subscribe, subject) = (false, rest.trim());
        } else if let Some(rest) = subject.strip_prefix("subscribe:") {
            (in_subscribe, subject) = (true, rest.trim());
        }
        if !subject.is_empty() {
            let list = if in_subscribe {
                &mut subscribe
            } else {
                &mut publish
            };
            list.push(format!("{subject:?}"));
        }
    }
    assert!(!publish.is_empty() && !subscribe.is_empty(), "{block}");
    format!(
        "publish: {{ allow: [{}] }}\nsubscribe: {{ allow: [{}] }}",
        publish.join(", "),
        subscribe.join(", ")
    )
}

#[tokio::test]
async fn an_edge_whose_nats_user_has_only_the_documented_permissions_works_without_violations() {
    // Clients without credentials (the edge) are the user `edge`; the test writes as `admin`.
    let permissions = documented_edge_permissions();
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ users = [
            {{ user: admin, password: admin }}
            {{ user: edge, password: edge, permissions: {{ {permissions} }} }}
        ] }}
        no_auth_user: edge
        "
    ));
    let admin = async_nats::ConnectOptions::new()
        .user_and_password("admin".into(), "admin".into())
        .connect(nats.url())
        .await
        .expect("connect as admin");
    let js = async_nats::jetstream::new(admin);
    epochgate::revocation::replica::publish::create_bucket(&js, BUCKET, MONTH, 1)
        .await
        .expect("create the bucket");
    let store = js.get_key_value(BUCKET).await.expect("open the bucket");
    // Enough data for the server to ask for flow control while the edge reads it.
    put_many(&store, "account-", 20_000, now() + 1).await;
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = ReplicaEdge {
        servers: vec![nats.url()],
        ..Default::default()
    }
    .start(&origin.url(), &upstream)
    .await;
    assert_eq!(edge.readiness().await["replica_records"], 20_000);

    put_record(&store, "alice", now() + 1, &[]).await;
    let alice = origin.token("alice", "tv");
    eventually(
        Duration::from_secs(5),
        "alice signed out at the edge",
        || async { (edge.get_with_token("/", &alice).await.status() == 401).then_some(()) },
    )
    .await;
    let log = edge.log();
    assert!(!log.to_lowercase().contains("permission"), "{log}");
    let nats_log = nats.log();
    assert!(
        !nats_log.to_lowercase().contains("permissions violation"),
        "{nats_log}"
    );
}
