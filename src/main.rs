//! `ringgate` command line: parse arguments, load the config, start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringgate::config::Config;

const DEFAULT_CONFIG: &str = "config/ringgate.toml";

/// Counts allocations per worker (admin `/stats/allocations`).
#[global_allocator]
static ALLOCATOR: ringgate::sys::CountingAlloc = ringgate::sys::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "A thread-per-core io_uring API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print every error as
    /// `file:line:col: key: message` and exit 1.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Read an API key or client secret on stdin (one line) and print the
    /// `sha256:<hex>` value to put in the config.
    HashKey,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::HashKey => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("cannot read stdin");
                return ExitCode::FAILURE;
            }
            let key = line.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                eprintln!("no key on stdin");
                return ExitCode::FAILURE;
            }
            println!("{}", ringgate::auth::apikey::hash_key(key.as_bytes()));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} clusters, {} routes)",
                    config.display(),
                    c.listeners.len(),
                    c.clusters.len(),
                    c.router.routes().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config: path } => {
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            ringgate::observability::init(&config.log);
            match ringgate::control::run(path, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("cannot start: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
