//! The request path up to the epoch lookup: find the token (header, query, cookie), verify
//! it (header, signature, registered claims, account / device / session-time claims), and
//! strip it from what would go upstream.
//!
//! Input layout: `<authorization value> 0x00 <query string> 0x00 <cookie value>`; missing
//! parts are absent from the request, parts that are not valid header values or URIs are
//! left out. The whole input is also verified as a token on its own.
//!
//! Signatures cannot be forged by mutation, so the claim checks behind them are reached by
//! signing here with the HMAC secret: a found token is verified again with its signature
//! replaced by a valid HS256 one, and an input `<header JSON> \n <claims JSON>` is encoded
//! and signed into a token.

#![no_main]

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use epochgate::config::{KeySource, Settings, TokenSettings, TokenSource};
use epochgate::request::keys::KeyStore;
use epochgate::request::token_source::{self, find_token, Found, MAX_TOKEN_BYTES};
use epochgate::request::verify::{Verifier, VerifyError};
use http::{header, HeaderMap, HeaderValue, Uri};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

/// The ES256 public key; the private half in `fuzz/keys/` signed the seed tokens.
const ES256_PUBLIC_PEM: &[u8] = include_bytes!("../keys/es256-public.pem");
/// The HS256 secret the seed tokens for the HMAC verifier were signed with.
const HMAC_SECRET: &[u8] = b"epochgate-fuzz-hmac-secret-0123456789abcdef";
const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "epochgate-edge";

const SEPARATOR: u8 = 0;
const PATH: &str = "/live/stream/seg-001.ts";

struct Fixture {
    sources: Vec<TokenSource>,
    verifiers: Vec<Verifier>,
    hmac_key: EncodingKey,
}

/// The token settings an operator gets from a config file with the default sources and
/// claims (built through the config loader, so every other setting keeps its default).
fn es256_settings() -> TokenSettings {
    let pem = concat!(env!("CARGO_MANIFEST_DIR"), "/keys/es256-public.pem");
    let yaml = format!(
        "proxy: {{ listen: [\"127.0.0.1:8080\"], upstream: {{ peers: [\"127.0.0.1:8000\"] }} }}\n\
         auth_origin: {{ url: \"http://127.0.0.1:7000\", feed: false }}\n\
         token:\n  algorithms: [ES256]\n  issuer: \"{ISSUER}\"\n  audience: \"{AUDIENCE}\"\n  \
         leeway: 30s\n  keys: {{ pem_file: \"{pem}\" }}\n"
    );
    let settings = Settings::from_yaml(&yaml).expect("the fuzz config loads");
    let token = settings.token;
    assert!(matches!(&token.keys, KeySource::Pem(p) if p == ES256_PUBLIC_PEM));
    token
}

fn verifier(settings: &TokenSettings) -> Verifier {
    let gauge = prometheus::IntGauge::new("fuzz_keys_loaded", "keys").expect("gauge");
    let store = KeyStore::new_static(&settings.keys, &settings.algorithms, gauge)
        .expect("the static key loads");
    Verifier::new(settings, Arc::new(store))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // (a) a static EC public key, issuer and audience required.
        let es256 = es256_settings();
        // (b) a static HMAC secret, issuer and audience required, and the same secret with
        // neither configured, so both kinds of `Validation` see every token.
        let mut hs256 = es256.clone();
        hs256.algorithms = vec![Algorithm::HS256];
        hs256.keys = KeySource::HmacSecret(HMAC_SECRET.to_vec());
        let mut hs256_open = hs256.clone();
        hs256_open.issuer = None;
        hs256_open.audience = None;
        let defaults = vec![
            TokenSource::Header {
                name: header::AUTHORIZATION,
                prefix: Some("Bearer ".into()),
            },
            TokenSource::Query {
                name: "token".into(),
            },
            TokenSource::Cookie {
                name: "device_token".into(),
            },
        ];
        assert_eq!(es256.sources, defaults, "the default token sources");
        Fixture {
            sources: es256.sources.clone(),
            verifiers: vec![verifier(&es256), verifier(&hs256), verifier(&hs256_open)],
            hmac_key: EncodingKey::from_secret(HMAC_SECRET),
        }
    })
}

