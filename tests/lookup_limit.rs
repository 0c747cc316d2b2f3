//! Revocation lookups in flight are bounded by `auth_origin.max_concurrent_lookups`: an edge
//! restarted under load does not stampede the auth origin, and a lookup that gets no slot
//! within `auth_origin.timeout` is judged like one the origin did not answer.

mod common;

use std::time::Duration;

use common::restart_load::{account_tokens, restart_under_load};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_edge_under_load_never_exceeds_the_lookup_limit() {
    const LIMIT: u64 = 8;
    let origin = TestOrigin::start().await;
    // Each lookup takes a few milliseconds, so 64 clients on distinct accounts keep more
    // lookups waiting than there are slots.
    origin.set_mode(Mode::Slow(Duration::from_millis(5)));
    let upstream = Upstream::start().await;
    let mut edge = EdgeConfig::new(&origin, &upstream)
        .max_concurrent_lookups(LIMIT)
        .start()
        .await;

    let tokens = account_tokens(&origin, 5000);
    let run = restart_under_load(&origin, &mut edge, tokens, 64).await;
    eprintln!("{run:?}");

    assert!(
        run.first_start_peak <= LIMIT && run.restart_peak <= LIMIT,
        "the origin saw more than {LIMIT} lookups at once: {run:?}"
    );
    assert_eq!(
        run.restart_peak, LIMIT,
        "the restarted edge never used all its slots, so the limit was not tested: {run:?}"
    );
    assert!(
        run.restart_lookups >= 5000,
        "every account is looked up once: {run:?}"
    );
    // The default policy (deny) allows 503 origin_unavailable; anything else is a failure.
    assert!(run.unexpected.is_empty(), "{:?}", run.unexpected);
    assert_eq!(
        run.no_response_after_ready, 0,
        "requests to the restarted edge failed"
    );
    assert_eq!(edge.metric("epochgate_origin_lookups_in_flight").await, 0.0);
}

/// Sends a request with `token` in the background; gives its status.
fn request_in_background(edge: &Edge, token: String) -> tokio::task::JoinHandle<u16> {
    let (client, url) = (edge.client.clone(), edge.url("/"));
    tokio::spawn(async move {
        let response = client.get(url).bearer_auth(token).send().await.unwrap();
        response.status().as_u16()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_without_a_slot_within_the_timeout_is_judged_as_an_origin_failure() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream)
        .max_concurrent_lookups(1)
        .origin_timeout("1s")
        .start()
        .await;
    origin.set_mode(Mode::Hang);

    // One slot, an origin that never answers, a 1 s timeout: `first` holds the slot until
    // 1 s, `second` gets it then and holds it until 2 s, and `third`, waiting since 0.2 s,
    // gives up at 1.2 s without ever being sent.
    let first = request_in_background(&edge, origin.token("first", "tv"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = request_in_background(&edge, origin.token("second", "tv"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = request_in_background(&edge, origin.token("third", "tv"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(edge.metric("epochgate_origin_lookups_in_flight").await, 1.0);
    assert_eq!(origin.revocation_requests(), 1);

    // Judged by on_origin_unavailable (deny), as the two lookups that timed out.
    assert_eq!(third.await.unwrap(), 503);
    assert_eq!(first.await.unwrap(), 503);
    assert_eq!(second.await.unwrap(), 503);

    assert_eq!(
        origin.revocation_requests(),
        2,
        "the lookup without a slot was sent anyway"
    );
    assert_eq!(
        edge.metric("epochgate_origin_lookup_queue_timeouts_total")
            .await,
        1.0
    );
    assert_eq!(
        edge.metric("epochgate_origin_lookup_queue_wait_seconds_count")
            .await,
        3.0
    );
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="origin_unavailable"}"#)
            .await,
        3.0
    );
    assert_eq!(edge.metric("epochgate_origin_lookups_in_flight").await, 0.0);
}
