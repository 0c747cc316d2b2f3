//! Shared fixtures, all on loopback: a programmable auth origin (`origin`), an echoing
//! upstream (`upstream`), the real edge binary as a child process (`edge`) and its config
//! (`config`); here, the small helpers every test uses.
#![allow(dead_code)]

pub mod config;
pub mod edge;
pub mod nats;
pub mod origin;
pub mod replica_fleet;
pub mod restart_load;
pub mod rss;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use epochgate::revocation::RevocationRecord;
use serde_json::{json, Value};

// Each test binary uses its own share of these.
#[allow(unused_imports)]
pub use config::EdgeConfig;
#[allow(unused_imports)]
pub use edge::Edge;
#[allow(unused_imports)]
pub use origin::{FeedCommand, Mode, OriginState, TestOrigin};
#[allow(unused_imports)]
pub use rss::{own_rss_kib, rss_kib};
#[allow(unused_imports)]
pub use upstream::Upstream;

pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "streaming-edge";

pub fn now() -> u64 {
    epochgate::unix_millis() / 1000
}

/// A loopback port nobody listens on right now, for a listener the edge binds later.
///
/// Taken from just below the kernel's ephemeral range, never from it: a port that bind(0)
/// handed out and released can be handed out again to a parallel test's origin or upstream,
/// or become the local end of an outgoing connection, before the edge binds it. The edge
/// then fails to bind, or its readiness probe reaches the other test's listener.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(32768);
    let span = ephemeral_low.saturating_sub(1024).min(16_000);
    assert!(
        span > 1000,
        "no room below the ephemeral port range ({ephemeral_low})"
    );
    let first = ephemeral_low - span;
    // Different test binaries start from different places; within one, ports never repeat.
    let offset = u64::from(std::process::id()) * 7919;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (first + (offset + n) % span) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{ephemeral_low}");
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Standard claims of a valid device token.
pub fn claims(account: &str, device: &str, iat: u64) -> Value {
    json!({
        "sub": account, "did": device, "iat": iat, "exp": now() + 3600,
        "iss": ISSUER, "aud": AUDIENCE,
    })
}

/// `name{label="value",...}` split into the name and its label pairs.
fn parse_sample(sample: &str) -> (&str, Vec<&str>) {
    match sample.split_once('{') {
        Some((name, rest)) => (
            name,
            rest.trim_end_matches('}')
                .split(',')
                .filter(|pair| !pair.is_empty())
                .collect(),
        ),
        None => (sample, Vec::new()),
    }
}

/// The sum of every series in a Prometheus text exposition that matches `sample` (its name,
/// and at least its labels).
pub fn sum_samples(text: &str, sample: &str) -> f64 {
    let (name, wanted) = parse_sample(sample);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(series, value)| {
            let (series_name, labels) = parse_sample(series);
            (series_name == name && wanted.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// A test origin, an echoing upstream, and a ready edge in front of them (the test config).
pub async fn started() -> (TestOrigin, Upstream, Edge) {
    started_with(|config| config).await
}

/// [`started`], with the edge's config changed by `configure`, e.g.
/// `started_with(|c| c.strip_token(false))`.
pub async fn started_with(
    configure: impl FnOnce(EdgeConfig) -> EdgeConfig,
) -> (TestOrigin, Upstream, Edge) {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = configure(EdgeConfig::new(&origin, &upstream)).start().await;
    (origin, upstream, edge)
}

/// The JSON an upstream echo returned.
pub async fn echoed(response: reqwest::Response) -> Value {
    assert_eq!(
        response.status(),
        200,
        "expected the request to reach the upstream"
    );
    response.json().await.expect("echo JSON")
}

/// The JSON body of a rejection, checked for its content type.
pub async fn rejection(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    response.json().await.expect("rejection JSON")
}

/// Runs `epochgate` with arguments and returns (exit code, stdout+stderr).
pub fn run_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_epochgate"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run epochgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn record(epoch: u64) -> RevocationRecord {
    RevocationRecord {
        epoch,
        devices: HashMap::new(),
    }
}

/// Tokens a hostile client sends (as in hostile_clients.rs): malformed, forged, oversized,
/// with odd headers. Each is distinctive enough to grep for.
pub fn hostile_tokens(origin: &TestOrigin) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let valid = origin.token("mallory", "tv");
    let parts: Vec<&str> = valid.split('.').collect();
    vec![
        "not.a.token".to_string(),
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        ),
        format!("{}.{}.{}", parts[0], parts[1], "Zm9yZ2VkLXNpZ25hdHVyZQ"),
        format!(
            "{}.{}.{}",
            b64.encode(r#"{"alg":"ES256","kid":"../../etc/passwd"}"#),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.sig",
            b64.encode(format!(
                r#"{{"alg":"ES256","x":{}{}}}"#,
                "[".repeat(300),
                "]".repeat(300)
            )),
            b64.encode("{}")
        ),
        format!("eyJ{}", "A".repeat(9000)),
        valid,
    ]
}
