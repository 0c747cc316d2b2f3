//! Listener addresses: parsing them, and refusing two listeners (proxy or admin) that would
//! share a socket.

use std::net::SocketAddr;
use std::str::FromStr;

use crate::config::ConfigError;

/// Two listeners on one address would share a socket (Pingora binds with `SO_REUSEPORT`),
/// and connections would land on either at random. A wildcard and a specific address on the
/// same port overlap the same way (`[::]` is dual-stack: it takes IPv4 too).
pub(super) fn check_listeners_distinct(
    proxy: &[SocketAddr],
    admin: SocketAddr,
) -> Result<(), ConfigError> {
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

pub(super) fn parse_listen(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    SocketAddr::from_str(text.trim()).map_err(|_| {
        ConfigError::new(
            key,
            format!("`{text}` is not an IP:port address (e.g. 0.0.0.0:8080 or [::]:8080)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
