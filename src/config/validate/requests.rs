//! The per-request sections: `access_log`, the top-level `mode` and `routes`, `limits` (the
//! invalid-token budget) and `forward` (the headers sent upstream).

use std::str::FromStr;

use crate::config::file::{AccessLogFile, BudgetFile, ForwardFile, LimitsFile, RouteFile};
use crate::config::{
    AccessLogSettings, BudgetSettings, ConfigError, ForwardSettings, LimitsSettings,
};
use crate::request::route::{Mode, Route, Routes};

impl AccessLogFile {
    pub(super) fn validate(self) -> Result<AccessLogSettings, ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_allowed) {
            return Err(ConfigError::new(
                "access_log.sample_allowed",
                format!("{} is not between 0 and 1", self.sample_allowed),
            ));
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(ConfigError::new("access_log.path", "must not be empty"));
        }
        Ok(AccessLogSettings {
            enabled: self.enabled,
            path: self.path,
            sample_allowed: self.sample_allowed,
        })
    }
}

/// The top level is `enforce` or `observe`; a route may also be `off`. A route whose prefix
/// starts with an earlier route's prefix could never match (first match wins): an error.
pub(super) fn validate_routes(mode: Mode, files: Vec<RouteFile>) -> Result<Routes, ConfigError> {
    if mode == Mode::Off {
        return Err(ConfigError::new(
            "mode",
            "must be `enforce` or `observe` (`off` is for routes)",
        ));
    }
    let mut routes: Vec<Route> = Vec::with_capacity(files.len());
    for (i, file) in files.into_iter().enumerate() {
        let key = format!("routes[{i}].prefix");
        let prefix = file.prefix.trim().to_string();
        if !prefix.starts_with('/') {
            return Err(ConfigError::new(
                key,
                format!("`{prefix}` must start with `/`"),
            ));
        }
        if crate::request::route::normalize(&prefix) != prefix.as_str()
            || prefix.contains(['?', '%'])
        {
            return Err(ConfigError::new(
                key,
                format!("`{prefix}` must be a plain decoded path (no `.`/`..` segments, `//`, `?` or `%`)"),
            ));
        }
        if let Some((j, earlier)) = routes
            .iter()
            .enumerate()
            .find(|(_, earlier)| prefix.starts_with(&earlier.prefix))
        {
            return Err(ConfigError::new(
                key,
                format!(
                    "`{prefix}` can never match: routes[{j}].prefix `{}` comes first and covers it",
                    earlier.prefix
                ),
            ));
        }
        routes.push(Route {
            prefix,
            mode: file.mode,
        });
    }
    Ok(Routes {
        default: mode,
        routes,
    })
}

impl LimitsFile {
    pub(super) fn validate(self) -> Result<LimitsSettings, ConfigError> {
        let key = "limits.invalid_tokens_per_client";
        let invalid_tokens_per_client = match self.invalid_tokens_per_client {
            BudgetFile::Off => None,
            BudgetFile::On(rates) => {
                if rates.per_second == 0 {
                    return Err(ConfigError::new(
                        format!("{key}.per_second"),
                        "must be at least 1 (write `invalid_tokens_per_client: off` for no budget)",
                    ));
                }
                // The budget's window is burst / per_second: at least the estimator's
                // one-second resolution.
                if rates.burst < rates.per_second {
                    return Err(ConfigError::new(
                        format!("{key}.burst"),
                        format!("must be at least per_second ({})", rates.per_second),
                    ));
                }
                Some(BudgetSettings {
                    per_second: rates.per_second,
                    burst: rates.burst,
                })
            }
        };
        Ok(LimitsSettings {
            invalid_tokens_per_client,
        })
    }
}

impl ForwardFile {
    pub(super) fn validate(self) -> Result<ForwardSettings, ConfigError> {
        let header = |key: &str, name: &str| {
            http::HeaderName::from_str(name.trim())
                .map_err(|_| ConfigError::new(key, format!("`{name}` is not a header name")))
        };
        Ok(ForwardSettings {
            account_header: header("forward.account_header", &self.account_header)?,
            device_header: header("forward.device_header", &self.device_header)?,
            strip_token: self.strip_token,
            header_prefix: header_prefix(&self.header_prefix)?,
        })
    }
}

/// Header names a forwarded request cannot do without: a prefix that covers one of them
/// would strip it from every request.
const ESSENTIAL_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "content-type",
    "connection",
    "upgrade",
    "te",
    "expect",
];

/// The prefix, lower-cased (header names are case-insensitive): non-empty, only characters
/// a header name may hold, and not covering a header the request needs.
fn header_prefix(prefix: &str) -> Result<String, ConfigError> {
    let key = "forward.header_prefix";
    if prefix.is_empty() {
        return Err(ConfigError::new(
            key,
            "must not be empty (it would cover every header)",
        ));
    }
    // A header name is an RFC 9110 token; any start of one is a token too.
    if http::HeaderName::from_bytes(prefix.as_bytes()).is_err() {
        return Err(ConfigError::new(
            key,
            format!("`{prefix}` is not the start of a header name (letters, digits, -, _ and the like; no spaces or colons)"),
        ));
    }
    let prefix = prefix.to_ascii_lowercase();
    if let Some(essential) = ESSENTIAL_HEADERS.iter().find(|h| h.starts_with(&prefix)) {
        return Err(ConfigError::new(
            key,
            format!("`{prefix}` covers `{essential}`, which every request may need"),
        ));
    }
    Ok(prefix)
}

#[cfg(test)]
mod tests {
    use crate::config::test_yaml::{error_for, MINIMAL};
    use crate::config::{BudgetSettings, Settings};
    use crate::request::route::Mode;

