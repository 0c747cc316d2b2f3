//! The floor for benchmarks: the same Pingora version proxying with no gate at all.
//!
//! ```text
//! cargo run --release --example passthrough -- 127.0.0.1:6190 127.0.0.1:8000 2
//! ```
//! Arguments: listen address, upstream address, worker threads, and optionally a PEM
//! certificate and key file: the listener then terminates TLS (HTTP/2 offered through ALPN,
//! as epochgate's TLS listeners do).
//!
//! It uses the same allocator as the `epochgate` binary (jemalloc, unless built with
//! `--no-default-features`), so that the two differ by the gate alone.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:6190".into());
    let upstream: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8000".into())
        .parse()?;
    let threads: usize = args.next().unwrap_or_else(|| "1".into()).parse()?;

    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Passthrough { upstream });
    match (args.next(), args.next()) {
        (Some(cert), Some(key)) => {
            let mut tls = TlsSettings::intermediate(&cert, &key)?;
            tls.enable_h2();
            proxy.add_tls_with_settings(&listen, None, tls);
        }
        _ => proxy.add_tcp(&listen),
    }
    server.add_service(proxy);
    server.run_forever()
}
