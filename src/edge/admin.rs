//! The admin listener: `/metrics`, `/healthz`, `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::gate::Gate;
use crate::revocation::feed::FeedStatus;

/// What readiness depends on besides the keys.
#[derive(Default)]
pub struct Readiness {
    proxy_listening: AtomicBool,
}

impl Readiness {
    pub fn set_proxy_listening(&self) {
        self.proxy_listening.store(true, Ordering::Release);
    }

    pub fn proxy_listening(&self) -> bool {
        self.proxy_listening.load(Ordering::Acquire)
    }
}

/// The admin HTTP app.
pub struct AdminApp {
    gate: Arc<Gate>,
    readiness: Arc<Readiness>,
    feed: Arc<FeedStatus>,
}

impl AdminApp {
    pub fn new(gate: Arc<Gate>, readiness: Arc<Readiness>, feed: Arc<FeedStatus>) -> Self {
        AdminApp {
            gate,
            readiness,
            feed,
        }
    }

    /// `(ready, body)` of `/readyz`.
    pub async fn readiness_report(&self) -> (bool, serde_json::Value) {
        let keys = self.gate.keys().current().len();
        let listening = self.readiness.proxy_listening();
        let reason = if !listening {
            Some("proxy listener not accepting yet")
        } else if keys == 0 {
            Some("no verification keys loaded yet (JWKS not fetched)")
        } else if self.gate.replica().is_some_and(|r| !r.loaded()) {
            Some("the replica's initial values are not all loaded yet")
        } else {
            None
        };
        let mut body = serde_json::json!({
            "ready": reason.is_none(),
            "keys": keys,
            "proxy_listening": listening,
            "cached_accounts": self.gate.cache().entry_count().await,
            "feed": self.feed.state().as_str(),
        });
        if let Some(reason) = reason {
            body["reason"] = reason.into();
        }
        if let (Some(replica), Some(body)) = (self.gate.replica(), body.as_object_mut()) {
            if let serde_json::Value::Object(fields) = replica.readiness() {
                body.extend(fields);
            }
        }
        (reason.is_none(), body)
    }
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => {
                let metrics = self.gate.metrics();
                metrics
                    .cache_entries
                    .set(self.gate.cache().entry_count().await as i64);
                metrics
                    .verified_cache_entries
                    .set(self.gate.verified_cache_len() as i64);
                metrics
                    .feed_last_activity_age
                    .set(self.feed.last_activity_age().as_secs_f64());
                if let Some(replica) = self.gate.replica() {
                    replica.refresh_gauges();
                }
                respond(200, "text/plain; version=0.0.4", metrics.encode())
            }
            "/healthz" => respond(200, "application/json", br#"{"status":"ok"}"#.to_vec()),
            "/readyz" => {
                let (ready, body) = self.readiness_report().await;
                respond(
                    if ready { 200 } else { 503 },
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            _ => respond(
                404,
                "application/json",
                br#"{"error":"not_found"}"#.to_vec(),
            ),
        }
    }
}
