//! The `mosaic-hub` command line: verbs, their output (aligned text or JSON) and exit codes.
//!
//! The client verbs (spawn, status, kill, agents, queue, spokes, audit, watch) talk only to the
//! hub's admin API with a bearer token; the hub signs the commands. Output goes to stdout (an
//! aligned table, or with `--output json` the proto3 JSON of the API's response, the same as
//! the HTTP API's), errors to stderr as one line that says what to do.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mosaic_shared::config::Env;
use mosaic_shared::ids::{HubId, JobId, ProfileName, SpokeId, WorkspaceId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::KeyPair;

use crate::auth;
use crate::certs::{self, PkiPlan};
use crate::config::HubConfig;
use crate::render;
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::admin::v1::admin_client::AdminClient;
use mosaic_shared::tls::{self, DialOptions, Role, SpiffeId, TlsMaterial};

const EXAMPLES: &str = "\
Examples:
  mosaic-hub dev                                   start a local federation (Valkey, hub, two spokes)
  mosaic-hub -c hub.toml serve                     serve the admin API and follow the spokes' events
  mosaic-hub keygen --out keys/hub                 write keys/hub.pem and keys/hub.pub.pem
  mosaic-hub certs init --out pki --trust-domain mosaic.local --hub hub --spoke spoke-a
  mosaic-hub token new --name ci --role operator --workspace team-a --workspace team-b

  The client verbs need the hub's address, a token and the CA: --hub/--token/--hub-ca, or
  MOSAIC_HUB_ADDR/MOSAIC_TOKEN/MOSAIC_HUB_CA, or -c hub.toml for the address and CA.
  export MOSAIC_TOKEN=…
  mosaic-hub -c hub.toml spokes
  mosaic-hub -c hub.toml spawn --spoke spoke-a --profile echo --workspace demo --wait -- hello
  mosaic-hub -c hub.toml spawn --select region=eu --profile shell --workspace demo \
      --request-id build-42 --priority 9 --max-retries 2 --timeout 10m -- 'make test'
  mosaic-hub -c hub.toml spawn --spoke spoke-a --profile echo --workspace demo --delay 30s -- later
  mosaic-hub -c hub.toml status <job id or agent id>
  mosaic-hub -c hub.toml kill <job id or agent id>
  mosaic-hub -c hub.toml agents --workspace demo --state executing --state pending
  mosaic-hub -c hub.toml queue stats --spoke spoke-a
  mosaic-hub -c hub.toml queue pause --spoke spoke-a
  mosaic-hub -c hub.toml audit --limit 20                  signed commands and receipts, verified
  mosaic-hub -c hub.toml watch --job <job id>              follow a job until it ends
  mosaic-hub -c hub.toml -o json watch --workspace demo --from-oldest

Exit codes:
  0  success (for spawn --wait: the job completed)
  1  error: config, connection, or a refusal not listed here
  2  usage error, or a request the hub found invalid
  3  spawn --wait, watch --job: the job failed or was cancelled; audit: a record did not verify
  4  not found (or in a workspace the token may not see)
  5  unavailable: the hub or a spoke cannot be reached now; retrying later may work
  6  not allowed: the token is not valid, or its role may not do this

Environment:
  MOSAIC_HUB_CONFIG               path to hub.toml (instead of --config)
  MOSAIC_HUB_ADDR, MOSAIC_TOKEN   the admin API's address and a bearer token
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
    /// Path to hub.toml (for serve; for the client verbs, the admin API's address and CA).
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
    /// Queue a job that runs an agent from a spoke's profile, retried on failure: on a named
    /// spoke, or on the least-loaded healthy spoke matching --select that offers the profile.
    Spawn(SpawnArgs),
    /// Show a job (by job id or the agent id of an attempt): state, attempts, exit codes,
    /// errors and the last attempt's output tail.
    Status(JobArgs),
    /// Cancel a job: remove it if it waits; otherwise SIGTERM its attempt's process group, then
    /// SIGKILL after the profile's grace. A cancelled job is never retried.
    Kill(KillArgs),
    /// List jobs and their current agents, newest first, from the hub's record of events.
    Agents(AgentsArgs),
    /// Operate a spoke's queue: counts, pause and resume dispatch.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// List configured spokes with their labels, reachability, version, profiles and queue.
    Spokes(SpokesArgs),
    /// List the commands the hub signed with the spokes' signed receipts, and verify each
    /// (with the keys in --config if given, else the hub's own check). Admin tokens only.
    Audit(AuditArgs),
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
    /// Authenticate with this client certificate (spiffe://<td>/admin/<name>, from `certs
    /// init --admin`) instead of a token; needs --client-key.
    #[arg(
        long = "client-cert",
        env = "MOSAIC_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(
        long = "client-key",
        env = "MOSAIC_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
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
}

