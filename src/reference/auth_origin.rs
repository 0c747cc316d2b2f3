//! A reference auth origin that speaks the protocol in `docs/auth-origin-protocol.md`:
//! it signs ES256 device tokens, serves its JWKS and revocation records, and offers the
//! user-side calls behind a "Sign out of all devices" button.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

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

/// The reference auth origin's state.
pub struct AuthOrigin {
    key: SigningKey,
    pub issuer: String,
    pub audience: String,
    token_lifetime: Duration,
    records: Mutex<HashMap<String, RevocationRecord>>,
    /// Revocation lookups served (what an edge costs this origin).
    pub revocation_requests: AtomicU64,
    pub jwks_requests: AtomicU64,
}

#[derive(Deserialize)]
struct SigninRequest {
    account_id: String,
    device_id: String,
}

impl AuthOrigin {
    /// An origin with a freshly generated ES256 key.
    pub fn new(issuer: &str, audience: &str) -> Result<Arc<AuthOrigin>, String> {
        Ok(Arc::new(AuthOrigin {
            key: SigningKey::generate_es256("reference-es256-1")?,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            token_lifetime: Duration::from_secs(3600),
            records: Mutex::new(HashMap::new()),
            revocation_requests: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
        }))
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/v1/revocations/{account_id}", get(revocation))
            .route("/v1/signin", post(signin))
            .route("/v1/accounts/{account_id}/signout-all", post(signout_all))
            .route(
                "/v1/accounts/{account_id}/devices/{device_id}/signout",
                post(signout_device),
            )
            .with_state(self.clone())
    }

    fn record(&self, account: &str) -> Option<RevocationRecord> {
        self.lock().get(account).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RevocationRecord>> {
        match self.records.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
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
        let mut records = self.lock();
        let record = records.entry(account.to_string()).or_default();
        record.epoch = record.epoch.max(epoch);
        record.clone()
    }

    /// Signs one device out.
    pub fn sign_out_device(&self, account: &str, device: &str) -> RevocationRecord {
        let epoch = crate::unix_millis() / 1000 + 1;
        let mut records = self.lock();
        let record = records.entry(account.to_string()).or_default();
        let slot = record.devices.entry(device.to_string()).or_insert(0);
        *slot = (*slot).max(epoch);
        record.clone()
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
    Json(record_body(&account, &record))
}

async fn signout_device(
    State(origin): State<Arc<AuthOrigin>>,
    Path((account, device)): Path<(String, String)>,
) -> Json<serde_json::Value> {
    let record = origin.sign_out_device(&account, &device);
    Json(record_body(&account, &record))
}
