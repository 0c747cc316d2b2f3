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

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use epochgate::reference::auth_origin::AuthOrigin;

const ISSUER: &str = "https://auth.bench";
const AUDIENCE: &str = "streaming-edge";
/// Background load: this many loops, each sending one request then pausing this long.
const LOAD_LOOPS: usize = 4;
const LOAD_PAUSE: Duration = Duration::from_millis(2);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct EdgeProcess {
    child: Child,
    proxy: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_edge(
    origin: &str,
    upstream: SocketAddr,
    feed: bool,
    refresh_after: &str,
) -> EdgeProcess {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, admin) = (free_port(), free_port());
    let config = format!(
        r#"server:
  threads: 1
  pid_file: {d}/edge.pid
  upgrade_sock: {d}/upgrade.sock
  grace_period_seconds: 0
proxy:
  listen: ["127.0.0.1:{proxy}"]
  upstream: {{ peers: ["{upstream}"] }}
admin:
  listen: "127.0.0.1:{admin}"
auth_origin:
  url: "{origin}"
  timeout: 1s
  feed: {feed}
token:
  algorithms: [ES256]
  issuer: "{ISSUER}"
  audience: "{AUDIENCE}"
cache:
  refresh_after: {refresh_after}
  max_stale: 10m
"#,
        d = dir.path().display()
    );
    let path = dir.path().join("epochgate.yaml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_epochgate"))
        .arg("-c")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run epochgate");
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body: Option<serde_json::Value> = match reqwest::get(&ready).await {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let want_feed = if feed { "connected" } else { "disabled" };
        if body
            .as_ref()
            .is_some_and(|b| b["ready"] == true && b["feed"] == want_feed)
        {
            break;
        }
        assert!(Instant::now() < deadline, "edge not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    EdgeProcess {
        child,
        proxy: SocketAddr::from(([127, 0, 0, 1], proxy)),
        _dir: dir,
    }
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
