//! Decisions as the client and the upstream see them on the wire, through the real edge
//! binary, a test auth origin and an echoing upstream on loopback: identity headers, token
//! stripping, challenges, verification against the JWKS, and the log. Which decision a
//! token gets is specified in gate_spec.rs.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

#[tokio::test]
async fn valid_token_is_forwarded_with_identity_headers() {
    let (origin, _upstream, edge) = started().await;

    let echo = echoed(
        edge.get_with_token("/live/index.m3u8", &origin.token("alice", "tv"))
            .await,
    )
    .await;
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
    assert_eq!(echo["headers"]["x-epochgate-device"], json!(["tv"]));
    assert!(
        echo["headers"].get("authorization").is_none(),
        "token must be stripped"
    );
    assert_eq!(
        edge.metric(r#"epochgate_requests_total{decision="allowed"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn missing_token_is_401_without_error_attribute() {
    let (_origin, upstream, edge) = started().await;

    let response = edge.get("/live/index.m3u8").await;
    assert_eq!(
        response.headers()["www-authenticate"].to_str().unwrap(),
        r#"Bearer realm="epochgate""#
    );
    let body = rejection(response, 401).await;
    assert_eq!(body["error"], "missing_token");
    assert!(body["message"].is_string());
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn query_parameter_token_is_accepted_and_stripped() {
    let (origin, _upstream, edge) = started().await;

    let token = origin.token("alice", "tv");
    let response = edge
        .get(&format!("/live/seg3.ts?a=1&token={token}&b=2"))
        .await;
    let echo = echoed(response).await;
    assert_eq!(echo["uri"], "/live/seg3.ts?a=1&b=2");
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
}

#[tokio::test]
async fn cookie_token_is_accepted_and_only_that_cookie_stripped() {
    let (origin, _upstream, edge) = started().await;

    let token = origin.token("alice", "tv");
    let response = edge
        .client
        .get(edge.url("/"))
        .header(
            "cookie",
            format!("theme=dark; device_token={token}; lang=en"),
        )
        .send()
        .await
        .unwrap();
    let echo = echoed(response).await;
    assert_eq!(echo["headers"]["cookie"], json!(["theme=dark; lang=en"]));
    assert_eq!(echo["headers"]["x-epochgate-device"], json!(["tv"]));
}

#[tokio::test]
async fn strip_token_off_forwards_the_token() {
    let (origin, _upstream, edge) = started_with(|c| c.strip_token(false)).await;

    let token = origin.token("alice", "tv");
    let echo = echoed(edge.get_with_token("/", &token).await).await;
    assert_eq!(
        echo["headers"]["authorization"],
        json!([format!("Bearer {token}")])
    );
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let (origin, _upstream, edge) = started().await;

    let response = edge
        .client
        .get(edge.url("/"))
        .bearer_auth(origin.token("alice", "tv"))
        .header("X-EpochGate-Account", "mallory")
        .header("x-epochgate-account", "eve")
        .header("X-EPOCHGATE-DEVICE", "stolen")
        .send()
        .await
        .unwrap();
    let echo = echoed(response).await;
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
    assert_eq!(echo["headers"]["x-epochgate-device"], json!(["tv"]));
}

async fn expect_invalid(edge: &Edge, token: &str) {
    let response = edge.get_with_token("/", token).await;
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(rejection(response, 401).await["error"], "invalid_token");
}

#[tokio::test]
async fn expired_token_is_invalid() {
    let (origin, _upstream, edge) = started().await;

    let mut claims = claims("alice", "tv", now() - 7200);
    claims["exp"] = json!(now() - 3600);
    expect_invalid(&edge, &origin.key.sign(&claims).unwrap()).await;
}

#[tokio::test]
async fn wrong_audience_and_issuer_are_invalid() {
    let (origin, _upstream, edge) = started().await;

    let mut wrong_aud = claims("alice", "tv", now());
    wrong_aud["aud"] = json!("another-service");
    expect_invalid(&edge, &origin.key.sign(&wrong_aud).unwrap()).await;
    let mut wrong_iss = claims("alice", "tv", now());
    wrong_iss["iss"] = json!("https://evil.example");
    expect_invalid(&edge, &origin.key.sign(&wrong_iss).unwrap()).await;
}

#[tokio::test]
async fn tampered_token_is_invalid() {
    let (origin, _upstream, edge) = started().await;

    // Mallory's claims under Alice's signature.
    let alice = origin.token("alice", "tv");
    let mallory = origin.token("mallory", "tv");
    let alice_parts: Vec<&str> = alice.split('.').collect();
    let mallory_payload = mallory.split('.').nth(1).unwrap();
    expect_invalid(
        &edge,
        &format!("{}.{mallory_payload}.{}", alice_parts[0], alice_parts[2]),
    )
    .await;
}

#[tokio::test]
async fn alg_none_is_invalid() {
    let (_origin, _upstream, edge) = started().await;

    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(claims("alice", "tv", now()).to_string());
    expect_invalid(&edge, &format!("{header}.{payload}.")).await;
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_invalid() {
    let (origin, _upstream, edge) = started().await;

    // The classic confusion attack: the public key's bytes used as an HMAC secret.
    let public_jwk = origin.key.jwk().to_string();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test-es256".into());
    let forged = jsonwebtoken::encode(
        &header,
        &claims("alice", "tv", now()),
        &EncodingKey::from_secret(public_jwk.as_bytes()),
    )
    .unwrap();
    expect_invalid(&edge, &forged).await;
}

#[tokio::test]
async fn token_without_required_claims_is_invalid() {
    let (origin, _upstream, edge) = started().await;

    for missing in ["sub", "did", "iat", "exp"] {
        let mut c = claims("alice", "tv", now());
        c.as_object_mut().unwrap().remove(missing);
        expect_invalid(&edge, &origin.key.sign(&c).unwrap()).await;
    }
    let mut wrong_type = claims("alice", "tv", now());
    wrong_type["sub"] = json!(42);
    expect_invalid(&edge, &origin.key.sign(&wrong_type).unwrap()).await;
    assert_eq!(origin.revocation_requests(), 0);
}

#[tokio::test]
async fn over_long_token_is_invalid() {
    let (_origin, _upstream, edge) = started().await;

    expect_invalid(&edge, &"a".repeat(8193)).await;
}

#[tokio::test]
async fn rs256_and_eddsa_tokens_from_the_jwks_are_accepted() {
    let origin = TestOrigin::start().await;
    let rsa = epochgate::reference::signing::SigningKey::from_rsa_pem(
        "test-rs256",
        include_bytes!("fixtures/rsa-2048-private.pem"),
    )
    .unwrap();
    let ed = epochgate::reference::signing::SigningKey::generate_ed25519("test-ed25519").unwrap();
    origin.set_jwks(vec![
        origin.key.jwk().clone(),
        rsa.jwk().clone(),
        ed.jwk().clone(),
    ]);
    let upstream = Upstream::start().await;
    let edge = Edge::start(&origin, &upstream).await;

    for key in [&rsa, &ed] {
        let token = key.sign(&claims("alice", "tv", now())).unwrap();
        assert_eq!(
            edge.get_with_token("/", &token).await.status(),
            200,
            "{:?}",
            key.alg
        );
    }
}

#[tokio::test]
async fn rejection_keeps_the_connection_alive() {
    let (_origin, _upstream, edge) = started().await;

    // One client, one pooled connection: three answers in a row on it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = client.get(edge.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert_ne!(
            r.headers().get("connection").and_then(|v| v.to_str().ok()),
            Some("close")
        );
        let _ = r.bytes().await;
    }
    assert!(
        !edge.log().contains("ERROR"),
        "a rejection is not an error:\n{}",
        edge.log()
    );
}

#[tokio::test]
async fn tokens_never_appear_in_the_log() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    origin.set_record("alice", now() - 10, &[]);
    let edge = Edge::start(&origin, &upstream).await;

    let valid = origin.token("bob", "tv");
    let revoked = origin.token_at("alice", "tv", now() - 100);
    edge.get_with_token("/", &valid).await;
    edge.get_with_token("/", &revoked).await;
    edge.get(&format!("/?token={valid}")).await;
    let log = edge.log();
    for token in [&valid, &revoked] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "token in log:\n{log}");
    }
}

