//! The job queue in Valkey: enqueue, dispatch, attempt start and end, retries, operator
//! controls, leases and retention.
//!
//! Each transition is checked, applied and announced by a Lua script in one step: it checks
//! the job's (and attempt's) current state, updates the records, moves the job between the
//! queue's sorted sets and appends the event, so no reader sees a job in two places or a state
//! without its event. Attempt transitions and dispatch share one script, STEP, which applies a
//! batch of attempt records (started running, ended) in order and then creates new attempts
//! for free slots: the scheduler makes one call per batch, whatever the number of attempts in
//! it. Scripts receive "now" and every random choice from Rust, which keeps them
//! deterministic. Key names come from `keys` (scripts that choose a job build its keys from
//! [`Keys::job_prefix`] and [`Keys::agent_prefix`]).
//!
//! A job's attempts live in the job's hash (see `keys::JOB`), so a transition reads and writes
//! one hash. The current attempt is the job's `attempts`-th; its state is implied by the job's
//! while the job is active (assigned: spawning, executing: running) and written once it ends.

use std::collections::HashMap;
use std::time::Duration;

use mosaic_shared::ids::{AgentId, CommandId, JobId, ProfileName, WorkspaceId};
use mosaic_shared::pb::federation::v1 as pb;
use redis::{AsyncCommands as _, Script};

use super::keys::Keys;
use super::{Store, StoreError};
use crate::job::{JobOptions, JobState};
use crate::lifecycle::AgentState;

pub(super) const PRELUDE: &str = include_str!("queue.lua");

/// How many pending jobs dispatch examines for one whose profile has a free slot.
const DISPATCH_SCAN: usize = 64;
/// Most due delayed jobs promoted by one call.
const PROMOTE_BATCH: usize = 256;
/// Most finished jobs deleted by one retention call per terminal state.
const TRIM_BATCH: usize = 500;
/// Fields per created attempt in STEP's reply.
const DISPATCHED_FIELDS: usize = 6;

const ENQUEUE: &str = r"
-- KEYS: job, pending, delayed, seq, events
-- ARGV: job id, now, ready_at, priority, workspace, then field/value pairs
-- A repeat (a retried call whose first try ran) reports the job as it is.
local existing = redis.call('HGET', KEYS[1], 'state')
if existing then return existing end
local seq = redis.call('INCR', KEYS[4])
local state = 'pending'
if tonumber(ARGV[3]) > tonumber(ARGV[2]) then
  state = 'delayed'
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
else
  redis.call('ZADD', KEYS[2], pending_score(ARGV[4], seq), ARGV[1])
end
-- The entry stands for job.created, and job.queued too if the job is ready (events::expand).
local events = 1
if state == 'pending' then events = 2 end
local fields = {'state', state, 'seq', seq, 'attempts', 0, 'failures', 0, 'ready_at_ms', ARGV[3],
  'events', events}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local e = {'kind', 'job.created', 'job_id', ARGV[1], 'workspace', ARGV[5], 'seq', 1,
  'at_ms', ARGV[2], 'ready_at_ms', ARGV[3]}
for i = 6, #ARGV, 2 do
  if ARGV[i] == 'trace' then traced(e, ARGV[i + 1]) end
end
event(KEYS[5], unpack(e))
return state
";

const STEP: &str = r"
-- KEYS: pending, delayed, active, paused, running-by-profile, events, done:completed,
--       done:failed, done:cancelled
-- ARGV: [1-2] key layout (see the prelude), [3] now, [4] lease_until, [5] owner,
--       [6] total limit, [7] '1' to promote due delayed jobs and report the next due time,
--       [8] how many attempts to create, [9] this dispatch's token (the same on a retry),
--       [10] profile limits 'name limit ...' ('' for none), [11] '1' if this dispatch
--       repeats one whose call failed (it may have run),
--       [12] number of records, then per record:
--       'run', job, agent, attempt, at, pid, process start time (7 fields);
--       'end', job, agent, attempt, at, outcome, retry delay ms, error, exit code, signal,
--       output tail, start time, pid, process start time (the last three '' unless the
--       attempt's start is written with its end: an in-process agent, or a process that
--       ended before its start was sent; an in-process agent has no pid) (14 fields).
-- Returns {next due time or '', record count, code and state per record, then per attempt
-- created: job id, attempt number, failures so far, profile, workspace, launch record}.
-- Each event entry carries the job's event number `seq` of the first event it stands for, and
-- the job's `events` field counts the events so far (events::expand says how many an entry
-- stands for).
--
-- Written for the cost of a call, which is mostly Lua's own allocations, not the commands:
-- the records are applied inline (no closure per call captures the loop's locals), tables are
-- made only when they are filled, and the allowed-state checks RUN_OK and END_OK are plain
-- comparisons that step_script writes in from the Rust state machines before the script is
-- loaded (so no call builds or sends them). SCAN and PROMOTE_BATCH come the same way.
local call = redis.call
local now, owner = ARGV[3], ARGV[5]
local PENDING, DELAYED, ACTIVE, RUNNING, EVENTS = KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6]
-- Queue moves are collected and made once per call: ids that leave the active set, and
-- (score, id) pairs per terminal state, each list made when its first item comes.
local left_active, completed, failed, cancelled
-- The call's lifecycle events go into one stream entry (a few for a very large call): one
-- record per event, each beginning with its `kind` (events::Entry splits an entry there), so
-- a call makes one XADD, not one per job.
local ev, ne = {}, 0
local function flush()
  if ne > 0 then call('XADD', EVENTS, '*', unpack(ev, 1, ne)); ne = 0 end
