//! An edge restarted under load: with every one of `ACCOUNTS` accounts cached, the edge is
//! stopped and started again on the same config while `CLIENTS` clients keep requesting those
//! accounts (one request at a time each), so the new process misses every account at once.
//! The auth origin answers each lookup after `ORIGIN_DELAY_MS` and records how many it was
//! answering at once. Per `auth_origin.max_concurrent_lookups` in `LIMITS`: the origin's peak
//! concurrency, the time from starting the new process to every account cached, the lookups
//! it sent meanwhile, and the requests it answered, `200` and `503`.
//!
//! ```text
//! cargo bench --bench restart_stampede
//! ```
//! Environment: `ACCOUNTS` (5000), `CLIENTS` (256), `ORIGIN_DELAY_MS` (20),
//! `LIMITS` (`64,1000000`; 1000000 is in effect no limit).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::restart_load::{account_tokens, restart_under_load};
use common::{EdgeConfig, Mode, TestOrigin, Upstream};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let accounts: usize = env_or("ACCOUNTS", 5000);
    let clients: usize = env_or("CLIENTS", 256);
    let delay = Duration::from_millis(env_or("ORIGIN_DELAY_MS", 20));
    let limits: Vec<u64> = env_or("LIMITS", "64,1000000".to_string())
        .split(',')
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        println!(
            "restart under load: {accounts} accounts, {clients} clients, origin answers after \
             {delay:?}, auth_origin.timeout 250ms, on_origin_unavailable deny, loopback"
        );
        println!(
            "| max_concurrent_lookups | peak origin concurrency (first start / restart) | \
             every account cached after | lookups sent | answered 200 | answered 503 |"
        );
        println!("|---|---|---|---|---|---|");
        for limit in limits {
            let origin = TestOrigin::start().await;
            origin.set_mode(Mode::Slow(delay));
            let upstream = Upstream::start().await;
            let mut edge = EdgeConfig::new(&origin, &upstream)
                .max_concurrent_lookups(limit)
                .start()
                .await;
            let tokens = account_tokens(&origin, accounts);
            let run = restart_under_load(&origin, &mut edge, tokens, clients).await;
            println!(
                "| {limit} | {} / {} | {:.2} s | {} | {} | {} |",
                run.first_start_peak,
                run.restart_peak,
                run.all_cached_after.as_secs_f64(),
                run.restart_lookups,
                run.restart_ok,
                run.restart_origin_unavailable,
            );
            if !run.unexpected.is_empty() || run.no_response_after_ready > 0 {
                println!(
                    "  unexpected answers: {:?}; requests without a response after the restart: {}",
                    run.unexpected.iter().take(5).collect::<Vec<_>>(),
                    run.no_response_after_ready
                );
            }
        }
    });
}
