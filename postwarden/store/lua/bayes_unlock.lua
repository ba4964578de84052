-- Release a Bayes fit lock only if it is still the caller's.
--
-- KEYS[1]  the lock key; ARGV[1] the token the caller set it to.
--
-- A fit that outlived the lock's expiry may find another process holding
-- it by now: that one's lock must stay. Returns 1 if released, else 0.
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
