//! The gate's verification step: a token recalled from the verified-token cache when it was
//! verified before against the key set still in use, else verified now and remembered.

use std::sync::Arc;

use super::Gate;
use crate::request::decision::InvalidToken;
use crate::request::token_source::MAX_TOKEN_BYTES;
use crate::request::verified_cache::{Remembered, TokenKey, VerifiedCache};
use crate::request::verify::{VerifiedToken, VerifyError};
use crate::revocation::epoch_cache::LastRecord;

impl Gate {
    /// The token, from the verified-token cache when it was verified before against the key
    /// set still in use, else verified now (and remembered). A token not remembered is
    /// refused before anything about it is checked when `refuse` says so; `refuse` is asked
    /// only then, at most once.
    pub(super) async fn verify_unless_refused(
        &self,
        token: &str,
        refuse: impl FnOnce() -> bool,
    ) -> Result<Verified, Unverified> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Unverified::Failed(InvalidToken::TooLong.into()));
        }
        let Some(cache) = &self.verified else {
            if refuse() {
                return Err(Unverified::Refused);
            }
            // Boxed like the verification of a token not remembered yet, below.
            let token = Box::pin(self.verifier.verify(token)).await?;
            return Ok(Verified {
                token,
                last_record: None,
            });
        };
        let key = TokenKey::of(token);
        let known = cache
            .get(&key, self.clock.unix_secs())
            .filter(|hit| hit.key_generation == self.verifier.keys().generation());
        self.metrics.count_verified_lookup(known.is_some());
        if let Some(hit) = known {
            return Ok(Verified {
                token: hit.token,
                last_record: Some(hit.last_record),
            });
        }
        if refuse() {
            return Err(Unverified::Refused);
        }
        // Boxed: its state (a possible JWKS fetch) would otherwise be part of every
        // request's future, which a proxy hook allocates per request.
        Box::pin(self.verify_and_remember(cache, key, token)).await
    }

    /// Verifies a token not remembered yet, and remembers it.
    async fn verify_and_remember(
        &self,
        cache: &VerifiedCache,
        key: TokenKey,
        token: &str,
    ) -> Result<Verified, Unverified> {
        // Read before verifying: if the key set changes meanwhile, the entry counts as older
        // than it and the token is verified again, never the other way round.
        let key_generation = self.verifier.keys().generation();
        let claims = self.verifier.verify(token).await?;
        let last_record = Arc::new(LastRecord::default());
        let remembered = Remembered {
            token: claims.clone(),
            key_generation,
            last_record: last_record.clone(),
        };
        cache.insert(key, remembered, self.clock.unix_secs());
        Ok(Verified {
            token: claims,
            last_record: Some(last_record),
        })
    }
}

/// A verified token and, when the verified-token cache holds it, the slot where the gate
/// keeps the revocation record it was last judged by (see [`LastRecord`]).
pub(super) struct Verified {
    pub(super) token: VerifiedToken,
    pub(super) last_record: Option<Arc<LastRecord>>,
}

/// Why a token came out of the gate's verification step without claims.
pub(super) enum Unverified {
    Failed(VerifyError),
    /// Not checked: not remembered, and its client is over its invalid-token budget.
    Refused,
}

impl From<VerifyError> for Unverified {
    fn from(e: VerifyError) -> Self {
        Unverified::Failed(e)
    }
}
