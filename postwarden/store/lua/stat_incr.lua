-- Bump a `postwarden stat` counter and refresh its TTL in the same call.
-- KEYS[1] counter; ARGV[1] amount; ARGV[2] ttl seconds.
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return v
