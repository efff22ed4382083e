-- Shared helpers, prepended to every queue script (see store/queue.rs).
-- Key layout: scripts that choose jobs inside Valkey (STEP, RENEW, TRIM) receive it from
-- store::keys as their first two arguments: the job key prefix and the attempt field prefix.
-- No key shape is spelled out in Lua.
local function job_key(id) return ARGV[1] .. id end
-- What the names of attempt `n`'s fields start with, inside its job's hash; a field is this
-- followed by its name (keys::attempt_field). Scripts writing several fields make it once.
local function attempt_prefix(n) return ARGV[2] .. n .. '.' end
local function attempt_field(n, name) return attempt_prefix(n) .. name end
-- Retention trims the stream separately (store::events), so that it knows what it removed.
local function event(stream, ...)
  redis.call('XADD', stream, '*', ...)
end
-- Adds the job's trace id (its `trace` field, set at enqueue when the spawn carried a W3C
-- trace context) to an event's fields.
local function traced(e, trace)
  if trace then e[#e + 1] = 'trace'; e[#e + 1] = trace end
  return e
end
-- Higher priority first, FIFO within a priority (job::pending_score, exact below 10^13 jobs).
local function pending_score(priority, seq)
  return string.format('%.0f', (10 - tonumber(priority)) * 1e13 + tonumber(seq))
end
