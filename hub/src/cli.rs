//! The `mosaic-hub` command line: verbs, their output (aligned text or JSON) and exit codes.
//!
//! For now the client verbs sign and send commands directly with the key in `hub.toml`; when
//! the admin API exists they move behind it with the same shape. Output goes to stdout, errors
//! to stderr as one line that says what to do.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use mosaic_shared::config::Env;
use mosaic_shared::ids::{AgentId, CommandId, HubId, ProfileName, SpokeId, WorkspaceId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::KeyPair;
use mosaic_shared::time::unix_ms;

use crate::certs::{self, PkiPlan};
use crate::config::HubConfig;
use crate::spokes::{Receipt, SpokeClient, SpokeError};

const EXAMPLES: &str = "\
Examples:
  mosaic-hub dev                                   start a local federation (Valkey, hub, two spokes)
  mosaic-hub keygen --out keys/hub                 write keys/hub.pem and keys/hub.pub.pem
  mosaic-hub certs init --out pki --trust-domain mosaic.local --hub hub --spoke spoke-a
  mosaic-hub -c hub.toml spawn --spoke spoke-a --profile echo --workspace demo --wait -- hello
  mosaic-hub -c hub.toml status --spoke spoke-a 0193...
  mosaic-hub -c hub.toml kill --spoke spoke-a 0193...
  mosaic-hub -c hub.toml --output json spokes

Exit codes:
  0  success (for spawn --wait: the agent completed)
  1  error: config, connection, or the spoke refused the command
  2  usage error
  3  spawn --wait: the agent failed or was killed
  4  the agent does not exist on that spoke

Environment:
  MOSAIC_HUB_CONFIG               path to hub.toml (instead of --config)
  MOSAIC_HUB__<KEY>[__<SUBKEY>]   override any hub.toml key, e.g. MOSAIC_HUB__COMMAND_TTL_MS=30000
  MOSAIC_LOG, MOSAIC_LOG_FORMAT   log filter (default: warn for client verbs) and text|json";

/// Mosaic federation hub: signs commands for spokes and runs local federations.
///
/// A hub turns each request into a command signed with its ed25519 key and sends it over mutual
/// TLS to a spoke, which verifies it, runs or inspects the agent, and answers with a signed
/// receipt that the hub verifies.
#[derive(Parser, Debug)]
#[command(name = "mosaic-hub", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Path to hub.toml (for spawn, status, kill, spokes).
    #[arg(long, short, global = true, env = "MOSAIC_HUB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    Table,
    /// One JSON document for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a local federation: a Valkey, a hub identity and two spokes, with a demo, until Ctrl-C.
    Dev(crate::dev::DevArgs),
    /// Generate an ed25519 signing key pair (PKCS#8 PEM, private key mode 0600).
    Keygen {
        /// Path prefix: writes <OUT>.pem (private) and <OUT>.pub.pem (public).
        #[arg(long)]
        out: PathBuf,
    },
    /// Development PKI: a CA and a certificate per hub and spoke.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Start an agent on a spoke from one of its profiles.
    Spawn(SpawnArgs),
    /// Show an agent's state, times, exit code or signal, error and output tail.
    Status(AgentArgs),
    /// Kill an agent: SIGTERM to its process group, SIGKILL after the profile's grace.
    Kill(AgentArgs),
    /// List configured spokes with their reachability, version and profiles.
    Spokes,
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Write ca.crt/ca.key and <role>-<id>.crt/.key, each leaf with one URI SAN
    /// spiffe://<trust-domain>/<role>/<id>.
    Init {
        /// Directory to write into (created if missing; existing files are never overwritten).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "mosaic.local")]
        trust_domain: String,
        /// Hub ids to issue certificates for (repeatable).
        #[arg(long = "hub")]
        hubs: Vec<HubId>,
        /// Spoke ids to issue certificates for (repeatable).
        #[arg(long = "spoke")]
        spokes: Vec<SpokeId>,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

#[derive(Args, Debug)]
pub struct SpawnArgs {
    /// Spoke to run on.
    #[arg(long)]
    pub spoke: SpokeId,
    /// Agent profile configured on that spoke.
    #[arg(long)]
    pub profile: ProfileName,
    /// Workspace the agent belongs to.
    #[arg(long)]
    pub workspace: WorkspaceId,
    /// Working directory relative to the profile's root.
    #[arg(long, default_value = "")]
    pub workdir: String,
    /// Environment variable for the agent, NAME=VALUE (repeatable; the profile must allow NAME).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Reuse a command id to retry safely: while the spoke remembers the id (until the first
    /// command's validity window has passed), a repeat returns the original receipt and runs
    /// nothing.
    #[arg(long)]
    pub command_id: Option<CommandId>,
    /// Wait until the agent ends and show its final state.
    #[arg(long)]
    pub wait: bool,
    /// Arguments for the agent, after the profile's fixed arguments (put them after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Spoke the agent runs on.
    #[arg(long)]
    pub spoke: SpokeId,
    /// The agent id printed by spawn.
    pub agent_id: AgentId,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// A failure with the exit code scripts rely on.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError {
            code: 1,
            message: e.to_string(),
        }
    }
}

