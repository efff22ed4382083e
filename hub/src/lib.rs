//! Mosaic federation hub: signs commands for spokes and verifies their receipts.
//!
//! Layout:
//! - [`auth`]: admin API bearer tokens (by hash), roles, workspace scopes, reload.
//! - [`cli`]: the `mosaic-hub` verbs, their output and exit codes.
//! - [`config`]: `hub.toml` into a typed [`config::HubConfig`].
//! - [`sign`]: builds and signs commands; the only holder of the hub's private key.
//! - [`spokes`]: dials spokes over mutual TLS, sends commands, verifies signed receipts.
//! - [`certs`]: the development PKI (`certs init`).
//! - [`dev`]: the one-command local federation, and the Valkey child-process launcher.

pub mod auth;
pub mod certs;
pub mod cli;
pub mod config;
pub mod dev;
pub mod sign;
pub mod spokes;
