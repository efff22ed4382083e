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
use mosaic_shared::ids::{CommandId, HubId, JobId, ProfileName, SpokeId, WorkspaceId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::KeyPair;
use mosaic_shared::time::unix_ms;

use crate::auth;
use crate::certs::{self, PkiPlan};
use crate::config::HubConfig;
use crate::render;
use crate::spokes::{Receipt, SpokeClient, SpokeError};
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::admin::v1::admin_client::AdminClient;
use mosaic_shared::tls::{self, DialOptions, Role, SpiffeId, TlsMaterial};

const EXAMPLES: &str = "\
Examples:
  mosaic-hub dev                                   start a local federation (Valkey, hub, two spokes)
  mosaic-hub -c hub.toml serve                     serve the admin API and follow the spokes' events
  mosaic-hub keygen --out keys/hub                 write keys/hub.pem and keys/hub.pub.pem
  mosaic-hub certs init --out pki --trust-domain mosaic.local --hub hub --spoke spoke-a
  mosaic-hub -c hub.toml spawn --spoke spoke-a --profile echo --workspace demo --wait -- hello
  mosaic-hub -c hub.toml spawn --spoke spoke-a --profile shell --workspace demo \
      --priority 9 --max-retries 2 --backoff-base 500ms --timeout 10m -- 'make test'
  mosaic-hub -c hub.toml spawn --spoke spoke-a --profile echo --workspace demo --delay 30s -- later
  mosaic-hub -c hub.toml status --spoke spoke-a <job id or agent id>
  mosaic-hub -c hub.toml kill --spoke spoke-a <job id or agent id>
  mosaic-hub -c hub.toml queue stats --spoke spoke-a
  mosaic-hub -c hub.toml queue pause --spoke spoke-a
  mosaic-hub -c hub.toml --output json spokes
  mosaic-hub token new --name ci --role operator --workspace team-a --workspace team-b
  MOSAIC_TOKEN=… mosaic-hub -c hub.toml watch --job <job id>     follow a job until it ends
  MOSAIC_TOKEN=… mosaic-hub -c hub.toml -o json watch --workspace demo --from-oldest

Exit codes:
  0  success (for spawn --wait: the job completed)
  1  error: config, connection, or the spoke refused the command
  2  usage error
  3  spawn --wait, watch --job: the job failed or was cancelled
  4  the job or agent does not exist on that spoke

Environment:
  MOSAIC_HUB_CONFIG               path to hub.toml (instead of --config)
  MOSAIC_HUB_ADDR, MOSAIC_TOKEN   the admin API's address and a bearer token (watch)
  MOSAIC_HUB_CA, MOSAIC_HUB_IDENTITY  the CA and spiffe://…/hub/<id> to check the hub against
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
    /// Serve the admin API and follow every spoke's events into the hub's log, until SIGINT or
    /// SIGTERM. Needs listen, valkey_url and tokens in hub.toml.
    Serve,
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
    /// Queue a job on a spoke that runs an agent from one of its profiles, retried on failure.
    Spawn(SpawnArgs),
    /// Show a job (by job id or the agent id of an attempt): state, attempts, exit codes,
    /// errors and the last attempt's output tail.
    Status(JobArgs),
    /// Cancel a job: remove it if it waits; otherwise SIGTERM its attempt's process group, then
    /// SIGKILL after the profile's grace. A cancelled job is never retried.
    Kill(JobArgs),
    /// Operate a spoke's queue: counts, pause and resume dispatch, remove a waiting job.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// List configured spokes with their reachability, version, profiles and queue.
    Spokes,
    /// Admin API bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Watch events through the hub's admin API, live or from a cursor: a workspace, a job
    /// (until it ends: exit 0 if it completed, 3 if it failed or was cancelled) or a spoke.
    Watch(WatchArgs),
}

