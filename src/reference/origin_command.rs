//! `epochgate reference-origin`: the reference auth origin alone, optionally publishing
//! every sign-out into the NATS bucket of a fleet replica.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::DEFAULT_BUCKET;
use crate::reference::auth_origin::AuthOrigin;

#[derive(clap::Args, Debug, Clone)]
pub struct ReferenceOriginArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// The `iss` of the tokens it signs.
    #[arg(long, default_value = "https://auth.example.com")]
    pub issuer: String,
    /// The `aud` of the tokens it signs.
    #[arg(long, default_value = "streaming-edge")]
    pub audience: String,
    /// NATS server URL(s), comma-separated: every sign-out is also put into the bucket
    /// (created if missing), in addition to the SSE feed.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The bucket's name.
    #[arg(long, default_value = DEFAULT_BUCKET)]
    pub bucket: String,
    /// `max_age` of a bucket created here: at least the edges' `token.max_lifetime`.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub bucket_max_age: Duration,
    /// How often the heartbeat (key `epochgate.heartbeat`) is put into the bucket, for edges
    /// with `replica.require_heartbeat`; 0 for none.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub nats_heartbeat: Duration,
}

/// Runs the origin until the process is stopped.
pub fn run(args: ReferenceOriginArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let origin = AuthOrigin::new(&args.issuer, &args.audience)?;
        if let Some(url) = &args.nats {
            origin
                .publish_to_nats(url, &args.bucket, args.bucket_max_age, args.nats_heartbeat)
                .await
                .map_err(|e| format!("--nats: {e}"))?;
        }
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        println!("reference auth origin listening on http://{}", args.listen);
        crate::reference::serve(listener, origin.router(), std::future::pending())
            .await
            .map_err(|e| e.to_string())
    })
}
