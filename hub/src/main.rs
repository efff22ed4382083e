//! `mosaic-hub`: parse flags, install telemetry, dispatch to [`mosaic_hub::cli::run`].

use std::process::ExitCode;

use clap::Parser as _;
use mosaic_hub::cli::{Cli, Command};
use mosaic_shared::config::Env;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    // Client verbs print results on stdout; only warnings belong on stderr by default.
    let default_filter = match cli.command {
        Command::Dev(_) => "warn,mosaic_spoke=warn",
        Command::Serve => "info",
        _ => "warn",
    };
    // Only the long-running verbs export traces; a client verb would only add start-up time.
    let export = matches!(cli.command, Command::Serve | Command::Dev(_));
    let telemetry = match mosaic_shared::telemetry::init(&env, default_filter, "mosaic-hub", export)
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match mosaic_hub::cli::run(cli, &env).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    };
    telemetry.shutdown().await;
    code
}
