//! The gate's core as a specification, without Pingora or HTTP: a `Gate` with static keys, an
//! in-memory record source and a clock the test steps. Each test is one row of the README's
//! decision table or one freshness rule.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use epochgate::clock::{Clock, ManualClock};
use epochgate::config::{KeySource, OnOriginUnavailable, Settings};
use epochgate::request::decision::{Decision, InvalidToken, Reason};
use epochgate::revocation::origin::OriginError;
use epochgate::revocation::record_source::RecordSource;
use epochgate::revocation::RevocationRecord;
use epochgate::Gate;
use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";
const REFRESH_AFTER: Duration = Duration::from_secs(30);
const MAX_STALE: Duration = Duration::from_secs(600);

/// Records held in memory; can be made to fail, and counts what it is asked.
#[derive(Default)]
struct FakeSource {
    records: Mutex<HashMap<String, RevocationRecord>>,
    down: AtomicBool,
    fetches: AtomicU64,
}

impl FakeSource {
    fn sign_out(&self, account: &str, epoch: u64) {
        self.records
            .lock()
            .unwrap()
            .entry(account.to_string())
            .or_default()
            .epoch = epoch;
    }

    fn sign_out_device(&self, account: &str, device: &str, epoch: u64) {
        self.records
            .lock()
            .unwrap()
            .entry(account.to_string())
            .or_default()
            .devices
            .insert(device.to_string(), epoch);
    }

    /// Replaces the record outright (a lagging replica may answer a lower epoch).
    fn set_epoch(&self, account: &str, epoch: u64) {
        self.records.lock().unwrap().insert(
            account.to_string(),
            RevocationRecord {
                epoch,
                devices: HashMap::new(),
            },
        );
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl RecordSource for FakeSource {
    async fn fetch_record(&self, account: &str) -> Result<RevocationRecord, OriginError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(OriginError::Transport("the fake source is down".into()));
        }
        Ok(self
            .records
            .lock()
            .unwrap()
            .get(account)
            .cloned()
            .unwrap_or_default())
    }
}

struct Spec {
    gate: Gate,
    source: Arc<FakeSource>,
    clock: Arc<ManualClock>,
}

fn settings(policy: OnOriginUnavailable) -> Settings {
    let mut settings = Settings::from_yaml(
        r#"
proxy: { listen: ["127.0.0.1:1"], upstream: { peers: ["127.0.0.1:2"] } }
auth_origin: { url: "http://127.0.0.1:9", feed: false }
token: { algorithms: [ES256] }
cache: { refresh_after: 30s, max_stale: 10m }
"#,
    )
    .expect("valid settings");
    settings.token.algorithms = vec![Algorithm::HS256];
    settings.token.keys = KeySource::HmacSecret(SECRET.to_vec());
    settings.cache.on_origin_unavailable = policy;
    settings
}

fn spec_with(settings: Settings) -> Spec {
    let source = Arc::new(FakeSource::default());
    let clock = ManualClock::new();
    let gate = Gate::with_record_source(&settings, clock.clone(), Some(source.clone()))
        .expect("a gate with static keys");
    Spec {
        gate,
        source,
        clock,
    }
}

fn spec() -> Spec {
    spec_with(settings(OnOriginUnavailable::Deny))
}

impl Spec {
    fn now(&self) -> u64 {
        self.clock.unix_secs()
    }

    /// A token of `account` on `device`, issued `age` seconds ago, valid for an hour.
    fn token(&self, account: &str, device: &str, age: u64) -> String {
        let iat = self.now() - age;
        let claims = json!({"sub": account, "did": device, "iat": iat, "exp": iat + 3600});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signing")
    }

    async fn decide_from(&self, token: Option<&str>, client: Option<IpAddr>) -> Decision {
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let uri: Uri = "/live/seg1.ts".parse().expect("uri");
        self.gate.check(&headers, &uri, client).await.decision
    }

    async fn decide(&self, token: &str) -> Decision {
        self.decide_from(Some(token), None).await
    }

