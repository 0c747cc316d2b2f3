//! The two origins a load test of the edge needs, in one process: the reference auth origin
//! and an upstream that answers `200 ok` to everything. Writes one device token per account
//! (`account-0` .. `account-{N-1}`, device `tv`) to a file, one per line, prints `ready` and
//! serves until killed. Used by `bench/soak.sh`.
//!
//! ```text
//! cargo run --release --example bench_origins -- \
//!     --auth-port 7000 --upstream-port 8000 --tokens /tmp/tokens.txt --count 10000
//! ```

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Parser;
use epochgate::reference::auth_origin::AuthOrigin;
use epochgate::reference::serve;
use epochgate::reference::signing::SigningKey;

#[derive(Parser)]
struct Args {
    /// Port of the reference auth origin (127.0.0.1).
    #[arg(long)]
    auth_port: u16,
    /// Port of the upstream (127.0.0.1).
    #[arg(long)]
    upstream_port: u16,
    /// File to write the tokens to, one per line.
    #[arg(long)]
    tokens: PathBuf,
    /// Accounts (one token each).
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    #[arg(long, default_value = "https://auth.bench")]
    issuer: String,
    #[arg(long, default_value = "streaming-edge")]
    audience: String,
    /// Sign with this RSA private key (PEM) and RS256 instead of a fresh ES256 key.
    #[arg(long)]
    rsa_key: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let origin = match &args.rsa_key {
            Some(path) => AuthOrigin::with_key(
                &args.issuer,
                &args.audience,
                SigningKey::from_rsa_pem("bench-rs256", &std::fs::read(path)?)?,
            ),
            None => AuthOrigin::new(&args.issuer, &args.audience)?,
        };
        let auth = tokio::net::TcpListener::bind(("127.0.0.1", args.auth_port)).await?;
        let upstream = tokio::net::TcpListener::bind(("127.0.0.1", args.upstream_port)).await?;

        let mut out = BufWriter::new(std::fs::File::create(&args.tokens)?);
        for i in 0..args.count {
            writeln!(
                out,
                "{}",
                origin.issue_token(&format!("account-{i}"), "tv")?
            )?;
        }
        out.flush()?;

        let ok = axum::Router::new().fallback(|| async { "ok" });
        let never = std::future::pending::<()>;
        println!("ready");
        std::io::stdout().flush()?;
        let (a, u) = tokio::join!(
            serve(auth, origin.router(), never()),
            serve(upstream, ok, never()),
        );
        a?;
        u?;
        Ok(())
    })
}
