//! The hub under test in the events benchmark: a real `mosaic-hub serve` **process**, with its
//! own `hub.toml`, tokens file and log in the fixture's directory, following one spoke. It runs
//! apart from the benchmark so that its memory and CPU time can be read from
//! `/proc/<pid>/status` and `/proc/<pid>/stat` without the spoke, the watchers' clients or the
//! benchmark itself in them. Killed when dropped.
//!
//! This module never measures anything itself; it reads counters for whoever does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mosaic_hub::auth;
use mosaic_hub::certs;
use mosaic_shared::pb::admin::v1::admin_client::AdminClient;
use mosaic_shared::tls::{self, DialOptions, Role, SpiffeId, TlsMaterial};
use tonic::transport::Channel;

use crate::fixture::{Fixture, HUB_ID, SPOKE, TRUST_DOMAIN_NAME};

/// How long `mosaic-hub serve` may take to say where it listens.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// The log line that carries the admin API's bound address (field `addr`).
const READY_MESSAGE: &str = "hub serving the admin API";

/// The `mosaic-hub` binary: `path` if given, else the one beside this executable (cargo builds
/// both into the same `target/release`).
pub fn locate(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match path {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("this executable has no directory")?
            .join("mosaic-hub"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "{} not found; build it with `cargo build --release -p mosaic-hub` (bench/run.sh does) or pass --hub-bin",
        bin.display()
    );
    Ok(bin)
}

/// A running `mosaic-hub serve`.
pub struct HubProcess {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    log: PathBuf,
    config: PathBuf,
    /// A viewer token of workspace `workspace`, for `authorization: Bearer`.
    token: String,
    ca: PathBuf,
}

impl HubProcess {
    /// Writes `hub.toml` (following the spoke at `spoke_addr`, log in `valkey_url`) and a
    /// tokens file with one viewer token for `workspace`, starts `bin serve` and waits until
    /// it listens.
    pub async fn start(
        bin: &Path,
        fx: &Fixture,
        valkey_url: &str,
        spoke_addr: SocketAddr,
        workspace: &str,
    ) -> anyhow::Result<Self> {
        let root = fx.dir();
        let token = auth::new_token(
            "bench".parse()?,
            "viewer".parse()?,
            auth::WorkspaceScope::parse([workspace])?,
        )?;
        std::fs::write(root.join("tokens.toml"), token.toml_entry())?;
        let config = root.join("hub.toml");
        std::fs::write(&config, hub_toml(valkey_url, spoke_addr))?;
        let log = root.join("hub.log");
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            // A clean environment: the user's MOSAIC_* variables must not change what is
            // measured. Only the start-up line is needed from the log; `info` would also
            // format a line per watch opened.
            .env_clear()
            .env("MOSAIC_LOG", "warn,mosaic_hub::server=info")
            .env("MOSAIC_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("a just-started hub has a pid")?;
        let mut hub = HubProcess {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            config,
            token: token.token().to_owned(),
            ca: root.join("pki").join(certs::CA_CERT),
        };
        hub.addr = hub.wait_ready().await?;
        Ok(hub)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if v["fields"]["message"] == READY_MESSAGE {
                    let addr = v["fields"]["addr"].as_str().unwrap_or_default();
                    return addr
                        .parse()
                        .with_context(|| format!("the hub logged addr {addr:?}"));
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("mosaic-hub serve exited with {status} before it listened:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("mosaic-hub serve does not listen after {READY_WITHIN:?}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `hub.toml` it serves with; the benchmark signs its spawns with the same key.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// A new HTTP/2 connection to the admin API (TLS, the hub's identity checked).
    pub async fn connect(&self) -> anyhow::Result<AdminClient<Channel>> {
        let trust = TlsMaterial::trust_only(&self.ca)?;
        let channel = tls::connect(
            &self.addr.to_string(),
            SpiffeId::new(TRUST_DOMAIN_NAME, Role::Hub, HUB_ID),
            &trust,
            DialOptions::default(),
        )
        .await?;
        Ok(AdminClient::new(channel))
    }

    /// Resident memory now and at its peak since start (`VmRSS`, `VmHWM`), in KiB.
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{}/status", self.pid))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// User + system CPU time of the hub process so far, in seconds (10 ms ticks).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::mosaic::cpu_seconds_of(&format!("/proc/{}/stat", self.pid))
    }

    /// Ends the hub now. Nothing of it is kept: the next measurement starts a new one on a
    /// flushed Valkey.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `hub.toml` with relative paths (resolved against the fixture's directory, where it is
/// written). `listen` must parse but is not where the hub ends up: port 0 lets the kernel
/// choose, and the hub logs the address it bound.
fn hub_toml(valkey_url: &str, spoke_addr: SocketAddr) -> String {
    format!(
        r#"# Written by mosaic-bench.
hub_id = {hub}
trust_domain = {td}
signing_key = "keys/{HUB_ID}.pem"
listen = "127.0.0.1:0"
valkey_url = {valkey}
tokens = "tokens.toml"

[tls]
cert = {cert}
key = {key}
ca = {ca}

[[spokes]]
id = {spoke}
address = "{spoke_addr}"
receipt_key = "keys/{SPOKE}.pub.pem"
"#,
        hub = q(HUB_ID),
        td = q(TRUST_DOMAIN_NAME),
        valkey = q(valkey_url),
        cert = q(&format!("pki/{}", certs::cert_file(Role::Hub, HUB_ID))),
        key = q(&format!("pki/{}", certs::key_file(Role::Hub, HUB_ID))),
        ca = q(&format!("pki/{}", certs::CA_CERT)),
        spoke = q(SPOKE),
    )
}
