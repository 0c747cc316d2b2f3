//! The fleet replica: every revocation record, kept current from a NATS JetStream key-value
//! bucket, so that the edge decides without asking the auth origin.
//!
//! [`store`] holds the records, [`watch`] keeps them current (and owns the connection),
//! [`nats`] reaches and checks the bucket, [`entry`] reads and applies one bucket entry,
//! [`key`] maps account ids to bucket keys, [`publish`] is the writing side (used by the
//! reference auth origin). The `replica:` config section is [`ReplicaSettings`].

pub mod entry;
pub mod key;
pub mod nats;
pub mod publish;
pub mod store;
pub mod watch;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::clock::SharedClock;
pub use crate::config::{ReplicaFile, ReplicaSettings};
pub use store::{Held, ReplicaStore};

/// The replica's state as `/readyz` and `epochgate_replica_state` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Connected and watching, the initial values not all in yet.
    Loading,
    /// Connected and watching, every value in.
    Complete,
    /// No watch running (NATS unreachable, the bucket missing or unfit, or between retries).
    Disconnected,
}

impl ReplicaState {
    pub const ALL: [ReplicaState; 3] = [
        ReplicaState::Loading,
        ReplicaState::Complete,
        ReplicaState::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Loading => "loading",
            ReplicaState::Complete => "complete",
            ReplicaState::Disconnected => "disconnected",
        }
    }
}

/// What the gate gets from the replica for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAnswer {
    /// The initial values are not all loaded yet: `503 not_ready`.
    NotReady,
    /// Too long without contact, or the account's value is unusable: the policy applies.
    Unavailable,
    /// Decide by this.
    Held(Held),
}

/// The replica's metrics, registered in the gate's registry.
pub struct ReplicaMetrics {
    pub records: IntGauge,
    state: IntGaugeVec,
    applied: IntCounter,
    malformed: IntCounter,
    pub last_contact_age: Gauge,
    lag: Histogram,
}

/// Buckets of the replication lag: a sign-out normally arrives in milliseconds; the upper
/// ones show an edge that was cut off.
const LAG_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
];

