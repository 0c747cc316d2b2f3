//! epochgate: edge enforcement of "sign out of all devices".
//!
//! A request's device token is verified, then compared with its account's revocation epoch
//! (and the device's own epoch), held in a bounded cache refreshed from the auth origin.
//! Tokens issued before the epoch are rejected; everything else goes to the upstream.
//!
//! # Module map
//!
//! The folders follow the request path of the README: a request enters through `edge`, is
//! judged by [`gate`] with the stages in `request` and the epochs in `revocation`, and leaves
//! through `edge` again.
//!
//! - [`gate`]: the core, no Pingora: token → verification (or the verified-token cache) →
//!   epoch lookup → [`Decision`].
//! - `request/`: the stages before the epoch.
//!   - [`request::token_source`]: finding the token (header, query, cookie) and removing it.
//!   - [`request::verify`]: pure verification: header, signature, claims.
//!   - [`request::keys`]: static keys or the auth origin's JWKS.
//!   - [`request::verified_cache`]: tokens verified before, by their SHA-256.
//!   - [`request::invalid_token_budget`]: the per-client budget of failed verifications.
//!   - [`request::client_ip`]: the client's address behind trusted proxies.
//!   - [`request::route`]: the mode (`enforce`, `observe`, `off`) of a request's path.
//!   - [`request::decision`]: the decision, and the one place it becomes a response.
//! - `revocation/`: where epochs come from and how they are held.
//!   - [`revocation::record`]: an account's record, what it revokes, how records merge.
//!   - [`revocation::record_source`]: the seam: who answers "what is this account's record".
//!   - [`revocation::epoch_cache`]: the bounded cache: single flight, stale-while-revalidate.
//!   - [`revocation::coverage`]: what the feed vouches for, and records due after a gap.
//!   - [`revocation::origin`]: the auth origin's HTTP client (lookups, JWKS, feed).
//!   - [`revocation::feed`]: the pushed sign-outs (SSE) and their status.
//!   - [`revocation::sse`]: the Server-Sent Events parser.
//!   - [`revocation::replica`]: the fleet replica: every record, from a NATS JetStream
//!     bucket (key encoding, compact store, entries, watch, reaching and checking the
//!     bucket, publisher).
//! - `edge/`: the Pingora side.
//!   - [`edge::admission`]: running the gate on a Pingora session, writing rejections.
//!   - [`edge::forward`]: the request the upstream receives (identity in, token out).
//!   - [`edge::proxy`]: the ready-made `ProxyHttp`.
//!   - [`edge::upstream`]: the health-checked upstream pool.
//!   - [`edge::tls`]: the listener's certificate, reloaded on SIGHUP.
//!   - [`edge::admin`]: `/metrics`, `/healthz`, `/readyz`.
//!   - [`edge::access_log`]: one JSON line per request.
//!   - [`edge::drain`]: keep-alive connections drained through a graceful shutdown.
//!   - [`edge::watchdog`]: the process ends if its proxy listener does not accept.
//!   - [`edge::server`]: the server assembled from the settings.
//! - [`config`]: the YAML file, its validation, and the runtime [`Settings`].
//! - [`metrics`]: the gate's Prometheus metrics.
//! - [`clock`]: the monotonic and the wall clock, injectable for tests.
//! - [`throttled_log`]: warnings at most once per interval.
//! - `reference` and `demo` (feature `demo`, on by default): the reference auth origin and
//!   streaming origin, and `epochgate demo`.

pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod edge;
pub mod gate;
pub mod metrics;
#[cfg(feature = "demo")]
pub mod reference;
pub mod request;
pub mod revocation;
pub mod throttled_log;

pub use config::Settings;
pub use gate::Gate;
pub use request::decision::{Decision, Reason};

/// Milliseconds on the process's monotonic clock (never 0); see [`clock`].
pub fn monotonic_millis() -> u64 {
    clock::Clock::monotonic_millis(&clock::SystemClock)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it); see [`clock`].
pub fn unix_millis() -> u64 {
    clock::Clock::unix_millis(&clock::SystemClock)
}