    /// Lets the background refresh the gate spawned run to its end.
    async fn until_fetches(&self, n: u64) {
        tokio::time::timeout(Duration::from_secs(5), async {
            while self.source.fetches() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the background refresh ran");
        // The fetch has answered; let its task merge the record.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }
}

fn allowed(decision: &Decision) -> bool {
    matches!(decision, Decision::Allow { .. })
}

// --- the decision table ---

#[tokio::test]
async fn valid_token_of_an_account_never_signed_out_is_allowed() {
    let spec = spec();
    let decision = spec.decide(&spec.token("alice", "tv", 60)).await;
    assert_eq!(
        decision,
        Decision::Allow {
            account: "alice".into(),
            device: "tv".into()
        }
    );
}

#[tokio::test]
async fn request_without_a_token_is_missing_token() {
    let spec = spec();
    assert_eq!(
        spec.decide_from(None, None).await,
        Decision::Reject(Reason::MissingToken)
    );
}

#[tokio::test]
async fn token_signed_with_another_secret_is_invalid_and_costs_no_lookup() {
    let spec = spec();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "did": "tv", "iat": spec.now(), "exp": spec.now() + 60}),
        &EncodingKey::from_secret(b"another secret, also thirty-two bytes long"),
    )
    .unwrap();
    assert_eq!(
        spec.decide(&forged).await,
        Decision::Reject(Reason::InvalidToken(InvalidToken::BadSignature))
    );
    assert_eq!(spec.source.fetches(), 0);
}

#[tokio::test]
async fn token_issued_before_the_account_epoch_is_signed_out() {
    let spec = spec();
    spec.source.sign_out("alice", spec.now() - 10);
    assert_eq!(
        spec.decide(&spec.token("alice", "tv", 60)).await,
        Decision::Reject(Reason::SignedOut)
    );
}

#[tokio::test]
async fn token_issued_after_the_account_epoch_is_allowed() {
    let spec = spec();
    spec.source.sign_out("alice", spec.now() - 100);
    assert!(allowed(&spec.decide(&spec.token("alice", "tv", 60)).await));
}

#[tokio::test]
async fn token_issued_in_the_epoch_second_is_allowed() {
    let spec = spec();
    let token = spec.token("alice", "tv", 60);
    spec.source.sign_out("alice", spec.now() - 60);
    assert!(allowed(&spec.decide(&token).await));
}

#[tokio::test]
async fn device_signed_out_rejects_only_that_device() {
    let spec = spec();
    spec.source.sign_out_device("alice", "tv", spec.now() - 10);
    assert_eq!(
        spec.decide(&spec.token("alice", "tv", 60)).await,
        Decision::Reject(Reason::DeviceSignedOut)
    );
    assert!(allowed(
        &spec.decide(&spec.token("alice", "phone", 60)).await
    ));
}

#[tokio::test]
async fn no_record_and_the_source_down_is_origin_unavailable_by_default() {
    let spec = spec();
    spec.source.set_down(true);
    assert_eq!(
        spec.decide(&spec.token("alice", "tv", 60)).await,
        Decision::Reject(Reason::OriginUnavailable)
    );
}

#[tokio::test]
async fn no_record_and_the_source_down_is_forwarded_unchecked_with_the_allow_policy() {
    let spec = spec_with(settings(OnOriginUnavailable::Allow));
    spec.source.set_down(true);
    assert_eq!(
        spec.decide(&spec.token("alice", "tv", 60)).await,
        Decision::AllowUnchecked {
            account: "alice".into(),
            device: "tv".into()
        }
    );
}

#[tokio::test]
async fn well_formed_token_before_any_key_is_loaded_is_not_ready() {
    let mut settings = settings(OnOriginUnavailable::Deny);
    settings.token.algorithms = vec![Algorithm::RS256];
    settings.token.keys = KeySource::Jwks;
    let spec = spec_with(settings);
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "alice", "did": "tv", "iat": spec.now(), "exp": spec.now() + 60}),
        &EncodingKey::from_rsa_pem(include_bytes!("fixtures/rsa-2048-private.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec.decide(&token).await,
        Decision::Reject(Reason::NotReady)
    );
}

#[tokio::test]
async fn client_over_its_invalid_token_budget_is_refused_unless_the_token_is_known() {
    let spec = spec();
    let client: IpAddr = "192.0.2.7".parse().unwrap();
    let known = spec.token("alice", "tv", 60);
    assert!(allowed(&spec.decide_from(Some(&known), Some(client)).await));
    for _ in 0..100 {
        spec.decide_from(Some("not.a.token"), Some(client)).await;
    }
    let fresh = spec.token("bob", "tv", 60);
    assert!(matches!(
        spec.decide_from(Some(&fresh), Some(client)).await,
        Decision::Reject(Reason::TooManyInvalidTokens { .. })
    ));
    assert!(allowed(&spec.decide_from(Some(&known), Some(client)).await));
    let elsewhere: IpAddr = "192.0.2.8".parse().unwrap();
    assert!(allowed(
        &spec.decide_from(Some(&fresh), Some(elsewhere)).await
    ));
}

