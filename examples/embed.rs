//! Embedding the gate in your own Pingora `ProxyHttp`.
//!
//! The gate applies the configuration's `mode` and `routes` itself: with
//! `routes: [{ prefix: /public/, mode: off }]` this proxy lets `/public/...` through without a
//! token and gates everything else. Run it with the reference config:
//!
//! ```text
//! cargo run --release --example embed -- config/epochgate.yaml
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use epochgate::edge::proxy::{gate_request, prepare_upstream_request, Admitted, Forwarding, Gated};
use epochgate::edge::server::draining_proxy_service;
use epochgate::gate::Gate;
use epochgate::Settings;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::Opt;
use pingora::server::Server;

struct MyProxy {
    gate: Arc<Gate>,
    forwarding: Forwarding,
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for MyProxy {
    /// How the request passed the gate (its route's mode and the verdict).
    type CTX = Option<Admitted>;

    fn new_ctx(&self) -> Self::CTX {
        None
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<bool> {
        // `Rejected`: the gate already wrote its 401/503 (connection kept alive).
        match gate_request(&self.gate, session).await? {
            Gated::Forward(admitted) => {
                *ctx = Some(admitted);
                Ok(false)
            }
            Gated::Rejected(_) => Ok(true),
        }
    }

    /// Pingora's error lines describe the request with this: keep tokens (query strings) out.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        epochgate::edge::proxy::redacted_summary(session.req_header())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> pingora::Result<()> {
        // Always called, whatever the route: client-sent identity headers are removed either way.
        prepare_upstream_request(
            &self.forwarding,
            self.gate.token_sources(),
            ctx.as_ref(),
            upstream_request,
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config/epochgate.yaml".into());
    let settings = Settings::load(path.as_ref())?;
    let gate = Arc::new(Gate::new(&settings)?);

    let mut server = Server::new(Some(Opt::default()))?;
    server.bootstrap();
    // Idle keep-alive connections keep answering (with `Connection: close`) through the
    // grace period instead of being closed under a client's next request.
    let mut proxy = draining_proxy_service(
        &server.configuration,
        MyProxy {
            gate: gate.clone(),
            forwarding: Forwarding::new(settings.forward.clone()),
            upstream: settings.proxy.peers[0],
        },
        "embed proxy",
    );
    for addr in &settings.proxy.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    // Keeps the JWKS loaded (a no-op for static keys).
    server.add_service(epochgate::edge::server::key_refresh_service(
        gate,
        settings.auth_origin.jwks_refresh,
    ));
    server.run_forever()
}
