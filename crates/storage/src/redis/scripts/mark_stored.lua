-- KEYS[1] a shard's stream, KEYS[2] its stored watermark, KEYS[3] the sorted
-- set of its entries stored above the watermark (scored by their millisecond).
-- ARGV: ids of the stream's entries that the history database now holds.
-- Records them, then moves the watermark over every entry right after it that
-- is recorded, so that everything at or below it is stored. Returns it.
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function above(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  return am > bm or (am == bm and as > bs)
end
local stored = redis.call('GET', KEYS[2]) or '0-0'
for i = 1, #ARGV do
  if parts(ARGV[i]) and above(ARGV[i], stored) then
    redis.call('ZADD', KEYS[3], parts(ARGV[i]), ARGV[i])
  end
end
local moved = false
local done = false
repeat
  local batch = redis.call('XRANGE', KEYS[1], '(' .. stored, '+', 'COUNT', 128)
  if #batch < 128 then done = true end
  for _, entry in ipairs(batch) do
    if redis.call('ZREM', KEYS[3], entry[1]) == 0 then
      done = true
      break
    end
    stored = entry[1]
    moved = true
  end
until done
if moved then
  redis.call('SET', KEYS[2], stored)
  -- Ids recorded for entries the stream no longer has (lost with a Redis
  -- that failed over or restarted) would otherwise stay forever.
  local ms = parts(stored)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ms)
end
return stored
