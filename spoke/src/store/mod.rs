//! The spoke's durable state in Valkey: replay records, agent records, lifecycle events.
//!
//! Every job and attempt state change is one Lua script (in [`queue`]) that checks the current
//! state, updates the records, moves the queue entry and appends the events together, so no
//! reader ever sees a state without its event or an invalid transition. Scripts are invoked by SHA and reloaded
//! transparently after `NOSCRIPT` (a restarted Valkey). Key names come only from [`keys`].
//! This module never starts processes and never decides policy.

mod events;
pub mod keys;
mod queue;
mod retry;

pub use events::{AttemptEvents, EventReader, READ_BATCH};

pub use queue::{
    AttemptEnd, AttemptRecord, DispatchRequest, Dispatched, ExpiredLease, Guarded, JobRecord,
    NewJob, Outcome, QueueCounts, Started, Stepped, TraceContext,
};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mosaic_shared::ids::{AgentId, CommandId, HubId, JobId, ProfileName, SpokeId, WorkspaceId};
use mosaic_shared::pb::federation::v1 as pb;
pub use mosaic_shared::valkey::{Purpose, Target};
use redis::{AsyncCommands as _, Script};

use crate::lifecycle::AgentState;
use keys::Keys;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Unreachable(#[from] mosaic_shared::valkey::Unreachable),
    #[error("valkey: {0}")]
    Valkey(#[from] redis::RedisError),
    #[error("record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The prefix of a replay record while its command executes. A receipt never starts with it
/// (an encoded `SignedReceipt` starts with a protobuf tag byte).
const IN_FLIGHT: &str = "pending:";

/// Proof of one claim: the exact in-flight marker this request wrote.
#[derive(Debug, PartialEq, Eq)]
pub struct ClaimToken(String);

/// What the replay store knew about a command id when we tried to claim it.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Never seen: it is ours to execute; the token releases it if the command is refused.
    New(ClaimToken),
    /// Another request with this id is executing right now.
    InFlight,
    /// Executed before: the encoded signed receipt to return again.
    Done(Vec<u8>),
}

/// An agent as recorded in Valkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: AgentId,
    /// The job this agent is an attempt of, and which attempt (1 = the first).
    pub job_id: JobId,
    pub attempt: u32,
    pub profile: ProfileName,
    pub workspace: WorkspaceId,
    pub command_id: CommandId,
    pub state: AgentState,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub error: String,
    pub pid: Option<u32>,
    /// The process's start time (see `runner::process_start_time`), to recognise it later.
    pub proc_start: Option<u64>,
    pub output_tail: String,
}

impl AgentRecord {
    /// Attempt `n` of `job` from its job's hash (see [`keys::JOB`]); `None` if the job has no
    /// such attempt.
    fn from_job_hash(
        key: &str,
        h: &HashMap<String, String>,
        job: &JobId,
        n: u32,
    ) -> Result<Option<Self>, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        let field = |name: &str| h.get(&keys::attempt_field(n, name)).map(String::as_str);
        let Some(created) = field("created_at_ms") else {
            return Ok(None);
        };
        // An attempt's state is written when it ends; until then its job's state implies it.
        let state = match field("state") {
            Some(s) => s.parse().map_err(corrupt)?,
            None => match h.get("state").map(String::as_str) {
                Some("assigned") => AgentState::Spawning,
                Some("executing") => AgentState::Running,
                other => {
                    return Err(corrupt(format!(
                        "attempt {n} has no state while its job is {other:?}"
                    )));
                }
            },
        };
        let job_field = |f: &str| {
            h.get(f)
                .map(String::as_str)
                .ok_or_else(|| corrupt(format!("missing {f}")))
        };
        fn num<T: std::str::FromStr>(v: Option<&str>, f: &str) -> Result<Option<T>, String> {
            v.filter(|s| !s.is_empty())
                .map(|s| s.parse::<T>().map_err(|_| format!("{f} is not a number")))
                .transpose()
        }
        let idc = |e: mosaic_shared::ids::IdError| corrupt(e.to_string());
        let pid = num::<u32>(field("pid"), "pid").map_err(corrupt)?;
        Ok(Some(AgentRecord {
            agent_id: AgentId::of_attempt(job, n),
            job_id: job.clone(),
            attempt: n,
            profile: job_field("profile")?.parse().map_err(idc)?,
            workspace: job_field("workspace")?.parse().map_err(idc)?,
            command_id: queue::Launch::parse(job_field("launch")?)
                .map_err(corrupt)?
                .command_id,
            state,
            created_at_ms: created
                .parse()
                .map_err(|_| corrupt("created_at_ms is not a number".into()))?,
            started_at_ms: num(field("started_at_ms"), "started_at_ms").map_err(corrupt)?,
            finished_at_ms: num(field("finished_at_ms"), "finished_at_ms").map_err(corrupt)?,
            exit_code: num(field("exit_code"), "exit_code").map_err(corrupt)?,
            signal: num(field("signal"), "signal").map_err(corrupt)?,
            // An in-process attempt records pid 0: it has no process of its own.
            pid: pid.filter(|p| *p != 0),
            proc_start: num(field("proc_start"), "proc_start").map_err(corrupt)?,
            error: field("error").unwrap_or_default().to_owned(),
            output_tail: field("output_tail").unwrap_or_default().to_owned(),
        }))
    }

    pub fn to_pb(&self) -> pb::AgentStatus {
        pb::AgentStatus {
            agent_id: self.agent_id.to_string(),
            profile: self.profile.to_string(),
            workspace: self.workspace.to_string(),
            state: pb::AgentState::from(self.state).into(),
            created_at_ms: self.created_at_ms,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            exit_code: self.exit_code,
            signal: self.signal,
            error: self.error.clone(),
            pid: self.pid,
            command_id: self.command_id.to_string(),
            output_tail: self.output_tail.clone(),
            job_id: self.job_id.to_string(),
            attempt: self.attempt,
        }
    }
}

