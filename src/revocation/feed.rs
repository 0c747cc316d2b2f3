//! The revocation feed: a Server-Sent Events subscription to the auth origin that pushes
//! sign-outs into the epoch cache as they happen, resuming with `Last-Event-ID`, and its
//! status for the admin endpoints.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;

use crate::clock::{self, SharedClock};
use crate::config::FeedSettings;
use crate::metrics::{FeedEvent, Metrics};
use crate::revocation::epoch_cache::EpochCache;
use crate::revocation::origin::{FeedOpen, OriginClient, ThrottledLog};
use crate::revocation::sse::{SseItem, SseParser};
use crate::revocation::RevocationRecord;

/// What `/readyz` says about the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FeedState {
    Disabled = 0,
    Connecting = 1,
    Connected = 2,
    Unsupported = 3,
}

impl FeedState {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::Disabled => "disabled",
            FeedState::Connecting => "connecting",
            FeedState::Connected => "connected",
            FeedState::Unsupported => "unsupported",
        }
    }
}

/// The feed's state, shared with the admin endpoints.
#[derive(Debug)]
pub struct FeedStatus {
    state: AtomicU8,
    /// On the monotonic clock.
    last_activity_ms: AtomicU64,
    clock: SharedClock,
}

impl FeedStatus {
    pub fn new(enabled: bool) -> FeedStatus {
        FeedStatus::with_clock(enabled, clock::system())
    }

    /// A status that measures the feed's silence on `clock`.
    pub fn with_clock(enabled: bool, clock: SharedClock) -> FeedStatus {
        FeedStatus {
            state: AtomicU8::new(if enabled {
                FeedState::Connecting as u8
            } else {
                FeedState::Disabled as u8
            }),
            last_activity_ms: AtomicU64::new(clock.monotonic_millis()),
            clock,
        }
    }

    pub fn state(&self) -> FeedState {
        match self.state.load(Ordering::Acquire) {
            1 => FeedState::Connecting,
            2 => FeedState::Connected,
            3 => FeedState::Unsupported,
            _ => FeedState::Disabled,
        }
    }

    fn set(&self, state: FeedState) {
        self.state.store(state as u8, Ordering::Release);
    }

    fn touch(&self) {
        self.last_activity_ms
            .store(self.clock.monotonic_millis(), Ordering::Relaxed);
    }

    /// Seconds since the feed last delivered anything (an event or a ping).
    pub fn last_activity_age(&self) -> Duration {
        Duration::from_millis(
            self.clock
                .monotonic_millis()
                .saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)),
        )
    }
}

// ---------------------------------------------------------------------------
// SSE parsing (WHATWG EventSource), incremental and bounded
// ---------------------------------------------------------------------------

/// `data` of a `revocation` event.
#[derive(Debug, Deserialize)]
struct RevocationEvent {
    account_id: String,
    epoch: u64,
    #[serde(default)]
    devices: std::collections::HashMap<String, u64>,
    #[serde(default)]
    changed_at_ms: Option<u64>,
}

/// The background service that keeps the feed connected.
pub struct FeedService {
    /// Where pushed records go, and what the feed vouches for.
    cache: EpochCache,
    origin: Arc<OriginClient>,
    metrics: Arc<Metrics>,
    /// Shared with the admin endpoints.
    status: Arc<FeedStatus>,
    settings: FeedSettings,
    log: ThrottledLog,
}

impl FeedService {
    pub fn new(
        cache: EpochCache,
        origin: Arc<OriginClient>,
        metrics: Arc<Metrics>,
        status: Arc<FeedStatus>,
        settings: FeedSettings,
    ) -> FeedService {
        FeedService {
            cache,
            origin,
            metrics,
            status,
            settings,
            log: ThrottledLog::new(),
        }
    }

    /// Applies one dispatched item to the cache and counts it.
    pub async fn apply(&self, item: SseItem) {
        let metrics = &self.metrics;
        let (kind, data) = match item {
            SseItem::Oversized => {
                metrics.count_feed_event(FeedEvent::Malformed);
                // Unreadable, so possibly a lost sign-out for an account we cannot name.
                self.cache.coverage().reset();
                return;
            }
            SseItem::Event { kind, data } => (kind, data),
        };
        match kind.as_str() {
            "revocation" => match serde_json::from_str::<RevocationEvent>(&data) {
                // A record naming more devices than the bound is not cached (one account must
                // not take an edge's memory); as it may have been a sign-out, the account is
                // checked with the origin, as for any event that cannot be used.
                Ok(event)
                    if !event.account_id.is_empty()
                        && event.devices.len() > self.origin.max_devices_per_account() =>
                {
                    metrics.count_feed_event(FeedEvent::Malformed);
                    self.cache.mark_due(&event.account_id).await;
                }
                Ok(event) if !event.account_id.is_empty() => {
                    metrics.count_feed_event(FeedEvent::Revocation);
                    if let Some(changed) = event.changed_at_ms {
                        let lag = crate::unix_millis().saturating_sub(changed);
                        metrics.observe_feed_lag(Duration::from_millis(lag));
                    }
                    let record = RevocationRecord {
                        epoch: event.epoch,
                        devices: event.devices,
                    };
                    self.cache.apply_pushed(&event.account_id, record).await;
                }
                _ => {
                    metrics.count_feed_event(FeedEvent::Malformed);
                    self.distrust_after_malformed(&data).await;
                }
            },
            "reset" => {
                metrics.count_feed_event(FeedEvent::Reset);
                self.cache.coverage().reset();
            }
            // Unknown event types are for other consumers of the stream.
            _ => {}
        }
    }

