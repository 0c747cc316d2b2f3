//! Verification keys: static (PEM, HMAC secret) or the auth origin's JWKS, refreshed
//! periodically and on an unknown `kid` (at most once per 10 s, one fetch in flight).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use crate::clock::{self, SharedClock};
use crate::config::KeySource;
use crate::revocation::origin::{OriginClient, OriginError};

/// Unknown `kid`s trigger a JWKS fetch at most this often, so a flood of made-up key ids
/// cannot turn into a flood of auth-origin requests.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(10);

/// Reads a public key of one family from PEM.
type PemParser = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// One key and the algorithms it may verify.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
}

impl Key {
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// An immutable set of keys; replaced whole on refresh.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    /// Identifies the JWKS content it came from, so an unchanged JWKS is not a new key set.
    fingerprint: u64,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys that may verify a token with this `kid` (or any key, without one) and algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.accepts(alg)
                && match (kid, &k.kid) {
                    (Some(wanted), Some(have)) => wanted == have,
                    (Some(_), None) => true,
                    (None, _) => true,
                }
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Builds a key set from JWKS entries, skipping (and reporting) what cannot be used.
    pub fn from_jwks(entries: &[serde_json::Value], allowed: &[Algorithm]) -> (KeySet, usize) {
        let mut keys = Vec::new();
        let mut skipped = 0;
        for entry in entries {
            match key_from_jwk(entry, allowed) {
                Some(key) => keys.push(key),
                None => skipped += 1,
            }
        }
        let mut canonical: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        canonical.sort();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&canonical, &mut hasher);
        let fingerprint = std::hash::Hasher::finish(&hasher);
        (KeySet { keys, fingerprint }, skipped)
    }

    /// Builds the key set of a static key source.
    pub fn from_static(source: &KeySource, allowed: &[Algorithm]) -> Result<KeySet, String> {
        let of_family = |family: AlgorithmFamily| -> Vec<Algorithm> {
            allowed
                .iter()
                .copied()
                .filter(|a| a.family() == family)
                .collect()
        };
        let key = match source {
            KeySource::Jwks => return Ok(KeySet::default()),
            KeySource::HmacSecret(secret) => Key {
                kid: None,
                algorithms: of_family(AlgorithmFamily::Hmac),
                decoding: DecodingKey::from_secret(secret),
            },
            KeySource::Pem(pem) => {
                let attempts: [(AlgorithmFamily, PemParser); 3] = [
                    (AlgorithmFamily::Ec, DecodingKey::from_ec_pem),
                    (AlgorithmFamily::Rsa, DecodingKey::from_rsa_pem),
                    (AlgorithmFamily::Ed, DecodingKey::from_ed_pem),
                ];
                attempts
                    .iter()
                    .find_map(|(family, parse)| {
                        parse(pem).ok().map(|decoding| Key {
                            kid: None,
                            algorithms: of_family(*family),
                            decoding,
                        })
                    })
                    .ok_or_else(|| "token.keys.pem_file holds no public key".to_string())?
            }
        };
        if key.algorithms.is_empty() {
            return Err("no configured algorithm fits the configured key".into());
        }
        Ok(KeySet {
            keys: vec![key],
            fingerprint: 0,
        })
    }
}

/// A JWK becomes a key for the configured algorithms its type and curve allow. Symmetric
/// (`oct`) keys and encryption keys are never used.
fn key_from_jwk(entry: &serde_json::Value, allowed: &[Algorithm]) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    // An `alg` that is not a signature algorithm we know (RSA-OAEP, HS256, ...) means the
    // key is not meant for verifying our tokens: skip it rather than ignore the pin.
    let pinned = match jwk.common.key_algorithm {
        Some(alg) => Some(jwk_alg_to_algorithm(alg)?),
        None => None,
    };
    let algorithms: Vec<Algorithm> = by_type
        .into_iter()
        .filter(|a| allowed.contains(a) && pinned.is_none_or(|p| p == *a))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        algorithms,
        decoding,
    })
}

fn jwk_alg_to_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The live key set and how to renew it.
pub struct KeyStore {
    current: RwLock<Arc<KeySet>>,
    /// Bumped on every successful JWKS load, so waiters can tell somebody else refreshed.
    generation: AtomicU64,
    jwks: Option<Arc<OriginClient>>,
    allowed: Vec<Algorithm>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// On the monotonic clock; 0 until the first unknown-`kid` fetch.
    last_unknown_kid_fetch_ms: AtomicU64,
    metrics_gauge: prometheus::IntGauge,
    clock: SharedClock,
}

