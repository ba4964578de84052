-- Read what one Bayes scope knows about a message's tokens, in one call.
--
-- KEYS[1]   state hash of the scope (fields spam, ham)
-- KEYS[2]   the scope's linear model (field "bias", one field per token id)
-- KEYS[3..] one hash per distinct token (fields s, h), named ...:t:<id>
--
-- Returns {spam learned, ham learned, bias, counts, weights}: counts is
-- "s1 h1 s2 h2 ..." (0 for an unknown token), weights "w1 w2 ..." (0 for a
-- token the model does not know), both in the order of KEYS[3..]; bias and
-- weights are "" while no model is fitted. Strings, not arrays: a message
-- has hundreds of tokens, and one string is far cheaper for the client to
-- read than a thousand reply elements (and Lua numbers would be truncated
-- to integers). Reads only: classifying never extends a TTL.
local state = redis.call("HMGET", KEYS[1], "spam", "ham")
local counts = {}
for i = 3, #KEYS do
  local v = redis.call("HMGET", KEYS[i], "s", "h")
  counts[#counts + 1] = v[1] or "0"
  counts[#counts + 1] = v[2] or "0"
end
local bias = redis.call("HGET", KEYS[2], "bias")
local weights = ""
if bias and #KEYS > 2 then
  -- the token id is the last 16 characters of its key name
  local ids = {}
  for i = 3, #KEYS do ids[#ids + 1] = string.sub(KEYS[i], -16) end
  local w = redis.call("HMGET", KEYS[2], unpack(ids))
  for i = 1, #w do w[i] = w[i] or "0" end
  weights = table.concat(w, " ")
end
return { tonumber(state[1]) or 0, tonumber(state[2]) or 0, bias or "",
         table.concat(counts, " "), weights }
