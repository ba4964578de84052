-- Read what one Bayes scope knows about a message's tokens, in one call.
--
-- KEYS[1]   state hash of the scope (fields spam, ham)
-- KEYS[2..] one hash per distinct token (fields s, h)
--
-- Returns {spam learned, ham learned, s1, h1, s2, h2, ...}; counts of
-- unknown tokens are 0. Reads only: classifying never extends a TTL.
local state = redis.call("HMGET", KEYS[1], "spam", "ham")
local out = { tonumber(state[1]) or 0, tonumber(state[2]) or 0 }
for i = 2, #KEYS do
  local v = redis.call("HMGET", KEYS[i], "s", "h")
  out[#out + 1] = tonumber(v[1]) or 0
  out[#out + 1] = tonumber(v[2]) or 0
end
return out
