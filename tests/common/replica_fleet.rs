//! Edges running a fleet replica (config and start), and which NATS server an edge process
//! is connected to, read from the kernel's socket tables.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{Edge, EdgeConfig};

/// The config of an edge whose records come from the replica bucket `bucket` on `servers`
/// (`token.max_lifetime` 30d, `replica.max_stale` 10m, policy `deny`).
pub fn replica_edge(
    origin_url: &str,
    upstream: SocketAddr,
    servers: &[String],
    bucket: &str,
) -> EdgeConfig {
    EdgeConfig::to(origin_url, upstream)
        .replica(servers, bucket, "10m")
        .refresh_after("30s")
        .max_stale("10m")
        .on_origin_unavailable("deny")
        .max_lifetime("30d")
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
