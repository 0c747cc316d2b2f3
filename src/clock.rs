//! The edge's two clocks: a monotonic one for every interval it measures (rate limits, retry
//! gates, throttled log lines, record and feed ages), the wall clock only for values that
//! cross the wire (`iat`, `exp`, epochs, `changed_at_ms`).
//!
//! NTP may step the wall clock at any time. An interval measured on it stalls when the clock
//! steps back (a limit stays shut until the clock catches up) and opens at once when it steps
//! forward; on the monotonic clock neither can happen. The clock is injected where a test
//! needs to step it ([`ManualClock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Both readings the edge takes.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds on a clock that never goes back and is never 0 (0 stands for "never").
    fn monotonic_millis(&self) -> u64;
    /// Milliseconds since the Unix epoch (0 if the clock is before it).
    fn unix_millis(&self) -> u64;

    /// Microseconds on the monotonic clock, for durations shorter than a millisecond (the
    /// latency histograms). By default the millisecond reading, scaled.
    fn monotonic_micros(&self) -> u64 {
        self.monotonic_millis().saturating_mul(1000)
    }

    /// Seconds since the Unix epoch: what `iat` and `exp` are compared with.
    fn unix_secs(&self) -> u64 {
        self.unix_millis() / 1000
    }
}

/// A clock shared by the parts of one gate.
pub type SharedClock = Arc<dyn Clock>;

/// The process's real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// The process's monotonic origin: every reading of [`SystemClock`] counts from it.
fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

impl Clock for SystemClock {
    fn monotonic_millis(&self) -> u64 {
        process_start().elapsed().as_millis() as u64 + 1
    }

    fn monotonic_micros(&self) -> u64 {
        process_start().elapsed().as_micros() as u64 + 1
    }

    fn unix_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The real clocks, as a [`SharedClock`].
pub fn system() -> SharedClock {
    static SYSTEM: OnceLock<SharedClock> = OnceLock::new();
    SYSTEM.get_or_init(|| Arc::new(SystemClock)).clone()
}

/// Whether less than `interval` has passed since `last_ms` on the monotonic clock. A `last_ms`
/// of 0 means it never happened: the monotonic clock starts near 0, so "0 ms ago" would
/// otherwise hold every gate shut for its first interval after start.
pub fn within(last_ms: u64, now_ms: u64, interval: Duration) -> bool {
    last_ms != 0 && now_ms.saturating_sub(last_ms) < interval.as_millis() as u64
}

/// A clock that moves only when told: for tests that step time instead of sleeping.
#[derive(Debug)]
pub struct ManualClock {
    monotonic_ms: AtomicU64,
    unix_ms: AtomicU64,
}

impl ManualClock {
    /// Starts at the real wall-clock time (tokens signed now are current) and a monotonic
    /// reading well past 0.
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            monotonic_ms: AtomicU64::new(1_000_000),
            unix_ms: AtomicU64::new(SystemClock.unix_millis()),
        })
    }

    /// Time passes: both clocks move forward.
    pub fn advance(&self, by: Duration) {
        let ms = by.as_millis() as u64;
        self.monotonic_ms.fetch_add(ms, Ordering::SeqCst);
        self.unix_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// The wall clock is stepped (as NTP does), forward or back; the monotonic clock is not.
    pub fn step_wall(&self, by_ms: i64) {
        let now = self.unix_ms.load(Ordering::SeqCst);
        self.unix_ms
            .store(now.saturating_add_signed(by_ms), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn monotonic_millis(&self) -> u64 {
        self.monotonic_ms.load(Ordering::SeqCst)
    }

    fn unix_millis(&self) -> u64 {
        self.unix_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_is_not_within_any_interval() {
        assert!(!within(0, 1, Duration::from_secs(10)));
    }

    #[test]
    fn within_counts_from_the_last_time() {
        assert!(within(1_000, 10_999, Duration::from_secs(10)));
        assert!(!within(1_000, 11_000, Duration::from_secs(10)));
    }

    #[test]
    fn a_wall_step_leaves_the_monotonic_clock_alone() {
        let clock = ManualClock::new();
        let (mono, wall) = (clock.monotonic_millis(), clock.unix_millis());
        clock.step_wall(-3_600_000);
        assert_eq!(clock.monotonic_millis(), mono);
        assert_eq!(clock.unix_millis(), wall - 3_600_000);
        clock.advance(Duration::from_secs(1));
        assert_eq!(clock.monotonic_millis(), mono + 1_000);
    }

    #[test]
    fn system_monotonic_clock_is_never_zero_and_never_goes_back() {
        let a = SystemClock.monotonic_millis();
        let b = SystemClock.monotonic_millis();
        assert!(a >= 1 && b >= a);
    }
}
