//! The thin Pingora glue: run the gate in `request_filter`, write rejections, and shape the
//! request the upstream receives. Embedders call [`gate_request`] and
//! [`prepare_upstream_request`] from their own `ProxyHttp`.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::{ForwardSettings, ProxySettings, TokenSource};
use crate::decision::{Decision, Reason};
use crate::gate::{Gate, Verdict};
use crate::token_source;
use crate::upstream::{
    write_no_healthy_upstream, UpstreamErrorKind, UpstreamPool, NO_HEALTHY_UPSTREAM,
};

/// Runs the gate on a request. A rejection is written to the client here (keep-alive kept)
/// and `None` returned; otherwise the verdict to carry to [`prepare_upstream_request`].
pub async fn gate_request(gate: &Gate, session: &mut Session) -> Result<Option<Verdict>> {
    let request = session.req_header();
    let verdict = gate.check(&request.headers, &request.uri).await;
    match verdict.decision {
        Decision::Reject(reason) => {
            // Boxed: Pingora's write futures would otherwise be part of every request's
            // future, allowed ones included, which async_trait allocates per request.
            Box::pin(write_rejection(session, reason)).await?;
            Ok(None)
        }
        _ => Ok(Some(verdict)),
    }
}

/// Writes the rejection a [`Reason`] stands for.
pub async fn write_rejection(session: &mut Session, reason: Reason) -> Result<()> {
    let rendered = reason.response();
    let mut header = ResponseHeader::build(rendered.status, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in rendered.headers {
        header.insert_header(name, value)?;
    }
    header.set_content_length(rendered.body.len())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(rendered.body)), true)
        .await
}

/// The forwarding settings, with the identity header names prebuilt in the form Pingora's
/// header map takes them: built per request from an `http::HeaderName`, each name was
/// copied and compared again, about a tenth of what forwarding an allowed request cost.
#[derive(Debug, Clone)]
pub struct Forwarding {
    settings: ForwardSettings,
    account_header: Bytes,
    device_header: Bytes,
}

impl Forwarding {
    pub fn new(settings: ForwardSettings) -> Forwarding {
        Forwarding {
            account_header: Bytes::copy_from_slice(settings.account_header.as_str().as_bytes()),
            device_header: Bytes::copy_from_slice(settings.device_header.as_str().as_bytes()),
            settings,
        }
    }
}

/// Removes client-sent identity headers (always: a client can never spoof them), adds the
/// verified ones, and strips the token when configured to.
pub fn prepare_upstream_request(
    forwarding: &Forwarding,
    sources: &[TokenSource],
    verdict: Option<&Verdict>,
    upstream: &mut RequestHeader,
) -> Result<()> {
    let forward = &forwarding.settings;
    // `remove_header` drops one entry per call: loop until every copy is gone.
    for name in [&forward.account_header, &forward.device_header] {
        while upstream.remove_header(name).is_some() {}
    }
    let Some(verdict) = verdict else {
        return Ok(());
    };
    // The token goes first: the header map then has a free slot for the identity headers
    // instead of growing (a reallocation per request), and a token header that shares a
    // name with an identity header can never take the identity with it.
    if forward.strip_token {
        if let Some(source) = verdict.token_source.and_then(|i| sources.get(i)) {
            strip_token(source, upstream)?;
        }
    }
    if let Some((account, device)) = verdict.decision.identity() {
        upstream.insert_header(forwarding.account_header.clone(), account)?;
        upstream.insert_header(forwarding.device_header.clone(), device)?;
    }
    Ok(())
}

fn strip_token(source: &TokenSource, upstream: &mut RequestHeader) -> Result<()> {
    match source {
        TokenSource::Header { name, .. } => while upstream.remove_header(name).is_some() {},
        TokenSource::Query { name } => {
            if let Some(target) = token_source::uri_without_query_param(&upstream.uri, name) {
                if let Ok(uri) = target.parse() {
                    upstream.set_uri(uri);
                }
            }
        }
        TokenSource::Cookie { name } => {
            let joined: Vec<String> = upstream
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect();
            if joined.is_empty() {
                return Ok(());
            }
            while upstream.remove_header(&http::header::COOKIE).is_some() {}
            if let Some(rest) = token_source::cookie_header_without(&joined.join("; "), name) {
                upstream.insert_header(http::header::COOKIE, rest)?;
            }
        }
    }
    Ok(())
}

