//! The YAML file format, its validation, and the typed runtime settings it becomes.
//!
//! The file structs mirror what operators write (`deny_unknown_fields`, human durations);
//! [`Settings`] is what the rest of the crate uses. Every error names the key it is about.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use pingora::server::configuration::ServerConf;
use serde::Deserialize;

use crate::client_ip::IpNetwork;

use crate::route::{Mode, Route, Routes};

/// A configuration problem, always tied to the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("config error at `{key}`: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `token.algorithms[1]`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------

/// A duration written as a human string: `250ms`, `30s`, `10m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write e.g. 250ms, 30s, 10m"
                ))
            })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Pingora's own `ServerConf` keys; checked against that struct's field list.
    #[serde(default)]
    server: Option<serde_norway::Mapping>,
    proxy: ProxyFile,
    #[serde(default)]
    admin: AdminFile,
    auth_origin: AuthOriginFile,
    token: TokenFile,
    #[serde(default)]
    cache: CacheFile,
    #[serde(default)]
    forward: ForwardFile,
    #[serde(default)]
    limits: LimitsFile,
    /// `enforce` or `observe`: the mode of a path no route matches.
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    routes: Vec<RouteFile>,
    #[serde(default)]
    access_log: AccessLogFile,
    /// The fleet replica (see `crate::replica`).
    #[serde(default)]
    replica: Option<crate::replica::ReplicaFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessLogFile {
    #[serde(default)]
    enabled: bool,
    /// A file to append to; absent or null: stdout.
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default = "default_sample_allowed")]
    sample_allowed: f64,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile {
            enabled: false,
            path: None,
            sample_allowed: default_sample_allowed(),
        }
    }
}

fn default_sample_allowed() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    prefix: String,
    mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyFile {
    listen: ListenFile,
    /// The certificate of the TLS listeners; with it, every `listen` entry written as a
    /// plain string is a TLS listener.
    #[serde(default)]
    tls: Option<TlsFile>,
    /// Offer HTTP/2 through ALPN on the TLS listeners (default: true).
    #[serde(default)]
    http2: Option<bool>,
    /// Accept cleartext HTTP/2 (prior knowledge) on the plain listeners.
    #[serde(default)]
    h2c: bool,
    upstream: UpstreamFile,
    /// Peers whose `X-Forwarded-For` names the client: IP addresses or CIDR blocks.
    #[serde(default)]
    trusted_proxies: Vec<String>,
}

/// `proxy.listen`: one entry or a list of them.
#[derive(Debug)]
struct ListenFile(Vec<ListenEntryFile>);

/// One `proxy.listen` entry: `"IP:port"`, or `{address: "IP:port", tls: BOOL}`.
#[derive(Debug)]
struct ListenEntryFile {
    address: String,
    tls: Option<bool>,
}

impl<'de> Deserialize<'de> for ListenEntryFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> serde::de::Visitor<'de> for EntryVisitor {
            type Value = ListenEntryFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"IP:port\" or {address: \"IP:port\", tls: true|false}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ListenEntryFile, E> {
                Ok(ListenEntryFile {
                    address: v.to_string(),
                    tls: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ListenEntryFile, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Entry {
                    address: String,
                    #[serde(default)]
                    tls: Option<bool>,
                }
                let entry = Entry::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ListenEntryFile {
                    address: entry.address,
                    tls: entry.tls,
                })
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}

impl<'de> Deserialize<'de> for ListenFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> serde::de::Visitor<'de> for ListVisitor {
            type Value = ListenFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a listen address or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ListenFile, E> {
                Ok(ListenFile(vec![ListenEntryFile {
                    address: v.to_string(),
                    tls: None,
                }]))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ListenFile, A::Error> {
                let entry = ListenEntryFile::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(ListenFile(vec![entry]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ListenFile, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element::<ListenEntryFile>()? {
                    entries.push(entry);
                }
                Ok(ListenFile(entries))
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFile {
    peers: Vec<String>,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    sni: String,
    #[serde(default)]
    selection: Selection,
    #[serde(default)]
    health_check: HealthCheckFile,
    /// How often the peer names are resolved again.
    #[serde(default = "default_resolve_interval")]
    resolve_interval: HumanDuration,
}

fn default_resolve_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheckFile {
    #[serde(default = "default_health_interval")]
    interval: HumanDuration,
    #[serde(default = "default_health_timeout")]
    timeout: HumanDuration,
    /// An HTTP check (`GET path`) instead of a TCP connect.
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    expected_status: Option<u16>,
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        HealthCheckFile {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            path: None,
            expected_status: None,
        }
    }
}

fn default_health_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_health_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminFile {
    #[serde(default = "default_admin_listen")]
    listen: String,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthOriginFile {
    url: String,
    #[serde(default = "default_origin_timeout")]
    timeout: HumanDuration,
    /// How often the JWKS is fetched again while keys are loaded.
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh: HumanDuration,
    /// Subscribe to `GET /v1/revocation-feed` (Server-Sent Events).
    #[serde(default = "default_true")]
    feed: bool,
    /// A feed connection silent this long (three missed 15 s pings) is replaced.
    #[serde(default = "default_feed_idle_timeout")]
    feed_idle_timeout: HumanDuration,
    /// After a 404 on the feed, try it again this often.
    #[serde(default = "default_feed_unsupported_retry")]
    feed_unsupported_retry: HumanDuration,
    /// Revocation lookups in flight at once; the others wait for a slot.
    #[serde(default = "default_max_concurrent_lookups")]
    max_concurrent_lookups: u64,
}

fn default_max_concurrent_lookups() -> u64 {
    64
}

fn default_feed_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(45))
}

fn default_feed_unsupported_retry() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_origin_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}

fn default_jwks_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default = "default_sources")]
    sources: Vec<SourceFile>,
    algorithms: Vec<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default = "default_leeway")]
    leeway: HumanDuration,
    #[serde(default = "default_account_claim")]
    account_claim: String,
    #[serde(default = "default_device_claim")]
    device_claim: String,
    #[serde(default = "default_time_claim")]
    time_claim: String,
    #[serde(default)]
    keys: KeysFile,
    /// Tokens remembered as verified (0 turns the verified-token cache off).
    #[serde(default = "default_verified_cache_entries")]
    verified_cache_entries: u64,
    /// Longest `exp` minus session time accepted; absent or null: no bound.
    #[serde(default)]
    max_lifetime: Option<HumanDuration>,
}

