-- First step of linking an anonymous visitor to a customer, in the visitor's slot.
-- KEYS: the anonymous profile's keys (ProfileKeys.script_keys()): p, w, cart, r, d, s, k, pu, alias.
-- ARGV[1] customer id   ARGV[2] inactivity TTL (ms)
-- Points the alias at the customer (from here on, events under the anonymous id go to the customer)
-- and returns what the visitor's profile holds, to be merged. Repeating it for the same customer
-- returns what is left, so an interrupted link completes when retried.
--
-- Returns {"ok", fresh, p, w, cart, r, d, k, pu}: fresh is 1 when this call made the link (first time, or again
-- after an old link expired), 0 when it was already there (a repeat or the retry of an interrupted link).
local linked = redis.call("GET", KEYS[9])
if linked and linked ~= ARGV[1] then
  return {"conflict", linked}
end
redis.call("SET", KEYS[9], ARGV[1], "PX", ARGV[2])
return {"ok", linked and 0 or 1, redis.call("HGETALL", KEYS[1]), redis.call("HGETALL", KEYS[2]),
  redis.call("HGETALL", KEYS[3]), redis.call("ZRANGE", KEYS[4], 0, -1, "WITHSCORES"),
  redis.call("ZRANGE", KEYS[5], 0, -1, "WITHSCORES"), redis.call("ZRANGE", KEYS[7], 0, -1, "WITHSCORES"),
  redis.call("ZRANGE", KEYS[8], 0, -1, "WITHSCORES")}
