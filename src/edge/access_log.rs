//! The access log: one JSON line per request, written by a background thread.
//!
//! Lines are formatted by `tracing-subscriber`'s JSON formatter into a `tracing-appender`
//! non-blocking writer: a request only formats its line and queues it. When the writer cannot
//! keep up and the queue is full, lines are dropped rather than slowing requests down.
//! A line never holds a token, a query string or a cookie: the path is logged without its
//! query, and no header value is logged at all.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use tracing::Dispatch;
use tracing_appender::non_blocking::WorkerGuard;

use crate::config::AccessLogSettings;
use crate::request::decision::DecisionLabel;

/// Why the access log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open access_log.path `{path}`: {source}")]
pub struct AccessLogError {
    path: String,
    source: std::io::Error,
}

/// What one line says about a request.
#[derive(Debug)]
pub struct Entry<'a> {
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    /// The status sent to the client (0: none was sent).
    pub status: u16,
    /// The decision's label, or `ungated`.
    pub decision: &'static str,
    pub mode: &'static str,
    /// The verified account and device, for allowed requests only.
    pub identity: Option<(&'a str, &'a str)>,
    pub upstream_status: Option<u16>,
    pub bytes_sent: usize,
    pub duration: Duration,
    pub client: Option<SocketAddr>,
}

/// An open access log.
pub struct AccessLog {
    /// The file opened at start (`None`: stdout).
    file: Option<File>,
    sample_allowed: f64,
    /// The formatter and its writer thread, started by the first line: a process that
    /// daemonizes (`-d`) forks after the log is opened, and a thread does not survive a fork.
    /// The guard flushes the queue when the log is dropped.
    writer: OnceLock<Option<(Dispatch, WorkerGuard)>>,
}

impl AccessLog {
    /// Opens the log the settings describe; `None` when it is off.
    pub fn open(settings: &AccessLogSettings) -> Result<Option<AccessLog>, AccessLogError> {
        if !settings.enabled {
            return Ok(None);
        }
        let file = match &settings.path {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| AccessLogError {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(Some(AccessLog {
            file,
            sample_allowed: settings.sample_allowed,
            writer: OnceLock::new(),
        }))
    }

    fn start_writer(&self) -> Option<(Dispatch, WorkerGuard)> {
        let (writer, guard) = match &self.file {
            Some(file) => match file.try_clone() {
                Ok(file) => tracing_appender::non_blocking(file),
                Err(e) => {
                    log::error!("access log: cannot use the log file: {e}; no access log");
                    return None;
                }
            },
            None => tracing_appender::non_blocking(std::io::stdout()),
        };
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .with_level(false)
            .with_writer(writer)
            .finish();
        Some((Dispatch::new(subscriber), guard))
    }

    /// Whether a request with this decision gets a line: every rejection (enforced or
    /// observed), and allowed or ungated requests at the `sample_allowed` rate.
    pub fn wants(&self, decision: Option<DecisionLabel>) -> bool {
        let rejection = decision.is_some_and(|d| {
            !matches!(
                d,
                DecisionLabel::Allowed | DecisionLabel::AllowedOriginUnavailable
            )
        });
        rejection || self.sample_allowed >= 1.0 || fastrand::f64() < self.sample_allowed
    }

    /// Queues the line for one request.
    pub fn write(&self, entry: &Entry<'_>) {
        let Some((dispatch, _)) = self.writer.get_or_init(|| self.start_writer()) else {
            return;
        };
        let (account, device) = entry.identity.unzip();
        tracing::dispatcher::with_default(dispatch, || {
            tracing::info!(
                method = entry.method,
                path = entry.path,
                status = entry.status,
                decision = entry.decision,
                mode = entry.mode,
                account,
                device,
                upstream_status = entry.upstream_status,
                bytes_sent = entry.bytes_sent as u64,
                duration_seconds = entry.duration.as_secs_f64(),
                client = entry.client.map(tracing::field::display),
            );
        });
    }
}
