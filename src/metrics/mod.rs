//! Prometheus metrics of one gate, in a registry of its own, with label handles resolved once.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::request::decision::DecisionLabel;
use crate::request::route::Mode;

mod labels;

pub use labels::{CacheResult, Endpoint, FeedEvent, Outcome, UNGATED};
use labels::{GATE_BUCKETS, RECORD_AGE_BUCKETS, REQUEST_BUCKETS};

/// Every metric the gate exports.
pub struct Metrics {
    registry: Registry,
    requests: Vec<((DecisionLabel, Mode), IntCounter)>,
    requests_ungated: IntCounter,
    gate_duration: Vec<(DecisionLabel, Histogram)>,
    request_duration: Vec<(DecisionLabel, Histogram)>,
    request_duration_ungated: Histogram,
    verified_cache_hit: IntCounter,
    verified_cache_miss: IntCounter,
    pub verified_cache_entries: IntGauge,
    record_age: Histogram,
    cache_hit: IntCounter,
    cache_miss: IntCounter,
    cache_stale: IntCounter,
    origin_requests: Vec<((Endpoint, Outcome), IntCounter)>,
    origin_duration: [Histogram; 3],
    pub cache_entries: IntGauge,
    pub jwks_keys: IntGauge,
    pub feed_connected: IntGauge,
    feed_events: [IntCounter; 3],
    pub feed_reconnects: IntCounter,
    pub feed_last_activity_age: Gauge,
    feed_lag: Histogram,
    pub origin_lookups_in_flight: IntGauge,
    origin_lookup_queue_wait: Histogram,
    origin_lookup_queue_timeouts: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests_vec = IntCounterVec::new(
            Opts::new(
                "epochgate_requests_total",
                "Requests through the gate, by decision and mode (enforce: applied; observe: counted and forwarded).",
            ),
            &["decision", "mode"],
        )
        .expect("static metric definition");
        let requests_ungated = IntCounter::new(
            "epochgate_requests_ungated_total",
            "Requests on routes with mode off: forwarded without a decision.",
        )
        .expect("static metric definition");
        let gate_duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "epochgate_gate_duration_seconds",
                "The gate's own share of a request (token, verification, epoch lookup), by decision.",
            )
            .buckets(GATE_BUCKETS.to_vec()),
            &["decision"],
        )
        .expect("static metric definition");
        let request_duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "epochgate_request_duration_seconds",
                "Whole requests, from the gate to the last byte sent to the client, by decision (ungated: mode off).",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["decision"],
        )
        .expect("static metric definition");
        let verified_lookups = IntCounterVec::new(
            Opts::new(
                "epochgate_verified_cache_lookups_total",
                "Verified-token cache lookups, by result (hit: the token's verification was skipped).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let verified_cache_entries = IntGauge::new(
            "epochgate_verified_cache_entries",
            "Tokens held in the verified-token cache.",
        )
        .expect("static metric definition");
        let record_age = Histogram::with_opts(
            HistogramOpts::new(
                "epochgate_decision_record_age_seconds",
                "Age of the revocation record a decision was made with (since the origin or the feed last confirmed it).",
            )
            .buckets(RECORD_AGE_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        let lookups = IntCounterVec::new(
            Opts::new(
                "epochgate_epoch_cache_lookups_total",
                "Revocation-epoch cache lookups, by result (stale: served while a refresh runs).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let origin_vec = IntCounterVec::new(
            Opts::new(
                "epochgate_origin_requests_total",
                "Requests to the auth origin, by endpoint and outcome.",
            ),
            &["endpoint", "outcome"],
        )
        .expect("static metric definition");
        let duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "epochgate_origin_request_duration_seconds",
                "Duration of auth-origin requests, by endpoint.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["endpoint"],
        )
        .expect("static metric definition");
        let cache_entries = IntGauge::new(
            "epochgate_epoch_cache_entries",
            "Accounts held in the revocation-epoch cache.",
        )
        .expect("static metric definition");
        let feed_connected = IntGauge::new(
            "epochgate_feed_connected",
            "1 while the revocation feed is connected.",
        )
        .expect("static metric definition");
        let feed_events = IntCounterVec::new(
            Opts::new(
                "epochgate_feed_events_total",
                "Revocation-feed events, by event (revocation, reset, malformed).",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let feed_reconnects = IntCounter::new(
            "epochgate_feed_reconnects_total",
            "Revocation-feed connection attempts after the first (not counting the slow retries of a feed the origin does not offer).",
        )
        .expect("static metric definition");
        let feed_last_activity_age = Gauge::new(
            "epochgate_feed_last_event_age_seconds",
            "Seconds since the revocation feed last delivered an event or a ping.",
        )
        .expect("static metric definition");
        let feed_lag = Histogram::with_opts(
            HistogramOpts::new(
                "epochgate_feed_propagation_seconds",
                "From the origin recording a change (changed_at_ms) to the edge applying it.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
        )
        .expect("static metric definition");
        let jwks_keys = IntGauge::new("epochgate_jwks_keys", "Verification keys currently loaded.")
            .expect("static metric definition");
        let origin_lookups_in_flight = IntGauge::new(
            "epochgate_origin_lookups_in_flight",
            "Revocation lookups sent to the auth origin and not finished (at most auth_origin.max_concurrent_lookups).",
        )
        .expect("static metric definition");
        let origin_lookup_queue_wait = Histogram::with_opts(
            HistogramOpts::new(
                "epochgate_origin_lookup_queue_wait_seconds",
                "Time a revocation lookup waited for a free slot (auth_origin.max_concurrent_lookups) before it was sent or given up.",
            )
            .buckets(vec![
                0.0001, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("static metric definition");
        let origin_lookup_queue_timeouts = IntCounter::new(
            "epochgate_origin_lookup_queue_timeouts_total",
            "Revocation lookups given up, never sent, after waiting auth_origin.timeout for a free slot.",
        )
        .expect("static metric definition");

        for collector in [
            Box::new(requests_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lookups.clone()),
            Box::new(origin_vec.clone()),
            Box::new(duration_vec.clone()),
            Box::new(cache_entries.clone()),
            Box::new(jwks_keys.clone()),
            Box::new(feed_connected.clone()),
            Box::new(feed_events.clone()),
            Box::new(feed_reconnects.clone()),
            Box::new(feed_last_activity_age.clone()),
            Box::new(feed_lag.clone()),
            Box::new(origin_lookups_in_flight.clone()),
            Box::new(origin_lookup_queue_wait.clone()),
            Box::new(origin_lookup_queue_timeouts.clone()),
            Box::new(requests_ungated.clone()),
            Box::new(gate_duration_vec.clone()),
            Box::new(request_duration_vec.clone()),
            Box::new(verified_lookups.clone()),
            Box::new(verified_cache_entries.clone()),
            Box::new(record_age.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }

        // Label handles are looked up once here so the request path never hashes label values.
        let mut requests = Vec::new();
        for mode in [Mode::Enforce, Mode::Observe] {
            for d in &DecisionLabel::ALL {
                requests.push((
                    (*d, mode),
                    requests_vec.with_label_values(&[d.as_str(), mode.as_str()]),
                ));
            }
        }
        let by_decision = |vec: &HistogramVec| {
            DecisionLabel::ALL
                .iter()
                .map(|d| (*d, vec.with_label_values(&[d.as_str()])))
                .collect::<Vec<_>>()
        };
        let mut origin_requests = Vec::new();
        for endpoint in [Endpoint::Revocations, Endpoint::Jwks, Endpoint::Feed] {
            for outcome in Outcome::ALL {
                origin_requests.push((
                    (endpoint, outcome),
                    origin_vec.with_label_values(&[endpoint.label(), outcome.label()]),
                ));
            }
        }
        Metrics {
            cache_hit: lookups.with_label_values(&["hit"]),
            cache_miss: lookups.with_label_values(&["miss"]),
            cache_stale: lookups.with_label_values(&["stale"]),
            origin_duration: [
                duration_vec.with_label_values(&[Endpoint::Revocations.label()]),
                duration_vec.with_label_values(&[Endpoint::Jwks.label()]),
                duration_vec.with_label_values(&[Endpoint::Feed.label()]),
            ],
            feed_events: [
                feed_events.with_label_values(&["revocation"]),
                feed_events.with_label_values(&["reset"]),
                feed_events.with_label_values(&["malformed"]),
            ],
            feed_connected,
            feed_reconnects,
            feed_last_activity_age,
            feed_lag,
            origin_lookups_in_flight,
            origin_lookup_queue_wait,
            origin_lookup_queue_timeouts,
            registry,
            requests,
            requests_ungated,
            gate_duration: by_decision(&gate_duration_vec),
            request_duration: by_decision(&request_duration_vec),
            request_duration_ungated: request_duration_vec.with_label_values(&[UNGATED]),
            verified_cache_hit: verified_lookups.with_label_values(&["hit"]),
            verified_cache_miss: verified_lookups.with_label_values(&["miss"]),
            verified_cache_entries,
            record_age,
            origin_requests,
            cache_entries,
            jwks_keys,
        }
    }

    /// The registry, for embedders who expose it next to their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a decision made in `mode` (`enforce` or `observe`; an ungated request has no
    /// decision: see [`Metrics::count_ungated`]).
    pub fn count_decision(&self, label: DecisionLabel, mode: Mode) {
        if let Some((_, c)) = self.requests.iter().find(|(k, _)| *k == (label, mode)) {
            c.inc();
        }
    }

    /// Counts a request on a `mode: off` route.
    pub fn count_ungated(&self) {
        self.requests_ungated.inc();
    }

    /// The gate's own share of a request.
    pub fn observe_gate_duration(&self, label: DecisionLabel, took: Duration) {
        if let Some((_, h)) = self.gate_duration.iter().find(|(d, _)| *d == label) {
            h.observe(took.as_secs_f64());
        }
    }

    /// A whole request; `None` for an ungated one.
    pub fn observe_request_duration(&self, label: Option<DecisionLabel>, took: Duration) {
        let histogram = match label {
            None => Some(&self.request_duration_ungated),
            Some(label) => self
                .request_duration
                .iter()
                .find(|(d, _)| *d == label)
                .map(|(_, h)| h),
        };
        if let Some(h) = histogram {
            h.observe(took.as_secs_f64());
        }
    }

    /// A verified-token cache lookup: `hit` when the token was remembered.
    pub fn count_verified_lookup(&self, hit: bool) {
        if hit {
            self.verified_cache_hit.inc();
        } else {
            self.verified_cache_miss.inc();
        }
    }

    /// The age of the revocation record a decision was made with.
    pub fn observe_record_age(&self, age: Duration) {
        self.record_age.observe(age.as_secs_f64());
    }

    pub fn count_lookup(&self, result: CacheResult) {
        match result {
            CacheResult::Hit => self.cache_hit.inc(),
            CacheResult::Miss => self.cache_miss.inc(),
            CacheResult::Stale => self.cache_stale.inc(),
        }
    }

    pub fn count_origin_request(&self, endpoint: Endpoint, outcome: Outcome, took: Duration) {
        if let Some((_, c)) = self
            .origin_requests
            .iter()
            .find(|(k, _)| *k == (endpoint, outcome))
        {
            c.inc();
        }
        let histogram = match endpoint {
            Endpoint::Revocations => &self.origin_duration[0],
            Endpoint::Jwks => &self.origin_duration[1],
            Endpoint::Feed => &self.origin_duration[2],
        };
        histogram.observe(took.as_secs_f64());
    }

    /// Auth-origin requests counted so far with this endpoint and outcome.
    pub fn origin_requests(&self, endpoint: Endpoint, outcome: Outcome) -> u64 {
        self.origin_requests
            .iter()
            .find(|(k, _)| *k == (endpoint, outcome))
            .map_or(0, |(_, c)| c.get())
    }

    pub fn count_feed_event(&self, event: FeedEvent) {
        let index = match event {
            FeedEvent::Revocation => 0,
            FeedEvent::Reset => 1,
            FeedEvent::Malformed => 2,
        };
        self.feed_events[index].inc();
    }

    /// A revocation lookup waited this long for a slot; `got_one` is false when it gave up.
    pub fn observe_lookup_queue_wait(&self, waited: Duration, got_one: bool) {
        self.origin_lookup_queue_wait.observe(waited.as_secs_f64());
        if !got_one {
            self.origin_lookup_queue_timeouts.inc();
        }
    }

    pub fn observe_feed_lag(&self, lag: Duration) {
        self.feed_lag.observe(lag.as_secs_f64());
    }

    /// The Prometheus text exposition of this gate's metrics.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