impl KeyStore {
    /// A store for static keys, loaded now.
    pub fn new_static(
        source: &KeySource,
        allowed: &[Algorithm],
        gauge: prometheus::IntGauge,
    ) -> Result<KeyStore, String> {
        let set = KeySet::from_static(source, allowed)?;
        gauge.set(set.len() as i64);
        Ok(KeyStore {
            current: RwLock::new(Arc::new(set)),
            generation: AtomicU64::new(1),
            jwks: None,
            allowed: allowed.to_vec(),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_unknown_kid_fetch_ms: AtomicU64::new(0),
            metrics_gauge: gauge,
            clock: clock::system(),
        })
    }

    /// A store fed from the auth origin's JWKS; empty until the first fetch succeeds.
    pub fn new_jwks(
        origin: Arc<OriginClient>,
        allowed: &[Algorithm],
        gauge: prometheus::IntGauge,
    ) -> KeyStore {
        gauge.set(0);
        KeyStore {
            current: RwLock::new(Arc::new(KeySet::default())),
            generation: AtomicU64::new(0),
            jwks: Some(origin),
            allowed: allowed.to_vec(),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_unknown_kid_fetch_ms: AtomicU64::new(0),
            metrics_gauge: gauge,
            clock: clock::system(),
        }
    }

    /// The same store, measuring the unknown-`kid` refetch interval on `clock`.
    pub fn with_clock(mut self, clock: SharedClock) -> KeyStore {
        self.clock = clock;
        self
    }

    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Changes whenever a new key set is loaded (verifications against an older one are stale).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn uses_jwks(&self) -> bool {
        self.jwks.is_some()
    }

    /// Fetches the JWKS now (one fetch in flight; concurrent callers share its result).
    /// A failed fetch keeps the last good key set.
    pub async fn refresh(&self) -> Result<usize, OriginError> {
        let Some(origin) = &self.jwks else {
            return Ok(self.current().len());
        };
        let seen = self.generation.load(Ordering::Acquire);
        let _only_one = self.fetch_lock.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(self.current().len());
        }
        let entries = origin.fetch_jwks().await?;
        let (set, skipped) = KeySet::from_jwks(&entries, &self.allowed);
        if skipped > 0 {
            log::info!("JWKS: {skipped} key(s) skipped (unsupported type or algorithm)");
        }
        if set.is_empty() {
            log::warn!("JWKS holds no key usable with token.algorithms; keeping the keys we have");
            return Err(OriginError::BadBody(
                "JWKS holds no key usable with token.algorithms".into(),
            ));
        }
        let count = set.len();
        self.metrics_gauge.set(count as i64);
        if !self.current().is_empty() && self.current().fingerprint == set.fingerprint {
            // Same JWKS as before: keep the key set (and what was verified against it).
            return Ok(count);
        }
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(count)
    }

    /// Called when a token names a `kid` we do not have: refetch unless that happened in
    /// the last [`UNKNOWN_KID_REFETCH_INTERVAL`]. Returns whether the key set may have changed.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        if self.jwks.is_none() {
            return false;
        }
        let now = self.clock.monotonic_millis();
        let last = self.last_unknown_kid_fetch_ms.load(Ordering::Relaxed);
        if clock::within(last, now, UNKNOWN_KID_REFETCH_INTERVAL) {
            return false;
        }
        if self
            .last_unknown_kid_fetch_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another request claimed this interval's fetch; wait for it to land.
            let _ = self.fetch_lock.lock().await;
            return true;
        }
        self.refresh().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::metrics::{Endpoint, Metrics, Outcome};

    /// A JWKS store whose origin refuses every connection, and the metrics that count its
    /// fetch attempts.
    fn store_on_clock(clock: SharedClock) -> (KeyStore, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let origin = crate::revocation::origin::unreachable_origin(metrics.clone());
        let store = KeyStore::new_jwks(origin, &[Algorithm::ES256], metrics.jwks_keys.clone())
            .with_clock(clock);
        (store, metrics)
    }

    fn jwks_fetches(metrics: &Metrics) -> u64 {
        metrics.origin_requests(Endpoint::Jwks, Outcome::Error)
    }

    #[tokio::test]
    async fn unknown_kid_refetch_limit_is_not_reopened_by_a_wall_clock_step_forward() {
        let clock = ManualClock::new();
        let (store, metrics) = store_on_clock(clock.clone());
        store.refresh_for_unknown_kid().await;
        assert_eq!(jwks_fetches(&metrics), 1);

        clock.step_wall(3_600_000);
        store.refresh_for_unknown_kid().await;
        assert_eq!(jwks_fetches(&metrics), 1, "refetched within the interval");
    }

    #[tokio::test]
    async fn unknown_kid_refetch_limit_is_not_stalled_by_a_wall_clock_step_back() {
        let clock = ManualClock::new();
        let (store, metrics) = store_on_clock(clock.clone());
        store.refresh_for_unknown_kid().await;
        clock.step_wall(-3_600_000);
        clock.advance(UNKNOWN_KID_REFETCH_INTERVAL);
        store.refresh_for_unknown_kid().await;
        assert_eq!(jwks_fetches(&metrics), 2, "no refetch after the interval");
    }
}
