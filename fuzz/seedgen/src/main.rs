//! Seed tokens and requests for the `token_path` fuzz target: valid ES256 and HS256 tokens
//! in every token source, and near misses (alg none, expired, wrong issuer or audience,
//! claims of the wrong type, huge payloads, bad base64).

use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

// Must match fuzz_targets/token_path.rs.
const HMAC_SECRET: &[u8] = b"epochgate-fuzz-hmac-secret-0123456789abcdef";
const ISSUER: &str = "https://auth.example.test";
const AUDIENCE: &str = "epochgate-edge";
const SEP: &str = "\0";

/// 2026-01-01 and 2100-01-01: the valid seeds stay valid.
const IAT: u64 = 1_767_225_600;
const EXP: u64 = 4_102_444_800;

fn claims() -> Value {
    json!({"sub": "acct-42", "did": "dev-7", "iat": IAT, "exp": EXP, "iss": ISSUER, "aud": AUDIENCE})
}

fn with(changes: &[(&str, Value)]) -> Value {
    let mut c = claims();
    for (k, v) in changes {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(*k);
        } else {
            c[*k] = v.clone();
        }
    }
    c
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("fuzz/seeds/token_path".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("../../keys");
    let ec_private = std::fs::read(keys.join("es256-private.pem")).unwrap();
    let ec_public = std::fs::read(keys.join("es256-public.pem")).unwrap();
    let es = EncodingKey::from_ec_pem(&ec_private).unwrap();
    let hs = EncodingKey::from_secret(HMAC_SECRET);
    let es_sign = |c: &Value| encode(&Header::new(Algorithm::ES256), c, &es).unwrap();
    let hs_sign = |c: &Value| encode(&Header::new(Algorithm::HS256), c, &hs).unwrap();

    let es_valid = es_sign(&claims());
    let hs_valid = hs_sign(&claims());
    let mut kid_header = Header::new(Algorithm::ES256);
    kid_header.kid = Some("unknown-kid".into());
    let es_kid = encode(&kid_header, &claims(), &es).unwrap();
    // Algorithm confusion: HS256 keyed with the EC public key's PEM text.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&ec_public),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims())
    );
    let none_upper = format!("{}.{}.", b64(&json!({"alg": "NONE"})), b64(&claims()));
    let huge_ok = es_sign(&with(&[("pad", json!("x".repeat(5_500)))]));
    let huge_over = hs_sign(&with(&[("pad", json!("y".repeat(7_000)))]));
    let (h, p, s) = {
        let mut it = es_valid.splitn(3, '.');
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    };

    let seeds: Vec<(&str, String)> = vec![
        ("es256_bearer", format!("Bearer {es_valid}")),
        ("es256_query", format!("{SEP}a=1&token={es_valid}&b=2")),
        (
            "es256_cookie",
            format!("{SEP}{SEP}theme=dark; device_token={es_valid}; x=y"),
        ),
        ("es256_raw", es_valid.clone()),
        ("hs256_raw", hs_valid.clone()),
        ("hs256_bearer_tab", format!("bEaReR\t  {hs_valid}")),
        (
            "all_three_sources",
            format!("Bearer {hs_valid}{SEP}token={es_valid}{SEP}device_token=\"{hs_valid}\""),
        ),
        (
            "basic_then_query",
            format!("Basic dXNlcjpwdw=={SEP}token={hs_valid}"),
        ),
        (
            "query_percent_encoded",
            format!("{SEP}tok%65n={}", es_valid.replace('.', "%2E")),
        ),
        ("es256_unknown_kid", format!("Bearer {es_kid}")),
        ("alg_confusion_hs256_with_ec_pem", confused),
        ("alg_none", none.clone()),
        ("alg_none_query", format!("{SEP}token={none}")),
        ("alg_none_upper", format!("Bearer {none_upper}")),
        ("huge_payload_under_limit", format!("Bearer {huge_ok}")),
        ("huge_payload_over_limit", huge_over),
        ("bad_base64", format!("Bearer {h}.{p}!!.{s}")),
        ("bad_base64_header", format!("Bearer %%%.{p}.{s}")),
        (
            "bad_signature",
            format!("Bearer {h}.{p}.{}", &s[..s.len() - 4]),
        ),
        ("two_segments", format!("Bearer {h}.{p}")),
        (
            "expired",
            es_sign(&with(&[("exp", json!(1_000_000_000u64))])),
        ),
        ("not_yet_valid", hs_sign(&with(&[("nbf", json!(EXP))]))),
        (
            "wrong_issuer",
            es_sign(&with(&[("iss", json!("https://evil.test"))])),
        ),
        (
            "wrong_audience",
            es_sign(&with(&[("aud", json!(["other", "x"]))])),
        ),
        ("no_audience", es_sign(&with(&[("aud", Value::Null)]))),
        ("missing_did", hs_sign(&with(&[("did", Value::Null)]))),
        ("sub_number", hs_sign(&with(&[("sub", json!(42))]))),
        (
            "sub_long",
            hs_sign(&with(&[("sub", json!("s".repeat(300)))])),
        ),
        ("iat_float", hs_sign(&with(&[("iat", json!(1.7e9))]))),
        ("iat_negative", hs_sign(&with(&[("iat", json!(-5))]))),
        (
            "iat_string",
            hs_sign(&with(&[("iat", json!("1767225600"))])),
        ),
        ("exp_huge_float", hs_sign(&with(&[("exp", json!(1e300))]))),
        ("exp_negative", hs_sign(&with(&[("exp", json!(-1))]))),
        ("claims_not_object", hs_sign(&json!([1, 2, 3]))),
        (
            "empty_cookie_value",
            format!("{SEP}{SEP}device_token=; a=b"),
        ),
        ("empty_query_value", format!("{SEP}token=&token={es_valid}")),
    ];
    // `<header JSON>\n<claims JSON>`: the fuzz target encodes and HS256-signs these itself,
    // so mutations of the JSON reach the claim checks behind the signature.
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let json_seed = |header: &Value, claims: &Value| format!("{header}\n{claims}");
    let mut seeds = seeds;
    seeds.extend([
        ("json_valid", json_seed(&hs, &claims())),
        ("json_kid", json_seed(&json!({"alg": "HS256", "kid": "k1"}), &claims())),
        ("json_alg_es256", json_seed(&json!({"alg": "ES256"}), &claims())),
        ("json_aud_array", json_seed(&hs, &with(&[("aud", json!(["x", AUDIENCE]))]))),
        (
            "json_float_times",
            json_seed(&hs, &with(&[("exp", json!(4.1e9)), ("nbf", json!(1.5e9)), ("iat", json!(1.7e9))])),
        ),
        ("json_iat_beyond_u64", json_seed(&hs, &with(&[("iat", json!(1e20))]))),
        ("json_sub_empty", json_seed(&hs, &with(&[("sub", json!(""))]))),
        ("json_did_object", json_seed(&hs, &with(&[("did", json!({"a": [1, null]}))]))),
        (
            "json_escapes_and_duplicates",
            format!(
                "{hs}\n{{\"sub\":\"a\\u0000\\ud83d\\ude00\",\"sub\":\"b\",\"did\":\"d\",\"iat\":1,\"exp\":{EXP},\"iss\":\"{ISSUER}\",\"aud\":\"{AUDIENCE}\"}}"
            ),
        ),
        ("json_not_json", "{\"alg\":\"HS256\"\n{not json".to_string()),
    ]);
    for (name, body) in &seeds {
        std::fs::write(dir.join(name), body).unwrap();
    }
    println!("{} seeds in {}", seeds.len(), dir.display());
}
