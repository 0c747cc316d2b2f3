//! The HTTP client for the auth origin: revocation records (a bounded number in flight) and
//! the JWKS, with limits, outcome metrics and rate-limited error logs. It follows no
//! redirects: a `3xx` is an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use prometheus::IntGauge;
use serde::Deserialize;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::AuthOriginSettings;
use crate::metrics::{Endpoint, Metrics, Outcome};
use crate::revocation::RevocationRecord;
pub use crate::throttled_log::{ThrottledLog, LOG_INTERVAL};

/// Largest body the edge reads from the auth origin.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything that is not unreserved in RFC 3986 is escaped in the account path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why an auth-origin request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("unexpected status {0}")]
    Status(u16),
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("invalid body: {0}")]
    BadBody(String),
    #[error("record names {devices} devices, more than cache.max_devices_per_account ({max})")]
    TooManyDevices { devices: usize, max: usize },
    /// Every revocation-lookup slot stayed taken for this long: the lookup was never sent.
    #[error("no lookup slot free within {0:?} (auth_origin.max_concurrent_lookups)")]
    NoLookupSlot(Duration),
}

impl OriginError {
    fn outcome(&self) -> Outcome {
        match self {
            OriginError::Timeout(_) => Outcome::Timeout,
            _ => Outcome::Error,
        }
    }
}

/// The wire form of a revocation record.
#[derive(Debug, Deserialize)]
struct RecordBody {
    #[serde(default)]
    account_id: Option<String>,
    epoch: u64,
    #[serde(default)]
    devices: std::collections::HashMap<String, u64>,
}

/// The answer to opening the revocation feed.
pub enum FeedOpen {
    /// 200: read events from this response's body.
    Stream(reqwest::Response),
    /// 404: the origin offers no feed.
    NotOffered,
}

/// Client for one auth origin.
pub struct OriginClient {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    metrics: Arc<Metrics>,
    revocation_log: ThrottledLog,
    jwks_log: ThrottledLog,
    max_devices_per_account: usize,
    /// One permit per revocation lookup in flight (`auth_origin.max_concurrent_lookups`), so
    /// a cold cache (a restart, an upgrade) cannot send every active account's lookup at once.
    /// Fair: lookups get slots in the order they asked.
    lookup_slots: Semaphore,
}

/// A revocation lookup's slot, held while the lookup is in flight.
struct LookupSlot<'a> {
    _permit: SemaphorePermit<'a>,
    in_flight: &'a IntGauge,
}

