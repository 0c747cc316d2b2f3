//! What the fleet replica costs per account: fills a replica store with N accounts (no
//! device epochs, as most accounts are) and prints the process RSS before and after, the
//! room the hash tables reserve, and how long the minute's sweep of expired records takes
//! when there is nothing to drop (it holds one of the 64 shard locks at a time).
//!
//! ```text
//! cargo run --release --example replica_memory -- 1000000
//! cargo run --release --example replica_memory -- 10000000
//! ```

use epochgate::revocation::replica::ReplicaStore;
use epochgate::revocation::RevocationRecord;

// The RSS reader the tests and benches use (std only).
#[path = "../tests/common/rss.rs"]
mod rss;
use rss::own_rss_kib;

// The `epochgate` binary's allocator, so that the figures are the binary's.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let store = ReplicaStore::new();
    let record = RevocationRecord::default();
    let before = own_rss_kib();
    let mut account = String::with_capacity(32);
    for i in 0..n {
        use std::fmt::Write;
        account.clear();
        // Account ids shaped like real ones: 24 characters (the id itself is not stored).
        let _ = write!(account, "account-{i:016}");
        store.merge(
            &account,
            &RevocationRecord {
                epoch: 1_732_200_000 + i,
                ..record.clone()
            },
        );
    }
    let after = own_rss_kib();
    let records = store.len();
    let capacity = store.capacity();
    // A slot is a 16-byte key and an 8-byte value, plus one control byte; hashbrown keeps
    // a power of two of slots per shard, of which 7/8 may be used.
    let slots = capacity * 8 / 7;
    println!(
        "{records} records: RSS {before} KiB -> {after} KiB, {:.1} bytes per record; \
         tables: {slots} slots for {capacity} records ({:.0}% full), {:.1} bytes per record",
        (after - before) as f64 * 1024.0 / records as f64,
        records as f64 * 100.0 / capacity as f64,
        (slots * 25) as f64 / records as f64,
    );
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let dropped = store.forget_older_than(1_732_200_000);
        let took = started.elapsed();
        println!(
            "sweep with nothing to drop ({dropped} dropped): {took:.1?}, {:.0?} per shard",
            took / 64
        );
    }
}
