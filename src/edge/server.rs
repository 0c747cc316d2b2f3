//! Assembling the Pingora server: proxy (plain and TLS listeners), upstream pool health
//! checks, admin listener, key refresher, revocation feed, certificate reloader, listen
//! watchdog ([`crate::edge::watchdog`]), shutdown drain ([`crate::edge::drain`]).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::ALPN;
use pingora::server::configuration::Opt;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use pingora::services::listening::Service;

use crate::config::{FeedSettings, Settings};
use crate::edge::access_log::{AccessLog, AccessLogError};
use crate::edge::admin::{AdminApp, Readiness};
use crate::edge::drain::grace_period;
pub use crate::edge::drain::{draining_proxy_service, DrainOnShutdown};
use crate::edge::proxy::EpochGateProxy;
use crate::edge::tls::{CertReloader, CertStore};
use crate::edge::upstream::{PoolService, UpstreamPool};
use crate::edge::watchdog::ListenWatchdog;
pub use crate::edge::watchdog::LISTEN_DEADLINE;
use crate::gate::{Gate, GateError};
use crate::revocation::feed::{FeedService, FeedStatus};

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
    Replica(#[from] crate::revocation::replica::watch::ReplicaError),
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
        crate::revocation::replica::watch::check_at_start(replica, REPLICA_START_CHECK)?;
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

    let feed_status = Arc::new(FeedStatus::with_clock(
        settings.auth_origin.feed.enabled,
        gate.clock().clone(),
    ));
    let mut admin_service = Service::new(
        "epochgate admin".to_string(),
        HttpServer::new_app(AdminApp::new(
            gate.clone(),
            readiness.clone(),
            feed_status.clone(),
        )),
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
            crate::revocation::replica::watch::ReplicaWatch::new(replica.clone()),
        );
        service.threads = Some(1);
        server.add_service(service);
    } else if settings.auth_origin.feed.enabled {
        server.add_service(feed_service(
            &gate,
            feed_status,
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

/// The background service that keeps a gate's epoch cache subscribed to the revocation feed,
/// reporting its state in `status`; embedders add it to their server when
/// `auth_origin.feed` is on.
pub fn feed_service(
    gate: &Gate,
    status: Arc<FeedStatus>,
    settings: FeedSettings,
) -> GenBackgroundService<FeedService> {
    let feed = FeedService::new(
        gate.cache().clone(),
        gate.origin().clone(),
        gate.metrics().clone(),
        status,
        settings,
    );
    let mut service = background_service("epochgate revocation feed", feed);
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
