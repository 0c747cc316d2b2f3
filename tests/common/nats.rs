//! nats-server processes for the fleet replica's tests: one server on a free loopback port
//! with JetStream storage in a temp dir, a three-node cluster, or a hub and a site's leaf
//! node holding a mirror of the bucket; a node can be stopped and started again on the same
//! port and store; each is killed on drop. Also a TCP relay in front of a server whose
//! connections a test can cut, and helpers to fill a bucket.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::task::JoinSet;

use epochgate::revocation::replica::publish::bucket_stream_config;

use super::free_port;

/// One nats-server process (a single server or a cluster node).
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub name: String,
    /// Extra arguments (the cluster ones).
    args: Vec<String>,
    store: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

impl NatsServer {
    /// A single JetStream server on a free loopback port, accepting connections.
    pub fn start() -> NatsServer {
        NatsServer::start_single(Arc::new(tempfile::tempdir().expect("temp dir")), Vec::new())
    }

    /// A single JetStream server started with the config file `config` (written to its temp
    /// dir), e.g. users and their permissions.
    pub fn start_with_config(config: &str) -> NatsServer {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let path = dir.path().join("nats-server.conf");
        std::fs::write(&path, config).expect("write the nats-server config");
        let args = vec!["-c".to_string(), path.to_string_lossy().into_owned()];
        NatsServer::start_single(dir, args)
    }

    fn start_single(dir: Arc<tempfile::TempDir>, args: Vec<String>) -> NatsServer {
        let mut server = NatsServer::new(free_port(), "n1", args, dir);
        server.start_again();
        server
    }

