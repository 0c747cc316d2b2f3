//! epochgate: edge enforcement of "sign out of all devices".
//!
//! A request's device token is verified, then compared with its account's revocation epoch
//! (and the device's own epoch), held in a bounded cache refreshed from the auth origin.
//! Tokens issued before the epoch are rejected; everything else goes to the upstream.
//!
//! The request path, one module per stage:
//! [`token_source`] → [`verify`] (keys from [`keys`], repeat tokens from [`verified_cache`],
//! clients that failed too often held back by [`invalid_token_budget`], who the client is
//! from [`client_ip`]) → [`epoch_cache`] (records from [`origin`], rules in
//! [`revocation`]) → [`gate`] (mode by [`route`]) → [`decision`] → [`proxy`] (Pingora glue)
//! → [`upstream`] (the health-checked pool).
//! Around it: [`config`], [`metrics`], [`admin`], [`access_log`], [`server`] (with [`tls`]
//! for the listener's certificate), [`clock`], and, with the `demo` feature (on by default),
//! the `reference` auth origin and streaming origin used by `epochgate demo` and the tests.

pub mod access_log;
pub mod admin;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod decision;
#[cfg(feature = "demo")]
pub mod demo;
pub mod epoch_cache;
pub mod feed;
pub mod gate;
pub mod invalid_token_budget;
pub mod keys;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod record_source;
#[cfg(feature = "demo")]
pub mod reference;
pub mod replica;
pub mod revocation;
pub mod route;
pub mod server;
pub mod tls;
pub mod token_source;
pub mod upstream;
pub mod verified_cache;
pub mod verify;

pub use config::Settings;
pub use decision::{Decision, Reason};
pub use gate::Gate;

/// Milliseconds on the process's monotonic clock (never 0); see [`clock`].
pub fn monotonic_millis() -> u64 {
    clock::Clock::monotonic_millis(&clock::SystemClock)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it); see [`clock`].
pub fn unix_millis() -> u64 {
    clock::Clock::unix_millis(&clock::SystemClock)
}
