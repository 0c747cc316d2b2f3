//! The `replica:` section of the config file (the fleet replica) and its validation into
//! [`ReplicaSettings`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, HumanDuration};

/// The bucket name when `replica.nats.bucket` is not given.
pub const DEFAULT_BUCKET: &str = "epochgate-revocations";

/// `replica:` as operators write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFile {
    nats: NatsFile,
    #[serde(default = "default_max_stale")]
    max_stale: HumanDuration,
    #[serde(default)]
    require_heartbeat: bool,
}

/// `replica.nats:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NatsFile {
    servers: Vec<String>,
    #[serde(default = "default_bucket")]
    bucket: String,
    #[serde(default)]
    credentials_file: Option<PathBuf>,
    #[serde(default)]
    tls_ca_file: Option<PathBuf>,
}

fn default_max_stale() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

fn default_bucket() -> String {
    DEFAULT_BUCKET.to_string()
}

/// The fleet replica's validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// NATS server URLs; the client fails over between them.
    pub servers: Vec<String>,
    pub bucket: String,
    pub credentials_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    /// How long after the last contact with NATS the replica is still used.
    pub max_stale: Duration,
    /// `token.max_lifetime`: the bucket's `max_age` must be at least this.
    pub max_lifetime: Duration,
    /// `cache.max_devices_per_account`: a value naming more devices is unusable.
    pub max_devices_per_account: usize,
    /// Only the publisher's heartbeat counts as contact (not a round trip to the nearest
    /// server), so a replica cut off upstream of its server goes stale too.
    pub require_heartbeat: bool,
}

fn error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

/// Whether a bucket name is one NATS accepts (`[A-Za-z0-9_-]+`).
fn valid_bucket(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ReplicaFile {
    /// Validates the section; `max_lifetime` is `token.max_lifetime`, required here, and
    /// `max_devices_per_account` is `cache.max_devices_per_account`.
    pub fn validate(
        self,
        max_lifetime: Option<Duration>,
        max_devices_per_account: usize,
    ) -> Result<ReplicaSettings, ConfigError> {
        let Some(max_lifetime) = max_lifetime else {
            return Err(error(
                "token.max_lifetime",
                "is required with `replica:` (the bucket's max_age must cover every token's lifetime)",
            ));
        };
        if self.nats.servers.is_empty() {
            return Err(error(
                "replica.nats.servers",
                "must name at least one server",
            ));
        }
        for (i, server) in self.nats.servers.iter().enumerate() {
            let key = format!("replica.nats.servers[{i}]");
            let parsed = server
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| error(&key, format!("`{server}` is not a NATS server URL ({e})")))?;
            if parsed.host().is_empty() {
                return Err(error(&key, format!("`{server}` names no host")));
            }
            // The client sends no credentials from a URL, and the URL would be echoed in logs.
            if parsed.has_user_pass() || parsed.password().is_some() {
                return Err(error(
                    &key,
                    "holds a user or password, which the NATS client does not send: use replica.nats.credentials_file",
                ));
            }
        }
        if !valid_bucket(&self.nats.bucket) {
            return Err(error(
                "replica.nats.bucket",
                format!(
                    "`{}` is not a bucket name (letters, digits, `_` and `-`)",
                    self.nats.bucket
                ),
            ));
        }
        for (key, path) in [
            ("replica.nats.credentials_file", &self.nats.credentials_file),
            ("replica.nats.tls_ca_file", &self.nats.tls_ca_file),
        ] {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(error(key, format!("cannot read {}", path.display())));
                }
            }
        }
        if self.max_stale.0.is_zero() {
            return Err(error("replica.max_stale", "must be more than 0"));
        }
        Ok(ReplicaSettings {
            servers: self.nats.servers,
            bucket: self.nats.bucket,
            credentials_file: self.nats.credentials_file,
            tls_ca_file: self.nats.tls_ca_file,
            max_stale: self.max_stale.0,
            max_lifetime,
            max_devices_per_account,
            require_heartbeat: self.require_heartbeat,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_yaml::MINIMAL;
    use crate::config::Settings;
    use std::time::Duration;

    /// The smallest valid config (its `token:` section last) with `token.max_lifetime`.
    fn base() -> String {
        format!("{MINIMAL}  max_lifetime: 30d\n")
    }

    fn with_replica(replica: &str) -> Result<Settings, crate::config::ConfigError> {
        Settings::from_yaml(&format!("{}replica:\n{replica}", base()))
    }

    #[test]
    fn replica_is_off_by_default() {
        assert!(Settings::from_yaml(&base()).unwrap().replica.is_none());
    }

    #[test]
    fn replica_defaults_bucket_and_max_stale() {
        let s = with_replica("  nats:\n    servers: [\"nats://127.0.0.1:4222\"]\n").unwrap();
        let r = s.replica.unwrap();
        assert_eq!(r.bucket, "epochgate-revocations");
        assert_eq!(r.max_stale, Duration::from_secs(600));
        assert_eq!(r.max_lifetime, Duration::from_secs(30 * 86_400));
        assert_eq!(r.credentials_file, None);
        assert_eq!(r.tls_ca_file, None);
        assert!(!r.require_heartbeat);
        assert_eq!(
            r.max_devices_per_account, 1_000,
            "cache.max_devices_per_account"
        );
    }

    #[test]
    fn replica_require_heartbeat_is_read() {
        let s = with_replica(
            "  nats:\n    servers: [\"nats://127.0.0.1:4222\"]\n  require_heartbeat: true\n",
        )
        .unwrap();
        assert!(s.replica.unwrap().require_heartbeat);
    }

    #[test]
    fn replica_without_max_lifetime_names_the_key() {
        let yaml =
            format!("{MINIMAL}replica:\n  nats:\n    servers: [\"nats://127.0.0.1:4222\"]\n");
        let e = Settings::from_yaml(&yaml).unwrap_err();
        assert_eq!(e.key, "token.max_lifetime");
    }

    #[test]
    fn replica_errors_name_their_key() {
        for (replica, key) in [
            ("  nats:\n    servers: []\n", "replica.nats.servers"),
            (
                "  nats:\n    servers: [\"http://127.0.0.1:4222\"]\n",
                "replica.nats.servers[0]",
            ),
            (
                "  nats:\n    servers: [\"nats://a:4222\"]\n    bucket: \"a.b\"\n",
                "replica.nats.bucket",
            ),
            (
                "  nats:\n    servers: [\"nats://a:4222\"]\n    credentials_file: /nonexistent/x.creds\n",
                "replica.nats.credentials_file",
            ),
            (
                "  nats:\n    servers: [\"nats://a:4222\"]\n  max_stale: 0s\n",
                "replica.max_stale",
            ),
        ] {
            let e = with_replica(replica).unwrap_err();
            assert_eq!(e.key, key, "{replica}");
        }
        let e = with_replica(
            "  nats:\n    servers: [\"nats://a:4222\", \"nats://edge:s3cret@b:4222\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "replica.nats.servers[1]");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e =
            with_replica("  nats:\n    servers: [\"nats://a:4222\"]\n    sever: x\n").unwrap_err();
        assert!(e.key.starts_with("replica.nats"), "{e}");
    }
}
