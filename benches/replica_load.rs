//! The whole edge process with a large fleet replica: `RECORDS` account records (24-character
//! ids, no device epochs) in a local bucket on one nats-server.
//!
//! 1. An edge starts on the empty bucket: its RSS.
//! 2. The records are put into the bucket, pipelined (`BATCH` publishes in flight, then
//!    their acks), while that edge watches: the time to load, and the edge's RSS once it
//!    holds them all.
//! 3. A second edge starts on the full bucket: the time from start to `/readyz` 200, and its
//!    RSS.
//! 4. The nats-server is killed and started again under that edge: the time until it accepts
//!    connections, and from then until a sign-out put after the restart is rejected at the
//!    edge (the edge reconnects and resumes from the revision after the last it applied).
//!
//! RSS per record is (RSS with the records - RSS of the edge on the empty bucket) / records,
//! each RSS read from /proc/PID/status (VmRSS) after `SETTLE_SECS` of quiet (jemalloc returns
//! freed pages after about 10 s). Also the nats-server's RSS and the bucket's size on disk.
//!
//! ```text
//! cargo bench --bench replica_load                  # RECORDS=1000000
//! RECORDS=10000000 cargo bench --bench replica_load
//! ```
//! Environment: `RECORDS` (1000000), `BATCH` (4000; the client allows 5000 acks pending),
//! `SETTLE_SECS` (12), `READY_LIMIT_SECS` (300: how long the second edge may take).

#[path = "../tests/common/mod.rs"]
mod common;

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::nats::{create_bucket, NatsServer};
use common::replica_fleet::spawn_replica_edge;
use common::{rss_kib, Edge, TestOrigin, Upstream};

const BUCKET: &str = "epochgate-revocations";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The nats-server process serving `port`, and its store directory (from its command line).
fn nats_process(port: u16) -> Option<(u32, PathBuf)> {
    let port = port.to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_it = args.first()?.ends_with("nats-server") && args.contains(&port);
        let store = args.iter().position(|a| a == "-sd")?;
        is_it.then(|| (pid, PathBuf::from(&args[store + 1])))
    })
}

fn disk_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn account(i: u64) -> String {
    format!("acct-{i:019}")
}