const RELEASE_COMMAND: &str = r"
-- KEYS: command record. ARGV: the claim's marker. Deletes the record only while it still
-- holds that marker (so never a receipt, and never another request's claim).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Handle to the spoke's Valkey. Cheap to clone: the connection is multiplexed and reconnects
/// by itself.
#[derive(Clone)]
pub struct Store {
    /// Retries transient failures (see `retry`); cheap to clone, multiplexed.
    con: retry::Retrying,
    /// For connections of their own (blocking stream reads).
    target: Target,
    keys: Keys,
    /// The scripts, shared: a `Script` holds its whole source, and the store is cloned for
    /// every call in flight and every attempt.
    release_command: Arc<Script>,
    queue: Arc<queue::QueueScripts>,
    events_scripts: Arc<events::EventScripts>,
}

impl Store {
    /// Connects and checks that Valkey answers, failing with a message that names the URL.
    pub async fn connect(target: &Target, spoke: &SpokeId) -> Result<Self, StoreError> {
        let con = target.connect(Purpose::Shared).await?;
        Ok(Store {
            con: retry::Retrying {
                con,
                errors: Default::default(),
            },
            target: target.clone(),
            keys: Keys::new(spoke),
            release_command: Arc::new(Script::new(RELEASE_COMMAND)),
            queue: Arc::new(queue::QueueScripts::new()),
            events_scripts: Arc::new(events::EventScripts::new(queue::PRELUDE)),
        })
    }

    /// Counts every failed Valkey call of this store and its clones (for the metrics).
    pub fn valkey_errors(&self) -> prometheus_client::metrics::counter::Counter {
        self.con.errors.clone()
    }

    /// Atomically claims `id` for execution (`SET NX GET`), or reports what happened to it.
    pub async fn claim_command(
        &self,
        hub: &HubId,
        id: &CommandId,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let mut con = self.con.clone();
        let token = ClaimToken(format!("{IN_FLIGHT}{}", uuid::Uuid::now_v7()));
        let previous: Option<Vec<u8>> = redis::cmd("SET")
            .arg(self.keys.command(hub, id))
            .arg(&token.0)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut con)
            .await?;
        Ok(match previous {
            None => Claim::New(token),
            // Our own marker: a retried SET whose first try did run.
            Some(v) if v == token.0.as_bytes() => Claim::New(token),
            Some(v) if v.starts_with(IN_FLIGHT.as_bytes()) => Claim::InFlight,
            Some(v) => Claim::Done(v),
        })
    }

    /// Records the signed receipt of a claimed command, keeping the claim's TTL.
    pub async fn save_receipt(
        &self,
        hub: &HubId,
        id: &CommandId,
        receipt: &[u8],
    ) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _: Option<String> = redis::cmd("SET")
            .arg(self.keys.command(hub, id))
            .arg(receipt)
            .arg("XX")
            .arg("KEEPTTL")
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    /// Gives up a claim whose command was refused before it did anything, so the id is free.
    pub async fn release_command(
        &self,
        hub: &HubId,
        id: &CommandId,
        token: &ClaimToken,
    ) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _: i64 = self
            .release_command
            .key(self.keys.command(hub, id))
            .arg(&token.0)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    /// The agent (attempt) with this id, read from its job's record.
    pub async fn agent(&self, id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
        let Some((job, n)) = id.attempt() else {
            return Ok(None);
        };
        let mut con = self.con.clone();
        let key = self.keys.job(job.as_str());
        let h: HashMap<String, String> = con.hgetall(&key).await?;
        AgentRecord::from_job_hash(&key, &h, &job, n)
    }

    /// Lifecycle transitions recorded for `agent`, oldest first, as `(from, to)` pairs: the
    /// states its events' kinds imply, in order (the first from ""). Reads the whole bounded
    /// stream; meant for tests and diagnostics until the events issue adds cursors.
    pub async fn lifecycle_events(
        &self,
        agent: &AgentId,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut con = self.con.clone();
        let raw: Vec<events::RawEntry> = redis::cmd("XRANGE")
            .arg(self.keys.events())
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await?;
        let records: Vec<_> = events::parse_entries(&self.keys.events(), raw)?
            .into_iter()
            .flat_map(|e| e.records)
            .collect();
        let field = |r: &crate::events::Record, f: &str| -> String {
            r.fields.get(f).cloned().unwrap_or_default()
        };
        let mut from = String::new();
        Ok(records
            .iter()
            .filter(|e| field(e, "agent_id") == agent.as_str())
            .filter_map(|e| {
                let to = attempt_state_after(&field(e, "kind"))?.to_string();
                if field(e, "started_at_ms").is_empty() {
                    Some(vec![(std::mem::replace(&mut from, to.clone()), to)])
                } else {
                    // An in-process attempt's start is recorded in its end's event.
                    let running = AgentState::Running.to_string();
                    let started = (std::mem::replace(&mut from, to.clone()), running.clone());
                    Some(vec![started, (running, to)])
                }
            })
            .flatten()
            .collect())
    }
}

/// The state an attempt is in after an event of `kind` that names it (events state the
/// transition by their kind; see `queue`'s scripts).
pub fn attempt_state_after(kind: &str) -> Option<AgentState> {
    Some(match kind {
        "job.started" => AgentState::Spawning,
        "agent.running" => AgentState::Running,
        "job.completed" => AgentState::Completed,
        "job.cancelled" => AgentState::Killed,
        "job.failed" | "job.retry" | "job.requeued" => AgentState::Failed,
        _ => return None,
    })
}
