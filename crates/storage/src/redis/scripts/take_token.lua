-- KEYS[1] one user's bucket of one kind, shared by every instance: the
-- instant (microseconds of Redis's clock) it would be empty, the GCRA's
-- "theoretical arrival time"; missing when full.
-- ARGV: microseconds per token, burst.
-- Takes one token and returns 0, or returns the microseconds until one is
-- there and takes nothing. The key expires when the bucket is full again.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local empty_at = tonumber(redis.call('GET', KEYS[1]) or '0')
if empty_at < now then
  empty_at = now
end
local tolerance = interval * (burst - 1)
if empty_at - now > tolerance then
  return math.ceil(empty_at - tolerance - now)
end
empty_at = empty_at + interval
local ttl_ms = math.ceil((empty_at - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', empty_at), 'PX', ttl_ms)
return 0
