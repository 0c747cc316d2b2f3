//! Token verification: header checks, signature against the key set, registered claims,
//! and the account / device / session-time claims the gate needs.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use crate::clock::{self, SharedClock};
use crate::config::TokenSettings;
use crate::request::decision::InvalidToken;
use crate::request::keys::KeyStore;
use crate::request::token_source::MAX_TOKEN_BYTES;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub account: Arc<str>,
    pub device: Arc<str>,
    /// The session time (`iat` or the configured claim), Unix seconds.
    pub session_time: u64,
    /// The `exp` claim, Unix seconds.
    pub expires_at: u64,
}

/// Why verification did not produce a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    Invalid(InvalidToken),
    /// No keys loaded yet (JWKS not fetched): nothing can be verified.
    NoKeys,
}

impl From<InvalidToken> for VerifyError {
    fn from(e: InvalidToken) -> Self {
        VerifyError::Invalid(e)
    }
}

/// Verifies tokens against a [`KeyStore`] with one prepared `Validation` per algorithm.
pub struct Verifier {
    keys: Arc<KeyStore>,
    validations: HashMap<Algorithm, Validation>,
    account_claim: String,
    device_claim: String,
    time_claim: String,
    leeway_secs: u64,
    /// `token.max_lifetime` in seconds: the longest `exp` minus session time accepted.
    max_lifetime_secs: Option<u64>,
    /// `exp` and the session time are compared with its wall-clock reading.
    clock: SharedClock,
}

impl Verifier {
    pub fn new(settings: &TokenSettings, keys: Arc<KeyStore>) -> Verifier {
        let validations = settings
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.algorithms = vec![*alg];
                v.leeway = settings.leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                // A configured issuer or audience is required, not just checked when present.
                let mut required = vec!["exp"];
                match &settings.issuer {
                    Some(iss) => {
                        v.set_issuer(&[iss]);
                        required.push("iss");
                    }
                    None => v.iss = None,
                }
                match &settings.audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        required.push("aud");
                    }
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                (*alg, v)
            })
            .collect();
        Verifier {
            keys,
            validations,
            account_claim: settings.account_claim.clone(),
            device_claim: settings.device_claim.clone(),
            time_claim: settings.time_claim.clone(),
            leeway_secs: settings.leeway.as_secs(),
            max_lifetime_secs: settings.max_lifetime.map(|d| d.as_secs()),
            clock: clock::system(),
        }
    }

    /// The same verifier, reading the time on `clock`.
    pub fn with_clock(mut self, clock: SharedClock) -> Verifier {
        self.clock = clock;
        self
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Checks the token completely (size, header, signature, claims) before anything else
    /// looks at its claims.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(InvalidToken::TooLong.into());
        }
        self.verify_signature_and_claims(token).await
    }

    async fn verify_signature_and_claims(&self, token: &str) -> Result<VerifiedToken, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidToken::Malformed)?;
        let Some(validation) = self.validations.get(&header.alg) else {
            return Err(InvalidToken::AlgorithmNotAllowed.into());
        };
        let mut keys = self.keys.current();
        if keys.is_empty() {
            return Err(VerifyError::NoKeys);
        }
        if let Some(kid) = header.kid.as_deref() {
            if !keys.has_kid(kid) && self.keys.refresh_for_unknown_kid().await {
                keys = self.keys.current();
            }
        }
        let mut outcome = Err(InvalidToken::UnknownKey);
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            match jsonwebtoken::decode::<Claims>(token, &key.decoding, validation) {
                Ok(data) => {
                    outcome = Ok(data.claims.0);
                    break;
                }
                // Another key of the same algorithm may still match (no `kid`, or a rotation).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    outcome = Err(InvalidToken::BadSignature)
                }
                Err(e) => {
                    outcome = Err(classify(e.kind()));
                    break;
                }
            }
        }
        let claims = outcome?;
        let session_time = time_claim(&claims, &self.time_claim)?;
        // A session that starts in the future would outlive every sign-out until then: an
        // issuer's clock that far off is refused, not trusted.
        if session_time > self.clock.unix_secs() + self.leeway_secs {
            return Err(InvalidToken::NotYetValid.into());
        }
        let expires_at = time_claim(&claims, "exp")?;
        // Without a bound, a token issued long ago may still be alive, so no revocation
        // record could ever be forgotten.
        if self
            .max_lifetime_secs
            .is_some_and(|max| expires_at.saturating_sub(session_time) > max)
        {
            return Err(InvalidToken::LifetimeTooLong.into());
        }
        Ok(VerifiedToken {
            account: string_claim(&claims, &self.account_claim)?.into(),
            device: string_claim(&claims, &self.device_claim)?.into(),
            session_time,
            expires_at,
        })
    }
}

