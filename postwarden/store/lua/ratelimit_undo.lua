-- Take back what ratelimit_check.lua consumed for one request, when another
-- call for the same request (a different hash tag on Redis Cluster) refused it.
-- Only events this request added are removed, so counts stay exact.
--
-- ARGV[1] number of counters; then 4 fields per counter: kind, member,
-- weight, gate ('f': the recipient made known by this request, else '').
-- KEYS per counter as in ratelimit_check.lua (log; sum for 'w'; known for 'f').
local n = tonumber(ARGV[1])
local k, a = 1, 2
for i = 1, n do
  local kind, member, weight, gate = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  a = a + 4
  local log = KEYS[k]
  k = k + 1
  local removed = redis.call('ZREM', log, member)
  if kind == 'w' then
    if removed == 1 and redis.call('EXISTS', KEYS[k]) == 1 then
      redis.call('DECRBY', KEYS[k], weight)
    end
    k = k + 1
  elseif kind == 'f' then
    if gate ~= '' then redis.call('ZREM', KEYS[k], gate) end
    k = k + 1
  end
end
return n
