//! Test harness: real federations on one machine.
//!
//! `Federation::builder().spoke("a").start()` makes a fresh temp dir, a development PKI (one
//! CA, certificates for the hubs and spokes), signing keys, a fresh `valkey-server` on a unix
//! socket without persistence, and one real `mosaic-spoke` process per spoke (its own process
//! group, logs kept in the temp dir), then loads a hub config that addresses them. Everything is
//! killed when the federation is dropped. The binaries come from the same target directory as
//! this test (`cargo build --workspace --bins` first; `deploy/test.sh` does).

pub mod otlp;
pub mod proxy;
pub mod valkey;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mosaic_hub::certs::{self, PkiPlan};
use mosaic_hub::config::HubConfig;
use mosaic_hub::dev::{Valkey, find_valkey_server};
use mosaic_hub::spokes::SpokeClient;
use mosaic_shared::config::Env;
use mosaic_shared::ids::{CommandId, SpokeId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::pb::federation::v1::federation_client::FederationClient;
use mosaic_shared::signing::{Domain, KeyPair};
use mosaic_shared::tls::{self, DialOptions, Role, SpiffeId, TlsMaterial, TlsPaths};
use prost::Message as _;
use tonic::transport::Channel;

pub const TRUST_DOMAIN: &str = "test.local";
/// The hub every spoke trusts; `other-hub` is trusted too, with its own key.
pub const HUB: &str = "hub";
pub const OTHER_HUB: &str = "other-hub";

/// Path of a binary built from this workspace.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (deploy/test.sh does)",
        path.display()
    );
    path
}

/// An agent profile as written into spoke.toml.
#[derive(Clone, Debug)]
pub struct ProfileSpec {
    pub program: String,
    pub args: Vec<String>,
    pub allowed_env: Vec<String>,
    pub kill_grace_ms: u64,
    /// Most attempts of this profile at once (`None`: only the spoke-wide limit).
    pub concurrency: Option<usize>,
    /// More `key = value` lines for the profile's table (e.g. `format = "claude-stream-json"`).
    pub extra: Vec<String>,
}

/// Profiles every test spoke offers: `echo`, `true`, and `sh` (a shell: the hub passes the
/// script after `-c`), with a 1 s kill grace.
pub fn default_profiles() -> BTreeMap<String, ProfileSpec> {
    let p = |program: &str, args: &[&str]| ProfileSpec {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        allowed_env: vec!["GREETING".into()],
        kill_grace_ms: 1000,
        concurrency: None,
        extra: Vec::new(),
    };
    [
        ("echo".to_string(), p("/bin/echo", &[])),
        ("true".to_string(), p("/bin/true", &[])),
        ("sh".to_string(), p("/bin/sh", &["-c"])),
    ]
    .into()
}

pub struct FederationBuilder {
    spokes: Vec<String>,
    profiles: BTreeMap<String, ProfileSpec>,
    /// Extra `key = value` lines for the spokes' `[queue]` table.
    queue: Vec<String>,
    /// Valkey with an append-only file (fsync always), so that it can be restarted.
    persistent: bool,
    /// Run `mosaic-hub serve` too.
    hub_server: bool,
    /// Extra lines for hub.toml's `[events]` table.
    hub_events: Vec<String>,
    /// Spokes the hub reaches through a fault-injecting proxy.
    proxied: Vec<String>,
    /// Each spoke's labels in hub.toml, as a TOML inline table.
    labels: BTreeMap<String, String>,
    /// Top-level `key = value` settings of spoke.toml (defaults: an ops port on a free port,
    /// and no drain, so that stopping a test spoke ends its agents at once).
    spoke_settings: BTreeMap<String, String>,
    /// An ACL user (name, password) for Valkey, whose default user is then off.
    valkey_user: Option<(String, String)>,
    topology: Topology,
    /// More environment variables for the spoke and hub processes.
    process_env: Vec<(String, String)>,
}

/// What the test's Valkey is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// One server on a unix socket.
    Single,
    /// A cluster of this many primaries on loopback TCP.
    Cluster(usize),
    /// One server that speaks only TLS on loopback and requires client certificates.
    Tls,
}

impl FederationBuilder {
    pub fn spoke(mut self, id: &str) -> Self {
        self.spokes.push(id.to_owned());
        self
    }

    /// Also runs the hub as a server (`mosaic-hub serve`) with a tokens file holding
    /// [`TOKENS`].
    pub fn hub_server(mut self) -> Self {
        self.hub_server = true;
        self
    }

    /// A `key = value` line for hub.toml's `[events]` table.
    pub fn hub_events(mut self, key: &str, value: &str) -> Self {
        self.hub_events.push(format!("{key} = {value}"));
        self
    }

    /// The hub reaches this spoke through a [`proxy::FaultProxy`] (see [`Federation::proxy`]).
    pub fn via_proxy(mut self, spoke: &str) -> Self {
        self.proxied.push(spoke.to_owned());
        self
    }