#[derive(Args, Debug)]
pub struct SpokeArg {
    #[command(flatten)]
    pub hub: HubTarget,
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
        /// Admin API clients to issue certificates for (repeatable): spiffe://<td>/admin/<name>,
        /// which an `identity` entry of the hub's tokens file grants a role.
        #[arg(long = "admin")]
        admins: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

#[derive(Args, Debug)]
pub struct SpawnArgs {
    #[command(flatten)]
    pub hub: HubTarget,
    /// Spoke to run on ...
    #[arg(long, conflicts_with = "select")]
    pub spoke: Option<SpokeId>,
    /// ... or a label the spoke must have, KEY=VALUE (repeatable; none: any spoke).
    #[arg(long = "select", value_parser = parse_env)]
    pub select: Vec<(String, String)>,
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
    /// Your id for this request: repeating the command with the same id (after a timeout, or a
    /// hub restart) returns the first answer and never spawns twice.
    #[arg(long)]
    pub request_id: Option<String>,
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
    #[command(flatten)]
    pub hub: HubTarget,
    /// Spoke the job is on (default: where the hub placed it or heard of it).
    #[arg(long)]
    pub spoke: Option<SpokeId>,
    /// The job id printed by spawn, or the agent id of one of its attempts.
    pub id: String,
}

#[derive(Args, Debug)]
pub struct SpokesArgs {
    #[command(flatten)]
    pub hub: HubTarget,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Your id for this request (see spawn --request-id).
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub hub: HubTarget,
    /// Only this workspace.
    #[arg(long)]
    pub workspace: Option<WorkspaceId>,
    /// Only jobs on this spoke.
    #[arg(long)]
    pub spoke: Option<SpokeId>,
    /// Only jobs in this state (repeatable): pending, delayed, assigned, executing, completed,
    /// failed, cancelled.
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// At most this many (1-1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Continue after a previous page (printed when there are more).
    #[arg(long)]
    pub page_token: Option<String>,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub hub: HubTarget,
    /// Only commands sent to this spoke.
    #[arg(long)]
    pub spoke: Option<SpokeId>,
    /// Only this command.
    #[arg(long)]
    pub command: Option<String>,
    /// At most this many (1-1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Continue after a previous page (printed when there are more).
    #[arg(long)]
    pub page_token: Option<String>,
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

pub async fn run(cli: Cli, env: &Env) -> Result<ExitCode, CliError> {
    let output = cli.output;
    match cli.command {
        Command::Dev(args) => crate::dev::run(args, env).await.map_err(|e| CliError {
            code: 1,
            message: format!("{e:#}"),
        }),
        Command::Watch(args) => {
            let hub = args.hub.clone();
            watch(args, &hub, cli.config, output, env).await
        }
        Command::Serve => {
            let config = load_config(cli.config, env)?;
            let listen = match &config.serve {
                Ok(s) => s.listen,
                Err(e) => return Err(e.to_string().into()),
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            crate::server::run(config, listener, None, shutdown_signal())
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
            admins,
            days,
        }) => {
            if hubs.is_empty() && spokes.is_empty() && admins.is_empty() {
                return Err(
                    "name at least one --hub, --spoke or --admin to issue a certificate for".into(),
                );
            }
            for a in &admins {
                a.parse::<auth::TokenName>()
                    .map_err(|e| usage(format!("--admin: {e}")))?;
            }
            let files = certs::init(
                &out,
                &PkiPlan {
                    trust_domain,
                    hubs,
                    spokes,
                    admins,
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
            let target = admin_target(&args.hub, cli.config, env)?;
            spawn(args, &target, output).await
        }
        Command::Status(args) => {
            let target = admin_target(&args.hub, cli.config, env)?;
            let request = admin::GetStatusRequest {
                id: args.id,
                spoke_id: opt_string(args.spoke),
            };
            let mut client = target.client().await?;
            let r = client
                .get_status(target.request(request)?)
                .await
                .map_err(|s| admin_error(&s))?
                .into_inner();
            print_job(output, &r);
            Ok(ExitCode::SUCCESS)
        }
        Command::Kill(args) => {
            let target = admin_target(&args.job.hub, cli.config, env)?;
            let request = admin::KillRequest {
                id: args.job.id,
                spoke_id: opt_string(args.job.spoke),
                request_id: args.request_id.unwrap_or_default(),
            };
            let mut client = target.client().await?;
            let r = client
                .kill(target.request(request)?)
                .await
                .map_err(|s| admin_error(&s))?
                .into_inner();
            print_job(output, &r);
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents(args) => {
            let target = admin_target(&args.hub, cli.config, env)?;
            let mut states = Vec::new();
            for s in &args.states {
                let st = pb::JobState::from_str_name(&format!("JOB_STATE_{}", s.to_ascii_uppercase()))
                    .filter(|s| *s != pb::JobState::Unspecified)
                    .ok_or_else(|| usage(format!("--state: {s:?} is not one of pending, delayed, assigned, executing, completed, failed, cancelled")))?;
                states.push(st as i32);
            }
            let request = admin::ListAgentsRequest {
                workspace: opt_string(args.workspace),
                spoke_id: opt_string(args.spoke),
                states,
                limit: args.limit,
                page_token: args.page_token.unwrap_or_default(),
            };
            let mut client = target.client().await?;
            let r = client
                .list_agents(target.request(request)?)
                .await
                .map_err(|s| admin_error(&s))?
                .into_inner();
            emit_message(output, &r, || agents_table(&r));
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue(q) => {
            let (arg, verb) = match &q {
                QueueCommand::Stats(s) => (s, "stats"),
                QueueCommand::Pause(s) => (s, "pause"),
                QueueCommand::Resume(s) => (s, "resume"),
            };
            let spoke = &arg.spoke;
            let target = admin_target(&arg.hub, cli.config, env)?;
            let mut client = target.client().await?;
            let request = target.request(admin::QueueRequest {
                spoke_id: spoke.to_string(),
            })?;
            let r = match verb {
                "stats" => client.queue_stats(request).await,
                "pause" => client.pause_queue(request).await,
                _ => client.resume_queue(request).await,
            }
            .map_err(|s| admin_error(&s))?
            .into_inner();
            let counts = r.queue.unwrap_or_default();
            emit_message(output, &r, || queue_text(spoke, &counts));
            Ok(ExitCode::SUCCESS)
        }
        Command::Spokes(args) => {
            let target = admin_target(&args.hub, cli.config, env)?;
            let mut client = target.client().await?;
            let r = client
                .list_spokes(target.request(admin::ListSpokesRequest {})?)
                .await
                .map_err(|s| admin_error(&s))?
                .into_inner();
            emit_message(output, &r, || spokes_table(&r.spokes));
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(args) => {
            let hub = args.hub.clone();
            audit(args, &hub, cli.config, env, output).await
        }
    }
}

fn opt_string(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

async fn spawn(
    args: SpawnArgs,
    target: &AdminTarget,
    output: Output,
) -> Result<ExitCode, CliError> {
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    let request = admin::SpawnRequest {
        request_id: args.request_id.unwrap_or_default(),
        spoke_id: opt_string(args.spoke),
        selector: args.select.into_iter().collect(),
        spawn: Some(pb::Spawn {
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
        }),
    };
    let mut client = target.client().await?;
    let mut r = client
        .spawn(target.request(request)?)
        .await
        .map_err(|s| admin_error(&s))?
        .into_inner();
    if args.wait {
        r = wait_for_end(target, &mut client, &r).await?;
    }
    print_job(output, &r);
    let state = r.job.as_ref().map(|j| j.state()).unwrap_or_default();
    Ok(if !args.wait || state == pb::JobState::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Asks for the job's status until it is terminal, backing off to once a second.
async fn wait_for_end(
    target: &AdminTarget,
    client: &mut AdminClient<tonic::transport::Channel>,
    spawned: &admin::JobResponse,
) -> Result<admin::JobResponse, CliError> {
    let job = spawned
        .job
        .as_ref()
        .ok_or("the hub answered without a job")?;
    let mut current = spawned.clone();
    let mut delay = Duration::from_millis(50);
    while !is_job_terminal(current.job.as_ref().map(|j| j.state()).unwrap_or_default()) {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        current = client
            .get_status(target.request(admin::GetStatusRequest {
                id: job.job_id.clone(),
                spoke_id: spawned.spoke_id.clone(),
            })?)
            .await
            .map_err(|s| admin_error(&s))?
            .into_inner();
    }
    Ok(current)
}

async fn audit(
    args: AuditArgs,
    hub: &HubTarget,
    config: Option<PathBuf>,
    env: &Env,
    output: Output,
) -> Result<ExitCode, CliError> {
    // Keys of our own, if we have the hub's config: then the check does not rest on the hub.
    let local = config
        .as_ref()
        .map(|p| load_config(Some(p.clone()), env))
        .transpose()?;
    let target = admin_target(hub, config, env)?;
    let mut client = target.client().await?;
    let mut r = client
        .audit(target.request(admin::AuditRequest {
            spoke_id: opt_string(args.spoke),
            command_id: args.command.unwrap_or_default(),
            limit: args.limit,
            page_token: args.page_token.unwrap_or_default(),
        })?)
        .await
        .map_err(|s| admin_error(&s))?
        .into_inner();
    let checked_by = match &local {
        Some(c) => {
            let hubs = c.hub_keys();
            let spokes = c
                .spokes
                .iter()
                .map(|s| (s.id.to_string(), s.receipt_key.clone()))
                .collect();
            for rec in &mut r.records {
                match crate::audit::verify(rec, &hubs, &spokes) {
                    Ok(()) => {
                        rec.verified = true;
                        rec.verify_error.clear();
                    }
                    Err(why) => {
                        rec.verified = false;
                        rec.verify_error = why;
                    }
                }
            }
            "the keys in hub.toml"
        }
        None => "the hub (pass --config hub.toml to check with your own keys)",
    };
    let failed = r.records.iter().filter(|r| !r.verified).count();
    emit_message(output, &r, || {
        let mut t = audit_table(&r);
        t.push_str(&format!(
            "{} records, {} verified by {checked_by}{}\n",
            r.records.len(),
            r.records.len() - failed,
            if r.next_page_token.is_empty() {
                String::new()
            } else {
                format!("; more with --page-token {}", r.next_page_token)
            }
        ));
        t
    });
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
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

fn print_job(output: Output, r: &admin::JobResponse) {
    let job = r.job.clone().unwrap_or_default();
    emit_message(output, r, || {
        let mut t = job_text(&r.spoke_id, &job);
        if r.replayed {
            t.push_str(
                "(the answer to an earlier request with this request id; nothing was done again)\n",
            );
        }
        t
    });
}

/// A response: as its proto3 JSON (the HTTP API's form), or as text.
fn emit_message<M: serde::Serialize>(output: Output, message: &M, text: impl FnOnce() -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(message).expect("responses always serialize")
        ),
        Output::Table => print!("{}", text()),
    }
}

/// A job as aligned `field  value` lines, one line per attempt, then the last output tail.
pub fn job_text(spoke: &str, j: &pb::JobStatus) -> String {
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

fn queue_text(spoke: impl std::fmt::Display, q: &pb::QueueCounts) -> String {
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

fn spokes_table(spokes: &[admin::SpokeHealth]) -> String {
    let rows = spokes
        .iter()
        .map(|h| {
            let labels: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let q = h.queue.unwrap_or_default();
            vec![
                h.spoke_id.clone(),
                h.address.clone(),
                match (h.reachable, h.draining) {
                    (true, false) => "yes",
                    (true, true) => "draining",
                    (false, _) => "no",
                }
                .into(),
                if h.reachable {
                    format!("{:.1}", h.rtt_ms)
                } else {
                    "-".into()
                },
                or_dash(&h.version),
                or_dash(&labels.join(",")),
                if h.reachable {
                    format!("{}/{}", q.active, q.pending)
                } else {
                    "-".into()
                },
                if h.reachable {
                    h.profiles.join(",")
                } else {
                    h.error.clone()
                },
            ]
        })
        .collect();
    table(
        &[
            "SPOKE",
            "ADDRESS",
            "REACHABLE",
            "RTT_MS",
            "VERSION",
            "LABELS",
            "ACTIVE/PENDING",
            "PROFILES",
        ],
        rows,
    )
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

fn agents_table(r: &admin::ListAgentsResponse) -> String {
    let rows = r
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.job_id.clone(),
                j.spoke_id.clone(),
                j.workspace.clone(),
                job_state_name(j.state()).into(),
                or_dash(&j.agent_id),
                if j.agent_id.is_empty() {
                    "-".into()
                } else {
                    state_name(j.agent_state()).into()
                },
                if j.progress > 0 {
                    format!("{}%", j.progress)
                } else {
                    "-".into()
                },
                timestamp(j.at_ms),
                or_dash(&j.error),
            ]
        })
        .collect();
    let mut t = table(
        &[
            "JOB",
            "SPOKE",
            "WORKSPACE",
            "STATE",
            "AGENT",
            "AGENT_STATE",
            "PROGRESS",
            "UPDATED",
            "ERROR",
        ],
        rows,
    );
    if !r.next_page_token.is_empty() {
        t.push_str(&format!("more: --page-token {}\n", r.next_page_token));
    }
    t
}

fn audit_table(r: &admin::AuditResponse) -> String {
    let rows = r
        .records
        .iter()
        .map(|a| {
            vec![
                timestamp(a.at_ms),
                a.command_id.clone(),
                a.spoke_id.clone(),
                a.verb.clone(),
                or_dash(&a.caller),
                or_dash(&a.workspace),
                a.outcome.clone(),
                if a.verified {
                    "yes".into()
                } else {
                    format!("NO: {}", a.verify_error)
                },
            ]
        })
        .collect();
    table(
        &[
            "SIGNED",
            "COMMAND",
            "SPOKE",
            "VERB",
            "CALLER",
            "WORKSPACE",
            "OUTCOME",
            "VERIFIED",
        ],
        rows,
    )
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.push_str(&" ".repeat(w - c.chars().count() + 2));
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
    /// None: the client certificate in `tls` authenticates.
    token: Option<String>,
}

/// Flags and environment first, then hub.toml (if given) for what they leave out.
fn admin_target(
    hub: &HubTarget,
    config: Option<PathBuf>,
    env: &Env,
) -> Result<AdminTarget, CliError> {
    let config = config.map(|p| load_config(Some(p), env)).transpose()?;
    let token = match (&hub.token, &hub.client_cert) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => None,
        (None, None) => {
            return Err(
                "no admin token: pass --token or set MOSAIC_TOKEN (`mosaic-hub token new` makes one), or authenticate with --client-cert and --client-key"
                    .into(),
            );
        }
    };
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
        // The hub's own certificate is not the caller's: present none unless asked to.
        (None, Some(c)) => c.tls.without_client_certificate(),
        (None, None) => {
            return Err(
                "no CA to check the hub against: pass --hub-ca ca.crt, set MOSAIC_HUB_CA, or give a hub.toml"
                    .into(),
            );
        }
    };
    let tls = match (&hub.client_cert, &hub.client_key) {
        (Some(cert), Some(key)) => tls.with_client_certificate(cert, key)?,
        _ => tls,
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
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| usage("--token: not a valid header value".into()))?;
            r.metadata_mut().insert("authorization", value);
        }
        Ok(r)
    }
}

/// An admin API refusal as a CLI error, with the exit code its kind has (see `--help`).
fn admin_error(s: &tonic::Status) -> CliError {
    use tonic::Code as C;
    let code = match s.code() {
        C::InvalidArgument | C::OutOfRange => 2,
        C::NotFound => 4,
        C::Unavailable | C::DeadlineExceeded => 5,
        C::Unauthenticated | C::PermissionDenied => 6,
        _ => 1,
    };
    let reason = reason_of(s, crate::admin::REASON_KEY)
        .map(|r| format!(", {r}"))
        .unwrap_or_default();
    CliError {
        code,
        message: format!("the hub refused: {} ({:?}{reason})", s.message(), s.code()),
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
    hub: &HubTarget,
    config: Option<PathBuf>,
    output: Output,
    env: &Env,
) -> Result<ExitCode, CliError> {
    use admin::watch_request::{Scope, Start};
    let target = admin_target(hub, config, env)?;
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
