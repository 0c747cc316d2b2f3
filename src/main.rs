//! The `epochgate` binary: run the edge from a config file, check a config, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
#[cfg(feature = "demo")]
use clap::Subcommand;
use epochgate::config::Settings;

// Pingora allocates and frees a large future for every request. glibc's malloc serves such
// sizes from its general bins and consolidates small free chunks first, which walks memory
// spread over the whole heap; once the caches hold thousands of tokens and accounts, that
// memory is seldom in the CPU caches. jemalloc keeps per-size-class runs and reuses what was
// freed last, so that memory is more likely still cached (docs/performance-notes.md, "The
// allocator"). Off without the default feature `jemalloc`.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser, Debug)]
#[command(
    name = "epochgate",
    version,
    about = "Edge enforcement of \"sign out of all devices\""
)]
struct Cli {
    /// The YAML configuration file.
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    conf: Option<PathBuf>,
    /// Validate the configuration and exit (0: valid).
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Take over the listeners of a running instance (graceful upgrade, sent SIGQUIT).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    #[cfg(feature = "demo")]
    #[command(subcommand)]
    command: Option<Command>,
}

#[cfg(feature = "demo")]
#[derive(Subcommand, Debug, Clone)]
enum Command {
    /// Start a reference auth origin, a demo streaming origin and the edge on loopback, and
    /// walk through a sign-out with curl.
    Demo(epochgate::demo::DemoArgs),
    /// Run the reference auth origin alone (with `--nats`, it also fills a fleet replica's
    /// bucket).
    ReferenceOrigin(epochgate::reference::origin_command::ReferenceOriginArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    #[cfg(feature = "demo")]
    if let Some(Command::Demo(args)) = cli.command.clone() {
        return match epochgate::demo::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("epochgate demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    #[cfg(feature = "demo")]
    if let Some(Command::ReferenceOrigin(args)) = cli.command {
        return match epochgate::reference::origin_command::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("epochgate reference-origin: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = cli.conf else {
        eprintln!("epochgate: no configuration given; run `epochgate -c FILE` (see config/epochgate.yaml)");
        return ExitCode::from(2);
    };
    let settings = match Settings::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("epochgate: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if cli.test {
        println!("epochgate: {}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    if !cli.upgrade {
        // With -u the listeners come from the running instance, so they are busy by design.
        if let Err(e) = epochgate::edge::server::check_listeners_free(&settings) {
            eprintln!("epochgate: {e}");
            return ExitCode::FAILURE;
        }
    }
    let opt = pingora::server::configuration::Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        ..Default::default()
    };
    match epochgate::edge::server::build(settings, opt) {
        Ok(edge) => edge.server.run_forever(),
        Err(e) => {
            eprintln!("epochgate: {e}");
            ExitCode::FAILURE
        }
    }
}
