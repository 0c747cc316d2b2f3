//! The test auth origin: a protocol-speaking origin (JWKS, revocation lookups, feed) whose
//! answers the test controls, and which counts what it is asked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use epochgate::reference::signing::SigningKey;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{claims, free_port, now};

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
    /// A 2 MiB body: over the 1 MiB the edge reads from the auth origin.
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
                "x".repeat(2 * 1024 * 1024)
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
