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

use crate::output::Format;

/// The file as written. Every key is documented in README.md ("Spoke configuration").
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    spoke_id: SpokeId,
    trust_domain: String,
    listen: SocketAddr,
    valkey_url: Option<String>,
    #[serde(default)]
    valkey_cluster: bool,
    valkey_tls: Option<mosaic_shared::valkey::RawTls>,
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
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    events: RawEvents,
    ops_listen: Option<SocketAddr>,
    #[serde(default = "default_drain_deadline_ms")]
    drain_deadline_ms: u64,
}

fn default_drain_deadline_ms() -> u64 {
    30_000
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEvents {
    retain_max: u64,
    retain_ms: u64,
}

impl Default for RawEvents {
    fn default() -> Self {
        RawEvents {
            retain_max: 1_000_000,
            retain_ms: 24 * 3_600_000,
        }
    }
}

/// Retention of the spoke's event stream: what a reader that fell behind can still resume
/// from. Older events are trimmed, and a cursor into them gets `resync_required`.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// At most this many stream entries are kept ...
    pub retain_max: u64,
    /// ... and none older than this.
    pub retain: Duration,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    concurrency: usize,
    priority: u8,
    max_retries: u32,
    backoff_base_ms: u64,
    backoff_cap_ms: u64,
    lease_ms: u64,
    retain_finished_ms: u64,
    retain_finished_max: usize,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            concurrency: 5,
            priority: 5,
            max_retries: 3,
            backoff_base_ms: 1000,
            backoff_cap_ms: 60_000,
            lease_ms: 15_000,
            retain_finished_ms: 7 * 24 * 3_600_000,
            retain_finished_max: 10_000,
        }
    }
}

/// The scheduler's settings and the defaults of a spawn's scheduling options.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Most attempts running at once on this spoke.
    pub concurrency: usize,
    pub default_priority: u8,
    pub default_max_retries: u32,
    pub default_backoff_base: Duration,
    pub default_backoff_cap: Duration,
    /// How long an attempt's lease lasts without renewal; a crashed spoke's attempts are
    /// recovered once their leases run out.
    pub lease: Duration,
    /// Finished jobs are deleted after this long ...
    pub retain_finished: Duration,
    /// ... or beyond this many per terminal state, oldest first.
    pub retain_finished_max: usize,
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
    keys: Vec<RawKey>,
}

