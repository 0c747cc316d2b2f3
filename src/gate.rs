//! The gate's core: token → verification → epoch lookup → [`Decision`]. No Pingora here,
//! so it can be unit-tested and embedded in any proxy.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Uri};

use crate::clock::{self, SharedClock};
use crate::config::{OnOriginUnavailable, Settings, TokenSource};
use crate::metrics::Metrics;
use crate::request::client_ip::IpNetwork;
use crate::request::decision::{Decision, InvalidToken, Reason};
use crate::request::invalid_token_budget::InvalidTokenBudget;
use crate::request::keys::KeyStore;
use crate::request::route::{Mode, Routes};
use crate::request::token_source::{self, Found, Unusable};
use crate::request::verified_cache::VerifiedCache;
use crate::request::verify::{VerifiedToken, Verifier, VerifyError};

mod verified;
use crate::revocation::epoch_cache::{EpochCache, Lookup};
use crate::revocation::origin::{OriginClient, OriginError};
use crate::revocation::record_source::RecordSource;
use crate::revocation::replica::{Held, Replica, ReplicaAnswer};
use crate::revocation::Standing;
use verified::Unverified;

/// Why a gate could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("auth origin client: {0}")]
    Origin(#[from] OriginError),
    #[error("token.keys: {0}")]
    Keys(String),
}

/// Everything needed to decide about a request.
pub struct Gate {
    sources: Vec<TokenSource>,
    verifier: Verifier,
    /// Tokens verified before (`None`: `token.verified_cache_entries: 0`).
    verified: Option<VerifiedCache>,
    cache: EpochCache,
    on_origin_unavailable: OnOriginUnavailable,
    metrics: Arc<Metrics>,
    origin: Arc<OriginClient>,
    /// `None`: `limits.invalid_tokens_per_client: off`.
    invalid_token_budget: Option<InvalidTokenBudget>,
    trusted_proxies: Vec<IpNetwork>,
    routes: Routes,
    clock: SharedClock,
    /// `replica:`: records come from the fleet replica, not the epoch cache.
    replica: Option<Arc<Replica>>,
}

/// A decision and the token source it was made from (for stripping the token later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub token_source: Option<usize>,
}

impl Gate {
    /// Builds a gate from validated settings. Static keys are loaded now; a JWKS is fetched
    /// by [`Gate::keys`]`.refresh()` (the binary runs that in a background service).
    pub fn new(settings: &Settings) -> Result<Gate, GateError> {
        Gate::with_clock(settings, clock::system())
    }

    /// [`Gate::new`], with every interval and age measured on `clock` (tests step it).
    pub fn with_clock(settings: &Settings, clock: SharedClock) -> Result<Gate, GateError> {
        Gate::with_record_source(settings, clock, None)
    }

    /// [`Gate::with_clock`], with revocation records from `source` instead of the auth
    /// origin's lookups (`None`: the auth origin). The JWKS still comes from the auth origin
    /// (unless the keys are static); the feed, when the binary runs it, still feeds the cache
    /// (see [`crate::edge::server`]).
    pub fn with_record_source(
        settings: &Settings,
        clock: SharedClock,
        source: Option<Arc<dyn RecordSource>>,
    ) -> Result<Gate, GateError> {
        let metrics = Arc::new(Metrics::new());
        let origin = Arc::new(
            OriginClient::new(&settings.auth_origin, metrics.clone())?
                .with_max_devices_per_account(settings.cache.max_devices_per_account),
        );
        let source: Arc<dyn RecordSource> = source.unwrap_or_else(|| origin.clone());
        let keys = match &settings.token.keys {
            crate::config::KeySource::Jwks => KeyStore::new_jwks(
                origin.clone(),
                &settings.token.algorithms,
                metrics.jwks_keys.clone(),
            ),
            other => {
                KeyStore::new_static(other, &settings.token.algorithms, metrics.jwks_keys.clone())
                    .map_err(GateError::Keys)?
            }
        }
        .with_clock(clock.clone());
        let verifier = Verifier::new(&settings.token, Arc::new(keys)).with_clock(clock.clone());
        let verified = (settings.token.verified_cache_entries > 0)
            .then(|| VerifiedCache::new(settings.token.verified_cache_entries));
        let cache = EpochCache::with_clock(
            settings.cache.clone(),
            source,
            metrics.clone(),
            clock.clone(),
        );
        let replica = settings
            .replica
            .clone()
            .map(|replica| Replica::new(replica, metrics.registry(), clock.clone()));
        Ok(Gate {
            sources: settings.token.sources.clone(),
            verifier,
            verified,
            cache,
            on_origin_unavailable: settings.cache.on_origin_unavailable,
            metrics,
            origin,
            invalid_token_budget: settings
                .limits
                .invalid_tokens_per_client
                .map(InvalidTokenBudget::new),
            trusted_proxies: settings.proxy.trusted_proxies.clone(),
            routes: settings.routes.clone(),
            replica,
            clock,
        })
    }

