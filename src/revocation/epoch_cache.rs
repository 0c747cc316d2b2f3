//! The bounded per-account cache of revocation records: single-flight fetches that outlive
//! their requester, stale-while-revalidate, `max_stale`, and the max-merge rule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::clock::{self, SharedClock};
use crate::config::CacheSettings;
use crate::metrics::{CacheResult, Metrics};
use crate::revocation::coverage::FeedCoverage;
use crate::revocation::origin::OriginError;
use crate::revocation::record_source::RecordSource;
use crate::revocation::{RevocationRecord, Standing};

/// After a failed background refresh, the next attempt for that account waits this long,
/// so a down origin sees one retry per account per second, not one per request.
const REFRESH_RETRY: Duration = Duration::from_secs(1);

/// A record and when the origin last confirmed it. Kept compact: an edge holds a million of
/// these, and most accounts have no device epochs at all.
#[derive(Debug)]
pub struct CachedRecord {
    epoch: u64,
    /// Per-device epochs; `None` for the common account without any. Boxed on purpose: a
    /// pointer in every entry instead of a map that is almost always empty.
    #[allow(clippy::box_collection)]
    devices: Option<Box<HashMap<String, u64>>>,
    /// When the origin (or the feed) last confirmed it, on the monotonic clock: for a fetch,
    /// when it was asked for, since its answer may predate its arrival.
    confirmed_at_ms: u64,
    /// The last failed check or background refresh, on the monotonic clock (0: none).
    last_attempt_ms: AtomicU64,
    /// Set while a background refresh of this entry is running or waiting to retry.
    refresh_claimed: AtomicBool,
    /// Must be checked with the origin before its next use (the feed may have lost a change).
    forced_due: AtomicBool,
    /// No longer the cache's record for its account (replaced by a newer one, or evicted):
    /// a [`LastRecord`] holding it must look the account up again.
    superseded: AtomicBool,
}

impl CachedRecord {
    fn forced_due(&self) -> bool {
        self.forced_due.load(Ordering::Acquire)
    }

    fn new(record: RevocationRecord, confirmed_at_ms: u64) -> Self {
        CachedRecord {
            epoch: record.epoch,
            devices: (!record.devices.is_empty()).then(|| Box::new(record.devices)),
            confirmed_at_ms,
            last_attempt_ms: AtomicU64::new(0),
            refresh_claimed: AtomicBool::new(false),
            forced_due: AtomicBool::new(false),
            superseded: AtomicBool::new(false),
        }
    }

    /// How long ago it was confirmed, `now_ms` being a monotonic reading.
    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.confirmed_at_ms))
    }

    /// Whether a token of this device, issued at this time, survives the record.
    pub fn standing(&self, device: &str, session_time: u64) -> Standing {
        let device_epoch = self.devices.as_ref().and_then(|d| d.get(device).copied());
        RevocationRecord::standing_of(self.epoch, device_epoch, session_time)
    }

    /// The record as the protocol describes it.
    pub fn record(&self) -> RevocationRecord {
        RevocationRecord {
            epoch: self.epoch,
            devices: self.devices.as_deref().cloned().unwrap_or_default(),
        }
    }
}

/// The record a remembered token was last judged by. While that record is still the cache's
/// current one for the account and fresh, a repeat request uses it without looking the
/// account up: one cache lookup per request (the verified token's) instead of two. A record
/// is marked superseded when the cache replaces it (in the merge that replaces it, before the
/// new record is in) or drops it (in moka's eviction listener, which runs as the entry is
/// removed), and the next request looks the account up again.
#[derive(Debug, Default)]
pub struct LastRecord(ArcSwapOption<CachedRecord>);

/// The answer to "what do we know about this account".
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A record younger than `refresh_after`, or just fetched.
    Fresh(Arc<CachedRecord>),
    /// Older than `refresh_after` but younger than `max_stale`; a refresh is running.
    Stale(Arc<CachedRecord>),
    /// No record young enough, and the origin could not give one.
    Unavailable,
}

type Flight = Shared<BoxFuture<'static, Result<Arc<CachedRecord>, OriginError>>>;

/// The epoch cache (a handle: clones share the same cache).
#[derive(Clone)]
pub struct EpochCache {
    inner: Arc<Inner>,
}

struct Inner {
    coverage: Arc<FeedCoverage>,
    cache: moka::future::Cache<String, Arc<CachedRecord>, ahash::RandomState>,
    /// Fetches under way, one per account. moka's own `try_get_with` only coalesces loads of
    /// absent keys; refreshes of present-but-old entries need the same, so one map serves both.
    in_flight: Mutex<HashMap<String, Flight>>,
    source: Arc<dyn RecordSource>,
    settings: CacheSettings,
    metrics: Arc<Metrics>,
    clock: SharedClock,
}

