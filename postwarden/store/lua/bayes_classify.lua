-- Read what one Bayes scope knows about a message's tokens, in one call.
--
-- KEYS[1]   state hash of the scope (fields spam, ham)
-- KEYS[2]   the scope's linear model (field "bias", one field per token id)
-- KEYS[3..] one hash per distinct token (fields s, h)
-- ARGV      the token ids, in the order of KEYS[3..]
--
-- Returns {spam learned, ham learned, bias, s1, h1, w1, s2, h2, w2, ...};
-- counts of unknown tokens are 0, their weight "" as is the bias while no
-- model is fitted. Weights are strings: Redis turns Lua numbers into
-- integers. Reads only: classifying never extends a TTL.
local state = redis.call("HMGET", KEYS[1], "spam", "ham")
local bias = redis.call("HGET", KEYS[2], "bias")
local weights = {}
if bias and #ARGV > 0 then
  weights = redis.call("HMGET", KEYS[2], unpack(ARGV))
end
local out = { tonumber(state[1]) or 0, tonumber(state[2]) or 0, bias or "" }
for i = 3, #KEYS do
  local v = redis.call("HMGET", KEYS[i], "s", "h")
  out[#out + 1] = tonumber(v[1]) or 0
  out[#out + 1] = tonumber(v[2]) or 0
  out[#out + 1] = weights[i - 2] or ""
end
return out
