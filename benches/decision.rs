//! The decision path for a cache hit: extract → verify → epoch-cache lookup → decide, per
//! algorithm, with the verified-token cache off (every request verifies the signature) and
//! on (a token seen before skips it).
//!
//! ```text
//! cargo bench --bench decision
//! ```

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use epochgate::reference::signing::SigningKey;
use epochgate::{Decision, Gate, Settings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISSUER: &str = "https://auth.bench";
const AUDIENCE: &str = "streaming-edge";
const HMAC_SECRET: &str = "a-benchmark-hmac-secret-of-32-bytes+";

fn claims() -> serde_json::Value {
    let now = epochgate::unix_millis() / 1000;
    serde_json::json!({"sub": "account-1", "did": "tv", "iat": now - 60, "exp": now + 3600, "iss": ISSUER, "aud": AUDIENCE})
}

/// A local origin serving these keys as its JWKS and "no revocations" for every account.
async fn origin(keys: Vec<serde_json::Value>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let jwks = serde_json::json!({ "keys": keys });
    let router = axum::Router::new()
        .route(
            "/.well-known/jwks.json",
            axum::routing::get(move || async move { axum::Json(jwks) }),
        )
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND });
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

fn settings(origin: &str, algorithms: &str, keys: &str, verified_cache_entries: u64) -> Settings {
    Settings::from_yaml(&format!(
        r#"
proxy: {{ listen: ["127.0.0.1:1"], upstream: {{ peers: ["127.0.0.1:2"] }} }}
auth_origin: {{ url: "{origin}", feed: false }}
token:
  algorithms: [{algorithms}]
  issuer: "{ISSUER}"
  audience: "{AUDIENCE}"
  verified_cache_entries: {verified_cache_entries}
{keys}
"#
    ))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let es = SigningKey::generate_es256("es").unwrap();
    let rs = SigningKey::from_rsa_pem(
        "rs",
        include_bytes!("../tests/fixtures/rsa-2048-private.pem"),
    )
    .unwrap();
    let ed = SigningKey::generate_ed25519("ed").unwrap();
    let url = runtime.block_on(origin(vec![
        es.jwk().clone(),
        rs.jwk().clone(),
        ed.jwk().clone(),
    ]));
    std::env::set_var("EPOCHGATE_BENCH_HMAC", HMAC_SECRET);
    let hs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap();

    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("ES256", es.sign(&claims()).unwrap(), "ES256", ""),
        ("RS256", rs.sign(&claims()).unwrap(), "RS256", ""),
        ("EdDSA", ed.sign(&claims()).unwrap(), "EdDSA", ""),
        (
            "HS256",
            hs_token,
            "HS256",
            "  keys: { hmac_secret_env: EPOCHGATE_BENCH_HMAC }",
        ),
    ];
    let mut group = c.benchmark_group("decision_cache_hit");
    for (name, token, alg, keys) in cases {
        for (cache_name, entries) in [("verify_every_time", 0), ("verified_token_cache", 100_000)] {
            let gate = Arc::new(Gate::new(&settings(&url, alg, keys, entries)).unwrap());
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            let uri: http::Uri = "/live/seg1.ts".parse().unwrap();
            // Load keys and warm the epoch cache (and the verified-token cache) once.
            runtime.block_on(async {
                gate.keys().refresh().await.unwrap();
                let verdict = gate.check(&headers, &uri, None).await;
                assert!(
                    matches!(verdict.decision, Decision::Allow { .. }),
                    "{name}: {verdict:?}"
                );
            });
            group.bench_function(format!("{name}/{cache_name}"), |b| {
                b.to_async(&runtime).iter(|| {
                    let (gate, headers, uri) = (gate.clone(), &headers, &uri);
                    async move { gate.check(headers, uri, None).await }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
