//! The revocation feed: a Server-Sent Events subscription to the auth origin that pushes
//! sign-outs into the epoch cache as they happen, resuming with `Last-Event-ID`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;

use crate::clock::{self, SharedClock};
use crate::config::FeedSettings;
use crate::gate::Gate;
use crate::metrics::FeedEvent;
use crate::revocation::origin::{FeedOpen, ThrottledLog};
use crate::revocation::RevocationRecord;

/// Longest SSE line the edge buffers; a longer one is skipped (and its event counted malformed).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

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

/// One dispatched event, or an event that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event {
        kind: String,
        data: String,
    },
    /// An event with a line longer than [`MAX_LINE_BYTES`] (skipped, not parsed).
    Oversized,
}

/// Turns a byte stream into events; keeps the last event id for resuming.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    skip_lf: bool,
    discarding: bool,
    poisoned: bool,
    kind: String,
    data: String,
    id_buffer: Option<String>,
    last_event_id: Option<String>,
    started: bool,
}

impl SseParser {
    /// A parser for a new connection: nothing half-read carries over, only the id to resume from.
    pub fn resuming(last_event_id: Option<String>) -> SseParser {
        SseParser {
            last_event_id,
            ..SseParser::default()
        }
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseItem> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' | b'\n' => {
                    self.skip_lf = b == b'\r';
                    if self.discarding {
                        self.discarding = false;
                    } else {
                        let line = std::mem::take(&mut self.line);
                        self.line_done(&line, &mut out);
                    }
                }
                _ if self.discarding => {}
                _ => {
                    if self.line.len() >= MAX_LINE_BYTES {
                        self.line.clear();
                        self.discarding = true;
                        self.poisoned = true;
                    } else {
                        self.line.push(b);
                    }
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseItem>) {
        // A UTF-8 byte-order mark may open the stream; it is not part of the first line.
        let line = if !self.started {
            self.started = true;
            line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.kind = value.to_string(),
            "data" => {
                if self.data.len() + value.len() > MAX_LINE_BYTES {
                    self.poisoned = true;
                } else {
                    self.data.push_str(value);
                    self.data.push('\n');
                }
            }
            // An empty id clears the last event id (nothing to resume from).
            "id" if !value.contains('\0') => self.id_buffer = Some(value.to_string()),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        if let Some(id) = &self.id_buffer {
            self.last_event_id = (!id.is_empty()).then(|| id.clone());
        }
        let kind = std::mem::take(&mut self.kind);
        let mut data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.poisoned) {
            out.push(SseItem::Oversized);
            return;
        }
        if data.is_empty() {
            return;
        }
        data.pop();
        out.push(SseItem::Event {
            kind: if kind.is_empty() {
                "message".into()
            } else {
                kind
            },
            data,
        });
    }
}

// ---------------------------------------------------------------------------
// The subscription
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
    gate: Arc<Gate>,
    settings: FeedSettings,
    log: ThrottledLog,
}

impl FeedService {
    pub fn new(gate: Arc<Gate>, settings: FeedSettings) -> FeedService {
        FeedService {
            gate,
            settings,
            log: ThrottledLog::new(),
        }
    }

    /// Applies one dispatched item to the cache and counts it.
    pub async fn apply(gate: &Gate, item: SseItem) {
        let metrics = gate.metrics();
        let (kind, data) = match item {
            SseItem::Oversized => {
                metrics.count_feed_event(FeedEvent::Malformed);
                // Unreadable, so possibly a lost sign-out for an account we cannot name.
                gate.cache().coverage().reset();
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
                        && event.devices.len() > gate.origin().max_devices_per_account() =>
                {
                    metrics.count_feed_event(FeedEvent::Malformed);
                    gate.cache().mark_due(&event.account_id).await;
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
                    gate.cache().apply_pushed(&event.account_id, record).await;
                }
                _ => {
                    metrics.count_feed_event(FeedEvent::Malformed);
                    FeedService::distrust_after_malformed(gate, &data).await;
                }
            },
            "reset" => {
                metrics.count_feed_event(FeedEvent::Reset);
                gate.cache().coverage().reset();
            }
            // Unknown event types are for other consumers of the stream.
            _ => {}
        }
    }

