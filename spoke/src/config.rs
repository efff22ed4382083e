//! The spoke's configuration: `spoke.toml` (+ `MOSAIC_SPOKE__*` overrides) validated into
//! [`SpokeConfig`].
//!
//! Paths are resolved against the config file's directory; keys and profiles are checked here so
//! that a bad file stops the spoke at start-up with a message naming the key, never at the first
//! command. Nothing here touches the network or Valkey.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mosaic_shared::config::{self, ConfigError, Env};
use mosaic_shared::ids::{HubId, ProfileName, SpokeId};
use mosaic_shared::signing::{KeyPair, PublicKey};
use mosaic_shared::tls::{self, Role, SpiffeId, TlsMaterial, TlsPaths};

/// The file as written. Every key is documented in README.md ("Spoke configuration").
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    spoke_id: SpokeId,
    trust_domain: String,
    listen: SocketAddr,
    valkey_url: Option<String>,
    receipt_key: PathBuf,
    #[serde(default = "default_clock_skew_ms")]
    clock_skew_ms: u64,
    #[serde(default = "default_max_command_validity_ms")]
    max_command_validity_ms: u64,
    tls: TlsPaths,
    #[serde(default)]
    trusted_hubs: Vec<RawHub>,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
}

fn default_clock_skew_ms() -> u64 {
    30_000
}
fn default_max_command_validity_ms() -> u64 {
    600_000
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    hub_id: HubId,
    /// Public key files (PEM) this hub may sign with; several allow rotation.
    keys: Vec<PathBuf>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    program: PathBuf,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    allowed_env: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir_root: PathBuf,
    #[serde(default = "default_kill_grace_ms")]
    kill_grace_ms: u64,
}

fn default_kill_grace_ms() -> u64 {
    10_000
}

/// A spoke operator's agent profile: the only programs this spoke will ever run.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: ProfileName,
    /// Absolute path of the program; started directly, never through a shell.
    pub program: PathBuf,
    /// Fixed arguments placed before the hub's arguments.
    pub args: Vec<String>,
    /// Environment variable names a spawn may set; everything else is cleared.
    pub allowed_env: Vec<String>,
    /// Variables the operator sets for every agent of this profile (e.g. `PATH`, `HOME`); a
    /// spawn may override those whose names are also in `allowed_env`.
    pub env: BTreeMap<String, String>,
    /// Every agent's working directory lies inside this directory.
    pub workdir_root: PathBuf,
    /// Time between SIGTERM and SIGKILL when the agent is killed.
    pub kill_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TrustedHub {
    pub hub_id: HubId,
    pub keys: Vec<PublicKey>,
}

#[derive(Debug, Clone)]
pub struct SpokeConfig {
    pub spoke_id: SpokeId,
    pub trust_domain: String,
    pub listen: SocketAddr,
    pub valkey_url: String,
    pub receipt_key: Arc<KeyPair>,
    /// How far a command's validity window may be off from our clock and still be accepted.
    pub clock_skew: Duration,
    /// The longest validity window (expires - issued) accepted; bounds the replay store's TTL.
    pub max_command_validity: Duration,
    pub tls: TlsMaterial,
    pub trusted_hubs: Vec<TrustedHub>,
    pub profiles: BTreeMap<ProfileName, Arc<Profile>>,
}

impl SpokeConfig {
    /// Loads `path` with `MOSAIC_SPOKE__*` overrides and the Valkey variables from `env`.
    pub fn load(path: &Path, env: &Env) -> Result<Self, ConfigError> {
        let raw: Raw = config::load(path, "MOSAIC_SPOKE", env)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };

        let valkey_url = env
            .valkey_url()
            .or(raw.valkey_url)
            .ok_or_else(|| invalid("valkey_url", "not set; set it in the file or MOSAIC_VALKEY_URL (redis://host:port, rediss://…, unix:///path)".into()))?;
        tls::check_trust_domain(&raw.trust_domain).map_err(|e| invalid("trust_domain", e))?;
        if raw.clock_skew_ms > 600_000 {
            return Err(invalid(
                "clock_skew_ms",
                "at most 600000 (10 minutes)".into(),
            ));
        }
        if !(1_000..=86_400_000).contains(&raw.max_command_validity_ms) {
            return Err(invalid(
                "max_command_validity_ms",
                "must be between 1000 and 86400000".into(),
            ));
        }
        let receipt_key = KeyPair::load(&config::resolve(base, &raw.receipt_key))
            .map_err(|e| invalid("receipt_key", e.to_string()))?;
        let own = SpiffeId::new(&raw.trust_domain, Role::Spoke, raw.spoke_id.as_str());
        let tls = TlsMaterial::load_as(&raw.tls.resolved(base), &own)
            .map_err(|e| invalid(e.field(), e.to_string()))?;

