//! The `auth_origin` and `cache` sections as written: where revocation records come from
//! and how long they are kept.

use std::time::Duration;

use serde::Deserialize;

use super::default_true;
use crate::config::{HumanDuration, OnOriginUnavailable};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthOriginFile {
    pub(crate) url: String,
    #[serde(default = "default_origin_timeout")]
    pub(crate) timeout: HumanDuration,
    /// How often the JWKS is fetched again while keys are loaded.
    #[serde(default = "default_jwks_refresh")]
    pub(crate) jwks_refresh: HumanDuration,
    /// Subscribe to `GET /v1/revocation-feed` (Server-Sent Events).
    #[serde(default = "default_true")]
    pub(crate) feed: bool,
    /// A feed connection silent this long (three missed 15 s pings) is replaced.
    #[serde(default = "default_feed_idle_timeout")]
    pub(crate) feed_idle_timeout: HumanDuration,
    /// After a 404 on the feed, try it again this often.
    #[serde(default = "default_feed_unsupported_retry")]
    pub(crate) feed_unsupported_retry: HumanDuration,
    /// Revocation lookups in flight at once; the others wait for a slot.
    #[serde(default = "default_max_concurrent_lookups")]
    pub(crate) max_concurrent_lookups: u64,
}

fn default_max_concurrent_lookups() -> u64 {
    64
}

fn default_feed_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(45))
}

fn default_feed_unsupported_retry() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_origin_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}

fn default_jwks_refresh() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheFile {
    #[serde(default = "default_max_accounts")]
    pub(crate) max_accounts: u64,
    #[serde(default = "default_refresh_after")]
    pub(crate) refresh_after: HumanDuration,
    #[serde(default = "default_max_stale")]
    pub(crate) max_stale: HumanDuration,
    #[serde(default)]
    pub(crate) on_origin_unavailable: OnOriginUnavailable,
    /// Devices one revocation record may name; a record naming more is refused.
    #[serde(default = "default_max_devices_per_account")]
    pub(crate) max_devices_per_account: u64,
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            max_accounts: default_max_accounts(),
            refresh_after: default_refresh_after(),
            max_stale: default_max_stale(),
            on_origin_unavailable: OnOriginUnavailable::default(),
            max_devices_per_account: default_max_devices_per_account(),
        }
    }
}

fn default_max_accounts() -> u64 {
    1_000_000
}
fn default_max_devices_per_account() -> u64 {
    1_000
}
fn default_refresh_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_stale() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
