//! What the revocation feed vouches for: while it is connected, cached records need no
//! periodic refresh; after a `reset` or a gap, records confirmed before it are due.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::clock::SharedClock;

/// What the revocation feed vouches for. While the feed is connected, a record confirmed
/// after `covered_since` cannot have missed a sign-out, so it needs no periodic refresh.
#[derive(Debug)]
pub struct FeedCoverage {
    connected: AtomicBool,
    covered_since_ms: AtomicU64,
    /// Records confirmed before this (a feed `reset`) are due for refresh whatever their age.
    due_before_ms: AtomicU64,
    clock: SharedClock,
}

impl FeedCoverage {
    pub fn new(clock: SharedClock) -> FeedCoverage {
        FeedCoverage {
            connected: AtomicBool::new(false),
            covered_since_ms: AtomicU64::new(0),
            due_before_ms: AtomicU64::new(0),
            clock,
        }
    }

    /// The feed connected; `resumed` when it picked up where the last connection left off
    /// (no gap), so records confirmed earlier stay covered.
    pub fn connected(&self, resumed: bool) {
        if !resumed {
            self.covered_since_ms
                .store(self.clock.monotonic_millis(), Ordering::Release);
        }
        self.connected.store(true, Ordering::Release);
    }

    pub fn disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    /// The origin could not replay what we missed: nothing cached so far is vouched for.
    pub fn reset(&self) {
        self.reset_at(self.clock.monotonic_millis());
    }

    pub(crate) fn reset_at(&self, now_ms: u64) {
        self.covered_since_ms.store(now_ms, Ordering::Release);
        self.due_before_ms.store(now_ms, Ordering::Release);
    }

    // A record confirmed in the same millisecond as a reset or a fresh connection may come
    // from before it: ties count as before (one more fetch, never a missed sign-out).
    /// Whether a record the origin confirmed at `confirmed_at_ms` (monotonic) cannot have
    /// missed a sign-out since.
    pub fn covers(&self, confirmed_at_ms: u64) -> bool {
        self.connected.load(Ordering::Acquire)
            && confirmed_at_ms > self.covered_since_ms.load(Ordering::Acquire)
    }

    /// Whether a record confirmed at `confirmed_at_ms` must be checked with the origin before
    /// its next use: confirmed before a `reset`, or `forced` (its account was named in an
    /// event that could not be used).
    pub fn due(&self, confirmed_at_ms: u64, forced: bool) -> bool {
        forced || confirmed_at_ms <= self.due_before_ms.load(Ordering::Acquire)
    }
}