end
local function record(kind, id, workspace, agent, seq, at)
  ev[ne + 1] = 'kind'; ev[ne + 2] = kind; ev[ne + 3] = 'job_id'; ev[ne + 4] = id
  ev[ne + 5] = 'workspace'; ev[ne + 6] = workspace; ev[ne + 7] = 'seq'; ev[ne + 8] = seq
  ev[ne + 9] = 'at_ms'; ev[ne + 10] = at; ne = ne + 10
  if agent then ev[ne + 1] = 'agent_id'; ev[ne + 2] = agent; ne = ne + 2 end
end
-- A field of the record last begun, if it has a value.
local function field(k, v)
  if v then ev[ne + 1] = k; ev[ne + 2] = v; ne = ne + 2 end
end
local function finish(list, at, id)
  if not list then return {at, id} end
  list[#list + 1] = at
  list[#list + 1] = id
  return list
end

-- The state of the job's current attempt while the job is active, implied by the job's
-- (the attempt's own is written once it ends).
local function implied(jstate)
  if jstate == 'assigned' then return 'spawning' elseif jstate == 'executing' then return 'running' end
end

-- A record that is not for the live attempt: a repeat of one that was applied (answered as
-- applied), or stale (refused with the attempt's state).
local function not_live(job, n, repeat_state, repeat_pid, answer)
  local a = call('HMGET', job, 'state', 'attempts', attempt_field(n, 'state'),
    attempt_field(n, 'pid'))
  local state = a[3]
  if not state and a[2] == n then state = implied(a[1]) end
  if not state then return -1, '' end
  if state == repeat_state and (not repeat_pid or a[4] == repeat_pid) then return 1, answer end
  return 0, state
end

local count = tonumber(ARGV[12])
local out = {'', count}
local b = 12
for r = 1, count do
  local id, agent, n, at = ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local job = job_key(id)
  local code, state
  if ARGV[b + 1] == 'run' then
    local pid, pstart = ARGV[b + 6], ARGV[b + 7]
    b = b + 7
    local j = call('HMGET', job, 'state', 'attempts', 'workspace', 'events', 'trace')
    local jstate = j[1]
    local astate = implied(jstate)
    if j[2] == n and RUN_OK(astate, jstate) then
      local seq = tonumber(j[4]) + 1
      local af = attempt_prefix(n)
      call('HSET', job, 'state', 'executing', af .. 'started_at_ms', at, af .. 'pid', pid,
        af .. 'proc_start', pstart, 'events', seq)
      record('agent.running', id, j[3], agent, seq, at)
      field('trace', j[5])
      code, state = 1, astate
    else
      code, state = not_live(job, n, 'running', pid, 'spawning')
    end
  else
    local outcome, delay, err, exit_code, sig, tail, inproc, pid, pstart = ARGV[b + 6],
      ARGV[b + 7], ARGV[b + 8], ARGV[b + 9], ARGV[b + 10], ARGV[b + 11], ARGV[b + 12],
      ARGV[b + 13], ARGV[b + 14]
    b = b + 14
    local j = call('HMGET', job, 'state', 'attempts', 'workspace', 'error', 'counted',
      'failures', 'max_retries', 'events', 'trace')
    local agent_to = outcome
    if outcome == 'interrupted' then agent_to = 'failed' end
    local current = j[2] == n
    local jstate = j[1]
    local astate = implied(jstate)
    -- An in-process attempt starts and ends in this one step.
    local start_here = inproc ~= '' and current and RUN_OK(astate, jstate)
    if start_here then jstate, astate = 'executing', 'running' end
    if not (current and END_OK(outcome, astate, jstate)) then
      code, state = not_live(job, n, agent_to, nil, j[1] or '')
    else
      local af = attempt_prefix(n)
      local f = {af .. 'state', agent_to, af .. 'finished_at_ms', at}
      local k = 4
      -- The job's error explains its current state: cleared when it completes.
      if err ~= (j[4] or '') then f[k + 1] = 'error'; f[k + 2] = err; k = k + 2 end
      if err ~= '' then f[k + 1] = af .. 'error'; f[k + 2] = err; k = k + 2 end
      if tail ~= '' then f[k + 1] = af .. 'output_tail'; f[k + 2] = tail; k = k + 2 end
      if exit_code ~= '' then f[k + 1] = af .. 'exit_code'; f[k + 2] = exit_code; k = k + 2 end
      if sig ~= '' then f[k + 1] = af .. 'signal'; f[k + 2] = sig; k = k + 2 end
      if inproc ~= '' then f[k + 1] = af .. 'started_at_ms'; f[k + 2] = inproc; k = k + 2 end
      if pid ~= '' then f[k + 1] = af .. 'pid'; f[k + 2] = pid; k = k + 2 end
      if pstart ~= '' then f[k + 1] = af .. 'proc_start'; f[k + 2] = pstart; k = k + 2 end
      if left_active then left_active[#left_active + 1] = id else left_active = {id} end
      if j[5] == '1' then
        call('HINCRBY', RUNNING, call('HGET', job, 'profile'), -1)
        f[k + 1] = 'counted'; f[k + 2] = 0; k = k + 2
      end
      local next, kind, ready = 'pending', 'job.requeued', nil
      if outcome == 'completed' then
        next, kind = 'completed', 'job.completed'
        completed = finish(completed, at, id)
      elseif outcome == 'killed' then
        next, kind = 'cancelled', 'job.cancelled'
        cancelled = finish(cancelled, at, id)
      elseif outcome == 'interrupted' then
        local o = call('HMGET', job, 'priority', 'seq')
        call('ZADD', PENDING, pending_score(o[1], o[2]), id)
      else
        local failures = tonumber(j[6]) + 1
        f[k + 1] = 'failures'; f[k + 2] = failures; k = k + 2
        if failures <= tonumber(j[7]) then
          next, kind = 'delayed', 'job.retry'
          ready = tonumber(at) + tonumber(delay)
          call('ZADD', DELAYED, ready, id)
          f[k + 1] = 'ready_at_ms'; f[k + 2] = ready; k = k + 2
        else
          next, kind = 'failed', 'job.failed'
          failed = finish(failed, at, id)
        end
      end
      if next ~= 'pending' and next ~= 'delayed' then
        f[k + 1] = 'finished_at_ms'; f[k + 2] = at; k = k + 2
      end
      -- The attempt's end and the job's change; an in-process start comes first.
      local seq = tonumber(j[8]) + 1
      local last = seq + 1
      if start_here then last = seq + 2 end
      f[k + 1] = 'state'; f[k + 2] = next; f[k + 3] = 'events'; f[k + 4] = last
      call('HSET', job, unpack(f))
      record(kind, id, j[3], agent, seq, at)
      if err ~= '' then field('error', err) end
      field('ready_at_ms', ready)
      if start_here then field('started_at_ms', inproc) end
      field('trace', j[9])
      code, state = 1, next
    end
  end
  out[r * 2 + 1] = code
  out[r * 2 + 2] = state
  -- Lua unpacks at most a few thousand values: a large call writes several entries.
  if ne > 4000 then flush() end
end
if left_active then call('ZREM', ACTIVE, unpack(left_active)) end
if completed then call('ZADD', KEYS[7], unpack(completed)) end
if failed then call('ZADD', KEYS[8], unpack(failed)) end
if cancelled then call('ZADD', KEYS[9], unpack(cancelled)) end

if ARGV[7] == '1' then
  local due = call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, PROMOTE_BATCH)
  for _, id in ipairs(due) do
    local job = job_key(id)
    local f = call('HMGET', job, 'priority', 'seq', 'workspace', 'events', 'trace')
    local seq = tonumber(f[4]) + 1
    call('ZADD', PENDING, pending_score(f[1], f[2]), id)
    call('HSET', job, 'state', 'pending', 'events', seq)
    record('job.ready', id, f[3], nil, seq, now)
    field('trace', f[5])
    if ne > 4000 then flush() end
  end
  if #due > 0 then call('ZREM', DELAYED, unpack(due)) end
end

-- New attempts. Each needs the launch record (what to run and how, encoded by Rust at enqueue
-- and passed through untouched), the attempt count, failures so far, profile and workspace.
local wanted, token = tonumber(ARGV[8]), ARGV[9]
local repeated = false
if wanted > 0 and ARGV[11] == '1' then
  -- A repeat of a call that failed: if its first try ran, the attempts it created (marked
  -- with its token), as they are.
  for _, id in ipairs(call('ZRANGE', ACTIVE, 0, -1)) do
    local f = call('HMGET', job_key(id), 'launch', 'attempts', 'failures', 'profile',
      'workspace', 'dispatch_token')
    if f[6] == token then
      repeated = true
      local o = #out
      out[o + 1] = id; out[o + 2] = f[2]; out[o + 3] = f[3]; out[o + 4] = f[4]
      out[o + 5] = f[5]; out[o + 6] = f[1]
    end
  end
end
if wanted > 0 and not repeated and call('EXISTS', KEYS[4]) == 0 then
  local room = math.min(wanted, tonumber(ARGV[6]) - call('ZCARD', ACTIVE))
  local limits, popped
  if ARGV[10] == '' then
    -- No profile limits: the first `room` pending jobs, in order.
    if room > 0 then popped = call('ZPOPMIN', PENDING, room) end
  else
    limits = {}
    local name
    for x in string.gmatch(ARGV[10], '%S+') do
      if name then limits[name] = tonumber(x); name = nil else name = x end
    end
  end
  local leases, lease_until = {}, ARGV[4]
  for i = 1, room do
    local id
    if popped then
      id = popped[i * 2 - 1]
    else
      -- With profile limits: the first pending job (in order, among the first SCAN) whose
      -- profile is under its limit, one slot at a time.
      local offset = 0
      while not id and offset < SCAN do
        local page = call('ZRANGE', PENDING, offset, offset + 7)
        if #page == 0 then break end
        for _, c in ipairs(page) do
          local p = call('HGET', job_key(c), 'profile')
          local limit = limits[p]
          if not limit or (tonumber(call('HGET', RUNNING, p)) or 0) < limit then
            call('ZREM', PENDING, c)
            id = c
            break
          end
        end
        offset = offset + 8
      end
    end
    if not id then break end
    local job = job_key(id)
    local f = call('HMGET', job, 'launch', 'attempts', 'failures', 'profile', 'workspace',
      'events', 'trace')
    local n = tonumber(f[2]) + 1
    leases[i * 2 - 1] = lease_until
    leases[i * 2] = id
    -- job.started and agent.spawning.
    local seq = tonumber(f[6]) + 1
    if limits and limits[f[4]] then
      call('HINCRBY', RUNNING, f[4], 1)
      call('HSET', job, 'state', 'assigned', 'owner', owner, 'attempts', n, 'dispatch_token',
        token, attempt_field(n, 'created_at_ms'), now, 'events', seq + 1, 'counted', 1)
    else
      call('HSET', job, 'state', 'assigned', 'owner', owner, 'attempts', n, 'dispatch_token',
        token, attempt_field(n, 'created_at_ms'), now, 'events', seq + 1)
    end
    record('job.started', id, f[5], id .. '.' .. n, seq, now)
    field('trace', f[7])
    if ne > 4000 then flush() end
    local o = #out
    out[o + 1] = id; out[o + 2] = n; out[o + 3] = f[3]; out[o + 4] = f[4]
    out[o + 5] = f[5]; out[o + 6] = f[1]
  end
  if #leases > 0 then call('ZADD', ACTIVE, unpack(leases)) end
end
if ARGV[7] == '1' then
  local next_due = call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
  if next_due[2] then out[1] = next_due[2] end
end
flush()
return out
";

const REMOVE: &str = r"
-- KEYS: job, pending, delayed, done:cancelled, events
-- ARGV: job id, now, reason
local j = redis.call('HMGET', KEYS[1], 'state', 'error', 'workspace', 'events', 'trace')
local s = j[1]
if not s then return {-1, ''} end
-- A repeat (a retried call whose first try ran) finds its own reason recorded.
if s == 'cancelled' and j[2] == ARGV[3] then return {1, s} end
if s ~= 'pending' and s ~= 'delayed' then return {0, s} end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
local seq = tonumber(j[4]) + 1
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'error', ARGV[3], 'finished_at_ms', ARGV[2],
  'events', seq)
event(KEYS[5], unpack(traced({'kind', 'job.cancelled', 'job_id', ARGV[1], 'workspace', j[3],
  'seq', seq, 'error', ARGV[3], 'at_ms', ARGV[2]}, j[5])))
return {1, s}
";

const RENEW: &str = r"
-- KEYS: active
-- ARGV: key layout (2, see the prelude), owner, lease_until, then job ids
local renewed = 0
for i = 5, #ARGV do
  if redis.call('HGET', job_key(ARGV[i]), 'owner') == ARGV[3] then
    renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[4], ARGV[i])
  end
end
return renewed
";

const TRIM: &str = r"
-- KEYS: done:completed, done:failed, done:cancelled
-- ARGV: key layout (2, see the prelude), cutoff_ms, max per state, batch
local removed = 0
local batch = tonumber(ARGV[5])
for k = 1, 3 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[3], 'LIMIT', 0, batch)
  local excess = redis.call('ZCARD', KEYS[k]) - #ids - tonumber(ARGV[4])
  if excess > 0 then
    local oldest = redis.call('ZRANGE', KEYS[k], #ids, #ids + math.min(excess, batch) - 1)
    for _, id in ipairs(oldest) do ids[#ids + 1] = id end
  end
  for _, id in ipairs(ids) do
    redis.call('DEL', job_key(id))
    removed = removed + 1
  end
  if #ids > 0 then redis.call('ZREM', KEYS[k], unpack(ids)) end
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
    /// The W3C trace context of the span that queued the job (empty: none): its attempts'
    /// spans join that trace, and its events carry the trace id.
    pub trace: TraceContext,
}

/// A W3C trace context, as `traceparent` and `tracestate` strings (empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceContext {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
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
    /// The trace context the job was queued in (see [`NewJob::trace`]).
    pub trace: TraceContext,
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
    /// In the order STEP takes their state tables.
    pub const ALL: [Outcome; 4] = [
        Outcome::Completed,
        Outcome::Failed,
        Outcome::Killed,
        Outcome::Interrupted,
    ];

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

    pub fn as_str(self) -> &'static str {
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
    /// For an attempt whose start is written with its end: when it started, and its process
    /// (none for an in-process agent). The script then records spawning → running first, in the
    /// same transaction. See `scheduler`'s folding of a start into its end.
    pub started: Option<Started>,
}

/// When an attempt started running, written together with its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub at_ms: i64,
    /// The process and its start time (`/proc` ticks); none for an in-process agent.
    pub process: Option<(u32, u64)>,
}

