//! A reference auth origin that speaks the protocol in `docs/auth-origin-protocol.md`:
//! it signs ES256 device tokens, serves its JWKS and revocation records, and offers the
//! user-side calls behind a "Sign out of all devices" button.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::reference::signing::SigningKey;
use crate::revocation::RevocationRecord;

/// Claims of a device token issued here.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceClaims {
    pub sub: String,
    pub did: String,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

/// Revocation events kept for replay to edges that reconnect with `Last-Event-ID`.
pub const FEED_REPLAY_EVENTS: usize = 10_000;
/// The feed's keep-alive comment interval.
pub const FEED_PING: Duration = Duration::from_secs(15);

/// One published revocation event: its sequence number and JSON data.
type FeedEntry = (u64, Arc<str>);

/// Records and the feed's replay log, changed together under one lock so that event order
/// matches record order.
#[derive(Default)]
struct Store {
    records: HashMap<String, RevocationRecord>,
    log: VecDeque<FeedEntry>,
    next_seq: u64,
}

/// The reference auth origin's state.
pub struct AuthOrigin {
    key: SigningKey,
    pub issuer: String,
    pub audience: String,
    token_lifetime: Duration,
    store: Mutex<Store>,
    feed: broadcast::Sender<FeedEntry>,
    /// Revocation lookups served (what an edge costs this origin).
    pub revocation_requests: AtomicU64,
    pub jwks_requests: AtomicU64,
    /// With `--nats`: every changed record also goes into the replica bucket, in order.
    nats: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<NatsJob>>,
}

/// Work for the task that writes the replica bucket (see [`AuthOrigin::publish_to_nats`]).
enum NatsJob {
    Put {
        account: String,
        record: RevocationRecord,
        changed_at_ms: u64,
    },
    /// The heartbeat, stamped when every earlier put is done.
    Heartbeat,
    /// Answered once every earlier put is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Deserialize)]
struct SigninRequest {
    account_id: String,
    device_id: String,
}

impl AuthOrigin {
    /// An origin with a freshly generated ES256 key.
    pub fn new(issuer: &str, audience: &str) -> Result<Arc<AuthOrigin>, String> {
        Ok(AuthOrigin::with_key(
            issuer,
            audience,
            SigningKey::generate_es256("reference-es256-1")?,
        ))
    }

