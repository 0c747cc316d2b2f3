//! Bucket keys of account ids: the id itself when it is `[A-Za-z0-9_-]{1,255}`, otherwise
//! `b64.` and the unpadded base64url of its UTF-8 bytes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The prefix of an encoded key.
pub const ENCODED_PREFIX: &str = "b64.";

/// The longest account id used as a key as it is.
pub const MAX_PLAIN_LEN: usize = 255;

/// Why a bucket key names no account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is neither a plain account id nor `b64.` and base64url")]
    NotAKey,
    #[error("the key's base64url does not decode to UTF-8 text")]
    BadEncoding,
    /// It decodes, but it is not how the account's key is written (a plain id encoded, or
    /// padding): `account` is the id it names.
    #[error("the key is not the canonical encoding of its account id")]
    NotCanonical { account: String },
}

fn plain(account: &str) -> bool {
    (1..=MAX_PLAIN_LEN).contains(&account.len())
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The bucket key of an account id.
pub fn encode(account: &str) -> String {
    if plain(account) {
        account.to_string()
    } else {
        format!(
            "{ENCODED_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(account.as_bytes())
        )
    }
}

/// The account id a bucket key names.
pub fn decode(key: &str) -> Result<String, KeyError> {
    if plain(key) {
        return Ok(key.to_string());
    }
    let Some(encoded) = key.strip_prefix(ENCODED_PREFIX) else {
        return Err(KeyError::NotAKey);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| KeyError::BadEncoding)?;
    let account = String::from_utf8(bytes).map_err(|_| KeyError::BadEncoding)?;
    if encode(&account) != key {
        return Err(KeyError::NotCanonical { account });
    }
    Ok(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_their_own_key() {
        for id in ["alice", "user_42", "A-b_C-9", &"x".repeat(255)] {
            assert_eq!(encode(id), id);
            assert_eq!(decode(id).unwrap(), id);
        }
    }

    #[test]
    fn email_ids_round_trip_through_base64url() {
        let id = "alice.smith+tv@example.com";
        let key = encode(id);
        assert_eq!(key, "b64.YWxpY2Uuc21pdGgrdHZAZXhhbXBsZS5jb20");
        assert_eq!(decode(&key).unwrap(), id);
    }

    #[test]
    fn ids_nats_keys_cannot_hold_are_encoded_and_round_trip() {
        let long = "y".repeat(256);
        for id in ["", "a b", "ünïcode", "a/b", "a.b", "=", &long, "b64.abc"] {
            let key = encode(id);
            assert!(key.starts_with(ENCODED_PREFIX), "{id:?}");
            // Only characters NATS allows in a key, and no trailing dot.
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.=/".contains(&b)));
            assert!(!key.ends_with('.') || id.is_empty());
            assert_eq!(decode(&key).unwrap(), id, "{id:?}");
        }
    }

    #[test]
    fn keys_in_another_encoding_are_refused() {
        assert_eq!(decode("a.b"), Err(KeyError::NotAKey));
        assert_eq!(decode("b64.!!"), Err(KeyError::BadEncoding));
        // Standard base64 with padding, and invalid UTF-8.
        assert_eq!(decode("b64.YQ=="), Err(KeyError::BadEncoding));
        assert_eq!(decode("b64._w"), Err(KeyError::BadEncoding));
        // A plain id written encoded names its account, but is not its key.
        assert_eq!(
            decode("b64.YWxpY2U"),
            Err(KeyError::NotCanonical {
                account: "alice".into()
            })
        );
    }
}
