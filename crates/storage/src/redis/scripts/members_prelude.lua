local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function live_users(user)
  local seen = {}
  local count = 0
  local member = false
  for _, entry in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    local cut = string.find(entry, '\31', 1, true)
    if cut then
      local name = string.sub(entry, 1, cut - 1)
      if name == user then
        member = true
      end
      if not seen[name] then
        seen[name] = true
        count = count + 1
      end
    end
  end
  return count, member
end
