//! The hub's configuration: `hub.toml` (+ `MOSAIC_HUB__*` overrides) validated into
//! [`HubConfig`]. Paths resolve against the file's directory; key and certificate files are
//! loaded here so a bad file fails at start with the key named.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mosaic_shared::config::{self, ConfigError, Env};
use mosaic_shared::ids::{HubId, SpokeId};
use mosaic_shared::signing::{KeyPair, PublicKey};

use crate::placement::Labels;
use crate::sign::Signer;
use mosaic_shared::tls::{self, Role, SpiffeId, TlsMaterial, TlsPaths};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    hub_id: HubId,
    trust_domain: String,
    signing_key: PathBuf,
    /// Public keys the hub signed with before a rotation (the audit trail still verifies).
    #[serde(default)]
    retired_signing_keys: Vec<PathBuf>,
    #[serde(default = "default_command_ttl_ms")]
    command_ttl_ms: u64,
    #[serde(default = "default_request_timeout_ms")]
    request_timeout_ms: u64,
    tls: TlsPaths,
    #[serde(default)]
    spokes: Vec<RawSpoke>,
    /// Where `serve` answers the admin API (gRPC over TLS with the hub's certificate).
    listen: Option<SocketAddr>,
    /// Where `serve` answers the admin API over HTTP (TLS); none: no HTTP.
    http_listen: Option<SocketAddr>,
    /// Where `serve` answers metrics and health probes (plaintext); none: not served.
    ops_listen: Option<SocketAddr>,
    /// The hub's own Valkey (event log, upstream cursors, job snapshots).
    valkey_url: Option<String>,
    /// The hub's Valkey is a cluster (`valkey_url` names one of its nodes).
    #[serde(default)]
    valkey_cluster: bool,
    /// TLS material for a `rediss://` `valkey_url`.
    valkey_tls: Option<mosaic_shared::valkey::RawTls>,
    /// The admin API's tokens file (see `auth`).
    tokens: Option<PathBuf>,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    audit: RawAudit,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    retain_max: u64,
    retain_ms: u64,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            retain_max: 100_000,
            retain_ms: 30 * 24 * 3_600_000,
        }
    }
}

/// The audit trail's retention: records beyond either bound are removed, oldest first. It
/// also bounds how long a client's request id is remembered.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub retain_max: u64,
    pub retain: Duration,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEvents {
    retain_max: u64,
    retain_ms: u64,
    subscriber_buffer: usize,
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            retain_max: 1_000_000,
            retain_ms: 24 * 3_600_000,
            subscriber_buffer: 4096,
        }
    }
}

/// The hub's event log: what clients can resume from, and how far one may fall behind.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// At most this many events are kept ...
    pub retain_max: u64,
    /// ... and none older than this.
    pub retain: Duration,
    /// Events a watcher may be behind the newest before it is ended with `resync_required`.
    pub subscriber_buffer: usize,
}

