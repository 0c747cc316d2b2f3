//! `EdgeConfig`: the edge's YAML config, built from typed calls on top of the test defaults,
//! then written out, checked with `epochgate -t`, or started as an [`Edge`].
//!
//! ```ignore
//! let edge = EdgeConfig::new(&origin, &upstream)
//!     .refresh_after("1s")
//!     .mode("observe")
//!     .route("/public/", "off")
//!     .set("limits.invalid_tokens_per_client", "off")
//!     .start()
//!     .await;
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::tls::CertFiles;
use super::{free_port, run_cli, Edge, TestOrigin, Upstream, AUDIENCE, ISSUER};

/// The config every test starts from: two threads, no grace period, a 250 ms origin timeout,
/// the test issuer and audience, and a cache that neither refreshes nor expires within a test.
fn defaults(origin_url: &str, upstream: SocketAddr, proxy: u16, admin: u16, dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"server:
  threads: 2
  pid_file: "{dir}/edge.pid"
  upgrade_sock: "{dir}/upgrade.sock"
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
proxy:
  listen: ["127.0.0.1:{proxy}"]
  upstream: {{ peers: ["{upstream}"] }}
admin:
  listen: "127.0.0.1:{admin}"
auth_origin:
  url: "{origin_url}"
  timeout: 250ms
token:
  algorithms: [ES256, RS256, EdDSA]
  issuer: "{ISSUER}"
  audience: "{AUDIENCE}"
  leeway: 5s
cache:
  refresh_after: 30s
  max_stale: 10m
"#
    )
}

/// An edge's config file in the making, with the temp dir and loopback ports it will use.
pub struct EdgeConfig {
    root: Value,
    dir: tempfile::TempDir,
    proxy: u16,
    admin: u16,
    env: Vec<(String, String)>,
}

impl EdgeConfig {
    /// The test config for an edge in front of `upstream`, asking `origin`.
    pub fn new(origin: &TestOrigin, upstream: &Upstream) -> EdgeConfig {
        EdgeConfig::to(&origin.url(), upstream.addr)
    }

    /// The test config for any auth origin URL and upstream address.
    pub fn to(origin_url: &str, upstream: SocketAddr) -> EdgeConfig {
        let dir = tempfile::tempdir().expect("a temp dir for the edge");
        let (proxy, admin) = (free_port(), free_port());
        let text = defaults(origin_url, upstream, proxy, admin, dir.path());
        EdgeConfig {
            root: serde_norway::from_str(&text).expect("the default test config is YAML"),
            dir,
            proxy,
            admin,
            env: Vec::new(),
        }
    }

    /// A config only to be checked (`epochgate -t`): nothing listens at its origin or upstream.
    pub fn offline() -> EdgeConfig {
        EdgeConfig::to("http://127.0.0.1:9", SocketAddr::from(([127, 0, 0, 1], 9)))
    }

    // --- any key ---

    /// Sets the dotted key path (`limits.invalid_tokens_per_client`) to a YAML value (`off`,
    /// `1s`, `[a, b]`, `{ per_second: 1, burst: 20 }`), making the sections on the way.
    pub fn set(self, path: &str, yaml: &str) -> EdgeConfig {
        let value: Value = serde_norway::from_str(yaml)
            .unwrap_or_else(|e| panic!("`{path}: {yaml}` is not a YAML value: {e}"));
        self.put(path, value)
    }

    /// Removes the dotted key path, if it is there.
    pub fn remove(mut self, path: &str) -> EdgeConfig {
        let (parent, key) = match path.rsplit_once('.') {
            Some((parent, key)) => (Some(parent), key),
            None => (None, path),
        };
        let section = match parent {
            Some(parent) => section(&mut self.root, parent),
            None => self.root.as_mapping_mut().expect("the config is a mapping"),
        };
        section.shift_remove(key);
        self
    }

    fn put(mut self, path: &str, value: impl Into<Value>) -> EdgeConfig {
        let (parent, key) = match path.rsplit_once('.') {
            Some((parent, key)) => (Some(parent), key),
            None => (None, path),
        };
        let section = match parent {
            Some(parent) => section(&mut self.root, parent),
            None => self.root.as_mapping_mut().expect("the config is a mapping"),
        };
        section.insert(key.into(), value.into());
        self
    }

