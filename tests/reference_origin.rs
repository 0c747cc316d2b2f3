//! The reference auth origin and the demo, end to end through the edge.

mod common;

use std::sync::Arc;

use common::*;
use epochgate::reference::auth_origin::AuthOrigin;

struct Reference {
    origin: Arc<AuthOrigin>,
    url: String,
    client: reqwest::Client,
}

impl Reference {
    async fn start() -> Reference {
        let origin = AuthOrigin::new(ISSUER, AUDIENCE).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(epochgate::reference::serve(
            listener,
            origin.router(),
            std::future::pending(),
        ));
        Reference {
            origin,
            url,
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let mut request = self.client.post(format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    async fn sign_in(&self, account: &str, device: &str) -> String {
        let body = self
            .post(
                "/v1/signin",
                Some(serde_json::json!({"account_id": account, "device_id": device})),
            )
            .await;
        body["token"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn sign_out_reaches_the_edge_by_the_reference_feed() {
    let reference = Reference::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::to(&reference.url, upstream.addr).start().await;
    edge.wait_feed("connected").await;

    let tv = reference.sign_in("alice", "tv").await;
    assert_eq!(edge.get_with_token("/", &tv).await.status(), 200);
    reference.post("/v1/accounts/alice/signout-all", None).await;
    edge.until_status(&tv, 401).await;
    assert_eq!(
        reference
            .origin
            .revocation_requests
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the first lookup; the sign-out came by the feed"
    );
}

#[tokio::test]
async fn sign_out_all_revokes_every_device_and_sign_in_again_works_at_once() {
    let reference = Reference::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::to(&reference.url, upstream.addr)
        .refresh_after("1s")
        .start()
        .await;

    let tv = reference.sign_in("alice", "tv").await;
    let phone = reference.sign_in("alice", "phone").await;
    assert_eq!(edge.get_with_token("/", &tv).await.status(), 200);

    reference.post("/v1/accounts/alice/signout-all", None).await;
    edge.until_status(&tv, 401).await;
    assert_eq!(edge.get_with_token("/", &phone).await.status(), 401);

    // Same second as the sign-out, very likely: the new token must still be valid.
    let again = reference.sign_in("alice", "tv").await;
    assert_eq!(edge.get_with_token("/", &again).await.status(), 200);
}

#[tokio::test]
async fn device_sign_out_keeps_the_other_devices() {
    let reference = Reference::start().await;
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::to(&reference.url, upstream.addr)
        .refresh_after("1s")
        .start()
        .await;

    let tv = reference.sign_in("alice", "tv").await;
    let phone = reference.sign_in("alice", "phone").await;
    assert_eq!(edge.get_with_token("/", &tv).await.status(), 200);
    reference
        .post("/v1/accounts/alice/devices/tv/signout", None)
        .await;
    edge.until_status(&tv, 401).await;
    let body = rejection(edge.get_with_token("/", &tv).await, 401).await;
    assert_eq!(body["error"], "device_signed_out");
    assert_eq!(edge.get_with_token("/", &phone).await.status(), 200);
    let tv_again = reference.sign_in("alice", "tv").await;
    assert_eq!(edge.get_with_token("/", &tv_again).await.status(), 200);
}

#[tokio::test]
async fn account_ids_are_percent_encoded_on_the_way_to_the_origin() {
    let reference = Reference::start().await;
    let upstream = Upstream::start().await;
    // Polling only: the sign-out must come back through the percent-encoded lookup path.
    let edge = EdgeConfig::to(&reference.url, upstream.addr)
        .feed(false)
        .refresh_after("1s")
        .start()
        .await;

    let odd = "user/42?x=1 #é";
    let token = reference.sign_in(odd, "tv").await;
    assert_eq!(edge.get_with_token("/", &token).await.status(), 200);
    reference
        .post(
            &format!(
                "/v1/accounts/{}/signout-all",
                "user%2F42%3Fx%3D1%20%23%C3%A9"
            ),
            None,
        )
        .await;
    edge.until_status(&token, 401).await;
    assert!(
        reference
            .origin
            .revocation_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
}

/// Runs `epochgate demo --exit` on free ports, with `extra` arguments: exit code, output.
fn run_demo(extra: &[&str]) -> (i32, String) {
    let ports: Vec<String> = (0..4).map(|_| free_port().to_string()).collect();
    let mut args = vec!["demo", "--exit"];
    for (flag, port) in [
        "--proxy-port",
        "--admin-port",
        "--auth-port",
        "--stream-port",
    ]
    .iter()
    .zip(&ports)
    {
        args.extend([*flag, port.as_str()]);
    }
    args.extend(extra);
    run_cli(&args)
}

#[test]
fn demo_walkthrough_runs_and_shows_the_rejection() {
    let (code, out) = run_demo(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#""error":"signed_out""#) && out.contains("HTTP 401"),
        "{out}"
    );
    assert!(out.contains(r#""token_reached_origin":false"#), "{out}");
    assert!(
        out.contains(r#"epochgate_requests_total{decision="signed_out",mode="enforce"} 1"#),
        "{out}"
    );
}

#[test]
fn demo_walkthrough_with_nats_rejects_through_the_bucket_without_lookups() {
    let nats = common::nats::NatsServer::start();
    let (code, out) = run_demo(&["--nats", &nats.url()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#""error":"signed_out""#) && out.contains("HTTP 401"),
        "{out}"
    );
    assert!(
        out.contains(r#"epochgate_replica_updates_total{outcome="applied"} 1"#),
        "{out}"
    );
    assert!(
        !out.contains("epochgate_epoch_cache_lookups_total"),
        "{out}"
    );
}

#[tokio::test]
async fn check_endpoint_answers_204_then_401_after_sign_out() {
    let reference = Reference::start().await;
    let token = reference.sign_in("alice", "tv").await;
    let check = |token: String| {
        let client = reference.client.clone();
        let url = format!("{}/v1/check", reference.url);
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(check(token.clone()).await, 204);
    assert_eq!(check("forged.token.here".into()).await, 401);
    reference.post("/v1/accounts/alice/signout-all", None).await;
    assert_eq!(check(token).await, 401);
}