/// A token's claims. A claim named twice is an error, never "the last one wins": two parsers
/// reading one token differently is how confusion attacks start.
struct Claims(HashMap<String, Value>);

impl<'de> serde::Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimsVisitor;
        impl<'de> serde::de::Visitor<'de> for ClaimsVisitor {
            type Value = Claims;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Claims, A::Error> {
                let mut claims = HashMap::new();
                while let Some((name, value)) = map.next_entry::<String, Value>()? {
                    if claims.contains_key(&name) {
                        return Err(serde::de::Error::custom("duplicate claim"));
                    }
                    claims.insert(name, value);
                }
                Ok(Claims(claims))
            }
        }
        deserializer.deserialize_map(ClaimsVisitor)
    }
}

fn classify(kind: &ErrorKind) -> InvalidToken {
    match kind {
        ErrorKind::InvalidSignature => InvalidToken::BadSignature,
        ErrorKind::ExpiredSignature => InvalidToken::Expired,
        ErrorKind::ImmatureSignature => InvalidToken::NotYetValid,
        ErrorKind::InvalidIssuer => InvalidToken::WrongIssuer,
        ErrorKind::InvalidAudience => InvalidToken::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => InvalidToken::MissingClaim,
        ErrorKind::InvalidClaimFormat(_) => InvalidToken::BadClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            InvalidToken::AlgorithmNotAllowed
        }
        ErrorKind::Json(_) => InvalidToken::BadClaim,
        _ => InvalidToken::Malformed,
    }
}

fn string_claim(claims: &HashMap<String, Value>, name: &str) -> Result<String, InvalidToken> {
    match claims.get(name) {
        None | Some(Value::Null) => Err(InvalidToken::MissingClaim),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Ok(s.clone()),
        Some(_) => Err(InvalidToken::BadClaim),
    }
}

/// A NumericDate: a non-negative number of seconds (fractions are truncated).
fn time_claim(claims: &HashMap<String, Value>, name: &str) -> Result<u64, InvalidToken> {
    match claims.get(name) {
        None | Some(Value::Null) => Err(InvalidToken::MissingClaim),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .ok_or(InvalidToken::BadClaim),
        Some(_) => Err(InvalidToken::BadClaim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_named_twice_is_rejected() {
        let parsed: Result<Claims, _> = serde_json::from_str(r#"{"sub":"alice","sub":"mallory"}"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn distinct_claims_are_kept() {
        let parsed: Claims = serde_json::from_str(r#"{"sub":"alice","iat":1}"#).unwrap();
        assert_eq!(string_claim(&parsed.0, "sub"), Ok("alice".to_string()));
        assert_eq!(time_claim(&parsed.0, "iat"), Ok(1));
    }

    #[test]
    fn negative_or_textual_time_is_a_bad_claim() {
        let parsed: Claims = serde_json::from_str(r#"{"a":-1,"b":"1"}"#).unwrap();
        assert_eq!(time_claim(&parsed.0, "a"), Err(InvalidToken::BadClaim));
        assert_eq!(time_claim(&parsed.0, "b"), Err(InvalidToken::BadClaim));
    }
}
