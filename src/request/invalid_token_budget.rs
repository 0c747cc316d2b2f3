//! The per-client budget of failed token verifications (`limits.invalid_tokens_per_client`),
//! kept in Pingora's rate estimator.
//!
//! A forged token costs a full signature check and is never remembered, so a client sending
//! them can take an edge's CPU. Each client may fail `burst` verifications within a window of
//! `burst / per_second` seconds; over that, it is refused the verification of any token the
//! edge has not verified before, until its failures age out of the window.
//!
//! How the estimate works: [`Rate`] counts each client's failures per interval of one window
//! (in a count-min sketch, so a client is never counted lower than it is, though it may be
//! counted higher when many clients fail at once). The failures in the last window are
//! estimated as those of the current interval plus those of the previous one, weighted by how
//! much of the previous interval still lies inside the window. A client whose estimate has
//! reached `burst` is over budget. Failures of the previous interval drop out at `per_second`
//! a second for a client that failed at the budget's rate; a burst taken all at once stays
//! whole until the end of the interval it fell in, then drops out at `per_second` a second.

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::{Rate, RateComponents};

use crate::config::BudgetSettings;
use crate::request::client_ip::canonical;

/// Rows and columns of each of the estimator's two sketches: 4 × 8192 counters of 8 bytes,
/// 512 KiB for both. With N clients over budget at once, one that has not failed is counted
/// as over budget only if each of its four counters is shared with one of them, a chance of
/// about (1 - e^(-N / 8192))^4: one in 5,700 at N = 1,000.
const SKETCH_ROWS: usize = 4;
const SKETCH_COLUMNS: usize = 8192;

/// Failed verifications per client, against a budget.
pub struct InvalidTokenBudget {
    failures: Rate,
    burst: f64,
}

impl InvalidTokenBudget {
    pub fn new(settings: BudgetSettings) -> InvalidTokenBudget {
        // At least one second: settings guarantee burst >= per_second. The estimator's
        // bookkeeping assumes an interval of a second or more.
        let window = Duration::from_secs_f64(
            f64::from(settings.burst) / f64::from(settings.per_second.max(1)),
        )
        .max(Duration::from_secs(1));
        InvalidTokenBudget {
            failures: Rate::new_with_estimator_config(window, SKETCH_ROWS, SKETCH_COLUMNS),
            burst: f64::from(settings.burst),
        }
    }

    /// Counts a failed verification against the client.
    pub fn charge(&self, client: IpAddr) {
        self.failures.observe(&ClientKey::of(client), 1);
    }

    /// `None` while the client has budget left; otherwise the whole seconds (at least 1)
    /// after which it has again, if it fails no more verifications meanwhile.
    pub fn exhausted(&self, client: IpAddr) -> Option<u32> {
        let burst = self.burst;
        self.failures
            .rate_with(&ClientKey::of(client), |c| seconds_until_below(c, burst))
    }
}

/// The budget's estimate for one client, and when it falls below `burst` (see the module doc).
fn seconds_until_below(c: RateComponents, burst: f64) -> Option<u32> {
    let previous = c.prev_samples.max(0) as f64;
    let current = c.curr_samples.max(0) as f64;
    let elapsed = c.current_interval_fraction;
    if previous * (1.0 - elapsed) + current < burst {
        return None;
    }
    // In interval fractions from now. The previous interval's weight falls linearly to zero
    // over this one; if the current interval alone has used up the budget, its own weight
    // starts falling only when the next interval begins.
    let wait = if current < burst {
        (1.0 - (burst - current) / previous) - elapsed
    } else {
        (1.0 - elapsed) + (1.0 - burst / current)
    };
    // The first whole second strictly after that moment.
    let seconds = (wait.max(0.0) * c.interval.as_secs_f64()).floor() + 1.0;
    Some(seconds.min(f64::from(u32::MAX)) as u32)
}

/// What a client is counted under: an IPv4 address, or an IPv6 address's /64 (the block one
/// subscriber line or device gets; any address in it is theirs to use).
#[derive(Hash)]
enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl ClientKey {
    fn of(client: IpAddr) -> ClientKey {
        match canonical(client) {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_second: u32, burst: u32) -> InvalidTokenBudget {
        InvalidTokenBudget::new(BudgetSettings { per_second, burst })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_may_fail_a_burst_then_is_over_budget() {
        let budget = budget(20, 100);
        let client = ip("192.0.2.1");
        for _ in 0..99 {
            budget.charge(client);
        }
        assert_eq!(budget.exhausted(client), None);
        budget.charge(client);
        let retry_after = budget
            .exhausted(client)
            .expect("over budget after 100 failures");
        // The burst fell in the current interval (5 s): it stays whole until that ends, then
        // the first failure drops out 1/20 s later.
        assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    }

    #[test]
    fn other_clients_keep_their_budget() {
        let budget = budget(20, 100);
        for _ in 0..1000 {
            budget.charge(ip("192.0.2.1"));
        }
        assert_eq!(budget.exhausted(ip("192.0.2.2")), None);
        assert_eq!(budget.exhausted(ip("2001:db8::1")), None);
    }

    #[test]
    fn an_ipv6_client_is_its_64_block() {
        let budget = budget(1, 5);
        for i in 0..5 {
            budget.charge(ip(&format!("2001:db8:0:1::{i}")));
        }
        assert!(budget.exhausted(ip("2001:db8:0:1:ffff::9")).is_some());
        assert_eq!(budget.exhausted(ip("2001:db8:0:2::1")), None);
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_client() {
        let budget = budget(1, 5);
        for _ in 0..5 {
            budget.charge(ip("::ffff:192.0.2.1"));
        }
        assert!(budget.exhausted(ip("192.0.2.1")).is_some());
    }

    fn components(prev: isize, curr: isize, elapsed: f64) -> RateComponents {
        // `RateComponents` is non-exhaustive: build one from a real estimator's answer.
        let rate = Rate::new(Duration::from_secs(5));
        let mut c = rate.rate_with(&0u8, |c| c);
        c.prev_samples = prev;
        c.curr_samples = curr;
        c.current_interval_fraction = elapsed;
        c
    }

    #[test]
    fn the_previous_interval_drops_out_at_the_budget_rate() {
        // 100 failures in the previous 5 s interval, none now, 0.2 into this one: 80 left in
        // the window. Under a budget of 80, one more drops out after 1/20 s.
        assert_eq!(seconds_until_below(components(100, 0, 0.2), 80.0), Some(1));
        // Under a budget of 50, 30 more must drop out: 1.5 s.
        assert_eq!(seconds_until_below(components(100, 0, 0.2), 50.0), Some(2));
        assert_eq!(seconds_until_below(components(100, 0, 0.2), 81.0), None);
    }

    #[test]
    fn a_burst_in_the_current_interval_waits_for_its_end() {
        // 100 now, 1 s into a 5 s interval: 4 s until it ends, then the first drops out.
        assert_eq!(seconds_until_below(components(0, 100, 0.2), 100.0), Some(5));
        // Twice the budget: 4 s, then half of the next interval (2.5 s).
        assert_eq!(seconds_until_below(components(0, 200, 0.2), 100.0), Some(7));
    }
}
