//! Sign-out propagation through the fleet replica: one nats-server, the reference auth origin
//! publishing every sign-out into the bucket, three edges watching it. For each of
//! `SIGNOUTS` accounts, from the origin's 2xx to the sign-out POST to the first 401 at each
//! edge, each edge polled in a tight loop (one request at a time) with the account's token.
//! The origin answers once the bucket has acknowledged the put, so most of the path lies
//! before the 2xx: also printed, from sending the POST to the slowest edge's first 401.
//!
//! ```text
//! cargo bench --bench replica_propagation
//! ```
//! Environment: `SIGNOUTS` (200).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::replica_fleet::ReplicaBackends;

const BUCKET: &str = "epochgate-revocations";
const EDGES: usize = 3;
/// An edge that has not rejected by then counts as a failure of the run.
const POLL_LIMIT: Duration = Duration::from_secs(5);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn summary(lags: &mut [Duration]) -> String {
    lags.sort();
    format!(
        "n={:<4} p50={:>9.3?} p99={:>9.3?} max={:>9.3?}",
        lags.len(),
        percentile(lags, 0.50),
        percentile(lags, 0.99),
        lags[lags.len() - 1]
    )
}

/// Requests `url` with `token` one at a time until it answers 401; the time from `since`.
async fn first_rejection(client: reqwest::Client, url: String, token: String) -> Duration {
    let since = Instant::now();
    loop {
        let r = client.get(&url).bearer_auth(&token).send().await;
        if r.is_ok_and(|r| r.status() == 401) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < POLL_LIMIT,
            "{url}: no 401 within {POLL_LIMIT:?}"
        );
    }
}

fn main() {
    let signouts = env_or("SIGNOUTS", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let backends = ReplicaBackends::start(BUCKET).await;
        let (origin, origin_url) = (&backends.origin, &backends.origin_url);
        let edges: Vec<_> = (0..EDGES).map(|_| backends.edge().spawn()).collect();
        for edge in &edges {
            edge.wait_ready().await;
        }
        let tokens: Vec<String> = (0..signouts)
            .map(|i| origin.issue_token(&format!("account-{i}"), "tv").unwrap())
            .collect();
        // One keep-alive client per edge, as a player would hold.
        let clients: Vec<reqwest::Client> = (0..EDGES).map(|_| reqwest::Client::new()).collect();
        let poster = reqwest::Client::new();
        let urls: Vec<String> = edges.iter().map(|e| e.url("/live/seg1.ts")).collect();
        println!(
            "sign-out propagation through the fleet replica: 1 nats-server, reference origin --nats, {EDGES} edges (2 threads each), loopback"
        );

        let mut per_edge: Vec<Vec<Duration>> =
            (0..EDGES).map(|_| Vec::with_capacity(signouts)).collect();
        // From sending the sign-out to the last edge's first 401 (the origin answers once
        // the bucket has acknowledged the put).
        let mut from_request = Vec::with_capacity(signouts);
        let measured = Instant::now();
        for (i, token) in tokens.iter().enumerate() {
            // The token is served everywhere first (and its signature is verified once).
            for (client, url) in clients.iter().zip(&urls) {
                let r = client.get(url).bearer_auth(token).send().await.unwrap();
                assert_eq!(r.status(), 200, "account-{i} before its sign-out");
            }
            let sent = Instant::now();
            let r = poster
                .post(format!("{origin_url}/v1/accounts/account-{i}/signout-all"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "sign-out: {}", r.status());
            let answered = sent.elapsed();
            let pollers: Vec<_> = clients
                .iter()
                .zip(&urls)
                .map(|(client, url)| {
                    tokio::spawn(first_rejection(
                        client.clone(),
                        url.clone(),
                        token.clone(),
                    ))
                })
                .collect();
            let mut slowest = Duration::ZERO;
            for (lags, poller) in per_edge.iter_mut().zip(pollers) {
                let lag = poller.await.expect("an edge rejected the signed-out token");
                slowest = slowest.max(lag);
                lags.push(lag);
            }
            from_request.push(answered + slowest);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = measured.elapsed();
        // Per sign-out, the slowest of the edges: when it holds everywhere.
        let mut everywhere: Vec<Duration> = (0..signouts)
            .map(|i| per_edge.iter().map(|lags| lags[i]).max().unwrap())
            .collect();
        let mut all: Vec<Duration> = per_edge.iter().flatten().copied().collect();
        for (e, lags) in per_edge.iter_mut().enumerate() {
            println!("edge {e}              {}", summary(lags));
        }
        println!("all edges           {}", summary(&mut all));
        println!("slowest edge        {}", summary(&mut everywhere));
        println!("request to slowest  {}", summary(&mut from_request));
        println!("({signouts} sign-outs in {elapsed:.1?})");
    });
}
