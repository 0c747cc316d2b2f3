//! Start-up, configuration errors, the admin endpoints and the metrics exposition.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn test_flag_accepts_a_valid_config() {
    let (code, out) = EdgeConfig::offline().check();
    assert_eq!(code, 0, "{out}");
}

#[test]
fn reference_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/epochgate.yaml");
    let (code, out) = run_cli(&["-t", "-c", path]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn unknown_key_is_an_error_naming_the_key() {
    let (code, out) = EdgeConfig::offline().set("token.leeeway", "5s").check();
    assert_ne!(code, 0);
    assert!(out.contains("token") && out.contains("leeeway"), "{out}");
}

#[test]
fn unknown_server_key_is_an_error_naming_the_key() {
    let (code, out) = EdgeConfig::offline().set("server.graceperiod", "3").check();
    assert_ne!(code, 0);
    assert!(out.contains("server.graceperiod"), "{out}");
}

#[test]
fn bad_duration_is_an_error_naming_the_key() {
    let config = EdgeConfig::offline().origin_timeout("soon");
    let (code, out) = run_cli(&["-c", config.write().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        out.contains("auth_origin.timeout") && out.contains("soon"),
        "{out}"
    );
}

#[test]
fn empty_peer_list_is_an_error_naming_the_key() {
    let config = EdgeConfig::offline().peers(&[]);
    let (code, out) = run_cli(&["-c", config.write().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("proxy.upstream.peers"), "{out}");
}

#[test]
fn unknown_algorithm_is_an_error_naming_the_key() {
    let config = EdgeConfig::offline().algorithms(&["ES256", "ROT13"]);
    let (code, out) = run_cli(&["-c", config.write().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        out.contains("token.algorithms[1]") && out.contains("ROT13"),
        "{out}"
    );
}

#[test]
fn busy_listen_address_exits_non_zero_naming_it() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = EdgeConfig::offline().set("proxy.listen", &format!("[\"127.0.0.1:{port}\"]"));
    let started = Instant::now();
    let (code, out) = run_cli(&["-c", config.write().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn healthz_answers_and_unknown_admin_path_is_404() {
    let (_origin, _upstream, edge) = started().await;

    let health = edge
        .client
        .get(edge.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let other = edge
        .client
        .get(edge.admin_url("/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test]
async fn edge_without_jwks_is_not_ready_and_answers_503_until_keys_arrive() {
    let origin = TestOrigin::start().await;
    origin.set_jwks_down(true);
    let upstream = Upstream::start().await;
    let edge = EdgeConfig::new(&origin, &upstream).spawn();

    let report: serde_json::Value =
        eventually(Duration::from_secs(10), "/readyz to answer", || {
            let edge = &edge;
            async move {
                let (status, body) = edge.try_readiness().await?;
                assert_eq!(status, 503);
                // Wait until the proxy listens, so the reason left is the keys.
                (body["proxy_listening"] == true).then_some(body)
            }
        })
        .await;
    assert_eq!(report["ready"], false);
    assert_eq!(report["keys"], 0);
    assert!(
        report["reason"].as_str().unwrap().contains("keys"),
        "{report}"
    );

    let response = edge.get_with_token("/", &origin.token("alice", "tv")).await;
    assert_eq!(rejection(response, 503).await["error"], "not_ready");

    origin.set_jwks_down(false);
    edge.wait_ready().await;
    assert_eq!(
        edge.get_with_token("/", &origin.token("alice", "tv"))
            .await
            .status(),
        200
    );
    assert_eq!(edge.metric("epochgate_jwks_keys").await, 1.0);
}

#[tokio::test]
async fn metrics_exposition_passes_promtool() {
    let origin = TestOrigin::start().await;
    origin.set_record("alice", now() - 10, &[]);
    let upstream = Upstream::start().await;
    let edge = Edge::start(&origin, &upstream).await;
    // Traffic of every kind, so every family has samples.
    edge.get("/").await;
    edge.get_with_token("/", "not.a.token").await;
    edge.get_with_token("/", &origin.token("bob", "tv")).await;
    edge.get_with_token("/", &origin.token_at("alice", "tv", now() - 100))
        .await;
    let text = edge.metrics().await;
    for name in [
        "epochgate_requests_total",
        "epochgate_epoch_cache_lookups_total",
        "epochgate_origin_requests_total",
        "epochgate_origin_request_duration_seconds_bucket",
        "epochgate_epoch_cache_entries",
        "epochgate_jwks_keys",
        "epochgate_origin_lookups_in_flight",
        "epochgate_origin_lookup_queue_wait_seconds_bucket",
        "epochgate_origin_lookup_queue_timeouts_total",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }

    let promtool = which("promtool").expect(
        "promtool is needed for this test: apt-get install -y prometheus (./dev.sh test installs it)",
    );
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// `-t` on the test config with these `proxy.listen` and `admin.listen`.
fn check_listeners(proxy: &[&str], admin: &str) -> (i32, String) {
    let listen = proxy
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    EdgeConfig::offline()
        .set("proxy.listen", &format!("[{listen}]"))
        .set("admin.listen", &format!("\"{admin}\""))
        .check()
}

#[test]
fn proxy_listen_twice_is_an_error_naming_both_keys() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (code, out) = check_listeners(&[&addr, &addr], &format!("127.0.0.1:{}", free_port()));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("proxy.listen[0]") && out.contains("proxy.listen[1]"),
        "{out}"
    );
}

#[test]
fn proxy_and_admin_on_one_address_is_an_error_naming_both_keys() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (code, out) = check_listeners(&[&addr], &addr);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("proxy.listen[0]") && out.contains("admin.listen"),
        "{out}"
    );
}

#[test]
fn wildcard_and_specific_address_on_one_port_is_an_error() {
    let port = free_port();
    for (proxy, admin) in [
        (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}")),
        (format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")),
        (format!("[::]:{port}"), format!("127.0.0.1:{port}")),
        (format!("[::]:{port}"), format!("[::1]:{port}")),
        (format!("[::1]:{port}"), format!("[::]:{port}")),
    ] {
        let (code, out) = check_listeners(&[&proxy], &admin);
        assert_ne!(code, 0, "{proxy} and {admin}: {out}");
        assert!(
            out.contains("proxy.listen[0]") && out.contains("admin.listen"),
            "{out}"
        );
        assert!(out.contains("wildcard"), "{out}");
    }
    // Different ports, or two specific addresses on one port, are fine.
    let other = free_port();
    for (proxy, admin) in [
        (format!("0.0.0.0:{port}"), format!("127.0.0.1:{other}")),
        (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")),
    ] {
        let (code, out) = check_listeners(&[&proxy], &admin);
        assert_eq!(code, 0, "{proxy} and {admin}: {out}");
    }
}

#[test]
fn edge_with_proxy_and_admin_on_one_address_exits_before_binding() {
    let config = EdgeConfig::offline();
    let same = format!("127.0.0.1:{}", config.proxy_port());
    let config = config.set("admin.listen", &format!("\"{same}\""));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_epochgate"))
        .arg("-c")
        .arg(config.write())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = status.expect("the edge started with both listeners on one address");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("admin.listen") && err.contains("proxy.listen[0]"),
        "{err}"
    );
}

#[test]
fn header_prefix_that_is_empty_or_not_a_header_name_prefix_is_an_error() {
    for prefix in ["", "x epochgate-", "x-épochgate-", "x-gate:"] {
        let (code, out) = EdgeConfig::offline().header_prefix(prefix).check();
        assert_ne!(code, 0, "{prefix:?}: {out}");
        assert!(out.contains("forward.header_prefix"), "{prefix:?}: {out}");
    }
    // Any case; the identity headers may lie under it (the defaults do).
    let (code, out) = EdgeConfig::offline().header_prefix("X-EpochGate-").check();
    assert_eq!(code, 0, "{out}");
}