    /// An origin that signs with the given key (benchmarks use an RS256 one).
    pub fn with_key(issuer: &str, audience: &str, key: SigningKey) -> Arc<AuthOrigin> {
        Arc::new(AuthOrigin {
            key,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            token_lifetime: Duration::from_secs(3600),
            store: Mutex::new(Store {
                next_seq: 1,
                ..Store::default()
            }),
            feed: broadcast::channel(4096).0,
            revocation_requests: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
            nats: std::sync::OnceLock::new(),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/v1/revocations/{account_id}", get(revocation))
            .route("/v1/revocation-feed", get(revocation_feed))
            .route("/v1/signin", post(signin))
            .route("/v1/check", get(check))
            .route("/v1/accounts/{account_id}/signout-all", post(signout_all))
            .route(
                "/v1/accounts/{account_id}/devices/{device_id}/signout",
                post(signout_device),
            )
            .with_state(self.clone())
    }

    fn record(&self, account: &str) -> Option<RevocationRecord> {
        self.lock().records.get(account).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        match self.store.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Changes an account's record and publishes the whole new record on the feed.
    fn update(
        &self,
        account: &str,
        change: impl FnOnce(&mut RevocationRecord),
    ) -> RevocationRecord {
        let mut store = self.lock();
        let record = store.records.entry(account.to_string()).or_default();
        change(record);
        let record = record.clone();
        let mut data = record_body(account, &record);
        let changed_at_ms = crate::unix_millis();
        data["changed_at_ms"] = changed_at_ms.into();
        if let Some(nats) = self.nats.get() {
            // Sent under the store lock, so the bucket sees changes in record order.
            let _ = nats.send(NatsJob::Put {
                account: account.to_string(),
                record: record.clone(),
                changed_at_ms,
            });
        }
        let entry: FeedEntry = (store.next_seq, data.to_string().into());
        store.next_seq += 1;
        store.log.push_back(entry.clone());
        if store.log.len() > FEED_REPLAY_EVENTS {
            store.log.pop_front();
        }
        // No subscriber is fine: edges that connect later replay from the log.
        let _ = self.feed.send(entry);
        record
    }

    /// Issues a token for a device. Its `iat` is never before the account's or the device's
    /// epoch: a sign-out sets the epoch to the *next* second, so a sign-in in the same second
    /// as the sign-out must carry that next second to be valid.
    pub fn issue_token(&self, account: &str, device: &str) -> Result<String, String> {
        let now = crate::unix_millis() / 1000;
        let record = self.record(account).unwrap_or_default();
        let device_epoch = record.devices.get(device).copied().unwrap_or(0);
        let iat = now.max(record.epoch).max(device_epoch);
        self.key.sign(&DeviceClaims {
            sub: account.to_string(),
            did: device.to_string(),
            iat,
            exp: iat + self.token_lifetime.as_secs(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        })
    }

    /// Signs the account out of every device: every token issued up to now is revoked.
    pub fn sign_out_all(&self, account: &str) -> RevocationRecord {
        let epoch = crate::unix_millis() / 1000 + 1;
        self.update(account, |record| record.epoch = record.epoch.max(epoch))
    }

    /// Signs one device out.
    pub fn sign_out_device(&self, account: &str, device: &str) -> RevocationRecord {
        let epoch = crate::unix_millis() / 1000 + 1;
        self.update(account, |record| {
            let slot = record.devices.entry(device.to_string()).or_insert(0);
            *slot = (*slot).max(epoch);
        })
    }

    /// What a feed subscriber resuming after `last_event_id` gets first: whether it must
    /// reset (the id is unknown or too old to replay from), the events to replay, and the
    /// live channel (subscribed under the same lock, so nothing falls between the two).
    fn subscribe(
        &self,
        last_event_id: Option<&str>,
    ) -> (bool, Vec<FeedEntry>, broadcast::Receiver<FeedEntry>) {
        let store = self.lock();
        let live = self.feed.subscribe();
        let Some(last) = last_event_id else {
            return (false, Vec::new(), live);
        };
        let oldest = store.log.front().map_or(store.next_seq, |(seq, _)| *seq);
        match last.trim().parse::<u64>() {
            Ok(last) if last + 1 >= oldest && last < store.next_seq => {
                let replay = store
                    .log
                    .iter()
                    .filter(|(seq, _)| *seq > last)
                    .cloned()
                    .collect();
                (false, replay, live)
            }
            _ => (true, Vec::new(), live),
        }
    }

    /// Whether a bearer token is one of ours, unexpired, and issued after every sign-out that
    /// applies to it: what an `auth_request`-style proxy asks on every request.
    pub fn check_token(&self, token: &str) -> bool {
        let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(self.key.jwk().clone())
        else {
            return false;
        };
        let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(&jwk) else {
            return false;
        };
        let mut validation = jsonwebtoken::Validation::new(self.key.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        let Ok(data) = jsonwebtoken::decode::<DeviceClaims>(token, &key, &validation) else {
            return false;
        };
        let claims = data.claims;
        let record = self.record(&claims.sub).unwrap_or_default();
        record.standing(&claims.did, claims.iat) == crate::revocation::Standing::Valid
    }

    /// Also puts every changed record into the NATS key-value bucket `bucket` (created with
    /// `max_age` when missing), for edges running a fleet replica, and the heartbeat every
    /// `heartbeat` (never when zero). Records changed earlier are not republished.
    pub async fn publish_to_nats(
        self: &Arc<Self>,
        url: &str,
        bucket: &str,
        max_age: Duration,
        heartbeat: Duration,
    ) -> Result<(), crate::revocation::replica::publish::PublishError> {
        let publisher =
            crate::revocation::replica::publish::Publisher::connect(url, bucket, max_age).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        if self.nats.set(tx.clone()).is_err() {
            return Ok(());
        }
        if !heartbeat.is_zero() {
            tokio::spawn(async move {
                let mut every = tokio::time::interval(heartbeat);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    if tx.send(NatsJob::Heartbeat).is_err() {
                        return;
                    }
                }
            });
        }
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    NatsJob::Put {
                        account,
                        record,
                        changed_at_ms,
                    } => {
                        if let Err(e) = publisher.put(&account, &record, changed_at_ms).await {
                            log::error!("reference auth origin: NATS: {e}");
                        }
                    }
                    NatsJob::Heartbeat => {
                        if let Err(e) = publisher.heartbeat(crate::unix_millis()).await {
                            log::error!("reference auth origin: NATS heartbeat: {e}");
                        }
                    }
                    NatsJob::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Ok(())
    }

    /// Waits until every change made so far is in the NATS bucket (at once without `--nats`).
    pub async fn nats_published(&self) {
        let Some(nats) = self.nats.get() else {
            return;
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        if nats.send(NatsJob::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.key.jwk()] })
    }
}

fn record_body(account: &str, record: &RevocationRecord) -> serde_json::Value {
    serde_json::json!({ "account_id": account, "epoch": record.epoch, "devices": record.devices })
}

async fn jwks(State(origin): State<Arc<AuthOrigin>>) -> Json<serde_json::Value> {
    origin.jwks_requests.fetch_add(1, Ordering::Relaxed);
    Json(origin.jwks())
}

async fn revocation(
    State(origin): State<Arc<AuthOrigin>>,
    Path(account): Path<String>,
) -> Response {
    origin.revocation_requests.fetch_add(1, Ordering::Relaxed);
    match origin.record(&account) {
        Some(record) => Json(record_body(&account, &record)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no_revocations"})),
        )
            .into_response(),
    }
}

async fn revocation_feed(
    State(origin): State<Arc<AuthOrigin>>,
    headers: axum::http::HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let (reset, replay, live) = origin.subscribe(last_event_id);
    let replayed_up_to = replay.last().map(|(seq, _)| *seq);
    let reset = reset.then(|| Ok(Event::default().event("reset").data("{}")));
    let first = futures::stream::iter(
        reset
            .into_iter()
            .chain(replay.into_iter().map(|entry| Ok(revocation_event(entry)))),
    );
    // Live events; one the replay already sent is skipped. A subscriber too slow to keep up
    // is disconnected and resumes with Last-Event-ID.
    let rest = futures::stream::unfold(live, move |mut live| async move {
        loop {
            match live.recv().await {
                Ok(entry) if replayed_up_to.is_some_and(|up_to| entry.0 <= up_to) => continue,
                Ok(entry) => return Some((Ok(revocation_event(entry)), live)),
                Err(_) => return None,
            }
        }
    });
    Sse::new(first.chain(rest)).keep_alive(KeepAlive::new().interval(FEED_PING).text("ping"))
}

fn revocation_event((seq, data): FeedEntry) -> Event {
    Event::default()
        .event("revocation")
        .id(seq.to_string())
        .data(data.as_ref())
}

/// `GET /v1/check` with `Authorization: Bearer <token>`: 204 when the token is valid and not
/// signed out, 401 otherwise (for proxies that ask the auth service on every request).
async fn check(
    State(origin): State<Arc<AuthOrigin>>,
    headers: axum::http::HeaderMap,
) -> StatusCode {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| v[7..].trim())
        });
    match token {
        Some(token) if origin.check_token(token) => StatusCode::NO_CONTENT,
        _ => StatusCode::UNAUTHORIZED,
    }
}

async fn signin(
    State(origin): State<Arc<AuthOrigin>>,
    Json(request): Json<SigninRequest>,
) -> Response {
    if request.account_id.is_empty() || request.device_id.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "account_id and device_id are required"})),
        )
            .into_response();
    }
    match origin.issue_token(&request.account_id, &request.device_id) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

async fn signout_all(
    State(origin): State<Arc<AuthOrigin>>,
    Path(account): Path<String>,
) -> Json<serde_json::Value> {
    let record = origin.sign_out_all(&account);
    origin.nats_published().await;
    Json(record_body(&account, &record))
}

async fn signout_device(
    State(origin): State<Arc<AuthOrigin>>,
    Path((account, device)): Path<(String, String)>,
) -> Json<serde_json::Value> {
    let record = origin.sign_out_device(&account, &device);
    origin.nats_published().await;
    Json(record_body(&account, &record))
}
