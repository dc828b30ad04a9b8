local users = {}
local seen = {}
for _, entry in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local cut = string.find(entry, '\31', 1, true)
  if cut then
    local name = string.sub(entry, 1, cut - 1)
    if not seen[name] then
      seen[name] = true
      users[#users + 1] = name
    end
  end
end
return users