#[tokio::test]
async fn client_over_its_invalid_token_budget_without_a_token_is_still_missing_token() {
    let spec = spec();
    let client: IpAddr = "192.0.2.7".parse().unwrap();
    for _ in 0..100 {
        spec.decide_from(Some("not.a.token"), Some(client)).await;
    }
    assert!(matches!(
        spec.decide_from(Some(&spec.token("bob", "tv", 60)), Some(client))
            .await,
        Decision::Reject(Reason::TooManyInvalidTokens { .. })
    ));
    assert_eq!(
        spec.decide_from(None, Some(client)).await,
        Decision::Reject(Reason::MissingToken)
    );
}

// --- freshness ---

#[tokio::test]
async fn record_younger_than_refresh_after_is_used_without_asking_the_source() {
    let spec = spec();
    let token = spec.token("alice", "tv", 60);
    spec.decide(&token).await;
    spec.source.sign_out("alice", spec.now());
    spec.clock.advance(REFRESH_AFTER - Duration::from_secs(1));
    assert!(allowed(&spec.decide(&token).await));
    assert_eq!(spec.source.fetches(), 1);
}

#[tokio::test]
async fn record_older_than_refresh_after_is_used_once_while_it_is_refreshed() {
    let spec = spec();
    let token = spec.token("alice", "tv", 60);
    spec.decide(&token).await;
    spec.source.sign_out("alice", spec.now());
    spec.clock.advance(REFRESH_AFTER + Duration::from_secs(1));
    assert!(
        allowed(&spec.decide(&token).await),
        "stale-while-revalidate serves the record it has"
    );
    spec.until_fetches(2).await;
    assert_eq!(
        spec.decide(&token).await,
        Decision::Reject(Reason::SignedOut)
    );
}

#[tokio::test]
async fn record_used_while_it_is_refreshed_is_counted_as_a_stale_lookup() {
    let spec = spec();
    let token = spec.token("alice", "tv", 60);
    spec.decide(&token).await;
    spec.clock.advance(REFRESH_AFTER + Duration::from_secs(1));
    spec.decide(&token).await;
    spec.until_fetches(2).await;
    let exposition = String::from_utf8(spec.gate.metrics().encode()).expect("UTF-8 metrics");
    assert!(
        exposition
            .lines()
            .any(|line| line == r#"epochgate_epoch_cache_lookups_total{result="stale"} 1"#),
        "{exposition}"
    );
}

#[tokio::test]
async fn record_is_used_through_an_outage_until_max_stale() {
    let spec = spec();
    let token = spec.token("alice", "tv", 60);
    spec.decide(&token).await;
    spec.source.set_down(true);
    spec.clock.advance(MAX_STALE - Duration::from_secs(1));
    assert!(allowed(&spec.decide(&token).await));
    spec.clock.advance(Duration::from_secs(2));
    assert_eq!(
        spec.decide(&token).await,
        Decision::Reject(Reason::OriginUnavailable)
    );
}

#[tokio::test]
async fn after_a_feed_reset_the_next_request_waits_for_the_source() {
    let spec = spec();
    let token = spec.token("alice", "tv", 60);
    spec.decide(&token).await;
    spec.source.sign_out("alice", spec.now());
    spec.gate.cache().coverage().reset();
    assert_eq!(
        spec.decide(&token).await,
        Decision::Reject(Reason::SignedOut),
        "judged by the source's answer, not the cached record"
    );
    assert_eq!(spec.source.fetches(), 2);
}

#[tokio::test]
async fn epochs_only_go_forward_when_the_source_answers_lower() {
    let spec = spec();
    let token = spec.token("alice", "tv", 60);
    spec.source.set_epoch("alice", spec.now() - 10);
    assert_eq!(
        spec.decide(&token).await,
        Decision::Reject(Reason::SignedOut)
    );
    spec.source.set_epoch("alice", 0);
    spec.gate.cache().coverage().reset();
    assert_eq!(
        spec.decide(&token).await,
        Decision::Reject(Reason::SignedOut)
    );
    assert_eq!(spec.source.fetches(), 2);
}
