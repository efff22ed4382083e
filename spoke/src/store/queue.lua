-- Shared helpers, prepended to every queue script (see store/queue.rs).
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