/// An attempt's progress, applied by STEP in the order given.
#[derive(Debug, Clone)]
pub enum AttemptRecord {
    /// spawning → running for the attempt, assigned → executing for its job.
    Running {
        job: JobId,
        agent: AgentId,
        at_ms: i64,
        pid: u32,
        proc_start: u64,
    },
    /// The attempt ended; its job moves on (done, retry, or back to the queue).
    Ended {
        job: JobId,
        agent: AgentId,
        at_ms: i64,
        end: AttemptEnd,
    },
}

impl AttemptRecord {
    pub fn agent(&self) -> &AgentId {
        match self {
            AttemptRecord::Running { agent, .. } | AttemptRecord::Ended { agent, .. } => agent,
        }
    }

    pub fn job(&self) -> &JobId {
        match self {
            AttemptRecord::Running { job, .. } | AttemptRecord::Ended { job, .. } => job,
        }
    }

    /// Whether writing this record may put its job into a retry backoff.
    pub fn may_delay_job(&self) -> bool {
        matches!(self, AttemptRecord::Ended { end, .. } if end.outcome == Outcome::Failed)
    }

    pub fn is_end(&self) -> bool {
        matches!(self, AttemptRecord::Ended { .. })
    }

    /// STEP's arguments for this record: 7 for a start, 14 for an end.
    fn args(&self) -> Result<Vec<String>, String> {
        let attempt = self
            .agent()
            .attempt()
            .map(|(_, n)| n.to_string())
            .ok_or_else(|| format!("{} is not an attempt's id", self.agent()))?;
        Ok(match self {
            AttemptRecord::Running {
                job,
                agent,
                at_ms,
                pid,
                proc_start,
            } => vec![
                "run".into(),
                job.to_string(),
                agent.to_string(),
                attempt,
                at_ms.to_string(),
                pid.to_string(),
                proc_start.to_string(),
            ],
            AttemptRecord::Ended {
                job,
                agent,
                at_ms,
                end,
            } => vec![
                "end".into(),
                job.to_string(),
                agent.to_string(),
                attempt,
                at_ms.to_string(),
                end.outcome.as_str().into(),
                ms(end.retry_delay).to_string(),
                end.error.clone(),
                end.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                end.signal.map(|s| s.to_string()).unwrap_or_default(),
                end.output_tail.clone(),
                end.started.map(|s| s.at_ms.to_string()).unwrap_or_default(),
                end.started
                    .and_then(|s| s.process)
                    .map(|(pid, _)| pid.to_string())
                    .unwrap_or_default(),
                end.started
                    .and_then(|s| s.process)
                    .map(|(_, start)| start.to_string())
                    .unwrap_or_default(),
            ],
        })
    }
}

