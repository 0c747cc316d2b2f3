//! The `auth_origin` and `cache` sections: the origin's URL and timeouts, the feed, the
//! lookup concurrency, and the revocation cache's bounds.

use super::positive;
use crate::config::file::{AuthOriginFile, CacheFile};
use crate::config::{AuthOriginSettings, CacheSettings, ConfigError, FeedSettings};

impl AuthOriginFile {
    pub(super) fn validate(self) -> Result<AuthOriginSettings, ConfigError> {
        let url = self.url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| ConfigError::new("auth_origin.url", format!("`{url}`: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::new(
                "auth_origin.url",
                "scheme must be http or https",
            ));
        }
        positive("auth_origin.timeout", self.timeout)?;
        positive("auth_origin.jwks_refresh", self.jwks_refresh)?;
        positive("auth_origin.feed_idle_timeout", self.feed_idle_timeout)?;
        positive(
            "auth_origin.feed_unsupported_retry",
            self.feed_unsupported_retry,
        )?;
        let max_concurrent_lookups = match usize::try_from(self.max_concurrent_lookups) {
            Ok(0) => {
                return Err(ConfigError::new(
                    "auth_origin.max_concurrent_lookups",
                    "must be at least 1",
                ))
            }
            Ok(n) if n <= MAX_CONCURRENT_LOOKUPS => n,
            _ => {
                return Err(ConfigError::new(
                    "auth_origin.max_concurrent_lookups",
                    format!("must be at most {MAX_CONCURRENT_LOOKUPS}"),
                ))
            }
        };
        Ok(AuthOriginSettings {
            url,
            timeout: self.timeout.0,
            jwks_refresh: self.jwks_refresh.0,
            feed: FeedSettings {
                enabled: self.feed,
                idle_timeout: self.feed_idle_timeout.0,
                unsupported_retry: self.feed_unsupported_retry.0,
            },
            max_concurrent_lookups,
        })
    }
}

/// Upper bound of `auth_origin.max_concurrent_lookups`: far above what one edge can use, and
/// within what the slot semaphore can hold on any platform.
pub const MAX_CONCURRENT_LOOKUPS: usize = 1_000_000;

impl CacheFile {
    pub(super) fn validate(self) -> Result<CacheSettings, ConfigError> {
        if self.max_accounts == 0 {
            return Err(ConfigError::new("cache.max_accounts", "must be at least 1"));
        }
        positive("cache.refresh_after", self.refresh_after)?;
        positive("cache.max_stale", self.max_stale)?;
        if self.max_stale.0 < self.refresh_after.0 {
            return Err(ConfigError::new(
                "cache.max_stale",
                "must be at least cache.refresh_after",
            ));
        }
        if self.max_devices_per_account == 0 {
            return Err(ConfigError::new(
                "cache.max_devices_per_account",
                "must be at least 1",
            ));
        }
        Ok(CacheSettings {
            max_accounts: self.max_accounts,
            refresh_after: self.refresh_after.0,
            max_stale: self.max_stale.0,
            on_origin_unavailable: self.on_origin_unavailable,
            max_devices_per_account: usize::try_from(self.max_devices_per_account)
                .unwrap_or(usize::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_yaml::{error_for, MINIMAL};

    #[test]
    fn bad_on_origin_unavailable_is_rejected() {
        let e = error_for(&format!(
            "{MINIMAL}cache:\n  on_origin_unavailable: maybe\n"
        ));
        assert_eq!(e.key, "cache.on_origin_unavailable");
    }

    #[test]
    fn zero_max_concurrent_lookups_is_rejected() {
        let e = error_for(&MINIMAL.replace("url:", "max_concurrent_lookups: 0\n  url:"));
        assert_eq!(e.key, "auth_origin.max_concurrent_lookups");
        assert!(e.message.contains("at least 1"), "{e}");
    }

    #[test]
    fn negative_max_concurrent_lookups_names_the_key() {
        let e = error_for(&MINIMAL.replace("url:", "max_concurrent_lookups: -8\n  url:"));
        assert_eq!(e.key, "auth_origin.max_concurrent_lookups");
    }
}
