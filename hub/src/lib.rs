//! Mosaic federation hub: signs commands for spokes and verifies their receipts.
//!
//! Layout:
//! - [`server`]: `serve`: the admin API, the event upstreams, fan-out and retention, wired.
//! - [`http`]: the admin API over HTTP (so far `GET /v1/watch` as server-sent events).
//! - [`admin`]: the admin API (`mosaic.admin.v1`): authentication, authorization, statuses.
//! - [`upstream`]: one task per spoke following its events into the hub's log; spoke health.
//! - [`fanout`]: the hub's log to watchers, with bounded buffers and resumable cursors.
//! - [`store`]: the hub's Valkey: the event log, upstream cursors, job snapshots.
//! - [`metrics`]: the Prometheus metrics served on the ops port, and the admin request counters.
//! - [`auth`]: admin API bearer tokens (by hash), roles, workspace scopes, reload.
//! - [`render`]: `watch` output: scrolling lines and live progress bars, or JSON lines.
//! - [`cli`]: the `mosaic-hub` verbs, their output and exit codes.
//! - [`config`]: `hub.toml` into a typed [`config::HubConfig`].
//! - [`reload`]: rotation without restarts: the config and its files reread on change.
//! - [`sign`]: builds and signs commands; the only holder of the hub's private key.
//! - [`spokes`]: dials spokes over mutual TLS, sends commands, verifies signed receipts.
//! - [`certs`]: the development PKI (`certs init`).
//! - [`dev`]: the one-command local federation, and the Valkey child-process launcher.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod commander;
pub mod config;
pub mod dev;
pub mod fanout;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod placement;
pub mod reload;
pub mod render;
pub mod server;
pub mod sign;
pub mod spokes;
pub mod store;
pub mod upstream;

/// A uniform random number in [0, 1) from the operating system (for backoff jitter).
pub(crate) fn jitter() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random source is unavailable");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
