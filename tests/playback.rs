//! A real player: ffmpeg reads an HLS stream through the edge (plain HTTP and HTTPS) with the
//! token in the query string, the account signs out mid-stream, and playback stops at the
//! next segment.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::*;

/// How long after the sign-out ffmpeg must have stopped. ffmpeg's HLS reader keeps a few
/// 1 s segments ahead of playback (seen here: up to 4 s of media at the sign-out), so the bound
/// is that buffer, plus the 401'd segment request, plus slack for a loaded 2-core machine.
const STOP_BOUND: Duration = Duration::from_secs(8);

fn ffmpeg() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("ffmpeg"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        // CI installs ffmpeg (./dev.sh test); there a missing ffmpeg is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "ffmpeg is required in CI: apt-get install -y ffmpeg"
        );
        eprintln!("SKIPPED: ffmpeg not found; install it with `apt-get install -y ffmpeg` (./dev.sh test does)");
    }
    found
}

/// Real MPEG-TS segments of 1 s, and a playlist whose segment URLs carry the token, as a
/// signed-URL playlist would.
fn make_hls(ffmpeg: &Path, dir: &Path, token: &str) {
    let status = Command::new(ffmpeg)
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=96x54:rate=10",
        ])
        .args([
            "-t",
            "30",
            "-c:v",
            "mpeg2video",
            "-g",
            "10",
            "-f",
            "hls",
            "-hls_time",
            "1",
        ])
        .args(["-hls_list_size", "0", "-hls_segment_filename"])
        .arg(dir.join("seg%d.ts"))
        .arg(dir.join("index.m3u8"))
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg could not make the test stream");
    let playlist = std::fs::read_to_string(dir.join("index.m3u8")).unwrap();
    let signed: String = playlist
        .lines()
        .map(|line| {
            if line.ends_with(".ts") {
                format!("{line}?token={token}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(dir.join("index.m3u8"), signed).unwrap();
}

struct Media {
    dir: PathBuf,
    segments_served: AtomicU64,
}

async fn media_file(State(media): State<Arc<Media>>, UrlPath(name): UrlPath<String>) -> Response {
    if name.contains('/') || name.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Ok(bytes) = tokio::fs::read(media.dir.join(&name)).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let content_type = if name.ends_with(".m3u8") {
        "application/vnd.apple.mpegurl"
    } else {
        media.segments_served.fetch_add(1, Ordering::SeqCst);
        "video/mp2t"
    };
    ([("content-type", content_type)], bytes).into_response()
}

#[tokio::test]
async fn playback_stops_at_the_next_segment_after_sign_out() {
    playback_stops_after_sign_out(Listener::Plain).await;
}

#[tokio::test]
async fn playback_over_https_stops_at_the_next_segment_after_sign_out() {
    playback_stops_after_sign_out(Listener::Tls).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Plain,
    Tls,
}

async fn playback_stops_after_sign_out(edge_listener: Listener) {
    let Some(ffmpeg) = ffmpeg() else { return };
    let origin = TestOrigin::start().await;
    origin.enable_feed();
    let token = origin.token("alice", "living-room-tv");
    let media_dir = tempfile::tempdir().unwrap();
    make_hls(&ffmpeg, media_dir.path(), &token);

    let media = Arc::new(Media {
        dir: media_dir.path().to_path_buf(),
        segments_served: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let router = Router::new()
        .route("/live/{name}", get(media_file))
        .with_state(media.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let ca = tls::TestCa::new();
    let cert = ca.issue("edge", media_dir.path());
    let edge = match edge_listener {
        Listener::Plain => EdgeConfig::to(&origin.url(), upstream).start().await,
        Listener::Tls => {
            EdgeConfig::to(&origin.url(), upstream)
                .tls(&cert)
                .start()
                .await
        }
    };
    edge.wait_feed("connected").await;
    let playlist = format!("/live/index.m3u8?token={token}");
    let url = match edge_listener {
        Listener::Plain => edge.url(&playlist),
        // ffmpeg does not verify server certificates unless told to (-tls_verify 1).
        Listener::Tls => tls::https_url(&edge, &playlist),
    };

    // -re: read at the native rate, so segments are fetched one by one as playback goes on.
    let mut player = Command::new(&ffmpeg)
        .args(["-hide_banner", "-nostdin", "-re", "-i"])
        .arg(url)
        .args(["-c", "copy", "-f", "null", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ffmpeg");
    eventually(
        Duration::from_secs(20),
        "ffmpeg to play three segments",
        || async { (media.segments_served.load(Ordering::SeqCst) >= 3).then_some(()) },
    )
    .await;
    assert!(
        player.try_wait().unwrap().is_none(),
        "ffmpeg stopped before the sign-out"
    );

    origin.set_record("alice", now(), &[]);
    origin.feed_revocation(1, "alice", now(), &[]);
    let signed_out_at = Instant::now();
    let served_at_sign_out = media.segments_served.load(Ordering::SeqCst);

    let status = loop {
        if let Some(status) = player.try_wait().unwrap() {
            break status;
        }
        if signed_out_at.elapsed() > STOP_BOUND {
            let _ = player.kill();
            panic!("ffmpeg still playing {STOP_BOUND:?} after the sign-out");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stopped_after = signed_out_at.elapsed();
    let mut stderr = String::new();
    use std::io::Read;
    player
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("401"),
        "ffmpeg did not report HTTP 401:\n{stderr}"
    );
    let served_after = media.segments_served.load(Ordering::SeqCst) - served_at_sign_out;
    assert!(
        served_after <= 1,
        "{served_after} segments reached the player after the sign-out"
    );
    // Only the error text: ffmpeg's lines also carry the URL, token included.
    let reported: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once("error:").map(|(_, e)| e.trim()))
        .filter(|e| e.contains("401"))
        .take(1)
        .collect();
    eprintln!("ffmpeg said: {reported:?}");
    eprintln!(
        "ffmpeg stopped {stopped_after:?} after the sign-out ({status}); segments served before: {served_at_sign_out}, after: {served_after}"
    );
}