    /// The fleet replica, with `replica:` configured.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.as_ref()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn keys(&self) -> &KeyStore {
        self.verifier.keys()
    }

    pub fn cache(&self) -> &EpochCache {
        &self.cache
    }

    pub fn origin(&self) -> &Arc<OriginClient> {
        &self.origin
    }

    pub fn token_sources(&self) -> &[TokenSource] {
        &self.sources
    }

    /// The client a request from `peer` counts as: `peer`, or behind a peer listed in
    /// `proxy.trusted_proxies`, the last untrusted address of its `X-Forwarded-For`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        crate::request::client_ip::client_ip(peer, headers, &self.trusted_proxies)
    }

    /// The top-level `mode` and the `routes`: [`Routes::mode_for`] a request's path.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The clock the gate measures intervals and durations on.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Tokens held in the verified-token cache.
    pub fn verified_cache_len(&self) -> usize {
        self.verified.as_ref().map_or(0, VerifiedCache::len)
    }

    /// Decides about a request from its headers and target, and counts the decision as
    /// enforced (whatever the routes say; see [`Gate::check_as`]).
    ///
    /// `client` (see [`Gate::client_ip`]) is charged for each `invalid_token`; once over its
    /// budget (`limits.invalid_tokens_per_client`) it gets `too_many_invalid_tokens` for any
    /// token the gate has not verified before. `None` (a client without an IP address):
    /// no budget applies.
    pub async fn check(&self, headers: &HeaderMap, uri: &Uri, client: Option<IpAddr>) -> Verdict {
        self.check_as(headers, uri, client, Mode::Enforce).await
    }

    /// [`Gate::check`], counting the decision under `mode` (`enforce` or `observe`), and
    /// timing the gate's own share of the request.
    pub async fn check_as(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        client: Option<IpAddr>,
        mode: Mode,
    ) -> Verdict {
        let started = self.clock.monotonic_micros();
        let verdict = self.check_uncounted(headers, uri, client).await;
        let label = verdict.decision.label();
        self.metrics.count_decision(label, mode);
        let took = self.clock.monotonic_micros().saturating_sub(started);
        self.metrics
            .observe_gate_duration(label, std::time::Duration::from_micros(took));
        verdict
    }

    async fn check_uncounted(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        client: Option<IpAddr>,
    ) -> Verdict {
        let verdict = match token_source::find_token(&self.sources, headers, uri) {
            None => Verdict {
                decision: Decision::Reject(Reason::MissingToken),
                token_source: None,
            },
            Some(Found::Unusable { source, why }) => Verdict {
                decision: Decision::Reject(match self.over_budget(client) {
                    Some(retry_after) => Reason::TooManyInvalidTokens { retry_after },
                    None => Reason::InvalidToken(match why {
                        Unusable::TooLong => InvalidToken::TooLong,
                        Unusable::Malformed => InvalidToken::Malformed,
                    }),
                }),
                token_source: Some(source),
            },
            Some(Found::Token { token, source }) => Verdict {
                decision: self.decide_for(&token, client).await,
                token_source: Some(source),
            },
        };
        if let (Decision::Reject(Reason::InvalidToken(_)), Some(client), Some(budget)) =
            (&verdict.decision, client, &self.invalid_token_budget)
        {
            budget.charge(client);
        }
        verdict
    }

    /// Decides about one token, with no client budget. The signature is verified before any
    /// epoch lookup, so a forged token never costs an auth-origin request.
    pub async fn decide(&self, token: &str) -> Decision {
        self.decide_for(token, None).await
    }

    /// The decision for a verified token from the fleet replica's record.
    fn decide_by_replica(&self, replica: &Replica, verified: VerifiedToken) -> Decision {
        let standing =
            match replica.answer(&verified.account, &verified.device, verified.session_time) {
                ReplicaAnswer::NotReady => return Decision::Reject(Reason::NotReady),
                ReplicaAnswer::Unavailable => {
                    return match self.on_origin_unavailable {
                        OnOriginUnavailable::Deny => Decision::Reject(Reason::OriginUnavailable),
                        OnOriginUnavailable::Allow => Decision::AllowUnchecked {
                            account: verified.account,
                            device: verified.device,
                        },
                    }
                }
                ReplicaAnswer::Held(Held::Record(standing)) => standing,
                ReplicaAnswer::Held(Held::Absent | Held::Unusable) => Standing::Valid,
            };
        match standing {
            Standing::Valid => Decision::Allow {
                account: verified.account,
                device: verified.device,
            },
            Standing::SignedOut => Decision::Reject(Reason::SignedOut),
            Standing::DeviceSignedOut => Decision::Reject(Reason::DeviceSignedOut),
        }
    }

    /// The seconds until an over-budget client has budget again; `None` if it has some.
    fn over_budget(&self, client: Option<IpAddr>) -> Option<u32> {
        self.invalid_token_budget.as_ref()?.exhausted(client?)
    }

    /// [`Gate::decide`] for a request from `client`: a token not remembered from a client
    /// over its budget is refused before its signature is checked.
    async fn decide_for(&self, token: &str, client: Option<IpAddr>) -> Decision {
        let mut retry_after = None;
        let refuse = || {
            retry_after = self.over_budget(client);
            retry_after.is_some()
        };
        let (verified, last_record) = match self.verify_unless_refused(token, refuse).await {
            Ok(v) => (v.token, v.last_record),
            Err(Unverified::Failed(VerifyError::Invalid(why))) => {
                return Decision::Reject(Reason::InvalidToken(why))
            }
            Err(Unverified::Failed(VerifyError::NoKeys)) => {
                return Decision::Reject(Reason::NotReady)
            }
            Err(Unverified::Refused) => {
                return Decision::Reject(Reason::TooManyInvalidTokens {
                    retry_after: retry_after.unwrap_or(1),
                })
            }
        };
        if let Some(replica) = &self.replica {
            return self.decide_by_replica(replica, verified);
        }
        let found = match &last_record {
            Some(last) => self.cache.lookup_from(&verified.account, last).await,
            // Boxed like the slow path of `lookup_from`: see there.
            None => Box::pin(self.cache.lookup(&verified.account)).await,
        };
        let record = match found {
            Lookup::Fresh(entry) | Lookup::Stale(entry) => {
                self.metrics
                    .observe_record_age(entry.age(self.clock.monotonic_millis()));
                entry
            }
            Lookup::Unavailable => {
                return match self.on_origin_unavailable {
                    OnOriginUnavailable::Deny => Decision::Reject(Reason::OriginUnavailable),
                    OnOriginUnavailable::Allow => Decision::AllowUnchecked {
                        account: verified.account,
                        device: verified.device,
                    },
                }
            }
        };
        match record.standing(&verified.device, verified.session_time) {
            Standing::Valid => Decision::Allow {
                account: verified.account,
                device: verified.device,
            },
            Standing::SignedOut => Decision::Reject(Reason::SignedOut),
            Standing::DeviceSignedOut => Decision::Reject(Reason::DeviceSignedOut),
        }
    }
}