fn default_verified_cache_entries() -> u64 {
    100_000
}

fn default_sources() -> Vec<SourceFile> {
    vec![
        SourceFile {
            header: Some("authorization".into()),
            prefix: Some("Bearer ".into()),
            ..SourceFile::default()
        },
        SourceFile {
            query: Some("token".into()),
            ..SourceFile::default()
        },
        SourceFile {
            cookie: Some("device_token".into()),
            ..SourceFile::default()
        },
    ]
}

fn default_leeway() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_account_claim() -> String {
    "sub".into()
}
fn default_device_claim() -> String {
    "did".into()
}
fn default_time_claim() -> String {
    "iat".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    jwks: Option<bool>,
    #[serde(default)]
    pem_file: Option<PathBuf>,
    #[serde(default)]
    hmac_secret_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    #[serde(default = "default_max_accounts")]
    max_accounts: u64,
    #[serde(default = "default_refresh_after")]
    refresh_after: HumanDuration,
    #[serde(default = "default_max_stale")]
    max_stale: HumanDuration,
    #[serde(default)]
    on_origin_unavailable: OnOriginUnavailable,
    /// Devices one revocation record may name; a record naming more is refused.
    #[serde(default = "default_max_devices_per_account")]
    max_devices_per_account: u64,
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            max_accounts: default_max_accounts(),
            refresh_after: default_refresh_after(),
            max_stale: default_max_stale(),
            on_origin_unavailable: OnOriginUnavailable::default(),
            max_devices_per_account: default_max_devices_per_account(),
        }
    }
}

fn default_max_accounts() -> u64 {
    1_000_000
}
fn default_max_devices_per_account() -> u64 {
    1_000
}
fn default_refresh_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_stale() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardFile {
    #[serde(default = "default_account_header")]
    account_header: String,
    #[serde(default = "default_device_header")]
    device_header: String,
    #[serde(default = "default_true")]
    strip_token: bool,
    /// Header names the edge owns: client-sent headers under it never reach the upstream.
    #[serde(default = "default_header_prefix")]
    header_prefix: String,
}

impl Default for ForwardFile {
    fn default() -> Self {
        ForwardFile {
            account_header: default_account_header(),
            device_header: default_device_header(),
            strip_token: true,
            header_prefix: default_header_prefix(),
        }
    }
}

fn default_header_prefix() -> String {
    "x-epochgate-".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default)]
    invalid_tokens_per_client: BudgetFile,
}

/// `{per_second: N, burst: M}`, or `off` / `null` for no budget.
#[derive(Debug)]
enum BudgetFile {
    Off,
    On(BudgetRatesFile),
}

impl Default for BudgetFile {
    fn default() -> Self {
        BudgetFile::On(BudgetRatesFile {
            per_second: 20,
            burst: 100,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetRatesFile {
    per_second: u32,
    burst: u32,
}

impl<'de> Deserialize<'de> for BudgetFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BudgetVisitor;
        impl<'de> serde::de::Visitor<'de> for BudgetVisitor {
            type Value = BudgetFile;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{per_second: N, burst: M}, or off (null) for no budget")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<BudgetFile, E> {
                Ok(BudgetFile::Off)
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<BudgetFile, E> {
                Ok(BudgetFile::Off)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<BudgetFile, E> {
                match text {
                    "off" => Ok(BudgetFile::Off),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BudgetFile, A::Error> {
                BudgetRatesFile::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(BudgetFile::On)
            }
        }
        d.deserialize_any(BudgetVisitor)
    }
}

fn default_account_header() -> String {
    "x-epochgate-account".into()
}
fn default_device_header() -> String {
    "x-epochgate-device".into()
}
fn default_true() -> bool {
    true
}

// ---------------------------------------------------------------------------
// Runtime settings
// ---------------------------------------------------------------------------

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
    pub replica: Option<crate::replica::ReplicaSettings>,
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
    pub certificate: crate::tls::LoadedCert,
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

/// Pingora's grace period defaults to 300 s; an edge should let go much sooner.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 10;
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

impl Settings {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("<file>", format!("cannot read {}: {e}", path.display()))
        })?;
        Settings::from_yaml(&text)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Settings, ConfigError> {
        let deserializer = serde_norway::Deserializer::from_str(text);
        let file: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "<root>".into() } else { key };
            ConfigError::new(key, e.into_inner().to_string())
        })?;
        file.validate()
    }
}

impl FileConfig {
    fn validate(self) -> Result<Settings, ConfigError> {
        let server = server_conf(self.server)?;
        let proxy = self.proxy.validate()?;
        let admin_listen = parse_listen("admin.listen", &self.admin.listen)?;
        let auth_origin = self.auth_origin.validate()?;
        let token = self.token.validate()?;
        let cache = self.cache.validate()?;
        let forward = self.forward.validate()?;
        let limits = self.limits.validate()?;
        if forward.account_header == forward.device_header {
            return Err(ConfigError::new(
                "forward.device_header",
                "must differ from forward.account_header",
            ));
        }
        check_listeners_distinct(&proxy.listen, admin_listen)?;
        let routes = validate_routes(self.mode, self.routes)?;
        let access_log = self.access_log.validate()?;
        let replica = match self.replica {
            Some(replica) => Some(replica.validate(token.max_lifetime)?),
            None => None,
        };
        Ok(Settings {
            server,
            proxy,
            admin_listen,
            auth_origin,
            token,
            cache,
            forward,
            limits,
            routes,
            access_log,
            replica,
        })
    }
}

impl AccessLogFile {
    fn validate(self) -> Result<AccessLogSettings, ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_allowed) {
            return Err(ConfigError::new(
                "access_log.sample_allowed",
                format!("{} is not between 0 and 1", self.sample_allowed),
            ));
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::new("access_log.path", "must not be empty"));
        }
        Ok(AccessLogSettings {
            enabled: self.enabled,
            path: self.path,
            sample_allowed: self.sample_allowed,
        })
    }
}

