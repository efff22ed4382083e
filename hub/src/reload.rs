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

use mosaic_shared::ops::CommonMetrics;
use mosaic_shared::reload::{InForce, concerns, follow};
use mosaic_shared::tls::ReloadableServerConfig;

use crate::config::HubConfig;

/// The config in force, replaced by a reload; readers take a snapshot per use.
pub type Live = InForce<HubConfig>;

/// The admin ports' TLS configurations, replaced with the certificate.
#[derive(Clone)]
pub struct ServerTls {
    pub grpc: ReloadableServerConfig,
    pub http: Option<ReloadableServerConfig>,
}

/// Watches the config's files and SIGHUP until the task is dropped; `on_change` runs after a
/// reload is in force (the commander drops its kept channels).
pub async fn watch(
    live: Live,
    servers: ServerTls,
    metrics: CommonMetrics,
    on_change: impl Fn() + Send + 'static,
) {
    let config = live.current();
    let source = config.source.clone();
    follow(
        "certificates and signing key",
        &["tls", "signing_key", "config"],
        &source.path,
        config.watched_files.clone(),
        &metrics,
        |cause| {
            let new = HubConfig::load(&source.path, &source.env).map_err(|e| {
                let what = concerns(&e, &[("tls", "tls"), ("signing_key", "signing_key")]);
                (what, e.to_string())
            })?;
            let tls = |e: mosaic_shared::tls::TlsError| ("tls", e.to_string());
            let grpc = new
                .tls
                .rustls_server_config_optional_client_auth_h2()
                .map_err(tls)?;
            let http = new
                .tls
                .rustls_server_config_optional_client_auth()
                .map_err(tls)?;
            let key_id = new.signer.public().id().to_string();
            let files = new.watched_files.clone();
            live.replace(new);
            servers.grpc.replace(grpc);
            if let Some(h) = &servers.http {
                h.replace(http);
            }
            on_change();
            tracing::info!(path = %source.path.display(), cause, signing_key = %key_id, "reloaded the signing key, TLS certificate, CA bundle and receipt keys (listeners, Valkey and the set of spokes followed take effect at the next start)");
            Ok(files)
        },
    )
    .await;
}
