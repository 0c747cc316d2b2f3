//! The `server` section: Pingora's own `ServerConf`, checked key by key, with the edge's
//! shutdown defaults.

use std::collections::BTreeSet;

use pingora::server::configuration::ServerConf;

use super::ConfigError;

/// Pingora's grace period defaults to 300 s; an edge should let go much sooner.
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 10;
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

/// Builds Pingora's `ServerConf`, rejecting keys it does not know (Pingora itself ignores them).
pub(super) fn server_conf(
    section: Option<serde_norway::Mapping>,
) -> Result<ServerConf, ConfigError> {
    let mut section = section.unwrap_or_default();
    let known = known_server_keys();
    for key in section.keys() {
        let name = key.as_str().unwrap_or("<non-string key>");
        if !known.contains(name) {
            return Err(ConfigError::new(
                format!("server.{name}"),
                "unknown key (not a Pingora ServerConf setting)",
            ));
        }
    }
    for (key, default) in [
        ("grace_period_seconds", DEFAULT_GRACE_PERIOD_SECONDS),
        (
            "graceful_shutdown_timeout_seconds",
            DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS,
        ),
    ] {
        let key = serde_norway::Value::String(key.into());
        if !section.contains_key(&key) {
            section.insert(key, serde_norway::Value::Number(default.into()));
        }
    }
    let mut defaults = match serde_norway::to_value(ServerConf::default()) {
        Ok(serde_norway::Value::Mapping(m)) => m,
        _ => serde_norway::Mapping::new(),
    };
    for (key, value) in section {
        defaults.insert(key, value);
    }
    let conf: ServerConf = serde_path_to_error::deserialize(serde_norway::Value::Mapping(defaults))
        .map_err(|e| {
            ConfigError::new(format!("server.{}", e.path()), e.into_inner().to_string())
        })?;
    if conf.threads == 0 {
        return Err(ConfigError::new("server.threads", "must be at least 1"));
    }
    Ok(conf)
}

fn known_server_keys() -> BTreeSet<String> {
    match serde_norway::to_value(ServerConf::default()) {
        Ok(serde_norway::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_yaml::{error_for, MINIMAL};
    use crate::config::Settings;

    #[test]
    fn unknown_server_key_is_an_error() {
        let e = error_for(&format!("server:\n  thraeds: 2\n{MINIMAL}"));
        assert_eq!(e.key, "server.thraeds");
    }

    #[test]
    fn server_keys_pass_through() {
        let s = Settings::from_yaml(&format!(
            "server:\n  threads: 3\n  grace_period_seconds: 1\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(s.server.threads, 3);
        assert_eq!(s.server.grace_period_seconds, Some(1));
    }
}