    /// A revocation we could not read may have been a sign-out, and its id is behind us now
    /// (it will not be replayed). Its account, when it can be told, must be checked with the
    /// origin before its next use; when it cannot, every cached record must.
    async fn distrust_after_malformed(&self, data: &str) {
        let account = serde_json::from_str::<serde_json::Value>(data)
            .ok()
            .and_then(|v| {
                v.get("account_id")
                    .and_then(|a| a.as_str())
                    .map(str::to_string)
            })
            .filter(|a| !a.is_empty());
        match account {
            Some(account) => self.cache.mark_due(&account).await,
            None => self.cache.coverage().reset(),
        }
    }

    /// One connection, from open to end. Returns whether it got as far as a 200.
    async fn run_connection(
        &self,
        parser: &mut SseParser,
        shutdown: &mut ShutdownWatch,
    ) -> Result<Connection, String> {
        let status = &self.status;
        let resumed = parser.last_event_id().is_some();
        let response = match self.origin.open_feed(parser.last_event_id()).await {
            Ok(FeedOpen::Stream(response)) => response,
            Ok(FeedOpen::NotOffered) => return Ok(Connection::Unsupported),
            Err(e) => return Err(e.to_string()),
        };
        status.set(FeedState::Connected);
        status.touch();
        self.metrics.feed_connected.set(1);
        self.cache.coverage().connected(resumed);
        log::info!(
            "revocation feed connected{}",
            if resumed { " (resuming)" } else { "" }
        );
        let result = self.read_stream(response, parser, shutdown).await;
        status.set(FeedState::Connecting);
        self.metrics.feed_connected.set(0);
        self.cache.coverage().disconnected();
        result.map(|()| Connection::Ended)
    }

    async fn read_stream(
        &self,
        mut response: reqwest::Response,
        parser: &mut SseParser,
        shutdown: &mut ShutdownWatch,
    ) -> Result<(), String> {
        let idle = self.settings.idle_timeout;
        loop {
            let chunk = tokio::select! {
                chunk = tokio::time::timeout(idle, response.chunk()) => chunk,
                _ = shutdown.changed() => return Ok(()),
            };
            let bytes = match chunk {
                Err(_) => {
                    return Err(format!(
                        "no event or ping for {idle:?}: connection presumed dead"
                    ))
                }
                Ok(Err(e)) => return Err(format!("read failed: {}", e.without_url())),
                Ok(Ok(None)) => return Err("the origin closed the stream".into()),
                Ok(Ok(Some(bytes))) => bytes,
            };
            self.status.touch();
            for item in parser.push(&bytes) {
                self.apply(item).await;
            }
        }
    }
}

enum Connection {
    Unsupported,
    Ended,
}

/// First reconnect delay; doubles up to [`MAX_BACKOFF`], with ±50 % jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(10);

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64())
}

#[async_trait]
impl BackgroundService for FeedService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let status = &self.status;
        let mut parser = SseParser::default();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts: u64 = 0;
        let mut told_unsupported = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if attempts > 0 && status.state() != FeedState::Unsupported {
                self.metrics.feed_reconnects.inc();
            }
            attempts += 1;
            parser = SseParser::resuming(parser.last_event_id().map(str::to_string));
            let started = Instant::now();
            let wait = match self.run_connection(&mut parser, &mut shutdown).await {
                Ok(Connection::Unsupported) => {
                    status.set(FeedState::Unsupported);
                    if !told_unsupported {
                        log::info!(
                            "the auth origin offers no revocation feed (404); polling only, retrying every {:?}",
                            self.settings.unsupported_retry
                        );
                        told_unsupported = true;
                    }
                    self.settings.unsupported_retry
                }
                outcome => {
                    told_unsupported = false;
                    if status.state() == FeedState::Unsupported {
                        status.set(FeedState::Connecting);
                    }
                    if let Err(e) = &outcome {
                        self.log
                            .warn(format_args!("revocation feed: {e}; reconnecting"));
                    }
                    if started.elapsed() >= HEALTHY_CONNECTION {
                        backoff = FIRST_BACKOFF;
                    }
                    let wait = jittered(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_silence_is_measured_on_the_monotonic_clock() {
        let clock = crate::clock::ManualClock::new();
        let status = FeedStatus::with_clock(true, clock.clone());
        clock.step_wall(3_600_000);
        assert_eq!(status.last_activity_age(), Duration::ZERO);
        clock.advance(Duration::from_secs(5));
        clock.step_wall(-7_200_000);
        assert_eq!(status.last_activity_age(), Duration::from_secs(5));
    }
}
