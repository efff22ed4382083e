//! The hub's configuration: `hub.toml` (+ `MOSAIC_HUB__*` overrides) validated into
//! [`HubConfig`]. Paths resolve against the file's directory; key and certificate files are
//! loaded here so a bad file fails at start with the key named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mosaic_shared::config::{self, ConfigError, Env};
use mosaic_shared::ids::{HubId, SpokeId};
use mosaic_shared::signing::{KeyPair, PublicKey};

use crate::sign::Signer;
use mosaic_shared::tls::{self, Role, SpiffeId, TlsMaterial, TlsPaths};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    hub_id: HubId,
    trust_domain: String,
    signing_key: PathBuf,
    #[serde(default = "default_command_ttl_ms")]
    command_ttl_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    request_timeout_ms: u64,
    tls: TlsPaths,
    #[serde(default)]
    spokes: Vec<RawSpoke>,
}

fn default_command_ttl_ms() -> u64 {
    60_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpoke {
    id: SpokeId,
    /// `host:port` of the spoke's federation endpoint.
    address: String,
    /// The spoke's receipt-signing public key (PEM).
    receipt_key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SpokeEntry {
    pub id: SpokeId,
    pub address: String,
    pub receipt_key: PublicKey,
}

pub struct HubConfig {
    pub hub_id: HubId,
    pub trust_domain: String,
    /// Signs commands with the hub's private key (valid for `command_ttl_ms`).
    pub signer: Signer,
    /// Bound on one round trip to a spoke (a kill waits for the agent to end).
    pub request_timeout: Duration,
    pub tls: TlsMaterial,
    pub spokes: Vec<SpokeEntry>,
}

impl HubConfig {
    pub fn load(path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let raw: Raw = config::load(path, "MOSAIC_HUB", env)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };
        tls::check_trust_domain(&raw.trust_domain).map_err(|e| invalid("trust_domain", e))?;
        if !(1_000..=3_600_000).contains(&raw.command_ttl_ms) {
            return Err(invalid(
                "command_ttl_ms",
                "must be between 1000 and 3600000".into(),
            ));
        }
        if !(100..=600_000).contains(&raw.request_timeout_ms) {
            return Err(invalid(
                "request_timeout_ms",
                "must be between 100 and 600000".into(),
            ));
        }
        let signing_key = KeyPair::load(&config::resolve(base, &raw.signing_key))
            .map_err(|e| invalid("signing_key", e.to_string()))?;
        let own = SpiffeId::new(&raw.trust_domain, Role::Hub, raw.hub_id.as_str());
        let tls = TlsMaterial::load_as(&raw.tls.resolved(base), &own)
            .map_err(|e| invalid(e.field(), e.to_string()))?;
        let mut spokes: Vec<SpokeEntry> = Vec::new();
        for (i, s) in raw.spokes.into_iter().enumerate() {
            if spokes.iter().any(|e| e.id == s.id) {
                return Err(invalid(
                    &format!("spokes[{i}].id"),
                    format!("spoke {} is listed twice", s.id),
                ));
            }
            let receipt_key = PublicKey::load(&config::resolve(base, &s.receipt_key))
                .map_err(|e| invalid(&format!("spokes[{i}].receipt_key"), e.to_string()))?;
            spokes.push(SpokeEntry {
                id: s.id,
                address: s.address,
                receipt_key,
            });
        }
        Ok(HubConfig {
            hub_id: raw.hub_id.clone(),
            trust_domain: raw.trust_domain,
            signer: Signer::new(
                raw.hub_id,
                signing_key,
                Duration::from_millis(raw.command_ttl_ms),
            ),
            request_timeout: Duration::from_millis(raw.request_timeout_ms),
            tls,
            spokes,
        })
    }

    pub fn spoke(&self, id: &SpokeId) -> Option<&SpokeEntry> {
        self.spokes.iter().find(|s| &s.id == id)
    }
}
