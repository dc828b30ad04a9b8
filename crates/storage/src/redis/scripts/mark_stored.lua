-- KEYS: for each shard, three keys: its stream, its stored watermark, and the
-- sorted set of its entries stored above the watermark (scored by their
-- millisecond).
-- ARGV: for each shard, in the order of KEYS, how many ids follow, then those
-- ids: entries of the stream that the history database now holds.
-- For each shard, moves the watermark over every entry right after it that is
-- stored (given now, or recorded before), so that everything at or below it
-- is stored, then records the given ids still above it. Returns the
-- watermarks, one per shard. With one writer, the ids given are the entries
-- right after the watermark: they move it without being recorded at all.
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function above(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  return am > bm or (am == bm and as > bs)
end
local watermarks = {}
local arg = 1
for first = 1, #KEYS, 3 do
  local stream, mark, recorded = KEYS[first], KEYS[first + 1], KEYS[first + 2]
  local count = tonumber(ARGV[arg])
  local given = {}
  for i = arg + 1, arg + count do
    if parts(ARGV[i]) then given[ARGV[i]] = true end
  end
  arg = arg + count + 1
  local stored = redis.call('GET', mark) or '0-0'
  local moved = false
  local done = false
  local page = math.min(128, count + 16)
  repeat
    local batch = redis.call('XRANGE', stream, '(' .. stored, '+', 'COUNT', page)
    if #batch < page then done = true end
    for _, entry in ipairs(batch) do
      local id = entry[1]
      if given[id] then
        given[id] = nil
      elseif redis.call('ZREM', recorded, id) == 0 then
        done = true
        break
      end
      stored = id
      moved = true
    end
    page = 128
  until done
  for id in pairs(given) do
    if above(id, stored) then
      redis.call('ZADD', recorded, parts(id), id)
    end
  end
  if moved then
    redis.call('SET', mark, stored)
    -- Ids recorded for entries the stream no longer has (lost with a Redis
    -- that failed over or restarted) would otherwise stay forever.
    redis.call('ZREMRANGEBYSCORE', recorded, '-inf', '(' .. parts(stored))
  end
  watermarks[#watermarks + 1] = stored
end
return watermarks