/// Verifies with every verifier. With static keys `verify` never awaits anything real.
fn verify_all(fixture: &Fixture, token: &str) {
    for verifier in &fixture.verifiers {
        match futures::executor::block_on(verifier.verify(token)) {
            Ok(v) => {
                assert!(!v.account.is_empty() && v.account.len() <= 256);
                assert!(!v.device.is_empty() && v.device.len() <= 256);
            }
            Err(VerifyError::Invalid(_)) => {}
            Err(VerifyError::NoKeys) => panic!("a static key store is never empty"),
        }
    }
}

/// `message` (`<header>.<claims>`) with a valid HS256 signature appended.
fn hs256_signed(fixture: &Fixture, message: &str) -> Option<String> {
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &fixture.hmac_key, Algorithm::HS256).ok()?;
    Some(format!("{message}.{signature}"))
}

fn request_from(data: &[u8]) -> (HeaderMap, Uri) {
    let mut parts = data.splitn(3, |b| *b == SEPARATOR);
    let authorization = parts.next().unwrap_or_default();
    let query = parts.next();
    let cookie = parts.next();

    let mut headers = HeaderMap::new();
    if !authorization.is_empty() {
        if let Ok(value) = HeaderValue::from_bytes(authorization) {
            headers.insert(header::AUTHORIZATION, value);
        }
    }
    if let Some(Ok(value)) = cookie.map(HeaderValue::from_bytes) {
        headers.insert(header::COOKIE, value);
    }
    let uri = query
        .and_then(|q| {
            let mut target = Vec::with_capacity(PATH.len() + 1 + q.len());
            target.extend_from_slice(PATH.as_bytes());
            target.push(b'?');
            target.extend_from_slice(q);
            Uri::try_from(target).ok()
        })
        .unwrap_or_else(|| Uri::from_static(PATH));
    (headers, uri)
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();

    if let Ok(text) = std::str::from_utf8(data) {
        verify_all(fixture, text);
    }
    if let Some(newline) = data.iter().position(|b| *b == b'\n') {
        let (header_json, claims_json) = (&data[..newline], &data[newline + 1..]);
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(claims_json)
        );
        if let Some(token) = hs256_signed(fixture, &message) {
            verify_all(fixture, &token);
        }
    }

    let (headers, uri) = request_from(data);
    let Some(Found::Token { token, source }) = find_token(&fixture.sources, &headers, &uri) else {
        return;
    };
    assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES);
    verify_all(fixture, &token);
    if let Some(resigned) = token
        .rsplit_once('.')
        .and_then(|(message, _)| hs256_signed(fixture, message))
    {
        verify_all(fixture, &resigned);
    }

    // What the proxy forwards upstream (`forward.strip_token`) must no longer carry it.
    match &fixture.sources[source] {
        TokenSource::Header { .. } => {}
        TokenSource::Query { name } => {
            let target = token_source::uri_without_query_param(&uri, name)
                .expect("a query token is always stripped");
            let stripped: Uri = target.parse().expect("the stripped target parses");
            let query_only = &fixture.sources[source..=source];
            assert_eq!(find_token(query_only, &HeaderMap::new(), &stripped), None);
        }
        TokenSource::Cookie { name } => {
            let value = headers[header::COOKIE]
                .to_str()
                .expect("found in a text cookie");
            if let Some(rest) = token_source::cookie_header_without(value, name) {
                let mut left = HeaderMap::new();
                left.insert(header::COOKIE, rest.parse().expect("a valid header value"));
                let cookie_only = &fixture.sources[source..=source];
                assert_eq!(
                    find_token(cookie_only, &left, &Uri::from_static(PATH)),
                    None
                );
            }
        }
    }
});
