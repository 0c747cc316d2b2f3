//! The thin Pingora glue: run the gate in `request_filter`, write rejections, and shape the
//! request the upstream receives. Embedders call [`gate_request`] and
//! [`prepare_upstream_request`] from their own `ProxyHttp`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::Result;

use crate::config::{ForwardSettings, ProxySettings, TokenSource};
use crate::decision::{Decision, Reason};
use crate::gate::{Gate, Verdict};
use crate::token_source;

/// Runs the gate on a request. A rejection is written to the client here (keep-alive kept)
/// and `None` returned; otherwise the verdict to carry to [`prepare_upstream_request`].
pub async fn gate_request(gate: &Gate, session: &mut Session) -> Result<Option<Verdict>> {
    let request = session.req_header();
    let client = session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| gate.client_ip(addr.ip(), &request.headers));
    let verdict = gate.check(&request.headers, &request.uri, client).await;
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

    /// Whether a client-sent header of this name must not reach the upstream whatever the
    /// verdict: the edge's namespace and the identity headers (which may lie outside it).
    fn owned_by_the_edge(&self, name: &http::HeaderName) -> bool {
        let forward = &self.settings;
        // Header names are lower case, and so is the configured prefix.
        name.as_str().starts_with(forward.header_prefix.as_str())
            || *name == forward.account_header
            || *name == forward.device_header
    }
}

/// Removes client-sent headers in the edge's namespace and the identity headers (always: a
/// client can never spoof them), adds the verified identity, and removes every value of
/// every token source when configured to (not only the one the token was read from).
pub fn prepare_upstream_request(
    forwarding: &Forwarding,
    sources: &[TokenSource],
    verdict: Option<&Verdict>,
    upstream: &mut RequestHeader,
) -> Result<()> {
    remove_edge_headers(forwarding, upstream);
    let Some(verdict) = verdict else {
        return Ok(());
    };
    // The token goes first: the header map then has a free slot for the identity headers
    // instead of growing (a reallocation per request), and a token header that shares a
    // name with an identity header can never take the identity with it.
    if forwarding.settings.strip_token {
        for source in sources {
            strip_token(source, upstream)?;
        }
    }
    if let Some((account, device)) = verdict.decision.identity() {
        upstream.insert_header(forwarding.account_header.clone(), account)?;
        upstream.insert_header(forwarding.device_header.clone(), device)?;
    }
    Ok(())
}

/// One pass over the header names; nothing is allocated unless a client sent one.
fn remove_edge_headers(forwarding: &Forwarding, upstream: &mut RequestHeader) {
    let mut owned: Vec<http::HeaderName> = Vec::new();
    for name in upstream.headers.keys() {
        if forwarding.owned_by_the_edge(name) {
            owned.push(name.clone());
        }
    }
    for name in &owned {
        // `remove_header` takes every value of the name (and its original-case spelling).
        upstream.remove_header(name);
    }
}

/// Removes every value the source could carry a token in: every header value of the
/// configured scheme, every query parameter of the name, every cookie of the name.
fn strip_token(source: &TokenSource, upstream: &mut RequestHeader) -> Result<()> {
    match source {
        TokenSource::Header { name, prefix } => {
            let scheme = prefix.as_deref().map(str::trim_end).unwrap_or("");
            let carries = |value: &http::HeaderValue| {
                token_source::header_value_has_scheme(value.as_bytes(), scheme)
            };
            let values = upstream.headers.get_all(name);
            let matching = values.iter().filter(|v| carries(v)).count();
            if matching == 0 {
                return Ok(());
            }
            let kept: Vec<http::HeaderValue> = if matching == values.iter().count() {
                Vec::new()
            } else {
                values.iter().filter(|v| !carries(v)).cloned().collect()
            };
            upstream.remove_header(name);
            for value in kept {
                upstream.append_header(name.clone(), value)?;
            }
        }
        TokenSource::Query { name } => {
            // The raw target is what goes on the wire (the URI may be a lossy rendering of it,
            // or only the path of an absolute-form target).
            if let Some(target) =
                token_source::target_without_query_param(upstream.raw_path(), name)
            {
                // A target that no longer parses must not go out with the token in it.
                upstream.set_raw_path(&target)?;
            }
        }
        TokenSource::Cookie { name } => {
            let values = upstream.headers.get_all(http::header::COOKIE);
            let carries =
                |v: &http::HeaderValue| token_source::cookie_header_names(v.as_bytes(), name);
            if !values.iter().any(carries) {
                return Ok(());
            }
            let kept: Vec<http::HeaderValue> = values
                .iter()
                .filter_map(|v| {
                    if !carries(v) {
                        return Some(v.clone());
                    }
                    token_source::cookie_bytes_without(v.as_bytes(), name)
                        .and_then(|rest| http::HeaderValue::from_bytes(&rest).ok())
                })
                .collect();
            upstream.remove_header(&http::header::COOKIE);
            for value in kept {
                upstream.append_header(http::header::COOKIE, value)?;
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

/// The ready-made proxy: the gate in front of a round-robin list of upstream peers.
pub struct EpochGateProxy {
    gate: Arc<Gate>,
    forwarding: Forwarding,
    peers: Vec<SocketAddr>,
    tls: bool,
    sni: String,
    next_peer: AtomicUsize,
}

impl EpochGateProxy {
    pub fn new(gate: Arc<Gate>, proxy: &ProxySettings, forward: ForwardSettings) -> Self {
        EpochGateProxy {
            gate,
            forwarding: Forwarding::new(forward),
            peers: proxy.peers.clone(),
            tls: proxy.tls,
            sni: proxy.sni.clone(),
            next_peer: AtomicUsize::new(0),
        }
    }
}

/// Per-request state: the verdict of an allowed request.
#[derive(Default)]
pub struct RequestContext {
    verdict: Option<Verdict>,
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

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestContext,
    ) -> Result<Box<HttpPeer>> {
        let index = self.next_peer.fetch_add(1, Ordering::Relaxed) % self.peers.len();
        Ok(Box::new(HttpPeer::new(
            self.peers[index],
            self.tls,
            self.sni.clone(),
        )))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn forward() -> Forwarding {
        Forwarding::new(ForwardSettings {
            account_header: http::HeaderName::from_static("x-epochgate-account"),
            device_header: http::HeaderName::from_static("x-epochgate-device"),
            strip_token: true,
            header_prefix: "x-epochgate-".into(),
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
