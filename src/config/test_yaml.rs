//! The smallest valid config, which the section tests extend, and a helper for rejections.

use super::{ConfigError, Settings};

pub(super) const MINIMAL: &str = r#"
proxy:
  listen: ["127.0.0.1:8080"]
  upstream: { peers: ["127.0.0.1:8000"] }
auth_origin:
  url: "http://127.0.0.1:7000/"
token:
  algorithms: [ES256]
"#;

pub(super) fn error_for(yaml: &str) -> ConfigError {
    Settings::from_yaml(yaml).expect_err("config should be rejected")
}
