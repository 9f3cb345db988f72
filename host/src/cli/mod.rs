//! The `mediary` command line.
//!
//! - `run`, `check-config`: the server (here).
//! - `plugin ...`: write, build, test and ship channel plugins ([`plugin`], with [`scaffold`],
//!   [`build`] and [`push`]).

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod build;
pub mod plugin;
pub mod push;
pub mod scaffold;

use crate::config::{Config, Workers};
use crate::workers::{Listeners, run};

/// Exit code for a configuration that does not check, or a command used wrongly (sysexits' `EX_USAGE`).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// Exit code when Mediary cannot start or fails while running (ports taken, no threads).
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(name = "mediary", version, about = "A health information mediator.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the mediator.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
        /// Worker threads: a number, or `auto` for one per core. Overrides `server.workers`.
        /// `--cluster` is accepted too, as in OpenHIM.
        #[arg(long, alias = "cluster", value_name = "N|auto")]
        workers: Option<Workers>,
    },
    /// Check a configuration file and print every problem in it.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = "config/default.toml")]
        config: PathBuf,
    },
    /// Write, build, test and ship channel plugins (WebAssembly components of wit/plugin.wit).
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version are not errors; every other parse error is bad usage (sysexits' 64).
            let usage = error.use_stderr();
            let _ = error.print();
            return if usage {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Plugin { command } => plugin::main(command),
        Command::CheckConfig { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} channel{})",
                    config.display(),
                    c.channels.len(),
                    if c.channels.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config, workers } => {
            let mut config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(workers) = workers {
                config.server.workers = workers;
            }
            init_tracing(&config.log.level);
            match start(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        eprintln!("{error}");
        let n = error.errors.len();
        eprintln!(
            "{}: {n} problem{} found; Mediary did not start.",
            path.display(),
            if n == 1 { "" } else { "s" }
        );
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true)
        .init();
}

fn start(config: Config) -> anyhow::Result<()> {
    let workers = config.server.workers.resolve();
    let addr = SocketAddr::new(config.server.bind, config.server.http_port);
    let api = SocketAddr::new(config.server.api_bind, config.server.api_port);
    let mut listeners = Listeners::bind(addr, api, workers)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    if config.tls.is_some() {
        let https = SocketAddr::new(config.server.bind, config.server.https_port);
        listeners = listeners
            .with_https(https)
            .map_err(|e| anyhow::anyhow!("cannot listen for HTTPS on {https}: {e}"))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config, listeners, shutdown_signal()))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("Cannot listen for signals; stop Mediary with SIGKILL.");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received."),
        _ = int.recv() => tracing::info!("SIGINT received."),
    }
}
