//! A wall-clock step (as NTP makes) neither stalls nor opens the edge's rate limits: the real
//! binary runs under libfaketime, whose offset the test changes while the edge runs, with the
//! monotonic clock left alone as a real step leaves it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use epochgate::reference::signing::SigningKey;
use epochgate::request::keys::UNKNOWN_KID_REFETCH_INTERVAL;

/// libfaketime's multi-threaded library (Debian package `faketime`, installed by dev.sh).
fn libfaketime() -> PathBuf {
    let candidates = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")]);
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("libfaketime is not installed (apt-get install faketime; ./dev.sh test does)")
}

/// An edge whose wall clock is the real one plus the offset written in `offset_file`.
async fn edge_with_steppable_wall_clock(
    origin: &TestOrigin,
    upstream: &Upstream,
    offset_file: &Path,
) -> Edge {
    std::fs::write(offset_file, "+0\n").unwrap();
    EdgeConfig::new(origin, upstream)
        .env("LD_PRELOAD", libfaketime().display().to_string())
        .env("FAKETIME_TIMESTAMP_FILE", offset_file.display().to_string())
        // Read the file on every clock reading, so a step takes effect at once.
        .env("FAKETIME_NO_CACHE", "1")
        // An NTP step moves the wall clock only.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .start()
        .await
}

/// A well-signed token whose `kid` the JWKS does not have: each one asks for a JWKS refetch.
fn token_with_unknown_kid(kid: &str) -> String {
    SigningKey::generate_es256(kid)
        .unwrap()
        .sign(&claims("alice", "tv", now() - 60))
        .unwrap()
}

async fn unknown_kid_is_rejected(edge: &Edge, kid: &str) {
    let response = edge
        .get_with_token("/live/seg1.ts", &token_with_unknown_kid(kid))
        .await;
    assert_eq!(rejection(response, 401).await["error"], "invalid_token");
}

/// An edge under libfaketime (offset file `+0`) that has just refetched the JWKS for an
/// unknown `kid`, so the 10 s refetch limit is running.
async fn edge_after_one_unknown_kid() -> (TestOrigin, Upstream, tempfile::NamedTempFile, Edge) {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let offset = tempfile::NamedTempFile::new().unwrap();
    let edge = edge_with_steppable_wall_clock(&origin, &upstream, offset.path()).await;
    unknown_kid_is_rejected(&edge, "unknown-1").await;
    (origin, upstream, offset, edge)
}

#[tokio::test]
async fn unknown_kid_refetch_limit_is_not_opened_by_a_wall_clock_step_forward() {
    let (origin, _upstream, offset, edge) = edge_after_one_unknown_kid().await;
    let fetched = origin.jwks_requests();

    std::fs::write(offset.path(), "+300\n").unwrap();
    unknown_kid_is_rejected(&edge, "unknown-2").await;
    assert_eq!(
        origin.jwks_requests(),
        fetched,
        "a wall clock five minutes ahead opened the 10 s refetch limit"
    );
    // Valid tokens still pass: they are judged by the wall clock, five minutes ahead.
    let response = edge
        .get_with_token("/live/seg1.ts", &origin.token("alice", "tv"))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn unknown_kid_refetch_limit_is_not_stalled_by_a_wall_clock_step_back() {
    let (origin, _upstream, offset, edge) = edge_after_one_unknown_kid().await;
    let fetched = origin.jwks_requests();

    std::fs::write(offset.path(), "-300\n").unwrap();
    tokio::time::sleep(UNKNOWN_KID_REFETCH_INTERVAL + Duration::from_millis(500)).await;
    unknown_kid_is_rejected(&edge, "unknown-2").await;
    assert_eq!(
        origin.jwks_requests(),
        fetched + 1,
        "a wall clock five minutes behind held the refetch limit shut"
    );
}