impl EpochCache {
    /// A cache that fetches missing and old records from `source`.
    pub fn new(
        settings: CacheSettings,
        source: Arc<dyn RecordSource>,
        metrics: Arc<Metrics>,
    ) -> Self {
        EpochCache::with_clock(settings, source, metrics, clock::system())
    }

    /// A cache that measures ages and retry intervals on `clock`.
    pub fn with_clock(
        settings: CacheSettings,
        source: Arc<dyn RecordSource>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.max_accounts)
            // A dropped record may still be held by remembered tokens (see LastRecord).
            .eviction_listener(|_account, record: Arc<CachedRecord>, _cause| {
                record.superseded.store(true, Ordering::Release)
            })
            // Keyed with a per-process random seed like std's SipHash, at a fraction of the
            // cost per lookup.
            .build_with_hasher(ahash::RandomState::new());
        EpochCache {
            inner: Arc::new(Inner {
                coverage: Arc::new(FeedCoverage::new(clock.clone())),
                cache,
                in_flight: Mutex::new(HashMap::new()),
                source,
                settings,
                metrics,
                clock,
            }),
        }
    }

    /// Like [`EpochCache::lookup`], but first tries the record this token was last judged by
    /// (no cache lookup while it is current and fresh), and remembers the one used.
    pub async fn lookup_from(&self, account: &str, last: &LastRecord) -> Lookup {
        if let Some(entry) = last.0.load_full() {
            if !entry.superseded.load(Ordering::Acquire) && self.usable_as_is(&entry) {
                self.inner.metrics.count_lookup(CacheResult::Hit);
                return Lookup::Fresh(entry);
            }
        }
        // Boxed: a lookup's state (moka's and a possible origin fetch's) would otherwise be
        // part of every request's future, which a proxy hook allocates per request.
        let found = Box::pin(self.lookup(account)).await;
        if let Lookup::Fresh(entry) | Lookup::Stale(entry) = &found {
            last.0.store(Some(entry.clone()));
        }
        found
    }

    /// Fresh enough to judge by without asking the origin or refreshing it.
    fn usable_as_is(&self, entry: &CachedRecord) -> bool {
        !self
            .inner
            .coverage
            .due(entry.confirmed_at_ms, entry.forced_due())
            && entry.age(self.inner.clock.monotonic_millis()) < self.fresh_for(entry)
    }

    /// With the feed vouching for it, a record stays fresh until max_stale (a safety net
    /// against a feed that pings but no longer publishes).
    fn fresh_for(&self, entry: &CachedRecord) -> Duration {
        if self.inner.coverage.covers(entry.confirmed_at_ms) {
            self.inner.settings.max_stale
        } else {
            self.inner.settings.refresh_after
        }
    }

    /// The record to judge a request by, fetching or refreshing as the entry's age requires.
    pub async fn lookup(&self, account: &str) -> Lookup {
        let inner = &self.inner;
        if let Some(entry) = inner.cache.get(account).await {
            let now = inner.clock.monotonic_millis();
            let age = entry.age(now);
            if inner
                .coverage
                .due(entry.confirmed_at_ms, entry.forced_due())
            {
                // The feed may have lost a change for it: check with the origin before use,
                // but survive an origin outage on the record we have, up to max_stale. A check
                // that failed less than REFRESH_RETRY ago is not repeated for every request.
                inner.metrics.count_lookup(CacheResult::Miss);
                let failed_recently = clock::within(
                    entry.last_attempt_ms.load(Ordering::Relaxed),
                    now,
                    REFRESH_RETRY,
                );
                let checked = if failed_recently {
                    Err(())
                } else {
                    self.fetch(account).await.map_err(|_| {
                        entry.last_attempt_ms.store(now, Ordering::Relaxed);
                    })
                };
                return match checked {
                    Ok(fresh) => Lookup::Fresh(fresh),
                    Err(()) if age < inner.settings.max_stale => Lookup::Stale(entry),
                    Err(()) => Lookup::Unavailable,
                };
            }
            if age < self.fresh_for(&entry) {
                inner.metrics.count_lookup(CacheResult::Hit);
                return Lookup::Fresh(entry);
            }
            if age < inner.settings.max_stale {
                inner.metrics.count_lookup(CacheResult::Stale);
                self.refresh_in_background(account, &entry);
                return Lookup::Stale(entry);
            }
        }
        inner.metrics.count_lookup(CacheResult::Miss);
        match self.fetch(account).await {
            Ok(entry) => Lookup::Fresh(entry),
            Err(_) => Lookup::Unavailable,
        }
    }

    /// Accounts held now (pending inserts and evictions applied first, so the count is current).
    pub async fn entry_count(&self) -> u64 {
        self.inner.cache.run_pending_tasks().await;
        self.inner.cache.entry_count()
    }

    /// Marks one account's record as needing a check with the origin before its next use,
    /// including the record a lookup under way is about to bring (it may predate the change).
    pub async fn mark_due(&self, account: &str) {
        if let Some(entry) = self.inner.cache.get(account).await {
            entry.forced_due.store(true, Ordering::Release);
        }
        let in_flight = match self.inner.in_flight.lock() {
            Ok(map) => map.get(account).cloned(),
            Err(poisoned) => poisoned.into_inner().get(account).cloned(),
        };
        if let Some(flight) = in_flight {
            tokio::spawn(async move {
                if let Ok(entry) = flight.await {
                    entry.forced_due.store(true, Ordering::Release);
                }
            });
        }
    }

    /// The feed's view of this cache.
    pub fn coverage(&self) -> &Arc<FeedCoverage> {
        &self.inner.coverage
    }

    /// Applies a record pushed by the feed. Accounts neither cached nor being fetched are
    /// ignored: memory stays bounded by the accounts this edge serves, and such an account
    /// is fetched fresh on its first request anyway. Returns whether it was applied.
    pub async fn apply_pushed(&self, account: &str, record: RevocationRecord) -> bool {
        let fetching = match self.inner.in_flight.lock() {
            Ok(map) => map.contains_key(account),
            Err(poisoned) => poisoned.into_inner().contains_key(account),
        };
        if !fetching && !self.inner.cache.contains_key(account) {
            return false;
        }
        Inner::merge(
            &self.inner,
            account,
            record,
            self.inner.clock.monotonic_millis(),
        )
        .await;
        true
    }

    /// Merges a record into the cache (max of old and new), marking it confirmed now.
    pub async fn merge(&self, account: &str, record: RevocationRecord) -> Arc<CachedRecord> {
        Inner::merge(
            &self.inner,
            account,
            record,
            self.inner.clock.monotonic_millis(),
        )
        .await
    }

    /// At most one refresh per entry at a time, and not more than once per [`REFRESH_RETRY`].
    fn refresh_in_background(&self, account: &str, entry: &Arc<CachedRecord>) {
        let now = self.inner.clock.monotonic_millis();
        if clock::within(
            entry.last_attempt_ms.load(Ordering::Relaxed),
            now,
            REFRESH_RETRY,
        ) {
            return;
        }
        if entry.refresh_claimed.swap(true, Ordering::AcqRel) {
            return;
        }
        entry.last_attempt_ms.store(now, Ordering::Relaxed);
        let flight = self.fetch(account);
        let entry = entry.clone();
        tokio::spawn(async move {
            if flight.await.is_err() {
                // Let a later request try again after REFRESH_RETRY.
                entry.refresh_claimed.store(false, Ordering::Release);
            }
        });
    }

    /// Joins the fetch under way for this account or starts one. The fetch runs in its own
    /// task: a requester that goes away does not cancel it for the others.
    fn fetch(&self, account: &str) -> Flight {
        let mut in_flight = match self.inner.in_flight.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(flight) = in_flight.get(account) {
            return flight.clone();
        }
        let inner = self.inner.clone();
        let key = account.to_string();
        let asked_at_ms = self.inner.clock.monotonic_millis();
        let task = tokio::spawn(async move {
            let result = match inner.source.fetch_record(&key).await {
                Ok(record) => Ok(Inner::merge(&inner, &key, record, asked_at_ms).await),
                Err(e) => Err(e),
            };
            if let Ok(mut map) = inner.in_flight.lock() {
                map.remove(&key);
            }
            result
        });
        let flight: Flight = async move {
            task.await
                .unwrap_or_else(|e| Err(OriginError::Transport(format!("fetch task failed: {e}"))))
        }
        .boxed()
        .shared();
        in_flight.insert(account.to_string(), flight.clone());
        flight
    }
}