#[tokio::test]
async fn static_hmac_secret_from_the_environment_verifies_hs256() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let secret = "an-hmac-secret-of-at-least-32-bytes!!";
    let edge = EdgeConfig::new(&origin, &upstream)
        .hmac_secret_env("EPOCHGATE_TEST_HMAC")
        .env("EPOCHGATE_TEST_HMAC", secret)
        .spawn();
    let sign = |key: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims("alice", "tv", now()),
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    };
    let good = sign(secret.as_bytes());
    let status = eventually(
        std::time::Duration::from_secs(10),
        "the edge to answer",
        || {
            let (edge, good) = (&edge, &good);
            async move {
                edge.client
                    .get(edge.url("/"))
                    .bearer_auth(good)
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status())
            }
        },
    )
    .await;
    let wrong = edge
        .get_with_token("/", &sign(b"another-secret-of-at-least-32-bytes!"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        origin.jwks_requests(),
        0,
        "static keys never touch the JWKS"
    );
}

/// An edge whose `token.max_lifetime` is one hour.
async fn edge_with_max_lifetime(origin: &TestOrigin, upstream: &Upstream) -> Edge {
    EdgeConfig::new(origin, upstream)
        .max_lifetime("1h")
        .start()
        .await
}

/// A token issued a minute ago whose `exp` lies `lifetime` seconds after its `iat`.
fn token_living(origin: &TestOrigin, lifetime: u64) -> String {
    let iat = now() - 60;
    let mut claims = claims("alice", "tv", iat);
    claims["exp"] = json!(iat + lifetime);
    origin.key.sign(&claims).unwrap()
}

#[tokio::test]
async fn token_living_longer_than_max_lifetime_is_invalid() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with_max_lifetime(&origin, &upstream).await;

    let response = edge.get_with_token("/", &token_living(&origin, 3601)).await;
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("token lifetime is longer than this edge accepts"),
        "{challenge}"
    );
    assert_eq!(rejection(response, 401).await["error"], "invalid_token");
}

#[tokio::test]
async fn token_within_max_lifetime_is_allowed() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let edge = edge_with_max_lifetime(&origin, &upstream).await;

    let response = edge.get_with_token("/", &token_living(&origin, 3600)).await;
    assert_eq!(response.status(), 200);
}
