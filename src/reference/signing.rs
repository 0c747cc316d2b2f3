//! Signing keys for the reference auth origin and the tests: a key, its `kid`, and its JWK.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// A private key that signs device tokens, with the public half as a JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    /// A fresh P-256 key (ES256).
    pub fn generate_es256(kid: &str) -> Result<SigningKey, String> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| "cannot generate an ES256 key".to_string())?;
        SigningKey::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn generate_ed25519(kid: &str) -> Result<SigningKey, String> {
        use aws_lc_rs::signature::KeyPair;
        use base64::Engine;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
        // jsonwebtoken cannot derive an OKP JWK from a PKCS#8 key: write it from the public half.
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| "cannot read the Ed25519 key".to_string())?;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        Ok(SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "kid": kid}),
        })
    }

    /// An RSA key from a PEM private key (RS256).
    pub fn from_rsa_pem(kid: &str, pem: &[u8]) -> Result<SigningKey, String> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| format!("RSA key: {e}"))?;
        SigningKey::new(kid, Algorithm::RS256, key)
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Result<SigningKey, String> {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).map_err(|e| format!("JWK: {e}"))?;
        jwk.common.key_id = Some(kid.to_string());
        let jwk = serde_json::to_value(&jwk).map_err(|e| format!("JWK: {e}"))?;
        Ok(SigningKey {
            kid: kid.to_string(),
            alg,
            encoding,
            jwk,
        })
    }

    /// The private key, for signing hand-made headers and payloads (tests do).
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    /// The public key as a JWK (RFC 7517).
    pub fn jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// Signs claims with this key, naming it in the header's `kid`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs with a header of the caller's making (tests use this for odd headers).
    pub fn sign_with_header<C: Serialize>(
        &self,
        header: &Header,
        claims: &C,
    ) -> Result<String, String> {
        jsonwebtoken::encode(header, claims, &self.encoding).map_err(|e| format!("signing: {e}"))
    }
}