impl Drop for LookupSlot<'_> {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl OriginClient {
    pub fn new(settings: &AuthOriginSettings, metrics: Arc<Metrics>) -> Result<Self, OriginError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("epochgate/", env!("CARGO_PKG_VERSION")))
            // A compromised or misconfigured origin must not send the edge to another host:
            // a 3xx comes back as it is and counts as an error.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OriginError::Transport(e.to_string()))?;
        Ok(OriginClient {
            http,
            base: settings.url.clone(),
            timeout: settings.timeout,
            metrics,
            revocation_log: ThrottledLog::new(),
            jwks_log: ThrottledLog::new(),
            max_devices_per_account: usize::MAX,
            lookup_slots: Semaphore::new(settings.max_concurrent_lookups),
        })
    }

    /// Refuses revocation records naming more devices than this (`cache.max_devices_per_account`).
    pub fn with_max_devices_per_account(mut self, max: usize) -> Self {
        self.max_devices_per_account = max;
        self
    }

    /// The device bound of one revocation record, for records that come another way (the feed).
    pub fn max_devices_per_account(&self) -> usize {
        self.max_devices_per_account
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v1/revocations/{account}`. A 404 means "no revocations": an empty record.
    /// Waits for a lookup slot first (at most the timeout); the timeout of the request itself
    /// starts once it has one.
    pub async fn fetch_record(&self, account: &str) -> Result<RevocationRecord, OriginError> {
        let _slot = match self.lookup_slot().await {
            Ok(slot) => slot,
            Err(e) => {
                self.revocation_log
                    .warn(format_args!("auth origin revocation lookup failed: {e}"));
                return Err(e);
            }
        };
        let url = format!(
            "{}/v1/revocations/{}",
            self.base,
            utf8_percent_encode(account, PATH_SEGMENT)
        );
        let result = self
            .get(Endpoint::Revocations, &url, |status, body| match status {
                404 => Ok(RevocationRecord::default()),
                200 => {
                    let parsed: RecordBody = serde_json::from_slice(body)
                        .map_err(|e| OriginError::BadBody(e.to_string()))?;
                    if parsed.account_id.as_deref().is_some_and(|a| a != account) {
                        return Err(OriginError::BadBody(
                            "account_id does not match the requested account".into(),
                        ));
                    }
                    if parsed.devices.len() > self.max_devices_per_account {
                        return Err(OriginError::TooManyDevices {
                            devices: parsed.devices.len(),
                            max: self.max_devices_per_account,
                        });
                    }
                    Ok(RevocationRecord {
                        epoch: parsed.epoch,
                        devices: parsed.devices,
                    })
                }
                other => Err(OriginError::Status(other)),
            })
            .await;
        if let Err(e) = &result {
            self.revocation_log
                .warn(format_args!("auth origin revocation lookup failed: {e}"));
        }
        result
    }

    /// Waits up to the timeout for one of the `max_concurrent_lookups` slots.
    async fn lookup_slot(&self) -> Result<LookupSlot<'_>, OriginError> {
        let started = Instant::now();
        // `acquire` fails only on a closed semaphore, and this one is never closed.
        let permit = tokio::time::timeout(self.timeout, self.lookup_slots.acquire())
            .await
            .ok()
            .and_then(Result::ok);
        self.metrics
            .observe_lookup_queue_wait(started.elapsed(), permit.is_some());
        let permit = permit.ok_or(OriginError::NoLookupSlot(self.timeout))?;
        let in_flight = &self.metrics.origin_lookups_in_flight;
        in_flight.inc();
        Ok(LookupSlot {
            _permit: permit,
            in_flight,
        })
    }

    /// `GET /.well-known/jwks.json`, as the raw list of keys (each parsed on its own so one
    /// odd key does not hide the others).
    pub async fn fetch_jwks(&self) -> Result<Vec<serde_json::Value>, OriginError> {
        #[derive(Deserialize)]
        struct JwksBody {
            keys: Vec<serde_json::Value>,
        }
        let url = format!("{}/.well-known/jwks.json", self.base);
        let result = self
            .get(Endpoint::Jwks, &url, |status, body| match status {
                200 => serde_json::from_slice::<JwksBody>(body)
                    .map(|b| b.keys)
                    .map_err(|e| OriginError::BadBody(e.to_string())),
                other => Err(OriginError::Status(other)),
            })
            .await;
        if let Err(e) = &result {
            self.jwks_log
                .warn(format_args!("auth origin JWKS fetch failed: {e}"));
        }
        result
    }

    /// `GET /v1/revocation-feed`, resuming after `last_event_id`. Only the response head is
    /// under the timeout: the body is a stream that lives as long as the connection.
    pub async fn open_feed(&self, last_event_id: Option<&str>) -> Result<FeedOpen, OriginError> {
        let started = Instant::now();
        let mut request = self
            .http
            .get(format!("{}/v1/revocation-feed", self.base))
            .header("accept", "text/event-stream")
            .header("cache-control", "no-cache");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let result = match tokio::time::timeout(self.timeout, request.send()).await {
            Err(_) => Err(OriginError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(OriginError::Transport(e.without_url().to_string())),
            Ok(Ok(response)) => match response.status().as_u16() {
                // A catch-all 200 page is not a feed: it must never vouch for records.
                200 if is_event_stream(&response) => Ok(FeedOpen::Stream(response)),
                200 => Err(OriginError::BadBody(
                    "feed answered 200 without content-type text/event-stream".into(),
                )),
                404 => Ok(FeedOpen::NotOffered),
                other => Err(OriginError::Status(other)),
            },
        };
        let outcome = match &result {
            Ok(FeedOpen::Stream(_)) => Outcome::Ok,
            Ok(FeedOpen::NotOffered) => Outcome::NotFound,
            Err(e) => e.outcome(),
        };
        self.metrics
            .count_origin_request(Endpoint::Feed, outcome, started.elapsed());
        result
    }

    /// One GET with the whole exchange (connect, headers, body) under the timeout, the body
    /// capped, and the outcome counted.
    async fn get<T>(
        &self,
        endpoint: Endpoint,
        url: &str,
        interpret: impl FnOnce(u16, &[u8]) -> Result<T, OriginError>,
    ) -> Result<T, OriginError> {
        let started = Instant::now();
        let exchange = async {
            let mut response = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| OriginError::Transport(e.without_url().to_string()))?;
            let status = response.status().as_u16();
            if response
                .content_length()
                .is_some_and(|len| len > MAX_BODY_BYTES as u64)
            {
                return Err(OriginError::TooLarge);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| OriginError::Transport(e.without_url().to_string()))?
            {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(OriginError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(OriginError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((status, body))) => interpret(status, &body).map(|v| (status, v)),
        };
        let outcome = match &result {
            Ok((404, _)) => Outcome::NotFound,
            Ok(_) => Outcome::Ok,
            Err(e) => e.outcome(),
        };
        self.metrics
            .count_origin_request(endpoint, outcome, started.elapsed());
        result.map(|(_, v)| v)
    }
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// A client of an auth origin that refuses every connection (for unit tests).
#[cfg(test)]
pub(crate) fn unreachable_origin(metrics: Arc<Metrics>) -> Arc<OriginClient> {
    let settings = AuthOriginSettings {
        url: "http://127.0.0.1:9".into(),
        timeout: Duration::from_millis(500),
        jwks_refresh: Duration::from_secs(300),
        feed: crate::config::FeedSettings {
            enabled: false,
            idle_timeout: Duration::from_secs(45),
            unsupported_retry: Duration::from_secs(300),
        },
        max_concurrent_lookups: 64,
    };
    Arc::new(OriginClient::new(&settings, metrics).expect("client for a fixed URL"))
}
