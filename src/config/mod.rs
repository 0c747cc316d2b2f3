//! The YAML file format, its validation, and the typed runtime settings it becomes.
//!
//! The file structs mirror what operators write (`deny_unknown_fields`, human durations);
//! [`Settings`] is what the rest of the crate uses. Every error names the key it is about.
//!
//! This file holds the entry points ([`Settings::load`], [`Settings::from_yaml`]) and
//! [`ConfigError`]. The file format is in `file` (durations in `duration`), the checks that
//! turn it into [`Settings`] in `validate` (section by section; key and certificate files are
//! read there), the runtime types in `settings`, and Pingora's `server` section in `server`.

mod duration;
mod file;
mod replica;
mod server;
mod settings;
#[cfg(test)]
mod test_yaml;
mod validate;

use std::path::Path;

use file::FileConfig;

pub use duration::HumanDuration;
pub use replica::{ReplicaFile, ReplicaSettings, DEFAULT_BUCKET};
pub use server::{DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS, DEFAULT_GRACE_PERIOD_SECONDS};
pub use settings::{
    AccessLogSettings, AuthOriginSettings, BudgetSettings, CacheSettings, DownstreamTls,
    FeedSettings, ForwardSettings, HealthCheckSettings, KeySource, LimitsSettings,
    OnOriginUnavailable, PoolSettings, ProxySettings, Selection, Settings, TokenSettings,
    TokenSource,
};
pub use validate::MAX_CONCURRENT_LOOKUPS;

/// A configuration problem, always tied to the key it is about.
#[derive(Debug, thiserror::Error)]
#[error("config error at `{key}`: {message}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `token.algorithms[1]`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Settings {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("<file>", format!("cannot read {}: {e}", path.display()))
        })?;
        Settings::from_yaml(&text)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Settings, ConfigError> {
        let deserializer = serde_norway::Deserializer::from_str(text);
        let file: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "<root>".into() } else { key };
            ConfigError::new(key, e.into_inner().to_string())
        })?;
        file.validate()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::test_yaml::{error_for, MINIMAL};
    use super::*;

    #[test]
    fn minimal_config_gets_edge_defaults() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert_eq!(s.auth_origin.url, "http://127.0.0.1:7000");
        assert_eq!(s.auth_origin.timeout, Duration::from_millis(250));
        assert_eq!(s.auth_origin.max_concurrent_lookups, 64);
        assert_eq!(s.cache.on_origin_unavailable, OnOriginUnavailable::Deny);
        assert_eq!(s.token.sources.len(), 3);
        assert_eq!(
            s.server.grace_period_seconds,
            Some(DEFAULT_GRACE_PERIOD_SECONDS)
        );
        assert!(s.forward.strip_token);
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let e = error_for(&MINIMAL.replace("  algorithms", "  algoritms: [ES256]\n  algorithms"));
        assert!(e.to_string().contains("algoritms"), "{e}");
        assert!(e.key.starts_with("token"), "{e}");
    }
}