/// Polls `/readyz` until 200: the time it took from `since`, or `None` after `limit`.
async fn ready_after(edge: &Edge, since: Instant, limit: Duration) -> Option<Duration> {
    loop {
        if edge
            .try_readiness()
            .await
            .is_some_and(|(status, _)| status == 200)
        {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn records_held(edge: &Edge) -> u64 {
    edge.readiness().await["replica_records"]
        .as_u64()
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn per_record(after_kib: u64, before_kib: u64, records: u64) -> String {
    format!(
        "{:.1} bytes",
        (after_kib.saturating_sub(before_kib) * 1024) as f64 / records as f64
    )
}

fn main() {
    let records = env_or("RECORDS", 1_000_000);
    let batch = env_or("BATCH", 4_000) as usize;
    let settle = Duration::from_secs(env_or("SETTLE_SECS", 12));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut nats = NatsServer::start();
        create_bucket(&nats.url(), BUCKET, Duration::from_secs(30 * 86_400), 1).await;
        let origin = TestOrigin::start().await;
        let upstream = Upstream::start().await;
        let servers = [nats.url()];

        // 1. An edge on the empty bucket.
        let watching = spawn_replica_edge(&origin.url(), upstream.addr, &servers, BUCKET);
        ready_after(&watching, Instant::now(), Duration::from_secs(30))
            .await
            .expect("edge ready on the empty bucket");
        tokio::time::sleep(settle).await;
        let empty_rss = rss_kib(watching.pid());
        println!("fleet replica at {records} records (24-character account ids, no device epochs), 1 nats-server, loopback");
        println!("edge on the empty bucket: RSS {}", mib(empty_rss));

        // 2. Load the bucket while that edge watches.
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let epoch = common::now();
        let loading = Instant::now();
        let mut next = 0;
        while next < records {
            let end = (next + batch as u64).min(records);
            let mut acks = Vec::with_capacity(batch);
            for i in next..end {
                let account = account(i);
                let value = serde_json::json!({
                    "account_id": account, "epoch": epoch, "devices": {},
                    "changed_at_ms": epochgate::unix_millis(),
                });
                let subject = format!("$KV.{BUCKET}.{}", epochgate::revocation::replica::key::encode(&account));
                acks.push(
                    js.publish(subject, value.to_string().into())
                        .await
                        .expect("publish"),
                );
            }
            for ack in futures::future::join_all(acks.into_iter().map(IntoFuture::into_future)).await {
                ack.expect("put acked");
            }
            next = end;
            if next % 1_000_000 == 0 {
                eprintln!("loaded {next} records in {:.1?}", loading.elapsed());
            }
        }
        let loaded_in = loading.elapsed();
        println!("load: {records} puts in {loaded_in:.1?} ({:.0}/s, {batch} in flight)", records as f64 / loaded_in.as_secs_f64());
        let limit = Instant::now() + Duration::from_secs(600);
        while records_held(&watching).await < records {
            assert!(Instant::now() < limit, "the watching edge never held every record");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let caught_up = loading.elapsed();
        tokio::time::sleep(settle).await;
        let watching_rss = rss_kib(watching.pid());
        println!(
            "edge that watched the load: held every record {caught_up:.1?} after the load began; RSS {} = {} per record",
            mib(watching_rss),
            per_record(watching_rss, empty_rss, records)
        );
        drop(watching);
        let (nats_rss, store_bytes) = nats_process(nats.port)
            .map(|(pid, dir)| (rss_kib(pid), disk_bytes(&dir)))
            .unwrap_or_default();
        println!(
            "nats-server: RSS {}, bucket on disk {:.1} MiB ({:.0} bytes per record)",
            mib(nats_rss),
            store_bytes as f64 / 1048576.0,
            store_bytes as f64 / records as f64
        );

        // 3. An edge started on the full bucket.
        let started = Instant::now();
        let fresh = spawn_replica_edge(&origin.url(), upstream.addr, &servers, BUCKET);
        let ready_limit = Duration::from_secs(env_or("READY_LIMIT_SECS", 300));
        let Some(ready_in) = ready_after(&fresh, started, ready_limit).await else {
            println!(
                "edge started on the full bucket: NOT ready after {ready_limit:?}, holding {} records",
                records_held(&fresh).await
            );
            return;
        };
        let ready_rss = rss_kib(fresh.pid());
        println!("edge started on the full bucket: ready in {ready_in:.2?}");
        assert_eq!(records_held(&fresh).await, records, "ready with every record");
        // Signed out at `epoch`: a token issued a minute before it is rejected.
        let token = origin.token_at(&account(records - 1), "tv", epoch - 60);
        let rejected = fresh.get_with_token("/", &token).await.status();
        assert_eq!(rejected, 401, "a signed-out account's token at the new edge");
        tokio::time::sleep(settle).await;
        let fresh_rss = rss_kib(fresh.pid());
        println!(
            "edge started on the full bucket: RSS at ready {} = {} per record; after {settle:?} {} = {} per record",
            mib(ready_rss),
            per_record(ready_rss, empty_rss, records),
            mib(fresh_rss),
            per_record(fresh_rss, empty_rss, records)
        );

        // 4. The server restarts under the ready edge.
        nats.stop();
        let restarting = Instant::now();
        nats.start_again_within(Duration::from_secs(600));
        let accepting = restarting.elapsed();
        let since_accepting = Instant::now();
        let client = async_nats::connect(nats.url()).await.expect("NATS after the restart");
        let store = loop {
            match jetstream::new(client.clone()).get_key_value(BUCKET).await {
                Ok(store) => break store,
                Err(_) if since_accepting.elapsed() < Duration::from_secs(120) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("the bucket after the restart: {e}"),
            }
        };
        let late = account(records);
        common::nats::put_record(&store, &late, epoch, &[]).await;
        let token = origin.token_at(&late, "tv", epoch - 60);
        let limit = Duration::from_secs(300);
        while fresh.get_with_token("/", &token).await.status() != 401 {
            assert!(since_accepting.elapsed() < limit, "the edge never got the sign-out put after the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "nats-server restarted under the ready edge: accepting after {accepting:.2?}; a sign-out put then rejected at the edge {:.2?} after that",
            since_accepting.elapsed()
        );
    });
}
