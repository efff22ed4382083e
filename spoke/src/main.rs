//! `mosaic-spoke`: parse flags, load config, install telemetry, call [`mosaic_spoke::run`].

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mosaic_shared::config::Env;

/// Mosaic federation spoke: runs agents on this machine for trusted hubs.
///
/// A spoke accepts only commands that arrive over mutual TLS from a trusted hub, are signed by a
/// key trusted for that hub, are addressed to this spoke, are inside their validity window and
/// were never seen before. It runs only the agent profiles configured in its own file.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example:\n  mosaic-spoke serve --config /etc/mosaic/spoke.toml\n\nEnvironment:\n  MOSAIC_SPOKE__<KEY>[__<SUBKEY>]  override any config key, e.g. MOSAIC_SPOKE__LISTEN=0.0.0.0:7443\n  MOSAIC_VALKEY_URL                 Valkey URL (or VALKEY_URL, or VALKEY_HOST/VALKEY_PORT/VALKEY_PASSWORD)\n  MOSAIC_LOG                        log filter (default: info)\n  MOSAIC_LOG_FORMAT                 text or json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the federation API until SIGINT or SIGTERM.
    Serve {
        /// Path to spoke.toml (see README "Spoke configuration").
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env = Env::from_process();
    // tonic reports refused TLS handshakes (no or untrusted client certificate) only at debug
    // level; an operator needs to see them.
    let telemetry = mosaic_shared::telemetry::init(
        &env,
        "info,tonic::transport::server::io_stream=debug",
        "mosaic-spoke",
        true,
    )
    .map_err(anyhow::Error::msg)?;
    let result = match cli.command {
        Command::Serve { config } => serve(&config, &env).await,
    };
    telemetry.shutdown().await;
    result
}

async fn serve(config: &std::path::Path, env: &Env) -> anyhow::Result<()> {
    let config = mosaic_spoke::config::SpokeConfig::load(config, env)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    Ok(mosaic_spoke::run(config, listener, shutdown_signal()).await?)
}

/// Resolves at the first SIGINT or SIGTERM, which starts the drain. A second one exits at
/// once: agents still running are left to the next start's recovery (their leases run out,
/// their processes are made sure dead, and their jobs are retried).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install SIGINT handler");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("second stop signal: exiting without finishing the drain");
        std::process::exit(130);
    });
}