    /// Labels of `spoke` in hub.toml, e.g. `&[("zone", "x")]`.
    pub fn labels(mut self, spoke: &str, labels: &[(&str, &str)]) -> Self {
        let pairs: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k} = {}", q(v)))
            .collect();
        self.labels
            .insert(spoke.to_owned(), format!("{{ {} }}", pairs.join(", ")));
        self
    }

    pub fn profile(mut self, name: &str, spec: ProfileSpec) -> Self {
        self.profiles.insert(name.to_owned(), spec);
        self
    }

    /// Sets a top-level `key = value` (TOML) of spoke.toml, e.g. `drain_deadline_ms`.
    pub fn spoke_setting(mut self, key: &str, value: &str) -> Self {
        self.spoke_settings.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets `key = value` (TOML) in the spokes' `[queue]` table.
    pub fn queue(mut self, key: &str, value: &str) -> Self {
        self.queue.push(format!("{key} = {value}"));
        self
    }

    /// Runs Valkey with its default user off and one ACL user with `password`; hub and spokes
    /// (and [`Federation::valkey_url`]) authenticate as that user.
    pub fn valkey_user(mut self, name: &str, password: &str) -> Self {
        self.valkey_user = Some((name.to_owned(), password.to_owned()));
        self
    }

    /// Runs Valkey with AOF (`appendfsync always`), for tests that restart it.
    /// Valkey is a cluster of `nodes` primaries (real `valkey-server` processes in cluster
    /// mode), which hub and spokes reach with `valkey_cluster = true`.
    pub fn valkey_cluster(mut self, nodes: usize) -> Self {
        self.topology = Topology::Cluster(nodes);
        self
    }

    /// Valkey speaks only TLS (`rediss://`) and requires a client certificate; hub and spokes
    /// get `[valkey_tls]`. Needs `$MOSAIC_VALKEY_TLS_SERVER` (see `valkey::find_tls_server`).
    pub fn valkey_tls(mut self) -> Self {
        self.topology = Topology::Tls;
        self
    }

    /// An environment variable for every spoke and hub process (e.g. the OTLP endpoint).
    pub fn process_env(mut self, name: &str, value: &str) -> Self {
        self.process_env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn persistent_valkey(mut self) -> Self {
        self.persistent = true;
        self
    }

    pub async fn start(self) -> anyhow::Result<Federation> {
        let dir = tempfile::Builder::new().prefix("mosaic-it-").tempdir()?;
        let root = dir.path().to_owned();
        let env = Env::from_process();
        let valkey_bin = find_valkey_server(&env)?;
        let mut valkey_args: Vec<String> = if self.persistent {
            ["--appendonly", "yes", "--appendfsync", "always"]
                .map(String::from)
                .into()
        } else {
            vec![]
        };
        let valkey_auth = match &self.valkey_user {
            Some((name, password)) => {
                valkey_args.extend(
                    [
                        "--user",
                        "default",
                        "off",
                        "--user",
                        name,
                        "on",
                        &format!(">{password}"),
                        "~*",
                        "&*",
                        "+@all",
                    ]
                    .map(String::from),
                );
                format!("?user={name}&pass={password}")
            }
            None => String::new(),
        };
        let mut valkey_bin = valkey_bin;
        let (valkey, cluster, valkey_toml) = match self.topology {
            Topology::Single => {
                let args: Vec<&str> = valkey_args.iter().map(String::as_str).collect();
                let valkey = Valkey::start(&valkey_bin, &root.join("valkey"), &args).await?;
                let url = format!("{}{valkey_auth}", valkey.url());
                (Some(valkey), None, valkey::ValkeyToml::plain(url))
            }
            Topology::Cluster(n) => {
                let cluster =
                    valkey::ValkeyCluster::start(&valkey_bin, &root.join("valkey"), n).await?;
                let toml = valkey::ValkeyToml {
                    url: cluster.url(),
                    cluster: true,
                    tls: None,
                };
                (None, Some(cluster), toml)
            }
            Topology::Tls => {
                valkey_bin = valkey::find_tls_server(&env)?;
                let files = valkey::TlsFiles::make(&root.join("valkey-tls"))?;
                let port = valkey::free_port()?;
                valkey_args.extend(files.server_args(port));
                let args: Vec<&str> = valkey_args.iter().map(String::as_str).collect();
                let valkey = Valkey::start(&valkey_bin, &root.join("valkey"), &args).await?;
                let toml = valkey::ValkeyToml {
                    url: format!("rediss://127.0.0.1:{port}{valkey_auth}"),
                    cluster: false,
                    tls: Some(files),
                };
                (Some(valkey), None, toml)
            }
        };

        certs::init(
            &root.join("pki"),
            &PkiPlan {
                trust_domain: TRUST_DOMAIN.into(),
                hubs: vec![HUB.parse()?, OTHER_HUB.parse()?],
                spokes: self
                    .spokes
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?,
                admins: ADMIN_CERTS.iter().map(|a| a.to_string()).collect(),
                valid_days: 2,
            },
        )?;
        std::fs::create_dir_all(root.join("keys"))?;
        for name in [HUB, OTHER_HUB]
            .into_iter()
            .chain(self.spokes.iter().map(String::as_str))
        {
            KeyPair::generate().write(
                &root.join(format!("keys/{name}.pem")),
                &root.join(format!("keys/{name}.pub.pem")),
            )?;
        }

        let mut spokes = BTreeMap::new();
        for id in &self.spokes {
            let config = root.join(format!("{id}.toml"));
            std::fs::write(
                &config,
                spoke_toml(
                    id,
                    &root,
                    &valkey_toml,
                    &self.profiles,
                    &self.queue,
                    &self.spoke_settings,
                ),
            )?;
            let process = SpokeProcess::start(
                "mosaic-spoke",
                &["serve", "--config"],
                &config,
                id,
                &root,
                &self.process_env,
            )?;
            spokes.insert(id.clone(), process);
        }
        for p in spokes.values_mut() {
            p.wait_ready()?;
        }
        let mut proxies = BTreeMap::new();
        for id in &self.proxied {
            let spoke = spokes
                .get(id)
                .and_then(|p| p.addr)
                .context("proxied spoke")?;
            proxies.insert(id.clone(), proxy::FaultProxy::start(spoke)?);
        }
        let hub_path = root.join("hub.toml");
        let tokens = if self.hub_server {
            write_tokens(&root.join("tokens.toml"))?
        } else {
            BTreeMap::new()
        };
        let server = self.hub_server.then(|| HubServer {
            valkey: valkey_toml.clone(),
            events: self.hub_events.clone(),
        });
        let dialled = addresses(&spokes, &proxies);
        std::fs::write(
            &hub_path,
            hub_toml(HUB, &dialled, server.as_ref(), &self.labels),
        )?;
        let hub = HubConfig::load(&hub_path, &Env::default())?;
        // The test's own commands go straight to the spokes, never through a proxy.
        let direct = if proxies.is_empty() {
            None
        } else {
            let path = root.join("hub-direct.toml");
            std::fs::write(
                &path,
                hub_toml(
                    HUB,
                    &addresses(&spokes, &BTreeMap::new()),
                    None,
                    &self.labels,
                ),
            )?;
            Some(HubConfig::load(&path, &Env::default())?)
        };
        let mut fed = Federation {
            dir,
            process_env: self.process_env.clone(),
            valkey,
            cluster,
            valkey_toml,
            valkey_bin,
            valkey_args,
            valkey_auth,
            hub,
            hub_path,
            direct,
            spokes,
            proxies,
            hub_server: server,
            hub_process: None,
            tokens,
        };
        if fed.hub_server.is_some() {
            fed.start_hub()?;
        }
        Ok(fed)
    }
}

pub struct Federation {
    dir: tempfile::TempDir,
    valkey: Option<Valkey>,
    /// The cluster, when the builder asked for one (`valkey` is then none).
    cluster: Option<valkey::ValkeyCluster>,
    /// How hub and spokes reach Valkey.
    valkey_toml: valkey::ValkeyToml,
    /// More environment for the spoke and hub processes (see the builder's `process_env`).
    process_env: Vec<(String, String)>,
    valkey_bin: PathBuf,
    valkey_args: Vec<String>,
    /// `?user=…&pass=…` when Valkey has an ACL user (see `valkey_user`).
    valkey_auth: String,
    pub hub: HubConfig,
    pub hub_path: PathBuf,
    /// The hub config with the spokes' own addresses when some are behind proxies.
    direct: Option<HubConfig>,
    spokes: BTreeMap<String, SpokeProcess>,
    proxies: BTreeMap<String, proxy::FaultProxy>,
    hub_server: Option<HubServer>,
    hub_process: Option<SpokeProcess>,
    /// Admin API tokens by name (see [`TOKENS`]).
    tokens: BTreeMap<String, String>,
}

/// What hub.toml needs for `serve`.
#[derive(Clone)]
struct HubServer {
    valkey: valkey::ValkeyToml,
    events: Vec<String>,
}

/// Admin API clients with a certificate (`pki/admin-<name>.crt`): `ops` has an entry in the
/// tokens file (operator in `ws-test`), `stranger` has none.
pub const ADMIN_CERTS: [&str; 2] = ["ops", "stranger"];

/// The admin API tokens a hub server's tokens file holds: name, role, workspaces.
pub const TOKENS: [(&str, &str, &[&str]); 4] = [
    ("admin", "admin", &["*"]),
    ("operator", "operator", &["ws-test"]),
    ("viewer", "viewer", &["ws-test"]),
    ("other", "operator", &["ws-other"]),
];

fn write_tokens(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    use mosaic_hub::auth;
    let mut file = String::new();
    let mut tokens = BTreeMap::new();
    for (name, role, workspaces) in TOKENS {
        let t = auth::new_token(
            name.parse()?,
            role.parse()?,
            auth::WorkspaceScope::parse(workspaces.iter().copied())?,
        )?;
        file.push_str(&t.toml_entry());
        file.push('\n');
        tokens.insert(name.to_owned(), t.token().to_owned());
    }
    file.push_str(&format!(
        "[[tokens]]\nname = \"ops\"\nidentity = \"spiffe://{TRUST_DOMAIN}/admin/ops\"\nrole = \"operator\"\nworkspaces = [\"ws-test\"]\n"
    ));
    std::fs::write(path, file)?;
    Ok(tokens)
}

/// Each spoke's address as the hub dials it: its own, or its proxy's.
fn addresses(
    spokes: &BTreeMap<String, SpokeProcess>,
    proxies: &BTreeMap<String, proxy::FaultProxy>,
) -> Vec<(String, SocketAddr)> {
    spokes
        .iter()
        .map(|(id, p)| {
            let addr = proxies
                .get(id)
                .map(|x| x.addr())
                .unwrap_or_else(|| p.addr.expect("spoke ready"));
            (id.clone(), addr)
        })
        .collect()
}

impl Federation {
    pub fn builder() -> FederationBuilder {
        FederationBuilder {
            spokes: Vec::new(),
            profiles: default_profiles(),
            queue: Vec::new(),
            persistent: false,
            hub_server: false,
            hub_events: Vec::new(),
            proxied: Vec::new(),
            labels: BTreeMap::new(),
            spoke_settings: BTreeMap::new(),
            valkey_user: None,
            topology: Topology::Single,
            process_env: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL hub and spokes use, with the ACL user's credentials if there is one.
    pub fn valkey_url(&self) -> String {
        self.valkey_toml.url.clone()
    }

    /// The cluster (see [`FederationBuilder::valkey_cluster`]).
    pub fn cluster(&self) -> &valkey::ValkeyCluster {
        self.cluster
            .as_ref()
            .expect("a federation with a Valkey cluster")
    }

    /// A plaintext URL of the single Valkey server (its unix socket), also when hub and
    /// spokes reach it over TLS.
    pub fn valkey_socket_url(&self) -> String {
        format!(
            "{}{}",
            self.valkey.as_ref().expect("valkey running").url(),
            self.valkey_auth
        )
    }

    pub fn spoke_addr(&self, id: &str) -> SocketAddr {
        self.spokes[id].addr.expect("spoke ready")
    }

    /// The spoke process's pid.
    pub fn spoke_pid(&self, id: &str) -> u32 {
        self.spokes[id].child.id()
    }

    /// The spoke's log so far, for assertions and failure messages.
    pub fn spoke_log(&self, id: &str) -> String {
        std::fs::read_to_string(&self.spokes[id].log).unwrap_or_default()
    }

    /// The root of a profile's working directories on a spoke.
    pub fn workdir_root(&self, spoke: &str, profile: &str) -> PathBuf {
        self.dir().join("work").join(spoke).join(profile)
    }

    /// A hub client for `spoke`, dialled with the hub's real config.
    pub async fn client(&self, spoke: &str) -> anyhow::Result<SpokeClient> {
        let config = self.direct.as_ref().unwrap_or(&self.hub);
        Ok(SpokeClient::connect(config, &spoke.parse()?).await?)
    }

    /// TLS material of a hub identity from this federation's PKI.
    pub fn hub_tls(&self, hub: &str) -> TlsMaterial {
        self.tls_of(Role::Hub, hub)
    }

    /// TLS material of a spoke identity from this federation's PKI.
    pub fn spoke_tls(&self, spoke: &str) -> TlsMaterial {
        self.tls_of(Role::Spoke, spoke)
    }

    fn tls_of(&self, role: Role, id: &str) -> TlsMaterial {
        let pki = self.dir().join("pki");
        TlsMaterial::load(&TlsPaths {
            cert: pki.join(certs::cert_file(role, id)),
            key: pki.join(certs::key_file(role, id)),
            ca: pki.join(certs::CA_CERT),
        })
        .expect("TLS material")
    }

    /// A hub signing key of this federation (`hub`, `other-hub`) or any key file stem.
    pub fn key(&self, name: &str) -> KeyPair {
        KeyPair::load(&self.dir().join(format!("keys/{name}.pem"))).expect("key")
    }

    /// A raw federation client for `spoke` using `tls` (any identity, any CA, or none).
    pub async fn raw_client(
        &self,
        spoke: &str,
        tls: &TlsMaterial,
    ) -> Result<FederationClient<Channel>, tls::ConnectError> {
        let channel = tls::connect(
            &self.spoke_addr(spoke).to_string(),
            SpiffeId::new(TRUST_DOMAIN, Role::Spoke, spoke),
            tls,
            DialOptions::default(),
        )
        .await?;
        Ok(FederationClient::new(channel))
    }

    /// Kills the spoke process with SIGKILL (no chance to clean up).
    pub fn kill_spoke(&mut self, id: &str) {
        if let Some(p) = self.spokes.get_mut(id) {
            p.kill_hard();
        }
    }

    /// How many agents (attempts) the spoke has recorded: the sum of its jobs' attempt counts.
    pub async fn agent_count(&self, spoke: &str) -> u64 {
        let keys = mosaic_spoke::store::keys::Keys::new(&spoke_id(spoke));
        let client = redis::Client::open(self.valkey_url()).expect("valkey url");
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("valkey connection");
        let mut jobs: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", keys.job_prefix()))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .expect("SCAN");
            jobs.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut total = 0;
        for job in jobs {
            let attempts: Option<u64> = redis::cmd("HGET")
                .arg(&job)
                .arg("attempts")
                .query_async(&mut con)
                .await
                .expect("HGET");
            total += attempts.unwrap_or(0);
        }
        total
    }

    /// Stops the spoke as an operator would (SIGTERM) and waits for it to exit.
    pub fn kill_spoke_gracefully(&mut self, id: &str) {
        if let Some(p) = self.spokes.get_mut(id) {
            p.stop();
        }
    }

    /// Sends `signal` to the spoke process without waiting for it.
    pub fn signal_spoke(&self, id: &str, signal: nix::sys::signal::Signal) {
        let p = &self.spokes[id];
        let pid = nix::unistd::Pid::from_raw(p.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }

    /// Waits up to `within` for the spoke process to exit; its exit status, if it did.
    pub async fn wait_spoke_exit(
        &mut self,
        id: &str,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let p = self.spokes.get_mut(id)?;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The spoke's ops port (metrics, health), as it logged it.
    pub fn spoke_ops_addr(&self, id: &str) -> SocketAddr {
        self.spokes[id].ops.expect("the spoke has an ops port")
    }

    /// Stops Valkey now.
    pub async fn stop_valkey(&mut self) {
        if let Some(v) = self.valkey.take() {
            v.kill().await;
        }
    }

    /// Kills Valkey (SIGKILL) and starts it again on the same files and socket.
    pub async fn restart_valkey(&mut self) -> anyhow::Result<()> {
        self.stop_valkey().await;
        let args: Vec<&str> = self.valkey_args.iter().map(String::as_str).collect();
        let dir = self.dir().join("valkey");
        self.valkey = Some(Valkey::start(&self.valkey_bin, &dir, &args).await?);
        Ok(())
    }

    /// Starts the spoke again (after `kill_spoke` or `kill_spoke_gracefully`) with the same
    /// config, and points the hub config at its new address. Each start logs to its own file.
    /// Starts the spoke again on the address it had, so that a running hub finds it.
    pub fn restart_spoke(&mut self, id: &str) -> anyhow::Result<()> {
        let root = self.dir().to_owned();
        let path = root.join(format!("{id}.toml"));
        if let Some(addr) = self.spokes.get(id).and_then(|p| p.addr) {
            let text = std::fs::read_to_string(&path)?;
            let text: String = text
                .lines()
                .map(|l| match l {
                    "listen = \"127.0.0.1:0\"" => format!("listen = \"{addr}\"\n"),
                    l => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&path, text)?;
        }
        let mut process = SpokeProcess::start(
            "mosaic-spoke",
            &["serve", "--config"],
            &path,
            id,
            &root,
            &self.process_env,
        )?;
        process.wait_ready()?;
        self.spokes.insert(id.to_owned(), process);
        Ok(())
    }

    fn start_hub(&mut self) -> anyhow::Result<()> {
        let root = self.dir().to_owned();
        let mut process = SpokeProcess::start(
            "mosaic-hub",
            &["serve", "--config"],
            &self.hub_path,
            "hub",
            &root,
            &self.process_env,
        )?;
        process.wait_ready()?;
        self.hub_process = Some(process);
        Ok(())
    }

    /// Kills the hub server with SIGKILL.
    pub fn kill_hub(&mut self) {
        if let Some(mut p) = self.hub_process.take() {
            p.kill_hard();
        }
    }

    /// Starts the hub server again (on a new port: see [`Federation::hub_addr`]).
    pub fn restart_hub(&mut self) -> anyhow::Result<()> {
        self.kill_hub();
        self.start_hub()
    }

    /// The hub server's admin API address.
    pub fn hub_addr(&self) -> SocketAddr {
        self.hub_process
            .as_ref()
            .and_then(|p| p.addr)
            .expect("hub server running")
    }

    /// The hub server's ops port (metrics, health), from its `hub serving the admin API` line.
    pub fn hub_ops_addr(&self) -> SocketAddr {
        self.hub_process
            .as_ref()
            .and_then(|p| p.ops)
            .expect("hub server running with an ops port")
    }

    /// The hub server's HTTP address (from its `hub serving HTTP` log line).
    pub fn hub_http_addr(&self) -> SocketAddr {
        self.hub_log()
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "hub serving HTTP")
            .find_map(|v| v["fields"]["addr"].as_str()?.parse().ok())
            .expect("the hub serves HTTP")
    }

    /// Sends one HTTP/1.1 GET to the hub's HTTP API over TLS (checking the hub's identity)
    /// and returns the status code, the headers' text and a reader of the (de-chunked) body.
    pub async fn hub_http_get(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String, HttpBody)> {
        self.hub_http("GET", path_and_query, headers, None).await
    }

    /// One HTTP/1.1 request with an optional JSON body, as [`Federation::hub_http_get`].
    pub async fn hub_http(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String, HttpBody)> {
        self.hub_http_as(None, method, path_and_query, headers, body)
            .await
    }

    /// [`Federation::hub_http`], presenting the certificate of admin client `client` (see
    /// [`ADMIN_CERTS`]) if given.
    pub async fn hub_http_as(
        &self,
        client: Option<&str>,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String, HttpBody)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let pki = self.dir().join("pki");
        let mut trust = TlsMaterial::trust_only(&pki.join(certs::CA_CERT))?;
        if let Some(name) = client {
            trust = trust.with_client_certificate(
                &pki.join(certs::cert_file(Role::Admin, name)),
                &pki.join(certs::key_file(Role::Admin, name)),
            )?;
        }
        let mut config = trust.rustls_client_config(SpiffeId::new(TRUST_DOMAIN, Role::Hub, HUB))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(self.hub_http_addr()).await?;
        let mut tls = connector
            .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
            .await?;
        // The server closes after the response, so a body without a length ends at EOF.
        let mut request = format!(
            "{method} {path_and_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or(""));
        tls.write_all(request.as_bytes()).await?;
        // TLS buffers what is written until flushed.
        tls.flush().await?;
        // Read up to the end of the headers.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if tls.read(&mut byte).await? == 0 {
                bail!("the connection closed inside the response headers");
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status code")?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok((
            status,
            head,
            HttpBody {
                tls,
                chunked,
                buf: Vec::new(),
            },
        ))
    }
    pub fn hub_log(&self) -> String {
        self.hub_process
            .as_ref()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }

    /// An admin API token of the hub server's tokens file (see [`TOKENS`]).
    pub fn token(&self, name: &str) -> String {
        self.tokens[name].clone()
    }

    /// The proxy between the hub and `spoke` (see [`FederationBuilder::via_proxy`]).
    pub fn proxy(&self, spoke: &str) -> &proxy::FaultProxy {
        &self.proxies[spoke]
    }

    /// An admin API client of the hub server, checking its identity against the CA.
    pub async fn admin(
        &self,
    ) -> anyhow::Result<mosaic_shared::pb::admin::v1::admin_client::AdminClient<Channel>> {
        let trust = TlsMaterial::trust_only(&self.dir().join("pki").join(certs::CA_CERT))?;
        self.admin_over(trust).await
    }

    /// An admin API client presenting the certificate of `role`/`name` (e.g. an admin client
    /// of [`ADMIN_CERTS`], or a spoke's certificate) instead of a token.
    pub async fn admin_with_cert(
        &self,
        role: Role,
        name: &str,
    ) -> anyhow::Result<mosaic_shared::pb::admin::v1::admin_client::AdminClient<Channel>> {
        let pki = self.dir().join("pki");
        let material = TlsMaterial::trust_only(&pki.join(certs::CA_CERT))?
            .with_client_certificate(
                &pki.join(certs::cert_file(role, name)),
                &pki.join(certs::key_file(role, name)),
            )?;
        self.admin_over(material).await
    }

    async fn admin_over(
        &self,
        trust: TlsMaterial,
    ) -> anyhow::Result<mosaic_shared::pb::admin::v1::admin_client::AdminClient<Channel>> {
        let channel = tls::connect(
            &self.hub_addr().to_string(),
            SpiffeId::new(TRUST_DOMAIN, Role::Hub, HUB),
            &trust,
            DialOptions::default(),
        )
        .await?;
        Ok(mosaic_shared::pb::admin::v1::admin_client::AdminClient::new(channel))
    }
}

/// A command built field by field, for tests that forge or bend the protocol.
#[derive(Clone, Debug)]
pub struct RawCommand {
    pub command: pb::Command,
}

impl RawCommand {
    /// A well-formed command from `hub` to `spoke`, valid for a minute from now.
    pub fn new(hub: &str, spoke: &str, key: &KeyPair, action: pb::command::Action) -> Self {
        let now = mosaic_shared::time::unix_ms();
        RawCommand {
            command: pb::Command {
                command_id: CommandId::generate().to_string(),
                hub_id: hub.into(),
                spoke_id: spoke.into(),
                key_id: key.id().to_string(),
                issued_at_ms: now,
                expires_at_ms: now + 60_000,
                action: Some(action),
                ..Default::default()
            },
        }
    }

    /// Encodes and signs with `key`, naming `key` in the envelope.
    pub fn seal(&self, key: &KeyPair) -> pb::SignedCommand {
        let bytes = self.command.encode_to_vec();
        pb::SignedCommand {
            signature: key.sign(Domain::Command, &bytes),
            command: bytes,
            key_id: key.id().to_string(),
        }
    }
}

/// A spawn of `profile` with `args` that is never retried (so one attempt per job).
pub fn spawn_action(profile: &str, args: &[&str]) -> pb::command::Action {
    spawn_with(profile, args, |s| s.max_retries = Some(0))
}

/// A spawn of `profile` with `args`, adjusted by `f` (scheduling options, env, workdir).
pub fn spawn_with(
    profile: &str,
    args: &[&str],
    f: impl FnOnce(&mut pb::Spawn),
) -> pb::command::Action {
    let mut s = pb::Spawn {
        profile: profile.into(),
        workspace: "ws-test".into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    f(&mut s);
    pb::command::Action::Spawn(s)
}

pub fn status_action(id: &str) -> pb::command::Action {
    pb::command::Action::Status(pb::Status { id: id.into() })
}

pub fn kill_action(id: &str) -> pb::command::Action {
    pb::command::Action::Kill(pb::Kill { id: id.into() })
}

/// The job in a receipt (spawn, status, kill).
pub fn job_of(r: &mosaic_hub::spokes::Receipt) -> &pb::JobStatus {
    r.job().expect("the receipt carries a job")
}

/// Polls status until `done` holds for the job's state, or fails after `within`.
pub async fn wait_for(
    hub: &HubConfig,
    client: &SpokeClient,
    job: &str,
    within: Duration,
    done: impl Fn(pb::JobState) -> bool,
) -> anyhow::Result<pb::JobStatus> {
    let deadline = Instant::now() + within;
    loop {
        let r = client.execute(&hub.signer, status_action(job)).await?;
        let j = job_of(&r);
        if done(j.state()) {
            return Ok(j.clone());
        }
        if Instant::now() > deadline {
            bail!("job {job} still {:?} after {within:?}", j.state());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the job's latest attempt is running (its process exists); returns that attempt.
pub async fn wait_running(
    hub: &HubConfig,
    client: &SpokeClient,
    job: &str,
) -> anyhow::Result<pb::AgentStatus> {
    let j = wait_for(hub, client, job, Duration::from_secs(10), |s| {
        s == pb::JobState::Executing || terminal(s)
    })
    .await?;
    j.attempt_history
        .last()
        .cloned()
        .filter(|a| a.state() == pb::AgentState::Running)
        .ok_or_else(|| anyhow::anyhow!("job {job} ended before it was seen running: {j:?}"))
}

impl Federation {
    /// Sends `action` (a spawn) through `client` and waits up to 10 s for the job to end.
    /// Returns the spawn's receipt and the job's final status.
    pub async fn run_to_end(
        &self,
        client: &SpokeClient,
        action: pb::command::Action,
    ) -> (mosaic_hub::spokes::Receipt, pb::JobStatus) {
        self.run_to_end_within(client, action, Duration::from_secs(10))
            .await
    }

    /// As [`Federation::run_to_end`], waiting up to `within` for the job to end.
    pub async fn run_to_end_within(
        &self,
        client: &SpokeClient,
        action: pb::command::Action,
        within: Duration,
    ) -> (mosaic_hub::spokes::Receipt, pb::JobStatus) {
        let receipt = client
            .execute(&self.hub.signer, action)
            .await
            .expect("spawn accepted");
        let done = wait_for(
            &self.hub,
            client,
            &job_of(&receipt).job_id,
            within,
            terminal,
        )
        .await
        .expect("agent ended");
        (receipt, done)
    }
}

pub fn terminal(s: pb::JobState) -> bool {
    mosaic_hub::cli::is_job_terminal(s)
}

/// The `x-mosaic-reason` a spoke attached to a refusal.
pub fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("x-mosaic-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Whether a process with this pid exists and is not a zombie. Orphans of a killed agent are
/// re-parented to PID 1, which in some sandboxes never reaps them; a zombie runs nothing.
pub fn alive(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // /proc/<pid>/stat: "pid (comm) S ..." where S is the state; comm may contain spaces.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether the process is gone within `within` (signals are delivered asynchronously).
pub async fn gone_within(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

struct SpokeProcess {
    child: Child,
    log: PathBuf,
    addr: Option<SocketAddr>,
    /// The ops port, if it logged one.
    ops: Option<SocketAddr>,
}

impl SpokeProcess {
    /// Starts `binary` with `args` then `config`, logging to `<name>.log` in `root`.
    fn start(
        binary_name: &str,
        args: &[&str],
        config: &Path,
        id: &str,
        root: &Path,
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        // `a.log` for the first start, then `a.1.log`, `a.2.log`, … for restarts.
        let log = (0..)
            .map(|n| match n {
                0 => root.join(format!("{id}.log")),
                n => root.join(format!("{id}.{n}.log")),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary(binary_name))
            .args(args)
            .arg(config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MOSAIC_LOG_FORMAT", "json")
            .env(
                "MOSAIC_LOG",
                "info,tonic::transport::server::io_stream=debug,mosaic_spoke::store=debug,mosaic_hub=debug",
            )
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {binary_name}"))?;
        Ok(SpokeProcess {
            child,
            log,
            addr: None,
            ops: None,
        })
    }

    /// Waits for the "spoke serving" log line and takes the bound address from it.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let message = &v["fields"]["message"];
                if message == "spoke serving" || message == "hub serving the admin API" {
                    let addr = v["fields"]["addr"].as_str().unwrap_or_default();
                    self.addr = Some(addr.parse().with_context(|| format!("addr {addr:?}"))?);
                    self.ops = v["fields"]["ops"].as_str().and_then(|a| a.parse().ok());
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the process exited with {status} before it was ready:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("the process is not ready after 20 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SpokeProcess {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first so the spoke ends its agents; SIGKILL if it lingers.
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.kill_hard();
        }
    }
}

impl Drop for SpokeProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn spoke_toml(
    id: &str,
    root: &Path,
    valkey: &valkey::ValkeyToml,
    profiles: &BTreeMap<String, ProfileSpec>,
    queue: &[String],
    settings: &BTreeMap<String, String>,
) -> String {
    let path = |p: PathBuf| q(&p.display().to_string());
    let pki = root.join("pki");
    let mut top: BTreeMap<String, String> = [
        ("ops_listen".to_string(), q("127.0.0.1:0")),
        ("drain_deadline_ms".to_string(), "0".to_string()),
    ]
    .into();
    top.extend(settings.clone());
    let top: String = top.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    let mut s = format!(
        "spoke_id = {id}\ntrust_domain = {td}\nlisten = \"127.0.0.1:0\"\n{valkey}\
         receipt_key = {rk}\nclock_skew_ms = 5000\nmax_command_validity_ms = 600000\n{top}\n\
         [tls]\ncert = {cert}\nkey = {key}\nca = {ca}\n\n\
         [[trusted_hubs]]\nhub_id = {hub}\nkeys = [{hub_key}]\n\n\
         [[trusted_hubs]]\nhub_id = {other}\nkeys = [{other_key}]\n",
        id = q(id),
        td = q(TRUST_DOMAIN),
        valkey = valkey.top(),
        rk = path(root.join(format!("keys/{id}.pem"))),
        cert = path(pki.join(certs::cert_file(Role::Spoke, id))),
        key = path(pki.join(certs::key_file(Role::Spoke, id))),
        ca = path(pki.join(certs::CA_CERT)),
        hub = q(HUB),
        hub_key = path(root.join(format!("keys/{HUB}.pub.pem"))),
        other = q(OTHER_HUB),
        other_key = path(root.join(format!("keys/{OTHER_HUB}.pub.pem"))),
    );
    for (name, p) in profiles {
        s.push_str(&format!(
            "\n[profiles.{name}]\nprogram = {}\nargs = {:?}\nallowed_env = {:?}\nworkdir_root = {}\nkill_grace_ms = {}\n",
            q(&p.program),
            p.args,
            p.allowed_env,
            path(root.join("work").join(id).join(name)),
            p.kill_grace_ms
        ));
        if let Some(c) = p.concurrency {
            s.push_str(&format!("concurrency = {c}\n"));
        }
        for line in &p.extra {
            s.push_str(line);
            s.push('\n');
        }
    }
    if !queue.is_empty() {
        s.push_str("\n[queue]\n");
        for line in queue {
            s.push_str(line);
            s.push('\n');
        }
    }
    s.push_str(&valkey.table());
    s
}

fn hub_toml(
    hub: &str,
    spokes: &[(String, SocketAddr)],
    server: Option<&HubServer>,
    labels: &BTreeMap<String, String>,
) -> String {
    let mut s = format!(
        "hub_id = {h}\ntrust_domain = {td}\nsigning_key = \"keys/{hub}.pem\"\n\n[tls]\n\
         cert = \"pki/{cert}\"\nkey = \"pki/{key}\"\nca = \"pki/{ca}\"\n",
        h = q(hub),
        td = q(TRUST_DOMAIN),
        cert = certs::cert_file(Role::Hub, hub),
        key = certs::key_file(Role::Hub, hub),
        ca = certs::CA_CERT,
    );
    if let Some(server) = server {
        s = format!(
            "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nops_listen = \"127.0.0.1:0\"\n{}\
             tokens = \"tokens.toml\"\n{s}",
            server.valkey.top()
        );
    }
    for (id, addr) in spokes {
        s.push_str(&format!(
            "\n[[spokes]]\nid = {}\naddress = \"{addr}\"\nreceipt_key = \"keys/{id}.pub.pem\"\n",
            q(id),
        ));
        if let Some(l) = labels.get(id) {
            s.push_str(&format!("labels = {l}\n"));
        }
    }
    if let Some(server) = server.filter(|s| !s.events.is_empty()) {
        s.push_str("\n[events]\n");
        for line in &server.events {
            s.push_str(line);
            s.push('\n');
        }
    }
    if let Some(server) = server {
        s.push_str(&server.valkey.table());
    }
    s
}

/// Runs a `mosaic-hub` CLI verb against this federation; returns (exit code, stdout, stderr).
pub fn hub_cli(fed: &Federation, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("mosaic-hub"))
        .arg("--config")
        .arg(&fed.hub_path)
        .args(args)
        .env("MOSAIC_LOG", "warn")
        .output()
        .expect("run mosaic-hub");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a `mosaic-hub` client verb through the hub server's admin API with token `token` (a
/// name from [`TOKENS`]), the address and token in the environment as a script would set
/// them; returns (exit code, stdout, stderr).
pub fn hub_cli_as(fed: &Federation, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary("mosaic-hub"))
        .arg("--config")
        .arg(&fed.hub_path)
        .args(args)
        .env("MOSAIC_LOG", "warn")
        .env("MOSAIC_HUB_ADDR", fed.hub_addr().to_string())
        .env("MOSAIC_TOKEN", fed.token(token))
        .output()
        .expect("run mosaic-hub");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.1 GET (the ops port); the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}

type AdminClient = mosaic_shared::pb::admin::v1::admin_client::AdminClient<Channel>;

/// Spawns `profile` with `args` in workspace `ws-test` on `spoke` through the admin API as
/// `token`; the job's id.
pub async fn admin_spawn(
    c: &mut AdminClient,
    token: &str,
    spoke: &str,
    profile: &str,
    args: &[&str],
) -> String {
    use mosaic_shared::pb::admin::v1 as admin;
    c.spawn(authed(
        token,
        admin::SpawnRequest {
            spoke_id: spoke.into(),
            spawn: Some(pb::Spawn {
                profile: profile.into(),
                workspace: "ws-test".into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .job
    .unwrap()
    .job_id
}

/// A watch of one job from its oldest event, as `token`.
pub async fn admin_watch_job(
    c: &mut AdminClient,
    token: &str,
    job: &str,
) -> tonic::Streaming<mosaic_shared::pb::admin::v1::WatchResponse> {
    use mosaic_shared::pb::admin::v1 as admin;
    c.watch(authed(
        token,
        admin::WatchRequest {
            scope: Some(admin::watch_request::Scope::JobId(job.into())),
            start: Some(admin::watch_request::Start::FromOldest(true)),
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
}

/// Every event of `job` through a watch as `token`, until its completion (at most 15 s).
pub async fn admin_events_until_completed(
    c: &mut AdminClient,
    token: &str,
    job: &str,
) -> Vec<pb::Event> {
    use mosaic_shared::pb::admin::v1 as admin;
    let mut watch = admin_watch_job(c, token, job).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut events = Vec::new();
    loop {
        let item = tokio::time::timeout_at(deadline.into(), watch.message())
            .await
            .expect("the job completes within 15 s")
            .unwrap()
            .expect("the watch stays open");
        if let Some(admin::watch_response::Item::Event(e)) = item.item {
            let done = e.r#type() == pb::EventType::JobCompleted;
            events.push(e);
            if done {
                return events;
            }
        }
    }
}

/// Polls `job` through the hub as `token` until `done` holds for its status (at most
/// `within`); that status.
pub async fn admin_wait_job(
    c: &mut AdminClient,
    token: &str,
    job: &str,
    within: Duration,
    done: impl Fn(&pb::JobStatus) -> bool,
) -> pb::JobStatus {
    use mosaic_shared::pb::admin::v1 as admin;
    let deadline = Instant::now() + within;
    loop {
        let status = c
            .get_status(authed(
                token,
                admin::GetStatusRequest {
                    id: job.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .job
            .expect("a job");
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "job {job}: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `mosaic-spoke serve` with `config` and a clean environment, expecting it to give up
/// at start-up within 30 s; its exit status and stderr.
pub async fn spoke_start_failure(config: &Path) -> (std::process::ExitStatus, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(binary("mosaic-spoke"))
            .args(["serve", "--config"])
            .arg(config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output(),
    )
    .await
    .expect("the spoke gives up within 30 s")
    .expect("mosaic-spoke runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An admin API request carrying `token` as its bearer token.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The spoke id as a typed id.
pub fn spoke_id(id: &str) -> SpokeId {
    id.parse().expect("spoke id")
}

impl Federation {
    /// Opens the spoke's event stream as the hub `hub` (its real TLS identity).
    pub async fn events(
        &self,
        spoke: &str,
        request: pb::EventsRequest,
    ) -> Result<tonic::Streaming<pb::Event>, tonic::Status> {
        let mut client = self
            .raw_client(spoke, &self.hub_tls(HUB))
            .await
            .expect("dial spoke");
        Ok(client.events(request).await?.into_inner())
    }
}

/// Reads `stream` until `done` holds for the events read so far; fails after `within` or if
/// the stream ends or errs first.
pub async fn read_events_until(
    stream: &mut tonic::Streaming<pb::Event>,
    within: Duration,
    done: impl Fn(&[pb::Event]) -> bool,
) -> anyhow::Result<Vec<pb::Event>> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !done(&seen) {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => bail!(
                "after {within:?}, {} events and not done: {seen:#?}",
                seen.len()
            ),
            Ok(Ok(Some(e))) => seen.push(e),
            Ok(Ok(None)) => bail!("the event stream ended after {} events", seen.len()),
            Ok(Err(status)) => bail!("the event stream failed: {status:?}"),
        }
    }
    Ok(seen)
}

/// Whether `events` hold a terminal job event for `job`.
pub fn job_ended(events: &[pb::Event], job: &str) -> bool {
    events.iter().any(|e| {
        e.job_id == job
            && matches!(
                e.r#type(),
                pb::EventType::JobCompleted
                    | pb::EventType::JobFailed
                    | pb::EventType::JobCancelled
            )
    })
}

/// The body of an HTTP/1.1 response, de-chunked, read line by line.
pub struct HttpBody {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    chunked: bool,
    /// Decoded bytes not yet returned.
    buf: Vec<u8>,
}

impl HttpBody {
    async fn raw_line(&mut self) -> anyhow::Result<String> {
        use tokio::io::AsyncReadExt as _;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if self.tls.read(&mut byte).await? == 0 {
                bail!("the connection closed");
            }
            line.push(byte[0]);
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8(line)?)
    }

    async fn fill(&mut self) -> anyhow::Result<bool> {
        use tokio::io::AsyncReadExt as _;
        if !self.chunked {
            let mut chunk = [0u8; 4096];
            let n = self.tls.read(&mut chunk).await?;
            self.buf.extend_from_slice(&chunk[..n]);
            return Ok(n > 0);
        }
        let size = usize::from_str_radix(self.raw_line().await?.trim(), 16)?;
        if size == 0 {
            return Ok(false);
        }
        let mut chunk = vec![0u8; size];
        self.tls.read_exact(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk);
        self.raw_line().await?;
        Ok(true)
    }

    /// The next line of the body (without its newline), or `None` at its end.
    pub async fn line(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(
                    String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                ));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The rest of the body.
    pub async fn text(mut self) -> anyhow::Result<String> {
        while self.fill().await? {}
        Ok(String::from_utf8_lossy(&self.buf).into_owned())
    }
}