fn spoke_error(e: SpokeError) -> CliError {
    let code = match &e {
        SpokeError::Refused { code, .. } if *code == tonic::Code::NotFound => 4,
        _ => 1,
    };
    CliError {
        code,
        message: e.to_string(),
    }
}

pub async fn run(cli: Cli, env: &Env) -> Result<ExitCode, CliError> {
    let output = cli.output;
    match cli.command {
        Command::Dev(args) => crate::dev::run(args, env).await.map_err(|e| CliError {
            code: 1,
            message: format!("{e:#}"),
        }),
        Command::Keygen { out } => {
            let (private, public) = (with_ext(&out, "pem"), with_ext(&out, "pub.pem"));
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let key = KeyPair::generate();
            key.write(&private, &public)?;
            emit(
                output,
                &serde_json::json!({
                    "key_id": key.id().to_string(),
                    "private_key": private,
                    "public_key": public,
                }),
                || {
                    format!(
                        "key id      {}\nprivate key {}\npublic key  {}\n",
                        key.id(),
                        private.display(),
                        public.display()
                    )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Init {
            out,
            trust_domain,
            hubs,
            spokes,
            days,
        }) => {
            if hubs.is_empty() && spokes.is_empty() {
                return Err("name at least one --hub or --spoke to issue a certificate for".into());
            }
            let files = certs::init(
                &out,
                &PkiPlan {
                    trust_domain,
                    hubs,
                    spokes,
                    valid_days: days,
                },
            )?;
            emit(output, &serde_json::json!({ "files": files }), || {
                files
                    .iter()
                    .map(|f| format!("wrote {}\n", f.display()))
                    .collect()
            });
            Ok(ExitCode::SUCCESS)
        }
        Command::Spawn(args) => {
            let hub = load_config(cli.config, env)?;
            let client = dial(&hub, &args.spoke).await?;
            let id = args.command_id.clone().unwrap_or_else(CommandId::generate);
            let action = pb::command::Action::Spawn(pb::Spawn {
                profile: args.profile.to_string(),
                workspace: args.workspace.to_string(),
                args: args.args,
                env: args.env.into_iter().collect(),
                workdir: args.workdir,
            });
            let started = Instant::now();
            let envelope = hub.signer.seal(&id, &args.spoke, action, unix_ms());
            let receipt = client
                .send(&hub.signer, &id, envelope)
                .await
                .map_err(spoke_error)?;
            let round_trip = started.elapsed();
            let mut agent = receipt.agent.clone();
            if args.wait {
                agent = wait_for_end(&hub, &client, &agent.agent_id).await?;
            }
            print_agent(output, &receipt, &agent, Some(round_trip));
            Ok(
                if !args.wait || agent.state() == pb::AgentState::Completed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(3)
                },
            )
        }
        Command::Status(args) => agent_verb(cli.config, env, output, args, false).await,
        Command::Kill(args) => agent_verb(cli.config, env, output, args, true).await,
        Command::Spokes => {
            let hub = load_config(cli.config, env)?;
            let mut rows = Vec::new();
            for entry in &hub.spokes {
                let started = Instant::now();
                let info = match SpokeClient::connect(&hub, &entry.id).await {
                    Ok(c) => c.info().await,
                    Err(e) => Err(e),
                };
                let rtt_ms = started.elapsed().as_secs_f64() * 1000.0;
                rows.push(match info {
                    Ok(i) => serde_json::json!({
                        "spoke": entry.id.to_string(), "address": entry.address, "reachable": true,
                        "rtt_ms": (rtt_ms * 10.0).round() / 10.0, "version": i.version,
                        "profiles": i.profiles, "receipt_key_id": i.receipt_key_id, "error": null,
                    }),
                    Err(e) => serde_json::json!({
                        "spoke": entry.id.to_string(), "address": entry.address, "reachable": false,
                        "rtt_ms": null, "version": null, "profiles": [], "receipt_key_id": null,
                        "error": e.to_string(),
                    }),
                });
            }
            emit(output, &serde_json::json!({ "spokes": rows }), || {
                spokes_table(&rows)
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn agent_verb(
    config: Option<PathBuf>,
    env: &Env,
    output: Output,
    args: AgentArgs,
    kill: bool,
) -> Result<ExitCode, CliError> {
    let hub = load_config(config, env)?;
    let client = dial(&hub, &args.spoke).await?;
    let action = if kill {
        pb::command::Action::Kill(pb::Kill {
            agent_id: args.agent_id.to_string(),
        })
    } else {
        pb::command::Action::Status(pb::Status {
            agent_id: args.agent_id.to_string(),
        })
    };
    let receipt = client
        .execute(&hub.signer, action)
        .await
        .map_err(spoke_error)?;
    print_agent(output, &receipt, &receipt.agent, None);
    Ok(ExitCode::SUCCESS)
}

/// Polls status until the agent is terminal. Status commands are cheap and each is signed and
/// receipted like any other.
async fn wait_for_end(
    hub: &HubConfig,
    client: &SpokeClient,
    agent_id: &str,
) -> Result<pb::AgentStatus, CliError> {
    let mut delay = Duration::from_millis(20);
    loop {
        let receipt = client
            .execute(
                &hub.signer,
                pb::command::Action::Status(pb::Status {
                    agent_id: agent_id.to_owned(),
                }),
            )
            .await
            .map_err(spoke_error)?;
        if is_terminal(receipt.agent.state()) {
            return Ok(receipt.agent);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

pub fn is_terminal(s: pb::AgentState) -> bool {
    matches!(
        s,
        pb::AgentState::Completed | pb::AgentState::Failed | pb::AgentState::Killed
    )
}

fn load_config(path: Option<PathBuf>, env: &Env) -> Result<HubConfig, CliError> {
    let path = path.ok_or(
        "no hub config: pass --config hub.toml or set MOSAIC_HUB_CONFIG (mosaic-hub dev prints one)",
    )?;
    Ok(HubConfig::load(&path, env)?)
}

async fn dial(hub: &HubConfig, spoke: &SpokeId) -> Result<SpokeClient, CliError> {
    SpokeClient::connect(hub, spoke).await.map_err(spoke_error)
}

fn with_ext(prefix: &std::path::Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn emit(output: Output, json: &serde_json::Value, text: impl FnOnce() -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(json).expect("json")),
        Output::Table => print!("{}", text()),
    }
}

/// The JSON form of an agent, shared by `--output json` and the dev demo.
pub fn agent_json(spoke: &SpokeId, a: &pb::AgentStatus) -> serde_json::Value {
    serde_json::json!({
        "spoke": spoke.to_string(),
        "agent_id": a.agent_id,
        "profile": a.profile,
        "workspace": a.workspace,
        "state": state_name(a.state()),
        "created_at_ms": a.created_at_ms,
        "started_at_ms": a.started_at_ms,
        "finished_at_ms": a.finished_at_ms,
        "exit_code": a.exit_code,
        "signal": a.signal,
        "error": a.error,
        "pid": a.pid,
        "command_id": a.command_id,
        "output_tail": a.output_tail,
    })
}

pub fn state_name(s: pb::AgentState) -> &'static str {
    match s {
        pb::AgentState::Unspecified => "unspecified",
        pb::AgentState::Spawning => "spawning",
        pb::AgentState::Running => "running",
        pb::AgentState::Completed => "completed",
        pb::AgentState::Failed => "failed",
        pb::AgentState::Killed => "killed",
    }
}

fn print_agent(output: Output, receipt: &Receipt, a: &pb::AgentStatus, rtt: Option<Duration>) {
    let mut json = agent_json(&receipt.spoke_id, a);
    json["receipt"] = serde_json::json!({
        "command_id": receipt.command_id.to_string(),
        "key_id": receipt.signed.key_id,
        "executed_at_ms": receipt.executed_at_ms,
    });
    if let Some(rtt) = rtt {
        json["round_trip_ms"] = serde_json::json!((rtt.as_secs_f64() * 10_000.0).round() / 10.0);
    }
    emit(output, &json, || agent_text(&receipt.spoke_id, a));
}

/// An agent as aligned `field  value` lines.
pub fn agent_text(spoke: &SpokeId, a: &pb::AgentStatus) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("agent", a.agent_id.clone()),
        ("spoke", spoke.to_string()),
        ("state", state_name(a.state()).to_owned()),
        ("profile", a.profile.clone()),
        ("workspace", a.workspace.clone()),
        ("created", timestamp(a.created_at_ms)),
    ];
    if let Some(t) = a.started_at_ms {
        rows.push(("started", timestamp(t)));
    }
    if let Some(t) = a.finished_at_ms {
        rows.push(("finished", timestamp(t)));
    }
    if let Some(p) = a.pid {
        rows.push(("pid", p.to_string()));
    }
    if let Some(c) = a.exit_code {
        rows.push(("exit code", c.to_string()));
    }
    if let Some(s) = a.signal {
        rows.push(("signal", s.to_string()));
    }
    if !a.error.is_empty() {
        rows.push(("error", a.error.clone()));
    }
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<10} {v}\n"));
    }
    if !a.output_tail.is_empty() {
        out.push_str("output     ");
        out.push_str(&a.output_tail.trim_end().replace('\n', "\n           "));
        out.push('\n');
    }
    out
}

fn spokes_table(rows: &[serde_json::Value]) -> String {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                cell(&r["spoke"]),
                cell(&r["address"]),
                if r["reachable"] == true {
                    "yes".into()
                } else {
                    "no".into()
                },
                cell(&r["rtt_ms"]),
                cell(&r["version"]),
                if r["reachable"] == true {
                    cell(&r["profiles"])
                } else {
                    cell(&r["error"])
                },
            ]
        })
        .collect();
    let header = [
        "SPOKE",
        "ADDRESS",
        "REACHABLE",
        "RTT_MS",
        "VERSION",
        "PROFILES",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    std::iter::once(&header)
        .chain(&table)
        .map(|row| {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{c:<w$}  "));
                }
            }
            line.push('\n');
            line
        })
        .collect()
}

/// Unix milliseconds as RFC 3339 UTC.
pub fn timestamp(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
