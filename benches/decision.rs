//! The decision path for a cache hit: extract → verify → epoch-cache lookup → decide, per
//! algorithm, with the verified-token cache off (every request verifies the signature) and
//! on (a token seen before skips it).
//!
//! ```text
//! cargo bench --bench decision
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{claims, now, EdgeConfig, TestOrigin};
use criterion::{criterion_group, criterion_main, Criterion};
use epochgate::reference::signing::SigningKey;
use epochgate::{Decision, Gate, Settings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const HMAC_SECRET: &str = "a-benchmark-hmac-secret-of-32-bytes+";

/// The test config with one algorithm (`keys`: how it gets its keys) and the verified-token
/// cache at `verified_cache_entries`, polling only.
fn settings(
    origin: &TestOrigin,
    keys: impl FnOnce(EdgeConfig) -> EdgeConfig,
    verified_cache_entries: u64,
) -> Settings {
    let unused_upstream = SocketAddr::from(([127, 0, 0, 1], 2));
    let config = keys(EdgeConfig::to(&origin.url(), unused_upstream))
        .feed(false)
        .set(
            "token.verified_cache_entries",
            &verified_cache_entries.to_string(),
        );
    Settings::from_yaml(&config.yaml()).unwrap()
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
    // The test origin serves these keys as its JWKS, and no revocation for any account.
    let origin = runtime.block_on(TestOrigin::start());
    origin.set_jwks(vec![es.jwk().clone(), rs.jwk().clone(), ed.jwk().clone()]);
    std::env::set_var("EPOCHGATE_BENCH_HMAC", HMAC_SECRET);
    let claims = claims("account-1", "tv", now() - 60);
    let hs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
    )
    .unwrap();

    type Keys = Box<dyn Fn(EdgeConfig) -> EdgeConfig>;
    let jwks = |alg: &'static str| -> Keys { Box::new(move |c: EdgeConfig| c.algorithms(&[alg])) };
    let cases: Vec<(&str, String, Keys)> = vec![
        ("ES256", es.sign(&claims).unwrap(), jwks("ES256")),
        ("RS256", rs.sign(&claims).unwrap(), jwks("RS256")),
        ("EdDSA", ed.sign(&claims).unwrap(), jwks("EdDSA")),
        (
            "HS256",
            hs_token,
            Box::new(|c: EdgeConfig| c.hmac_secret_env("EPOCHGATE_BENCH_HMAC")),
        ),
    ];
    let mut group = c.benchmark_group("decision_cache_hit");
    for (name, token, keys) in cases {
        for (cache_name, entries) in [("verify_every_time", 0), ("verified_token_cache", 100_000)] {
            let gate = Arc::new(Gate::new(&settings(&origin, &keys, entries)).unwrap());
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
