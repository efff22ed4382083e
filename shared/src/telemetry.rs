//! Logging setup for the binaries: `tracing` to stderr, human-readable or JSON.
//!
//! The filter comes from `MOSAIC_LOG` (e.g. `info,mosaic_spoke=debug`), the format from
//! `MOSAIC_LOG_FORMAT` (`text` or `json`). Called once from each `main`; libraries only emit.

use tracing_subscriber::EnvFilter;

use crate::config::Env;

pub fn init(env: &Env, default_filter: &str) {
    let filter = EnvFilter::try_new(env.get("MOSAIC_LOG").unwrap_or(default_filter))
        .unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests that run two servers in-process) keeps the first subscriber.
    let _ = if env.get("MOSAIC_LOG_FORMAT") == Some("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
