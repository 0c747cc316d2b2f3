//! What a million cached accounts cost: fills the epoch cache with N accounts (no devices,
//! as most accounts are) and prints the process RSS before and after. Then the same for N
//! tokens in the verified-token cache.
//!
//! ```text
//! cargo run --release --example cache_memory -- 1000000
//! ```

use std::sync::Arc;
use std::time::Duration;

use epochgate::config::{AuthOriginSettings, CacheSettings, FeedSettings, OnOriginUnavailable};
use epochgate::metrics::Metrics;
use epochgate::request::verified_cache::{Remembered, TokenKey, VerifiedCache};
use epochgate::request::verify::VerifiedToken;
use epochgate::revocation::epoch_cache::{EpochCache, LastRecord};
use epochgate::revocation::origin::OriginClient;
use epochgate::revocation::RevocationRecord;

// The RSS reader the tests and benches use (std only).
#[path = "../tests/common/rss.rs"]
mod rss;
use rss::own_rss_kib;

// The `epochgate` binary's allocator, so that the figures are the binary's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let metrics = Arc::new(Metrics::new());
    let origin = Arc::new(
        OriginClient::new(
            &AuthOriginSettings {
                url: "http://127.0.0.1:9".into(),
                timeout: Duration::from_millis(250),
                jwks_refresh: Duration::from_secs(300),
                feed: FeedSettings {
                    enabled: false,
                    idle_timeout: Duration::from_secs(45),
                    unsupported_retry: Duration::from_secs(300),
                },
                max_concurrent_lookups: 64,
            },
            metrics.clone(),
        )
        .unwrap(),
    );
    let cache = EpochCache::new(
        CacheSettings {
            max_accounts: n,
            refresh_after: Duration::from_secs(30),
            max_stale: Duration::from_secs(600),
            on_origin_unavailable: OnOriginUnavailable::Deny,
            max_devices_per_account: 1_000,
        },
        origin,
        metrics,
    );
    let before = own_rss_kib();
    for i in 0..n {
        // Account ids shaped like real ones: 16 to 24 characters.
        cache
            .merge(
                &format!("account-{i:016}"),
                RevocationRecord {
                    epoch: 1_732_200_000 + i,
                    devices: Default::default(),
                },
            )
            .await;
    }
    let entries = cache.entry_count().await;
    let after = own_rss_kib();
    println!(
        "{entries} accounts cached: RSS {before} KiB -> {after} KiB, {:.0} bytes per account",
        (after - before) as f64 * 1024.0 / entries as f64
    );

    let now = epochgate::unix_millis() / 1000;
    let tokens = VerifiedCache::new(n);
    let before = own_rss_kib();
    for i in 0..n {
        // Each token's claims are parsed on their own, so nothing is shared between entries.
        let remembered = Remembered {
            token: VerifiedToken {
                account: format!("account-{i:016}").into(),
                device: format!("device-{i:08}").into(),
                session_time: now,
                expires_at: now + 3600,
            },
            key_generation: 1,
            last_record: Arc::new(LastRecord::default()),
        };
        tokens.insert(TokenKey::of(&format!("token-{i}")), remembered, now);
    }
    let after = own_rss_kib();
    println!(
        "{} tokens remembered: RSS {before} KiB -> {after} KiB, {:.0} bytes per token",
        tokens.len(),
        (after - before) as f64 * 1024.0 / tokens.len() as f64
    );
}
