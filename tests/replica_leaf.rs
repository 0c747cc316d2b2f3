//! The fleet replica in the leaf-node layout of docs/fleet.md: the publisher puts into the
//! bucket on a hub nats-server, a site's leaf nats-server (its own JetStream domain) holds a
//! mirror of the bucket's stream under the same name, and the edge knows only the leaf. The
//! site is cut off from the hub by cutting the leaf node's link while both servers stay up.

mod common;

use std::time::Duration;

use async_nats::jetstream::kv;
use common::nats::{create_bucket, heartbeats, put_record, NatsLeafSite};
use common::replica_fleet::{connected_ports, replica_edge};
use common::*;

const BUCKET: &str = "epochgate-revocations";
const MONTH: Duration = Duration::from_secs(30 * 86_400);
/// The edges' `replica.max_stale`.
const MAX_STALE: Duration = Duration::from_secs(2);

/// A hub and one site, the bucket on the hub (a publisher's heartbeat in it every 200 ms),
/// its mirror on the leaf, and one edge reading the leaf only.
struct Site {
    nats: NatsLeafSite,
    /// The bucket on the hub, where the publisher puts.
    hub_bucket: kv::Store,
    origin: TestOrigin,
    _upstream: Upstream,
    edge: Edge,
    _beating: tokio::task::JoinHandle<()>,
}

/// The site, its edge ready, with `replica.require_heartbeat` as given.
async fn site(require_heartbeat: bool) -> Site {
    let nats = NatsLeafSite::start().await;
    let hub_bucket = create_bucket(&nats.hub.url(), BUCKET, MONTH, 1).await;
    nats.mirror_bucket(BUCKET, MONTH).await;
    let beating = heartbeats(hub_bucket.clone());
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = replica_edge(&origin.url(), upstream.addr, &[nats.leaf.url()], BUCKET)
        .set("replica.max_stale", &format!("{}s", MAX_STALE.as_secs()))
        .set("replica.require_heartbeat", &require_heartbeat.to_string())
        .start()
        .await;
    Site {
        nats,
        hub_bucket,
        origin,
        _upstream: upstream,
        edge,
        _beating: beating,
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

#[tokio::test]
async fn sign_out_at_the_hub_reaches_an_edge_on_a_leaf_mirror() {
    let site = site(true).await;
    let (alice, bob) = (
        site.origin.token("alice", "tv"),
        site.origin.token("bob", "tv"),
    );
    // Served once the hub's heartbeat has come through the mirror.
    site.edge.until_status(&alice, 200).await;
    assert_eq!(
        connected_ports(site.edge.pid(), &[site.nats.hub.port, site.nats.leaf.port]),
        vec![site.nats.leaf.port],
        "the edge is connected to the leaf server only"
    );

    put_record(&site.hub_bucket, "alice", now() + 1, &[]).await;
    site.edge.until_status(&alice, 401).await;
    assert_eq!(error_of(&site.edge, &alice, 401).await, "signed_out");
    assert_eq!(status(&site.edge, &bob).await, 200, "an unrelated account");
    assert_eq!(site.edge.readiness().await["replica_records"], 1);
    assert_eq!(site.origin.revocation_requests(), 0);
}

#[tokio::test]
async fn site_cut_off_from_the_hub_goes_stale_after_max_stale_and_catches_up_when_the_link_returns()
{
    let mut site = site(true).await;
    let (alice, bob) = (
        site.origin.token("alice", "tv"),
        site.origin.token("bob", "tv"),
    );
    site.edge.until_status(&bob, 200).await;
    assert_eq!(status(&site.edge, &alice).await, 200);

    // The site loses its link to the hub; a sign-out is made at the hub meanwhile.
    site.nats.link.cut();
    put_record(&site.hub_bucket, "alice", now() + 1, &[]).await;
    // Past max_stale without a heartbeat: the policy (deny) for every request.
    site.edge.until_status(&bob, 503).await;
    assert_eq!(error_of(&site.edge, &bob, 503).await, "origin_unavailable");
    assert_eq!(
        error_of(&site.edge, &alice, 503).await,
        "origin_unavailable"
    );
    assert!(
        site.edge
            .metric("epochgate_replica_last_contact_age_seconds")
            .await
            >= MAX_STALE.as_secs_f64()
    );
    let readiness = site.edge.readiness().await;
    assert_eq!(
        readiness["replica"], "complete",
        "the edge is still connected to its leaf server"
    );
    assert_eq!(
        readiness["replica_records"], 0,
        "the sign-out made at the hub did not reach the site"
    );

    // The link returns: the mirror catches up in order, so the sign-out made meanwhile is
    // in before a fresh heartbeat lets the edge decide again.
    site.nats.link.restore().await;
    let first_decision = eventually(Duration::from_secs(20), "alice decided again", || async {
        let status = status(&site.edge, &alice).await;
        (status != 503).then_some(status)
    })
    .await;
    assert_eq!(first_decision, 401, "alice's first decision after the cut");
    assert_eq!(error_of(&site.edge, &alice, 401).await, "signed_out");
    assert_eq!(status(&site.edge, &bob).await, 200);
    assert_eq!(site.edge.readiness().await["replica_records"], 1);
    assert_eq!(site.origin.revocation_requests(), 0);
}

#[tokio::test]
async fn without_require_heartbeat_a_site_cut_off_from_the_hub_keeps_serving_what_its_mirror_holds()
{
    let mut site = site(false).await;
    let alice = site.origin.token("alice", "tv");
    assert_eq!(status(&site.edge, &alice).await, 200);

    site.nats.link.cut();
    put_record(&site.hub_bucket, "alice", now() + 1, &[]).await;
    // Well past max_stale: the edge's round trips to its leaf server keep its contact
    // fresh, and nothing tells it that the mirror no longer receives.
    tokio::time::sleep(MAX_STALE + Duration::from_millis(1_500)).await;
    assert_eq!(
        status(&site.edge, &alice).await,
        200,
        "the sign-out made at the hub is unknown at the site"
    );
    assert!(
        site.edge
            .metric("epochgate_replica_last_contact_age_seconds")
            .await
            < MAX_STALE.as_secs_f64()
    );
    assert_eq!(site.edge.readiness().await["replica"], "complete");
}
