//! What the gate decided about a request, and the one place that turns it into a response.

use std::sync::Arc;

/// The gate's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The token is valid and was issued after every sign-out that applies to it.
    ///
    /// The ids are shared with the verified-token cache: a cache hit copies no string.
    Allow {
        account: Arc<str>,
        device: Arc<str>,
    },
    /// The token is valid but no revocation record could be had, and the operator chose
    /// `cache.on_origin_unavailable: allow`.
    AllowUnchecked {
        account: Arc<str>,
        device: Arc<str>,
    },
    Reject(Reason),
}

/// Why a request was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingToken,
    InvalidToken(InvalidToken),
    /// The account signed out of all devices after this token was issued.
    SignedOut,
    /// This device alone was signed out after this token was issued.
    DeviceSignedOut,
    /// No usable revocation record, and `cache.on_origin_unavailable: deny`.
    OriginUnavailable,
    /// No verification keys loaded yet.
    NotReady,
    /// The client has failed too many verifications lately, and the token is not one the
    /// edge has verified before: it is not checked. `retry_after`: seconds.
    TooManyInvalidTokens {
        retry_after: u32,
    },
}

/// What exactly was wrong with a token. Only ever shown as a fixed description: the
/// token's own bytes never reach a response or a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidToken {
    TooLong,
    Malformed,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    BadClaim,
    /// `exp` lies further after the session time than `token.max_lifetime`.
    LifetimeTooLong,
}

impl InvalidToken {
    pub fn description(self) -> &'static str {
        match self {
            InvalidToken::TooLong => "token is longer than 8192 bytes",
            InvalidToken::Malformed => "token is not a well-formed JWT",
            InvalidToken::AlgorithmNotAllowed => "token algorithm is not accepted",
            InvalidToken::UnknownKey => "token was signed with an unknown key",
            InvalidToken::BadSignature => "token signature is invalid",
            InvalidToken::Expired => "token has expired",
            InvalidToken::NotYetValid => "token is not valid yet",
            InvalidToken::WrongIssuer => "token issuer is not accepted",
            InvalidToken::WrongAudience => "token audience is not accepted",
            InvalidToken::MissingClaim => "token lacks a required claim",
            InvalidToken::BadClaim => "token has a claim of the wrong type",
            InvalidToken::LifetimeTooLong => "token lifetime is longer than this edge accepts",
        }
    }
}

/// The value of `epochgate_requests_total{decision}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLabel {
    Allowed,
    AllowedOriginUnavailable,
    MissingToken,
    InvalidToken,
    SignedOut,
    DeviceSignedOut,
    OriginUnavailable,
    NotReady,
    TooManyInvalidTokens,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 9] = [
        DecisionLabel::Allowed,
        DecisionLabel::AllowedOriginUnavailable,
        DecisionLabel::MissingToken,
        DecisionLabel::InvalidToken,
        DecisionLabel::SignedOut,
        DecisionLabel::DeviceSignedOut,
        DecisionLabel::OriginUnavailable,
        DecisionLabel::NotReady,
        DecisionLabel::TooManyInvalidTokens,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Allowed => "allowed",
            DecisionLabel::AllowedOriginUnavailable => "allowed_origin_unavailable",
            DecisionLabel::MissingToken => "missing_token",
            DecisionLabel::InvalidToken => "invalid_token",
            DecisionLabel::SignedOut => "signed_out",
            DecisionLabel::DeviceSignedOut => "device_signed_out",
            DecisionLabel::OriginUnavailable => "origin_unavailable",
            DecisionLabel::NotReady => "not_ready",
            DecisionLabel::TooManyInvalidTokens => "too_many_invalid_tokens",
        }
    }
}

impl Decision {
    pub fn label(&self) -> DecisionLabel {
        match self {
            Decision::Allow { .. } => DecisionLabel::Allowed,
            Decision::AllowUnchecked { .. } => DecisionLabel::AllowedOriginUnavailable,
            Decision::Reject(reason) => reason.label(),
        }
    }

