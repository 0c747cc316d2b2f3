//! Clients that lie: odd tokens, odd headers, forged keys. Each gets the documented 401 and
//! nothing else happens (no origin request, no upstream request).

mod common;

use std::sync::atomic::Ordering;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Sends a raw `Authorization` value and expects 401 with the given error code.
async fn expect_401(edge: &Edge, authorization: &[u8], error: &str) {
    let value = reqwest::header::HeaderValue::from_bytes(authorization).unwrap();
    let response = edge
        .client
        .get(edge.url("/"))
        .header("authorization", value)
        .send()
        .await
        .unwrap();
    assert_eq!(
        rejection(response, 401).await["error"],
        error,
        "{}",
        String::from_utf8_lossy(&authorization[..authorization.len().min(80)])
    );
}

fn nothing_happened(origin: &TestOrigin, upstream: &Upstream) {
    assert_eq!(
        origin.revocation_requests(),
        0,
        "a hostile token reached the auth origin"
    );
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        0,
        "a hostile token reached the upstream"
    );
}

#[tokio::test]
async fn malformed_tokens_are_invalid() {
    let (origin, upstream, edge) = started().await;

    let valid = origin.token("alice", "tv");
    let parts: Vec<&str> = valid.split('.').collect();
    for token in [
        "not-a-jwt".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        format!("{}!!.{}.{}", parts[0], parts[1], parts[2]), // bad base64
        format!("{}.{}.%%%", parts[0], parts[1]),            // bad signature encoding
        format!("{}.{}.", parts[0], parts[1]),               // signature stripped
        format!("{}.{}", B64.encode("{"), parts[1]),         // header not JSON
        format!(
            "{}.{}.{}",
            B64.encode(r#"{"alg":"ES256","typ":"JWT","alg":"HS256"}"#),
            parts[1],
            parts[2]
        ),
    ] {
        expect_401(&edge, format!("Bearer {token}").as_bytes(), "invalid_token").await;
    }
    nothing_happened(&origin, &upstream);
}

#[tokio::test]
async fn json_bomb_in_the_header_is_invalid() {
    let (origin, upstream, edge) = started().await;

    // Deep nesting, within the 8 KiB token limit.
    let bomb = format!(
        r#"{{"alg":"ES256","x":{}{}}}"#,
        "[".repeat(3000),
        "]".repeat(3000)
    );
    let token = format!("{}.{}.{}", B64.encode(bomb), B64.encode("{}"), "sig");
    expect_401(&edge, format!("Bearer {token}").as_bytes(), "invalid_token").await;
    nothing_happened(&origin, &upstream);
}

#[tokio::test]
async fn non_utf8_bytes_are_rejected() {
    let (origin, upstream, edge) = started().await;

    expect_401(&edge, b"Bearer \xff\xfe\xfd.\x80.\x81", "missing_token").await;
    let response = edge
        .client
        .get(edge.url("/"))
        .header(
            "cookie",
            reqwest::header::HeaderValue::from_bytes(b"device_token=\xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    nothing_happened(&origin, &upstream);
}

#[tokio::test]
async fn huge_authorization_header_is_rejected_without_parsing() {
    let (origin, upstream, edge) = started().await;

    let huge = format!("Bearer {}", "A".repeat(60_000));
    expect_401(&edge, huge.as_bytes(), "invalid_token").await;
    nothing_happened(&origin, &upstream);
}

#[tokio::test]
async fn kid_path_tricks_are_unknown_keys() {
    let (origin, upstream, edge) = started().await;
    let jwks_before = origin.jwks_requests();

    for kid in [
        "../../../../etc/passwd",
        "test-es256/../x",
        "test-es256\0",
        "%2e%2e%2f",
        "",
    ] {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        let forged = epochgate::reference::signing::SigningKey::generate_es256(kid).unwrap();
        let token = forged
            .sign_with_header(&header, &claims("alice", "tv", now()))
            .unwrap();
        expect_401(&edge, format!("Bearer {token}").as_bytes(), "invalid_token").await;
    }
    assert!(
        origin.jwks_requests() <= jwks_before + 1,
        "unknown kids: at most one JWKS fetch per 10 s"
    );
    nothing_happened(&origin, &upstream);
}

#[tokio::test]
async fn wrong_claim_types_are_invalid() {
    let (origin, upstream, edge) = started().await;

    for (claim, value) in [
        ("iat", json!("yesterday")),
        ("iat", json!(-5)),
        ("iat", json!([1])),
        ("exp", json!("tomorrow")),
        ("sub", json!({"id": "alice"})),
        ("sub", json!("")),
        ("did", json!(7)),
    ] {
        let mut c = claims("alice", "tv", now());
        c[claim] = value;
        let token = origin.key.sign(&c).unwrap();
        expect_401(&edge, format!("Bearer {token}").as_bytes(), "invalid_token").await;
    }
    nothing_happened(&origin, &upstream);
}

#[tokio::test]
async fn duplicate_claims_are_invalid() {
    let (origin, upstream, edge) = started().await;

    // Signed by the trusted key, yet ambiguous: which `sub` is meant?
    let payload = format!(
        r#"{{"sub":"alice","sub":"mallory","did":"tv","iat":{},"exp":{},"iss":"{ISSUER}","aud":"{AUDIENCE}"}}"#,
        now(),
        now() + 600
    );
    let header = B64.encode(r#"{"alg":"ES256","typ":"JWT","kid":"test-es256"}"#);
    let signing_input = format!("{header}.{}", B64.encode(&payload));
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &es256_key(&origin),
        Algorithm::ES256,
    )
    .unwrap();
    let token = format!("{signing_input}.{signature}");
    expect_401(&edge, format!("Bearer {token}").as_bytes(), "invalid_token").await;
    nothing_happened(&origin, &upstream);
}

/// The test origin's private key, for signing hand-made payloads.
fn es256_key(origin: &TestOrigin) -> jsonwebtoken::EncodingKey {
    origin.key.encoding_key().clone()
}

#[tokio::test]
async fn missing_issuer_or_audience_is_invalid_when_configured() {
    let (origin, _upstream, edge) = started().await;

    for claim in ["iss", "aud"] {
        let mut c = claims("alice", "tv", now());
        c.as_object_mut().unwrap().remove(claim);
        let token = origin.key.sign(&c).unwrap();
        expect_401(&edge, format!("Bearer {token}").as_bytes(), "invalid_token").await;
    }
}

#[tokio::test]
async fn odd_authorization_casing_and_whitespace_are_accepted() {
    let (origin, _upstream, edge) = started().await;

    let token = origin.token("alice", "tv");
    for value in [
        format!("bearer {token}"),
        format!("BEARER   {token}"),
        format!("Bearer\t{token}"),
        format!("  Bearer {token}  "),
    ] {
        let response = edge
            .client
            .get(edge.url("/"))
            .header("AUTHORIZATION", value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn token_in_two_sources_uses_the_first_configured_one() {
    let (origin, _upstream, edge) = started().await;

    // Sources are tried in config order: header, then query, then cookie.
    let good = origin.token("alice", "tv");
    let response = edge
        .client
        .get(edge.url("/?token=garbage"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    let echo = echoed(response).await;
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
    let response = edge
        .client
        .get(edge.url(&format!("/?token={good}")))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(rejection(response, 401).await["error"], "invalid_token");
}

#[tokio::test]
async fn spoofed_identity_headers_are_removed_even_from_rejected_and_unchecked_requests() {
    let (origin, _upstream, edge) = started().await;

    // Many copies, in odd cases, next to a valid token: only the edge's own values arrive.
    let mut request = edge
        .client
        .get(edge.url("/"))
        .bearer_auth(origin.token("alice", "tv"));
    for (i, name) in [
        "x-epochgate-account",
        "X-Epochgate-Account",
        "X-EPOCHGATE-ACCOUNT",
        "x-epochgate-device",
    ]
    .iter()
    .enumerate()
    {
        request = request.header(*name, format!("spoof-{i}"));
    }
    let echo = echoed(request.send().await.unwrap()).await;
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
    assert_eq!(echo["headers"]["x-epochgate-device"], json!(["tv"]));
}

#[tokio::test]
async fn session_time_in_the_future_is_invalid() {
    let (origin, _upstream, edge) = started().await;

    // Signed by the trusted key, but its session starts in an hour (leeway is 5 s): it would
    // survive every sign-out made before then.
    let token = origin.token_at("alice", "tv", now() + 3600);
    expect_401(&edge, format!("Bearer {token}").as_bytes(), "invalid_token").await;
    let within_leeway = origin.token_at("alice", "tv", now() + 1);
    let response = edge.get_with_token("/", &within_leeway).await;
    assert_eq!(
        response.status(),
        200,
        "one second ahead (a sign-in right after a sign-out) is fine"
    );
    assert_eq!(
        origin.revocation_requests(),
        1,
        "only the valid token was looked up"
    );
}
