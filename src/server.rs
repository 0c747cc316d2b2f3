//! Assembling the Pingora server: proxy (plain and TLS listeners), upstream pool health
//! checks, admin listener, key refresher, certificate reloader, listener watchdog.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::Stream;
use pingora::protocols::ALPN;
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;

use crate::access_log::{AccessLog, AccessLogError};
use crate::admin::{AdminApp, Readiness};
use crate::config::{FeedSettings, Settings};
use crate::feed::FeedService;
use crate::gate::{Gate, GateError};
use crate::proxy::EpochGateProxy;
use crate::tls::{CertReloader, CertStore};
use crate::upstream::{PoolService, UpstreamPool};

/// How long the proxy listener may take to accept before the process gives up.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    #[error("cannot set up the TLS listener (proxy.tls): {0}")]
    Tls(String),
    #[error(transparent)]
    Replica(#[from] crate::replica::watch::ReplicaError),
}

/// Fails fast, naming the address, when a listener cannot be bound. Pingora alone retries
/// for 30 s and then leaves the other services running with a dead proxy.
pub fn check_listeners_free(settings: &Settings) -> Result<(), StartError> {
    let proxy = settings.proxy.listen.iter().map(|a| (*a, "proxy.listen"));
    let admin = std::iter::once((settings.admin_listen, "admin.listen"));
    for (addr, key) in proxy.chain(admin) {
        TcpListener::bind(addr).map_err(|source| StartError::Bind { addr, key, source })?;
    }
    Ok(())
}

/// A server ready to `run`, and the gate inside it.
pub struct EdgeServer {
    pub server: Server,
    pub gate: Arc<Gate>,
}

/// How long the start-up check of the replica's bucket may wait for NATS before the edge
/// starts anyway (not ready, retrying in the background).
pub const REPLICA_START_CHECK: Duration = Duration::from_secs(5);

/// How long a new process started with `-u` waits for its keys before taking over the
/// listeners: the old process keeps serving meanwhile, so no request meets a keyless edge.
/// Kept well inside the ~5 s for which Pingora's old process retries the hand-over after
/// SIGQUIT: with the JWKS down, the new process takes over keyless rather than not at all.
pub const UPGRADE_KEY_WAIT: Duration = Duration::from_secs(3);

/// Builds the whole edge from validated settings.
pub fn build(settings: Settings, opt: Opt) -> Result<EdgeServer, StartError> {
    let gate = Arc::new(Gate::new(&settings)?);
    if let Some(replica) = &settings.replica {
        crate::replica::watch::check_at_start(replica, REPLICA_START_CHECK)?;
    }
    let readiness = Arc::new(Readiness::default());
    let wait = if opt.upgrade {
        UPGRADE_KEY_WAIT
    } else {
        settings.auth_origin.timeout
    };
    preload_keys(&gate, wait);
    let mut server = Server::new_with_opt_and_conf(opt, settings.server);
    server.bootstrap();

    let pool = Arc::new(UpstreamPool::new(&settings.proxy.pool));
    if let Err(e) = pool.register(gate.metrics().registry()) {
        log::error!("upstream pool metrics not registered: {e}");
    }
    let proxy = EpochGateProxy::with_pool(
        gate.clone(),
        pool.clone(),
        &settings.proxy,
        settings.forward.clone(),
    )
    .with_access_log(AccessLog::open(&settings.access_log)?);
    let mut http_proxy = pingora::proxy::http_proxy(&server.configuration, proxy);
    if settings.proxy.h2c {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        http_proxy.server_options = Some(options);
    }
    let mut proxy_service = Service::new(
        "epochgate proxy".to_string(),
        DrainOnShutdown::new(http_proxy, grace_period(&server.configuration)),
    );
    let mut cert_reloader = None;
    let downstream_tls = settings.proxy.downstream_tls.as_ref();
    for addr in &settings.proxy.listen {
        match downstream_tls.filter(|tls| tls.listen.contains(addr)) {
            Some(tls) => {
                let store = cert_reloader
                    .get_or_insert_with(|| CertReloader {
                        store: Arc::new(CertStore::new(tls.certificate.certified.clone())),
                        cert_file: tls.cert_file.clone(),
                        key_file: tls.key_file.clone(),
                    })
                    .store
                    .clone();
                proxy_service.add_tls_with_settings(
                    &addr.to_string(),
                    None,
                    listener_tls(store, tls.http2)?,
                );
            }
            None => proxy_service.add_tcp(&addr.to_string()),
        }
    }

    let mut admin_service = Service::new(
        "epochgate admin".to_string(),
        HttpServer::new_app(AdminApp::new(gate.clone(), readiness.clone())),
    );
    admin_service.add_tcp(&settings.admin_listen.to_string());
    admin_service.threads = Some(1);

    let keys_service = key_refresh_service(gate.clone(), settings.auth_origin.jwks_refresh);
    let mut watchdog = background_service(
        "epochgate listen watchdog",
        ListenWatchdog {
            addrs: settings.proxy.listen.clone(),
            readiness,
        },
    );
    watchdog.threads = Some(1);

    server.add_service(proxy_service);
    server.add_service(admin_service);
    server.add_service(keys_service);
    if let Some(replica) = gate.replica() {
        // The replica replaces the feed and the lookups.
        let mut service = background_service(
            "epochgate replica",
            crate::replica::watch::ReplicaWatch::new(replica.clone()),
        );
        service.threads = Some(1);
        server.add_service(service);
    } else if settings.auth_origin.feed.enabled {
        server.add_service(feed_service(
            gate.clone(),
            settings.auth_origin.feed.clone(),
        ));
    }
    server.add_service(watchdog);
    let mut pool_service = background_service("epochgate upstream health check", PoolService(pool));
    pool_service.threads = Some(1);
    server.add_service(pool_service);
    if let Some(reloader) = cert_reloader {
        let mut service = background_service("epochgate tls reload", reloader);
        service.threads = Some(1);
        server.add_service(service);
    }
    Ok(EdgeServer { server, gate })
}

