//! Rotation without restarts: the spoke's TLS certificate, key and CA bundle, and its trusted
//! hubs and keys, reread when one of their files (or `spoke.toml`) changes, or on SIGHUP.
//!
//! A reload reads the whole config again with the same checks as at start-up (the certificate
//! must still name this spoke; every key file must load), then puts in force the TLS
//! configuration (for connections from then on; open ones keep theirs) and the verifier (for
//! commands from then on). If anything fails, nothing changes: the previous material stays in
//! force, the error is logged, and `mosaic_reload_ok{what}` turns 0 (`what`: `tls`,
//! `trusted_keys`, or `config` for anything else in the file). Other settings take effect at
//! the next start.

use mosaic_shared::config::ConfigError;
use mosaic_shared::ops::CommonMetrics;
use mosaic_shared::reload::{Hangups, Watched, next_change};
use mosaic_shared::tls::ReloadableServerConfig;

use crate::config::SpokeConfig;
use crate::verify::{SharedVerifier, Verifier};

/// What a reload replaces.
#[derive(Clone)]
pub struct Material {
    pub tls: ReloadableServerConfig,
    pub verifier: SharedVerifier,
}

/// Which material a failed load concerns, for the metrics.
fn concerns(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Invalid { field, .. } if field.starts_with("tls") => "tls",
        ConfigError::Invalid { field, .. } if field.starts_with("trusted_hubs") => "trusted_keys",
        _ => "config",
    }
}

/// Watches `config`'s files and SIGHUP until the task is dropped, reloading `material`.
pub async fn watch(
    config: std::sync::Arc<SpokeConfig>,
    material: Material,
    metrics: CommonMetrics,
) {
    let mut hangups = Hangups::install("certificates and trusted keys");
    for what in ["tls", "trusted_keys", "config"] {
        metrics.reloaded(what, true);
    }
    let source = config.source.clone();
    let mut watched = Watched::new(config.watched_files.clone());
    let mut files = config.watched_files.clone();
    loop {
        let cause = next_change(&watched, &mut hangups).await;
        // Fingerprinted before reading: a change during the read is seen at the next poll.
        watched = Watched::new(files.clone());
        let path = source.path.display();
        let new = match SpokeConfig::load(&source.path, &source.env) {
            Ok(c) => c,
            Err(e) => {
                let what = concerns(&e);
                metrics.reloaded(what, false);
                tracing::error!(%path, cause, error = %e, what, "reload failed; the previous certificates and trusted keys stay in force");
                continue;
            }
        };
        let tls = match new.tls.rustls_server_config() {
            Ok(t) => t,
            Err(e) => {
                metrics.reloaded("tls", false);
                tracing::error!(%path, cause, error = %e, "reload failed; the previous certificates and trusted keys stay in force");
                continue;
            }
        };
        material.tls.replace(tls);
        material.verifier.replace(Verifier::of(&new));
        for what in ["tls", "trusted_keys", "config"] {
            metrics.reloaded(what, true);
        }
        let keys: Vec<String> = new
            .trusted_hubs
            .iter()
            .flat_map(|h| {
                h.keys.iter().map(move |k| match k.not_after_ms {
                    Some(t) => format!("{}:{} (until {t})", h.hub_id, k.key.id()),
                    None => format!("{}:{}", h.hub_id, k.key.id()),
                })
            })
            .collect();
        tracing::info!(
            %path,
            cause,
            trusted_keys = %keys.join(", "),
            "reloaded the TLS certificate, CA bundle and trusted keys (other settings take effect at the next start)"
        );
        if new.watched_files != files {
            files = new.watched_files.clone();
            watched = Watched::new(files.clone());
        }
    }
}
