//! The job queue in Valkey: enqueue, dispatch, attempt start and end, retries, operator
//! controls, leases and retention.
//!
//! Each transition is one Lua script that checks the job's (and attempt's) current state,
//! updates the records, moves the job between the queue's sorted sets and appends the events,
//! so no reader sees a job in two places or a state without its event. Scripts receive "now" and
//! every random choice from Rust, which keeps them deterministic. Key names come from `keys`
//! (scripts that choose a job build its keys from [`Keys::prefix`] and the suffixes there).

use std::collections::HashMap;
use std::time::Duration;

use mosaic_shared::ids::{AgentId, CommandId, JobId, ProfileName, WorkspaceId};
use mosaic_shared::pb::federation::v1 as pb;
use redis::{AsyncCommands as _, Script};

use super::keys::Keys;
use super::{EVENTS_MAXLEN, Store, StoreError};
use crate::job::{JobOptions, JobState};
use crate::lifecycle::AgentState;

const PRELUDE: &str = include_str!("queue.lua");

/// How many pending jobs dispatch examines for one whose profile has a free slot.
const DISPATCH_SCAN: usize = 64;
/// Most due delayed jobs promoted by one dispatch call.
const PROMOTE_BATCH: usize = 256;
/// Most finished jobs deleted by one retention call per terminal state.
const TRIM_BATCH: usize = 500;

const ENQUEUE: &str = r"
-- KEYS: job, jobs index, pending, delayed, seq, events
-- ARGV: job id, now, ready_at, priority, workspace, maxlen, then field/value pairs
-- A repeat (a retried call whose first try ran) reports the job as it is.
local existing = redis.call('HGET', KEYS[1], 'state')
if existing then return existing end
local seq = redis.call('INCR', KEYS[5])
local state = 'pending'
if tonumber(ARGV[3]) > tonumber(ARGV[2]) then
  state = 'delayed'
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
else
  redis.call('ZADD', KEYS[3], pending_score(ARGV[4], seq), ARGV[1])
end
local fields = {'state', state, 'seq', seq, 'attempts', 0, 'failures', 0, 'ready_at_ms', ARGV[3]}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
event(KEYS[6], ARGV[6], 'kind', 'job.queued', 'job_id', ARGV[1], 'workspace', ARGV[5],
  'state', state, 'at_ms', ARGV[2])
return state
";

const DISPATCH: &str = r"
-- KEYS: pending, delayed, active, paused, running-by-profile, agents index, events
-- ARGV: key layout (3, see the prelude), now, lease_until, new agent ids (space separated: one
--       per attempt wanted), owner, total limit, maxlen, scan, promote batch, then
--       profile/limit pairs
-- Returns {next due time or '', then 11 fields per attempt created}.
local now, owner = ARGV[4], ARGV[7]
local out = {''}
local function reply(job_id, agent)
  local f = redis.call('HMGET', job_key(job_id), 'workspace', 'command_id', 'spec', 'timeout_ms',
    'failures', 'backoff_base_ms', 'backoff_cap_ms', 'profile')
  local attempt = redis.call('HGET', agent_key(agent), 'attempt')
  for _, v in ipairs({job_id, agent, attempt, f[8], f[1], f[2], f[3], f[4], f[5], f[6], f[7]}) do
    out[#out + 1] = v
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[11]))
for _, id in ipairs(due) do
  local f = redis.call('HMGET', job_key(id), 'priority', 'seq', 'workspace')
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], pending_score(f[1], f[2]), id)
  redis.call('HSET', job_key(id), 'state', 'pending')
  event(KEYS[7], ARGV[9], 'kind', 'job.status', 'job_id', id, 'workspace', f[3],
    'state', 'pending', 'at_ms', now)
end
local limits, limited = {}, false
for i = 12, #ARGV, 2 do
  limits[ARGV[i]] = tonumber(ARGV[i + 1])
  limited = true
end
local scan, total = tonumber(ARGV[10]), tonumber(ARGV[8])
local paused = redis.call('EXISTS', KEYS[4]) == 1
-- The first pending job (in order, among the first `scan`) whose profile is under its limit.
local function pick()
  if not limited then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
    if first then return first, nil end
    return nil
  end
  local offset = 0
  while offset < scan do
    local ids = redis.call('ZRANGE', KEYS[1], offset, offset + 7)
    if #ids == 0 then return nil end
    for _, id in ipairs(ids) do
      local p = redis.call('HGET', job_key(id), 'profile')
      local limit = limits[p]
      if not limit or (tonumber(redis.call('HGET', KEYS[5], p)) or 0) < limit then
        return id, p
      end
    end
    offset = offset + 8
  end
  return nil
