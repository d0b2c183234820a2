-- The outbox's state changes, each atomic (feature_store/outbox.py; keys in feature_store/keys.py).
-- ARGV[1] names the operation; the other arguments are described at each one.
--
-- A message moves: due --claim--> leased --settle--> delivered (kept a while, then gone)
--                                         |--------> due again (a retry)
--                                         '--------> dead --replay--> due
--                                                         '-discard--> discarded (kept a while, then gone)
-- and an expired lease is claimed again like a due message, so a worker that died mid-delivery
-- leads to a retry, never to silence. Settling checks the lease token: a worker whose lease expired
-- and was claimed by another cannot settle the message behind the new holder's back.

local op = ARGV[1]

-- A dead letter's member in the dead zset: the time it died, zero-padded, then its id, so that
-- members sort (by lex) in the order they died.
local function dead_member(ms, id)
  return string.rep("0", 13 - #ms) .. ms .. "|" .. id
end

-- KEYS: message, due zset, destinations set, the customer's index.
-- ARGV: op, due ms, id, destination, then field, value pairs of the message.
-- Returns 1 when enqueued, 0 when a message with this id exists already (waiting, in flight, dead, or
-- delivered recently): enqueuing is idempotent by id.
if op == "enqueue" then
  if redis.call("EXISTS", KEYS[1]) == 1 then
    return 0
  end
  local fields = {}
  for i = 5, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  redis.call("HSET", KEYS[1], "state", "due", "attempts", 0, unpack(fields))
  redis.call("ZADD", KEYS[2], ARGV[2], ARGV[3])
  redis.call("SADD", KEYS[3], ARGV[4])
  redis.call("SADD", KEYS[4], ARGV[3])
  return 1
end

-- KEYS: due zset, leased zset (of one destination).
-- ARGV: op, now ms, lease ms, limit, lease token, message key prefix.
-- Takes up to `limit` messages whose lease expired, then due ones, leases them until now + lease,
-- counts the attempt, and returns each message's fields.
if op == "claim" then
  local now, lease, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local ids = redis.call("ZRANGEBYSCORE", KEYS[2], "-inf", now, "LIMIT", 0, limit)
  if #ids < limit then
    for _, id in ipairs(redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now, "LIMIT", 0, limit - #ids)) do
      ids[#ids + 1] = id
    end
  end
  local out = {}
  for _, id in ipairs(ids) do
    local key = ARGV[6] .. id
    redis.call("ZREM", KEYS[1], id)
    if redis.call("EXISTS", key) == 1 then
      redis.call("HINCRBY", key, "attempts", 1)
      redis.call("HSET", key, "state", "leased", "lease", ARGV[5], "last_attempt_ms", ARGV[2])
      redis.call("ZADD", KEYS[2], now + lease, id)
      out[#out + 1] = redis.call("HGETALL", key)
    else
      redis.call("ZREM", KEYS[2], id)  -- a member whose message is gone: nothing to deliver
    end
  end
  return out
end

-- KEYS: message, its destination's leased zset, due zset, the dead zset, the customer's index.
-- ARGV: op, outcome ("delivered", "retry" or "dead"), id, lease token, now ms, due ms (retry),
--       last error ("" for none), last status ("" for none), how long to keep a delivered one (ms).
-- Returns 1, or 0 when the token is not the message's lease (it expired and another worker holds it).
if op == "settle" then
  local outcome, id, now = ARGV[2], ARGV[3], ARGV[5]
  if redis.call("HGET", KEYS[1], "lease") ~= ARGV[4] then
    return 0
  end
  redis.call("ZREM", KEYS[2], id)
  redis.call("HDEL", KEYS[1], "lease")
  if ARGV[7] ~= "" then
    redis.call("HSET", KEYS[1], "last_error", ARGV[7])
  else
    redis.call("HDEL", KEYS[1], "last_error")
  end
  if ARGV[8] ~= "" then
    redis.call("HSET", KEYS[1], "last_status", ARGV[8])
  else
    redis.call("HDEL", KEYS[1], "last_status")
  end
  if outcome == "delivered" then
    -- Kept without its body, so that enqueuing the same id again is still a no-op for a while.
    redis.call("HSET", KEYS[1], "state", "delivered", "delivered_ms", now)
    redis.call("HDEL", KEYS[1], "body")
    redis.call("PEXPIRE", KEYS[1], ARGV[9])
    redis.call("SREM", KEYS[5], id)  -- nothing of the customer's is left in it to erase
  elseif outcome == "retry" then
    redis.call("HSET", KEYS[1], "state", "due")
    redis.call("ZADD", KEYS[3], ARGV[6], id)
  else
    redis.call("HSET", KEYS[1], "state", "dead", "dead_ms", now)
    redis.call("ZADD", KEYS[4], 0, dead_member(now, id))
  end
  return 1
end

-- KEYS: the dead zset.
-- ARGV: op ("replay" or "discard"), now ms, message key prefix, due key prefix, customer index prefix,
--       how long to keep a discarded one (ms), then ids.
-- replay: puts each dead letter back in its destination's due set, due now, with its attempts reset and
-- its id unchanged. discard: gives each up for good; like a delivered message it keeps no body and is
-- kept a while, so that enqueuing the same id again is still a no-op. Returns {done, {ids that are not
-- dead letters}}.
if op == "replay" or op == "discard" then
  local done, unknown = 0, {}
  for i = 7, #ARGV do
    local id = ARGV[i]
    local key = ARGV[3] .. id
    local found = redis.call("HMGET", key, "state", "dead_ms", "destination", "customer")
    if found[1] == "dead" then
      redis.call("ZREM", KEYS[1], dead_member(found[2], id))
      redis.call("HDEL", key, "dead_ms")
      if op == "replay" then
        redis.call("HSET", key, "state", "due", "attempts", 0)
        redis.call("ZADD", ARGV[4] .. found[3], ARGV[2], id)
      else
        redis.call("HSET", key, "state", "discarded", "discarded_ms", ARGV[2])
        redis.call("HDEL", key, "body")
        redis.call("PEXPIRE", key, ARGV[6])
        -- The customer's index key, escaped as keys.py's _escape does (held equal by a test in
        -- tests/integration/test_delivery.py, with a customer id that needs it).
        local ref = found[4]:gsub("%%", "%%25"):gsub("{", "%%7B"):gsub("}", "%%7D")
        redis.call("SREM", ARGV[5] .. ref, id)
      end
      done = done + 1
    else
      unknown[#unknown + 1] = id
    end
  end
  return {done, unknown}
end

-- KEYS: the customer's index, the dead zset.
-- ARGV: op, message key prefix, due key prefix, leased key prefix.
-- Erases every message of the customer not yet delivered (waiting, in flight or dead), from every set
-- it is in. Returns how many there were.
if op == "forget" then
  local ids = redis.call("SMEMBERS", KEYS[1])
  local erased = 0
  for _, id in ipairs(ids) do
    local key = ARGV[2] .. id
    local found = redis.call("HMGET", key, "destination", "dead_ms")
    if found[1] then
      redis.call("ZREM", ARGV[3] .. found[1], id)
      redis.call("ZREM", ARGV[4] .. found[1], id)
      if found[2] then
        redis.call("ZREM", KEYS[2], dead_member(found[2], id))
      end
      redis.call("DEL", key)
      erased = erased + 1
    end
  end
  redis.call("DEL", KEYS[1])
  return erased
end

return redis.error_reply("outbox.lua: unknown operation " .. tostring(op))
