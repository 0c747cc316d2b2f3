//! The listen watchdog: confirms the proxy listener accepts connections, and ends the
//! process when it does not, so no edge lives on with a dead proxy and a healthy `/healthz`.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::edge::admin::Readiness;

/// How long the proxy listener may take to accept before the process gives up.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(5);

/// Confirms the proxy accepts connections; exits the process when it does not within
/// [`LISTEN_DEADLINE`], so no process lives on with a dead proxy and a healthy `/healthz`.
pub(crate) struct ListenWatchdog {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) readiness: Arc<Readiness>,
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
    use std::net::{TcpListener, TcpStream};

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
