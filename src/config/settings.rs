//! The runtime settings: the validated, typed configuration the rest of the crate uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use pingora::server::configuration::ServerConf;
use serde::Deserialize;

use crate::request::client_ip::IpNetwork;
use crate::request::route::Routes;

/// How a request's upstream server is chosen among the healthy ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    RoundRobin,
    /// By a hash of the request path: a segment's requests go to one server (and its cache)
    /// while it is healthy.
    ConsistentHash,
}

/// What to do with a request whose account has no usable revocation record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOriginUnavailable {
    /// Answer 503 `origin_unavailable` (fail closed).
    #[default]
    Deny,
    /// Forward the request (fail open).
    Allow,
}

/// Validated configuration, ready for the runtime.
#[derive(Debug)]
pub struct Settings {
    pub server: ServerConf,
    pub proxy: ProxySettings,
    pub admin_listen: SocketAddr,
    pub auth_origin: AuthOriginSettings,
    pub token: TokenSettings,
    pub cache: CacheSettings,
    pub forward: ForwardSettings,
    pub limits: LimitsSettings,
    /// The top-level `mode` and the `routes`.
    pub routes: Routes,
    pub access_log: AccessLogSettings,
    /// `replica:`: revocation records from a NATS bucket instead of the auth origin.
    pub replica: Option<crate::config::ReplicaSettings>,
}

/// The access log: one JSON line per request.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSettings {
    pub enabled: bool,
    /// `None`: stdout.
    pub path: Option<PathBuf>,
    /// The share of allowed (and ungated) requests logged, 0 to 1; rejections are all logged.
    pub sample_allowed: f64,
}

#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Every proxy listener, TLS and plain.
    pub listen: Vec<SocketAddr>,
    /// The first address of each peer, resolved at load (Pingora's `HttpPeer::new` panics on
    /// a name it cannot resolve). The ready-made proxy uses `pool` instead.
    pub peers: Vec<SocketAddr>,
    /// TLS to the upstream peers.
    pub tls: bool,
    pub sni: String,
    /// Peers trusted to name the client in `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpNetwork>,
    /// The upstream pool: names, selection, health check.
    pub pool: PoolSettings,
    /// TLS on the listeners it names (`None`: every listener is plain).
    pub downstream_tls: Option<DownstreamTls>,
    /// Cleartext HTTP/2 (prior knowledge) on the plain listeners.
    pub h2c: bool,
}

/// The upstream pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// `proxy.upstream.peers` as written (`host:port`), resolved again periodically.
    pub names: Vec<String>,
    /// Every address the names resolved to at load.
    pub addresses: Vec<SocketAddr>,
    pub tls: bool,
    pub sni: String,
    pub selection: Selection,
    pub health_check: HealthCheckSettings,
    pub resolve_interval: Duration,
}

/// The active health check of each upstream peer.
#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// `Some`: `GET path` must answer `expected_status`; `None`: a TCP connect must succeed.
    pub path: Option<String>,
    pub expected_status: u16,
}

/// TLS termination on the proxy listeners.
#[derive(Debug, Clone)]
pub struct DownstreamTls {
    /// The listeners (a subset of `ProxySettings::listen`) that speak TLS.
    pub listen: Vec<SocketAddr>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Read and checked at load: what the listeners present until a reload.
    pub certificate: crate::edge::tls::LoadedCert,
    /// Offer HTTP/2 through ALPN (else HTTP/1.1 only).
    pub http2: bool,
}

/// Limits on what one client can make the edge do.
#[derive(Debug, Clone, Default)]
pub struct LimitsSettings {
    /// Failed verifications a client may cause; `None`: no budget.
    pub invalid_tokens_per_client: Option<BudgetSettings>,
}

/// A budget of `burst` events, refilled at `per_second` (`burst >= per_second >= 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSettings {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct AuthOriginSettings {
    /// Base URL without a trailing slash.
    pub url: String,
    pub timeout: Duration,
    pub jwks_refresh: Duration,
    pub feed: FeedSettings,
    /// Revocation lookups (`GET /v1/revocations/{account}`) in flight at once, per edge.
    /// A lookup waits at most `timeout` for a slot, then fails like an unanswered one.
    pub max_concurrent_lookups: usize,
}

/// The revocation feed subscription.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    pub enabled: bool,
    pub idle_timeout: Duration,
    pub unsupported_retry: Duration,
}

/// Where a token may be carried, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Header {
        name: http::HeaderName,
        prefix: Option<String>,
    },
    Query {
        name: String,
    },
    Cookie {
        name: String,
    },
}

/// Where verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    Jwks,
    Pem(Vec<u8>),
    HmacSecret(Vec<u8>),
}

impl std::fmt::Debug for KeySource {
    // Never print key material, not even in a debug dump of the settings.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Jwks => f.write_str("Jwks"),
            KeySource::Pem(_) => f.write_str("Pem(..)"),
            KeySource::HmacSecret(_) => f.write_str("HmacSecret(..)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub sources: Vec<TokenSource>,
    pub algorithms: Vec<Algorithm>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
    pub account_claim: String,
    pub device_claim: String,
    pub time_claim: String,
    pub keys: KeySource,
    pub verified_cache_entries: u64,
    /// A token whose `exp` lies further than this after its session time is invalid.
    pub max_lifetime: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub max_accounts: u64,
    pub refresh_after: Duration,
    pub max_stale: Duration,
    pub on_origin_unavailable: OnOriginUnavailable,
    /// Devices one revocation record (a lookup's answer or a pushed event) may name.
    pub max_devices_per_account: usize,
}

#[derive(Debug, Clone)]
pub struct ForwardSettings {
    pub account_header: http::HeaderName,
    pub device_header: http::HeaderName,
    pub strip_token: bool,
    /// Lower case, non-empty, header-name characters only: every client-sent header whose
    /// name starts with it is removed before forwarding.
    pub header_prefix: String,
}
