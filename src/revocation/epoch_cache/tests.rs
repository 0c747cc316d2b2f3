//! The epoch cache's rules, against an in-memory record source and a stepped clock.

use super::*;
use crate::clock::ManualClock;
use crate::config::OnOriginUnavailable;
use crate::metrics::{Endpoint, Outcome};

/// A cache whose origin refuses every connection: a lookup that reaches it is Unavailable.
fn cache_without_origin(max_accounts: u64) -> EpochCache {
    cache_on_clock(max_accounts, clock::system()).0
}

fn cache_on_clock(max_accounts: u64, clock: SharedClock) -> (EpochCache, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let origin = crate::revocation::origin::unreachable_origin(metrics.clone());
    let cache = EpochCache::with_clock(
        CacheSettings {
            max_accounts,
            refresh_after: Duration::from_secs(30),
            max_stale: Duration::from_secs(600),
            on_origin_unavailable: OnOriginUnavailable::Deny,
            max_devices_per_account: 1_000,
        },
        origin,
        metrics.clone(),
        clock,
    );
    (cache, metrics)
}

fn lookups_sent(metrics: &Metrics) -> u64 {
    metrics.origin_requests(Endpoint::Revocations, Outcome::Error)
}

/// A record due for a check, whose check just failed (the origin is down).
async fn due_record_after_a_failed_check(cache: &EpochCache, metrics: &Metrics) {
    cache.merge("alice", epoch(10)).await;
    cache.mark_due("alice").await;
    assert!(matches!(cache.lookup("alice").await, Lookup::Stale(_)));
    assert_eq!(lookups_sent(metrics), 1);
}

#[tokio::test]
async fn retry_gate_is_not_reopened_by_a_wall_clock_step_forward() {
    let clock = ManualClock::new();
    let (cache, metrics) = cache_on_clock(100, clock.clone());
    due_record_after_a_failed_check(&cache, &metrics).await;

    clock.step_wall(3_600_000);
    assert!(matches!(cache.lookup("alice").await, Lookup::Stale(_)));
    assert_eq!(lookups_sent(&metrics), 1, "retried within REFRESH_RETRY");
}

#[tokio::test]
async fn retry_gate_is_not_stalled_by_a_wall_clock_step_back() {
    let clock = ManualClock::new();
    let (cache, metrics) = cache_on_clock(100, clock.clone());
    due_record_after_a_failed_check(&cache, &metrics).await;

    clock.step_wall(-3_600_000);
    clock.advance(REFRESH_RETRY);
    assert!(matches!(cache.lookup("alice").await, Lookup::Stale(_)));
    assert_eq!(lookups_sent(&metrics), 2, "no retry after REFRESH_RETRY");
}

#[tokio::test]
async fn record_age_ignores_wall_clock_steps() {
    let clock = ManualClock::new();
    let (cache, _) = cache_on_clock(100, clock.clone());
    cache.merge("alice", epoch(10)).await;
    clock.step_wall(3_600_000);
    assert!(matches!(cache.lookup("alice").await, Lookup::Fresh(_)));
    clock.step_wall(-7_200_000);
    clock.advance(Duration::from_secs(31));
    assert!(matches!(cache.lookup("alice").await, Lookup::Stale(_)));
}

fn epoch(epoch: u64) -> RevocationRecord {
    RevocationRecord {
        epoch,
        devices: HashMap::new(),
    }
}

fn standing(found: &Lookup, session_time: u64) -> Option<Standing> {
    match found {
        Lookup::Fresh(entry) | Lookup::Stale(entry) => Some(entry.standing("tv", session_time)),
        Lookup::Unavailable => None,
    }
}

#[tokio::test]
async fn a_remembered_record_is_not_used_after_a_sign_out_replaced_it() {
    let cache = cache_without_origin(100);
    let last = LastRecord::default();
    cache.merge("alice", epoch(10)).await;
    let before = cache.lookup_from("alice", &last).await;
    assert_eq!(standing(&before, 50), Some(Standing::Valid));

    cache.merge("alice", epoch(100)).await;
    let after = cache.lookup_from("alice", &last).await;
    assert_eq!(standing(&after, 50), Some(Standing::SignedOut));
}

#[tokio::test]
async fn a_remembered_record_marked_due_is_checked_with_the_origin() {
    let cache = cache_without_origin(100);
    let last = LastRecord::default();
    cache.merge("alice", epoch(10)).await;
    assert!(matches!(
        cache.lookup_from("alice", &last).await,
        Lookup::Fresh(_)
    ));

    cache.mark_due("alice").await;
    // The origin is down, so the check fails and the record is served as stale.
    assert!(matches!(
        cache.lookup_from("alice", &last).await,
        Lookup::Stale(_)
    ));
}

#[tokio::test]
async fn a_remembered_record_the_cache_dropped_is_not_used() {
    let cache = cache_without_origin(1);
    let (alice, bob) = (LastRecord::default(), LastRecord::default());
    cache.merge("alice", epoch(10)).await;
    assert!(matches!(
        cache.lookup_from("alice", &alice).await,
        Lookup::Fresh(_)
    ));
    cache.merge("bob", epoch(10)).await;
    assert!(matches!(
        cache.lookup_from("bob", &bob).await,
        Lookup::Fresh(_)
    ));
    // Room for one account: one of the two records is dropped.
    assert_eq!(cache.entry_count().await, 1);

    let kept = cache.inner.cache.contains_key("alice");
    let (dropped, remembered) = if kept {
        ("bob", &bob)
    } else {
        ("alice", &alice)
    };
    // Judged by the remembered record it would be Fresh; looked up, it is gone and the
    // origin is down.
    assert!(matches!(
        cache.lookup_from(dropped, remembered).await,
        Lookup::Unavailable
    ));
}

#[test]
fn record_confirmed_in_the_same_millisecond_as_a_reset_is_due_and_not_covered() {
    let coverage = FeedCoverage::new(clock::system());
    coverage.connected(false);
    coverage.reset_at(100);
    assert!(coverage.due(100, false));
    assert!(!coverage.covers(100));
}

#[test]
fn record_confirmed_after_a_reset_is_covered_and_not_due() {
    let coverage = FeedCoverage::new(clock::system());
    coverage.connected(false);
    coverage.reset_at(100);
    assert!(!coverage.due(101, false));
    assert!(coverage.covers(101));
}
