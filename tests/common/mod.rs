//! Shared fixtures: a programmable auth origin, an echoing upstream, and the real edge
//! binary run as a child process, all on loopback.
#![allow(dead_code)]

pub mod nats;
pub mod replica_fleet;
pub mod restart_load;

pub mod tls;

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use epochgate::reference::signing::SigningKey;
use epochgate::revocation::RevocationRecord;
use serde_json::{json, Value};
use tokio::task::JoinSet;

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

// ---------------------------------------------------------------------------
// The auth origin
// ---------------------------------------------------------------------------

/// How the test origin answers revocation lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Status500,
    Html,
    /// Accept and never answer.
    Hang,
    /// Answer after this long.
    Slow(Duration),
    /// A 50 MB body.
    Huge,
}

/// What the test sends down open feed connections.
#[derive(Debug, Clone)]
pub enum FeedCommand {
    Raw(bytes::Bytes),
    Close,
}

pub struct OriginState {
    /// `None`: the feed endpoint answers 404.
    pub feed: Mutex<Option<tokio::sync::broadcast::Sender<FeedCommand>>>,
    /// The `Last-Event-ID` header of each feed connection, in order.
    pub feed_connections: Mutex<Vec<Option<String>>>,
    pub records: Mutex<HashMap<String, Value>>,
    pub jwks: Mutex<Vec<Value>>,
    pub mode: Mutex<Mode>,
    pub jwks_down: Mutex<bool>,
    pub revocation_requests: AtomicU64,
    pub jwks_requests: AtomicU64,
    /// Endpoints (`jwks`, `revocations`, `feed`) answering `302 Found` to this base URL.
    pub redirects: Mutex<HashMap<&'static str, String>>,
    /// Revocation lookups being answered right now, and the most there ever were at once.
    pub revocations_in_flight: AtomicU64,
    pub revocations_peak: AtomicU64,
}

/// A protocol-speaking auth origin whose answers the test controls, and which counts.
pub struct TestOrigin {
    pub state: Arc<OriginState>,
    pub key: SigningKey,
    pub addr: SocketAddr,
    tasks: Option<Arc<Mutex<JoinSet<()>>>>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl TestOrigin {
    pub async fn start() -> TestOrigin {
        let key = SigningKey::generate_es256("test-es256").unwrap();
        let state = Arc::new(OriginState {
            feed: Mutex::new(None),
            feed_connections: Mutex::new(Vec::new()),
            records: Mutex::new(HashMap::new()),
            jwks: Mutex::new(vec![key.jwk().clone()]),
            mode: Mutex::new(Mode::Normal),
            jwks_down: Mutex::new(false),
            revocation_requests: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
            redirects: Mutex::new(HashMap::new()),
            revocations_in_flight: AtomicU64::new(0),
            revocations_peak: AtomicU64::new(0),
        });
        let mut origin = TestOrigin {
            state,
            key,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tasks: None,
            accept: None,
        };
        // A port from `free_port`, not bind(0): while a test has the origin stopped, no
        // parallel test's listener or outgoing connection can take its port, so "down" stays
        // "connection refused" and `restart` gets the same port back.
        origin.listen(free_port()).await;
        origin
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and drops every open connection: the origin is down (refused).
    pub fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        if let Some(tasks) = self.tasks.take() {
            tasks.lock().unwrap().abort_all();
        }
    }

    /// Comes back on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.listen(self.addr.port()).await;
    }

