//! Sign-out propagation: with 10,000 accounts cached at the edge and a steady request load,
//! sign accounts out one at a time and time each from the origin accepting the sign-out to
//! the first 401 at the edge. Once with the revocation feed connected, once polling only
//! (`refresh_after: 1s`). Each account is active: it made a request 50 ms before its sign-out,
//! so its record was just confirmed (for polling, the worst case).
//!
//! ```text
//! cargo bench --bench propagation
//! ```
//! Environment: `ACCOUNTS` (10000), `SIGNOUTS_FEED` (200), `SIGNOUTS_POLL` (40).

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Edge, EdgeConfig, AUDIENCE, ISSUER};
use epochgate::reference::auth_origin::AuthOrigin;

/// Background load: this many loops, each sending one request then pausing this long.
const LOAD_LOOPS: usize = 4;
const LOAD_PAUSE: Duration = Duration::from_millis(2);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A ready edge on one thread, its feed connected (or disabled, polling only).
async fn start_edge(origin: &str, upstream: SocketAddr, feed: bool, refresh_after: &str) -> Edge {
    let edge = EdgeConfig::to(origin, upstream)
        .threads(1)
        .origin_timeout("1s")
        .feed(feed)
        .algorithms(&["ES256"])
        .refresh_after(refresh_after)
        .env("RUST_LOG", "warn")
        .spawn();
    edge.wait_ready().await;
    edge.wait_feed(if feed { "connected" } else { "disabled" })
        .await;
    edge
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[allow(clippy::too_many_arguments)]
async fn run_scenario(
    name: &str,
    origin: &Arc<AuthOrigin>,
    origin_url: &str,
    upstream: SocketAddr,
    tokens: &Arc<Vec<String>>,
    feed: bool,
    refresh_after: &str,
    signouts: usize,
    first_account: usize,
) {
    let edge = start_edge(origin_url, upstream, feed, refresh_after).await;
    let base = format!("http://{}/", edge.proxy);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    // Warm the cache: one request per account, 32 at a time.
    let warm_started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut warmers = Vec::new();
    for _ in 0..32 {
        let (client, base, tokens, next) =
            (client.clone(), base.clone(), tokens.clone(), next.clone());
        warmers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= tokens.len() {
                    break;
                }
                let r = client
                    .get(&base)
                    .bearer_auth(&tokens[i])
                    .send()
                    .await
                    .unwrap();
                // 401: signed out in an earlier scenario, and cached all the same.
                assert!(
                    matches!(r.status().as_u16(), 200 | 401),
                    "warming account {i}: {}",
                    r.status()
                );
            }
        }));
    }
    for w in warmers {
        w.await.unwrap();
    }
    eprintln!(
        "[{name}] warmed {} accounts in {:?}",
        tokens.len(),
        warm_started.elapsed()
    );

    // Steady load over all accounts while we measure.
    let stop = Arc::new(AtomicBool::new(false));
    let load_requests = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for seed in 0..LOAD_LOOPS {
        let (client, base, tokens, stop, count) = (
            client.clone(),
            base.clone(),
            tokens.clone(),
            stop.clone(),
            load_requests.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed as u64);
            while !stop.load(Ordering::Relaxed) {
                let token = &tokens[rng.usize(..tokens.len())];
                let _ = client.get(&base).bearer_auth(token).send().await;
                count.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(LOAD_PAUSE).await;
            }
        }));
    }

    let measure_started = Instant::now();
    let mut lags = Vec::with_capacity(signouts);
    for k in 0..signouts {
        let i = first_account + k;
        let account = format!("account-{i}");
        // The account is active: a request 50 ms before its sign-out, so its record has just
        // been (re)confirmed at the edge. For polling that is the worst case: a full
        // refresh_after to wait.
        let _ = client
            .get(&base)
            .bearer_auth(&tokens[i])
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        origin.sign_out_all(&account);
        let accepted = Instant::now();
        loop {
            let r = client
                .get(&base)
                .bearer_auth(&tokens[i])
                .send()
                .await
                .unwrap();
            if r.status() == 401 {
                lags.push(accepted.elapsed());
                break;
            }
            assert!(
                accepted.elapsed() < Duration::from_secs(30),
                "{account} never rejected"
            );
        }
    }
    let measured_for = measure_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    lags.sort();
    let rate = load_requests.load(Ordering::Relaxed) as f64 / measured_for.as_secs_f64();
    println!(
        "{name:<28} n={:<4} p50={:>9.3?} p99={:>9.3?} max={:>9.3?}  (background load {rate:.0} req/s, {} accounts cached)",
        lags.len(),
        percentile(&lags, 0.50),
        percentile(&lags, 0.99),
        lags[lags.len() - 1],
        tokens.len(),
    );
}

fn main() {
    let accounts = env_or("ACCOUNTS", 10_000);
    let feed_signouts = env_or("SIGNOUTS_FEED", 200);
    let poll_signouts = env_or("SIGNOUTS_POLL", 40);
    assert!(feed_signouts + poll_signouts <= accounts);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let origin = AuthOrigin::new(ISSUER, AUDIENCE).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(epochgate::reference::serve(
            listener,
            origin.router(),
            std::future::pending(),
        ));
        let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = upstream_listener.local_addr().unwrap();
        let ok = axum::Router::new().fallback(|| async { "ok" });
        tokio::spawn(async move { axum::serve(upstream_listener, ok).await });

        let tokens: Arc<Vec<String>> = Arc::new(
            (0..accounts)
                .map(|i| origin.issue_token(&format!("account-{i}"), "tv").unwrap())
                .collect(),
        );
        println!("sign-out propagation, {accounts} accounts cached, 1 edge thread, loopback");
        run_scenario(
            "feed connected",
            &origin,
            &origin_url,
            upstream,
            &tokens,
            true,
            "30s",
            feed_signouts,
            0,
        )
        .await;
        run_scenario(
            "feed down, refresh_after 1s",
            &origin,
            &origin_url,
            upstream,
            &tokens,
            false,
            "1s",
            poll_signouts,
            feed_signouts,
        )
        .await;
    });
}
