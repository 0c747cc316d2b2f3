//! Which client sent a request: the peer address, or, behind trusted proxies, the last
//! untrusted address of `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;

/// An IP address or a CIDR block (`10.0.0.1`, `10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    base: IpAddr,
    prefix_len: u8,
}

/// Why a text is not an [`IpNetwork`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IP address or CIDR block")]
pub struct NotANetwork;

impl IpNetwork {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNetwork {
    type Err = NotANetwork;

    fn from_str(text: &str) -> Result<IpNetwork, NotANetwork> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let base = canonical(addr.parse::<IpAddr>().map_err(|_| NotANetwork)?);
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            // Digits only: `u8::from_str` would also take a sign.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| NotANetwork)?
            }
            Some(_) => return Err(NotANetwork),
        };
        if prefix_len > max {
            return Err(NotANetwork);
        }
        Ok(IpNetwork { base, prefix_len })
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, how a dual-stack listener sees an IPv4
/// client) as the IPv4 address it is; any other address unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The most `X-Forwarded-For` entries looked at, from the right: a chain of trusted proxies
/// is short, and a client must not make the edge walk a header of thousands.
const MAX_FORWARDED_HOPS: usize = 16;

/// The client of a request from `peer`: the peer itself unless it is one of `trusted`;
/// behind trusted proxies, the last (rightmost) `X-Forwarded-For` address that is not
/// trusted. If every address is trusted, the leftmost one; if an entry cannot be read (or
/// the header is missing, or longer than 16 entries), the last trusted address before it,
/// so a client can never pick the address it is counted under.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNetwork]) -> IpAddr {
    let mut client = canonical(peer);
    if !is_trusted(client, trusted) {
        return client;
    }
    // Several header lines make one list, in order (RFC 9110, 5.3).
    let values: Vec<&str> = match headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
    {
        Ok(values) => values,
        Err(_) => return client,
    };
    let entries = values.iter().rev().flat_map(|v| v.rsplit(','));
    for entry in entries.take(MAX_FORWARDED_HOPS) {
        let Some(hop) = parse_hop(entry.trim()) else {
            return client;
        };
        client = hop;
        if !is_trusted(hop, trusted) {
            return hop;
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNetwork]) -> bool {
    trusted.iter().any(|network| network.contains(ip))
}

/// An `X-Forwarded-For` entry: an address, or an address with a port (`192.0.2.1:443`,
/// `[2001:db8::1]:443`), as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn networks_parse_addresses_and_cidr_blocks() {
        assert!(net("10.0.0.0/8").contains(ip("10.200.1.1")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.1").contains(ip("10.0.0.1")));
        assert!(!net("10.0.0.1").contains(ip("10.0.0.2")));
        assert!(net("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("fe80::1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "proxy.local",
        ] {
            assert!(bad.parse::<IpNetwork>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let headers = forwarded(&["198.51.100.7"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers, &[net("10.0.0.0/8")]),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers, &[]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_last_untrusted_address_is_the_client() {
        let trusted = [net("10.0.0.0/8")];
        // The client wrote the first entry itself; the trusted proxies appended the others.
        let headers = forwarded(&["1.2.3.4, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_trusted_peer_without_forwarded_for_is_the_client() {
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &[net("10.0.0.0/8")]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn an_unreadable_entry_stops_the_walk_at_the_last_trusted_address() {
        let trusted = [net("10.0.0.0/8")];
        let headers = forwarded(&["198.51.100.7, garbage, 10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn entries_with_ports_and_mapped_addresses_are_read() {
        let trusted = [net("10.0.0.0/8")];
        let headers = forwarded(&["[2001:db8::1]:443"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("2001:db8::1")
        );
        let headers = forwarded(&["198.51.100.7:1234"]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &headers, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_long_chain_of_trusted_addresses_is_not_walked_to_its_start() {
        let trusted = [net("10.0.0.0/8")];
        let mut chain = vec!["198.51.100.7".to_string()];
        chain.extend((0..40).map(|i| format!("10.0.0.{i}")));
        let headers = forwarded(&[&chain.join(", ")]);
        let client = client_ip(ip("10.0.0.1"), &headers, &trusted);
        assert!(trusted[0].contains(client), "{client}");
    }
}
