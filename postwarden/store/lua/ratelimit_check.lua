-- Decide every rate-limit counter of one policy request, then consume all or
-- nothing (check-then-consume: a refused request leaves no trace).
--
-- Each counter is a sliding-window log: a ZSET of events scored by their time
-- in milliseconds; events at or before now - per have left the window and are
-- trimmed first, so the count is exact for the window (now - per, now].
--
-- ARGV[1] now (integer ms, from the caller's clock); then one ARGV per
-- counter, fields separated by tabs (one string each keeps the call small):
--   kind       'c' unit events | 'w' weighted events (bytes) | 'f' first-time recipient
--   per        window length, ms (also the TTL of the log)
--   limit      units allowed in the window
--   weight     units this request adds (0 = nothing to count)
--   enforce    '1' a limit that refuses; '0' log-only (counted, never refuses)
--   gate_ttl   'f' only: how long a recipient stays known, ms (else 0)
--   gate       'f' only: the recipient's digest in the known-recipients set
--   member     (last: the rest of the string) event name in the log;
--              'i:<instance>' counts a message once (later RCPTs of the same
--              message find it and add nothing); weighted members end in
--              ':<weight>' so trimming can subtract
-- KEYS per counter: the log; then for 'w' the running sum, for 'f' the
-- known-recipients ZSET (member -> last time mailed).
--
-- Returns {allowed, then per counter: weight, total, exceeded, retry_ms}
-- where total is the count before this request and retry_ms the time until
-- enough events leave the window for this request to fit (-1: never, the
-- request alone is over the limit).
local now = tonumber(ARGV[1])
local n = #ARGV - 1
local counters = {}
local denied = false
local k = 1

local function weight_of(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

for i = 1, n do
  local kind, per, limit, weight, enforce, gate_ttl, gate, member = string.match(
    ARGV[i + 1], '^(%a)\t(%d+)\t(%d+)\t(%d+)\t([01])\t(%d+)\t(%x*)\t(.*)$')
  local c = {
    kind = kind, per = tonumber(per), limit = tonumber(limit), weight = tonumber(weight),
    enforce = enforce == '1', gate_ttl = tonumber(gate_ttl), gate = gate, member = member,
    retry = 0,
  }
  c.log = KEYS[k]
  k = k + 1
  if c.kind ~= 'c' then
    c.aux = KEYS[k]
    k = k + 1
  end
  local cutoff = now - c.per
  if c.kind == 'w' then
    local old = redis.call('ZRANGEBYSCORE', c.log, '-inf', cutoff)
    if #old > 0 then
      local gone = 0
      for _, m in ipairs(old) do gone = gone + weight_of(m) end
      redis.call('ZREMRANGEBYSCORE', c.log, '-inf', cutoff)
      if redis.call('EXISTS', c.aux) == 1 then redis.call('DECRBY', c.aux, gone) end
    end
    if redis.call('EXISTS', c.log) == 0 then
      redis.call('DEL', c.aux)
      c.total = 0
    else
      c.total = tonumber(redis.call('GET', c.aux) or '0')
    end
  else
    redis.call('ZREMRANGEBYSCORE', c.log, '-inf', cutoff)
    c.total = redis.call('ZCARD', c.log)
  end
  if c.kind == 'f' then
    redis.call('ZREMRANGEBYSCORE', c.aux, '-inf', now - c.gate_ttl)
    if redis.call('ZSCORE', c.aux, c.gate) then c.weight = 0 end
  elseif string.sub(c.member, 1, 2) == 'i:' and redis.call('ZSCORE', c.log, c.member) then
    c.weight = 0
  end
  c.exceeded = c.weight > 0 and c.total + c.weight > c.limit
  if c.exceeded then
    if c.enforce then denied = true end
    if c.weight > c.limit then
      c.retry = -1
    elseif c.kind == 'w' then
      -- oldest first: how many must leave before this weight fits
      local need = c.total + c.weight - c.limit
      local acc = 0
      local ev = redis.call('ZRANGE', c.log, 0, -1, 'WITHSCORES')
      c.retry = -1
      for j = 1, #ev, 2 do
        acc = acc + weight_of(ev[j])
        if acc >= need then
          c.retry = tonumber(ev[j + 1]) + c.per - now
          break
        end
      end
    else
      local idx = c.total + c.weight - c.limit - 1
      local ev = redis.call('ZRANGE', c.log, idx, idx, 'WITHSCORES')
      c.retry = tonumber(ev[2]) + c.per - now
    end
  end
  counters[i] = c
end

if not denied then
  for i = 1, n do
    local c = counters[i]
    if c.weight > 0 then
      redis.call('ZADD', c.log, ARGV[1], c.member)
      redis.call('PEXPIRE', c.log, c.per)
      if c.kind == 'w' then
        redis.call('INCRBY', c.aux, c.weight)
        redis.call('PEXPIRE', c.aux, c.per)
      end
    end
    if c.kind == 'f' then
      -- new or already known: known from now on, for gate_ttl
      redis.call('ZADD', c.aux, ARGV[1], c.gate)
      redis.call('PEXPIRE', c.aux, c.gate_ttl)
    end
  end
end

local out = {denied and 0 or 1}
for i = 1, n do
  local c = counters[i]
  out[#out + 1] = c.weight
  out[#out + 1] = c.total
  out[#out + 1] = c.exceeded and 1 or 0
  out[#out + 1] = c.retry
end
return out