impl ReplicaMetrics {
    fn new(registry: &Registry) -> ReplicaMetrics {
        let records = IntGauge::new(
            "epochgate_replica_records",
            "Accounts held by the fleet replica (usable or not).",
        )
        .expect("static metric definition");
        let state = IntGaugeVec::new(
            Opts::new(
                "epochgate_replica_state",
                "The fleet replica's state: 1 on the current state's series, 0 on the others.",
            ),
            &["state"],
        )
        .expect("static metric definition");
        let updates = IntCounterVec::new(
            Opts::new(
                "epochgate_replica_updates_total",
                "Bucket entries the replica handled: applied, or malformed (skipped).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let last_contact_age = Gauge::new(
            "epochgate_replica_last_contact_age_seconds",
            "Seconds since the replica last heard from NATS (an entry or a round trip; with replica.require_heartbeat, since the time of the last heartbeat it received).",
        )
        .expect("static metric definition");
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "epochgate_replica_lag_seconds",
                "From a record's changed_at_ms to the replica applying it (live updates only).",
            )
            .buckets(LAG_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        for collector in [
            Box::new(records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(state.clone()),
            Box::new(updates.clone()),
            Box::new(last_contact_age.clone()),
            Box::new(lag.clone()),
        ] {
            if let Err(e) = registry.register(collector) {
                log::error!("replica metric not registered: {e}");
            }
        }
        ReplicaMetrics {
            records,
            applied: updates.with_label_values(&["applied"]),
            malformed: updates.with_label_values(&["malformed"]),
            state,
            last_contact_age,
            lag,
        }
    }
}

/// The replica: the store, its state and its metrics. The watch ([`watch::ReplicaWatch`])
/// writes; the gate reads.
pub struct Replica {
    store: ReplicaStore,
    settings: ReplicaSettings,
    /// The initial values were all loaded at least once.
    complete: AtomicBool,
    /// A watch is open (it may be waiting for the connection to come back).
    watching: AtomicBool,
    /// The last round trip to NATS (or entry) succeeded.
    connected: AtomicBool,
    /// Monotonic milliseconds of the last entry or round trip (0: never).
    last_contact_ms: AtomicU64,
    /// The publisher's stamp (Unix milliseconds) on the newest heartbeat received (0: none);
    /// the contact's age with `require_heartbeat`. The contact dates from that stamp, so a
    /// heartbeat that was already old on arrival (read from a mirror that had been cut off)
    /// is not fresh.
    last_heartbeat_at_ms: AtomicU64,
    metrics: ReplicaMetrics,
    clock: SharedClock,
}

impl Replica {
    pub fn new(settings: ReplicaSettings, registry: &Registry, clock: SharedClock) -> Arc<Replica> {
        let replica = Arc::new(Replica {
            store: ReplicaStore::new(),
            settings,
            complete: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            last_contact_ms: AtomicU64::new(0),
            last_heartbeat_at_ms: AtomicU64::new(0),
            metrics: ReplicaMetrics::new(registry),
            clock,
        });
        replica.refresh_gauges();
        replica
    }

    pub fn settings(&self) -> &ReplicaSettings {
        &self.settings
    }

    pub fn store(&self) -> &ReplicaStore {
        &self.store
    }

    pub fn state(&self) -> ReplicaState {
        if !self.watching.load(Ordering::Acquire) || !self.connected.load(Ordering::Acquire) {
            ReplicaState::Disconnected
        } else if self.complete.load(Ordering::Acquire) {
            ReplicaState::Complete
        } else {
            ReplicaState::Loading
        }
    }

    /// Whether the initial values were all loaded (at least once): `/readyz`.
    pub fn loaded(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// Time since the last contact with NATS (with `require_heartbeat`: since the stamp on
    /// the newest heartbeat); `None` if there never was any.
    pub fn last_contact_age(&self) -> Option<Duration> {
        if self.settings.require_heartbeat {
            return match self.last_heartbeat_at_ms.load(Ordering::Acquire) {
                0 => None,
                at => Some(Duration::from_millis(
                    self.clock.unix_millis().saturating_sub(at),
                )),
            };
        }
        match self.last_contact_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(
                self.clock.monotonic_millis().saturating_sub(at),
            )),
        }
    }

    /// What a request for this account's token gets.
    pub fn answer(&self, account: &str, device: &str, session_time: u64) -> ReplicaAnswer {
        if !self.loaded() {
            return ReplicaAnswer::NotReady;
        }
        match self.last_contact_age() {
            Some(age) if age <= self.settings.max_stale => {}
            _ => return ReplicaAnswer::Unavailable,
        }
        match self.store.standing(account, device, session_time) {
            Held::Unusable => ReplicaAnswer::Unavailable,
            held => ReplicaAnswer::Held(held),
        }
    }

    /// Updates the gauges that are read rather than counted (before a scrape).
    pub fn refresh_gauges(&self) {
        self.metrics.records.set(self.store.len() as i64);
        let current = self.state();
        for state in ReplicaState::ALL {
            self.metrics
                .state
                .with_label_values(&[state.as_str()])
                .set(i64::from(state == current));
        }
        // Never in contact: as old as the process's monotonic clock says.
        let age = self
            .last_contact_age()
            .unwrap_or(Duration::from_millis(self.clock.monotonic_millis()));
        self.metrics.last_contact_age.set(age.as_secs_f64());
    }

    /// `/readyz`'s replica fields.
    pub fn readiness(&self) -> serde_json::Value {
        serde_json::json!({
            "replica": self.state().as_str(),
            "replica_records": self.store.len(),
            "replica_last_contact_age_seconds": self.last_contact_age().map(|a| a.as_secs_f64()),
        })
    }

    /// NATS answered: an entry or a round trip. That is contact unless only the publisher's
    /// heartbeat counts.
    fn reached(&self) {
        if !self.settings.require_heartbeat {
            self.last_contact_ms
                .store(self.clock.monotonic_millis(), Ordering::Release);
        }
        self.connected.store(true, Ordering::Release);
    }

    /// The publisher's heartbeat, stamped `at_ms` (Unix milliseconds) by the publisher: the
    /// replica held everything published up to then. (Its message was already counted as
    /// contact by [`Replica::reached`]; the stamp only matters with `require_heartbeat`.)
    fn heartbeat(&self, at_ms: u64) {
        self.last_heartbeat_at_ms.fetch_max(at_ms, Ordering::AcqRel);
    }

    /// A round trip failed.
    fn lost_contact(&self) {
        self.connected.store(false, Ordering::Release);
    }

    fn set_watching(&self, watching: bool) {
        self.watching.store(watching, Ordering::Release);
    }

    fn set_complete(&self) {
        if !self.complete.swap(true, Ordering::AcqRel) {
            log::info!(
                "replica complete: {} account record(s) loaded",
                self.store.len()
            );
        }
    }

    fn count_applied(&self, changed_at_ms: Option<u64>, live: bool) {
        self.metrics.applied.inc();
        if let (Some(changed), true) = (changed_at_ms, live) {
            let lag_ms = self.clock.unix_millis().saturating_sub(changed);
            self.metrics.lag.observe(lag_ms as f64 / 1000.0);
        }
    }

    fn count_malformed(&self) {
        self.metrics.malformed.inc();
    }
}
