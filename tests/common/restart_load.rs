//! An edge restarted under load over many accounts: what the auth origin and the clients saw.
//! Shared by `tests/lookup_limit.rs` (limit enforced) and `benches/restart_stampede.rs`
//! (figures with the default limit).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{eventually, Edge, TestOrigin};

/// Longest a phase may take to get every account cached before the run is called stuck.
const PHASE_LIMIT: Duration = Duration::from_secs(60);

/// What the clients got, counted as the answers arrive.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    /// `503` with `"error": "origin_unavailable"`: what `on_origin_unavailable: deny` answers.
    origin_unavailable: AtomicU64,
    /// No response at all (connection refused or reset): the edge was being restarted.
    no_response: AtomicU64,
    /// No response to a request sent after the new process was ready.
    no_response_after_ready: AtomicU64,
    /// Any other answer: status and body.
    unexpected: Mutex<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    ok: u64,
    origin_unavailable: u64,
}

impl Tally {
    fn counts(&self) -> Counts {
        Counts {
            ok: self.ok.load(Ordering::SeqCst),
            origin_unavailable: self.origin_unavailable.load(Ordering::SeqCst),
        }
    }
}

/// `clients` tasks, each sending one request at a time through the edge and going round its
/// share of the tokens until stopped. A request without a response is sent again after 10 ms.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<Tally>,
    /// Milliseconds after `base` at which the restarted edge was ready (`u64::MAX` before).
    ready_at_ms: Arc<AtomicU64>,
    base: Instant,
}

impl Load {
    fn start(proxy: SocketAddr, tokens: Arc<Vec<String>>, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let ready_at_ms = Arc::new(AtomicU64::new(u64::MAX));
        let base = Instant::now();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("http://{proxy}/live/seg.ts");
        let tasks = (0..clients)
            .map(|first| {
                let (http, url, tokens, stop, tally, ready_at_ms) = (
                    http.clone(),
                    url.clone(),
                    tokens.clone(),
                    stop.clone(),
                    tally.clone(),
                    ready_at_ms.clone(),
                );
                tokio::spawn(async move {
                    let mut next = first % tokens.len();
                    while !stop.load(Ordering::Relaxed) {
                        let sent_ms = base.elapsed().as_millis() as u64;
                        let answer = http.get(&url).bearer_auth(&tokens[next]).send().await;
                        let response = match answer {
                            Ok(response) => response,
                            Err(_) => {
                                tally.no_response.fetch_add(1, Ordering::SeqCst);
                                if sent_ms > ready_at_ms.load(Ordering::SeqCst) {
                                    tally.no_response_after_ready.fetch_add(1, Ordering::SeqCst);
                                }
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        };
                        let status = response.status().as_u16();
                        // Read the whole body, so the connection is kept for the next request.
                        let body = response.bytes().await.unwrap_or_default();
                        let error = serde_json::from_slice::<Value>(&body)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_string));
                        match (status, error.as_deref()) {
                            (200, _) => tally.ok.fetch_add(1, Ordering::SeqCst),
                            (503, Some("origin_unavailable")) => {
                                tally.origin_unavailable.fetch_add(1, Ordering::SeqCst)
                            }
                            _ => {
                                tally.unexpected.lock().unwrap().push(format!(
                                    "HTTP {status}: {}",
                                    String::from_utf8_lossy(&body)
                                ));
                                0
                            }
                        };
                        next = (next + clients) % tokens.len();
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            tally,
            ready_at_ms,
            base,
        }
    }

    fn mark_ready(&self) {
        self.ready_at_ms
            .store(self.base.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.tally
    }
}

/// What one run saw.
#[derive(Debug)]
pub struct RestartFigures {
    /// The most lookups the origin answered at once while the first process filled its cache.
    pub first_start_peak: u64,
    /// The same for the restarted process, from its start until every account was cached.
    pub restart_peak: u64,
    /// From starting the new process to every account being in its cache.
    pub all_cached_after: Duration,
    /// Lookups the origin received from the new process in that time.
    pub restart_lookups: u64,
    /// Answers from the new process in that time: `200`, and `503 origin_unavailable`.
    pub restart_ok: u64,
    pub restart_origin_unavailable: u64,
    /// Over the whole run: answers that are neither (status and body), requests without a
    /// response, and those among them sent after the new process was ready.
    pub unexpected: Vec<String>,
    pub no_response: u64,
    pub no_response_after_ready: u64,
}

/// Waits until the edge holds `accounts` accounts in its epoch cache.
async fn all_cached(edge: &Edge, accounts: usize, what: &str) {
    eventually(PHASE_LIMIT, what, || async move {
        let ready = edge.readiness().await;
        (ready["cached_accounts"].as_u64() >= Some(accounts as u64)).then_some(())
    })
    .await;
}

/// One token per account, `account-0` .. `account-{accounts-1}` (device `tv`).
pub fn account_tokens(origin: &TestOrigin, accounts: usize) -> Vec<String> {
    (0..accounts)
        .map(|i| origin.token(&format!("account-{i}"), "tv"))
        .collect()
}

/// With `clients` concurrent clients going round the tokens' accounts: the edge fills its
/// cache, is stopped and started again on the same config, and fills it again, all under the
/// same load. The edge must have been started (and be ready) with the config to test.
pub async fn restart_under_load(
    origin: &TestOrigin,
    edge: &mut Edge,
    tokens: Vec<String>,
    clients: usize,
) -> RestartFigures {
    let accounts = tokens.len();
    origin.reset_peak_revocation_concurrency();
    let load = Load::start(edge.proxy, Arc::new(tokens), clients);
    all_cached(edge, accounts, "the first process to cache every account").await;
    let first_start_peak = origin.peak_revocation_concurrency();

    let restarted = Instant::now();
    edge.restart();
    let before = load.tally.counts();
    let lookups_before = origin.revocation_requests();
    origin.reset_peak_revocation_concurrency();
    edge.wait_ready().await;
    load.mark_ready();
    all_cached(edge, accounts, "the new process to cache every account").await;
    let all_cached_after = restarted.elapsed();
    let restart_peak = origin.peak_revocation_concurrency();
    let restart_lookups = origin.revocation_requests() - lookups_before;
    let after = load.tally.counts();

    let tally = load.stop().await;
    let unexpected = tally.unexpected.lock().unwrap().clone();
    RestartFigures {
        first_start_peak,
        restart_peak,
        all_cached_after,
        restart_lookups,
        restart_ok: after.ok - before.ok,
        restart_origin_unavailable: after.origin_unavailable - before.origin_unavailable,
        unexpected,
        no_response: tally.no_response.load(Ordering::SeqCst),
        no_response_after_ready: tally.no_response_after_ready.load(Ordering::SeqCst),
    }
}