/// The top level is `enforce` or `observe`; a route may also be `off`. A route whose prefix
/// starts with an earlier route's prefix could never match (first match wins): an error.
fn validate_routes(mode: Mode, files: Vec<RouteFile>) -> Result<Routes, ConfigError> {
    if mode == Mode::Off {
        return Err(ConfigError::new(
            "mode",
            "must be `enforce` or `observe` (`off` is for routes)",
        ));
    }
    let mut routes: Vec<Route> = Vec::with_capacity(files.len());
    for (i, file) in files.into_iter().enumerate() {
        let key = format!("routes[{i}].prefix");
        let prefix = file.prefix.trim().to_string();
        if !prefix.starts_with('/') {
            return Err(ConfigError::new(
                key,
                format!("`{prefix}` must start with `/`"),
            ));
        }
        if crate::route::normalize(&prefix) != prefix.as_str() || prefix.contains(['?', '%']) {
            return Err(ConfigError::new(
                key,
                format!("`{prefix}` must be a plain decoded path (no `.`/`..` segments, `//`, `?` or `%`)"),
            ));
        }
        if let Some((j, earlier)) = routes
            .iter()
            .enumerate()
            .find(|(_, earlier)| prefix.starts_with(&earlier.prefix))
        {
            return Err(ConfigError::new(
                key,
                format!(
                    "`{prefix}` can never match: routes[{j}].prefix `{}` comes first and covers it",
                    earlier.prefix
                ),
            ));
        }
        routes.push(Route {
            prefix,
            mode: file.mode,
        });
    }
    Ok(Routes {
        default: mode,
        routes,
    })
}

/// Builds Pingora's `ServerConf`, rejecting keys it does not know (Pingora itself ignores them).
fn server_conf(section: Option<serde_norway::Mapping>) -> Result<ServerConf, ConfigError> {
    let mut section = section.unwrap_or_default();
    let known = known_server_keys();
    for key in section.keys() {
        let name = key.as_str().unwrap_or("<non-string key>");
        if !known.contains(name) {
            return Err(ConfigError::new(
                format!("server.{name}"),
                "unknown key (not a Pingora ServerConf setting)",
            ));
        }
    }
    for (key, default) in [
        ("grace_period_seconds", DEFAULT_GRACE_PERIOD_SECONDS),
        (
            "graceful_shutdown_timeout_seconds",
            DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS,
        ),
    ] {
        let key = serde_norway::Value::String(key.into());
        if !section.contains_key(&key) {
            section.insert(key, serde_norway::Value::Number(default.into()));
        }
    }
    let mut defaults = match serde_norway::to_value(ServerConf::default()) {
        Ok(serde_norway::Value::Mapping(m)) => m,
        _ => serde_norway::Mapping::new(),
    };
    for (key, value) in section {
        defaults.insert(key, value);
    }
    let conf: ServerConf = serde_path_to_error::deserialize(serde_norway::Value::Mapping(defaults))
        .map_err(|e| {
            ConfigError::new(format!("server.{}", e.path()), e.into_inner().to_string())
        })?;
    if conf.threads == 0 {
        return Err(ConfigError::new("server.threads", "must be at least 1"));
    }
    Ok(conf)
}