    // --- server ---

    pub fn threads(self, threads: u64) -> EdgeConfig {
        self.put("server.threads", threads)
    }

    pub fn grace_period_seconds(self, seconds: u64) -> EdgeConfig {
        self.put("server.grace_period_seconds", seconds)
    }

    // --- proxy ---

    /// Replaces the upstream peers.
    pub fn peers(self, peers: &[SocketAddr]) -> EdgeConfig {
        let list: Vec<Value> = peers.iter().map(|p| p.to_string().into()).collect();
        self.put("proxy.upstream.peers", list)
    }

    /// Serves TLS on the proxy listener with this certificate.
    pub fn tls(self, cert: &CertFiles) -> EdgeConfig {
        self.tls_files(&cert.cert_file, &cert.key_file)
    }

    /// `proxy.tls` with these files, whatever they hold.
    pub fn tls_files(self, cert_file: &Path, key_file: &Path) -> EdgeConfig {
        let mut tls = Mapping::new();
        tls.insert("cert_file".into(), path_value(cert_file));
        tls.insert("key_file".into(), path_value(key_file));
        self.put("proxy.tls", tls)
    }

    pub fn h2c(self, on: bool) -> EdgeConfig {
        self.put("proxy.h2c", on)
    }

    pub fn trusted_proxies(self, proxies: &[&str]) -> EdgeConfig {
        let list: Vec<Value> = proxies.iter().map(|p| (*p).into()).collect();
        self.put("proxy.trusted_proxies", list)
    }

    // --- auth_origin ---

    pub fn origin_timeout(self, timeout: &str) -> EdgeConfig {
        self.put("auth_origin.timeout", timeout)
    }

    pub fn feed(self, on: bool) -> EdgeConfig {
        self.put("auth_origin.feed", on)
    }

    pub fn feed_unsupported_retry(self, every: &str) -> EdgeConfig {
        self.put("auth_origin.feed_unsupported_retry", every)
    }

    pub fn feed_idle_timeout(self, timeout: &str) -> EdgeConfig {
        self.put("auth_origin.feed_idle_timeout", timeout)
    }

    pub fn jwks_refresh(self, every: &str) -> EdgeConfig {
        self.put("auth_origin.jwks_refresh", every)
    }

    pub fn max_concurrent_lookups(self, lookups: u64) -> EdgeConfig {
        self.put("auth_origin.max_concurrent_lookups", lookups)
    }

    // --- token ---

    pub fn algorithms(self, algorithms: &[&str]) -> EdgeConfig {
        let list: Vec<Value> = algorithms.iter().map(|a| (*a).into()).collect();
        self.put("token.algorithms", list)
    }

    /// HS256 with the secret in the environment variable `name` (of the edge process: see
    /// [`EdgeConfig::env`]); no JWKS.
    pub fn hmac_secret_env(self, name: &str) -> EdgeConfig {
        self.algorithms(&["HS256"])
            .set("token.keys", &format!("{{ hmac_secret_env: {name} }}"))
    }

    pub fn max_lifetime(self, lifetime: &str) -> EdgeConfig {
        self.put("token.max_lifetime", lifetime)
    }

    // --- cache ---

    pub fn refresh_after(self, after: &str) -> EdgeConfig {
        self.put("cache.refresh_after", after)
    }

    pub fn max_stale(self, stale: &str) -> EdgeConfig {
        self.put("cache.max_stale", stale)
    }

    /// `deny` or `allow`.
    pub fn on_origin_unavailable(self, policy: &str) -> EdgeConfig {
        self.put("cache.on_origin_unavailable", policy)
    }

    pub fn max_accounts(self, accounts: u64) -> EdgeConfig {
        self.put("cache.max_accounts", accounts)
    }

    pub fn max_devices_per_account(self, devices: u64) -> EdgeConfig {
        self.put("cache.max_devices_per_account", devices)
    }

    // --- fleet replica ---

    /// `replica:` with these NATS servers, bucket and `replica.max_stale`.
    pub fn replica(self, servers: &[String], bucket: &str, max_stale: &str) -> EdgeConfig {
        let servers: Vec<Value> = servers.iter().map(|s| Value::from(s.as_str())).collect();
        self.put("replica.nats.servers", Value::Sequence(servers))
            .put("replica.nats.bucket", bucket)
            .put("replica.max_stale", max_stale)
    }

