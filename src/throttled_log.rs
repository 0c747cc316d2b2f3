//! Warnings written at most once per interval (on the monotonic clock), with a count of what
//! was held back: an origin outage must not turn into one log line per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{self, SharedClock};

/// A warning that is written at most once per interval, with a count of what it held back:
/// an origin outage must not turn into one log line per request. The interval is measured on
/// the monotonic clock.
pub struct ThrottledLog {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
    clock: SharedClock,
}

/// How often a repeating warning is written.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ThrottledLog {
    pub fn new() -> Self {
        ThrottledLog::with_clock(clock::system())
    }

    pub fn with_clock(clock: SharedClock) -> Self {
        ThrottledLog {
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            clock,
        }
    }

    pub fn warn(&self, message: std::fmt::Arguments<'_>) {
        if self.may_write() {
            let held_back = self.suppressed.swap(0, Ordering::Relaxed);
            if held_back > 0 {
                log::warn!("{message} ({held_back} more like this in the last interval)");
            } else {
                log::warn!("{message}");
            }
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Claims this interval's line, if nobody has yet.
    fn may_write(&self) -> bool {
        let now = self.clock.monotonic_millis();
        let last = self.last_ms.load(Ordering::Relaxed);
        !clock::within(last, now, LOG_INTERVAL)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Default for ThrottledLog {
    fn default() -> Self {
        ThrottledLog::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn throttled_log_is_not_reopened_by_a_wall_clock_step_forward() {
        let clock = ManualClock::new();
        let log = ThrottledLog::with_clock(clock.clone());
        assert!(log.may_write());
        clock.step_wall(3_600_000);
        assert!(!log.may_write());
    }

    #[test]
    fn throttled_log_is_not_stalled_by_a_wall_clock_step_back() {
        let clock = ManualClock::new();
        let log = ThrottledLog::with_clock(clock.clone());
        assert!(log.may_write());
        clock.step_wall(-3_600_000);
        clock.advance(LOG_INTERVAL);
        assert!(log.may_write());
    }
}
