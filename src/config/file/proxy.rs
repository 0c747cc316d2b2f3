//! The `proxy` section as written: listeners (one address or a list of entries), TLS, the
//! upstream peers and their health check.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{HumanDuration, Selection};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyFile {
    pub(crate) listen: ListenFile,
    /// The certificate of the TLS listeners; with it, every `listen` entry written as a
    /// plain string is a TLS listener.
    #[serde(default)]
    pub(crate) tls: Option<TlsFile>,
    /// Offer HTTP/2 through ALPN on the TLS listeners (default: true).
    #[serde(default)]
    pub(crate) http2: Option<bool>,
    /// Accept cleartext HTTP/2 (prior knowledge) on the plain listeners.
    #[serde(default)]
    pub(crate) h2c: bool,
    pub(crate) upstream: UpstreamFile,
    /// Peers whose `X-Forwarded-For` names the client: IP addresses or CIDR blocks.
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
}

/// `proxy.listen`: one entry or a list of them.
#[derive(Debug)]
pub(crate) struct ListenFile(pub(crate) Vec<ListenEntryFile>);

/// One `proxy.listen` entry: `"IP:port"`, or `{address: "IP:port", tls: BOOL}`.
#[derive(Debug)]
pub(crate) struct ListenEntryFile {
    pub(crate) address: String,
    pub(crate) tls: Option<bool>,
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
pub(crate) struct TlsFile {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamFile {
    pub(crate) peers: Vec<String>,
    #[serde(default)]
    pub(crate) tls: bool,
    #[serde(default)]
    pub(crate) sni: String,
    #[serde(default)]
    pub(crate) selection: Selection,
    #[serde(default)]
    pub(crate) health_check: HealthCheckFile,
    /// How often the peer names are resolved again.
    #[serde(default = "default_resolve_interval")]
    pub(crate) resolve_interval: HumanDuration,
}

fn default_resolve_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckFile {
    #[serde(default = "default_health_interval")]
    pub(crate) interval: HumanDuration,
    #[serde(default = "default_health_timeout")]
    pub(crate) timeout: HumanDuration,
    /// An HTTP check (`GET path`) instead of a TCP connect.
    #[serde(default)]
    pub(crate) path: Option<String>,
    #[serde(default)]
    pub(crate) expected_status: Option<u16>,
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
