//! `epochgate demo`: the reference auth origin, the demo streaming origin and the edge on
//! loopback, and a walk through a sign-out with the curl commands that show it.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::server::RunArgs;

use crate::config::Settings;
use crate::reference::auth_origin::AuthOrigin;
use crate::reference::{serve, stream_origin};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Port of the edge (the proxy).
    #[arg(long, default_value_t = 8080)]
    pub proxy_port: u16,
    /// Port of the edge's admin listener (/metrics, /healthz, /readyz).
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// Port of the reference auth origin.
    #[arg(long, default_value_t = 7000)]
    pub auth_port: u16,
    /// Port of the demo streaming origin.
    #[arg(long, default_value_t = 8000)]
    pub stream_port: u16,
    /// Exit after the walkthrough instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
    /// A NATS server with JetStream: the auth origin puts every sign-out into the bucket
    /// `epochgate-revocations` there (creating it), and the edge runs a fleet replica of it
    /// instead of asking the auth origin.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
}

const ISSUER: &str = "https://auth.example.com";
const AUDIENCE: &str = "streaming-edge";

/// The demo's edge configuration (the same keys as `config/epochgate.yaml`).
pub fn demo_config(args: &DemoArgs) -> String {
    // With --nats every record comes from the bucket: no lookups, no feed.
    let (max_lifetime, replica) = match &args.nats {
        Some(url) => (
            "  max_lifetime: 30d   # required with replica:\n".to_string(),
            format!("replica:\n  nats: {{ servers: [{url:?}] }}\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"
server:
  threads: 2
  pid_file: /tmp/epochgate-demo.pid
  upgrade_sock: /tmp/epochgate-demo-upgrade.sock
proxy:
  listen: ["127.0.0.1:{proxy}"]
  upstream: {{ peers: ["127.0.0.1:{stream}"] }}
admin:
  listen: "127.0.0.1:{admin}"
auth_origin:
  url: "http://127.0.0.1:{auth}"
  timeout: 250ms
token:
  algorithms: [ES256]
  issuer: "{ISSUER}"
  audience: "{AUDIENCE}"
{max_lifetime}cache:
  refresh_after: 30s   # the revocation feed pushes sign-outs; polling is the fallback
  max_stale: 10m
{replica}"#,
        proxy = args.proxy_port,
        admin = args.admin_port,
        auth = args.auth_port,
        stream = args.stream_port,
    )
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let settings = Settings::from_yaml(&demo_config(&args)).map_err(|e| e.to_string())?;
    crate::edge::server::check_listeners_free(&settings).map_err(|e| e.to_string())?;
    let auth = AuthOrigin::new(ISSUER, AUDIENCE)?;
    start_origins(&args, auth)?;
    let edge = crate::edge::server::build(settings, pingora::server::configuration::Opt::default())
        .map_err(|e| e.to_string())?;
    let walk_args = args.clone();
    std::thread::spawn(move || {
        let ok = match walkthrough(&walk_args) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("\nthe walkthrough failed: {e}");
                false
            }
        };
        if walk_args.exit || !ok {
            std::process::exit(if ok { 0 } else { 1 });
        }
        println!("\nEverything keeps running: try the commands yourself. Ctrl-C stops the demo.");
    });
    edge.server.run(RunArgs::default());
    Ok(())
}

/// Both origins on one small runtime in a thread of their own.
fn start_origins(args: &DemoArgs, auth: Arc<AuthOrigin>) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let bind = |port: u16| {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok::<_, String>(listener)
    };
    let auth_listener = bind(args.auth_port)?;
    let stream_listener = bind(args.stream_port)?;
    if let Some(url) = &args.nats {
        // Before the edge starts: it checks that the bucket exists.
        runtime
            .block_on(auth.publish_to_nats(
                url,
                crate::config::DEFAULT_BUCKET,
                Duration::from_secs(30 * 86_400),
                Duration::from_secs(1),
            ))
            .map_err(|e| format!("--nats: {e}"))?;
    }
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let never = std::future::pending::<()>;
            let auth_listener = tokio::net::TcpListener::from_std(auth_listener).expect("listener");
            let stream_listener =
                tokio::net::TcpListener::from_std(stream_listener).expect("listener");
            let _ = tokio::join!(
                serve(auth_listener, auth.router(), never()),
                serve(stream_listener, stream_origin::router(), never()),
            );
        })
    });
    Ok(())
}

