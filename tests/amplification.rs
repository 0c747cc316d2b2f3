//! Origin amplification: forged tokens never reach the auth origin, and many distinct valid
//! accounts cost one origin request each and stay within `cache.max_accounts`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use common::*;

const REQUESTS: usize = 100_000;
const CONCURRENCY: usize = 64;
const MAX_ACCOUNTS: u64 = 20_000;

/// Sends every token once through the edge, `CONCURRENCY` at a time; returns status counts.
async fn send_all(edge: &Edge, tokens: Arc<Vec<String>>) -> std::collections::HashMap<u16, u64> {
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, url, tokens, next) =
            (client.clone(), edge.url("/"), tokens.clone(), next.clone());
        tasks.spawn(async move {
            let mut counts = std::collections::HashMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tokens.len() {
                    return counts;
                }
                let status = client
                    .get(&url)
                    .bearer_auth(&tokens[i])
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                *counts.entry(status).or_insert(0u64) += 1;
            }
        });
    }
    let mut total = std::collections::HashMap::new();
    while let Some(counts) = tasks.join_next().await {
        for (status, n) in counts.unwrap() {
            *total.entry(status).or_insert(0) += n;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_for_random_accounts_cause_zero_origin_requests() {
    // Every forged token is verified (and rejected): without the per-client budget, which
    // would refuse most of them unchecked (tests/forged_token_flood.rs).
    let (origin, upstream, edge) = started_with(|c| c.invalid_tokens_per_client("off")).await;

    // Well-formed tokens with the trusted kid, random accounts, and signatures that are not
    // the trusted key's: verification must reject them before any lookup.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"alg":"ES256","typ":"JWT","kid":"test-es256"}"#);
    let mut rng = fastrand::Rng::with_seed(7);
    let tokens: Vec<String> = (0..REQUESTS)
        .map(|_| {
            let account = format!("victim-{:016x}", rng.u64(..));
            let payload = b64.encode(claims(&account, "tv", now()).to_string());
            let signature: Vec<u8> = (0..64).map(|_| rng.u8(..)).collect();
            format!("{header}.{payload}.{}", b64.encode(signature))
        })
        .collect();
    let started = Instant::now();
    let counts = send_all(&edge, Arc::new(tokens)).await;
    eprintln!(
        "{REQUESTS} forged requests in {:?}: {counts:?}",
        started.elapsed()
    );
    assert_eq!(
        counts.get(&401).copied(),
        Some(REQUESTS as u64),
        "{counts:?}"
    );
    assert_eq!(origin.revocation_requests(), 0);
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_valid_accounts_cost_one_origin_request_each_within_max_accounts() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    // 100,000 lookups on two shared cores: an answer slower than the test default's 250 ms
    // would be a 503 that says nothing about how many lookups were made.
    let edge = EdgeConfig::new(&origin, &upstream)
        .max_accounts(MAX_ACCOUNTS)
        .origin_timeout("2s")
        .start()
        .await;
    let rss_before = rss_kib(edge.pid());

    let iat = now() - 60;
    let tokens: Vec<String> = (0..REQUESTS)
        .map(|i| origin.token_at(&format!("account-{i}"), "tv", iat))
        .collect();
    let started = Instant::now();
    let counts = send_all(&edge, Arc::new(tokens)).await;
    let took = started.elapsed();
    assert_eq!(
        counts.get(&200).copied(),
        Some(REQUESTS as u64),
        "{counts:?}"
    );
    assert_eq!(
        origin.revocation_requests(),
        REQUESTS as u64,
        "one origin request per account"
    );

    let entries = edge.metric("epochgate_epoch_cache_entries").await as u64;
    let rss_after = rss_kib(edge.pid());
    eprintln!(
        "{REQUESTS} accounts in {took:?}; cache entries {entries} (max {MAX_ACCOUNTS}); RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        entries <= MAX_ACCOUNTS,
        "{entries} cached accounts, bound {MAX_ACCOUNTS}"
    );
    assert!(entries > 0);
}