/// Where the hub's admin API is and how to trust it.
#[derive(Args, Debug, Clone)]
pub struct HubTarget {
    /// The admin API's address, host:port (default: `listen` in hub.toml).
    #[arg(long = "hub", env = "MOSAIC_HUB_ADDR")]
    pub addr: Option<String>,
    /// Bearer token for the admin API (see `mosaic-hub token new`).
    #[arg(long, env = "MOSAIC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate that the hub's certificate chains to (default: tls.ca in hub.toml).
    #[arg(long = "hub-ca", env = "MOSAIC_HUB_CA")]
    pub ca: Option<PathBuf>,
    /// The hub's identity, spiffe://<trust-domain>/hub/<id> (default: from hub.toml).
    #[arg(long = "hub-identity", env = "MOSAIC_HUB_IDENTITY")]
    pub identity: Option<String>,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub hub: HubTarget,
    /// Watch a workspace.
    #[arg(long, group = "scope")]
    pub workspace: Option<WorkspaceId>,
    /// Watch one job until it ends.
    #[arg(long, group = "scope")]
    pub job: Option<JobId>,
    /// Watch everything on a spoke (that your token's workspaces allow).
    #[arg(long, group = "scope")]
    pub spoke: Option<SpokeId>,
    /// Only these event types (repeatable), e.g. step.output, job.progress, ai.tool_called.
    #[arg(long = "type")]
    pub types: Vec<String>,
    /// Resume after this cursor (printed with every event in --output json).
    #[arg(long, conflicts_with_all = ["from_oldest", "snapshot"])]
    pub after: Option<String>,
    /// Start from the oldest event the hub retains (for --job: the job's whole history).
    #[arg(long)]
    pub from_oldest: bool,
    /// Start with the current state of every job in scope, then live events.
    #[arg(long)]
    pub snapshot: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a new random token: prints the token once and the tokens-file entry (its hash,
    /// role and workspaces) to add to the hub's tokens file. The hub never stores the token.
    New {
        /// Shown in logs and audit records (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// viewer: read only; operator: also spawn and kill; admin: also pause, resume, audit.
        #[arg(long)]
        role: String,
        /// A workspace the token may touch (repeat for several), or '*' for all (admin needs '*').
        #[arg(long = "workspace", required = true)]
        workspaces: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Jobs by state: pending, delayed, active, completed, failed, cancelled; and whether paused.
    Stats(SpokeArg),
    /// Stop starting jobs; running attempts continue.
    Pause(SpokeArg),
    /// Start jobs again.
    Resume(SpokeArg),
    /// Remove a pending or delayed job (it ends cancelled); a running job needs `kill`.
    Remove(JobArgs),
}

#[derive(Args, Debug)]
pub struct SpokeArg {
    /// The spoke whose queue to operate.
    #[arg(long)]
    pub spoke: SpokeId,
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
    /// Workspace the job belongs to.
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
    /// Priority 1-10 (10 runs first; FIFO within a priority). Default: the spoke's.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub priority: Option<u32>,
    /// Run no earlier than this long from now (e.g. 500ms, 30s, 5m, 2h).
    #[arg(long, value_parser = parse_duration, conflicts_with = "not_before")]
    pub delay: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. 2026-11-23T18:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub not_before: Option<i64>,
    /// Retries after the first attempt fails (0: never). Default: the spoke's.
    #[arg(long)]
    pub max_retries: Option<u32>,
    /// First retry delay; each further retry doubles it up to --backoff-cap (less up to 20%
    /// jitter). Default: the spoke's.
    #[arg(long, value_parser = parse_duration)]
    pub backoff_base: Option<Duration>,
    /// Longest retry delay. Default: the spoke's.
    #[arg(long, value_parser = parse_duration)]
    pub backoff_cap: Option<Duration>,
    /// Kill an attempt that runs longer than this; it counts as a failure.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Wait until the job ends and show its final state.
    #[arg(long)]
    pub wait: bool,
    /// Arguments for the agent, after the profile's fixed arguments (put them after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct JobArgs {
    /// Spoke the job is on.
    #[arg(long)]
    pub spoke: SpokeId,
    /// The job id printed by spawn, or the agent id of one of its attempts.
    pub id: JobId,
}

/// `250ms`, `30s`, `5m`, `2h`, or a bare number of milliseconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m or 2h"))?;
    let ms = match unit {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// An RFC 3339 time as unix milliseconds.
fn parse_time(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-23T18:00:00Z: {e}"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
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

/// A bad argument value: exit code 2, like clap's own usage errors.
fn usage(message: String) -> CliError {
    CliError { code: 2, message }
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
        Command::Watch(args) => watch(args, cli.config, output, env).await,
        Command::Serve => {
            let config = load_config(cli.config, env)?;
            let listen = match &config.serve {
                Ok(s) => s.listen,
                Err(e) => return Err(e.to_string().into()),
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            crate::server::run(config, listener, shutdown_signal())
                .await
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::New {
            name,
            role,
            workspaces,
        }) => {
            let name: auth::TokenName = name.parse().map_err(|e| usage(format!("--name: {e}")))?;
            let role: auth::Role = role.parse().map_err(|e| usage(format!("--role: {e}")))?;
            let scope = auth::WorkspaceScope::parse(workspaces.iter().map(String::as_str))
                .map_err(|e| usage(format!("--workspace: {e}")))?;
            let token = auth::new_token(name, role, scope).map_err(|e| usage(e.to_string()))?;
            emit(
                output,
                &serde_json::json!({
                    "token": token.token(),
                    "hash": token.hash().to_string(),
                    "entry": token.toml_entry(),
                }),
                || token.cli_output(),
            );
            Ok(ExitCode::SUCCESS)
        }
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
            let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
            let action = pb::command::Action::Spawn(pb::Spawn {
                profile: args.profile.to_string(),
                workspace: args.workspace.to_string(),
                args: args.args,
                env: args.env.into_iter().collect(),
                workdir: args.workdir,
                priority: args.priority,
                delay_ms: ms(args.delay),
                not_before_ms: args.not_before,
                max_retries: args.max_retries,
                backoff_base_ms: ms(args.backoff_base),
                backoff_cap_ms: ms(args.backoff_cap),
                attempt_timeout_ms: ms(args.timeout),
            });
            let started = Instant::now();
            let envelope = hub.signer.seal(&id, &args.spoke, action, unix_ms());
            let receipt = client
                .send(&hub.signer, &id, envelope)
                .await
                .map_err(spoke_error)?;
            let round_trip = started.elapsed();
            let mut job = expect_job(&receipt)?.clone();
            if args.wait {
                job = wait_for_end(&hub, &client, &job.job_id).await?;
            }
            print_job(output, &receipt, &job, Some(round_trip));
            Ok(if !args.wait || job.state() == pb::JobState::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Status(args) => {
            let action = pb::command::Action::Status(pb::Status {
                id: args.id.to_string(),
            });
            job_verb(cli.config, env, output, &args.spoke, action).await
        }
        Command::Kill(args) => {
            let action = pb::command::Action::Kill(pb::Kill {
                id: args.id.to_string(),
            });
            job_verb(cli.config, env, output, &args.spoke, action).await
        }
        Command::Queue(QueueCommand::Remove(args)) => {
            let action = pb::command::Action::RemoveJob(pb::RemoveJob {
                job_id: args.id.to_string(),
            });
            job_verb(cli.config, env, output, &args.spoke, action).await
        }
        Command::Queue(q) => {
            let (spoke, action) = match q {
                QueueCommand::Stats(s) => {
                    (s.spoke, pb::command::Action::QueueStats(pb::QueueStats {}))
                }
                QueueCommand::Pause(s) => {
                    (s.spoke, pb::command::Action::PauseQueue(pb::PauseQueue {}))
                }
                QueueCommand::Resume(s) => (
                    s.spoke,
                    pb::command::Action::ResumeQueue(pb::ResumeQueue {}),
                ),
                QueueCommand::Remove(_) => unreachable!("handled above"),
            };
            let hub = load_config(cli.config, env)?;
            let client = dial(&hub, &spoke).await?;
            let receipt = client
                .execute(&hub.signer, action)
                .await
                .map_err(spoke_error)?;
            let q = receipt
                .queue()
                .ok_or("the spoke answered a queue command without queue counts")?;
            emit(output, &queue_json(&spoke, q), || queue_text(&spoke, q));
            Ok(ExitCode::SUCCESS)
        }
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
                        "queue": i.queue.map(|q| queue_json(&entry.id, &q)),
                    }),
                    Err(e) => serde_json::json!({
                        "spoke": entry.id.to_string(), "address": entry.address, "reachable": false,
                        "rtt_ms": null, "version": null, "profiles": [], "receipt_key_id": null,
                        "error": e.to_string(), "queue": null,
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

async fn job_verb(
    config: Option<PathBuf>,
    env: &Env,
    output: Output,
    spoke: &SpokeId,
    action: pb::command::Action,
) -> Result<ExitCode, CliError> {
    let hub = load_config(config, env)?;
    let client = dial(&hub, spoke).await?;
    let receipt = client
        .execute(&hub.signer, action)
        .await
        .map_err(spoke_error)?;
    print_job(output, &receipt, expect_job(&receipt)?, None);
    Ok(ExitCode::SUCCESS)
}

fn expect_job(receipt: &Receipt) -> Result<&pb::JobStatus, CliError> {
    receipt
        .job()
        .ok_or_else(|| "the spoke answered without a job".into())
}

/// Polls status until the job is terminal. Status commands are cheap and each is signed and
/// receipted like any other.
async fn wait_for_end(
    hub: &HubConfig,
    client: &SpokeClient,
    job_id: &str,
) -> Result<pb::JobStatus, CliError> {
    let mut delay = Duration::from_millis(20);
    loop {
        let receipt = client
            .execute(
                &hub.signer,
                pb::command::Action::Status(pb::Status {
                    id: job_id.to_owned(),
                }),
            )
            .await
            .map_err(spoke_error)?;
        let job = expect_job(&receipt)?;
        if is_job_terminal(job.state()) {
            return Ok(job.clone());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

pub fn is_job_terminal(s: pb::JobState) -> bool {
    matches!(
        s,
        pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled
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

/// The JSON form of an attempt.
pub fn agent_json(a: &pb::AgentStatus) -> serde_json::Value {
    serde_json::json!({
        "agent_id": a.agent_id,
        "attempt": a.attempt,
        "state": state_name(a.state()),
        "created_at_ms": a.created_at_ms,
        "started_at_ms": a.started_at_ms,
        "finished_at_ms": a.finished_at_ms,
        "exit_code": a.exit_code,
        "signal": a.signal,
        "error": a.error,
        "pid": a.pid,
        "output_tail": a.output_tail,
    })
}

/// The JSON form of a job with its attempts, shared by `--output json` and the dev demo.
pub fn job_json(spoke: &SpokeId, j: &pb::JobStatus) -> serde_json::Value {
    serde_json::json!({
        "spoke": spoke.to_string(),
        "job_id": j.job_id,
        "profile": j.profile,
        "workspace": j.workspace,
        "state": job_state_name(j.state()),
        "queue_paused": j.queue_paused,
        "priority": j.priority,
        "attempts": j.attempts,
        "failures": j.failures,
        "max_retries": j.max_retries,
        "created_at_ms": j.created_at_ms,
        "ready_at_ms": j.ready_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "error": j.error,
        "command_id": j.command_id,
        "attempt_history": j.attempt_history.iter().map(agent_json).collect::<Vec<_>>(),
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

pub fn job_state_name(s: pb::JobState) -> &'static str {
    match s {
        pb::JobState::Unspecified => "unspecified",
        pb::JobState::Pending => "pending",
        pb::JobState::Delayed => "delayed",
        pb::JobState::Assigned => "assigned",
        pb::JobState::Executing => "executing",
        pb::JobState::Completed => "completed",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

fn print_job(output: Output, receipt: &Receipt, j: &pb::JobStatus, rtt: Option<Duration>) {
    let mut json = job_json(&receipt.spoke_id, j);
    json["receipt"] = serde_json::json!({
        "command_id": receipt.command_id.to_string(),
        "key_id": receipt.signed.key_id,
        "executed_at_ms": receipt.executed_at_ms,
    });
    if let Some(rtt) = rtt {
        json["round_trip_ms"] = serde_json::json!((rtt.as_secs_f64() * 10_000.0).round() / 10.0);
    }
    emit(output, &json, || job_text(&receipt.spoke_id, j));
}

/// A job as aligned `field  value` lines, one line per attempt, then the last output tail.
pub fn job_text(spoke: &SpokeId, j: &pb::JobStatus) -> String {
    let mut state = job_state_name(j.state()).to_owned();
    if j.queue_paused {
        state.push_str(" (queue paused)");
    }
    let mut rows: Vec<(String, String)> = vec![
        ("job".into(), j.job_id.clone()),
        ("spoke".into(), spoke.to_string()),
        ("state".into(), state),
        ("profile".into(), j.profile.clone()),
        ("workspace".into(), j.workspace.clone()),
        ("priority".into(), j.priority.to_string()),
        (
            "attempts".into(),
            format!(
                "{} ({} failed; up to {} retries)",
                j.attempts, j.failures, j.max_retries
            ),
        ),
        ("created".into(), timestamp(j.created_at_ms)),
    ];
    if j.state() == pb::JobState::Delayed {
        rows.push(("ready at".into(), timestamp(j.ready_at_ms)));
    }
    if let Some(t) = j.finished_at_ms {
        rows.push(("finished".into(), timestamp(t)));
    }
    if !j.error.is_empty() {
        rows.push(("error".into(), j.error.clone()));
    }
    for a in &j.attempt_history {
        let mut line = format!("{}  {}", a.agent_id, state_name(a.state()));
        if let Some(c) = a.exit_code {
            line.push_str(&format!("  exit {c}"));
        }
        if let Some(s) = a.signal {
            line.push_str(&format!("  signal {s}"));
        }
        if let Some(p) = a.pid {
            line.push_str(&format!("  pid {p}"));
        }
        if !a.error.is_empty() {
            line.push_str(&format!("  ({})", a.error));
        }
        rows.push((format!("attempt {}", a.attempt), line));
    }
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<10} {v}\n"));
    }
    if let Some(last) = j.attempt_history.last()
        && !last.output_tail.is_empty()
    {
        out.push_str("output     ");
        out.push_str(&last.output_tail.trim_end().replace('\n', "\n           "));
        out.push('\n');
    }
    out
}

pub fn queue_json(spoke: &SpokeId, q: &pb::QueueCounts) -> serde_json::Value {
    serde_json::json!({
        "spoke": spoke.to_string(),
        "paused": q.paused,
        "pending": q.pending,
        "delayed": q.delayed,
        "active": q.active,
        "completed": q.completed,
        "failed": q.failed,
        "cancelled": q.cancelled,
    })
}

fn queue_text(spoke: &SpokeId, q: &pb::QueueCounts) -> String {
    format!(
        "spoke      {spoke}\ndispatch   {}\npending    {}\ndelayed    {}\nactive     {}\ncompleted  {}\nfailed     {}\ncancelled  {}\n",
        if q.paused { "paused" } else { "running" },
        q.pending,
        q.delayed,
        q.active,
        q.completed,
        q.failed,
        q.cancelled
    )
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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The admin API: where it is, how to trust it, and the caller's token.
struct AdminTarget {
    addr: String,
    identity: SpiffeId,
    tls: TlsMaterial,
    token: String,
}

/// Flags and environment first, then hub.toml (if given) for what they leave out.
fn admin_target(
    hub: &HubTarget,
    config: Option<PathBuf>,
    env: &Env,
) -> Result<AdminTarget, CliError> {
    let config = config.map(|p| load_config(Some(p), env)).transpose()?;
    let token = hub.token.clone().ok_or(
        "no admin token: pass --token or set MOSAIC_TOKEN (`mosaic-hub token new` makes one)",
    )?;
    let addr = match (&hub.addr, config.as_ref().map(|c| &c.serve)) {
        (Some(a), _) => a.clone(),
        (None, Some(Ok(serve))) => serve.listen.to_string(),
        _ => {
            return Err(
                "no admin API address: pass --hub host:port, set MOSAIC_HUB_ADDR, or give a hub.toml with listen"
                    .into(),
            );
        }
    };
    let identity = match (&hub.identity, &config) {
        (Some(i), _) => SpiffeId::parse(i).map_err(|e| usage(format!("--hub-identity: {e}")))?,
        (None, Some(c)) => SpiffeId::new(&c.trust_domain, Role::Hub, c.hub_id.as_str()),
        (None, None) => {
            return Err(
                "the hub's identity is unknown: pass --hub-identity spiffe://<trust-domain>/hub/<id>, set MOSAIC_HUB_IDENTITY, or give a hub.toml"
                    .into(),
            );
        }
    };
    let tls = match (&hub.ca, config) {
        (Some(ca), _) => TlsMaterial::trust_only(ca)?,
        (None, Some(c)) => c.tls,
        (None, None) => {
            return Err(
                "no CA to check the hub against: pass --hub-ca ca.crt, set MOSAIC_HUB_CA, or give a hub.toml"
                    .into(),
            );
        }
    };
    Ok(AdminTarget {
        addr,
        identity,
        tls,
        token,
    })
}

impl AdminTarget {
    async fn client(&self) -> Result<AdminClient<tonic::transport::Channel>, CliError> {
        let channel = tls::connect(
            &self.addr,
            self.identity.clone(),
            &self.tls,
            DialOptions::default(),
        )
        .await?;
        Ok(AdminClient::new(channel))
    }

    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, CliError> {
        let mut r = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| usage("--token: not a valid header value".into()))?;
        r.metadata_mut().insert("authorization", value);
        Ok(r)
    }
}

/// An admin API refusal as a CLI error: not found exits 4, the rest 1.
fn admin_error(s: &tonic::Status) -> CliError {
    CliError {
        code: if s.code() == tonic::Code::NotFound {
            4
        } else {
            1
        },
        message: format!("the hub refused: {} ({:?})", s.message(), s.code()),
    }
}

fn reason_of(s: &tonic::Status, key: &str) -> Option<String> {
    s.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn watch(
    args: WatchArgs,
    config: Option<PathBuf>,
    output: Output,
    env: &Env,
) -> Result<ExitCode, CliError> {
    use admin::watch_request::{Scope, Start};
    let target = admin_target(&args.hub, config, env)?;
    let scope = match (&args.workspace, &args.job, &args.spoke) {
        (Some(w), _, _) => Scope::Workspace(w.to_string()),
        (_, Some(j), _) => Scope::JobId(j.to_string()),
        (_, _, Some(s)) => Scope::SpokeId(s.to_string()),
        _ => return Err(usage("give one of --workspace, --job or --spoke".into())),
    };
    let types = args
        .types
        .iter()
        .map(|t| {
            render::parse_event_type(t).map(i32::from).ok_or_else(|| {
                usage(format!(
                    "--type: {t:?} is not an event type (e.g. job.progress, step.output, ai.tool_called)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let follow_job = args.job.as_ref().map(|j| j.to_string());
    // A job's watch shows its whole history unless told otherwise.
    let from_oldest =
        args.from_oldest || (follow_job.is_some() && args.after.is_none() && !args.snapshot);
    let mut cursor = args.after.clone();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut renderer = render::WatchRenderer::new(render::Options {
        tty: tty && output == Output::Table,
        width: env
            .get("COLUMNS")
            .and_then(|c| c.parse().ok())
            .unwrap_or(100),
        color: tty && env.get("NO_COLOR").is_none(),
        follow_job,
        show_output: true,
    });
    let mut stdout = std::io::stdout();
    let mut connected_once = false;
    let mut backoff = Duration::from_millis(200);
    loop {
        let start = match &cursor {
            Some(c) => Some(Start::After(c.clone())),
            None if from_oldest => Some(Start::FromOldest(true)),
            None => None,
        };
        let request = admin::WatchRequest {
            scope: Some(scope.clone()),
            types: types.clone(),
            start,
            snapshot: args.snapshot && cursor.is_none(),
        };
        let opened = match target.client().await {
            Ok(mut c) => c
                .watch(target.request(request)?)
                .await
                .map(tonic::Response::into_inner)
                .map_err(Some),
            Err(e) if !connected_once => return Err(e),
            Err(_) => Err(None),
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(Some(s)) if s.code() != tonic::Code::Unavailable => return Err(admin_error(&s)),
            Err(_) => {
                // The hub is restarting or unreachable: try again from the last cursor.
                eprintln!(
                    "watch: hub unavailable; retrying in {} ms",
                    backoff.as_millis()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        connected_once = true;
        backoff = Duration::from_millis(200);
        let status = loop {
            match stream.message().await {
                Ok(Some(item)) => {
                    if !item.cursor.is_empty() {
                        cursor = Some(item.cursor.clone());
                    }
                    let progress = match output {
                        Output::Json => {
                            println!("{}", render::json_line(&item));
                            render_progress(&mut renderer, &item)
                        }
                        Output::Table => renderer
                            .feed(&item, &mut stdout)
                            .map_err(|e| format!("cannot write: {e}"))?,
                    };
                    if let render::Progress::JobEnded { state } = progress {
                        let _ = renderer.finish(&mut stdout);
                        return Ok(ExitCode::from(match state {
                            pb::JobState::Completed => 0,
                            _ => 3,
                        }));
                    }
                }
                Ok(None) => break None,
                Err(s) => break Some(s),
            }
        };
        let _ = renderer.finish(&mut stdout);
        match status {
            None => {}
            Some(s) if reason_of(&s, "x-mosaic-reason").as_deref() == Some("resync_required") => {
                match reason_of(&s, "x-mosaic-cursor") {
                    Some(c) => {
                        eprintln!("watch: fell behind; resuming after {c}");
                        cursor = Some(c);
                    }
                    None => return Err(admin_error(&s)),
                }
            }
            Some(s) if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown => {
                eprintln!("watch: connection to the hub lost; resuming");
            }
            Some(s) => return Err(admin_error(&s)),
        }
    }
}

/// In JSON mode nothing is drawn, but a followed job's end still ends the watch.
fn render_progress(
    renderer: &mut render::WatchRenderer,
    item: &admin::WatchResponse,
) -> render::Progress {
    renderer
        .feed(item, &mut std::io::sink())
        .unwrap_or(render::Progress::Continue)
}