/// What Pingora writes about a request in its error lines: method, path and host, never the
/// query string (HLS players carry the token there) nor any header value.
pub fn redacted_summary(request: &RequestHeader) -> String {
    let query = if request.uri.query().is_some() {
        "?<redacted>"
    } else {
        ""
    };
    let host = request
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    format!(
        "{} {}{query}, Host: {host}",
        request.method,
        request.uri.path()
    )
}

/// The ready-made proxy: the gate in front of a health-checked pool of upstream peers.
pub struct EpochGateProxy {
    gate: Arc<Gate>,
    forwarding: Forwarding,
    pool: Arc<UpstreamPool>,
    tls: bool,
    sni: String,
}

impl EpochGateProxy {
    /// A proxy with a pool of its own; its peers are health-checked and re-resolved only
    /// while [`crate::upstream::PoolService`] runs for [`EpochGateProxy::pool`].
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
        }
    }

    pub fn pool(&self) -> &Arc<UpstreamPool> {
        &self.pool
    }
}

/// Per-request state: the verdict of an allowed request, and the peers that failed it.
#[derive(Default)]
pub struct RequestContext {
    verdict: Option<Verdict>,
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
        match gate_request(&self.gate, session).await? {
            Some(verdict) => {
                ctx.verdict = Some(verdict);
                Ok(false)
            }
            None => Ok(true),
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
            ctx.verdict.as_ref(),
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

    fn forward() -> Forwarding {
        Forwarding::new(ForwardSettings {
            account_header: http::HeaderName::from_static("x-epochgate-account"),
            device_header: http::HeaderName::from_static("x-epochgate-device"),
            strip_token: true,
        })
    }

    fn allowed(source: usize) -> Verdict {
        Verdict {
            decision: Decision::Allow {
                account: "alice".into(),
                device: "tv".into(),
            },
            token_source: Some(source),
        }
    }

    fn request(headers: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/live/seg1.ts", None).unwrap();
        for (name, value) in headers {
            request.append_header(*name, *value).unwrap();
        }
        request
    }

    fn values(request: &RequestHeader, name: &str) -> Vec<String> {
        request
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn client_identity_headers_are_replaced_and_the_token_stripped() {
        let sources = [TokenSource::Header {
            name: http::header::AUTHORIZATION,
            prefix: Some("Bearer ".into()),
        }];
        let mut upstream = request(&[
            ("Authorization", "Bearer t"),
            ("X-Epochgate-Account", "mallory"),
            ("x-epochgate-account", "mallory"),
            ("x-epochgate-device", "laptop"),
        ]);
        prepare_upstream_request(&forward(), &sources, Some(&allowed(0)), &mut upstream).unwrap();
        assert_eq!(values(&upstream, "x-epochgate-account"), ["alice"]);
        assert_eq!(values(&upstream, "x-epochgate-device"), ["tv"]);
        assert!(values(&upstream, "authorization").is_empty());
    }

    #[test]
    fn token_header_named_like_an_identity_header_does_not_remove_the_identity() {
        let sources = [TokenSource::Header {
            name: http::HeaderName::from_static("x-epochgate-account"),
            prefix: None,
        }];
        let mut upstream = request(&[("x-epochgate-account", "t")]);
        prepare_upstream_request(&forward(), &sources, Some(&allowed(0)), &mut upstream).unwrap();
        assert_eq!(values(&upstream, "x-epochgate-account"), ["alice"]);
    }

    /// async_trait allocates `request_filter`'s future on every request, so
    /// the slow paths (origin fetch, key refresh, writing a rejection) are boxed apart from
    /// it. Unboxed, they made it 1,568 bytes.
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
        assert!(size <= 512, "request_filter's future is {size} bytes");
    }

    #[test]
    fn without_a_verdict_only_the_client_identity_headers_go() {
        let mut upstream = request(&[("Authorization", "Bearer t"), ("x-epochgate-device", "tv")]);
        prepare_upstream_request(&forward(), &[], None, &mut upstream).unwrap();
        assert!(values(&upstream, "x-epochgate-device").is_empty());
        assert_eq!(values(&upstream, "authorization"), ["Bearer t"]);
    }
}