/// What `mosaic-hub serve` needs beyond what the client verbs need.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    /// The plaintext operations port (metrics, health); none: not served.
    pub ops_listen: Option<SocketAddr>,
    /// The hub's own Valkey: `valkey_url`, `valkey_cluster` and `[valkey_tls]`.
    pub valkey: mosaic_shared::valkey::Target,
    pub tokens: PathBuf,
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
    /// Labels that spawns select spokes by, e.g. `{ region = "eu", gpu = "a100" }`.
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct SpokeEntry {
    pub id: SpokeId,
    pub address: String,
    pub receipt_key: PublicKey,
    pub labels: Labels,
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
    /// Set when the file has what `serve` needs; `serve` reports what is missing otherwise.
    pub serve: Result<ServeConfig, ConfigError>,
    pub events: EventsConfig,
    pub audit: AuditConfig,
    /// Public keys of earlier signing keys, for checking old audit records.
    pub retired_signing_keys: Vec<PublicKey>,
    /// Where this config came from, so that it can be read again (`crate::reload`).
    pub source: config::ConfigSource,
    /// The files whose change triggers a reload: the config, the signing key, the TLS
    /// certificate, key and CA bundle, and the spokes' receipt keys.
    pub watched_files: Vec<PathBuf>,
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
        let signing_key_path = config::resolve(base, &raw.signing_key);
        let signing_key =
            KeyPair::load(&signing_key_path).map_err(|e| invalid("signing_key", e.to_string()))?;
        let retired_signing_keys = raw
            .retired_signing_keys
            .iter()
            .enumerate()
            .map(|(i, p)| {
                PublicKey::load(&config::resolve(base, p))
                    .map_err(|e| invalid(&format!("retired_signing_keys[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let own = SpiffeId::new(&raw.trust_domain, Role::Hub, raw.hub_id.as_str());
        let tls_paths = raw.tls.resolved(base);
        let mut watched_files = vec![
            path.to_owned(),
            signing_key_path,
            tls_paths.cert.clone(),
            tls_paths.key.clone(),
            tls_paths.ca.clone(),
        ];
        let tls = TlsMaterial::load_as(&tls_paths, &own)
            .map_err(|e| invalid(e.field(), e.to_string()))?;
        let e = raw.events;
        mosaic_shared::stream::check_retention(e.retain_max, e.retain_ms)
            .map_err(|(field, message)| invalid(&format!("events.{field}"), message.into()))?;
        let a = raw.audit;
        mosaic_shared::stream::check_retention(a.retain_max, a.retain_ms)
            .map_err(|(field, message)| invalid(&format!("audit.{field}"), message.into()))?;
        if !(16..=1_000_000).contains(&e.subscriber_buffer) {
            return Err(invalid(
                "events.subscriber_buffer",
                "must be between 16 and 1000000".into(),
            ));
        }
        let missing =
            |field: &str, what: &str| invalid(field, format!("not set; `serve` needs {what}"));
        let serve = match (raw.listen, env.valkey_url().or(raw.valkey_url), raw.tokens) {
            (None, _, _) => Err(missing(
                "listen",
                "the admin API's address, e.g. listen = \"127.0.0.1:7443\"",
            )),
            (_, None, _) => Err(missing(
                "valkey_url",
                "the hub's own Valkey (or MOSAIC_VALKEY_URL)",
            )),
            (_, _, None) => Err(missing(
                "tokens",
                "the admin API's tokens file (see `mosaic-hub token new`)",
            )),
            (Some(listen), Some(valkey_url), Some(tokens)) => mosaic_shared::valkey::Target::new(
                valkey_url,
                raw.valkey_cluster,
                raw.valkey_tls.as_ref(),
                base,
            )
            .map_err(|(field, message)| invalid(field, message))
            .map(|valkey| ServeConfig {
                listen,
                http_listen: raw.http_listen,
                ops_listen: raw.ops_listen,
                valkey,
                tokens: config::resolve(base, &tokens),
            }),
        };
        let mut spokes: Vec<SpokeEntry> = Vec::new();
        for (i, s) in raw.spokes.into_iter().enumerate() {
            if spokes.iter().any(|e| e.id == s.id) {
                return Err(invalid(
                    &format!("spokes[{i}].id"),
                    format!("spoke {} is listed twice", s.id),
                ));
            }
            let receipt_key_path = config::resolve(base, &s.receipt_key);
            let receipt_key = PublicKey::load(&receipt_key_path)
                .map_err(|e| invalid(&format!("spokes[{i}].receipt_key"), e.to_string()))?;
            watched_files.push(receipt_key_path);
            let labels =
                Labels::new(s.labels).map_err(|e| invalid(&format!("spokes[{i}].labels"), e))?;
            spokes.push(SpokeEntry {
                id: s.id,
                address: s.address,
                receipt_key,
                labels,
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
            serve,
            events: EventsConfig {
                retain_max: e.retain_max,
                retain: Duration::from_millis(e.retain_ms),
                subscriber_buffer: e.subscriber_buffer,
            },
            audit: AuditConfig {
                retain_max: a.retain_max,
                retain: Duration::from_millis(a.retain_ms),
            },
            retired_signing_keys,
            source: config::ConfigSource {
                path: path.to_owned(),
                env: env.clone(),
            },
            watched_files,
        })
    }

    /// The hub's public keys by id, for checking audit records: the signing key's and the
    /// retired ones.
    pub fn hub_keys(&self) -> std::collections::HashMap<String, PublicKey> {
        std::iter::once(self.signer.public())
            .chain(self.retired_signing_keys.iter().cloned())
            .map(|k| (k.id().to_string(), k))
            .collect()
    }

    pub fn spoke(&self, id: &SpokeId) -> Option<&SpokeEntry> {
        self.spokes.iter().find(|s| &s.id == id)
    }
}
