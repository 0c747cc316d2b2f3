//! The decision path in fleet-replica mode against epoch-cache mode: `Gate::check` for an
//! ES256 token whose record is in a warm epoch cache, against a gate whose replica holds
//! every record of a bucket of `RECORDS` accounts (on a local nats-server, watched as the
//! edge does): the token's account absent from the replica (never signed out, as most are)
//! or present with an older epoch. Each with the verified-token cache off and on.
//!
//! ```text
//! cargo bench --bench replica_decision
//! ```
//! Environment: `RECORDS` (100000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nats::{create_bucket, put_many, put_record, NatsServer};
use common::{now, TestOrigin, AUDIENCE, ISSUER};
use criterion::{criterion_group, criterion_main, Criterion};
use epochgate::{Decision, Gate, Settings};
use pingora::services::background::BackgroundService;

const BUCKET: &str = "epochgate-revocations";

fn settings(origin: &str, verified_cache_entries: u64, replica: Option<&str>) -> Settings {
    let (replica, max_lifetime) = match replica {
        Some(url) => (
            format!("replica: {{ nats: {{ servers: [\"{url}\"], bucket: {BUCKET} }} }}"),
            "  max_lifetime: 30d",
        ),
        None => (String::new(), ""),
    };
    Settings::from_yaml(&format!(
        r#"
proxy: {{ listen: ["127.0.0.1:1"], upstream: {{ peers: ["127.0.0.1:2"] }} }}
auth_origin: {{ url: "{origin}", feed: false }}
token:
  algorithms: [ES256]
  issuer: "{ISSUER}"
  audience: "{AUDIENCE}"
  verified_cache_entries: {verified_cache_entries}
{max_lifetime}
{replica}
"#
    ))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let records = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let nats = NatsServer::start();
    let origin = runtime.block_on(async {
        let store = create_bucket(&nats.url(), BUCKET, Duration::from_secs(30 * 86_400), 1).await;
        put_many(&store, "account-", records, now()).await;
        // Present in the replica, signed out a day before the token was issued.
        put_record(&store, "present", now() - 86_400, &[]).await;
        TestOrigin::start().await
    });
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);

    let mut group = c.benchmark_group("decision_replica");
    let cases = [
        ("epoch_cache", "cached", false),
        ("replica_absent", "never-signed-out", true),
        ("replica_present", "present", true),
    ];
    for (name, account, replica) in cases {
        for (cache_name, entries) in [("verify_every_time", 0), ("verified_token_cache", 100_000)] {
            let url = nats.url();
            let settings = settings(&origin.url(), entries, replica.then_some(url.as_str()));
            let gate = Arc::new(Gate::new(&settings).unwrap());
            if let Some(replica) = gate.replica() {
                let watch =
                    epochgate::revocation::replica::watch::ReplicaWatch::new(replica.clone());
                let shutdown = shutdown_rx.clone();
                runtime.spawn(async move { watch.start(shutdown).await });
                let deadline = Instant::now() + Duration::from_secs(60);
                while !replica.loaded() {
                    assert!(Instant::now() < deadline, "the replica never loaded");
                    std::thread::sleep(Duration::from_millis(20));
                }
                assert_eq!(replica.store().len(), records + 1);
            }
            let mut headers = http::HeaderMap::new();
            let token = origin.token(account, "tv");
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            let uri: http::Uri = "/live/seg1.ts".parse().unwrap();
            // Load the keys, and warm the epoch cache (and the verified-token cache) once.
            runtime.block_on(async {
                gate.keys().refresh().await.unwrap();
                let verdict = gate.check(&headers, &uri, None).await;
                assert!(
                    matches!(verdict.decision, Decision::Allow { .. }),
                    "{name}: {verdict:?}"
                );
            });
            let lookups_before = origin.revocation_requests();
            group.bench_function(format!("{name}/{cache_name}"), |b| {
                b.to_async(&runtime).iter(|| {
                    let (gate, headers, uri) = (gate.clone(), &headers, &uri);
                    async move { gate.check(headers, uri, None).await }
                })
            });
            if replica {
                assert_eq!(
                    origin.revocation_requests(),
                    lookups_before,
                    "{name}: no lookup at the auth origin"
                );
            }
        }
    }
    group.finish();
    let _ = shutdown.send(true);
}

criterion_group!(benches, bench);
criterion_main!(benches);