    async fn listen(&mut self, port: u16) {
        // After a restart the port was only just released: give the kernel a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("bind 127.0.0.1:{port}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/.well-known/jwks.json", get(origin_jwks))
            .route("/v1/revocations/{account}", get(origin_revocation))
            .route("/v1/revocation-feed", get(origin_feed))
            .with_state(self.state.clone());
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        self.tasks = Some(tasks.clone());
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                tasks.lock().unwrap().spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        }));
    }

    /// Offers the feed endpoint (it answers 404 until then).
    pub fn enable_feed(&self) {
        *self.state.feed.lock().unwrap() = Some(tokio::sync::broadcast::channel(1024).0);
    }

    /// Sends raw SSE text to every open feed connection.
    pub fn feed_send(&self, raw: impl Into<bytes::Bytes>) {
        if let Some(tx) = self.state.feed.lock().unwrap().as_ref() {
            let _ = tx.send(FeedCommand::Raw(raw.into()));
        }
    }

    /// Sends a `revocation` event with the account's whole record.
    pub fn feed_revocation(&self, id: u64, account: &str, epoch: u64, devices: &[(&str, u64)]) {
        let devices: HashMap<&str, u64> = devices.iter().copied().collect();
        let data = json!({"account_id": account, "epoch": epoch, "devices": devices, "changed_at_ms": epochgate::unix_millis()});
        self.feed_send(format!("event: revocation\nid: {id}\ndata: {data}\n\n"));
    }

    /// Ends every open feed connection (the origin drops them).
    pub fn feed_close(&self) {
        if let Some(tx) = self.state.feed.lock().unwrap().as_ref() {
            let _ = tx.send(FeedCommand::Close);
        }
    }

    /// `Last-Event-ID` of each feed connection so far.
    pub fn feed_connections(&self) -> Vec<Option<String>> {
        self.state.feed_connections.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Makes `endpoint` (`jwks`, `revocations` or `feed`) answer `302 Found` with a
    /// `Location` on `target` (a base URL), the same path there.
    pub fn redirect(&self, endpoint: &'static str, target: &str) {
        self.state
            .redirects
            .lock()
            .unwrap()
            .insert(endpoint, target.to_string());
    }

    pub fn set_jwks_down(&self, down: bool) {
        *self.state.jwks_down.lock().unwrap() = down;
    }

    pub fn set_jwks(&self, keys: Vec<Value>) {
        *self.state.jwks.lock().unwrap() = keys;
    }

    /// Sets the account's record as the origin will serve it (any value, even backwards).
    pub fn set_record(&self, account: &str, epoch: u64, devices: &[(&str, u64)]) {
        let devices: HashMap<&str, u64> = devices.iter().copied().collect();
        self.set_raw_record(
            account,
            json!({"account_id": account, "epoch": epoch, "devices": devices}),
        );
    }

    pub fn set_raw_record(&self, account: &str, body: Value) {
        self.state
            .records
            .lock()
            .unwrap()
            .insert(account.to_string(), body);
    }

    pub fn revocation_requests(&self) -> u64 {
        self.state.revocation_requests.load(Ordering::SeqCst)
    }

    pub fn jwks_requests(&self) -> u64 {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    /// The most revocation lookups the origin was answering at once (since the last reset).
    pub fn peak_revocation_concurrency(&self) -> u64 {
        self.state.revocations_peak.load(Ordering::SeqCst)
    }

    /// Starts a new peak measurement from the lookups in flight now.
    pub fn reset_peak_revocation_concurrency(&self) {
        let now = self.state.revocations_in_flight.load(Ordering::SeqCst);
        self.state.revocations_peak.store(now, Ordering::SeqCst);
    }

    /// A valid token for account/device issued at `iat`.
    pub fn token_at(&self, account: &str, device: &str, iat: u64) -> String {
        self.key.sign(&claims(account, device, iat)).unwrap()
    }

    /// A valid token issued a minute ago.
    pub fn token(&self, account: &str, device: &str) -> String {
        self.token_at(account, device, now() - 60)
    }

    /// A forged token: the format and `kid` of a valid token for account/device, with the
    /// signature of another token (well-formed, but not this payload's).
    pub fn forged_token(&self, account: &str, device: &str) -> String {
        let token = self.token(account, device);
        let other = self.token(&format!("{account}-other"), device);
        let (signed, _) = token.rsplit_once('.').expect("a JWS has three parts");
        let (_, signature) = other.rsplit_once('.').expect("a JWS has three parts");
        format!("{signed}.{signature}")
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Standard claims of a valid device token.
pub fn claims(account: &str, device: &str, iat: u64) -> Value {
    json!({
        "sub": account, "did": device, "iat": iat, "exp": now() + 3600,
        "iss": ISSUER, "aud": AUDIENCE,
    })
}

/// The `302` an endpoint answers while the test redirects it.
fn redirected(state: &OriginState, endpoint: &str, path: &str) -> Option<Response> {
    let target = state.redirects.lock().unwrap().get(endpoint).cloned()?;
    Some(
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", format!("{target}{path}"))
            .body(Body::empty())
            .unwrap(),
    )
}

async fn origin_jwks(State(state): State<Arc<OriginState>>) -> Response {
    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(redirect) = redirected(&state, "jwks", "/.well-known/jwks.json") {
        return redirect;
    }
    if *state.jwks_down.lock().unwrap() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = state.jwks.lock().unwrap().clone();
    Json(json!({ "keys": keys })).into_response()
}

async fn origin_feed(State(state): State<Arc<OriginState>>, headers: HeaderMap) -> Response {
    if let Some(redirect) = redirected(&state, "feed", "/v1/revocation-feed") {
        return redirect;
    }
    let Some(rx) = state.feed.lock().unwrap().as_ref().map(|tx| tx.subscribe()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.feed_connections.lock().unwrap().push(last);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(FeedCommand::Raw(bytes)) => Some((Ok::<_, std::io::Error>(bytes), rx)),
            Ok(FeedCommand::Close) | Err(_) => None,
        }
    });
    let head = futures::stream::once(async { Ok(bytes::Bytes::from_static(b": hello\n\n")) });
    use futures::StreamExt;
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(head.chain(stream)))
        .unwrap()
}

