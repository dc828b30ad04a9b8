for i = 1, #ARGV do
  redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[i])
end
return 0
