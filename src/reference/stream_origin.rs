//! A tiny demo streaming origin: an HLS playlist, its segments, and `/whoami`, which shows
//! what the edge forwarded (identity headers, and whether any token got through).

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

/// Segments in the demo playlist, and their length in seconds.
pub const SEGMENTS: u32 = 30;
pub const SEGMENT_SECONDS: u32 = 2;
const TS_PACKET: usize = 188;

pub fn router() -> Router {
    Router::new()
        .route("/live/index.m3u8", get(playlist))
        .route("/live/{segment}", get(segment))
        .route("/whoami", get(whoami))
}

async fn playlist() -> Response {
    let mut body = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{SEGMENT_SECONDS}\n#EXT-X-MEDIA-SEQUENCE:0\n"
    );
    for n in 0..SEGMENTS {
        body.push_str(&format!("#EXTINF:{SEGMENT_SECONDS}.0,\nseg{n}.ts\n"));
    }
    body.push_str("#EXT-X-ENDLIST\n");
    ([("content-type", "application/vnd.apple.mpegurl")], body).into_response()
}

/// A segment of MPEG-TS null packets: the right shape and size for a player to fetch, with
/// no media in it (the demo is about who may fetch, not about what is in it).
async fn segment(Path(name): Path<String>) -> Response {
    let known = name
        .strip_prefix("seg")
        .and_then(|rest| rest.strip_suffix(".ts"))
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n < SEGMENTS);
    if !known {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut body = Vec::with_capacity(TS_PACKET * 64);
    for _ in 0..64 {
        let mut packet = [0xffu8; TS_PACKET];
        packet[..4].copy_from_slice(&[0x47, 0x1f, 0xff, 0x10]);
        body.extend_from_slice(&packet);
    }
    ([("content-type", "video/mp2t")], body).into_response()
}

async fn whoami(headers: HeaderMap, uri: Uri) -> Json<serde_json::Value> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Json(serde_json::json!({
        "account": header("x-epochgate-account"),
        "device": header("x-epochgate-device"),
        "token_reached_origin": headers.contains_key("authorization")
            || uri.query().is_some_and(|q| q.contains("token="))
            || header("cookie").is_some_and(|c| c.contains("device_token=")),
    }))
}