fn walkthrough(args: &DemoArgs) -> Result<(), String> {
    let edge = format!("http://127.0.0.1:{}", args.proxy_port);
    let admin = format!("http://127.0.0.1:{}", args.admin_port);
    let auth = format!("http://127.0.0.1:{}", args.auth_port);
    wait_ready(&admin)?;
    println!("\n=== epochgate demo ===");
    println!(
        "edge {edge}  ->  streaming origin http://127.0.0.1:{}",
        args.stream_port
    );
    println!("auth origin {auth}    admin {admin}\n");

    step("1. Sign in on the living-room TV (the auth origin issues a device token)");
    let signin = format!(
        r#"curl -s -X POST {auth}/v1/signin -H 'content-type: application/json' -d '{{"account_id":"alice","device_id":"living-room-tv"}}'"#
    );
    let token = sign_in(&signin)?;

    step("2. The TV plays: the edge accepts the token and forwards to the origin");
    let play = format!(
        r#"curl -s -o /dev/null -w '%{{http_code}}\n' "{edge}/live/index.m3u8?token=$TOKEN""#
    );
    expect_status(&play, &token, "200")?;
    let whoami = format!(r#"curl -s -H "Authorization: Bearer $TOKEN" {edge}/whoami"#);
    println!("(what the origin received: identity from the edge, no token)");
    run_with_token(&whoami, &token)?;

    step("3. Alice presses \"Sign out of all devices\"");
    if args.nats.is_some() {
        println!("(the auth origin puts her record into the NATS bucket; the edge's replica gets it from there)");
    }
    run_shown(&format!(
        "curl -s -X POST {auth}/v1/accounts/alice/signout-all"
    ))?;

    step("4. The same token is rejected at the edge");
    let started = Instant::now();
    let reject =
        format!(r#"curl -s -w ' HTTP %{{http_code}}\n' "{edge}/live/seg0.ts?token=$TOKEN""#);
    loop {
        let out = run_with_token_quiet(&reject, &token)?;
        if out.contains("HTTP 401") {
            println!("$ {reject}\n{out}");
            println!(
                "(rejected {} ms after the sign-out)",
                started.elapsed().as_millis()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("the edge still accepts the token: {out}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    step("5. Signing in again works at once");
    let fresh = sign_in(&signin)?;
    expect_status(&play, &fresh, "200")?;

    step("6. What the edge counted");
    run_shown(&format!(
        "curl -s {admin}/metrics | grep -E '^epochgate_(requests_total|origin_requests_total|epoch_cache_lookups_total|replica_records|replica_updates_total)' | grep -v ' 0$'"
    ))?;
    Ok(())
}

/// Runs the sign-in command and shows the token shortened: a token is a credential, and
/// the terminal may be shared or recorded.
fn sign_in(command: &str) -> Result<String, String> {
    println!("$ TOKEN=$({command} | jq -r .token)");
    let out = shell(command, None)?;
    let token = serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_string))
        .ok_or_else(|| format!("sign-in returned no token: {out}"))?;
    println!(
        "(TOKEN is a {}-byte ES256 JWT: {}...)",
        token.len(),
        &token[..16.min(token.len())]
    );
    Ok(token)
}

fn step(title: &str) {
    println!("\n--- {title}");
}

fn wait_ready(admin: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("{admin}/readyz"),
            ])
            .output()
            .map_err(|e| format!("cannot run curl ({e}); install it: apt-get install -y curl"))?;
        if out.stdout == b"200" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the edge did not become ready within 15 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shell(command: &str, token: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    if let Some(token) = token {
        cmd.env("TOKEN", token);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `{command}`: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_shown(command: &str) -> Result<String, String> {
    println!("$ {command}");
    let out = shell(command, None)?;
    println!("{}", out.trim_end());
    Ok(out)
}

fn run_with_token(command: &str, token: &str) -> Result<String, String> {
    println!("$ {command}");
    let out = shell(command, Some(token))?;
    println!("{}", out.trim_end());
    Ok(out)
}

fn run_with_token_quiet(command: &str, token: &str) -> Result<String, String> {
    shell(command, Some(token))
}

fn expect_status(command: &str, token: &str, status: &str) -> Result<(), String> {
    let out = run_with_token(command, token)?;
    if out.trim() == status {
        Ok(())
    } else {
        Err(format!("expected HTTP {status}, got {}", out.trim()))
    }
}
