//! The upstream pool: peer names re-resolved periodically, health-checked and selected per
//! request with Pingora's load balancer; the 502 when no peer is healthy; pool metrics.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use pingora::http::ResponseHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::{Error, ErrorType, Result};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::config::{HealthCheckSettings, PoolSettings, Selection};

/// The error `upstream_peer` returns when no peer may be tried; answered with a JSON 502.
pub const NO_HEALTHY_UPSTREAM: ErrorType = ErrorType::Custom("no_healthy_upstream");

/// How many candidates a selection looks at before giving up (Pingora's usual bound).
const MAX_SELECT_ITERATIONS: usize = 256;

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    PathHash(LoadBalancer<Consistent>),
}

/// The upstream servers, their health, and the choice of one per request.
pub struct UpstreamPool {
    balancer: Balancer,
    errors: IntCounterVec,
}

impl UpstreamPool {
    /// Builds the pool from validated settings, with the addresses resolved at load already
    /// in it (the background service re-resolves and health-checks from then on).
    pub fn new(settings: &PoolSettings) -> UpstreamPool {
        let discovery = ResolvingDiscovery {
            names: settings.names.clone(),
            initial: std::sync::Mutex::new(Some(
                settings.addresses.iter().map(|a| backend(*a)).collect(),
            )),
        };
        let mut backends = Backends::new(Box::new(discovery));
        backends.set_health_check(health_check(&settings.health_check, settings));
        let balancer = match settings.selection {
            Selection::RoundRobin => {
                Balancer::RoundRobin(configured(LoadBalancer::from_backends(backends), settings))
            }
            Selection::ConsistentHash => {
                Balancer::PathHash(configured(LoadBalancer::from_backends(backends), settings))
            }
        };
        let pool = UpstreamPool {
            balancer,
            errors: IntCounterVec::new(
                Opts::new(
                    "epochgate_upstream_errors_total",
                    "Requests that could not be proxied to an upstream server, by kind",
                ),
                &["kind"],
            )
            .expect("static metric definition"),
        };
        // The first discovery hands over the addresses resolved when the configuration was
        // loaded, at once: the pool is usable before its background service first runs
        // (peers start out healthy until a check says otherwise).
        let seeded = match &pool.balancer {
            Balancer::RoundRobin(lb) => lb.update().now_or_never(),
            Balancer::PathHash(lb) => lb.update().now_or_never(),
        };
        if !matches!(seeded, Some(Ok(()))) {
            log::warn!("upstream pool: the peers resolved at load could not be set");
        }
        pool
    }

    fn backends(&self) -> &Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::PathHash(lb) => lb.backends(),
        }
    }

    /// A healthy peer not in `exclude` (peers that already failed this request); the key
    /// is the request path (used by consistent hashing only).
    pub fn select(&self, path: &[u8], exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let accept = |b: &Backend, healthy: bool| {
            healthy && b.addr.as_inet().is_some_and(|a| !exclude.contains(a))
        };
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(path, MAX_SELECT_ITERATIONS, accept),
            Balancer::PathHash(lb) => lb.select_with(path, MAX_SELECT_ITERATIONS, accept),
        }?;
        backend.addr.as_inet().copied()
    }

    /// Whether any peer is healthy now.
    pub fn any_healthy(&self) -> bool {
        let backends = self.backends();
        backends.get_backend().iter().any(|b| backends.ready(b))
    }

    /// (healthy, total) peers.
    pub fn peer_counts(&self) -> (usize, usize) {
        let backends = self.backends();
        let all = backends.get_backend();
        let healthy = all.iter().filter(|b| backends.ready(b)).count();
        (healthy, all.len())
    }

    /// Counts a request that failed on its way to the upstream.
    pub fn count_error(&self, kind: UpstreamErrorKind) {
        self.errors.with_label_values(&[kind.label()]).inc();
    }

    /// Registers `epochgate_upstream_peers{state}` and `epochgate_upstream_errors_total{kind}`.
    pub fn register(self: &Arc<Self>, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(PeerGauges::new(self.clone())?))
    }

    async fn run(&self, shutdown: ShutdownWatch) {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.run(shutdown, None).await,
            Balancer::PathHash(lb) => lb.run(shutdown, None).await,
        }
    }
}

fn configured<S>(mut lb: LoadBalancer<S>, settings: &PoolSettings) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    lb.health_check_frequency = Some(settings.health_check.interval);
    lb.update_frequency = Some(settings.resolve_interval);
    lb.parallel_health_check = true;
    lb
}

