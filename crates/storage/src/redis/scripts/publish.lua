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
local added = entry_cost({'g', ARGV[3], 'a', ARGV[4], 't', ARGV[5]})
local id = redis.call('XADD', KEYS[1], '*', 'g', ARGV[3], 'a', ARGV[4], 't', ARGV[5])
local bytes = redis.call('INCRBY', KEYS[2], added)
local entries = redis.call('XLEN', KEYS[1])
if bytes == added and entries > 1 then
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
if bytes > max_bytes or entries > max_entries then
  -- Trim a sixty-fourth below the bounds, so trimming (a Lua loop and an
  -- exact XTRIM, about 60 us) runs once per many publishes, not on each.
  local target_bytes = max_bytes - math.floor(max_bytes / 64)
  local target_entries = max_entries - math.floor(max_entries / 64)
  local freed, removed, keep = 0, 0, nil
  local from, count = '-', 1
  while not keep do
    local batch = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', count)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if bytes - freed <= target_bytes and entries - removed <= target_entries then
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
    redis.call('DECRBY', KEYS[2], freed)
  end
end
return id