end
for agent_id in string.gmatch(ARGV[6], '%S+') do
  -- A repeat (a retried call whose first try ran) returns the attempt it created.
  local earlier = redis.call('HGET', agent_key(agent_id), 'job_id')
  if earlier then
    reply(earlier, agent_id)
  else
    if paused or redis.call('ZCARD', KEYS[3]) >= total then break end
    local chosen, profile = pick()
    if not chosen then break end
    local job = job_key(chosen)
    -- Everything the attempt and the reply need, in one read.
    local f = redis.call('HMGET', job, 'workspace', 'command_id', 'spec', 'timeout_ms',
      'failures', 'backoff_base_ms', 'backoff_cap_ms', 'profile')
    profile = profile or f[8]
    redis.call('ZREM', KEYS[1], chosen)
    redis.call('ZADD', KEYS[3], ARGV[5], chosen)
    redis.call('HINCRBY', KEYS[5], profile, 1)
    local attempt = redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('HSET', job, 'state', 'assigned', 'current_agent', agent_id, 'owner', owner)
    redis.call('HSET', agent_key(agent_id), 'agent_id', agent_id, 'job_id', chosen,
      'attempt', attempt, 'profile', profile, 'workspace', f[1], 'command_id', f[2],
      'state', 'spawning', 'created_at_ms', now, 'owner', owner)
    redis.call('RPUSH', attempts_key(chosen), agent_id)
    redis.call('ZADD', KEYS[6], now, agent_id)
    event(KEYS[7], ARGV[9], 'kind', 'job.started', 'job_id', chosen, 'workspace', f[1],
      'agent_id', agent_id, 'attempt', attempt, 'state', 'assigned', 'at_ms', now)
    event(KEYS[7], ARGV[9], 'kind', 'agent.lifecycle', 'job_id', chosen, 'agent_id', agent_id,
      'workspace', f[1], 'from', '', 'to', 'spawning', 'at_ms', now)
    for _, v in ipairs({chosen, agent_id, attempt, profile, f[1], f[2], f[3], f[4], f[5], f[6],
        f[7]}) do
      out[#out + 1] = v
    end
  end
end
local next_due = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if next_due[2] then out[1] = next_due[2] end
return out
";

const ATTEMPT_RUNNING: &str = r"
-- KEYS: job, agent, events
-- ARGV: job id, agent id, now, pid, process start time, maxlen,
--       agent states that may become running, job states that may become executing
local current = redis.call('HGET', KEYS[2], 'state')
-- A repeat (a retried call whose first try ran) finds its own pid recorded.
if current == 'running' and redis.call('HGET', KEYS[2], 'pid') == ARGV[4] then
  return {1, 'spawning'}
end
if not is_in(current, ARGV[7]) then return {0, current or ''} end
local j = redis.call('HMGET', KEYS[1], 'state', 'current_agent', 'workspace')
if not is_in(j[1], ARGV[8]) or j[2] ~= ARGV[2] then return {0, 'job ' .. (j[1] or 'missing')} end
redis.call('HSET', KEYS[2], 'state', 'running', 'started_at_ms', ARGV[3], 'pid', ARGV[4],
  'proc_start', ARGV[5])
redis.call('HSET', KEYS[1], 'state', 'executing')
event(KEYS[3], ARGV[6], 'kind', 'agent.lifecycle', 'job_id', ARGV[1], 'agent_id', ARGV[2],
  'workspace', j[3], 'from', 'spawning', 'to', 'running', 'at_ms', ARGV[3])
event(KEYS[3], ARGV[6], 'kind', 'job.status', 'job_id', ARGV[1], 'workspace', j[3],
  'state', 'executing', 'at_ms', ARGV[3])
return {1, 'spawning'}
";

const ATTEMPT_END: &str = r"
-- KEYS: job, agent, active, pending, delayed, done:completed, done:failed, done:cancelled,
--       running-by-profile, events
-- ARGV: job id, agent id, now, outcome (completed|failed|killed|interrupted), retry delay ms,
--       error, exit code, signal, output tail, maxlen, agent states that may enter the
--       outcome's state, job states that hold an attempt, then for an attempt that starts and
--       ends in one step (an in-process agent): start time, agent states that may become
--       running, job states that may become executing ('' otherwise)
local current = redis.call('HGET', KEYS[2], 'state')
if ARGV[13] ~= '' and is_in(current, ARGV[14])
    and is_in(redis.call('HGET', KEYS[1], 'state'), ARGV[15])
    and redis.call('HGET', KEYS[1], 'current_agent') == ARGV[2] then
  local ws = redis.call('HGET', KEYS[1], 'workspace')
  redis.call('HSET', KEYS[2], 'state', 'running', 'started_at_ms', ARGV[13], 'pid', 0,
    'proc_start', 0)
  redis.call('HSET', KEYS[1], 'state', 'executing')
  event(KEYS[10], ARGV[10], 'kind', 'agent.lifecycle', 'job_id', ARGV[1], 'agent_id', ARGV[2],
    'workspace', ws, 'from', current, 'to', 'running', 'at_ms', ARGV[13])
  event(KEYS[10], ARGV[10], 'kind', 'job.status', 'job_id', ARGV[1], 'workspace', ws,
    'state', 'executing', 'at_ms', ARGV[13])
  current = 'running'
end
if not is_in(current, ARGV[11]) then return {0, current or ''} end
local outcome, now, id = ARGV[4], ARGV[3], ARGV[1]
local agent_state = outcome
if outcome == 'interrupted' then agent_state = 'failed' end
local fields = {'state', agent_state, 'finished_at_ms', now, 'error', ARGV[6],
  'output_tail', ARGV[9]}
if ARGV[7] ~= '' then fields[#fields + 1] = 'exit_code'; fields[#fields + 1] = ARGV[7] end
if ARGV[8] ~= '' then fields[#fields + 1] = 'signal'; fields[#fields + 1] = ARGV[8] end
redis.call('HSET', KEYS[2], unpack(fields))
local j = redis.call('HMGET', KEYS[1], 'state', 'current_agent', 'profile', 'workspace',
  'max_retries', 'priority', 'seq')
event(KEYS[10], ARGV[10], 'kind', 'agent.lifecycle', 'job_id', id, 'agent_id', ARGV[2],
  'workspace', j[4] or '', 'from', current, 'to', agent_state, 'at_ms', now)
if not is_in(j[1], ARGV[12]) or j[2] ~= ARGV[2] then
  return {1, j[1] or ''}
end
redis.call('ZREM', KEYS[3], id)
redis.call('HINCRBY', KEYS[9], j[3], -1)
redis.call('HDEL', KEYS[1], 'owner')
local next, kind = 'pending', 'job.status'
-- A job's error explains its current state: cleared when it completes.
local job_fields = {'error', ARGV[6]}
if outcome == 'completed' then
  next, kind = 'completed', 'job.completed'
  redis.call('ZADD', KEYS[6], now, id)
elseif outcome == 'killed' then
  next, kind = 'cancelled', 'job.cancelled'
  redis.call('ZADD', KEYS[8], now, id)
elseif outcome == 'interrupted' then
  redis.call('ZADD', KEYS[4], pending_score(j[6], j[7]), id)
else
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if failures <= tonumber(j[5]) then
    next, kind = 'delayed', 'job.retry'
    local ready = tonumber(now) + tonumber(ARGV[5])
    redis.call('ZADD', KEYS[5], ready, id)
    job_fields[#job_fields + 1] = 'ready_at_ms'
    job_fields[#job_fields + 1] = ready
  else
    next, kind = 'failed', 'job.failed'
    redis.call('ZADD', KEYS[7], now, id)
  end
end
job_fields[#job_fields + 1] = 'state'
job_fields[#job_fields + 1] = next
if next == 'completed' or next == 'failed' or next == 'cancelled' then
  job_fields[#job_fields + 1] = 'finished_at_ms'
  job_fields[#job_fields + 1] = now
end
redis.call('HSET', KEYS[1], unpack(job_fields))
event(KEYS[10], ARGV[10], 'kind', kind, 'job_id', id, 'workspace', j[4], 'agent_id', ARGV[2],
  'state', next, 'error', ARGV[6], 'at_ms', now)
return {1, next}
";

const REMOVE: &str = r"
-- KEYS: job, pending, delayed, done:cancelled, events
-- ARGV: job id, now, reason, maxlen
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return {-1, ''} end
-- A repeat (a retried call whose first try ran) finds its own reason recorded.
if s == 'cancelled' and redis.call('HGET', KEYS[1], 'error') == ARGV[3] then return {1, s} end
if s ~= 'pending' and s ~= 'delayed' then return {0, s} end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', ARGV[3], 'finished_at_ms', ARGV[2])
event(KEYS[5], ARGV[4], 'kind', 'job.cancelled', 'job_id', ARGV[1],
  'workspace', redis.call('HGET', KEYS[1], 'workspace'), 'state', 'cancelled',
  'error', ARGV[3], 'at_ms', ARGV[2])
return {1, s}
";

const RENEW: &str = r"
-- KEYS: active
-- ARGV: key layout (3, see the prelude), owner, lease_until, then job ids
local renewed = 0
for i = 6, #ARGV do
  if redis.call('HGET', job_key(ARGV[i]), 'owner') == ARGV[4] then
    renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[5], ARGV[i])
  end
end
return renewed
";

const TRIM: &str = r"
-- KEYS: done:completed, done:failed, done:cancelled, jobs index, agents index
-- ARGV: key layout (3, see the prelude), cutoff_ms, max per state, batch
local removed = 0
local batch = tonumber(ARGV[6])
for k = 1, 3 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[4], 'LIMIT', 0, batch)
  local excess = redis.call('ZCARD', KEYS[k]) - #ids - tonumber(ARGV[5])
  if excess > 0 then
    local oldest = redis.call('ZRANGE', KEYS[k], #ids, #ids + math.min(excess, batch) - 1)
    for _, id in ipairs(oldest) do ids[#ids + 1] = id end
  end
  for _, id in ipairs(ids) do
    for _, agent in ipairs(redis.call('LRANGE', attempts_key(id), 0, -1)) do
      redis.call('DEL', agent_key(agent))
      redis.call('ZREM', KEYS[5], agent)
    end
    redis.call('DEL', job_key(id), attempts_key(id))
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[k], id)
    removed = removed + 1
  end
end
return removed
";

/// A job to enqueue; its spec (what to run) is opaque to the queue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub job_id: JobId,
    pub workspace: WorkspaceId,
    pub profile: ProfileName,
    pub command_id: CommandId,
    /// What to launch, encoded by the caller (`job::JobSpec` as JSON).
    pub spec: String,
    pub options: JobOptions,
    pub created_at_ms: i64,
}

/// An attempt that dispatch just created, with what is needed to launch it.
#[derive(Debug, Clone)]
pub struct Dispatched {
    pub job_id: JobId,
    pub agent_id: AgentId,
    pub attempt: u32,
    pub profile: ProfileName,
    pub workspace: WorkspaceId,
    pub command_id: CommandId,
    pub spec: String,
    pub attempt_timeout: Option<Duration>,
    /// Failures before this attempt; the next failure is number `failures + 1`.
    pub failures: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0: the job completes.
    Completed,
    /// Failed, timed out, or lost with a crashed spoke: retried while retries remain.
    Failed,
    /// Killed on request: the job is cancelled, never retried.
    Killed,
    /// Ended by a spoke shutdown: the job goes back to the queue without counting a failure.
    Interrupted,
}

impl Outcome {
    /// The job states from which this outcome may move a job on: those the job table allows
    /// into the outcome's next state, among the states that hold an attempt.
    pub fn job_sources(self) -> Vec<JobState> {
        let next = match self {
            Outcome::Completed => JobState::Completed,
            // Failed with retries left goes to Delayed, which has the same sources.
            Outcome::Failed => JobState::Failed,
            Outcome::Killed => JobState::Cancelled,
            Outcome::Interrupted => JobState::Pending,
        };
        next.may_enter_from()
            .iter()
            .copied()
            .filter(|s| s.is_active())
            .collect()
    }

    /// The state the attempt (agent) ends in.
    pub fn attempt_state(self) -> AgentState {
        match self {
            Outcome::Completed => AgentState::Completed,
            Outcome::Failed | Outcome::Interrupted => AgentState::Failed,
            Outcome::Killed => AgentState::Killed,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Killed => "killed",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Everything recorded when an attempt ends.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    pub outcome: Outcome,
    /// Used only if the outcome is a failure that will be retried.
    pub retry_delay: Duration,
    pub error: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub output_tail: String,
    /// For an in-process agent that starts and ends in one step: when it started. The script
    /// then records spawning → running first, in the same transaction.
    pub started_in_process_at_ms: Option<i64>,
}

/// The result of a script that guards a transition.
#[derive(Debug, PartialEq, Eq)]
pub enum Guarded {
    /// Applied; carries the state the job (or attempt) is in now.
    Applied(String),
    /// Refused because of the current state, which it carries.
    Refused(String),
    Missing,
}

fn guarded(code: i64, state: String) -> Guarded {
    match code {
        1 => Guarded::Applied(state),
        0 => Guarded::Refused(state),
        _ => Guarded::Missing,
    }
}

/// Counts of jobs by queue position and state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub pending: u64,
    pub delayed: u64,
    pub active: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub paused: bool,
}

/// An active job whose attempt's lease has run out.
#[derive(Debug, Clone)]
pub struct ExpiredLease {
    pub job_id: JobId,
    pub agent_id: Option<AgentId>,
    pub owner: String,
}

/// The queue's scripts, loaded once per store.
#[derive(Clone)]
pub(super) struct QueueScripts {
    enqueue: Script,
    dispatch: Script,
    running: Script,
    end: Script,
    remove: Script,
    renew: Script,
    trim: Script,
}

impl QueueScripts {
    pub(super) fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        QueueScripts {
            enqueue: s(ENQUEUE),
            dispatch: s(DISPATCH),
            running: s(ATTEMPT_RUNNING),
            end: s(ATTEMPT_END),
            remove: s(REMOVE),
            renew: s(RENEW),
            trim: s(TRIM),
        }
    }
}

fn done_keys(keys: &Keys) -> [String; 3] {
    [
        keys.done(JobState::Completed),
        keys.done(JobState::Failed),
        keys.done(JobState::Cancelled),
    ]
}

/// One attempt from a dispatch reply: job, agent, attempt, profile, workspace, command, spec,
/// timeout, failures, backoff base, backoff cap.
fn parse_dispatched(f: &[String]) -> Result<Dispatched, String> {
    let num = |v: &str, what: &str| -> Result<u64, String> {
        v.parse::<u64>()
            .map_err(|_| format!("{what} is not a number"))
    };
    let id = |e: mosaic_shared::ids::IdError| e.to_string();
    let timeout = num(&f[7], "timeout_ms")?;
    Ok(Dispatched {
        job_id: f[0].parse().map_err(id)?,
        agent_id: f[1].parse().map_err(id)?,
        attempt: num(&f[2], "attempts")? as u32,
        profile: f[3].parse().map_err(id)?,
        workspace: f[4].parse().map_err(id)?,
        command_id: f[5].parse().map_err(id)?,
        spec: f[6].clone(),
        attempt_timeout: (timeout > 0).then(|| Duration::from_millis(timeout)),
        failures: num(&f[8], "failures")? as u32,
        backoff_base: Duration::from_millis(num(&f[9], "backoff_base_ms")?),
        backoff_cap: Duration::from_millis(num(&f[10], "backoff_cap_ms")?),
    })
}

/// The key layout that scripts choosing jobs inside Valkey need, as their first three
/// arguments (see the prelude in `queue.lua`).
fn layout(inv: &mut redis::ScriptInvocation<'_>, keys: &Keys) {
    inv.arg(keys.job_prefix())
        .arg(super::keys::ATTEMPTS)
        .arg(keys.agent_prefix());
}

/// A state list as the scripts take it: names separated by spaces.
fn names<S: Copy + std::fmt::Display>(states: &[S]) -> String {
    states
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Store {
    /// Puts a job in the queue: `pending`, or `delayed` if its not-before time is in the future.
    pub async fn enqueue(&self, job: &NewJob, now_ms: i64) -> Result<JobState, StoreError> {
        let mut con = self.con.clone();
        let o = &job.options;
        let ready_at = o.not_before_ms.unwrap_or(now_ms).max(now_ms);
        let mut inv = self.queue.enqueue.prepare_invoke();
        inv.key(self.keys.job(job.job_id.as_str()))
            .key(self.keys.jobs())
            .key(self.keys.pending())
            .key(self.keys.delayed())
            .key(self.keys.seq())
            .key(self.keys.events())
            .arg(job.job_id.as_str())
            .arg(now_ms)
            .arg(ready_at)
            .arg(o.priority)
            .arg(job.workspace.as_str())
            .arg(EVENTS_MAXLEN);
        let timeout = o.attempt_timeout.map_or(0, ms);
        for (f, v) in [
            ("job_id", job.job_id.to_string()),
            ("workspace", job.workspace.to_string()),
            ("profile", job.profile.to_string()),
            ("command_id", job.command_id.to_string()),
            ("spec", job.spec.clone()),
            ("priority", o.priority.to_string()),
            ("max_retries", o.max_retries.to_string()),
            ("backoff_base_ms", ms(o.backoff_base).to_string()),
            ("backoff_cap_ms", ms(o.backoff_cap).to_string()),
            ("timeout_ms", timeout.to_string()),
            ("created_at_ms", job.created_at_ms.to_string()),
        ] {
            inv.arg(f).arg(v);
        }
        let state: String = inv.invoke_async(&mut con).await?;
        self.parse_job_state(job.job_id.as_str(), &state)
    }

    /// Promotes due delayed jobs, then, unless paused or full, takes the first pending job whose
    /// profile has a free slot and creates its next attempt (in `spawning`), once per id in
    /// `agent_ids`, in one call. Also returns when the earliest delayed job becomes due (unix
    /// ms), if any.
    pub async fn dispatch_many(
        &self,
        now_ms: i64,
        lease: Duration,
        agent_ids: &[AgentId],
        owner: &str,
        total_limit: usize,
        profile_limits: &[(ProfileName, usize)],
    ) -> Result<(Vec<Dispatched>, Option<i64>), StoreError> {
        let mut con = self.con.clone();
        let mut inv = self.queue.dispatch.prepare_invoke();
        inv.key(self.keys.pending())
            .key(self.keys.delayed())
            .key(self.keys.active())
            .key(self.keys.paused())
            .key(self.keys.running_by_profile())
            .key(self.keys.agents())
            .key(self.keys.events());
        layout(&mut inv, &self.keys);
        let ids: Vec<&str> = agent_ids.iter().map(AgentId::as_str).collect();
        inv.arg(now_ms)
            .arg(now_ms + ms(lease) as i64)
            .arg(ids.join(" "))
            .arg(owner)
            .arg(total_limit)
            .arg(EVENTS_MAXLEN)
            .arg(DISPATCH_SCAN)
            .arg(PROMOTE_BATCH);
        for (profile, limit) in profile_limits {
            inv.arg(profile.as_str()).arg(*limit);
        }
        let reply: Vec<String> = inv.invoke_async(&mut con).await?;
        let corrupt = |reason: String| StoreError::Corrupt {
            key: self.keys.pending(),
            reason,
        };
        let (due, rest) = reply
            .split_first()
            .ok_or_else(|| corrupt("empty dispatch reply".into()))?;
        let next_due = if due.is_empty() {
            None
        } else {
            Some(
                due.parse::<f64>()
                    .map_err(|_| corrupt("next due time is not a number".into()))?
                    as i64,
            )
        };
        if rest.len() % 11 != 0 {
            return Err(corrupt("dispatch reply has the wrong shape".into()));
        }
        let started = rest
            .chunks(11)
            .map(|f| parse_dispatched(f).map_err(corrupt))
            .collect::<Result<_, _>>()?;
        Ok((started, next_due))
    }

    /// spawning → running for the attempt, assigned → executing for its job.
    pub async fn attempt_running(
        &self,
        job: &JobId,
        agent: &AgentId,
        now_ms: i64,
        pid: u32,
        proc_start: u64,
    ) -> Result<Guarded, StoreError> {
        let mut con = self.con.clone();
        let (code, state): (i64, String) = self
            .queue
            .running
            .key(self.keys.job(job.as_str()))
            .key(self.keys.agent(agent))
            .key(self.keys.events())
            .arg(job.as_str())
            .arg(agent.as_str())
            .arg(now_ms)
            .arg(pid)
            .arg(proc_start)
            .arg(EVENTS_MAXLEN)
            .arg(names(AgentState::Running.may_enter_from()))
            .arg(names(JobState::Executing.may_enter_from()))
            .invoke_async(&mut con)
            .await?;
        Ok(guarded(code, state))
    }

    /// Ends an attempt and moves its job on: completed, cancelled, back to pending, into a
    /// retry backoff, or failed. Returns the job's new state.
    pub async fn attempt_ended(
        &self,
        job: &JobId,
        agent: &AgentId,
        now_ms: i64,
        end: &AttemptEnd,
    ) -> Result<Guarded, StoreError> {
        let mut con = self.con.clone();
        let [done_completed, done_failed, done_cancelled] = done_keys(&self.keys);
        let (code, state): (i64, String) = self
            .queue
            .end
            .key(self.keys.job(job.as_str()))
            .key(self.keys.agent(agent))
            .key(self.keys.active())
            .key(self.keys.pending())
            .key(self.keys.delayed())
            .key(done_completed)
            .key(done_failed)
            .key(done_cancelled)
            .key(self.keys.running_by_profile())
            .key(self.keys.events())
            .arg(job.as_str())
            .arg(agent.as_str())
            .arg(now_ms)
            .arg(end.outcome.as_str())
            .arg(ms(end.retry_delay))
            .arg(&end.error)
            .arg(end.exit_code.map(|c| c.to_string()).unwrap_or_default())
            .arg(end.signal.map(|s| s.to_string()).unwrap_or_default())
            .arg(&end.output_tail)
            .arg(EVENTS_MAXLEN)
            .arg(names(end.outcome.attempt_state().may_enter_from()))
            .arg(names(&end.outcome.job_sources()))
            .arg(
                end.started_in_process_at_ms
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            )
            .arg(names(AgentState::Running.may_enter_from()))
            .arg(names(JobState::Executing.may_enter_from()))
            .invoke_async(&mut con)
            .await?;
        Ok(guarded(code, state))
    }

    /// Cancels a job that is still waiting (pending or delayed); refuses one that runs.
    pub async fn remove_job(
        &self,
        job: &JobId,
        now_ms: i64,
        reason: &str,
    ) -> Result<Guarded, StoreError> {
        let mut con = self.con.clone();
        let (code, state): (i64, String) = self
            .queue
            .remove
            .key(self.keys.job(job.as_str()))
            .key(self.keys.pending())
            .key(self.keys.delayed())
            .key(self.keys.done(JobState::Cancelled))
            .key(self.keys.events())
            .arg(job.as_str())
            .arg(now_ms)
            .arg(reason)
            .arg(EVENTS_MAXLEN)
            .invoke_async(&mut con)
            .await?;
        Ok(guarded(code, state))
    }

    /// Stops (or restarts) dispatch; running attempts are not touched.
    pub async fn set_paused(&self, paused: bool) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        if paused {
            let _: () = con.set(self.keys.paused(), 1).await?;
        } else {
            let _: () = con.del(self.keys.paused()).await?;
        }
        Ok(())
    }

    pub async fn queue_counts(&self) -> Result<QueueCounts, StoreError> {
        let mut con = self.con.clone();
        let [c, f, x] = done_keys(&self.keys);
        let (pending, delayed, active, completed, failed, cancelled, paused): (
            u64,
            u64,
            u64,
            u64,
            u64,
            u64,
            bool,
        ) = redis::pipe()
            .zcard(self.keys.pending())
            .zcard(self.keys.delayed())
            .zcard(self.keys.active())
            .zcard(c)
            .zcard(f)
            .zcard(x)
            .exists(self.keys.paused())
            .query_async(&mut con)
            .await?;
        Ok(QueueCounts {
            pending,
            delayed,
            active,
            completed,
            failed,
            cancelled,
            paused,
        })
    }

    /// Extends the leases of `jobs` that `owner` holds.
    pub async fn renew_leases(
        &self,
        owner: &str,
        jobs: &[JobId],
        until_ms: i64,
    ) -> Result<u64, StoreError> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let mut con = self.con.clone();
        let mut inv = self.queue.renew.prepare_invoke();
        inv.key(self.keys.active());
        layout(&mut inv, &self.keys);
        inv.arg(owner).arg(until_ms);
        for j in jobs {
            inv.arg(j.as_str());
        }
        Ok(inv.invoke_async(&mut con).await?)
    }

    /// Active jobs whose lease ran out before `now_ms`, with their current attempt and owner.
    pub async fn expired_leases(&self, now_ms: i64) -> Result<Vec<ExpiredLease>, StoreError> {
        let mut con = self.con.clone();
        let ids: Vec<String> = con
            .zrangebyscore_limit(self.keys.active(), "-inf", format!("({now_ms}"), 0, 1000)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let (agent, owner): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(self.keys.job(&id))
                .arg("current_agent")
                .arg("owner")
                .query_async(&mut con)
                .await?;
            let corrupt = |e: mosaic_shared::ids::IdError| StoreError::Corrupt {
                key: self.keys.job(&id),
                reason: e.to_string(),
            };
            out.push(ExpiredLease {
                agent_id: agent.map(|a| a.parse()).transpose().map_err(corrupt)?,
                job_id: id.parse().map_err(corrupt)?,
                owner: owner.unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Deletes finished jobs (and their attempts) older than `max_age` or beyond the newest
    /// `max_per_state` of each terminal state; returns how many, at most one batch per state.
    pub async fn trim_finished(
        &self,
        now_ms: i64,
        max_age: Duration,
        max_per_state: usize,
    ) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let [c, f, x] = done_keys(&self.keys);
        let mut inv = self.queue.trim.prepare_invoke();
        inv.key(c)
            .key(f)
            .key(x)
            .key(self.keys.jobs())
            .key(self.keys.agents());
        layout(&mut inv, &self.keys);
        inv.arg(now_ms.saturating_sub(i64::try_from(ms(max_age)).unwrap_or(i64::MAX)))
            .arg(max_per_state)
            .arg(TRIM_BATCH);
        Ok(inv.invoke_async(&mut con).await?)
    }

    /// A job's record and its attempts' ids, oldest first.
    pub async fn job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let mut con = self.con.clone();
        let key = self.keys.job(id.as_str());
        let (h, attempts): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .hgetall(&key)
            .lrange(self.keys.job_attempts(id.as_str()), 0, -1)
            .query_async(&mut con)
            .await?;
        if h.is_empty() {
            return Ok(None);
        }
        JobRecord::from_hash(&key, h, attempts).map(Some)
    }

    fn parse_job_state(&self, id: &str, s: &str) -> Result<JobState, StoreError> {
        s.parse().map_err(|reason| StoreError::Corrupt {
            key: self.keys.job(id),
            reason,
        })
    }
}

/// A job as recorded in Valkey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: JobId,
    pub workspace: WorkspaceId,
    pub profile: ProfileName,
    pub command_id: CommandId,
    pub state: JobState,
    pub priority: u8,
    pub attempts: u32,
    pub failures: u32,
    pub max_retries: u32,
    pub created_at_ms: i64,
    /// When a delayed job becomes (or became) ready.
    pub ready_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub error: String,
    pub spec: String,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Attempt (agent) ids, oldest first.
    pub attempt_ids: Vec<AgentId>,
}

impl JobRecord {
    fn from_hash(
        key: &str,
        mut h: HashMap<String, String>,
        attempts: Vec<String>,
    ) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        let mut take = |f: &str| h.remove(f).ok_or_else(|| corrupt(format!("missing {f}")));
        let text = |v: Result<String, StoreError>| v;
        let num = |v: String, f: &str| -> Result<i64, StoreError> {
            v.parse()
                .map_err(|_| corrupt(format!("{f} is not a number")))
        };
        let job_id = text(take("job_id"))?;
        let workspace = take("workspace")?;
        let profile = take("profile")?;
        let command_id = take("command_id")?;
        let state = take("state")?;
        let priority = take("priority")?;
        let attempts_n = take("attempts")?;
        let failures = take("failures")?;
        let max_retries = take("max_retries")?;
        let created = take("created_at_ms")?;
        let ready = take("ready_at_ms")?;
        let spec = take("spec")?;
        let base = take("backoff_base_ms")?;
        let cap = take("backoff_cap_ms")?;
        let finished = h.remove("finished_at_ms");
        let error = h.remove("error").unwrap_or_default();
        let idc = |e: mosaic_shared::ids::IdError| corrupt(e.to_string());
        Ok(JobRecord {
            job_id: job_id.parse().map_err(idc)?,
            workspace: workspace.parse().map_err(idc)?,
            profile: profile.parse().map_err(idc)?,
            command_id: command_id.parse().map_err(idc)?,
            state: state.parse().map_err(corrupt)?,
            priority: num(priority, "priority")? as u8,
            attempts: num(attempts_n, "attempts")? as u32,
            failures: num(failures, "failures")? as u32,
            max_retries: num(max_retries, "max_retries")? as u32,
            created_at_ms: num(created, "created_at_ms")?,
            ready_at_ms: num(ready, "ready_at_ms")?,
            finished_at_ms: finished.map(|f| num(f, "finished_at_ms")).transpose()?,
            error,
            spec,
            backoff_base: Duration::from_millis(num(base, "backoff_base_ms")? as u64),
            backoff_cap: Duration::from_millis(num(cap, "backoff_cap_ms")? as u64),
            attempt_ids: attempts
                .into_iter()
                .map(|a| a.parse().map_err(idc))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl JobRecord {
    pub fn to_pb(&self, attempts: &[super::AgentRecord], queue_paused: bool) -> pb::JobStatus {
        pb::JobStatus {
            job_id: self.job_id.to_string(),
            profile: self.profile.to_string(),
            workspace: self.workspace.to_string(),
            state: job_state_pb(self.state).into(),
            priority: u32::from(self.priority),
            attempts: self.attempts,
            failures: self.failures,
            max_retries: self.max_retries,
            created_at_ms: self.created_at_ms,
            ready_at_ms: self.ready_at_ms,
            finished_at_ms: self.finished_at_ms,
            error: self.error.clone(),
            command_id: self.command_id.to_string(),
            attempt_history: attempts.iter().map(super::AgentRecord::to_pb).collect(),
            queue_paused,
        }
    }
}

fn job_state_pb(s: JobState) -> pb::JobState {
    match s {
        JobState::Pending => pb::JobState::Pending,
        JobState::Delayed => pb::JobState::Delayed,
        JobState::Assigned => pb::JobState::Assigned,
        JobState::Executing => pb::JobState::Executing,
        JobState::Completed => pb::JobState::Completed,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

impl QueueCounts {
    pub fn to_pb(&self) -> pb::QueueCounts {
        pb::QueueCounts {
            pending: self.pending,
            delayed: self.delayed,
            active: self.active,
            completed: self.completed,
            failed: self.failed,
            cancelled: self.cancelled,
            paused: self.paused,
        }
    }
}

impl Store {
    /// A job with all its attempts' records, oldest first.
    pub async fn job_with_attempts(
        &self,
        id: &JobId,
    ) -> Result<Option<(JobRecord, Vec<super::AgentRecord>)>, StoreError> {
        let Some(job) = self.job(id).await? else {
            return Ok(None);
        };
        let mut attempts = Vec::with_capacity(job.attempt_ids.len());
        for a in &job.attempt_ids {
            if let Some(rec) = self.agent(a).await? {
                attempts.push(rec);
            }
        }
        Ok(Some((job, attempts)))
    }

    /// Whether dispatch is paused.
    pub async fn is_paused(&self) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        Ok(con.exists(self.keys.paused()).await?)
    }
}