/// What STEP needs to create new attempts.
#[derive(Debug, Clone)]
pub struct DispatchRequest<'a> {
    /// How many attempts to create at most.
    pub count: usize,
    /// Unique per dispatch. A retry of a call that failed passes the same token and gets what
    /// the first try created, if it ran.
    pub token: &'a str,
    pub lease: Duration,
    /// The owner recorded on the new attempts' leases.
    pub owner: &'a str,
    /// Whether this dispatch repeats one whose call failed (same token): its first try may
    /// have run, and then the attempts it created are returned instead of new ones.
    pub repeat: bool,
    /// The spoke-wide limit on active jobs.
    pub total_limit: usize,
    pub profile_limits: &'a [(ProfileName, usize)],
    /// Promote due delayed jobs first and report when the next one is due.
    pub promote: bool,
}

/// What one STEP call did.
#[derive(Debug)]
pub struct Stepped {
    /// One result per record, in order.
    pub records: Vec<Guarded>,
    pub dispatched: Vec<Dispatched>,
    /// When the earliest delayed job becomes due (unix ms), if promotion was asked for.
    pub next_due: Option<i64>,
}

/// The result of a script that guards a transition.
#[derive(Debug, PartialEq, Eq)]
pub enum Guarded {
    /// Applied; carries the state the job (or attempt) is in now.
    Applied(String),
    /// Refused because of the current state, which it carries.
    Refused(String),
    /// No such attempt (or job).
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
    step: Script,
    remove: Script,
    renew: Script,
    trim: Script,
}

