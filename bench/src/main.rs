//! `mosaic-bench`: parse flags, install telemetry, call [`mosaic_bench::run`].

use clap::Parser as _;
use mosaic_shared::config::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = mosaic_bench::Args::parse();
    let env = Env::from_process();
    // The spoke under test logs every attempt at info; only problems belong in a benchmark's
    // output, and a subscriber that formats every line would be part of what is measured.
    let _telemetry = mosaic_shared::telemetry::init(&env, "warn", "mosaic-bench", false)
        .map_err(anyhow::Error::msg)?;
    mosaic_bench::run(args, &env).await
}
