//! The run's environment: one `valkey-server` child process (unix socket, no persistence),
//! shared by every case of both sides and flushed before each measurement, and the spoke
//! configurations the cases load — a development PKI (with the hub's certificate too, for the
//! events benchmark's hub), the spoke's receipt key and the hub's signing key in a temporary
//! directory, with one `spoke.toml` per concurrency and profile, written the way
//! `mosaic-hub dev` writes its own. Removed, and Valkey killed, when the fixture is dropped.
//!
//! This module never measures anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use mosaic_hub::certs::{self, PkiPlan};
use mosaic_hub::dev::{Valkey, find_valkey_server};
use mosaic_shared::config::Env;
use mosaic_shared::ids::SpokeId;
use mosaic_shared::signing::KeyPair;
use mosaic_shared::tls::Role;
use mosaic_spoke::config::SpokeConfig;

/// The spoke under test; its Valkey keys all start with `mosaic:{bench}:`.
pub const SPOKE: &str = "bench";
const HUB: &str = "hub";
const TRUST_DOMAIN: &str = "bench.local";
/// Profile of the built-in no-op agent.
pub const NOOP_PROFILE: &str = "noop";
/// Profile running a real program.
pub const PROGRAM_PROFILE: &str = "program";
/// Profile running `/bin/sh -c <the job's one argument>` (the events benchmark's agents).
pub const SHELL_PROFILE: &str = "sh";
/// The hub's id in the PKI and in the spoke's trusted hubs.
pub const HUB_ID: &str = HUB;
/// The trust domain of the PKI.
pub const TRUST_DOMAIN_NAME: &str = TRUST_DOMAIN;
/// Above any run's job count: retention must not delete finished jobs while a case counts them.
const RETAIN_FINISHED_MAX: usize = 1_000_000;

pub struct Fixture {
    /// Holds the PKI, keys, configs, Valkey's files and the agents' working directories.
    dir: tempfile::TempDir,
    valkey: Valkey,
    valkey_bin: PathBuf,
    /// For FLUSHALL and INFO; the cases use their own connections.
    admin: redis::aio::MultiplexedConnection,
}

impl Fixture {
    /// Starts Valkey (`MOSAIC_VALKEY_SERVER`, else `valkey-server` on PATH) and writes the PKI
    /// and keys.
    pub async fn start(env: &Env) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("mosaic-bench-").tempdir()?;
        let root = dir.path();
        let valkey_bin = find_valkey_server(env)?;
        let valkey = Valkey::start(&valkey_bin, &root.join("valkey"), &[]).await?;
        let admin = redis::Client::open(valkey.url())?
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to the benchmark's valkey-server")?;

        certs::init(
            &root.join("pki"),
            &PkiPlan {
                trust_domain: TRUST_DOMAIN.into(),
                hubs: vec![HUB.parse()?],
                spokes: vec![SPOKE.parse()?],
                admins: Vec::new(),
                valid_days: 2,
            },
        )?;
        std::fs::create_dir_all(root.join("keys"))?;
        for name in [HUB, SPOKE] {
            KeyPair::generate().write(
                &root.join(format!("keys/{name}.pem")),
                &root.join(format!("keys/{name}.pub.pem")),
            )?;
        }
        Ok(Fixture {
            dir,
            valkey,
            valkey_bin,
            admin,
        })
    }

    pub fn spoke_id(&self) -> SpokeId {
        SPOKE.parse().expect("a valid spoke id")
    }

    pub fn valkey_url(&self) -> String {
        self.valkey.url()
    }

    /// The server's unix socket, for clients that take a path (ioredis).
    pub fn socket(&self) -> PathBuf {
        let url = self.valkey.url();
        PathBuf::from(url.strip_prefix("unix://").unwrap_or(&url))
    }

    pub fn valkey_bin(&self) -> &Path {
        &self.valkey_bin
    }

    /// The run's temporary directory: `pki/` (see [`mosaic_hub::certs`]) and `keys/` hold the
    /// hub's and the spoke's keys, `<name>.pem` and `<name>.pub.pem`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A scratch directory for agents' working directories.
    pub fn workdir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Empties the keyspace, synchronously, so that a case starts from nothing and no
    /// background freeing of the last one competes with it. Loaded scripts survive.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        redis::cmd("FLUSHALL")
            .arg("SYNC")
            .query_async::<()>(&mut self.admin)
            .await
            .context("FLUSHALL failed")
    }

    /// `INFO server`, as field/value pairs.
    pub async fn server_info(&mut self) -> anyhow::Result<Vec<(String, String)>> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.admin)
            .await?;
        Ok(info
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect())
    }

    /// The server's CPU time so far and the commands it has executed (scripts and the commands
    /// they call each count), to charge a timed section with its server-side cost.
    pub async fn server_stats(&self) -> anyhow::Result<ServerStats> {
        let mut con = self.admin.clone();
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query_async(&mut con)
            .await?;
        Ok(ServerStats::parse(&info))
    }

    /// Writes and loads a spoke configuration whose `[queue] concurrency` is `concurrency`,
    /// and one profile: [`PROGRAM_PROFILE`] running `program` if given, else [`NOOP_PROFILE`].
    pub fn spoke_config(
        &self,
        concurrency: usize,
        program: Option<&Path>,
    ) -> anyhow::Result<SpokeConfig> {
        let root = self.dir.path();
        let path = root.join(format!("spoke-c{concurrency}.toml"));
        std::fs::write(
            &path,
            spoke_toml(
                root,
                &self.valkey.url(),
                concurrency,
                &profile(root, program),
            ),
        )?;
        // A clean environment: the user's MOSAIC_* variables must not change what is measured.
        Ok(SpokeConfig::load(&path, &Env::default())?)
    }

    /// Writes and loads a spoke configuration whose one profile, [`SHELL_PROFILE`], runs
    /// `/bin/sh -c` with the job's argument, `concurrency` attempts at once.
    pub fn shell_spoke_config(&self, concurrency: usize) -> anyhow::Result<SpokeConfig> {
        let root = self.dir.path();
        let path = root.join(format!("spoke-sh-c{concurrency}.toml"));
        let profile = format!(
            "[profiles.{SHELL_PROFILE}]\nprogram = \"/bin/sh\"\nargs = [\"-c\"]\nworkdir_root = {}\nkill_grace_ms = 1000\n",
            q(&root.join("work").join(SHELL_PROFILE).display().to_string())
        );
        std::fs::write(
            &path,
            spoke_toml(root, &self.valkey.url(), concurrency, &profile),
        )?;
        Ok(SpokeConfig::load(&path, &Env::default())?)
    }
}

