-- Shared helpers, prepended to every queue script (see store/queue.rs).
-- Key layout: scripts that choose jobs inside Valkey (DISPATCH, RENEW, TRIM) receive it from
-- store::keys as their first three arguments: the job key prefix, the attempts-list suffix and
-- the agent key prefix. No key shape is spelled out in Lua.
local function job_key(id) return ARGV[1] .. id end
local function attempts_key(id) return ARGV[1] .. id .. ARGV[2] end
local function agent_key(id) return ARGV[3] .. id end
local function event(stream, maxlen, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
end
-- Whether `state` is one of the space-separated `allowed` states (tables come from Rust).
local function is_in(state, allowed)
  if not state then return false end
  for s in string.gmatch(allowed, '%S+') do
    if s == state then return true end
  end
  return false
end
-- Higher priority first, FIFO within a priority (job::pending_score, exact below 10^13 jobs).
local function pending_score(priority, seq)
  return string.format('%.0f', (10 - tonumber(priority)) * 1e13 + tonumber(seq))
end
