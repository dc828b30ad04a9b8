-- KEYS[1] the stream, KEYS[2] its byte count, KEYS[3] its stored watermark.
-- ARGV: max bytes, max entries, group, author, text, and '1' when only
-- entries at or below the stored watermark may be trimmed.
-- Returns the new entry's id, or {'bytes'|'entries', bytes, entries} when the
-- stream is full of entries that may not be trimmed (nothing is appended).
local function entry_cost(fields)
  local bytes = 0
  for i = 2, #fields, 2 do
    bytes = bytes + #fields[i]
  end
  -- An entry over 2 KiB fills a listpack node of its own: add the node's keep.
  local node = 0
  if bytes > 2048 then node = 1024 end
  return bytes + math.ceil(bytes / 4) + 64 + node
end
-- Whether stream id a ("ms-seq") is above id b.
local function above(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local added = entry_cost({'g', ARGV[3], 'a', ARGV[4], 't', ARGV[5]})
local entries = redis.call('XLEN', KEYS[1])
local bytes = tonumber(redis.call('GET', KEYS[2]) or '-1')
if bytes < 0 or (bytes == 0 and entries > 0) then
  -- The count is missing (a stream written before counting began, or the key
  -- was deleted): count the stream once.
  bytes = 0
  local from = '-'
  repeat
    local batch = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1000)
    for _, entry in ipairs(batch) do
      bytes = bytes + entry_cost(entry[2])
      from = '(' .. entry[1]
    end
  until #batch < 1000
  redis.call('SET', KEYS[2], bytes)
end
local max_bytes = tonumber(ARGV[1])
local max_entries = tonumber(ARGV[2])
local keep_unstored = ARGV[6] == '1'
local stored = redis.call('GET', KEYS[3]) or '0-0'
if bytes + added > max_bytes or entries + 1 > max_entries then
  -- Trim a sixty-fourth below the bounds, so trimming (a Lua loop and an
  -- exact XTRIM, about 60 us) runs once per many publishes, not on each.
  -- Never past the stored watermark when history needs the entries.
  local target_bytes = max_bytes - math.floor(max_bytes / 64) - added
  local target_entries = max_entries - math.floor(max_entries / 64) - 1
  local freed, removed, keep = 0, 0, nil
  local from, count = '-', 1
  while not keep do
    local batch = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', count)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if (bytes - freed <= target_bytes and entries - removed <= target_entries)
        or (keep_unstored and above(entry[1], stored)) then
        keep = entry[1]
        break
      end
      freed = freed + entry_cost(entry[2])
      removed = removed + 1
      from = '(' .. entry[1]
    end
    count = math.min(count * 2, 512)
  end
  if keep then
    redis.call('XTRIM', KEYS[1], 'MINID', keep)
  elseif removed > 0 then
    redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
  end
  if removed > 0 then
    bytes = redis.call('DECRBY', KEYS[2], freed)
    entries = entries - removed
  end
  if entries == 0 and bytes ~= 0 then
    -- An empty stream costs nothing, whatever a stale count says.
    bytes = 0
    redis.call('SET', KEYS[2], 0)
  end
  if bytes + added > max_bytes then
    return {'bytes', bytes, entries}
  end
  if entries + 1 > max_entries then
    return {'entries', bytes, entries}
  end
end
local id = redis.call('XADD', KEYS[1], '*', 'g', ARGV[3], 'a', ARGV[4], 't', ARGV[5])
redis.call('INCRBY', KEYS[2], added)
return id