    pub fn replica_max_stale(self, stale: &str) -> EdgeConfig {
        self.put("replica.max_stale", stale)
    }

    // --- rollout ---

    /// The top-level mode: `enforce`, `observe` or `off`.
    pub fn mode(self, mode: &str) -> EdgeConfig {
        self.put("mode", mode)
    }

    /// Appends a route: requests under `prefix` take `mode`.
    pub fn route(mut self, prefix: &str, mode: &str) -> EdgeConfig {
        let root = self.root.as_mapping_mut().expect("the config is a mapping");
        let routes = root
            .entry("routes".into())
            .or_insert_with(|| Value::Sequence(Vec::new()));
        let mut route = Mapping::new();
        route.insert("prefix".into(), prefix.into());
        route.insert("mode".into(), mode.into());
        routes
            .as_sequence_mut()
            .expect("`routes` is a list")
            .push(route.into());
        self
    }

    // --- forward ---

    pub fn strip_token(self, strip: bool) -> EdgeConfig {
        self.put("forward.strip_token", strip)
    }

    pub fn header_prefix(self, prefix: &str) -> EdgeConfig {
        self.put("forward.header_prefix", prefix)
    }

    // --- limits ---

    /// `off`, or a YAML map such as `{ per_second: 1, burst: 20 }`.
    pub fn invalid_tokens_per_client(self, budget: &str) -> EdgeConfig {
        self.set("limits.invalid_tokens_per_client", budget)
    }

    // --- access_log ---

    /// Writes the access log to [`EdgeConfig::access_log_path`], logging this share of the
    /// allowed requests (every other request is always logged).
    pub fn access_log(self, sample_allowed: f64) -> EdgeConfig {
        let path = path_value(&self.access_log_path());
        self.put("access_log.enabled", true)
            .put("access_log.path", path)
            .put("access_log.sample_allowed", sample_allowed)
    }

    pub fn access_log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }

    // --- the process ---

    /// An environment variable of the edge process.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> EdgeConfig {
        self.env.push((name.to_string(), value.into()));
        self
    }

    /// The port the default `proxy.listen` names.
    pub fn proxy_port(&self) -> u16 {
        self.proxy
    }

    /// The port the default `admin.listen` names.
    pub fn admin_port(&self) -> u16 {
        self.admin
    }

    /// The directory the edge's files go in (config, pid file, logs); removed with the edge.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config as YAML.
    pub fn yaml(&self) -> String {
        serde_norway::to_string(&self.root).expect("a YAML value serializes")
    }

    /// Writes the config as `epochgate.yaml` in [`EdgeConfig::dir`] and gives its path.
    pub fn write(&self) -> PathBuf {
        let path = self.dir.path().join("epochgate.yaml");
        std::fs::write(&path, self.yaml()).expect("write the edge config");
        path
    }

    /// `epochgate -t` on the config: exit code and output.
    pub fn check(&self) -> (i32, String) {
        let path = self.write();
        run_cli(&["-t", "-c", path.to_str().expect("a UTF-8 temp path")])
    }

    /// Starts the edge process without waiting for it to be ready.
    pub fn spawn(self) -> Edge {
        let yaml = self.yaml();
        let EdgeConfig {
            dir,
            proxy,
            admin,
            env,
            ..
        } = self;
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        Edge::spawn_config_env(dir, proxy, admin, &env, |_| yaml)
    }

    /// Starts the edge process and waits until `/readyz` says it is ready.
    pub async fn start(self) -> Edge {
        let edge = self.spawn();
        edge.wait_ready().await;
        edge
    }
}

/// The mapping at the dotted `path`, made (empty) where missing.
fn section<'a>(root: &'a mut Value, path: &str) -> &'a mut Mapping {
    path.split('.').fold(
        root.as_mapping_mut().expect("the config is a mapping"),
        |mapping, key| {
            mapping
                .entry(key.into())
                .or_insert_with(|| Value::Mapping(Mapping::new()))
                .as_mapping_mut()
                .unwrap_or_else(|| panic!("`{key}` of `{path}` is not a section"))
        },
    )
}

fn path_value(path: &Path) -> Value {
    path.display().to_string().into()
}