impl QueueScripts {
    pub(super) fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}\n{body}"));
        QueueScripts {
            enqueue: s(ENQUEUE),
            step: s(&step_script()),
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

/// STEP's reply: the next due time, the record count, a code and state per record, then
/// [`DISPATCHED_FIELDS`] per attempt created.
fn parse_step(reply: &[String], records: usize) -> Result<Stepped, String> {
    let (due, rest) = reply.split_first().ok_or("empty step reply")?;
    let next_due = if due.is_empty() {
        None
    } else {
        Some(
            due.parse::<f64>()
                .map_err(|_| "next due time is not a number")? as i64,
        )
    };
    let (count, rest) = rest
        .split_first()
        .ok_or("step reply without a record count")?;
    if count.parse::<usize>().ok() != Some(records) || rest.len() < 2 * records {
        return Err("step reply has the wrong number of record results".into());
    }
    let (results, created) = rest.split_at(2 * records);
    let records = results
        .chunks(2)
        .map(|r| {
            let code = r[0]
                .parse::<i64>()
                .map_err(|_| "record result code is not a number")?;
            Ok(guarded(code, r[1].clone()))
        })
        .collect::<Result<_, String>>()?;
    if created.len() % DISPATCHED_FIELDS != 0 {
        return Err("step reply's attempts have the wrong shape".into());
    }
    let dispatched = created
        .chunks(DISPATCHED_FIELDS)
        .map(parse_dispatched)
        .collect::<Result<_, _>>()?;
    Ok(Stepped {
        records,
        dispatched,
        next_due,
    })
}

/// What an attempt needs from its job that only Rust reads: stored at enqueue in the job's
/// `launch` field and handed back by dispatch untouched.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Launch {
    pub(super) command_id: CommandId,
    spec: String,
    timeout_ms: u64,
    backoff_base_ms: u64,
    backoff_cap_ms: u64,
    #[serde(default, flatten)]
    trace: TraceContext,
}

