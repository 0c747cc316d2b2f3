//! Shutdown drain: a proxy service whose idle keep-alive connections stay open through the
//! server's grace period, so a graceful upgrade fails no request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;

pub(crate) fn grace_period(conf: &ServerConf) -> Duration {
    Duration::from_secs(
        conf.grace_period_seconds
            .unwrap_or(PINGORA_DEFAULT_GRACE_SECONDS),
    )
}

/// Pingora's grace period when `grace_period_seconds` is not set (its `EXIT_TIMEOUT`).
const PINGORA_DEFAULT_GRACE_SECONDS: u64 = 300;

/// A proxy as a Pingora service whose idle keep-alive connections drain through the server's
/// grace period (see [`DrainOnShutdown`]): use it where you would use Pingora's
/// `http_proxy_service_with_name`.
pub fn draining_proxy_service<SV>(
    conf: &Arc<ServerConf>,
    proxy: SV,
    name: &str,
) -> Service<DrainOnShutdown<HttpProxy<SV>>>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    Service::new(
        name.to_string(),
        DrainOnShutdown::new(pingora::proxy::http_proxy(conf, proxy), grace_period(conf)),
    )
}

/// Keeps a shutting-down proxy's idle keep-alive connections open for `drain` (the grace
/// period) instead of closing them the moment the listeners stop.
///
/// Pingora closes idle keep-alive connections as soon as shutdown starts. A client that
/// sent its next request on one of them at that instant sees the connection reset, and an
/// HTTP client never retries a request it has already written: during a graceful upgrade
/// that is a failed request. Kept open, the connection's next request is answered (with
/// `Connection: close`, Pingora's shutdown behaviour), and the client's following request
/// opens a connection the new process accepts. Connections still idle when the grace
/// period ends are closed with the runtime.
pub struct DrainOnShutdown<A> {
    inner: Arc<A>,
    drain: Duration,
}

impl<A> DrainOnShutdown<A> {
    pub fn new(inner: A, drain: Duration) -> Self {
        DrainOnShutdown {
            inner: Arc::new(inner),
            drain,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for DrainOnShutdown<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    /// Called once the listeners have stopped accepting.
    async fn cleanup(&self) {
        tokio::time::sleep(self.drain).await;
        self.inner.cleanup().await;
    }
}
