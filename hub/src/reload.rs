//! Rotation without restarts on the hub: `hub.toml` and the files it names (the signing key,
//! the TLS certificate, key and CA bundle, the spokes' receipt keys) are reread when one of
//! them changes, or on SIGHUP.
//!
//! A reload reads the whole config again with the start-up checks (the certificate must still
//! name this hub). On success the new config is in force for everything that reads it per
//! use: commands are signed with the new key, spokes are dialled with the new certificate and
//! CA bundle (kept channels are dropped), receipts are checked with the new receipt keys, and
//! both admin ports present the new certificate to new connections. On failure nothing
//! changes: the error is logged and `mosaic_reload_ok{what}` turns 0 (`tls`, `signing_key`, or
//! `config`). The listeners, the hub's Valkey, the tokens file path and the set of event
//! upstreams take effect at the next start.

use std::sync::{Arc, PoisonError, RwLock};

use mosaic_shared::config::ConfigError;
use mosaic_shared::ops::CommonMetrics;
use mosaic_shared::reload::{Hangups, Watched, next_change};
use mosaic_shared::tls::ReloadableServerConfig;

use crate::config::HubConfig;

/// The config in force, replaced by a reload; readers take a snapshot per use.
#[derive(Clone)]
pub struct Live(Arc<RwLock<Arc<HubConfig>>>);

impl Live {
    pub fn new(config: HubConfig) -> Self {
        Live(Arc::new(RwLock::new(Arc::new(config))))
    }

    pub fn current(&self) -> Arc<HubConfig> {
        // Held only to clone or swap an Arc; a poisoned lock still holds a whole config.
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, config: HubConfig) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }
}

/// The admin ports' TLS configurations, replaced with the certificate.
#[derive(Clone)]
pub struct ServerTls {
    pub grpc: ReloadableServerConfig,
    pub http: Option<ReloadableServerConfig>,
}

fn concerns(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Invalid { field, .. } if field.starts_with("tls") => "tls",
        ConfigError::Invalid { field, .. } if field == "signing_key" => "signing_key",
        _ => "config",
    }
}

const WHATS: [&str; 3] = ["tls", "signing_key", "config"];

/// Watches the config's files and SIGHUP until the task is dropped; `on_change` runs after a
/// reload is in force (the commander drops its kept channels).
pub async fn watch(
    live: Live,
    servers: ServerTls,
    metrics: CommonMetrics,
    on_change: impl Fn() + Send + 'static,
) {
    let mut hangups = Hangups::install("certificates and the signing key");
    for what in WHATS {
        metrics.reloaded(what, true);
    }
    let source = live.current().source.clone();
    let mut files = live.current().watched_files.clone();
    let mut watched = Watched::new(files.clone());
    loop {
        let cause = next_change(&watched, &mut hangups).await;
        watched = Watched::new(files.clone());
        let path = source.path.display();
        let failed = |what: &str, error: &dyn std::fmt::Display| {
            metrics.reloaded(what, false);
            tracing::error!(%path, cause, %error, what, "reload failed; the previous certificates and signing key stay in force");
        };
        let new = match HubConfig::load(&source.path, &source.env) {
            Ok(c) => c,
            Err(e) => {
                failed(concerns(&e), &e);
                continue;
            }
        };
        let grpc = match new.tls.rustls_server_config_optional_client_auth_h2() {
            Ok(t) => t,
            Err(e) => {
                failed("tls", &e);
                continue;
            }
        };
        let http = match new.tls.rustls_server_config_optional_client_auth() {
            Ok(t) => t,
            Err(e) => {
                failed("tls", &e);
                continue;
            }
        };
        let key_id = new.signer.public().id().to_string();
        let changed_files = new.watched_files != files;
        if changed_files {
            files = new.watched_files.clone();
        }
        live.replace(new);
        servers.grpc.replace(grpc);
        if let Some(h) = &servers.http {
            h.replace(http);
        }
        on_change();
        for what in WHATS {
            metrics.reloaded(what, true);
        }
        tracing::info!(%path, cause, signing_key = %key_id, "reloaded the signing key, TLS certificate, CA bundle and receipt keys (listeners, Valkey and the set of spokes followed take effect at the next start)");
        if changed_files {
            watched = Watched::new(files.clone());
        }
    }
}
