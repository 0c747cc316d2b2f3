//! Shutdown and restart: SIGTERM drains in-flight requests; SIGQUIT with a new process
//! started with `-u` hands the listeners over without a failed request; idle keep-alive
//! connections are answered, not reset, while shutdown drains.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use common::*;

/// An upstream whose `/slow` answers after a second.
async fn slow_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                "done"
            }),
        )
        .fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// An origin and a ready edge with `grace` seconds of grace period, in front of [`slow_upstream`].
async fn ready_edge_with_slow_upstream(grace: u64) -> (TestOrigin, Edge, u16) {
    let origin = TestOrigin::start().await;
    let config = EdgeConfig::to(&origin.url(), slow_upstream().await).grace_period_seconds(grace);
    let proxy = config.proxy_port();
    let edge = config.start().await;
    (origin, edge, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let (origin, mut edge, proxy) = ready_edge_with_slow_upstream(3).await;

    let token = origin.token("alice", "tv");
    let in_flight = {
        let (client, url, token) = (edge.client.clone(), edge.url("/slow"), token.clone());
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    edge.signal("TERM");
    let status = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was cut");
    assert_eq!(status, 200);
    // The listener closed at SIGTERM: a new connection is refused.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", proxy)).is_err(),
        "still accepting after SIGTERM"
    );
    let exited = tokio::task::block_in_place(|| edge.wait_exit(Duration::from_secs(15)));
    assert!(
        exited.is_some(),
        "the edge did not exit after its grace period"
    );
}

/// Sends one keep-alive request on `conn` and returns the response head, lower-cased.
async fn request_on(conn: &mut tokio::net::TcpStream, token: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET / HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token}\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // The upstream answers "ok": the head, then a two-byte body.
    while !response.ends_with(b"\r\n\r\nok") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        response.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&response).to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_is_answered_with_close_after_shutdown_starts() {
    let (origin, mut edge, proxy) = ready_edge_with_slow_upstream(3).await;
    let token = origin.token("alice", "tv");
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", proxy))
        .await
        .unwrap();
    let first = request_on(&mut conn, &token).await.unwrap();
    assert!(first.starts_with("http/1.1 200"), "{first}");

    // The connection is idle in the edge's keep-alive wait when shutdown starts; a request
    // racing the shutdown must be answered, not reset.
    edge.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = request_on(&mut conn, &token)
        .await
        .expect("the idle keep-alive connection was closed at shutdown");
    assert!(second.starts_with("http/1.1 200"), "{second}");
    assert!(
        second.contains("connection: close"),
        "the answer does not close the connection: {second}"
    );
    let exited = tokio::task::block_in_place(|| edge.wait_exit(Duration::from_secs(15)));
    assert!(
        exited.is_some(),
        "the edge did not exit after its grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_over_the_listeners_without_a_failed_request() {
    let origin = TestOrigin::start().await;
    let upstream = Upstream::start().await;
    let mut old = EdgeConfig::new(&origin, &upstream)
        .grace_period_seconds(1)
        .start()
        .await;
    let token = Arc::new(origin.token("alice", "tv"));

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, token, stop, ok, failed, started) = (
            old.client.clone(),
            old.url("/"),
            token.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            started,
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).bearer_auth(token.as_str()).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("failed request: HTTP {}", r.status());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("failed request at {:?}: {e:?}", started.elapsed());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The new process: same config, -u. It loads its keys, then waits for the listeners.
    let log = std::fs::File::create(old.dir.path().join("new.log")).unwrap();
    let mut new = Command::new(env!("CARGO_BIN_EXE_epochgate"))
        .arg("-u")
        .arg("-c")
        .arg(old.config_path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sock = old.dir.path().join("upgrade.sock");
    eventually(
        Duration::from_secs(15),
        "the new process to wait on the upgrade socket",
        || {
            let sock = sock.clone();
            async move { sock.exists().then_some(()) }
        },
    )
    .await;
    let before_upgrade = ok.load(Ordering::Relaxed);
    old.signal("QUIT");
    let handed_over = Instant::now();
    eprintln!("SIGQUIT at {:?}", started.elapsed());
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(20)));
    assert!(exited.is_some(), "the old process did not exit");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let new_log = std::fs::read_to_string(old.dir.path().join("new.log")).unwrap_or_default();
    let alive = new.try_wait().unwrap().is_none();
    let after = old
        .client
        .get(old.url("/"))
        .bearer_auth(token.as_str())
        .send()
        .await
        .map(|r| r.status().as_u16());
    let _ = new.kill();
    let _ = new.wait();
    eprintln!("upgrade: {ok} requests ok ({} after SIGQUIT), {failed} failed; old exited {:?} after SIGQUIT", ok - before_upgrade, handed_over.elapsed());
    assert_eq!(
        failed, 0,
        "requests failed during the upgrade; new process log:\n{new_log}"
    );
    assert!(ok > before_upgrade, "no request was served after SIGQUIT");
    assert!(alive, "the new process died:\n{new_log}");
    assert_eq!(
        after.ok(),
        Some(200),
        "the new process does not serve:\n{new_log}"
    );
}
