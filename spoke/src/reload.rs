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

use mosaic_shared::ops::CommonMetrics;
use mosaic_shared::reload::{concerns, follow};
use mosaic_shared::tls::ReloadableServerConfig;

use crate::config::SpokeConfig;
use crate::verify::{SharedVerifier, Verifier};

/// What a reload replaces.
#[derive(Clone)]
pub struct Material {
    pub tls: ReloadableServerConfig,
    pub verifier: SharedVerifier,
}

/// Watches `config`'s files and SIGHUP until the task is dropped, reloading `material`.
pub async fn watch(
    config: std::sync::Arc<SpokeConfig>,
    material: Material,
    metrics: CommonMetrics,
) {
    let source = config.source.clone();
    follow(
        "certificates and trusted keys",
        &["tls", "trusted_keys", "config"],
        &source.path,
        config.watched_files.clone(),
        &metrics,
        |cause| {
            let new = SpokeConfig::load(&source.path, &source.env).map_err(|e| {
                let what = concerns(&e, &[("tls", "tls"), ("trusted_hubs", "trusted_keys")]);
                (what, e.to_string())
            })?;
            let tls = new
                .tls
                .rustls_server_config()
                .map_err(|e| ("tls", e.to_string()))?;
            material.tls.replace(tls);
            material.verifier.replace(Verifier::of(&new));
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
                path = %source.path.display(),
                cause,
                trusted_keys = %keys.join(", "),
                "reloaded the TLS certificate, CA bundle and trusted keys (other settings take effect at the next start)"
            );
            Ok(new.watched_files)
        },
    )
    .await;
}