/// Cumulative counters of the server, from `INFO cpu commandstats`.
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    /// `used_cpu_sys + used_cpu_user`: the whole server process.
    pub cpu_seconds: f64,
    /// Per command (lowercase, e.g. `evalsha`, `xadd`): calls and microseconds spent.
    pub commands: BTreeMap<String, (u64, u64)>,
}

impl ServerStats {
    /// Reads the reply of `INFO cpu commandstats`.
    pub fn parse(info: &str) -> Self {
        let mut stats = ServerStats::default();
        for line in info.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            if key == "used_cpu_sys" || key == "used_cpu_user" {
                stats.cpu_seconds += value.parse::<f64>().unwrap_or(0.0);
            } else if let Some(name) = key.strip_prefix("cmdstat_") {
                // cmdstat_<name>:calls=N,usec=N,usec_per_call=...
                let field = |f: &str| {
                    value
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(f))
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                stats
                    .commands
                    .insert(name.to_owned(), (field("calls="), field("usec=")));
            }
        }
        stats
    }

    /// What the server spent between `self` and `later`, per job.
    pub fn per_job(&self, later: &ServerStats, jobs: usize) -> ServerLoad {
        let jobs = jobs.max(1) as f64;
        let mut commands = BTreeMap::new();
        for (name, &(calls, usec)) in &later.commands {
            let (calls0, usec0) = self.commands.get(name).copied().unwrap_or_default();
            let calls = calls.saturating_sub(calls0);
            if calls > 0 {
                commands.insert(
                    name.clone(),
                    CommandLoad {
                        calls_per_job: calls as f64 / jobs,
                        usec_per_job: usec.saturating_sub(usec0) as f64 / jobs,
                    },
                );
            }
        }
        ServerLoad {
            cpu_us_per_job: (later.cpu_seconds - self.cpu_seconds) * 1e6 / jobs,
            calls_per_job: commands.values().map(|c| c.calls_per_job).sum(),
            commands,
        }
    }
}

/// The server's work per job during a timed section.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerLoad {
    /// valkey-server CPU time (user + system), microseconds per job.
    pub cpu_us_per_job: f64,
    /// Commands executed per job, counting each script call and each command inside it.
    pub calls_per_job: f64,
    /// The same by command. A script's time includes that of the commands it calls.
    pub commands: BTreeMap<String, CommandLoad>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CommandLoad {
    pub calls_per_job: f64,
    pub usec_per_job: f64,
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The `[profiles.*]` table of the scheduler cases: the no-op agent, or `program`.
fn profile(root: &Path, program: Option<&Path>) -> String {
    let p = |path: PathBuf| q(&path.display().to_string());
    match program {
        None => format!(
            "[profiles.{NOOP_PROFILE}]\nbuiltin = \"noop\"\nworkdir_root = {}\n",
            p(root.join("work").join(NOOP_PROFILE))
        ),
        Some(program) => format!(
            "[profiles.{PROGRAM_PROFILE}]\nprogram = {}\nworkdir_root = {}\nkill_grace_ms = 1000\n",
            p(program.to_owned()),
            p(root.join("work").join(PROGRAM_PROFILE))
        ),
    }
}

fn spoke_toml(root: &Path, valkey_url: &str, concurrency: usize, profile: &str) -> String {
    let pki = root.join("pki");
    let p = |path: PathBuf| q(&path.display().to_string());
    format!(
        r#"# Written by mosaic-bench.
spoke_id = {spoke}
trust_domain = {td}
# Not bound: the benchmark hands the spoke a listener of its own.
listen = "127.0.0.1:0"
valkey_url = {valkey}
receipt_key = {receipt_key}

[tls]
cert = {cert}
key = {key}
ca = {ca}

[[trusted_hubs]]
hub_id = {hub}
keys = [{hub_key}]

[queue]
concurrency = {concurrency}
retain_finished_max = {RETAIN_FINISHED_MAX}

{profile}"#,
        spoke = q(SPOKE),
        td = q(TRUST_DOMAIN),
        valkey = q(valkey_url),
        receipt_key = p(root.join(format!("keys/{SPOKE}.pem"))),
        cert = p(pki.join(certs::cert_file(Role::Spoke, SPOKE))),
        key = p(pki.join(certs::key_file(Role::Spoke, SPOKE))),
        ca = p(pki.join(certs::CA_CERT)),
        hub = q(HUB),
        hub_key = p(root.join(format!("keys/{HUB}.pub.pem"))),
    )
}
