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

/// What the upstream got: (request target, header name -> every value), from the echo.
async fn forwarded(request: reqwest::RequestBuilder) -> serde_json::Value {
    echoed(request.send().await.expect("request through the edge")).await
}

/// Every header the upstream received under `prefix`, with all their values.
fn headers_under(echo: &serde_json::Value, prefix: &str) -> Vec<(String, serde_json::Value)> {
    let mut found: Vec<(String, serde_json::Value)> = echo["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(name, values)| (name.clone(), values.clone()))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[tokio::test]
async fn every_copy_of_the_same_token_in_every_source_is_stripped() {
    let (origin, _upstream, edge) = started().await;

    let token = origin.token("alice", "tv");
    let request = edge
        .client
        .get(edge.url(&format!(
            "/live/seg1.ts?token={token}&a=1&b=x%20y&token={token}&c=&tok=en&token="
        )))
        .header("authorization", format!("Bearer {token}"))
        .header("Authorization", format!("bearer   {token}"))
        .header("cookie", format!("theme=dark; device_token={token}"))
        .header("cookie", format!("device_token={token}"))
        .header(
            "cookie",
            format!("lang=en;device_token=\"{token}\"; device_token2=keep"),
        );
    let echo = forwarded(request).await;

    assert_eq!(echo["uri"], "/live/seg1.ts?a=1&b=x%20y&c=&tok=en");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    assert_eq!(
        echo["headers"]["cookie"],
        json!(["theme=dark", "lang=en; device_token2=keep"])
    );
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
    assert!(!echo.to_string().contains(&token), "{echo}");
}

#[tokio::test]
async fn every_copy_of_different_tokens_in_every_source_is_stripped() {
    let (origin, _upstream, edge) = started().await;

    // The header's first value is the token the edge checks; the others are other
    // accounts' tokens and junk, which the upstream must not see either.
    let token = origin.token("alice", "tv");
    let others = [
        origin.token("bob", "phone"),
        origin.token("carol", "car"),
        "not-a-jwt".to_string(),
    ];
    let request = edge
        .client
        .get(edge.url(&format!(
            "/live/seg1.ts?token={}&keep=1&to%6Ben={}&token={}",
            others[0], others[1], others[2]
        )))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", format!("Bearer {}", others[0]))
        .header("authorization", format!("BEARER {}", others[1]))
        .header("cookie", format!("device_token={}; a=b", others[1]))
        .header(
            "cookie",
            format!("device_token={}; device_token={}", others[2], others[0]),
        );
    let echo = forwarded(request).await;

    assert_eq!(echo["uri"], "/live/seg1.ts?keep=1");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    assert_eq!(echo["headers"]["cookie"], json!(["a=b"]));
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
    let text = echo.to_string();
    for t in others.iter().chain([&token]) {
        assert!(!text.contains(t.as_str()), "{echo}");
    }
}

#[tokio::test]
async fn token_from_the_query_or_a_cookie_takes_the_other_copies_with_it() {
    let (origin, _upstream, edge) = started().await;

    let token = origin.token("alice", "tv");
    let other = origin.token("bob", "tv");
    // Checked from the query (the first Authorization value is not of the Bearer scheme):
    // the cookie and a Bearer value behind the Basic one still go.
    let from_query = edge
        .client
        .get(edge.url(&format!("/a.m3u8?token={token}&token={other}")))
        .header("cookie", format!("device_token={other}"))
        .header("authorization", "Basic dXNlcjpwdw==")
        .header("authorization", format!("Bearer {other}"));
    let echo = forwarded(from_query).await;
    assert_eq!(echo["uri"], "/a.m3u8");
    assert!(echo["headers"].get("cookie").is_none(), "{echo}");
    assert_eq!(
        echo["headers"]["authorization"],
        json!(["Basic dXNlcjpwdw=="]),
        "another scheme is not a token source"
    );

    let from_cookie = edge
        .client
        .get(edge.url("/a.m3u8?x=1"))
        .header(
            "cookie",
            format!("device_token={token}; device_token={other}"),
        )
        .header("cookie", format!("x=1; device_token={other}"));
    let echo = forwarded(from_cookie).await;
    assert_eq!(echo["uri"], "/a.m3u8?x=1");
    assert_eq!(echo["headers"]["cookie"], json!(["x=1"]));
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
}

/// Spoofed headers under the edge's prefix, in odd cases and repeated.
const SPOOFED: [(&str, &str); 8] = [
    ("x-epochgate-verified", "spoofed"),
    ("X-Epochgate-Verified", "spoofed-again"),
    ("X-EPOCHGATE-ROLE", "admin"),
    ("x-EpochGate-Account-Id", "mallory"),
    ("x-epochgate-account", "mallory"),
    ("X-Epochgate-Device", "stolen"),
    ("x-epochgate-", "empty-suffix"),
    ("x-epochgate-role", "owner"),
];

#[tokio::test]
async fn client_headers_under_the_edge_prefix_never_reach_the_upstream() {
    let (origin, _upstream, edge) = started().await;

    let token = origin.token("alice", "tv");
    for source in ["header", "query", "cookie"] {
        let mut request = match source {
            "header" => edge.client.get(edge.url("/s.ts")).bearer_auth(&token),
            "query" => edge.client.get(edge.url(&format!("/s.ts?token={token}"))),
            _ => edge
                .client
                .get(edge.url("/s.ts"))
                .header("cookie", format!("device_token={token}")),
        };
        for (name, value) in SPOOFED {
            request = request.header(name, value);
        }
        // Near misses are not under the prefix and pass.
        request = request
            .header("x-epochgate", "near-miss")
            .header("x-epochgatex-id", "near-miss");
        let echo = forwarded(request).await;
        assert_eq!(
            headers_under(&echo, "x-epochgate-"),
            [
                ("x-epochgate-account".to_string(), json!(["alice"])),
                ("x-epochgate-device".to_string(), json!(["tv"])),
            ],
            "token from the {source}: {echo}"
        );
        assert_eq!(echo["headers"]["x-epochgate"], json!(["near-miss"]));
        assert_eq!(echo["headers"]["x-epochgatex-id"], json!(["near-miss"]));
    }
}

#[tokio::test]
async fn configured_header_prefix_is_owned_and_identity_headers_outside_it_stay_stripped() {
    let (origin, _upstream, edge) = started_with(|c| c.header_prefix("X-Edge-")).await;

    let request = edge
        .client
        .get(edge.url("/"))
        .bearer_auth(origin.token("alice", "tv"))
        .header("x-edge-verified", "spoofed")
        .header("X-EDGE-ROLE", "admin")
        .header("x-edge-role", "owner")
        .header("X-Epochgate-Account", "mallory")
        .header("x-epochgate-device", "stolen")
        .header("x-epochgate-verified", "not-ours-any-more");
    let echo = forwarded(request).await;
    assert!(headers_under(&echo, "x-edge-").is_empty(), "{echo}");
    assert_eq!(echo["headers"]["x-epochgate-account"], json!(["alice"]));
    assert_eq!(echo["headers"]["x-epochgate-device"], json!(["tv"]));
    assert_eq!(
        echo["headers"]["x-epochgate-verified"],
        json!(["not-ours-any-more"])
    );
}