    /// The identity to forward, for either kind of allow.
    pub fn identity(&self) -> Option<(&str, &str)> {
        match self {
            Decision::Allow { account, device } | Decision::AllowUnchecked { account, device } => {
                Some((account, device))
            }
            Decision::Reject(_) => None,
        }
    }
}

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 5;

/// A rejection rendered for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectResponse {
    pub status: u16,
    /// `(name, value)` pairs besides content type and length.
    pub headers: Vec<(&'static str, String)>,
    /// `{"error": ..., "message": ...}`
    pub body: String,
}

impl Reason {
    pub fn label(self) -> DecisionLabel {
        match self {
            Reason::MissingToken => DecisionLabel::MissingToken,
            Reason::InvalidToken(_) => DecisionLabel::InvalidToken,
            Reason::SignedOut => DecisionLabel::SignedOut,
            Reason::DeviceSignedOut => DecisionLabel::DeviceSignedOut,
            Reason::OriginUnavailable => DecisionLabel::OriginUnavailable,
            Reason::NotReady => DecisionLabel::NotReady,
            Reason::TooManyInvalidTokens { .. } => DecisionLabel::TooManyInvalidTokens,
        }
    }

    /// The `error` code in the JSON body.
    pub fn error_code(self) -> &'static str {
        match self {
            Reason::NotReady => "not_ready",
            other => other.label().as_str(),
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Reason::MissingToken => "a device token is required",
            Reason::InvalidToken(detail) => detail.description(),
            Reason::SignedOut => "this account was signed out of all devices; sign in again",
            Reason::DeviceSignedOut => "this device was signed out; sign in again",
            Reason::OriginUnavailable => {
                "sign-in state cannot be checked right now; try again shortly"
            }
            Reason::NotReady => "the edge is starting up; try again shortly",
            Reason::TooManyInvalidTokens { .. } => {
                "too many invalid tokens from this address; try again later"
            }
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Reason::OriginUnavailable | Reason::NotReady => 503,
            Reason::TooManyInvalidTokens { .. } => 429,
            _ => 401,
        }
    }

    /// Status, headers and body of the rejection (RFC 6750 `WWW-Authenticate` on every 401).
    pub fn response(self) -> RejectResponse {
        let status = self.status();
        let mut headers = Vec::new();
        match self {
            Reason::MissingToken => headers.push((
                "www-authenticate",
                r#"Bearer realm="epochgate""#.to_string(),
            )),
            _ if status == 401 => headers.push((
                "www-authenticate",
                format!(
                    r#"Bearer realm="epochgate", error="invalid_token", error_description="{}""#,
                    self.message()
                ),
            )),
            Reason::TooManyInvalidTokens { retry_after } => {
                headers.push(("retry-after", retry_after.to_string()))
            }
            _ => headers.push(("retry-after", RETRY_AFTER_SECONDS.to_string())),
        }
        let body = serde_json::json!({ "error": self.error_code(), "message": self.message() })
            .to_string();
        RejectResponse {
            status,
            headers,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        let r = Reason::MissingToken.response();
        assert_eq!(r.status, 401);
        assert_eq!(
            r.headers,
            vec![(
                "www-authenticate",
                r#"Bearer realm="epochgate""#.to_string()
            )]
        );
    }

    #[test]
    fn signed_out_is_an_invalid_token_challenge() {
        let r = Reason::SignedOut.response();
        assert_eq!(r.status, 401);
        assert!(r.headers[0].1.contains(r#"error="invalid_token""#));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "signed_out");
    }

    #[test]
    fn origin_unavailable_is_503_with_retry_after() {
        let r = Reason::OriginUnavailable.response();
        assert_eq!(r.status, 503);
        assert_eq!(r.headers, vec![("retry-after", "5".to_string())]);
    }

    #[test]
    fn too_many_invalid_tokens_is_429_with_its_retry_after() {
        let r = Reason::TooManyInvalidTokens { retry_after: 7 }.response();
        assert_eq!(r.status, 429);
        assert_eq!(r.headers, vec![("retry-after", "7".to_string())]);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "too_many_invalid_tokens");
    }

    #[test]
    fn every_label_is_distinct() {
        let mut names: Vec<_> = DecisionLabel::ALL.iter().map(|d| d.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DecisionLabel::ALL.len());
    }
}
