//! epochgate: edge enforcement of "sign out of all devices".
//!
//! A request's device token is verified, then compared with its account's revocation epoch
//! (and the device's own epoch), held in a bounded cache refreshed from the auth origin.
//! Tokens issued before the epoch are rejected; everything else goes to the upstream.
//!
//! The request path, one module per stage:
//! [`token_source`] → [`verify`] (keys from [`keys`], repeat tokens from [`verified_cache`])
//! → [`epoch_cache`] (records from [`origin`], rules in [`revocation`]) → [`gate`] →
//! [`decision`] → [`proxy`] (Pingora glue) → [`upstream`] (the health-checked pool).
//! Around it: [`config`], [`metrics`], [`admin`], [`server`] (with [`tls`] for the
//! listener's certificate), and the
//! [`reference`](mod@reference) auth origin and streaming origin used by the demo and the
//! tests.

pub mod admin;
pub mod config;
pub mod decision;
pub mod demo;
pub mod epoch_cache;
pub mod feed;
pub mod gate;
pub mod keys;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod reference;
pub mod revocation;
pub mod server;
pub mod tls;
pub mod token_source;
pub mod upstream;
pub mod verified_cache;
pub mod verify;

pub use config::Settings;
pub use decision::{Decision, Reason};
pub use gate::Gate;

/// Milliseconds on a monotonic clock that starts near process start (never 0 after it).
pub fn monotonic_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
