-- Shared helpers, prepended to every queue script (see store/queue.rs).
local function event(stream, maxlen, ...)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
end
-- Higher priority first, FIFO within a priority (job::pending_score, exact below 10^13 jobs).
local function pending_score(priority, seq)
  return string.format('%.0f', (10 - tonumber(priority)) * 1e13 + tonumber(seq))
end