impl Inner {
    /// The merged record holds everything either one held, so it is confirmed as of the
    /// later of the two confirmations.
    async fn merge(
        inner: &Arc<Inner>,
        account: &str,
        record: RevocationRecord,
        confirmed_at_ms: u64,
    ) -> Arc<CachedRecord> {
        let entry = inner
            .cache
            .entry_by_ref(account)
            .and_upsert_with(|existing| {
                let (merged, confirmed_at_ms) = match existing {
                    Some(old) => {
                        // Marked now, not when moka tells the eviction listener: a token
                        // holding the old record must not be judged by it once this merge
                        // (a sign-out, say) is in.
                        old.value().superseded.store(true, Ordering::Release);
                        let mut merged = old.value().record().merged(&record);
                        // Each record is within the device bound, their union may not be:
                        // drop what the account epoch makes redundant (no decision changes).
                        if merged.devices.len() > inner.settings.max_devices_per_account {
                            merged = merged.without_redundant_devices();
                        }
                        (merged, old.value().confirmed_at_ms.max(confirmed_at_ms))
                    }
                    None => (record, confirmed_at_ms),
                };
                std::future::ready(Arc::new(CachedRecord::new(merged, confirmed_at_ms)))
            })
            .await;
        entry.into_value()
    }
}

#[cfg(test)]
mod tests;