impl Launch {
    pub(super) fn parse(v: &str) -> Result<Self, String> {
        serde_json::from_str(v).map_err(|e| format!("launch record is unreadable: {e}"))
    }
}

/// One attempt from a dispatch reply: job, attempt, failures, profile, workspace, launch.
fn parse_dispatched(f: &[String]) -> Result<Dispatched, String> {
    let num = |v: &str, what: &str| -> Result<u32, String> {
        v.parse::<u32>()
            .map_err(|_| format!("{what} is not a number"))
    };
    let id = |e: mosaic_shared::ids::IdError| e.to_string();
    let job_id: JobId = f[0].parse().map_err(id)?;
    let attempt = num(&f[1], "attempts")?;
    let launch = Launch::parse(&f[5])?;
    Ok(Dispatched {
        agent_id: AgentId::of_attempt(&job_id, attempt),
        job_id,
        attempt,
        failures: num(&f[2], "failures")?,
        profile: f[3].parse().map_err(id)?,
        workspace: f[4].parse().map_err(id)?,
        command_id: launch.command_id,
        spec: launch.spec,
        attempt_timeout: (launch.timeout_ms > 0).then(|| Duration::from_millis(launch.timeout_ms)),
        backoff_base: Duration::from_millis(launch.backoff_base_ms),
        backoff_cap: Duration::from_millis(launch.backoff_cap_ms),
        trace: launch.trace,
    })
}

/// The key layout that scripts choosing jobs inside Valkey need, as their first two
/// arguments (see the prelude in `queue.lua`).
fn layout(inv: &mut redis::ScriptInvocation<'_>, keys: &Keys) {
    inv.arg(keys.job_prefix()).arg(super::keys::ATTEMPT_FIELD);
}

/// STEP as loaded (after the prelude): its constants `SCAN` and `PROMOTE_BATCH`, and its
/// allowed-state checks `RUN_OK(astate, jstate)` and `END_OK(outcome, astate, jstate)` written
/// in as plain comparisons from the Rust state machines. Comparisons cost a call nothing to
/// set up, where tables of allowed states would be built anew by every call.
fn step_script() -> String {
    let run_ok = format!(
        "({} and {})",
        one_of("astate", AgentState::Running.may_enter_from()),
        one_of("jstate", JobState::Executing.may_enter_from()),
    );
    let end_ok: Vec<String> = Outcome::ALL
        .iter()
        .map(|o| {
            format!(
                "(outcome == '{}' and {} and {})",
                o.as_str(),
                one_of("astate", o.attempt_state().may_enter_from()),
                one_of("jstate", &o.job_sources()),
            )
        })
        .collect();
    let body = STEP.replace("RUN_OK(astate, jstate)", &run_ok).replace(
        "END_OK(outcome, astate, jstate)",
        &format!("({})", end_ok.join(" or ")),
    );
    format!("local SCAN, PROMOTE_BATCH = {DISPATCH_SCAN}, {PROMOTE_BATCH}\n{body}")
}

