//! Reaching the bucket: the NATS connection's options, the checks of the bucket (before
//! the edge listens, on every opening of the watch, and every few seconds while it runs),
//! and why they fail.

use std::time::Duration;

use async_nats::jetstream;

use super::ReplicaSettings;

/// The client's own keep-alive ping: a silently dead connection is noticed within a few.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// One attempt to reach a server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a check of the bucket may take before it counts as unanswered.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the replica cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica.nats.servers: cannot connect to NATS: {0}")]
    Connect(String),
    #[error("replica.nats.credentials_file: {0}")]
    Credentials(String),
    #[error("replica.nats.bucket: bucket `{bucket}` does not exist on the NATS servers")]
    BucketMissing { bucket: String },
    #[error(
        "replica.nats.bucket: bucket `{bucket}` keeps values for max_age {max_age} but token.max_lifetime is {max_lifetime}: a sign-out could expire from the bucket while tokens it revokes are still valid (raise the bucket's max_age, or use 0 for no limit)"
    )]
    MaxAgeTooShort {
        bucket: String,
        max_age: String,
        max_lifetime: String,
    },
    #[error("replica.nats.bucket: bucket `{bucket}`: {message}")]
    Bucket { bucket: String, message: String },
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The connection options from the settings. `retry`: keep trying in the background
/// instead of failing when no server answers at first.
pub(super) async fn connect_options(
    settings: &ReplicaSettings,
    retry: bool,
) -> Result<async_nats::ConnectOptions, ReplicaError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("epochgate")
        .ping_interval(PING_INTERVAL)
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None)
        // Reconnect attempts back off to at most a second (the default goes to 4 s).
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        });
    if retry {
        options = options.retry_on_initial_connect();
    }
    if let Some(path) = &settings.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| ReplicaError::Credentials(format!("{}: {e}", path.display())))?;
    }
    if let Some(path) = &settings.tls_ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    Ok(options)
}

pub(super) fn server_addrs(settings: &ReplicaSettings) -> Vec<async_nats::ServerAddr> {
    // Validated in the config; a URL that no longer parses is skipped.
    settings
        .servers
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Opens the bucket's stream and checks it: it exists, and keeps values at least as long as
/// a token lives (`max_age` 0 means forever).
pub(super) async fn open_bucket(
    js: &jetstream::Context,
    settings: &ReplicaSettings,
) -> Result<jetstream::stream::Stream, ReplicaError> {
    let bucket = &settings.bucket;
    let stream = js.get_stream(format!("KV_{bucket}")).await.map_err(|e| {
        if stream_not_found(&e) {
            ReplicaError::BucketMissing {
                bucket: bucket.clone(),
            }
        } else {
            ReplicaError::Bucket {
                bucket: bucket.clone(),
                message: e.to_string(),
            }
        }
    })?;
    let max_age = stream.cached_info().config.max_age;
    if !max_age.is_zero() && max_age < settings.max_lifetime {
        return Err(ReplicaError::MaxAgeTooShort {
            bucket: bucket.clone(),
            max_age: human(max_age),
            max_lifetime: human(settings.max_lifetime),
        });
    }
    Ok(stream)
}

/// The start-up check, before any listener exists: when a server answers within `wait`,
/// the bucket must exist and be fit, or the edge does not start. When none answers, the
/// edge starts not ready and the watch keeps trying (and checks the bucket then).
pub fn check_at_start(settings: &ReplicaSettings, wait: Duration) -> Result<(), ReplicaError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ReplicaError::Connect(e.to_string()))?;
    runtime.block_on(async {
        let options = connect_options(settings, false).await?;
        let client = match tokio::time::timeout(wait, options.connect(server_addrs(settings))).await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                log::warn!("replica: no NATS server reachable at start ({e}); starting not ready");
                return Ok(());
            }
            Err(_) => {
                log::warn!("replica: no NATS server answered within {wait:?}; starting not ready");
                return Ok(());
            }
        };
        let js = jetstream::new(client);
        match tokio::time::timeout(wait, open_bucket(&js, settings)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(
                e @ (ReplicaError::BucketMissing { .. } | ReplicaError::MaxAgeTooShort { .. }),
            )) => Err(e),
            Ok(Err(e)) => {
                log::warn!("replica: {e}; starting not ready");
                Ok(())
            }
            Err(_) => {
                log::warn!("replica: the bucket check timed out; starting not ready");
                Ok(())
            }
        }
    })
}

/// Whether the bucket's stream is gone, or was created again after `created` (nanoseconds).
/// A check that gets no answer says no: an unreachable server is the connection's business.
pub(super) async fn bucket_replaced(
    js: &jetstream::Context,
    bucket: &str,
    created: Option<i128>,
) -> bool {
    let check = js.get_stream(format!("KV_{bucket}"));
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(stream)) => Some(stream.cached_info().created.unix_timestamp_nanos()) != created,
        Ok(Err(e)) => stream_not_found(&e),
        Err(_) => false,
    }
}

/// Whether the server answered that the stream does not exist (not: did not answer).
fn stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js_error)
            if js_error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}