fn health_check(
    check: &HealthCheckSettings,
    pool: &PoolSettings,
) -> Box<dyn HealthCheck + Send + Sync> {
    match &check.path {
        None => {
            let mut tcp = if pool.tls {
                TcpHealthCheck::new_tls(&pool.sni)
            } else {
                TcpHealthCheck::new()
            };
            tcp.peer_template.options.connection_timeout = Some(check.timeout);
            tcp
        }
        Some(path) => {
            let host = if pool.sni.is_empty() {
                "localhost"
            } else {
                &pool.sni
            };
            let mut http = HttpHealthCheck::new(host, pool.tls);
            http.peer_template.options.connection_timeout = Some(check.timeout);
            http.peer_template.options.read_timeout = Some(check.timeout);
            // Validated at load: an absolute path.
            if let Ok(uri) = path.parse() {
                http.req.set_uri(uri);
            }
            let expected = check.expected_status;
            http.validator = Some(Box::new(move |response: &ResponseHeader| {
                if response.status.as_u16() == expected {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::Custom("health check status"),
                        format!("status {} (expected {expected})", response.status),
                    )
                }
            }));
            Box::new(http)
        }
    }
}

fn backend(addr: SocketAddr) -> Backend {
    Backend {
        addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
        weight: 1,
        ext: Default::default(),
    }
}

/// Resolves the configured `host:port` names again on every pool update, so an origin that
/// moves to new addresses is followed. A failed resolution keeps the peers as they are.
struct ResolvingDiscovery {
    names: Vec<String>,
    /// The addresses resolved at load, answered by the first discovery.
    initial: std::sync::Mutex<Option<BTreeSet<Backend>>>,
}

impl ResolvingDiscovery {
    fn resolve(names: &[String]) -> std::io::Result<BTreeSet<Backend>> {
        let mut backends = BTreeSet::new();
        for name in names {
            backends.extend(name.to_socket_addrs()?.map(backend));
        }
        if backends.is_empty() {
            return Err(std::io::Error::other("the peer names resolve to nothing"));
        }
        Ok(backends)
    }
}

#[async_trait]
impl ServiceDiscovery for ResolvingDiscovery {
    async fn discover(&self) -> Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let initial = self.initial.lock().ok().and_then(|mut i| i.take());
        if let Some(backends) = initial {
            return Ok((backends, HashMap::new()));
        }
        let names = self.names.clone();
        let resolved = tokio::task::spawn_blocking(move || Self::resolve(&names))
            .await
            .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
        match resolved {
            Ok(backends) => Ok((backends, HashMap::new())),
            Err(e) => {
                log::warn!("upstream peers not re-resolved, keeping the current ones: {e}");
                Error::e_explain(ErrorType::ConnectNoRoute, e.to_string())
            }
        }
    }
}

/// Runs the pool's health checks and name resolution.
pub struct PoolService(pub Arc<UpstreamPool>);

#[async_trait]
impl BackgroundService for PoolService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}

/// Why a request did not make it to (or back from) an upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// No healthy peer was left to try: answered `502 no_healthy_upstream`.
    NoHealthyPeer,
    /// Connecting failed (refused, timed out, no route); the request is tried on another peer.
    Connect,
    /// The TLS handshake with the peer failed.
    Tls,
    /// Reading or writing timed out after the connection was made.
    Timeout,
    /// Any other failure on the upstream side (connection closed, bad response).
    Response,
}

impl UpstreamErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::NoHealthyPeer => "no_healthy_peer",
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Response => "response",
        }
    }

    /// The kind of an upstream error Pingora reports.
    pub fn of(error: &Error) -> UpstreamErrorKind {
        match error.etype() {
            e if *e == NO_HEALTHY_UPSTREAM => UpstreamErrorKind::NoHealthyPeer,
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::BindError
            | ErrorType::SocketError => UpstreamErrorKind::Connect,
            ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError => UpstreamErrorKind::Tls,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamErrorKind::Timeout,
            _ => UpstreamErrorKind::Response,
        }
    }
}

/// Writes `502 no_healthy_upstream` with the JSON body and headers of the edge's other errors.
pub async fn write_no_healthy_upstream(session: &mut Session) -> Result<()> {
    let body = serde_json::json!({
        "error": "no_healthy_upstream",
        "message": "no upstream server is available",
    })
    .to_string();
    let mut header = ResponseHeader::build(502, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("cache-control", "no-store")?;
    header.set_content_length(body.len())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}

/// `epochgate_upstream_peers{state="healthy"|"total"}`, computed when scraped.
struct PeerGauges {
    pool: Arc<UpstreamPool>,
    healthy: IntGauge,
    total: IntGauge,
    descs: Vec<Desc>,
}

impl PeerGauges {
    fn new(pool: Arc<UpstreamPool>) -> prometheus::Result<PeerGauges> {
        let gauge = |state: &str| {
            IntGauge::with_opts(
                Opts::new(
                    "epochgate_upstream_peers",
                    "Upstream peers, healthy and in total",
                )
                .const_label("state", state),
            )
        };
        let healthy = gauge("healthy")?;
        let total = gauge("total")?;
        let descs = healthy
            .desc()
            .into_iter()
            .chain(total.desc())
            .cloned()
            .collect();
        Ok(PeerGauges {
            pool,
            healthy,
            total,
            descs,
        })
    }
}

impl Collector for PeerGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (healthy, total) = self.pool.peer_counts();
        self.healthy.set(healthy as i64);
        self.total.set(total as i64);
        let mut families = self.healthy.collect();
        families.extend(self.total.collect());
        families
    }
}
