-- Learn (or forget) one message's tokens in one Bayes scope, atomically.
--
-- KEYS[1]  state hash of the scope (fields spam, ham: messages learned;
--          tokens: token hashes created, an upper bound kept for the cap)
-- KEYS[2]  the message's memory key (its class, "spam" or "ham")
-- KEYS[3]  the message's token key: "s" or "h" and its packed token ids,
--          what the linear model is fitted from (postwarden/bayes/model.py)
-- KEYS[4..] one hash per distinct token (fields s, h: messages seen in)
-- ARGV[1]  "spam" | "ham" | "forget", or "autospam" | "autoham": learn only
--          a message never learned before (autolearn never overrides a
--          user's or an earlier choice)
-- ARGV[2]  token TTL (s), ARGV[3] rare token TTL (s), ARGV[4] memory TTL (s)
-- ARGV[5]  max tokens (no new token hashes once the state says this many)
-- ARGV[6]  state TTL (s)
-- ARGV[7]  the message's token ids, packed (8 bytes each), or "" when no
--          model is fitted from them (BayesStore.keeps_docs: the statistics
--          are not the svm's): nothing kept, any old copy dropped
-- ARGV[8]  how long they are kept (s): the svm's model_window
--
-- Every change bumps the state's "changes" field: the model knows which
-- count it was fitted at, so `postwarden learn` can tell it is stale.
--
-- Returns "learned", "known" (same class before), "relearned" (the other
-- class before: its counts moved), "forgotten", "unknown" (forget of a
-- message never learned), "kept" (autolearn of a message learned before as
-- the other class: left as it was).
local cls = ARGV[1]
local token_ttl = tonumber(ARGV[2])
local rare_ttl = tonumber(ARGV[3])
local memory_ttl = tonumber(ARGV[4])
local max_tokens = tonumber(ARGV[5])
local state_ttl = tonumber(ARGV[6])
local packed = ARGV[7]
local doc_ttl = tonumber(ARGV[8])
local field = { spam = "s", ham = "h" }

local prev = redis.call("GET", KEYS[2])
if prev ~= "spam" and prev ~= "ham" then prev = nil end

if cls == "autospam" or cls == "autoham" then
  cls = (cls == "autospam") and "spam" or "ham"
  if prev == cls then return "known" end
  if prev then return "kept" end
end

local function drop(key, f)
  local n = redis.call("HINCRBY", key, f, -1)
  if n <= 0 then
    redis.call("HDEL", key, f) -- an empty hash disappears by itself
  end
end

if cls == "forget" then
  if not prev then return "unknown" end
  for i = 4, #KEYS do drop(KEYS[i], field[prev]) end
  redis.call("HINCRBY", KEYS[1], prev, -1)
  redis.call("HINCRBY", KEYS[1], "changes", 1)
  redis.call("DEL", KEYS[2], KEYS[3])
  return "forgotten"
end

local doc = field[cls] .. packed
local function keep_doc()
  if packed == "" then
    redis.call("DEL", KEYS[3]) -- never a stale class for a later svm
  else
    redis.call("SET", KEYS[3], doc, "EX", doc_ttl)
  end
end
if prev == cls then
  redis.call("EXPIRE", KEYS[2], memory_ttl)
  if packed ~= "" and redis.call("EXISTS", KEYS[3]) == 0 then
    -- learned before the model existed: keep its tokens from now on
    redis.call("SET", KEYS[3], doc, "EX", doc_ttl)
    redis.call("HINCRBY", KEYS[1], "changes", 1)
  else
    redis.call("EXPIRE", KEYS[3], doc_ttl)
  end
  return "known"
end

local mine, other = field[cls], (cls == "spam" and "h" or "s")
local created = 0
local full = (tonumber(redis.call("HGET", KEYS[1], "tokens")) or 0) >= max_tokens
for i = 4, #KEYS do
  local key = KEYS[i]
  if prev then drop(key, other) end
  local exists = redis.call("EXISTS", key) == 1
  if exists or not full then
    local n = redis.call("HINCRBY", key, mine, 1)
    local total = n + (tonumber(redis.call("HGET", key, other)) or 0)
    if total <= 1 then
      redis.call("EXPIRE", key, rare_ttl)
    else
      redis.call("EXPIRE", key, token_ttl)
    end
    if not exists then created = created + 1 end
  end
end
if prev then redis.call("HINCRBY", KEYS[1], prev, -1) end
redis.call("HINCRBY", KEYS[1], cls, 1)
if created > 0 then redis.call("HINCRBY", KEYS[1], "tokens", created) end
redis.call("HINCRBY", KEYS[1], "changes", 1)
keep_doc()
redis.call("EXPIRE", KEYS[1], state_ttl)
redis.call("SET", KEYS[2], cls, "EX", memory_ttl)
if prev then return "relearned" end
return "learned"
