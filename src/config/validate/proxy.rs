//! The `proxy` section: listeners and their TLS, HTTP/2, the upstream peers and pool, the
//! trusted proxies.

use std::net::{SocketAddr, ToSocketAddrs};

use super::listen::parse_listen;
use super::positive;
use crate::config::file::ProxyFile;
use crate::config::{ConfigError, DownstreamTls, HealthCheckSettings, PoolSettings, ProxySettings};
use crate::request::client_ip::IpNetwork;

impl ProxyFile {
    pub(super) fn validate(self) -> Result<ProxySettings, ConfigError> {
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
                let certificate = crate::edge::tls::load(&files.cert_file, &files.key_file)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_yaml::{error_for, MINIMAL};
    use crate::config::{Selection, Settings};

    #[test]
    fn empty_peer_list_is_rejected() {
        let e = error_for(&MINIMAL.replace(r#"["127.0.0.1:8000"]"#, "[]"));
        assert_eq!(e.key, "proxy.upstream.peers");
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
}