    /// A revocation we could not read may have been a sign-out, and its id is behind us now
    /// (it will not be replayed). Its account, when it can be told, must be checked with the
    /// origin before its next use; when it cannot, every cached record must.
    async fn distrust_after_malformed(gate: &Gate, data: &str) {
        let account = serde_json::from_str::<serde_json::Value>(data)
            .ok()
            .and_then(|v| {
                v.get("account_id")
                    .and_then(|a| a.as_str())
                    .map(str::to_string)
            })
            .filter(|a| !a.is_empty());
        match account {
            Some(account) => gate.cache().mark_due(&account).await,
            None => gate.cache().coverage().reset(),
        }
    }

    /// One connection, from open to end. Returns whether it got as far as a 200.
    async fn run_connection(
        &self,
        parser: &mut SseParser,
        shutdown: &mut ShutdownWatch,
    ) -> Result<Connection, String> {
        let status = self.gate.feed_status();
        let resumed = parser.last_event_id().is_some();
        let response = match self.gate.origin().open_feed(parser.last_event_id()).await {
            Ok(FeedOpen::Stream(response)) => response,
            Ok(FeedOpen::NotOffered) => return Ok(Connection::Unsupported),
            Err(e) => return Err(e.to_string()),
        };
        status.set(FeedState::Connected);
        status.touch();
        self.gate.metrics().feed_connected.set(1);
        self.gate.cache().coverage().connected(resumed);
        log::info!(
            "revocation feed connected{}",
            if resumed { " (resuming)" } else { "" }
        );
        let result = self.read_stream(response, parser, shutdown).await;
        status.set(FeedState::Connecting);
        self.gate.metrics().feed_connected.set(0);
        self.gate.cache().coverage().disconnected();
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
            self.gate.feed_status().touch();
            for item in parser.push(&bytes) {
                FeedService::apply(&self.gate, item).await;
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
        let status = self.gate.feed_status();
        let mut parser = SseParser::default();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts: u64 = 0;
        let mut told_unsupported = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if attempts > 0 && status.state() != FeedState::Unsupported {
                self.gate.metrics().feed_reconnects.inc();
            }
            attempts += 1;
            parser = SseParser::resuming(parser.last_event_id.take());
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

    fn event(kind: &str, data: &str) -> SseItem {
        SseItem::Event {
            kind: kind.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_are_split_on_blank_lines_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: revocation\nid: 7\nda").is_empty());
        assert_eq!(
            p.push(b"ta: {\"a\":1}\n\n"),
            vec![event("revocation", "{\"a\":1}")]
        );
        assert_eq!(p.last_event_id(), Some("7"));
    }

    #[test]
    fn comments_are_ignored_and_crlf_is_a_line_end() {
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b": ping\r\n\r\ndata: x\r\ndata: y\r\n\r\n"),
            vec![event("message", "x\ny")]
        );
    }

    #[test]
    fn a_new_connection_keeps_only_the_id_to_resume_from() {
        let mut p = SseParser::default();
        p.push(b"id: 9\ndata: x\n\nevent: revocation\ndata: half");
        let mut next = SseParser::resuming(p.last_event_id().map(str::to_string));
        assert_eq!(next.last_event_id(), Some("9"));
        assert_eq!(next.push(b"data: y\n\n"), vec![event("message", "y")]);
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b"\xEF\xBB\xBFevent: reset\ndata: {}\n\n"),
            vec![event("reset", "{}")]
        );
    }

    #[test]
    fn an_empty_id_clears_the_last_event_id() {
        let mut p = SseParser::default();
        p.push(b"id: 5\ndata: x\n\n");
        assert_eq!(p.last_event_id(), Some("5"));
        p.push(b"id:\ndata: y\n\n");
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: reset\n\n").is_empty());
        assert_eq!(
            p.push(b"event: reset\ndata: {}\n\n"),
            vec![event("reset", "{}")]
        );
    }

    #[test]
    fn an_oversized_line_is_skipped_and_the_stream_goes_on() {
        let mut p = SseParser::default();
        let mut input = b"event: revocation\ndata: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend_from_slice(b"\n\nevent: revocation\ndata: ok\n\n");
        assert_eq!(
            p.push(&input),
            vec![SseItem::Oversized, event("revocation", "ok")]
        );
    }
}
