//! The proxy listener over TLS: every decision over HTTP/2 and HTTP/1.1 (curl and a raw
//! HTTP/2 client), many streams on one connection, plain and TLS listeners side by side,
//! cleartext HTTP/2, certificate reload on SIGHUP, and the TLS config errors.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::tls::{https_url, CertFiles, TestCa};
use common::*;
use serde_json::Value;

/// One curl request; returns (status, HTTP version, body).
fn curl(
    ca: &std::path::Path,
    version_flag: &str,
    url: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", version_flag, "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code} %{http_version}"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = command.arg(url).output().expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (code, version) = last.split_once(' ').unwrap();
    (code.parse().unwrap(), version.to_string(), body.to_string())
}

fn error_code(body: &str) -> String {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    json["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn curl_over_tls_gets_every_decision_with_http2_and_http1_1() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write_pem(dir.path());
    let edge = EdgeConfig::new(&origin, &upstream)
        .tls(&ca.issue("edge", dir.path()))
        .start()
        .await;

    origin.set_record("alice", 0, &[]);
    origin.set_record("bob", now(), &[]);
    origin.set_record("carol", 0, &[("tv", now())]);
    let valid = origin.token("alice", "tv");
    let signed_out = origin.token("bob", "tv");
    let device_signed_out = origin.token("carol", "tv");
    let url = https_url(&edge, "/live/seg1.ts");

    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let ca_file = ca_file.clone();
        let url = url.clone();
        let cases = [
            (Some(valid.clone()), 200, ""),
            (None, 401, "missing_token"),
            (Some("not.a.token".to_string()), 401, "invalid_token"),
            (Some(signed_out.clone()), 401, "signed_out"),
            (Some(device_signed_out.clone()), 401, "device_signed_out"),
        ];
        tokio::task::spawn_blocking(move || {
            for (token, status, error) in cases {
                let (got, got_version, body) = curl(&ca_file, flag, &url, token.as_deref());
                assert_eq!(got_version, version, "{flag}: protocol");
                assert_eq!(got, status, "{flag} expecting {status} {error}: {body}");
                if status == 200 {
                    let echoed: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(echoed["headers"]["x-epochgate-account"][0], "alice");
                } else {
                    assert_eq!(error_code(&body), error, "{flag}");
                }
            }
        })
        .await
        .unwrap();
    }
}

