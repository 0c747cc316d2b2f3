//! The ready-made `ProxyHttp`: the gate in front of the health-checked upstream pool, with
//! the access log and the response and error counting. Its parts for embedders are in
//! [`crate::edge::admission`] and [`crate::edge::forward`] (re-exported here).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::{ForwardSettings, ProxySettings};
use crate::edge::access_log::{AccessLog, Entry};
use crate::edge::upstream::{
    write_no_healthy_upstream, UpstreamErrorKind, UpstreamPool, NO_HEALTHY_UPSTREAM,
};
use crate::gate::Gate;
use crate::metrics::UNGATED;
use crate::request::decision::DecisionLabel;
use crate::request::route::Mode;

pub use crate::edge::admission::{gate_request, write_rejection, Admitted, Gated};
pub use crate::edge::forward::{
    prepare_upstream_request, redacted_summary, Forwarding, DECISION_HEADER_SUFFIX,
};

/// The ready-made proxy: the gate in front of a health-checked pool of upstream peers.
pub struct EpochGateProxy {
    gate: Arc<Gate>,
    access_log: Option<AccessLog>,
    forwarding: Forwarding,
    pool: Arc<UpstreamPool>,
    tls: bool,
    sni: String,
}

impl EpochGateProxy {
    /// A proxy with a pool of its own; its peers are health-checked and re-resolved only
    /// while [`crate::edge::upstream::PoolService`] runs for [`EpochGateProxy::pool`].
    pub fn new(gate: Arc<Gate>, proxy: &ProxySettings, forward: ForwardSettings) -> Self {
        let pool = Arc::new(UpstreamPool::new(&proxy.pool));
        EpochGateProxy::with_pool(gate, pool, proxy, forward)
    }

    pub fn with_pool(
        gate: Arc<Gate>,
        pool: Arc<UpstreamPool>,
        proxy: &ProxySettings,
        forward: ForwardSettings,
    ) -> Self {
        EpochGateProxy {
            gate,
            forwarding: Forwarding::new(forward),
            pool,
            tls: proxy.tls,
            sni: proxy.sni.clone(),
            access_log: None,
        }
    }

    /// The same proxy, writing a line per request to `log`.
    pub fn with_access_log(mut self, log: Option<AccessLog>) -> Self {
        self.access_log = log;
        self
    }

    pub fn pool(&self) -> &Arc<UpstreamPool> {
        &self.pool
    }
}

/// Per-request state: how the request passed the gate, what the access log and the duration
/// histogram need at its end, and the peers that failed it.
#[derive(Default)]
pub struct RequestContext {
    admitted: Option<Admitted>,
    /// When the gate first saw the request, in microseconds on the gate's clock (0: never).
    started_micros: u64,
    /// The decision (`None`: ungated, or the gate never ran).
    decision: Option<DecisionLabel>,
    /// The mode of the request's route.
    mode: Mode,
    /// The status the upstream answered with, if it was asked.
    upstream_status: Option<u16>,
    failed_peers: Vec<SocketAddr>,
}

#[async_trait]
impl ProxyHttp for EpochGateProxy {
    type CTX = RequestContext;

    fn new_ctx(&self) -> RequestContext {
        RequestContext::default()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<bool> {
        ctx.started_micros = self.gate.clock().monotonic_micros();
        match gate_request(&self.gate, session).await? {
            Gated::Forward(admitted) => {
                ctx.decision = admitted.verdict.as_ref().map(|v| v.decision.label());
                ctx.mode = admitted.mode;
                ctx.admitted = Some(admitted);
                Ok(false)
            }
            Gated::Rejected(reason) => {
                ctx.decision = Some(reason.label());
                Ok(true)
            }
        }
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        Ok(())
    }

    async fn logging(
        &self,
        session: &mut Session,
        _error: Option<&pingora::Error>,
        ctx: &mut RequestContext,
    ) {
        if ctx.started_micros == 0 {
            return;
        }
        let took = self
            .gate
            .clock()
            .monotonic_micros()
            .saturating_sub(ctx.started_micros);
        let took = std::time::Duration::from_micros(took);
        self.gate
            .metrics()
            .observe_request_duration(ctx.decision, took);
        if let Some(log) = self.access_log.as_ref().filter(|l| l.wants(ctx.decision)) {
            let request = session.req_header();
            log.write(&Entry {
                method: request.method.as_str(),
                path: request.uri.path(),
                status: session.response_written().map_or(0, |r| r.status.as_u16()),
                decision: ctx.decision.map_or(UNGATED, DecisionLabel::as_str),
                mode: ctx.mode.as_str(),
                identity: ctx
                    .admitted
                    .as_ref()
                    .and_then(|a| a.verdict.as_ref())
                    .and_then(|v| v.decision.identity()),
                upstream_status: ctx.upstream_status,
                bytes_sent: session.body_bytes_sent(),
                duration: took,
                client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            });
        }
    }

    /// No healthy peer at all: the JSON 502 is answered here, before any connection attempt,
    /// and the client connection is kept.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestContext,
    ) -> Result<bool> {
        if self.pool.any_healthy() {
            return Ok(true);
        }
        self.pool.count_error(UpstreamErrorKind::NoHealthyPeer);
        write_no_healthy_upstream(session).await?;
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        let path = session.req_header().uri.path().as_bytes();
        match self.pool.select(path, &ctx.failed_peers) {
            Some(addr) => Ok(Box::new(HttpPeer::new(addr, self.tls, self.sni.clone()))),
            None => Err(Error::explain(
                NO_HEALTHY_UPSTREAM,
                "no healthy upstream peer left to try",
            )),
        }
    }