fn known_server_keys() -> BTreeSet<String> {
    match serde_norway::to_value(ServerConf::default()) {
        Ok(serde_norway::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// Two listeners on one address would share a socket (Pingora binds with `SO_REUSEPORT`),
/// and connections would land on either at random. A wildcard and a specific address on the
/// same port overlap the same way (`[::]` is dual-stack: it takes IPv4 too).
fn check_listeners_distinct(proxy: &[SocketAddr], admin: SocketAddr) -> Result<(), ConfigError> {
    let listeners: Vec<(String, SocketAddr)> = proxy
        .iter()
        .enumerate()
        .map(|(i, addr)| (format!("proxy.listen[{i}]"), *addr))
        .chain(std::iter::once(("admin.listen".to_string(), admin)))
        .collect();
    for (later, (later_key, later_addr)) in listeners.iter().enumerate() {
        for (earlier_key, earlier_addr) in &listeners[..later] {
            let Some(overlap) = listeners_overlap(*earlier_addr, *later_addr) else {
                continue;
            };
            let why = match overlap {
                Overlap::Same => "two listeners cannot share one address".to_string(),
                Overlap::Wildcard => format!(
                    "a wildcard address and a specific address on the same port ({}) \
                     cannot both be bound ([::] takes IPv4 too)",
                    later_addr.port()
                ),
            };
            return Err(ConfigError::new(
                later_key.clone(),
                format!(
                    "`{later_addr}` overlaps {earlier_key} (`{earlier_addr}`): {why}; \
                     give each listener its own address"
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Overlap {
    Same,
    Wildcard,
}

fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> Option<Overlap> {
    // Port 0 asks the kernel for a fresh port each time: never the same socket.
    if a.port() != b.port() || a.port() == 0 {
        return None;
    }
    let (ip_a, ip_b) = (a.ip().to_canonical(), b.ip().to_canonical());
    if ip_a == ip_b {
        return Some(Overlap::Same);
    }
    let covers = |wildcard: std::net::IpAddr, other: std::net::IpAddr| match wildcard {
        std::net::IpAddr::V6(w) if w.is_unspecified() => true,
        std::net::IpAddr::V4(w) if w.is_unspecified() => other.is_ipv4(),
        _ => false,
    };
    (covers(ip_a, ip_b) || covers(ip_b, ip_a)).then_some(Overlap::Wildcard)
}

fn parse_listen(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    SocketAddr::from_str(text.trim()).map_err(|_| {
        ConfigError::new(
            key,
            format!("`{text}` is not an IP:port address (e.g. 0.0.0.0:8080 or [::]:8080)"),
        )
    })
}

impl ProxyFile {
    fn validate(self) -> Result<ProxySettings, ConfigError> {
        if self.listen.0.is_empty() {
            return Err(ConfigError::new(
                "proxy.listen",
                "needs at least one address",
            ));
        }
        let mut listen = Vec::new();
        let mut tls_listen = Vec::new();
        for (i, entry) in self.listen.0.iter().enumerate() {
            let addr = parse_listen(&format!("proxy.listen[{i}]"), &entry.address)?;
            if entry.tls == Some(true) && self.tls.is_none() {
                return Err(ConfigError::new(
                    format!("proxy.listen[{i}].tls"),
                    "a TLS listener needs proxy.tls (cert_file and key_file)",
                ));
            }
            if entry.tls.unwrap_or(self.tls.is_some()) {
                tls_listen.push(addr);
            }
            listen.push(addr);
        }
        let downstream_tls = match self.tls {
            None => None,
            Some(_) if tls_listen.is_empty() => {
                return Err(ConfigError::new(
                    "proxy.tls",
                    "no proxy.listen entry uses TLS (every one is `tls: false`); remove \
                     proxy.tls or make a listener TLS",
                ))
            }
            Some(files) => {
                let certificate = crate::tls::load(&files.cert_file, &files.key_file)
                    .map_err(|e| ConfigError::new(e.key(), e.to_string()))?;
                if let Some(warning) = &certificate.validity_warning {
                    log::warn!("proxy.tls.cert_file: {warning}");
                }
                Some(DownstreamTls {
                    listen: tls_listen,
                    cert_file: files.cert_file,
                    key_file: files.key_file,
                    certificate,
                    http2: self.http2.unwrap_or(true),
                })
            }
        };
        if downstream_tls.is_none() && self.http2 == Some(true) {
            return Err(ConfigError::new(
                "proxy.http2",
                "HTTP/2 is offered through ALPN on TLS listeners and none is configured \
                 (proxy.tls); for cleartext HTTP/2 set proxy.h2c: true",
            ));
        }
        let plain_listeners =
            listen.len() - downstream_tls.as_ref().map_or(0, |tls| tls.listen.len());
        if self.h2c && plain_listeners == 0 {
            return Err(ConfigError::new(
                "proxy.h2c",
                "cleartext HTTP/2 needs a plain listener, and every proxy.listen entry uses TLS",
            ));
        }
        if self.upstream.peers.is_empty() {
            return Err(ConfigError::new(
                "proxy.upstream.peers",
                "needs at least one peer",
            ));
        }
        let mut peers = Vec::new();
        let mut addresses = Vec::new();
        for (i, peer) in self.upstream.peers.iter().enumerate() {
            let key = format!("proxy.upstream.peers[{i}]");
            let resolved: Vec<SocketAddr> = peer
                .to_socket_addrs()
                .map_err(|e| ConfigError::new(&key, format!("cannot resolve `{peer}`: {e}")))?
                .collect();
            let first = resolved
                .first()
                .ok_or_else(|| ConfigError::new(&key, format!("`{peer}` resolves to nothing")))?;
            peers.push(*first);
            for addr in resolved {
                if !addresses.contains(&addr) {
                    addresses.push(addr);
                }
            }
        }
        let health = self.upstream.health_check;
        positive("proxy.upstream.health_check.interval", health.interval)?;
        positive("proxy.upstream.health_check.timeout", health.timeout)?;
        positive(
            "proxy.upstream.resolve_interval",
            self.upstream.resolve_interval,
        )?;
        if let Some(path) = &health.path {
            if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
                return Err(ConfigError::new(
                    "proxy.upstream.health_check.path",
                    format!("`{path}` is not an absolute path (e.g. /healthz)"),
                ));
            }
        }
        let expected_status = match (health.expected_status, &health.path) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "proxy.upstream.health_check.expected_status",
                    "applies to the HTTP check: set proxy.upstream.health_check.path too",
                ))
            }
            (Some(status), Some(_)) if !(100..=599).contains(&status) => {
                return Err(ConfigError::new(
                    "proxy.upstream.health_check.expected_status",
                    format!("{status} is not an HTTP status"),
                ))
            }
            (status, _) => status.unwrap_or(200),
        };
        if self.upstream.tls && self.upstream.sni.is_empty() {
            return Err(ConfigError::new(
                "proxy.upstream.sni",
                "must be set when proxy.upstream.tls is true",
            ));
        }
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.trim().parse::<IpNetwork>().map_err(|_| {
                    ConfigError::new(
                        format!("proxy.trusted_proxies[{i}]"),
                        format!(
                            "`{text}` is not an IP address or CIDR block \
                             (e.g. 10.0.0.1, 10.0.0.0/8 or fd00::/8)"
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pool = PoolSettings {
            names: self.upstream.peers,
            addresses,
            tls: self.upstream.tls,
            sni: self.upstream.sni.clone(),
            selection: self.upstream.selection,
            health_check: HealthCheckSettings {
                interval: health.interval.0,
                timeout: health.timeout.0,
                path: health.path,
                expected_status,
            },
            resolve_interval: self.upstream.resolve_interval.0,
        };
        Ok(ProxySettings {
            listen,
            peers,
            tls: self.upstream.tls,
            sni: self.upstream.sni,
            trusted_proxies,
            pool,
            downstream_tls,
            h2c: self.h2c,
        })
    }
}

impl AuthOriginFile {
    fn validate(self) -> Result<AuthOriginSettings, ConfigError> {
        let url = self.url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| ConfigError::new("auth_origin.url", format!("`{url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "auth_origin.url",
                "scheme must be http or https",
            ));
        }
        positive("auth_origin.timeout", self.timeout)?;
        positive("auth_origin.jwks_refresh", self.jwks_refresh)?;
        positive("auth_origin.feed_idle_timeout", self.feed_idle_timeout)?;
        positive(
            "auth_origin.feed_unsupported_retry",
            self.feed_unsupported_retry,
        )?;
        let max_concurrent_lookups = match usize::try_from(self.max_concurrent_lookups) {
            Ok(0) => {
                return Err(ConfigError::new(
                    "auth_origin.max_concurrent_lookups",
                    "must be at least 1",
                ))
            }
            Ok(n) if n <= MAX_CONCURRENT_LOOKUPS => n,
            _ => {
                return Err(ConfigError::new(
                    "auth_origin.max_concurrent_lookups",
                    format!("must be at most {MAX_CONCURRENT_LOOKUPS}"),
                ))
            }
        };
        Ok(AuthOriginSettings {
            url,
            timeout: self.timeout.0,
            jwks_refresh: self.jwks_refresh.0,
            feed: FeedSettings {
                enabled: self.feed,
                idle_timeout: self.feed_idle_timeout.0,
                unsupported_retry: self.feed_unsupported_retry.0,
            },
            max_concurrent_lookups,
        })
    }
}

/// Upper bound of `auth_origin.max_concurrent_lookups`: far above what one edge can use, and
/// within what the slot semaphore can hold on any platform.
pub const MAX_CONCURRENT_LOOKUPS: usize = 1_000_000;

fn positive(key: &str, d: HumanDuration) -> Result<(), ConfigError> {
    if d.0.is_zero() {
        Err(ConfigError::new(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

impl TokenFile {
    fn validate(self) -> Result<TokenSettings, ConfigError> {
        let sources = validate_sources(self.sources)?;
        if self.algorithms.is_empty() {
            return Err(ConfigError::new(
                "token.algorithms",
                "needs at least one algorithm",
            ));
        }
        let mut algorithms = Vec::new();
        for (i, name) in self.algorithms.iter().enumerate() {
            let alg = Algorithm::from_str(name).map_err(|_| {
                ConfigError::new(
                    format!("token.algorithms[{i}]"),
                    format!(
                        "unknown algorithm `{name}` (one of ES256, ES384, RS256, RS384, RS512, \
                         PS256, PS384, PS512, EdDSA, HS256, HS384, HS512)"
                    ),
                )
            })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        let keys = self.keys.validate()?;
        check_algorithms_fit_keys(&algorithms, &keys)?;
        for (key, value) in [
            ("token.account_claim", &self.account_claim),
            ("token.device_claim", &self.device_claim),
            ("token.time_claim", &self.time_claim),
        ] {
            if value.is_empty() {
                return Err(ConfigError::new(key, "must not be empty"));
            }
        }
        if let Some(max_lifetime) = self.max_lifetime {
            positive("token.max_lifetime", max_lifetime)?;
        }
        Ok(TokenSettings {
            sources,
            algorithms,
            issuer: self.issuer.filter(|s| !s.is_empty()),
            audience: self.audience.filter(|s| !s.is_empty()),
            leeway: self.leeway.0,
            account_claim: self.account_claim,
            device_claim: self.device_claim,
            time_claim: self.time_claim,
            keys,
            verified_cache_entries: self.verified_cache_entries,
            max_lifetime: self.max_lifetime.map(|d| d.0),
        })
    }
}

fn validate_sources(files: Vec<SourceFile>) -> Result<Vec<TokenSource>, ConfigError> {
    if files.is_empty() {
        return Err(ConfigError::new(
            "token.sources",
            "needs at least one source",
        ));
    }
    let mut sources = Vec::new();
    for (i, file) in files.into_iter().enumerate() {
        let key = format!("token.sources[{i}]");
        let kinds = [&file.header, &file.query, &file.cookie]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if kinds != 1 {
            return Err(ConfigError::new(
                key,
                "each source is exactly one of {header: NAME, prefix: ...}, {query: NAME}, {cookie: NAME}",
            ));
        }
        if file.prefix.is_some() && file.header.is_none() {
            return Err(ConfigError::new(
                format!("{key}.prefix"),
                "prefix only applies to a header source",
            ));
        }
        let source = if let Some(name) = file.header {
            let name = http::HeaderName::from_str(name.trim()).map_err(|_| {
                ConfigError::new(
                    format!("{key}.header"),
                    format!("`{name}` is not a header name"),
                )
            })?;
            TokenSource::Header {
                name,
                prefix: file.prefix.filter(|p| !p.is_empty()),
            }
        } else if let Some(name) = file.query {
            non_empty(&format!("{key}.query"), &name)?;
            TokenSource::Query { name }
        } else if let Some(name) = file.cookie {
            non_empty(&format!("{key}.cookie"), &name)?;
            TokenSource::Cookie { name }
        } else {
            unreachable!("exactly one kind was checked above")
        };
        sources.push(source);
    }
    Ok(sources)
}

fn non_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        Err(ConfigError::new(key, "must not be empty"))
    } else {
        Ok(())
    }
}

impl KeysFile {
    fn validate(self) -> Result<KeySource, ConfigError> {
        let chosen = [
            self.jwks == Some(true),
            self.pem_file.is_some(),
            self.hmac_secret_env.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen > 1 {
            return Err(ConfigError::new(
                "token.keys",
                "choose one of jwks: true, pem_file: PATH, hmac_secret_env: NAME",
            ));
        }
        if let Some(path) = self.pem_file {
            let pem = std::fs::read(&path).map_err(|e| {
                ConfigError::new(
                    "token.keys.pem_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            return Ok(KeySource::Pem(pem));
        }
        if let Some(var) = self.hmac_secret_env {
            let secret = std::env::var_os(&var).ok_or_else(|| {
                ConfigError::new(
                    "token.keys.hmac_secret_env",
                    format!("environment variable `{var}` is not set"),
                )
            })?;
            let secret = secret.into_encoded_bytes();
            if secret.len() < 32 {
                return Err(ConfigError::new(
                    "token.keys.hmac_secret_env",
                    format!("the secret in `{var}` is shorter than 32 bytes"),
                ));
            }
            return Ok(KeySource::HmacSecret(secret));
        }
        if self.jwks == Some(false) {
            return Err(ConfigError::new(
                "token.keys",
                "jwks: false needs pem_file or hmac_secret_env instead",
            ));
        }
        Ok(KeySource::Jwks)
    }
}

/// An algorithm that no configured key can verify would reject every token: say so at load.
fn check_algorithms_fit_keys(algs: &[Algorithm], keys: &KeySource) -> Result<(), ConfigError> {
    for (i, alg) in algs.iter().enumerate() {
        let hmac = alg.family() == AlgorithmFamily::Hmac;
        let ok = match keys {
            KeySource::HmacSecret(_) => hmac,
            // Symmetric keys are never taken from a JWKS or a public PEM file: anybody
            // holding the public material could then mint tokens.
            KeySource::Jwks | KeySource::Pem(_) => !hmac,
        };
        if !ok {
            return Err(ConfigError::new(
                format!("token.algorithms[{i}]"),
                format!("{alg:?} does not fit the configured token.keys ({keys:?})"),
            ));
        }
    }
    Ok(())
}

impl CacheFile {
    fn validate(self) -> Result<CacheSettings, ConfigError> {
        if self.max_accounts == 0 {
            return Err(ConfigError::new("cache.max_accounts", "must be at least 1"));
        }
        positive("cache.refresh_after", self.refresh_after)?;
        positive("cache.max_stale", self.max_stale)?;
        if self.max_stale.0 < self.refresh_after.0 {
            return Err(ConfigError::new(
                "cache.max_stale",
                "must be at least cache.refresh_after",
            ));
        }
        if self.max_devices_per_account == 0 {
            return Err(ConfigError::new(
                "cache.max_devices_per_account",
                "must be at least 1",
            ));
        }
        Ok(CacheSettings {
            max_accounts: self.max_accounts,
            refresh_after: self.refresh_after.0,
            max_stale: self.max_stale.0,
            on_origin_unavailable: self.on_origin_unavailable,
            max_devices_per_account: usize::try_from(self.max_devices_per_account)
                .unwrap_or(usize::MAX),
        })
    }
}

impl LimitsFile {
    fn validate(self) -> Result<LimitsSettings, ConfigError> {
        let key = "limits.invalid_tokens_per_client";
        let invalid_tokens_per_client = match self.invalid_tokens_per_client {
            BudgetFile::Off => None,
            BudgetFile::On(rates) => {
                if rates.per_second == 0 {
                    return Err(ConfigError::new(
                        format!("{key}.per_second"),
                        "must be at least 1 (write `invalid_tokens_per_client: off` for no budget)",
                    ));
                }
                // The budget's window is burst / per_second: at least the estimator's
                // one-second resolution.
                if rates.burst < rates.per_second {
                    return Err(ConfigError::new(
                        format!("{key}.burst"),
                        format!("must be at least per_second ({})", rates.per_second),
                    ));
                }
                Some(BudgetSettings {
                    per_second: rates.per_second,
                    burst: rates.burst,
                })
            }
        };
        Ok(LimitsSettings {
            invalid_tokens_per_client,
        })
    }
}

impl ForwardFile {
    fn validate(self) -> Result<ForwardSettings, ConfigError> {
        let header = |key: &str, name: &str| {
            http::HeaderName::from_str(name.trim())
                .map_err(|_| ConfigError::new(key, format!("`{name}` is not a header name")))
        };
        Ok(ForwardSettings {
            account_header: header("forward.account_header", &self.account_header)?,
            device_header: header("forward.device_header", &self.device_header)?,
            strip_token: self.strip_token,
            header_prefix: header_prefix(&self.header_prefix)?,
        })
    }
}

/// Header names a forwarded request cannot do without: a prefix that covers one of them
/// would strip it from every request.
const ESSENTIAL_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "content-type",
    "connection",
    "upgrade",
    "te",
    "expect",
];

/// The prefix, lower-cased (header names are case-insensitive): non-empty, only characters
/// a header name may hold, and not covering a header the request needs.
fn header_prefix(prefix: &str) -> Result<String, ConfigError> {
    let key = "forward.header_prefix";
    if prefix.is_empty() {
        return Err(ConfigError::new(
            key,
            "must not be empty (it would cover every header)",
        ));
    }
    // A header name is an RFC 9110 token; any start of one is a token too.
    if http::HeaderName::from_bytes(prefix.as_bytes()).is_err() {
        return Err(ConfigError::new(
            key,
            format!("`{prefix}` is not the start of a header name (letters, digits, -, _ and the like; no spaces or colons)"),
        ));
    }
    let prefix = prefix.to_ascii_lowercase();
    if let Some(essential) = ESSENTIAL_HEADERS.iter().find(|h| h.starts_with(&prefix)) {
        return Err(ConfigError::new(
            key,
            format!("`{prefix}` covers `{essential}`, which every request may need"),
        ));
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
proxy:
  listen: ["127.0.0.1:8080"]
  upstream: { peers: ["127.0.0.1:8000"] }
auth_origin:
  url: "http://127.0.0.1:7000/"
token:
  algorithms: [ES256]
"#;

    fn error_for(yaml: &str) -> ConfigError {
        Settings::from_yaml(yaml).expect_err("config should be rejected")
    }

    #[test]
    fn minimal_config_gets_edge_defaults() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert_eq!(s.auth_origin.url, "http://127.0.0.1:7000");
        assert_eq!(s.auth_origin.timeout, Duration::from_millis(250));
        assert_eq!(s.auth_origin.max_concurrent_lookups, 64);
        assert_eq!(s.cache.on_origin_unavailable, OnOriginUnavailable::Deny);
        assert_eq!(s.token.sources.len(), 3);
        assert_eq!(
            s.server.grace_period_seconds,
            Some(DEFAULT_GRACE_PERIOD_SECONDS)
        );
        assert!(s.forward.strip_token);
    }

    #[test]
    fn access_log_is_off_by_default_and_samples_all_allowed_requests() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert!(!s.access_log.enabled);
        assert_eq!(s.access_log.path, None);
        assert_eq!(s.access_log.sample_allowed, 1.0);
    }

    #[test]
    fn access_log_sample_rate_out_of_range_names_the_key() {
        let e = error_for(&format!(
            "{MINIMAL}access_log: {{ enabled: true, sample_allowed: 1.5 }}\n"
        ));
        assert_eq!(e.key, "access_log.sample_allowed", "{e}");
    }

    #[test]
    fn routes_default_to_none_and_mode_to_enforce() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert_eq!(s.routes.default, Mode::Enforce);
        assert!(s.routes.routes.is_empty());
    }

    #[test]
    fn routes_are_read_in_order() {
        let s = Settings::from_yaml(&format!(
            "{MINIMAL}mode: observe\nroutes:\n  - {{ prefix: /public/, mode: off }}\n  - {{ prefix: /live/, mode: enforce }}\n"
        ))
        .unwrap();
        assert_eq!(s.routes.default, Mode::Observe);
        assert_eq!(s.routes.routes[0].mode, Mode::Off);
        assert_eq!(s.routes.routes[1].prefix, "/live/");
    }

    #[test]
    fn unknown_route_mode_names_the_key() {
        let e = error_for(&format!(
            "{MINIMAL}routes:\n  - {{ prefix: /a/, mode: off }}\n  - {{ prefix: /b/, mode: shadow }}\n"
        ));
        assert_eq!(e.key, "routes[1].mode", "{e}");
    }

    #[test]
    fn top_level_mode_off_is_rejected() {
        assert_eq!(error_for(&format!("{MINIMAL}mode: off\n")).key, "mode");
        assert_eq!(error_for(&format!("{MINIMAL}mode: audit\n")).key, "mode");
    }

    #[test]
    fn duplicate_or_shadowed_route_prefix_names_the_key() {
        let routes =
            "routes:\n  - { prefix: /public/, mode: off }\n  - { prefix: /live/, mode: enforce }\n";
        let e = error_for(&format!(
            "{MINIMAL}{routes}  - {{ prefix: /live/, mode: observe }}\n"
        ));
        assert_eq!(e.key, "routes[2].prefix", "{e}");
        assert!(e.message.contains("routes[1].prefix"), "{e}");
        let e = error_for(&format!(
            "{MINIMAL}{routes}  - {{ prefix: /live/hd/, mode: observe }}\n"
        ));
        assert_eq!(e.key, "routes[2].prefix", "{e}");
        // The more specific prefix first is fine.
        Settings::from_yaml(&format!(
            "{MINIMAL}routes:\n  - {{ prefix: /live/hd/, mode: observe }}\n  - {{ prefix: /live/, mode: enforce }}\n"
        ))
        .unwrap();
    }

    #[test]
    fn route_prefix_must_be_a_plain_path() {
        for bad in ["live/", "/live/../public/", "/a%2fb/", "//x/"] {
            let e = error_for(&format!(
                "{MINIMAL}routes:\n  - {{ prefix: \"{bad}\", mode: off }}\n"
            ));
            assert_eq!(e.key, "routes[0].prefix", "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let e = error_for(&MINIMAL.replace("  algorithms", "  algoritms: [ES256]\n  algorithms"));
        assert!(e.to_string().contains("algoritms"), "{e}");
        assert!(e.key.starts_with("token"), "{e}");
    }

    #[test]
    fn unknown_server_key_is_an_error() {
        let e = error_for(&format!("server:\n  thraeds: 2\n{MINIMAL}"));
        assert_eq!(e.key, "server.thraeds");
    }

    #[test]
    fn server_keys_pass_through() {
        let s = Settings::from_yaml(&format!(
            "server:\n  threads: 3\n  grace_period_seconds: 1\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(s.server.threads, 3);
        assert_eq!(s.server.grace_period_seconds, Some(1));
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = error_for(&MINIMAL.replace("url:", "timeout: 5parsecs\n  url:"));
        assert_eq!(e.key, "auth_origin.timeout");
        assert!(e.message.contains("5parsecs"), "{e}");
    }

    #[test]
    fn unknown_algorithm_names_its_position() {
        let e = error_for(&MINIMAL.replace("[ES256]", "[ES256, XS256]"));
        assert_eq!(e.key, "token.algorithms[1]");
    }

    #[test]
    fn hmac_algorithm_with_jwks_is_rejected() {
        let e = error_for(&MINIMAL.replace("[ES256]", "[HS256]"));
        assert_eq!(e.key, "token.algorithms[0]");
    }

    #[test]
    fn empty_peer_list_is_rejected() {
        let e = error_for(&MINIMAL.replace(r#"["127.0.0.1:8000"]"#, "[]"));
        assert_eq!(e.key, "proxy.upstream.peers");
    }

    #[test]
    fn source_with_two_kinds_is_rejected() {
        let e = error_for(&MINIMAL.replace(
            "  algorithms",
            "  sources: [{header: x-token, query: token}]\n  algorithms",
        ));
        assert_eq!(e.key, "token.sources[0]");
    }

    #[test]
    fn overlapping_listeners_are_recognised() {
        let overlap = |a: &str, b: &str| listeners_overlap(a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(overlap("127.0.0.1:80", "127.0.0.1:80"), Some(Overlap::Same));
        assert_eq!(
            overlap("[::ffff:127.0.0.1]:80", "127.0.0.1:80"),
            Some(Overlap::Same)
        );
        assert_eq!(
            overlap("0.0.0.0:80", "10.0.0.1:80"),
            Some(Overlap::Wildcard)
        );
        assert_eq!(overlap("[::1]:80", "[::]:80"), Some(Overlap::Wildcard));
        assert_eq!(overlap("[::]:80", "0.0.0.0:80"), Some(Overlap::Wildcard));
        assert_eq!(overlap("0.0.0.0:80", "[::1]:80"), None);
        assert_eq!(overlap("127.0.0.1:80", "127.0.0.2:80"), None);
        assert_eq!(overlap("127.0.0.1:80", "127.0.0.1:81"), None);
        assert_eq!(overlap("127.0.0.1:0", "127.0.0.1:0"), None);
    }

    #[test]
    fn header_prefix_is_lower_cased_and_checked() {
        let prefix = |p: &str| {
            Settings::from_yaml(&format!("{MINIMAL}forward:\n  header_prefix: \"{p}\"\n"))
                .map(|s| s.forward.header_prefix)
        };
        assert_eq!(prefix("X-Edge-").unwrap(), "x-edge-");
        for bad in ["", "x edge", "x-edge:", "cont"] {
            assert_eq!(
                prefix(bad).unwrap_err().key,
                "forward.header_prefix",
                "{bad}"
            );
        }
        assert_eq!(
            Settings::from_yaml(MINIMAL).unwrap().forward.header_prefix,
            "x-epochgate-"
        );
    }

    #[test]
    fn missing_hmac_env_names_the_variable_not_a_value() {
        let e = error_for(&MINIMAL.replace(
            "[ES256]",
            "[HS256]\n  keys: { hmac_secret_env: EPOCHGATE_TEST_UNSET_VAR }",
        ));
        assert_eq!(e.key, "token.keys.hmac_secret_env");
        assert!(e.message.contains("EPOCHGATE_TEST_UNSET_VAR"));
    }

    #[test]
    fn max_lifetime_is_off_by_default_and_read_as_a_duration() {
        assert_eq!(
            Settings::from_yaml(MINIMAL).unwrap().token.max_lifetime,
            None
        );
        let s = Settings::from_yaml(&MINIMAL.replace("[ES256]", "[ES256]\n  max_lifetime: 30d"))
            .unwrap();
        assert_eq!(s.token.max_lifetime, Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn zero_max_lifetime_is_rejected() {
        let e = error_for(&MINIMAL.replace("[ES256]", "[ES256]\n  max_lifetime: 0s"));
        assert_eq!(e.key, "token.max_lifetime");
    }

    #[test]
    fn the_invalid_token_budget_is_on_by_default() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert_eq!(
            s.limits.invalid_tokens_per_client,
            Some(BudgetSettings {
                per_second: 20,
                burst: 100
            })
        );
        assert!(s.proxy.trusted_proxies.is_empty());
    }

    #[test]
    fn the_invalid_token_budget_can_be_turned_off() {
        for off in ["off", "null", "~"] {
            let s = Settings::from_yaml(&format!(
                "{MINIMAL}limits:\n  invalid_tokens_per_client: {off}\n"
            ))
            .unwrap();
            assert_eq!(s.limits.invalid_tokens_per_client, None, "{off}");
        }
    }

    #[test]
    fn a_bad_invalid_token_budget_names_the_key() {
        for (budget, key) in [
            ("{per_second: 0, burst: 10}", "per_second"),
            ("{per_second: 20, burst: 10}", "burst"),
            ("{per_second: 20, burts: 100}", "burts"),
            ("{per_second: -1, burst: 10}", "per_second"),
            ("{per_second: 20}", "burst"),
        ] {
            let e = error_for(&format!(
                "{MINIMAL}limits:\n  invalid_tokens_per_client: {budget}\n"
            ));
            assert!(
                e.key.starts_with("limits.invalid_tokens_per_client"),
                "{budget}: {e}"
            );
            assert!(e.to_string().contains(key), "{budget}: {e}");
        }
        let e = error_for(&format!(
            "{MINIMAL}limits:\n  invalid_tokens_per_client: sometimes\n"
        ));
        assert_eq!(e.key, "limits.invalid_tokens_per_client");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_cidr_blocks() {
        let with = |list: &str| {
            MINIMAL.replace(
                "  upstream:",
                &format!("  trusted_proxies: {list}\n  upstream:"),
            )
        };
        let s = Settings::from_yaml(&with(r#"["10.0.0.0/8", "192.0.2.1", "fd00::/8"]"#)).unwrap();
        assert_eq!(s.proxy.trusted_proxies.len(), 3);
        let e = error_for(&with(r#"["10.0.0.0/8", "lb.internal"]"#));
        assert_eq!(e.key, "proxy.trusted_proxies[1]");
        assert!(e.message.contains("lb.internal"), "{e}");
    }

    #[test]
    fn listen_takes_one_address_or_a_list_of_entries() {
        let one = Settings::from_yaml(&MINIMAL.replace(
            r#"listen: ["127.0.0.1:8080"]"#,
            r#"listen: "127.0.0.1:8080""#,
        ))
        .unwrap();
        assert_eq!(one.proxy.listen, ["127.0.0.1:8080".parse().unwrap()]);
        let entries = Settings::from_yaml(&MINIMAL.replace(
            r#"listen: ["127.0.0.1:8080"]"#,
            r#"listen: ["127.0.0.1:8080", {address: "127.0.0.1:8081", tls: false}]"#,
        ))
        .unwrap();
        assert_eq!(entries.proxy.listen.len(), 2);
        assert!(entries.proxy.downstream_tls.is_none());
    }

    #[test]
    fn unknown_key_in_a_listen_entry_is_named() {
        let e = error_for(&MINIMAL.replace(
            r#"listen: ["127.0.0.1:8080"]"#,
            r#"listen: [{adress: "127.0.0.1:8080"}]"#,
        ));
        assert!(e.key.starts_with("proxy.listen[0]"), "{e}");
        assert!(e.message.contains("adress"), "{e}");
    }

    #[test]
    fn health_check_expected_status_needs_a_path() {
        let e = error_for(&MINIMAL.replace(
            r#"upstream: { peers: ["127.0.0.1:8000"] }"#,
            r#"upstream: { peers: ["127.0.0.1:8000"], health_check: { expected_status: 204 } }"#,
        ));
        assert_eq!(e.key, "proxy.upstream.health_check.expected_status");
    }

    #[test]
    fn pool_defaults() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        let pool = &s.proxy.pool;
        assert_eq!(pool.selection, Selection::RoundRobin);
        assert_eq!(pool.health_check.interval, Duration::from_secs(5));
        assert_eq!(pool.health_check.timeout, Duration::from_secs(1));
        assert_eq!(pool.health_check.path, None);
        assert_eq!(pool.resolve_interval, Duration::from_secs(60));
        assert_eq!(pool.addresses, ["127.0.0.1:8000".parse().unwrap()]);
    }

    #[test]
    fn bad_on_origin_unavailable_is_rejected() {
        let e = error_for(&format!(
            "{MINIMAL}cache:\n  on_origin_unavailable: maybe\n"
        ));
        assert_eq!(e.key, "cache.on_origin_unavailable");
    }

    #[test]
    fn zero_max_concurrent_lookups_is_rejected() {
        let e = error_for(&MINIMAL.replace("url:", "max_concurrent_lookups: 0\n  url:"));
        assert_eq!(e.key, "auth_origin.max_concurrent_lookups");
        assert!(e.message.contains("at least 1"), "{e}");
    }

    #[test]
    fn negative_max_concurrent_lookups_names_the_key() {
        let e = error_for(&MINIMAL.replace("url:", "max_concurrent_lookups: -8\n  url:"));
        assert_eq!(e.key, "auth_origin.max_concurrent_lookups");
    }
}
