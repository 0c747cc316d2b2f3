//! Edges running a fleet replica (config and start), the parts behind them (a nats-server,
//! the reference auth origin publishing into its bucket, an upstream), and which NATS server
//! an edge process is connected to, read from the kernel's socket tables.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use epochgate::reference::auth_origin::AuthOrigin;

use super::nats::NatsServer;
use super::{Edge, EdgeConfig, Upstream, AUDIENCE, ISSUER};

/// `replica.max_stale` of a replica edge.
pub const REPLICA_MAX_STALE: &str = "10m";
/// `cache.on_origin_unavailable` of a replica edge.
pub const ON_ORIGIN_UNAVAILABLE: &str = "deny";
/// `token.max_lifetime` of a replica edge: the replica requires one.
pub const MAX_LIFETIME: &str = "30d";
/// The `max_age` of a bucket the reference origin creates: no shorter than [`MAX_LIFETIME`],
/// or a replica edge refuses to start.
pub const BUCKET_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);

/// The config of an edge whose records come from the replica bucket `bucket` on `servers`
/// ([`REPLICA_MAX_STALE`], [`ON_ORIGIN_UNAVAILABLE`], [`MAX_LIFETIME`]; the cache keys are
/// the test defaults).
pub fn replica_edge(
    origin_url: &str,
    upstream: SocketAddr,
    servers: &[String],
    bucket: &str,
) -> EdgeConfig {
    EdgeConfig::to(origin_url, upstream)
        .replica(servers, bucket, REPLICA_MAX_STALE)
        .on_origin_unavailable(ON_ORIGIN_UNAVAILABLE)
        .max_lifetime(MAX_LIFETIME)
}

/// Starts a replica edge without waiting for it to be ready.
pub fn spawn_replica_edge(
    origin_url: &str,
    upstream: SocketAddr,
    servers: &[String],
    bucket: &str,
) -> Edge {
    replica_edge(origin_url, upstream, servers, bucket).spawn()
}

/// What a fleet of replica edges runs against, on loopback: one nats-server, the reference
/// auth origin publishing every change into a bucket on it (`--nats`, which creates the
/// bucket) and serving its API, and an echoing upstream. The nats-server and the upstream
/// stop when dropped; the origin's API is served until the process ends.
pub struct ReplicaBackends {
    pub nats: NatsServer,
    pub origin: Arc<AuthOrigin>,
    /// The reference origin's base URL.
    pub origin_url: String,
    pub upstream: Upstream,
    pub bucket: String,
}

impl ReplicaBackends {
    /// Starts the nats-server, the reference origin (once it has created `bucket`, with
    /// [`BUCKET_MAX_AGE`]) and the upstream.
    pub async fn start(bucket: &str) -> ReplicaBackends {
        let nats = NatsServer::start();
        let origin = AuthOrigin::new(ISSUER, AUDIENCE).expect("the reference origin");
        origin
            .publish_to_nats(&nats.url(), bucket, BUCKET_MAX_AGE, Duration::ZERO)
            .await
            .expect("the reference origin creates the bucket");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback listener for the reference origin");
        let origin_url = format!(
            "http://{}",
            listener.local_addr().expect("the listener's address")
        );
        tokio::spawn(epochgate::reference::serve(
            listener,
            origin.router(),
            std::future::pending(),
        ));
        let upstream = Upstream::start().await;
        ReplicaBackends {
            nats,
            origin,
            origin_url,
            upstream,
            bucket: bucket.to_string(),
        }
    }

    /// The config of a replica edge on the bucket, asking the reference origin.
    pub fn edge(&self) -> EdgeConfig {
        replica_edge(
            &self.origin_url,
            self.upstream.addr,
            &[self.nats.url()],
            &self.bucket,
        )
    }
}

/// The local ports of 127.0.0.1 that process `pid` has an established TCP connection to,
/// among `candidates` (e.g. the client ports of a NATS cluster's nodes). Linux only: the
/// socket inodes of the process's open files, matched in /proc/net/tcp.
pub fn connected_ports(pid: u32, candidates: &[u16]) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
                    Some(inode.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (remote, state, inode) = (fields.get(2)?, fields.get(3)?, fields.get(9)?);
            // 01: ESTABLISHED; 0100007F: 127.0.0.1 in the kernel's byte order.
            let (address, port) = remote.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            (*state == "01"
                && address == "0100007F"
                && inodes.contains(*inode)
                && candidates.contains(&port))
            .then_some(port)
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