/// A trusted key: its file, or its file and the moment after which it is refused.
#[derive(Debug, serde::Deserialize)]
#[serde(
    untagged,
    expecting = "a public key file, or a table { path = \"key.pub.pem\", not_after = 2027-01-01T00:00:00Z }"
)]
enum RawKey {
    Path(PathBuf),
    Until(RawKeyUntil),
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyUntil {
    path: PathBuf,
    not_after: toml::value::Datetime,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    program: Option<PathBuf>,
    /// A built-in agent instead of a program: only `"noop"` (completes at once, in process),
    /// which exists for measuring the scheduler without process costs.
    builtin: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    allowed_env: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir_root: PathBuf,
    #[serde(default = "default_kill_grace_ms")]
    kill_grace_ms: u64,
    concurrency: Option<usize>,
    /// How the agent's stdout is read: `"plain"` (lines, plus the structured JSON lines
    /// documented in `output`) or `"claude-stream-json"`.
    #[serde(default)]
    format: Format,
    /// After a Claude Code agent prints its final `result`, how long it may take to exit
    /// before it is stopped.
    #[serde(default = "default_result_grace_ms")]
    result_grace_ms: u64,
}

fn default_result_grace_ms() -> u64 {
    5_000
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
    /// A built-in, in-process agent (`builtin = "noop"`): no process is started.
    pub noop: bool,
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
    /// Most attempts of this profile running at once (within the spoke-wide limit).
    pub concurrency: Option<usize>,
    pub format: Format,
    /// How long a Claude Code agent may take to exit after its final `result`.
    pub result_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TrustedHub {
    pub hub_id: HubId,
    pub keys: Vec<TrustedKey>,
}

/// A key a hub may sign with, until `not_after_ms` (unix ms) if set: during a rotation the old
/// and the new key are both trusted, and the old one stops being trusted on its own.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub key: PublicKey,
    pub not_after_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct SpokeConfig {
    pub spoke_id: SpokeId,
    pub trust_domain: String,
    pub listen: SocketAddr,
    /// Where the spoke's Valkey is: `valkey_url`, `valkey_cluster` and `[valkey_tls]`.
    pub valkey: mosaic_shared::valkey::Target,
    pub receipt_key: Arc<KeyPair>,
    /// How far a command's validity window may be off from our clock and still be accepted.
    pub clock_skew: Duration,
    /// The longest validity window (expires - issued) accepted; bounds the replay store's TTL.
    pub max_command_validity: Duration,
    pub tls: TlsMaterial,
    pub trusted_hubs: Vec<TrustedHub>,
    pub profiles: BTreeMap<ProfileName, Arc<Profile>>,
    pub queue: QueueConfig,
    pub events: EventsConfig,
    /// The plaintext operations port (metrics, health); none: not served.
    pub ops_listen: Option<SocketAddr>,
    /// On SIGTERM, how long running agents may go on before they are stopped and re-queued.
    pub drain_deadline: Duration,
    /// Where this config came from, so that it can be read again (`crate::reload`).
    pub source: config::ConfigSource,
    /// The files whose change triggers a reload: the config, the TLS certificate, key and CA
    /// bundle, and the trusted keys.
    pub watched_files: Vec<PathBuf>,
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
        let valkey = mosaic_shared::valkey::Target::new(
            valkey_url,
            raw.valkey_cluster,
            raw.valkey_tls.as_ref(),
            base,
        )
        .map_err(|(field, message)| invalid(field, message))?;
        tls::check_trust_domain(&raw.trust_domain).map_err(|e| invalid("trust_domain", e))?;
        if raw.clock_skew_ms > 600_000 {
            return Err(invalid(
                "clock_skew_ms",
                "at most 600000 (10 minutes)".into(),
            ));
        }
        if raw.drain_deadline_ms > 3_600_000 {
            return Err(invalid(
                "drain_deadline_ms",
                "at most 3600000 (an hour); 0 stops running agents at once".into(),
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
        let tls_paths = raw.tls.resolved(base);
        let mut watched_files = vec![
            path.to_owned(),
            tls_paths.cert.clone(),
            tls_paths.key.clone(),
            tls_paths.ca.clone(),
        ];
        let tls = TlsMaterial::load_as(&tls_paths, &own)
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
            let mut keys = Vec::new();
            for (k, raw_key) in hub.keys.iter().enumerate() {
                let field = format!("trusted_hubs[{i}].keys[{k}]");
                let (path, not_after_ms) = match raw_key {
                    RawKey::Path(p) => (p, None),
                    RawKey::Until(u) => (
                        &u.path,
                        Some(unix_ms_of(&u.not_after).map_err(|e| invalid(&field, e))?),
                    ),
                };
                let path = config::resolve(base, path);
                let key = PublicKey::load(&path).map_err(|e| invalid(&field, e.to_string()))?;
                watched_files.push(path);
                keys.push(TrustedKey { key, not_after_ms });
            }
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
                    .find(|h| h.keys.iter().any(|k| k.key.id() == key.key.id()))
                {
                    return Err(invalid(
                        &format!("trusted_hubs[{i}].keys"),
                        format!(
                            "key {} is already trusted for hub {}; a key may belong to one hub only",
                            key.key.id(),
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
            let (program, noop) = match (p.program, p.builtin.as_deref()) {
                (Some(program), None) => {
                    if !program.is_absolute() {
                        return Err(invalid(
                            &field("program"),
                            format!(
                                "{} must be an absolute path (profiles never search PATH)",
                                program.display()
                            ),
                        ));
                    }
                    if !is_executable_file(&program) {
                        return Err(invalid(
                            &field("program"),
                            format!("{} is not an executable file", program.display()),
                        ));
                    }
                    (program, false)
                }
                (None, Some("noop")) => (PathBuf::from("builtin:noop"), true),
                (None, Some(other)) => {
                    return Err(invalid(
                        &field("builtin"),
                        format!("{other:?} is not a built-in agent (the only one is \"noop\")"),
                    ));
                }
                _ => {
                    return Err(invalid(
                        &field("program"),
                        "give exactly one of program (an absolute path) or builtin = \"noop\""
                            .into(),
                    ));
                }
            };
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
            if p.result_grace_ms > 600_000 {
                return Err(invalid(
                    &field("result_grace_ms"),
                    "at most 600000 (10 minutes)".into(),
                ));
            }
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
                    program,
                    noop,
                    args: p.args,
                    allowed_env: p.allowed_env,
                    env: p.env,
                    workdir_root,
                    kill_grace: Duration::from_millis(p.kill_grace_ms),
                    concurrency: p.concurrency,
                    format: p.format,
                    result_grace: Duration::from_millis(p.result_grace_ms),
                }),
            );
        }

        let q = raw.queue;
        let queue_field = |k: &str| format!("queue.{k}");
        if !(1..=10_000).contains(&q.concurrency) {
            return Err(invalid(
                &queue_field("concurrency"),
                "must be between 1 and 10000".into(),
            ));
        }
        if !(1..=10).contains(&q.priority) {
            return Err(invalid(
                &queue_field("priority"),
                "must be between 1 and 10".into(),
            ));
        }
        if q.max_retries > crate::job::MAX_RETRIES {
            return Err(invalid(
                &queue_field("max_retries"),
                format!("at most {}", crate::job::MAX_RETRIES),
            ));
        }
        if q.backoff_base_ms == 0 || q.backoff_cap_ms < q.backoff_base_ms {
            return Err(invalid(
                &queue_field("backoff_cap_ms"),
                "backoff_base_ms must be positive and backoff_cap_ms at least backoff_base_ms"
                    .into(),
            ));
        }
        if !(60_000..=365 * 24 * 3_600_000).contains(&q.retain_finished_ms) {
            return Err(invalid(
                &queue_field("retain_finished_ms"),
                "must be between 60000 (a minute) and 31536000000 (a year)".into(),
            ));
        }
        if !(1..=10_000_000).contains(&q.retain_finished_max) {
            return Err(invalid(
                &queue_field("retain_finished_max"),
                "must be between 1 and 10000000".into(),
            ));
        }
        if !(1_000..=600_000).contains(&q.lease_ms) {
            return Err(invalid(
                &queue_field("lease_ms"),
                "must be between 1000 and 600000".into(),
            ));
        }
        let e = raw.events;
        mosaic_shared::stream::check_retention(e.retain_max, e.retain_ms)
            .map_err(|(field, message)| invalid(&format!("events.{field}"), message.into()))?;
        for (name, p) in &profiles {
            if p.concurrency == Some(0) {
                return Err(invalid(
                    &format!("profiles.{name}.concurrency"),
                    "must be at least 1 (omit it for no per-profile limit)".into(),
                ));
            }
        }

        Ok(SpokeConfig {
            queue: QueueConfig {
                concurrency: q.concurrency,
                default_priority: q.priority,
                default_max_retries: q.max_retries,
                default_backoff_base: Duration::from_millis(q.backoff_base_ms),
                default_backoff_cap: Duration::from_millis(q.backoff_cap_ms),
                lease: Duration::from_millis(q.lease_ms),
                retain_finished: Duration::from_millis(q.retain_finished_ms),
                retain_finished_max: q.retain_finished_max,
            },
            events: EventsConfig {
                retain_max: e.retain_max,
                retain: Duration::from_millis(e.retain_ms),
            },
            spoke_id: raw.spoke_id,
            trust_domain: raw.trust_domain,
            listen: raw.listen,
            valkey,
            receipt_key: Arc::new(receipt_key),
            clock_skew: Duration::from_millis(raw.clock_skew_ms),
            max_command_validity: Duration::from_millis(raw.max_command_validity_ms),
            tls,
            trusted_hubs,
            profiles,
            ops_listen: raw.ops_listen,
            drain_deadline: Duration::from_millis(raw.drain_deadline_ms),
            source: config::ConfigSource {
                path: path.to_owned(),
                env: env.clone(),
            },
            watched_files,
        })
    }
}

/// A TOML date-time with an offset as unix milliseconds.
fn unix_ms_of(d: &toml::value::Datetime) -> Result<i64, String> {
    if d.date.is_none() || d.time.is_none() || d.offset.is_none() {
        return Err(format!(
            "not_after = {d} needs a date, a time and an offset, e.g. 2027-01-01T00:00:00Z"
        ));
    }
    let t = time::OffsetDateTime::parse(
        &d.to_string(),
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| format!("not_after = {d}: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("not_after = {d} is out of range"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Result<i64, String> {
        unix_ms_of(&s.parse().unwrap())
    }

    #[test]
    fn not_after_dates_are_unix_milliseconds() {
        assert_eq!(ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(ms("1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(ms("2027-01-01T00:00:00Z"), Ok(1_798_761_600_000));
        assert_eq!(ms("2024-02-29T12:30:00.250Z"), Ok(1_709_209_800_250));
        assert_eq!(ms("1969-12-31T23:59:59Z"), Ok(-1000));
        assert!(ms("2027-01-01T00:00:00").unwrap_err().contains("offset"));
        assert!(ms("2027-01-01").is_err());
    }
}