    #[test]
    fn access_log_is_off_by_default_and_samples_all_allowed_requests() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert!(!s.access_log.enabled);
        assert_eq!(s.access_log.path, None);
        assert_eq!(s.access_log.sample_allowed, 1.0);
    }

    #[test]
    fn access_log_sample_rate_out_of_range_names_the_key() {
        let e = error_for(&format!(
            "{MINIMAL}access_log: {{ enabled: true, sample_allowed: 1.5 }}\n"
        ));
        assert_eq!(e.key, "access_log.sample_allowed", "{e}");
    }

    #[test]
    fn routes_default_to_none_and_mode_to_enforce() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert_eq!(s.routes.default, Mode::Enforce);
        assert!(s.routes.routes.is_empty());
    }

    #[test]
    fn routes_are_read_in_order() {
        let s = Settings::from_yaml(&format!(
            "{MINIMAL}mode: observe\nroutes:\n  - {{ prefix: /public/, mode: off }}\n  - {{ prefix: /live/, mode: enforce }}\n"
        ))
        .unwrap();
        assert_eq!(s.routes.default, Mode::Observe);
        assert_eq!(s.routes.routes[0].mode, Mode::Off);
        assert_eq!(s.routes.routes[1].prefix, "/live/");
    }

    #[test]
    fn unknown_route_mode_names_the_key() {
        let e = error_for(&format!(
            "{MINIMAL}routes:\n  - {{ prefix: /a/, mode: off }}\n  - {{ prefix: /b/, mode: shadow }}\n"
        ));
        assert_eq!(e.key, "routes[1].mode", "{e}");
    }

    #[test]
    fn top_level_mode_off_is_rejected() {
        assert_eq!(error_for(&format!("{MINIMAL}mode: off\n")).key, "mode");
        assert_eq!(error_for(&format!("{MINIMAL}mode: audit\n")).key, "mode");
    }

    #[test]
    fn duplicate_or_shadowed_route_prefix_names_the_key() {
        let routes =
            "routes:\n  - { prefix: /public/, mode: off }\n  - { prefix: /live/, mode: enforce }\n";
        let e = error_for(&format!(
            "{MINIMAL}{routes}  - {{ prefix: /live/, mode: observe }}\n"
        ));
        assert_eq!(e.key, "routes[2].prefix", "{e}");
        assert!(e.message.contains("routes[1].prefix"), "{e}");
        let e = error_for(&format!(
            "{MINIMAL}{routes}  - {{ prefix: /live/hd/, mode: observe }}\n"
        ));
        assert_eq!(e.key, "routes[2].prefix", "{e}");
        // The more specific prefix first is fine.
        Settings::from_yaml(&format!(
            "{MINIMAL}routes:\n  - {{ prefix: /live/hd/, mode: observe }}\n  - {{ prefix: /live/, mode: enforce }}\n"
        ))
        .unwrap();
    }

    #[test]
    fn route_prefix_must_be_a_plain_path() {
        for bad in ["live/", "/live/../public/", "/a%2fb/", "//x/"] {
            let e = error_for(&format!(
                "{MINIMAL}routes:\n  - {{ prefix: \"{bad}\", mode: off }}\n"
            ));
            assert_eq!(e.key, "routes[0].prefix", "{bad}: {e}");
        }
    }

    #[test]
    fn header_prefix_is_lower_cased_and_checked() {
        let prefix = |p: &str| {
            Settings::from_yaml(&format!("{MINIMAL}forward:\n  header_prefix: \"{p}\"\n"))
                .map(|s| s.forward.header_prefix)
        };
        assert_eq!(prefix("X-Edge-").unwrap(), "x-edge-");
        for bad in ["", "x edge", "x-edge:", "cont"] {
            assert_eq!(
                prefix(bad).unwrap_err().key,
                "forward.header_prefix",
                "{bad}"
            );
        }
        assert_eq!(
            Settings::from_yaml(MINIMAL).unwrap().forward.header_prefix,
            "x-epochgate-"
        );
    }

    #[test]
    fn the_invalid_token_budget_is_on_by_default() {
        let s = Settings::from_yaml(MINIMAL).unwrap();
        assert_eq!(
            s.limits.invalid_tokens_per_client,
            Some(BudgetSettings {
                per_second: 20,
                burst: 100
            })
        );
        assert!(s.proxy.trusted_proxies.is_empty());
    }

    #[test]
    fn the_invalid_token_budget_can_be_turned_off() {
        for off in ["off", "null", "~"] {
            let s = Settings::from_yaml(&format!(
                "{MINIMAL}limits:\n  invalid_tokens_per_client: {off}\n"
            ))
            .unwrap();
            assert_eq!(s.limits.invalid_tokens_per_client, None, "{off}");
        }
    }

    #[test]
    fn a_bad_invalid_token_budget_names_the_key() {
        for (budget, key) in [
            ("{per_second: 0, burst: 10}", "per_second"),
            ("{per_second: 20, burst: 10}", "burst"),
            ("{per_second: 20, burts: 100}", "burts"),
            ("{per_second: -1, burst: 10}", "per_second"),
            ("{per_second: 20}", "burst"),
        ] {
            let e = error_for(&format!(
                "{MINIMAL}limits:\n  invalid_tokens_per_client: {budget}\n"
            ));
            assert!(
                e.key.starts_with("limits.invalid_tokens_per_client"),
                "{budget}: {e}"
            );
            assert!(e.to_string().contains(key), "{budget}: {e}");
        }
        let e = error_for(&format!(
            "{MINIMAL}limits:\n  invalid_tokens_per_client: sometimes\n"
        ));
        assert_eq!(e.key, "limits.invalid_tokens_per_client");
    }
}