/// Sends a GET on an HTTP/2 connection; returns the status and the whole body, or the
/// stream's error (a reset included).
async fn h2_get(
    mut sender: h2::client::SendRequest<Bytes>,
    authority: &str,
    scheme: &str,
    token: Option<String>,
) -> Result<(u16, String), h2::Error> {
    let mut request = http::Request::get(format!("{scheme}://{authority}/live/seg1.ts"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    sender = sender.ready().await?;
    let (response, _) = sender.send_request(request.body(()).unwrap(), true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

#[tokio::test]
async fn http2_streams_on_one_connection_each_get_their_own_answer() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let edge = EdgeConfig::new(&origin, &upstream)
        .tls(&ca.issue("edge", dir.path()))
        .start()
        .await;
    origin.set_record("alice", 0, &[]);
    origin.set_record("bob", now(), &[]);
    let valid = origin.token("alice", "tv");
    let signed_out = origin.token("bob", "tv");

    let tls = ca.connect(edge.proxy, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(connection);
    let authority = edge.proxy.to_string();

    let before = upstream.requests.load(std::sync::atomic::Ordering::SeqCst);
    // Three kinds, interleaved, all in flight together on the one connection.
    let streams: Vec<_> = (0..60)
        .map(|i| {
            let (token, expected) = match i % 3 {
                0 => (Some(valid.clone()), (200, "")),
                1 => (Some(signed_out.clone()), (401, "signed_out")),
                _ => (None, (401, "missing_token")),
            };
            let sender = sender.clone();
            let authority = authority.clone();
            tokio::spawn(
                async move { (expected, h2_get(sender, &authority, "https", token).await) },
            )
        })
        .collect();
    for (i, stream) in streams.into_iter().enumerate() {
        let ((status, error), answer) = stream.await.unwrap();
        let (got, body) = answer.unwrap_or_else(|e| panic!("stream {i} failed: {e}"));
        assert_eq!(got, status, "stream {i}: {body}");
        if status == 200 {
            let echoed: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                echoed["headers"]["x-epochgate-account"][0], "alice",
                "stream {i}"
            );
        } else {
            assert_eq!(error_code(&body), error, "stream {i}");
        }
    }
    assert_eq!(
        upstream.requests.load(std::sync::atomic::Ordering::SeqCst) - before,
        20,
        "exactly the allowed streams reach the upstream"
    );
    // The connection outlived every rejection.
    let (status, _) = h2_get(sender, &authority, "https", Some(valid))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(!driver.is_finished(), "the connection was closed");
}

#[tokio::test]
async fn plain_and_tls_listeners_serve_side_by_side() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cert = ca.issue("edge", dir.path());
    let plain_port = free_port();
    let config = EdgeConfig::new(&origin, &upstream).tls(&cert);
    let listen = format!(
        "[\"127.0.0.1:{}\", {{address: \"127.0.0.1:{plain_port}\", tls: false}}]",
        config.proxy_port()
    );
    let edge = config.set("proxy.listen", &listen).start().await;
    origin.set_record("alice", 0, &[]);
    let token = origin.token("alice", "tv");

    let tls = ca.connect(edge.proxy, &[b"h2"]).await;
    let (sender, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let (status, _) = h2_get(
        sender,
        &edge.proxy.to_string(),
        "https",
        Some(token.clone()),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "over TLS");
    let plain = edge
        .client
        .get(format!("http://127.0.0.1:{plain_port}/live/seg1.ts"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200, "over plain HTTP");
}

#[tokio::test]
async fn h2c_serves_cleartext_http2_when_enabled() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    origin.set_record("alice", 0, &[]);
    origin.set_record("bob", now(), &[]);
    let edge = EdgeConfig::new(&origin, &upstream).h2c(true).start().await;

    let tcp = tokio::net::TcpStream::connect(edge.proxy).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let authority = edge.proxy.to_string();
    let (status, _) = h2_get(
        sender.clone(),
        &authority,
        "http",
        Some(origin.token("alice", "tv")),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, body) = h2_get(sender, &authority, "http", Some(origin.token("bob", "tv")))
        .await
        .unwrap();
    assert_eq!((status, error_code(&body).as_str()), (401, "signed_out"));
    // HTTP/1.1 keeps working on the same listener.
    assert_eq!(
        edge.get_with_token("/", &origin.token("alice", "tv"))
            .await
            .status(),
        200
    );
}

/// The leaf certificate a fresh TLS connection to the edge is shown.
async fn presented(ca: &TestCa, edge: &Edge) -> Vec<u8> {
    let tls = ca.connect(edge.proxy, &[b"http/1.1"]).await;
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    certs[0].as_ref().to_vec()
}

fn replace_files(target: &CertFiles, with: &CertFiles) {
    std::fs::copy(&with.cert_file, &target.cert_file).unwrap();
    std::fs::copy(&with.key_file, &target.key_file).unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_carry_on() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.issue("first", dir.path());
    let second = ca.issue("second", dir.path());
    let live = ca.issue("live", dir.path());
    replace_files(&live, &first);
    let edge = EdgeConfig::new(&origin, &upstream).tls(&live).start().await;
    origin.set_record("alice", 0, &[]);
    let token = origin.token("alice", "tv");
    assert_eq!(presented(&ca, &edge).await, first.der.as_ref());

    let tls = ca.connect(edge.proxy, &[b"h2"]).await;
    let (sender, connection) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(connection);
    let authority = edge.proxy.to_string();
    let (status, _) = h2_get(sender.clone(), &authority, "https", Some(token.clone()))
        .await
        .unwrap();
    assert_eq!(status, 200);

    replace_files(&live, &second);
    edge.signal("HUP");
    eventually(Duration::from_secs(5), "the new certificate", || async {
        (presented(&ca, &edge).await == second.der.as_ref()).then_some(())
    })
    .await;
    let (status, _) = h2_get(sender, &authority, "https", Some(token))
        .await
        .unwrap();
    assert_eq!(
        status, 200,
        "a connection opened before the reload still serves"
    );
    assert!(!driver.is_finished());
    assert!(edge.pid_alive());
    assert!(
        edge.log().contains("TLS certificate reloaded"),
        "{}",
        edge.log()
    );
}

#[tokio::test]
async fn sighup_with_a_broken_key_keeps_the_certificate_in_use() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.issue("first", dir.path());
    let other = ca.issue("other", dir.path());
    let live = ca.issue("live", dir.path());
    replace_files(&live, &first);
    let edge = EdgeConfig::new(&origin, &upstream).tls(&live).start().await;

    // A new certificate with the old key: they do not match.
    std::fs::copy(&other.cert_file, &live.cert_file).unwrap();
    edge.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "the reload to be refused",
        || async {
            edge.log()
                .contains("TLS certificate not reloaded")
                .then_some(())
        },
    )
    .await;
    let log = edge.log();
    assert!(log.contains("proxy.tls.key_file"), "{log}");
    assert!(edge.pid_alive());
    assert_eq!(presented(&ca, &edge).await, first.der.as_ref());
}

#[test]
fn a_missing_certificate_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCa::new().issue("edge", dir.path());
    let (code, out) = EdgeConfig::offline()
        .tls_files(&dir.path().join("nowhere.pem"), &cert.key_file)
        .check();
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("`proxy.tls.cert_file`") && out.contains("nowhere.pem"),
        "{out}"
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let one = ca.issue("one", dir.path());
    let two = ca.issue("two", dir.path());
    let (code, out) = EdgeConfig::offline()
        .tls_files(&one.cert_file, &two.key_file)
        .check();
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("`proxy.tls.key_file`") && out.contains("does not match"),
        "{out}"
    );
}

#[test]
fn a_key_file_without_a_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCa::new().issue("edge", dir.path());
    let (code, out) = EdgeConfig::offline()
        .tls_files(&cert.cert_file, &cert.cert_file)
        .check();
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("`proxy.tls.key_file`") && out.contains("no PEM private key"),
        "{out}"
    );
}

#[test]
fn an_expired_certificate_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCa::new().issue_expired("edge", dir.path());
    let (code, out) = EdgeConfig::offline().tls(&cert).check();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("WARN") && out.contains("expired"), "{out}");
}

#[test]
fn tls_settings_without_a_tls_listener_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCa::new().issue("edge", dir.path());
    // Every listener plain, certificate given.
    let (code, out) = EdgeConfig::offline()
        .tls(&cert)
        .set("proxy.listen", "[{address: \"127.0.0.1:1\", tls: false}]")
        .check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("`proxy.tls`"), "{out}");
    // HTTP/2 through ALPN asked for, no TLS.
    let (code, out) = EdgeConfig::offline().set("proxy.http2", "true").check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("`proxy.http2`"), "{out}");
    // A TLS listener without a certificate.
    let (code, out) = EdgeConfig::offline()
        .set("proxy.listen", "[{address: \"127.0.0.1:1\", tls: true}]")
        .check();
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("`proxy.listen[0].tls`"), "{out}");
}