/// Counts a revocation lookup as in flight until it is answered or dropped.
struct InFlight(Arc<OriginState>);

impl InFlight {
    fn enter(state: &Arc<OriginState>) -> InFlight {
        let now = state.revocations_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.revocations_peak.fetch_max(now, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.revocations_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn origin_revocation(
    State(state): State<Arc<OriginState>>,
    Path(account): Path<String>,
) -> Response {
    state.revocation_requests.fetch_add(1, Ordering::SeqCst);
    if let Some(redirect) = redirected(&state, "revocations", &format!("/v1/revocations/{account}"))
    {
        return redirect;
    }
    let _in_flight = InFlight::enter(&state);
    let mode = *state.mode.lock().unwrap();
    match mode {
        Mode::Normal => {}
        Mode::Status500 => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Html => {
            return (
                [("content-type", "text/html")],
                "<html><body>Bad gateway</body></html>",
            )
                .into_response()
        }
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Huge => {
            let body = format!(
                "{{\"account_id\":\"{account}\",\"epoch\":1,\"pad\":\"{}\"}}",
                "x".repeat(50 * 1024 * 1024)
            );
            return ([("content-type", "application/json")], body).into_response();
        }
    }
    let record = state.records.lock().unwrap().get(&account).cloned();
    match record {
        Some(body) => Json(body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

// ---------------------------------------------------------------------------
// The upstream
// ---------------------------------------------------------------------------

/// An HTTP/1.1 upstream that answers every request with what it received.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let router = Router::new().fallback(move |req: Request<Body>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                echo(req.headers(), req.uri())
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Upstream {
            addr,
            requests,
            task,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn echo(headers: &HeaderMap, uri: &Uri) -> Json<Value> {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in headers {
        seen.entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    Json(json!({ "uri": uri.to_string(), "headers": seen }))
}

// ---------------------------------------------------------------------------
// The edge
// ---------------------------------------------------------------------------

/// The real `epochgate` binary, configured for a test, killed on drop.
pub struct Edge {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
}

/// The config every test starts from; `extra` is appended (YAML keys of the top level).
pub fn edge_config(
    origin_url: &str,
    upstream: SocketAddr,
    proxy: u16,
    admin: u16,
    dir: &std::path::Path,
    cache: &str,
    extra: &str,
) -> String {
    edge_config_with_origin(origin_url, "", upstream, proxy, admin, dir, cache, extra)
}

/// As [`edge_config`], with `auth_origin_extra` lines added under `auth_origin:`.
#[allow(clippy::too_many_arguments)]
pub fn edge_config_with_origin(
    origin_url: &str,
    auth_origin_extra: &str,
    upstream: SocketAddr,
    proxy: u16,
    admin: u16,
    dir: &std::path::Path,
    cache: &str,
    extra: &str,
) -> String {
    format!(
        r#"server:
  threads: 2
  pid_file: {dir}/edge.pid
  upgrade_sock: {dir}/upgrade.sock
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
proxy:
  listen: ["127.0.0.1:{proxy}"]
  upstream: {{ peers: ["{upstream}"] }}
admin:
  listen: "127.0.0.1:{admin}"
auth_origin:
  url: "{origin_url}"
  timeout: 250ms
{auth_origin_extra}
token:
  algorithms: [ES256, RS256, EdDSA]
  issuer: "{ISSUER}"
  audience: "{AUDIENCE}"
  leeway: 5s
cache:
{cache}
{extra}"#,
        dir = dir.display()
    )
}

pub const DEFAULT_CACHE: &str = "  refresh_after: 30s\n  max_stale: 10m\n";

impl Edge {
    /// Starts an edge in front of `upstream`, using `origin`, and waits until it is ready.
    pub async fn start(origin: &TestOrigin, upstream: &Upstream) -> Edge {
        Edge::start_with(&origin.url(), upstream.addr, DEFAULT_CACHE, "").await
    }

    pub async fn start_with(
        origin_url: &str,
        upstream: SocketAddr,
        cache: &str,
        extra: &str,
    ) -> Edge {
        let edge = Edge::spawn(origin_url, upstream, cache, extra);
        edge.wait_ready().await;
        edge
    }

    /// Starts the process without waiting for readiness.
    pub fn spawn(origin_url: &str, upstream: SocketAddr, cache: &str, extra: &str) -> Edge {
        Edge::spawn_full(origin_url, "", upstream, cache, extra)
    }

    /// Starts the process with extra `auth_origin:` lines, without waiting for readiness.
    pub fn spawn_full(
        origin_url: &str,
        auth_origin_extra: &str,
        upstream: SocketAddr,
        cache: &str,
        extra: &str,
    ) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let proxy = free_port();
        let admin = free_port();
        let config = edge_config_with_origin(
            origin_url,
            auth_origin_extra,
            upstream,
            proxy,
            admin,
            dir.path(),
            cache,
            extra,
        );
        Edge::spawn_config(dir, proxy, admin, |_| config)
    }

    /// Starts the process with a config of the caller's making (`make` gets the temp dir).
    pub fn spawn_config(
        dir: tempfile::TempDir,
        proxy: u16,
        admin: u16,
        make: impl FnOnce(&std::path::Path) -> String,
    ) -> Edge {
        Edge::spawn_config_env(dir, proxy, admin, &[], make)
    }

    /// [`Edge::spawn_config`], with extra environment variables for the process.
    pub fn spawn_config_env(
        dir: tempfile::TempDir,
        proxy: u16,
        admin: u16,
        env: &[(&str, String)],
        make: impl FnOnce(&std::path::Path) -> String,
    ) -> Edge {
        let config = make(dir.path());
        let config_path = dir.path().join("epochgate.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("edge.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_epochgate"))
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run epochgate");
        Edge {
            child,
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        let client = self.client.clone();
        eventually(Duration::from_secs(15), "edge /readyz = 200", || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// The JSON body of `/readyz`.
    pub async fn readiness(&self) -> Value {
        let r = self
            .client
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// Sends the token again and again until the edge answers `status` (10 s at most).
    pub async fn until_status(&self, token: &str, status: u16) {
        eventually(Duration::from_secs(10), &format!("HTTP {status}"), || async move {
            (self.get_with_token("/", token).await.status() == status).then_some(())
        })
        .await;
    }

    /// Waits until `/readyz` reports this feed state.
    pub async fn wait_feed(&self, state: &str) {
        eventually(
            Duration::from_secs(10),
            &format!("feed {state}"),
            || async move { (self.readiness().await["feed"] == state).then_some(()) },
        )
        .await;
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// GET through the edge with `Authorization: Bearer <token>`.
    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request through the edge")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request through the edge")
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a sample of `/metrics`, e.g. `epochgate_requests_total{decision="allowed"}`:
    /// the sum over every series of that name whose labels include the ones given (so
    /// `{decision="allowed"}` counts enforced and observed requests alike).
    pub async fn metric(&self, sample: &str) -> f64 {
        sum_samples(&self.metrics().await, sample)
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("edge.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Whether the edge process is still running.
    pub fn pid_alive(&self) -> bool {
        // A process that exited but is not yet reaped shows state `Z` here.
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `QUIT`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("epochgate.yaml")
    }

    /// Stops the process (SIGKILL) and starts a new one on the same config, ports and log,
    /// with empty caches, without waiting for it to be ready. The client is replaced too, so
    /// no connection to the old process is reused.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("edge.log"))
            .unwrap();
        self.child = Command::new(env!("CARGO_BIN_EXE_epochgate"))
            .arg("-c")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run epochgate");
        self.client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
    }

    /// Waits for the process to exit by itself; `None` if it is still running after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// A test origin, an echoing upstream, and a ready edge in front of them (default config).
pub async fn started() -> (TestOrigin, Upstream, Edge) {
    started_with("").await
}

/// [`started`], with `extra` (top-level YAML keys) appended to the edge's config.
pub async fn started_with(extra: &str) -> (TestOrigin, Upstream, Edge) {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = Edge::start_with(&origin.url(), upstream.addr, DEFAULT_CACHE, extra).await;
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
