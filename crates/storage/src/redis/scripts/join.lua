local ttl = tonumber(ARGV[4])
if ARGV[5] ~= '1' then
  local count, member = live_users(ARGV[1])
  if not member and count >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1] .. '\31' .. ARGV[2])
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(latest[2])) + 1)
return 1