/// A TLS listener's settings: the certificate from the reloadable store, HTTP/2 offered
/// through ALPN (preferred, HTTP/1.1 allowed) or HTTP/1.1 only.
fn listener_tls(store: Arc<CertStore>, http2: bool) -> Result<TlsSettings, StartError> {
    // The paths are unused: the resolver supplies the certificate.
    let mut tls = TlsSettings::intermediate("", "").map_err(|e| StartError::Tls(e.to_string()))?;
    tls.set_cert_resolver(store);
    if http2 {
        tls.enable_h2();
    } else {
        tls.set_alpn(ALPN::H1);
    }
    Ok(tls)
}

fn grace_period(conf: &ServerConf) -> Duration {
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

/// Tries to load the JWKS before any listener exists, for up to `wait`. Failure is not fatal:
/// the edge starts not ready and the key service keeps trying.
fn preload_keys(gate: &Arc<Gate>, wait: Duration) {
    if !gate.keys().uses_jwks() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let deadline = Instant::now() + wait;
    runtime.block_on(async {
        while gate.keys().refresh().await.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// The background service that keeps a gate's JWKS loaded; embedders add it to their server.
pub fn key_refresh_service(gate: Arc<Gate>, every: Duration) -> GenBackgroundService<KeyRefresher> {
    let mut service = background_service("epochgate keys", KeyRefresher { gate, every });
    service.threads = Some(1);
    service
}

/// The background service that keeps a gate subscribed to the revocation feed; embedders
/// add it to their server when `auth_origin.feed` is on.
pub fn feed_service(gate: Arc<Gate>, settings: FeedSettings) -> GenBackgroundService<FeedService> {
    let mut service = background_service(
        "epochgate revocation feed",
        FeedService::new(gate, settings),
    );
    service.threads = Some(1);
    service
}

/// Loads the JWKS at start (retrying with backoff until it arrives) and then periodically.
pub struct KeyRefresher {
    gate: Arc<Gate>,
    every: Duration,
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let keys = self.gate.keys();
        if !keys.uses_jwks() {
            return;
        }
        let mut retry = Duration::from_millis(250);
        loop {
            let wait = match keys.refresh().await {
                Ok(count) => {
                    log::info!("JWKS loaded: {count} key(s)");
                    retry = Duration::from_millis(250);
                    self.every
                }
                // Keep the last good keys; retry sooner while none were ever loaded.
                Err(_) if keys.current().is_empty() => {
                    retry = (retry * 2).min(Duration::from_secs(10));
                    retry
                }
                Err(_) => self.every.min(Duration::from_secs(30)),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Confirms the proxy accepts connections; exits the process when it does not within
/// [`LISTEN_DEADLINE`], so no process lives on with a dead proxy and a healthy `/healthz`.
struct ListenWatchdog {
    addrs: Vec<SocketAddr>,
    readiness: Arc<Readiness>,
}

#[async_trait]
impl BackgroundService for ListenWatchdog {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let deadline = Instant::now() + LISTEN_DEADLINE;
        for addr in &self.addrs {
            let probe = reachable(*addr);
            let port = addr.port();
            loop {
                let ok = tokio::task::spawn_blocking(move || {
                    // A connection alone could reach another process that took the port
                    // between the bind check and Pingora's bind (Pingora then retries for
                    // 30 s and gives up): the listener must also be ours.
                    TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok()
                        && listening_here(port) != Some(false)
                })
                .await
                .unwrap_or(false);
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    log::error!(
                        "proxy listener {addr} is not accepting connections after {LISTEN_DEADLINE:?}; exiting"
                    );
                    eprintln!("epochgate: cannot listen on {addr} (proxy.listen); exiting");
                    std::process::exit(1);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.readiness.set_proxy_listening();
    }
}

/// A wildcard listen address is probed on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    }
}

/// Whether this process holds a listening TCP socket on `port`, read from Linux's /proc
/// (the socket tables and this process's descriptors); `None` where /proc cannot tell.
fn listening_here(port: u16) -> Option<bool> {
    let mut listening = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        // Columns: sl local_address rem_address st ... inode (10th); ports are hex, LISTEN is 0A.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|local| local.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) && fields.get(3) == Some(&"0A") {
                if let Some(inode) = fields.get(9) {
                    listening.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if !readable {
        return None;
    }
    let descriptors = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(descriptors.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| listening.iter().any(|s| target.as_os_str() == s.as_str()))
            .unwrap_or(false)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_listener_of_this_process_is_recognised() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_here(port), Some(true));
        drop(listener);
        assert_eq!(listening_here(port), Some(false));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_listener_of_another_process_is_not_ours() {
        use std::io::BufRead;
        let script = "import socket, time\n\
            s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
            print(s.getsockname()[1], flush=True); time.sleep(30)";
        let mut other = std::process::Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(other.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        // The port answers, but the listener is not this process's.
        let reachable = TcpStream::connect(("127.0.0.1", port)).is_ok();
        let ours = listening_here(port);
        let _ = other.kill();
        let _ = other.wait();
        assert!(reachable);
        assert_eq!(ours, Some(false));
    }
}