        if raw.trusted_hubs.is_empty() {
            return Err(invalid(
                "trusted_hubs",
                "no hub is trusted, so every command would be refused; add a [[trusted_hubs]] entry".into(),
            ));
        }
        let mut trusted_hubs = Vec::new();
        for (i, hub) in raw.trusted_hubs.into_iter().enumerate() {
            if hub.keys.is_empty() {
                return Err(invalid(
                    &format!("trusted_hubs[{i}].keys"),
                    "list at least one public key file".into(),
                ));
            }
            let keys = hub
                .keys
                .iter()
                .map(|k| PublicKey::load(&config::resolve(base, k)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(&format!("trusted_hubs[{i}].keys"), e.to_string()))?;
            if trusted_hubs
                .iter()
                .any(|h: &TrustedHub| h.hub_id == hub.hub_id)
            {
                return Err(invalid(
                    &format!("trusted_hubs[{i}].hub_id"),
                    format!("hub {} is listed twice", hub.hub_id),
                ));
            }
            // A key belongs to exactly one hub: that is what "trusted for this hub" checks.
            for key in &keys {
                if let Some(other) = trusted_hubs
                    .iter()
                    .find(|h| h.keys.iter().any(|k| k.id() == key.id()))
                {
                    return Err(invalid(
                        &format!("trusted_hubs[{i}].keys"),
                        format!(
                            "key {} is already trusted for hub {}; a key may belong to one hub only",
                            key.id(),
                            other.hub_id
                        ),
                    ));
                }
            }
            trusted_hubs.push(TrustedHub {
                hub_id: hub.hub_id,
                keys,
            });
        }

        let mut profiles = BTreeMap::new();
        for (name, p) in raw.profiles {
            let field = |k: &str| format!("profiles.{name}.{k}");
            let pname = ProfileName::parse_field("profile", name.clone())
                .map_err(|e| invalid(&format!("profiles.{name}"), e.to_string()))?;
            if !p.program.is_absolute() {
                return Err(invalid(
                    &field("program"),
                    format!(
                        "{} must be an absolute path (profiles never search PATH)",
                        p.program.display()
                    ),
                ));
            }
            if !is_executable_file(&p.program) {
                return Err(invalid(
                    &field("program"),
                    format!("{} is not an executable file", p.program.display()),
                ));
            }
            if let Some(bad) = p.env.keys().find(|n| !valid_env_name(n)) {
                return Err(invalid(
                    &field("env"),
                    format!("{bad:?} is not an environment variable name"),
                ));
            }
            if let Some(bad) = p.allowed_env.iter().find(|n| !valid_env_name(n)) {
                return Err(invalid(
                    &field("allowed_env"),
                    format!("{bad:?} is not an environment variable name"),
                ));
            }
            let root = config::resolve(base, &p.workdir_root);
            std::fs::create_dir_all(&root).map_err(|e| {
                invalid(
                    &field("workdir_root"),
                    format!("cannot create {}: {e}", root.display()),
                )
            })?;
            let workdir_root = root
                .canonicalize()
                .map_err(|e| invalid(&field("workdir_root"), format!("{}: {e}", root.display())))?;
            if p.kill_grace_ms > 600_000 {
                return Err(invalid(
                    &field("kill_grace_ms"),
                    "at most 600000 (10 minutes)".into(),
                ));
            }
            profiles.insert(
                pname.clone(),
                Arc::new(Profile {
                    name: pname,
                    program: p.program,
                    args: p.args,
                    allowed_env: p.allowed_env,
                    env: p.env,
                    workdir_root,
                    kill_grace: Duration::from_millis(p.kill_grace_ms),
                }),
            );
        }

        Ok(SpokeConfig {
            spoke_id: raw.spoke_id,
            trust_domain: raw.trust_domain,
            listen: raw.listen,
            valkey_url,
            receipt_key: Arc::new(receipt_key),
            clock_skew: Duration::from_millis(raw.clock_skew_ms),
            max_command_validity: Duration::from_millis(raw.max_command_validity_ms),
            tls,
            trusted_hubs,
            profiles,
        })
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// POSIX-portable environment variable names: letters, digits, underscore; no leading digit.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