    fn new(port: u16, name: &str, args: Vec<String>, dir: Arc<tempfile::TempDir>) -> NatsServer {
        let store = dir.path().join(name);
        NatsServer {
            child: None,
            port,
            name: name.to_string(),
            args,
            store,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the process (again) on the same port and store, and waits until it accepts
    /// (10 s at most).
    pub fn start_again(&mut self) {
        self.start_again_within(Duration::from_secs(10));
    }

    /// [`NatsServer::start_again`], waiting up to `limit` (a server recovering millions of
    /// messages from its store takes longer to accept).
    pub fn start_again_within(&mut self, limit: Duration) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::File::create(self.store.with_extension("log")).expect("log file");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(&self.store)
            .args(["-n", &self.name])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("nats-server runs (apt-get install nats-server)");
        self.child = Some(child);
        self.wait_listening(limit);
    }

    /// Polls the port until the server accepts (`limit` at most).
    fn wait_listening(&self, limit: Duration) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + limit;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} is not accepting on {addr}; its log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process; its port and store are kept for [`NatsServer::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.with_extension("log")).unwrap_or_default()
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A three-node JetStream cluster on loopback.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes: Vec<NatsServer> = (0..3)
            .map(|i| {
                let routes: Vec<String> = (0..3)
                    .filter(|&j| j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", cluster_ports[j]))
                    .collect();
                let args = vec![
                    "--cluster_name".to_string(),
                    "epochgate-test".to_string(),
                    "--cluster".to_string(),
                    format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    "--routes".to_string(),
                    routes.join(","),
                ];
                NatsServer::new(client_ports[i], &format!("n{}", i + 1), args, dir.clone())
            })
            .collect();
        for node in &mut nodes {
            node.start_again();
        }
        NatsCluster { nodes }
    }

    /// Every node's URL, comma-separated (what a client takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    pub fn start_node(&mut self, i: usize) {
        self.nodes[i].start_again();
    }
}

/// A hub server (JetStream domain [`NatsLeafSite::HUB_DOMAIN`], where the publisher puts)
/// and one site's leaf server (its own domain [`NatsLeafSite::SITE_DOMAIN`], where the edges
/// read), the leaf connected to the hub's leaf-node port through a [`Relay`]: cutting the
/// relay cuts the site off from the hub while both servers stay up.
pub struct NatsLeafSite {
    pub hub: NatsServer,
    pub leaf: NatsServer,
    /// The leaf node's connection to the hub.
    pub link: Relay,
}

impl NatsLeafSite {
    pub const HUB_DOMAIN: &'static str = "hub";
    pub const SITE_DOMAIN: &'static str = "site";

    /// Starts the hub, the relay in front of its leaf-node port, then the leaf server, and
    /// waits until the leaf node is connected to the hub.
    pub async fn start() -> NatsLeafSite {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let leafnode_port = free_port();
        let link = Relay::start(leafnode_port).await;
        // The hub names the relay as its leaf-node address (`advertise`): a leaf node
        // reconnects to the addresses the hub gave it, which would otherwise bypass the relay.
        let hub_config = write_config(
            &dir,
            "hub",
            &format!(
                "jetstream {{ domain: {} }}\nleafnodes {{ listen: \"127.0.0.1:{leafnode_port}\", advertise: \"127.0.0.1:{}\" }}\n",
                NatsLeafSite::HUB_DOMAIN,
                link.port
            ),
        );
        let mut hub = NatsServer::new(free_port(), "hub", hub_config, dir.clone());
        hub.start_again();
        // The leaf node tries the hub again every second while the link is down.
        let leaf_config = write_config(
            &dir,
            "site",
            &format!(
                "jetstream {{ domain: {} }}\nleafnodes {{ reconnect: 1, remotes: [ {{ url: \"nats-leaf://127.0.0.1:{}\" }} ] }}\n",
                NatsLeafSite::SITE_DOMAIN,
                link.port
            ),
        );
        let mut leaf = NatsServer::new(free_port(), "site", leaf_config, dir);
        leaf.start_again();
        let site = NatsLeafSite { hub, leaf, link };
        site.wait_linked().await;
        site
    }

    /// Waits (10 s at most) until the hub's JetStream answers through the leaf node (a
    /// request to the hub domain's API on the leaf server gets an answer).
    pub async fn wait_linked(&self) {
        let client = async_nats::connect(self.leaf.url())
            .await
            .expect("connect to the leaf server");
        let subject = format!("$JS.{}.API.INFO", NatsLeafSite::HUB_DOMAIN);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::time::timeout(
            Duration::from_secs(1),
            client.request(subject.clone(), bytes::Bytes::new()),
        )
        .await
        .map_or(true, |answer| answer.is_err())
        {
            assert!(
                Instant::now() < deadline,
                "the leaf node never reached the hub"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates, on the leaf server, the stream `KV_{bucket}` as a mirror of the hub's stream
    /// of the same name, with the settings of the bucket (one value per key, values kept
    /// `max_age`), as a site's operator would.
    pub async fn mirror_bucket(&self, bucket: &str, max_age: Duration) {
        let client = async_nats::connect(self.leaf.url())
            .await
            .expect("connect to the leaf server");
        let mut config = bucket_stream_config(bucket, max_age, 1);
        config.description = Some(format!("mirror of {bucket} from the hub"));
        config.subjects.clear();
        config.mirror = Some(jetstream::stream::Source {
            name: config.name.clone(),
            external: Some(jetstream::stream::External {
                api_prefix: format!("$JS.{}.API", NatsLeafSite::HUB_DOMAIN),
                delivery_prefix: None,
            }),
            ..Default::default()
        });
        jetstream::new(client)
            .create_stream(config)
            .await
            .expect("create the mirror on the leaf server");
    }
}

/// Writes a nats-server config file `{name}.conf` in `dir`; the arguments to load it.
fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> Vec<String> {
    let path = dir.path().join(format!("{name}.conf"));
    std::fs::write(&path, text).expect("write the nats-server config");
    vec!["-c".to_string(), path.to_string_lossy().into_owned()]
}

/// Creates a replica bucket (history 1), retrying while JetStream is not ready yet (a new
/// cluster elects its leader first; 30 s at most).
pub async fn create_bucket(
    urls: &str,
    bucket: &str,
    max_age: Duration,
    replicas: usize,
) -> kv::Store {
    let client = async_nats::connect(urls).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created =
            epochgate::revocation::replica::publish::create_bucket(&js, bucket, max_age, replicas)
                .await;
        match created {
            Ok(()) => return js.get_key_value(bucket).await.expect("open the bucket"),
            Err(e) if Instant::now() > deadline => panic!("create bucket {bucket}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Puts a raw value under a raw key.
pub async fn put_raw(store: &kv::Store, key: &str, value: &str) {
    store
        .put(key, value.to_string().into())
        .await
        .expect("put into the bucket");
}

/// Puts an account's record under its key, as a publisher does.
pub async fn put_record(store: &kv::Store, account: &str, epoch: u64, devices: &[(&str, u64)]) {
    let devices: std::collections::HashMap<&str, u64> = devices.iter().copied().collect();
    let value = serde_json::json!({
        "account_id": account, "epoch": epoch, "devices": devices,
        "changed_at_ms": epochgate::unix_millis(),
    });
    put_raw(
        store,
        &epochgate::revocation::replica::key::encode(account),
        &value.to_string(),
    )
    .await;
}

/// Puts `count` records, `{prefix}{i}` at `epoch`, many at a time.
pub async fn put_many(store: &kv::Store, prefix: &str, count: usize, epoch: u64) {
    futures::stream::iter(0..count)
        .map(|i| async move { put_record(store, &format!("{prefix}{i}"), epoch, &[]).await })
        .buffer_unordered(256)
        .collect::<Vec<()>>()
        .await;
}

/// Puts the publisher's heartbeat (key `epochgate.heartbeat`) stamped `at_ms`.
pub async fn put_heartbeat(store: &kv::Store, at_ms: u64) {
    put_raw(
        store,
        epochgate::revocation::replica::entry::HEARTBEAT_KEY,
        &serde_json::json!({ "at_ms": at_ms }).to_string(),
    )
    .await;
}

/// A publisher's heartbeat every 200 ms, stamped now, until the task is aborted.
pub fn heartbeats(store: kv::Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            put_heartbeat(&store, epochgate::unix_millis()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// A TCP relay on a loopback port in front of `target`, whose connections a test can cut
/// (the server stays up; only this path to it is down) and restore on the same port.
pub struct Relay {
    pub port: u16,
    target: SocketAddr,
    accept: Option<tokio::task::JoinHandle<()>>,
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Relay {
        let mut relay = Relay {
            port: free_port(),
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            accept: None,
            connections: Arc::new(Mutex::new(JoinSet::new())),
        };
        relay.restore().await;
        relay
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.connections.lock().unwrap().abort_all();
    }

    /// Accepts and relays again, on the same port.
    pub async fn restore(&mut self) {
        self.cut();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => panic!("relay bind: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let target = self.target;
        let connections = self.connections.clone();
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                connections.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}
