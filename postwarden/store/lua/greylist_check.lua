-- One greylisting decision in one round trip (policyd/checks/greylist.py).
--
-- KEYS[1] triplet hash  {first, last, passed, n, s, r}
-- KEYS[2] client hash   {count, last, manual, keep}   (auto-whitelist, per
--         network; manual/keep are set by `postwarden greylist whitelist`)
-- KEYS[3], KEYS[4] optional `postwarden stat` counters (deferred, passed);
--         left out on Redis Cluster, where they live in other slots
-- ARGV: now, delay, retry_window, max_age, awl_threshold, awl_interval,
--       network, sender, recipient, stat_ttl   (times in seconds; `now`
--       from the service's clock, so tests move time without sleeping)
--
-- Returns {verdict, first_pass, seconds, count}:
--   {"awl", 0, 0, count}            client network is whitelisted
--   {"pass", 1|0, waited, count}    1 = this retry ended the greylisting
--   {"defer", 0, seconds_left, 0}   new triplet or retry too early
--
-- Rules (postgrey's): a retry after `delay` passes and marks the triplet as
-- passed; a first retry later than `retry_window` starts over; passed
-- triplets live `max_age` from their last use. Every write sets its TTL in
-- the same call; the timestamps, not the TTLs, decide (TTLs only collect).

local now = tonumber(ARGV[1])
local delay = tonumber(ARGV[2])
local retry_window = tonumber(ARGV[3])
local max_age = tonumber(ARGV[4])
local awl_threshold = tonumber(ARGV[5])
local awl_interval = tonumber(ARGV[6])
local max_age_ms = math.floor(max_age * 1000)

local function count_stat(key)
  if key ~= nil then
    redis.call("INCR", key)
    redis.call("EXPIRE", key, ARGV[10])
  end
end

-- Auto-whitelisted (or whitelisted by an operator) client network?
local c = redis.call("HMGET", KEYS[2], "count", "last", "manual", "keep")
local count = tonumber(c[1]) or 0
local c_last = tonumber(c[2])
-- An operator's whitelisting may carry its own lifetime ("keep" seconds).
local c_keep = tonumber(c[4]) or max_age
if c_last ~= nil and now - c_last > c_keep then
  -- Unused for max_age: forgotten (the TTL would have done it in real time).
  redis.call("DEL", KEYS[2])
  count, c_last, c[3] = 0, nil, false
end
if c[3] == "1" or (awl_threshold > 0 and count >= awl_threshold) then
  -- Refresh last-seen at most once per interval: writes stay rare for busy
  -- whitelisted clients, and the entry lives while the client keeps sending.
  if c_last == nil or now >= c_last + awl_interval or c_last > now then
    redis.call("HSET", KEYS[2], "last", now)
    redis.call("PEXPIRE", KEYS[2], math.floor(c_keep * 1000))
  end
  return {"awl", 0, 0, count}
end

local t = redis.call("HMGET", KEYS[1], "first", "last", "passed")
local first = tonumber(t[1])
local last = tonumber(t[2])
local passed = t[3] == "1"
if first ~= nil and now - last > max_age then
  first, passed = nil, false
end
if first == nil then
  first = now
  redis.call("HSET", KEYS[1], "n", ARGV[7], "s", ARGV[8], "r", ARGV[9])
elseif not passed and now - first > retry_window then
  -- The first retry came too late: treat it as a new attempt.
  first = now
end
if first > now then
  -- A clock that went back (or another host's clock ahead): start from now.
  first = now
end

local waited = now - first
if passed or waited >= delay then
  local first_pass = 0
  if not passed then
    first_pass = 1
    -- Count one successful pass per client per interval towards the AWL.
    if awl_threshold > 0 and (c_last == nil or now >= c_last + awl_interval or c_last > now) then
      count = count + 1
      redis.call("HSET", KEYS[2], "count", count, "last", now)
      redis.call("PEXPIRE", KEYS[2], max_age_ms)
    end
  end
  redis.call("HSET", KEYS[1], "first", first, "last", now, "passed", 1)
  redis.call("PEXPIRE", KEYS[1], max_age_ms)
  if first_pass == 1 then
    count_stat(KEYS[4])
  end
  return {"pass", first_pass, tostring(waited), count}
end

redis.call("HSET", KEYS[1], "first", first, "last", now, "passed", 0)
-- Pending: worth keeping only until the retry window closes.
local ttl = first + retry_window - now
redis.call("PEXPIRE", KEYS[1], math.max(1000, math.ceil(ttl * 1000)))
count_stat(KEYS[3])
return {"defer", 0, tostring(delay - waited), 0}