/// A Lua test that `var` holds one of `states` (`false` for none).
fn one_of<S: std::fmt::Display>(var: &str, states: &[S]) -> String {
    if states.is_empty() {
        return "false".into();
    }
    let tests: Vec<String> = states
        .iter()
        .map(|s| {
            let s = s.to_string();
            // State names are lower-case words: they need no escaping inside the quotes.
            debug_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            format!("{var} == '{s}'")
        })
        .collect();
    format!("({})", tests.join(" or "))
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
            .key(self.keys.pending())
            .key(self.keys.delayed())
            .key(self.keys.seq())
            .key(self.keys.events())
            .arg(job.job_id.as_str())
            .arg(now_ms)
            .arg(ready_at)
            .arg(o.priority)
            .arg(job.workspace.as_str());
        let launch = Launch {
            command_id: job.command_id.clone(),
            spec: job.spec.clone(),
            timeout_ms: o.attempt_timeout.map_or(0, ms),
            backoff_base_ms: ms(o.backoff_base),
            backoff_cap_ms: ms(o.backoff_cap),
            trace: job.trace.clone(),
        };
        let launch = serde_json::to_string(&launch).expect("a launch record always encodes");
        // The trace id alone, for the scripts to put in every event of the job.
        if let Some(id) = mosaic_shared::telemetry::trace_id(&job.trace.traceparent) {
            inv.arg("trace").arg(id);
        }
        for (f, v) in [
            ("job_id", job.job_id.to_string()),
            ("workspace", job.workspace.to_string()),
            ("profile", job.profile.to_string()),
            ("priority", o.priority.to_string()),
            ("max_retries", o.max_retries.to_string()),
            ("created_at_ms", job.created_at_ms.to_string()),
            ("launch", launch),
        ] {
            inv.arg(f).arg(v);
        }
        let state: String = inv.invoke_async(&mut con).await?;
        self.parse_job_state(job.job_id.as_str(), &state)
    }

    /// Applies `records` in order, then, if `dispatch` is given, promotes due delayed jobs
    /// (when asked) and, unless paused or full, creates attempts (in `spawning`) for the first
    /// pending jobs whose profiles have a free slot, one per id in `agent_ids`. One call.
    pub async fn step(
        &self,
        now_ms: i64,
        records: &[&AttemptRecord],
        dispatch: Option<&DispatchRequest<'_>>,
    ) -> Result<Stepped, StoreError> {
        let mut con = self.con.clone();
        let mut inv = self.queue.step.prepare_invoke();
        let [done_completed, done_failed, done_cancelled] = done_keys(&self.keys);
        let owner = dispatch.map_or("", |d| d.owner);
        inv.key(self.keys.pending())
            .key(self.keys.delayed())
            .key(self.keys.active())
            .key(self.keys.paused())
            .key(self.keys.running_by_profile())
            .key(self.keys.events())
            .key(done_completed)
            .key(done_failed)
            .key(done_cancelled);
        layout(&mut inv, &self.keys);
        let (lease_until, total, promote, count, token, limits, repeat) = match dispatch {
            Some(d) => (
                now_ms.saturating_add(i64::try_from(ms(d.lease)).unwrap_or(i64::MAX)),
                d.total_limit,
                d.promote,
                d.count,
                d.token,
                d.profile_limits
                    .iter()
                    .map(|(p, l)| format!("{p} {l}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                d.repeat,
            ),
            None => (0, 0, false, 0, "", String::new(), false),
        };
        inv.arg(now_ms)
            .arg(lease_until)
            .arg(owner)
            .arg(total)
            .arg(if promote { "1" } else { "0" })
            .arg(count)
            .arg(token)
            .arg(limits)
            .arg(if repeat { "1" } else { "0" })
            .arg(records.len());
        for r in records {
            let args = r.args().map_err(|reason| StoreError::Corrupt {
                key: self.keys.job(r.job().as_str()),
                reason,
            })?;
            for a in args {
                inv.arg(a);
            }
        }
        let reply: Vec<String> = inv.invoke_async(&mut con).await?;
        parse_step(&reply, records.len()).map_err(|reason| StoreError::Corrupt {
            key: self.keys.pending(),
            reason,
        })
    }

    /// Creates up to `count` attempts (see [`Store::step`]), after promoting due delayed jobs.
    /// Also returns when the earliest delayed job becomes due, if any.
    #[allow(clippy::too_many_arguments)]
    pub async fn dispatch_many(
        &self,
        now_ms: i64,
        lease: Duration,
        count: usize,
        token: &str,
        repeat: bool,
        owner: &str,
        total_limit: usize,
        profile_limits: &[(ProfileName, usize)],
    ) -> Result<(Vec<Dispatched>, Option<i64>), StoreError> {
        let d = DispatchRequest {
            count,
            token,
            lease,
            owner,
            repeat,
            total_limit,
            profile_limits,
            promote: true,
        };
        let out = self.step(now_ms, &[], Some(&d)).await?;
        Ok((out.dispatched, out.next_due))
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
        let record = AttemptRecord::Running {
            job: job.clone(),
            agent: agent.clone(),
            at_ms: now_ms,
            pid,
            proc_start,
        };
        self.one_record(now_ms, record).await
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
        let record = AttemptRecord::Ended {
            job: job.clone(),
            agent: agent.clone(),
            at_ms: now_ms,
            end: end.clone(),
        };
        self.one_record(now_ms, record).await
    }

    async fn one_record(&self, now_ms: i64, record: AttemptRecord) -> Result<Guarded, StoreError> {
        let mut out = self.step(now_ms, &[&record], None).await?;
        out.records.pop().ok_or_else(|| StoreError::Corrupt {
            key: self.keys.pending(),
            reason: "step reply without the record's result".into(),
        })
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
            let (attempts, owner): (Option<u32>, Option<String>) = redis::cmd("HMGET")
                .arg(self.keys.job(&id))
                .arg("attempts")
                .arg("owner")
                .query_async(&mut con)
                .await?;
            let corrupt = |e: mosaic_shared::ids::IdError| StoreError::Corrupt {
                key: self.keys.job(&id),
                reason: e.to_string(),
            };
            let job_id: JobId = id.parse().map_err(corrupt)?;
            out.push(ExpiredLease {
                agent_id: attempts
                    .filter(|n| *n > 0)
                    .map(|n| AgentId::of_attempt(&job_id, n)),
                job_id,
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
        inv.key(c).key(f).key(x);
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
        let h: HashMap<String, String> = con.hgetall(&key).await?;
        if h.is_empty() {
            return Ok(None);
        }
        JobRecord::from_hash(&key, h).map(Some)
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
    fn from_hash(key: &str, mut h: HashMap<String, String>) -> Result<Self, StoreError> {
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

        let state = take("state")?;
        let priority = take("priority")?;
        let attempts_n = take("attempts")?;
        let failures = take("failures")?;
        let max_retries = take("max_retries")?;
        let created = take("created_at_ms")?;
        let ready = take("ready_at_ms")?;
        let launch = Launch::parse(&take("launch")?).map_err(corrupt)?;
        let finished = h.remove("finished_at_ms");
        let error = h.remove("error").unwrap_or_default();
        let idc = |e: mosaic_shared::ids::IdError| corrupt(e.to_string());
        let job_id: JobId = job_id.parse().map_err(idc)?;
        let attempts = num(attempts_n, "attempts")? as u32;
        Ok(JobRecord {
            workspace: workspace.parse().map_err(idc)?,
            profile: profile.parse().map_err(idc)?,
            command_id: launch.command_id,
            state: state.parse().map_err(corrupt)?,
            priority: num(priority, "priority")? as u8,
            attempts,
            failures: num(failures, "failures")? as u32,
            max_retries: num(max_retries, "max_retries")? as u32,
            created_at_ms: num(created, "created_at_ms")?,
            ready_at_ms: num(ready, "ready_at_ms")?,
            finished_at_ms: finished.map(|f| num(f, "finished_at_ms")).transpose()?,
            error,
            spec: launch.spec,
            backoff_base: Duration::from_millis(launch.backoff_base_ms),
            backoff_cap: Duration::from_millis(launch.backoff_cap_ms),
            attempt_ids: (1..=attempts)
                .map(|n| AgentId::of_attempt(&job_id, n))
                .collect(),
            job_id,
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
    /// A job with all its attempts' records, oldest first, from one read.
    pub async fn job_with_attempts(
        &self,
        id: &JobId,
    ) -> Result<Option<(JobRecord, Vec<super::AgentRecord>)>, StoreError> {
        let mut con = self.con.clone();
        let key = self.keys.job(id.as_str());
        let h: HashMap<String, String> = con.hgetall(&key).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let mut attempts = Vec::new();
        for n in 1..=h
            .get("attempts")
            .and_then(|a| a.parse::<u32>().ok())
            .unwrap_or(0)
        {
            if let Some(rec) = super::AgentRecord::from_job_hash(&key, &h, id, n)? {
                attempts.push(rec);
            }
        }
        Ok(Some((JobRecord::from_hash(&key, h)?, attempts)))
    }

    /// Whether dispatch is paused.
    pub async fn is_paused(&self) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        Ok(con.exists(self.keys.paused()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_has_every_check_written_in() {
        let script = step_script();
        assert!(!script.contains("RUN_OK("), "RUN_OK left in STEP");
        assert!(!script.contains("END_OK("), "END_OK left in STEP");
        // A start is allowed only from spawning in an assigned job, and a completion only
        // from running in an executing one.
        assert!(script.contains("((astate == 'spawning') and (jstate == 'assigned'))"));
        assert!(script.contains(
            "(outcome == 'completed' and (astate == 'running') and (jstate == 'executing'))"
        ));
        assert!(script.starts_with(&format!(
            "local SCAN, PROMOTE_BATCH = {DISPATCH_SCAN}, {PROMOTE_BATCH}\n"
        )));
    }

    #[test]
    fn one_of_lists_each_state_and_is_false_for_none() {
        assert_eq!(
            one_of("s", &[JobState::Pending, JobState::Delayed]),
            "(s == 'pending' or s == 'delayed')"
        );
        assert_eq!(one_of::<JobState>("s", &[]), "false");
    }
}
