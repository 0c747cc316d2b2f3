//! The metrics' label values (auth-origin endpoint and outcome, cache result, feed event) and
//! histogram buckets.

/// Buckets of the gate's own share of a request: tens of microseconds for a remembered token,
/// up to the auth-origin timeout for a lookup.
pub(crate) const GATE_BUCKETS: [f64; 15] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
];

/// Buckets of a whole request, upstream included (a segment download can take seconds).
pub(crate) const REQUEST_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Buckets of the age of the record a decision was made with: up to `cache.max_stale`'s
/// default (10 minutes) and past it.
pub(crate) const RECORD_AGE_BUCKETS: [f64; 11] = [
    0.1, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The `decision` label of an ungated request (a `mode: off` route) in the duration histogram.
pub const UNGATED: &str = "ungated";

/// Which auth-origin endpoint a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Revocations,
    Jwks,
    /// Opening the revocation feed.
    Feed,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Revocations => "revocations",
            Endpoint::Jwks => "jwks",
            Endpoint::Feed => "feed",
        }
    }
}

/// How an auth-origin request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    Error,
    Timeout,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::Error,
        Outcome::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

/// How a cache lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
}

/// What the revocation feed delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEvent {
    Revocation,
    Reset,
    Malformed,
}