    /// A peer that cannot be connected to is left out, and the request tried on another
    /// healthy one (up to Pingora's `max_retries`) before its health check catches up.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestContext,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.pool.count_error(UpstreamErrorKind::of(&e));
        if let Some(addr) = peer._address.as_inet() {
            ctx.failed_peers.push(*addr);
        }
        e.set_retry(true);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestContext,
    ) -> FailToProxy {
        let code = if *e.etype() == NO_HEALTHY_UPSTREAM {
            // Every healthy peer failed this request. Pingora does not keep a connection
            // whose request failed here: say so (HTTP/1.1 `Connection: close`), so the
            // client does not send its next request on a connection about to close.
            self.pool.count_error(UpstreamErrorKind::NoHealthyPeer);
            session.set_keepalive(None);
            let written = write_no_healthy_upstream(session).await.is_ok();
            return FailToProxy {
                error_code: if written { 502 } else { 0 },
                can_reuse_downstream: false,
            };
        } else {
            // Connect failures were counted as they happened (`fail_to_connect`).
            let upstream = e.esource() == &ErrorSource::Upstream;
            if upstream && UpstreamErrorKind::of(e) != UpstreamErrorKind::Connect {
                self.pool.count_error(UpstreamErrorKind::of(e));
            }
            default_error_status(e)
        };
        if code > 0 {
            if let Err(write) = session.respond_error(code).await {
                log::error!("failed to send error response to downstream: {write}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn request_summary(&self, session: &Session, _ctx: &RequestContext) -> String {
        redacted_summary(session.req_header())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestContext,
    ) -> Result<()> {
        prepare_upstream_request(
            &self.forwarding,
            self.gate.token_sources(),
            ctx.admitted.as_ref(),
            upstream_request,
        )
    }
}

/// The status Pingora's own `fail_to_proxy` answers an error with (0: nothing to answer).
fn default_error_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// async_trait allocates `request_filter`'s future on every request, so
    /// the slow paths (origin fetch, key refresh, writing a rejection) are boxed apart from
    /// it. What stays is the state of a remembered token's decision (the client address for
    /// the invalid-token budget, the route's mode, the gate's timing): this keeps it within
    /// jemalloc's 640-byte size class.
    #[tokio::test]
    async fn request_filter_future_stays_small() {
        let settings = crate::Settings::from_yaml(
            r#"
proxy: { listen: ["127.0.0.1:1"], upstream: { peers: ["127.0.0.1:2"] } }
auth_origin: { url: "http://127.0.0.1:9", feed: false }
token: { algorithms: [ES256], issuer: "i", audience: "a" }
"#,
        )
        .unwrap();
        let gate = Arc::new(Gate::new(&settings).unwrap());
        let proxy = EpochGateProxy::new(gate, &settings.proxy, settings.forward.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut session = Session::new_h1(Box::new(pingora::protocols::l4::stream::Stream::from(
            client,
        )));
        let mut ctx = proxy.new_ctx();
        let future = proxy.request_filter(&mut session, &mut ctx);
        let size = std::mem::size_of_val(&*future);
        assert!(size <= 640, "request_filter's future is {size} bytes");
    }
}
